//! pgimg's standard library: the primitives recipes call, written against the
//! [`Target`] seam, and [`FakeTarget`] for testing recipes without an image.

pub mod api;
pub mod apt;
pub mod apt_repo;
pub mod borrow;
pub mod borrow_file;
pub mod ctx;
pub mod error;
pub mod extract;
pub mod facts;
pub mod fake;
pub mod fetch;
pub mod fetch_verify;
pub mod files;
pub mod go_build;
pub mod lock;
pub mod mirror;
pub mod owner;
pub mod pgxs;
pub mod read_asset;
pub mod require_arch;
pub mod root;
pub mod run;
pub mod source;
pub mod systemd;
pub mod target;
pub mod users;

pub use ctx::{Ctx, Loc};
pub use error::{Error, Result};
pub use fake::{FakeOs, FakeTarget};
pub use root::{Attrs, ImageRoot};
pub use target::{Command, Facts, Output, Target};

/// Registers every primitive into `engine`, acting through `ctx`.
pub fn register(engine: &mut rhai::Engine, ctx: &Ctx) {
    files::register(engine, ctx);
    facts::register(engine, ctx);
    run::register(engine, ctx);
    apt::register(engine, ctx);
    apt_repo::register(engine, ctx);
    go_build::register(engine, ctx);
    pgxs::register(engine, ctx);
    fetch_verify::register(engine, ctx);
    users::register(engine, ctx);
    systemd::register(engine, ctx);
    mirror::register(engine, ctx);
    require_arch::register(engine, ctx);
    read_asset::register(engine, ctx);
    borrow_file::register(engine, ctx);
}
