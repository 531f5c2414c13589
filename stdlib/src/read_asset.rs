//! `read_asset(path)`: the text of a recipe asset, for data kept in files (package lists).

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::register::Str;
use crate::rhai_fns;

/// Assets read as text are data for the recipe, not payloads; anything
/// bigger is better copied with `copy_asset`.
pub const MAX_BYTES: u64 = 1 << 20;

/// The UTF-8 text of the asset `rel` (found like `copy_asset` finds it).
pub fn read_asset(ctx: &Ctx, rel: &str) -> Result<String> {
    let path = ctx.asset(rel)?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| Error::invalid(format!("asset `{rel}`: {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!("asset `{rel}` is not a file")));
    }
    if meta.len() > MAX_BYTES {
        return Err(Error::invalid(format!(
            "asset `{rel}` is {} bytes; read_asset takes at most {MAX_BYTES}",
            meta.len()
        )));
    }
    let bytes = std::fs::read(&path)
        .map_err(|e| Error::invalid(format!("asset `{rel}`: {}: {e}", path.display())))?;
    String::from_utf8(bytes).map_err(|_| Error::invalid(format!("asset `{rel}` is not UTF-8 text")))
}

rhai_fns! { pub(crate) fn register;
    /// The text of a file among the recipe's (or flavor's) assets, e.g. a package list;
    /// at most 1 MiB of UTF-8.
    query read_asset(path: Str) |c, _| read_asset(c, &path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeTarget;
    use std::sync::Arc;

    #[test]
    fn reads_text_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("packages")).unwrap();
        std::fs::write(dir.path().join("packages/16.txt"), "postgresql-16\n").unwrap();
        std::fs::write(dir.path().join("bin"), [0xff, 0xfe]).unwrap();
        let big = std::fs::File::create(dir.path().join("big")).unwrap();
        big.set_len(MAX_BYTES + 1).unwrap();
        let c = Ctx::new(Arc::new(FakeTarget::ubuntu()))
            .with_asset_dirs(vec![dir.path().to_path_buf()]);
        assert_eq!(
            read_asset(&c, "packages/16.txt").unwrap(),
            "postgresql-16\n"
        );
        let cases = [
            ("packages", "is not a file"),
            ("bin", "is not UTF-8 text"),
            ("big", "read_asset takes at most 1048576"),
            ("missing.txt", "not found"),
            ("../x", "relative path inside"),
        ];
        for (rel, want) in cases {
            let e = read_asset(&c, rel).unwrap_err().to_string();
            assert!(e.contains(want), "{rel}: {e}");
        }
    }
}
