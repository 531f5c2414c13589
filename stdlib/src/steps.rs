//! The step hook: what a build's step cache sees of every primitive call (the
//! runtime implements it; recipes on a fake root run without one).

use rhai::Dynamic;

use crate::ctx::Ctx;
use crate::journal::Loc;

/// Called around every primitive, actions and queries alike, in call order,
/// from the one place primitives are registered ([`crate::register`]), so no
/// primitive can be left out of the key.
pub trait Steps: Send + Sync {
    /// Before the body of `name` runs with `args` (`action`: a primitive
    /// with an effect, as the journal records it; else a query):
    /// `Ok(Some(value))` means "replayed": the body does not run and the
    /// call returns `value`.
    fn before(
        &self,
        ctx: &Ctx,
        name: &str,
        action: bool,
        loc: &Loc,
        args: &[Dynamic],
    ) -> Result<Option<Dynamic>, String>;

    /// After the body ran and returned `value`. A body that failed gets no
    /// `after`.
    fn after(&self, ctx: &Ctx, value: &Dynamic);
}
