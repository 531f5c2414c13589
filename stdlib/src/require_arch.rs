//! `require_arch(arches, reason)`: a recipe that supports only some architectures says so first.

use rhai::Array;

use crate::api::string_list;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::register::Str;
use crate::rhai_fns;

/// The primitive's name; `pgimg lock` recognizes a recipe refusing an
/// architecture by a run that stopped in it.
pub const NAME: &str = "require_arch";

/// Fails, naming the image's architecture, the supported ones and `reason`,
/// unless the image's architecture is among `arches`.
pub fn require_arch(ctx: &Ctx, arches: &[String], reason: &str) -> Result<()> {
    if arches.is_empty() {
        return Err(Error::invalid("no architecture given"));
    }
    let arch = &ctx.target.facts().arch;
    if arches.iter().any(|a| a == arch) {
        return Ok(());
    }
    Err(Error::invalid(format!(
        "this recipe builds {} images only, not {arch}: {reason}",
        arches.join(" and ")
    )))
}

rhai_fns! { pub(crate) fn register;
    /// Stops the build with a clear error unless the image's Debian architecture is one of
    /// `arches` (`["amd64"]`); `reason` says why the others are not supported.
    action require_arch(arches: Array, reason: Str) |c, _| require_arch(c, &string_list(&arches.into(), "arches")?, &reason);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::RecordingFetcher;
    use crate::{FakeOs, FakeTarget};
    use std::sync::Arc;

    fn ctx(arch: &str) -> Ctx {
        let os = FakeOs {
            arch: arch.into(),
            ..FakeOs::default()
        };
        Ctx::new(Arc::new(
            FakeTarget::new(&os, Box::new(RecordingFetcher::default())).unwrap(),
        ))
    }

    #[test]
    fn passes_or_names_both_architectures_and_the_reason() {
        let amd64 = vec!["amd64".to_string()];
        require_arch(&ctx("amd64"), &amd64, "x").unwrap();
        let e = require_arch(&ctx("arm64"), &amd64, "upstream ships amd64 packages only")
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "this recipe builds amd64 images only, not arm64: upstream ships amd64 packages only"
        );
        assert!(require_arch(&ctx("arm64"), &[], "x").is_err());
    }

    #[test]
    fn from_rhai_the_error_is_located() {
        let c = ctx("arm64");
        let mut engine = rhai::Engine::new();
        crate::register(&mut engine, &c);
        let e = engine.run(r#"require_arch(["amd64"], "why")"#).unwrap_err();
        let rhai::EvalAltResult::ErrorRuntime(d, _) = *e else {
            panic!("{e}")
        };
        let msg = d.cast::<crate::api::PrimitiveFailure>().message;
        assert!(
            msg.ends_with("require_arch: this recipe builds amd64 images only, not arm64: why"),
            "{msg}"
        );
        assert_eq!(
            c.journal.lock().unwrap().actions.last().unwrap().primitive,
            NAME
        );
    }
}
