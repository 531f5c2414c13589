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
pub mod journal;
pub mod lock;
pub mod mirror;
pub mod owner;
pub mod pgxs;
pub mod read_asset;
pub mod register;
pub mod require_arch;
pub mod root;
pub mod run;
pub mod shared;
pub mod source;
pub mod stderr;
pub mod systemd;
pub mod target;
pub mod users;

pub use ctx::{Ctx, Loc};
pub use error::{Error, Result};
pub use fake::{FakeOs, FakeTarget};
pub use root::{Attrs, ImageRoot};
pub use target::{Command, Facts, Output, Target};

/// Registers every primitive into `engine`, acting through `ctx` (the engine's default tag).
pub fn register(engine: &mut rhai::Engine, ctx: &Ctx) {
    let mut m = rhai::Module::new();
    macro_rules! each { ($($module:ident),*) => { $($module::register(&mut m);)* } }
    each! { files, facts, run, apt, apt_repo, go_build, pgxs, fetch_verify, users, systemd, mirror,
    require_arch, read_asset, borrow_file }
    api::register_failure(&mut m);
    engine.register_global_module(m.into());
    engine.set_default_tag(rhai::Dynamic::from(ctx.clone()));
}
