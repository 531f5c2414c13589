//! pgimg's standard library: the primitives recipes call, written against the
//! [`Target`] seam, and [`FakeTarget`] for testing recipes without an image.

pub mod api;
pub mod ctx;
pub mod error;
pub mod fake;
pub mod fetch;
pub mod files;
pub mod owner;
pub mod root;
pub mod target;

pub use ctx::{Ctx, Loc};
pub use error::{Error, Result};
pub use fake::{FakeOs, FakeTarget};
pub use root::{Attrs, ImageRoot};
pub use target::{Command, Facts, Output, Target};

/// Registers every primitive into `engine`, acting through `ctx`.
pub fn register(engine: &mut rhai::Engine, ctx: &Ctx) {
    files::register(engine, ctx);
}
