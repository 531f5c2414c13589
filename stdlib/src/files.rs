//! File primitives: `write_file`, `append_file`, `copy_asset`, `mkdir`, `symlink`, `remove`.

use serde::Deserialize;

use crate::api::{options, to_array};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::owner::resolve_owner;
use crate::register::Str;
use crate::rhai_fns;
use crate::root::Attrs;

/// `mode` and `owner`, shared by the primitives that create files.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOpts {
    pub mode: Option<i64>,
    pub owner: Option<String>,
}

impl FileOpts {
    pub fn mode(&self) -> Result<Option<u32>> {
        self.mode.map(check_mode).transpose()
    }
}

/// Checks a mode from a recipe. `mode: 644` (decimal, meaning 0o1204) is a
/// classic slip that would silently set the sticky bit and odd permissions:
/// a decimal value whose digits all look octal and that only makes sense as
/// octal is refused with the likely intent.
pub fn check_mode(m: i64) -> Result<u32> {
    let mode = u32::try_from(m)
        .ok()
        .filter(|m| *m <= 0o7777)
        .ok_or_else(|| Error::invalid(format!("mode {m:#o} is not a file mode (0 to 0o7777)")))?;
    let digits = m.to_string();
    // Three octal-looking digits above 0o777 (512..=777): `mode: 644`. Four-digit
    // values are real octal modes written as such (0o4755 is 2541).
    let looks_octal = digits.len() == 3 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if looks_octal && mode > 0o777 {
        return Err(Error::invalid(format!(
            "mode {m} is decimal ({mode:#o}); write it in octal: `0o{digits}`"
        )));
    }
    Ok(mode)
}

/// Applies `mode` and `owner` to an in-image path.
pub fn apply(ctx: &Ctx, path: &str, mode: Option<u32>, owner: Option<&str>) -> Result<()> {
    if let Some(mode) = mode {
        ctx.target.root().set_attrs(path, Attrs::mode(mode))?;
    }
    if let Some(owner) = owner {
        let (uid, gid) = resolve_owner(ctx.target.root(), owner)?;
        ctx.target.chown(path, uid, gid)?;
    }
    Ok(())
}

/// Checks that a path given by a recipe is absolute (inside the image).
pub fn image_path(path: &str) -> Result<&str> {
    if path.starts_with('/') {
        Ok(path)
    } else {
        Err(Error::invalid(format!(
            "`{path}` must be an absolute path inside the image"
        )))
    }
}

pub fn write_file(ctx: &Ctx, path: &str, content: &str, opts: &FileOpts) -> Result<()> {
    let path = image_path(path)?;
    ctx.target.root().write(
        path,
        content.as_bytes(),
        Attrs {
            mode: opts.mode()?,
            ..Attrs::default()
        },
    )?;
    apply(ctx, path, None, opts.owner.as_deref())
}

pub fn append_file(ctx: &Ctx, path: &str, content: &str) -> Result<()> {
    ctx.target
        .root()
        .append(image_path(path)?, content.as_bytes())?;
    Ok(())
}

pub fn mkdir(ctx: &Ctx, path: &str, opts: &FileOpts) -> Result<()> {
    let path = image_path(path)?;
    ctx.target.root().mkdir_all(
        path,
        Attrs {
            mode: opts.mode()?,
            ..Attrs::default()
        },
    )?;
    apply(ctx, path, None, opts.owner.as_deref())
}

/// Copies an asset file or folder to `dest`; returns the in-image paths written.
pub fn copy_asset(ctx: &Ctx, asset: &str, dest: &str, opts: &FileOpts) -> Result<Vec<String>> {
    let dest = image_path(dest)?;
    let src = ctx.asset(asset)?;
    let mode = opts.mode()?;
    let written = ctx.target.root().copy_from_host(
        &src,
        dest,
        Attrs {
            mode,
            ..Attrs::default()
        },
    )?;
    if let Some(owner) = &opts.owner {
        // Never through a link: a copied link to /etc/passwd must not hand
        // the image's passwd to the owner.
        for p in written
            .iter()
            .filter(|p| ctx.target.root().kind(p.as_str()) != Some(crate::root::FileKind::Symlink))
        {
            apply(ctx, p, None, Some(owner))?;
        }
    }
    Ok(written)
}

rhai_fns! { pub(crate) fn register;
    /// Writes `content` to `path` in the image atomically.
    /// Options: `mode` (e.g. `0o640`), `owner` (`"user"` or `"user:group"`).
    action write_file(path: Str, content: Str, [opts]) |c, _| write_file(c, &path, &content, &options(opts)?);
    /// Appends `content` to `path` in the image, creating it when missing.
    action append_file(path: Str, content: Str) |c, _| append_file(c, &path, &content);
    /// Creates a directory and its parents (`mkdir -p`). Options: `mode`, `owner`.
    action mkdir(path: Str, [opts]) |c, _| mkdir(c, &path, &options(opts)?);
    /// Copies a file or folder from the recipe's (or flavor's) `assets/` into the image.
    /// Options: `mode`, `owner`. Returns the paths written.
    action copy_asset(asset: Str, dest: Str, [opts]) |c, _| copy_asset(c, &asset, &dest, &options(opts)?).map(to_array);
    /// Creates (or replaces) the symlink `link` pointing at `target`.
    action symlink(target: Str, link: Str) |c, _| Ok(c.target.root().symlink(target.as_str(), image_path(&link)?)?);
    /// Removes a file, link or directory tree; returns whether anything was there.
    action remove(path: Str) |c, _| Ok(c.target.root().remove(image_path(&path)?)?);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{fake_ctx, host_dir};
    use crate::Target;

    #[test]
    fn write_with_mode_and_owner() {
        let (t, c) = fake_ctx();
        let opts = FileOpts {
            mode: Some(0o600),
            owner: Some("www-data".into()),
        };
        write_file(&c, "/etc/x.conf", "a", &opts).unwrap();
        assert_eq!(t.root().stat("/etc/x.conf").unwrap().mode, 0o600);
        assert_eq!(t.owner("/etc/x.conf"), Some((33, 33)));
        assert!(write_file(&c, "relative", "a", &FileOpts::default()).is_err());
        let bad = FileOpts {
            mode: Some(0o17777),
            owner: None,
        };
        assert!(write_file(&c, "/x", "a", &bad)
            .unwrap_err()
            .to_string()
            .contains("not a file mode"));
    }

    #[test]
    fn decimal_modes_that_meant_octal_are_refused() {
        for (m, ok) in [
            (644, false),
            (755, false),
            (640, false),
            (600, false),
            (0o644, true),
            (0o4755, true),
            (511, true),
            (0, true),
        ] {
            assert_eq!(check_mode(m).is_ok(), ok, "{m}");
        }
        let e = check_mode(640).unwrap_err().to_string();
        assert!(e.contains("write it in octal: `0o640`"), "{e}");
    }

    #[test]
    fn copy_asset_owner_never_follows_a_copied_link() {
        let (t, c) = fake_ctx();
        let assets = host_dir(&[("tree/f", "f")]);
        std::os::unix::fs::symlink("/etc/passwd", assets.path().join("tree/pw")).unwrap();
        let c = c.with_asset_dirs(vec![assets.path().to_path_buf()]);
        copy_asset(
            &c,
            "tree",
            "/opt/tree",
            &FileOpts {
                mode: None,
                owner: Some("www-data".into()),
            },
        )
        .unwrap();
        assert_eq!(t.owner("/opt/tree/f"), Some((33, 33)));
        assert_eq!(t.owner("/etc/passwd"), None);
        assert_eq!(t.owner("/opt/tree/pw"), None);
    }

    #[test]
    fn append_mkdir() {
        let (t, c) = fake_ctx();
        append_file(&c, "/etc/motd", "one\n").unwrap();
        append_file(&c, "/etc/motd", "two\n").unwrap();
        assert_eq!(t.root().read_string("/etc/motd").unwrap(), "one\ntwo\n");
        mkdir(
            &c,
            "/opt/a/b",
            &FileOpts {
                mode: Some(0o750),
                owner: None,
            },
        )
        .unwrap();
        assert_eq!(t.root().stat("/opt/a/b").unwrap().mode, 0o750);
    }

    #[test]
    fn copy_asset_file_and_tree() {
        let (t, c) = fake_ctx();
        let assets = host_dir(&[("units/a.service", "[Unit]\n"), ("units/sub/b", "b")]);
        let c = c.with_asset_dirs(vec![assets.path().to_path_buf()]);
        let w = copy_asset(&c, "units", "/etc/u", &FileOpts::default()).unwrap();
        assert_eq!(
            w,
            vec!["/etc/u", "/etc/u/a.service", "/etc/u/sub", "/etc/u/sub/b"]
        );
        assert_eq!(t.root().read_string("/etc/u/sub/b").unwrap(), "b");
        let e = copy_asset(&c, "../etc/passwd", "/x", &FileOpts::default()).unwrap_err();
        assert!(e.to_string().contains("relative path inside"), "{e}");
        let e = copy_asset(&c, "missing", "/x", &FileOpts::default()).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
    }
}
