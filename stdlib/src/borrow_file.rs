//! `borrow_file(path, content)`: a file in place for the build only; the
//! borrowed-path rule is in [`crate::borrow`].

use crate::api::options;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::files::{check_mode, image_path};
use crate::register::Str;
use crate::rhai_fns;

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

rhai_fns! { pub(crate) fn register;
    /// Puts `content` at `path` for the build only; afterwards the image's original
    /// comes back exactly, unless the recipe changed the file since. Options: `mode` (default 0o644).
    action borrow_file(path: Str, content: Str, [opts]) |c, _| borrow_file(c, &path, &content, &options(opts)?);
}
