//! pgimg's runtime: the machine that provides a real `Target` (image,
//! sandbox), the Rhai engine and recipe host, the build pipeline, and — on
//! top, imported by nothing else — the command-line interface.

pub mod build;
pub mod cli;
pub mod engine;
pub mod error;
pub mod fixture;
pub mod host;
pub mod image;
pub mod lock;
pub mod sandbox;
pub mod shell;
pub mod testing;
pub mod vm;
