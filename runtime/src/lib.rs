//! pgimg's runtime: the machine that provides a real `Target` (image, sandbox),
//! the Rhai engine, and the command-line interface.

pub mod build;
pub mod cli;
pub mod engine;
pub mod fixture;
pub mod image;
pub mod lock;
pub mod publish_cli;
pub mod sandbox;
pub mod testing;
pub mod vm;
