//! `borrow_file(path, content)`: a file in place for the build only; the
//! borrowed-path rule is in [`crate::borrow`].

use rhai::{Engine, FuncRegistration, NativeCallContext};

use crate::api::primitive;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::{check_mode, image_path};

/// Options of `borrow_file`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BorrowOpts {
    pub mode: Option<i64>,
}

/// `borrow_file(path, content)`: `content` at `path` for the rest of the build;
/// at the end the image's original comes back exactly, unless the recipe
/// changed the file afterwards (then its version stays).
pub fn borrow_file(ctx: &Ctx, path: &str, content: &str, opts: &BorrowOpts) -> Result<()> {
    let path = image_path(path)?;
    let borrowed = ctx.target.borrowed().ok_or_else(|| {
        Error::invalid("this target cannot give files back after the build".to_string())
    })?;
    let mode = opts.mode.map(check_mode).transpose()?.unwrap_or(0o644);
    borrowed.put_file(ctx.target.root(), path, content.as_bytes(), mode)?;
    Ok(())
}

pub(crate) fn register(engine: &mut Engine, ctx: &Ctx) {
    let c = ctx.clone();
    let borrow = move |nctx: NativeCallContext, path: &str, content: &str, opts: rhai::Map| {
        primitive(
            &c,
            &nctx,
            "borrow_file",
            &[path.into(), content.into(), opts.clone().into()],
            |_| borrow_file(&c, path, content, &crate::api::options(opts)?),
        )
    };
    let b2 = borrow.clone();
    FuncRegistration::new("borrow_file")
        .with_comments(["/// Puts `content` at `path` for the build only; afterwards the image's original\n/// comes back exactly, unless the recipe changed the file since. Options: `mode`."])
        .with_params_info(["path: &str", "content: &str", "opts: Map", "()"])
        .register_into_engine(engine, borrow);
    FuncRegistration::new("borrow_file")
        .with_comments(["/// Puts `content` at `path` for the build only (mode 0644, root's)."])
        .with_params_info(["path: &str", "content: &str", "()"])
        .register_into_engine(
            engine,
            move |nctx: NativeCallContext, path: &str, content: &str| {
                b2(nctx, path, content, rhai::Map::new())
            },
        );
}
