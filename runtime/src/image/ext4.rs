//! e2fsck, resize2fs and fstrim on the root file system, through its loop device.
//!
//! Always a block device, never `image.raw?offset=N`: resize2fs on such a path
//! truncated the image file to the file system's size and destroyed the backup
//! GPT.

use std::path::Path;

use pgimg_stdlib::shared::tail_suffix;

use super::tool::{self, Argv, ToolError};

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error(transparent)]
    Tool(#[from] ToolError),
    #[error("`{argv}` exited with {code}: {}{}", explain_fsck(*.code), tail_suffix("output", .tail))]
    Fsck { argv: Argv, code: i32, tail: String },
    #[error("syncing {mountpoint} before fstrim: {source}")]
    Sync {
        mountpoint: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` printed no trimmed byte count: {output:?}")]
    TrimOutput { argv: Argv, output: String },
}

/// e2fsck's exit status is a bit mask (e2fsck(8), "EXIT CODE").
pub fn explain_fsck(code: i32) -> String {
    const BITS: [(i32, &str); 8] = [
        (1, "errors were corrected"),
        (2, "errors were corrected and the system should be rebooted"),
        (
            4,
            "errors were left uncorrected (run `e2fsck -f` by hand to see them)",
        ),
        (8, "operational error (device busy or unreadable?)"),
        (16, "usage error"),
        (32, "cancelled by the user"),
        (128, "shared-library error"),
        (64, "unknown bit 64"),
    ];
    if code == 0 {
        return "no errors".to_string();
    }
    let parts: Vec<&str> = BITS
        .iter()
        .filter(|(bit, _)| code & bit != 0)
        .map(|(_, text)| *text)
        .collect();
    parts.join("; ")
}

/// How a preening check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsckOutcome {
    Clean,
    /// e2fsck fixed something automatically (exit status 1).
    Corrected,
}

/// `e2fsck -f -p DEV`: check and fix what is safe to fix. Exit status 0 and 1
/// are success; anything else is an error explaining each bit.
pub fn check_preen(device: &Path) -> Result<FsckOutcome, Ext4Error> {
    fsck(device, &["-f", "-p"], &[0, 1]).map(outcome)
}

/// `e2fsck -f -n DEV`: read-only check; only exit status 0 (clean) passes.
pub fn check_clean(device: &Path) -> Result<(), Ext4Error> {
    fsck(device, &["-f", "-n"], &[0]).map(drop)
}

fn outcome(code: i32) -> FsckOutcome {
    if code == 0 {
        FsckOutcome::Clean
    } else {
        FsckOutcome::Corrected
    }
}

/// Runs e2fsck with `flags` on `device`; an exit status outside `accepted`
/// is an [`Ext4Error::Fsck`].
fn fsck(device: &Path, flags: &[&str], accepted: &[i32]) -> Result<i32, Ext4Error> {
    let mut argv: Vec<&std::ffi::OsStr> = vec!["e2fsck".as_ref()];
    argv.extend(flags.iter().map(std::ffi::OsStr::new));
    argv.push(device.as_os_str());
    let out = tool::run(argv)?;
    match out.status.code() {
        Some(code) if accepted.contains(&code) => Ok(code),
        Some(code) => Err(Ext4Error::Fsck {
            tail: out.tail(),
            argv: out.argv,
            code,
        }),
        None => Err(out.failed().into()),
    }
}

/// `resize2fs DEV`: grow the file system to fill the device. Run
/// [`check_preen`] first; resize2fs refuses a file system not freshly checked.
pub fn resize(device: &Path) -> Result<(), Ext4Error> {
    tool::run_ok(["resize2fs".as_ref(), device.as_os_str()])?;
    Ok(())
}

/// The check+resize stage: [`check_preen`] then [`resize`].
pub fn check_and_resize(device: &Path) -> Result<FsckOutcome, Ext4Error> {
    let outcome = check_preen(device)?;
    resize(device)?;
    Ok(outcome)
}

/// `fstrim -v MOUNTPOINT`: free blocks are discarded, which the loop driver
/// turns into holes in the image file. Returns the bytes trimmed.
///
/// The file system is synced first: ext4 frees a deleted file's blocks only
/// when the journal commits (every 5 s), and fstrim skips blocks still
/// pending, so a cleanup just before would otherwise stay allocated.
pub fn fstrim(mountpoint: &Path) -> Result<u64, Ext4Error> {
    let sync = std::fs::File::open(mountpoint)
        .and_then(|dir| nix::unistd::syncfs(&dir).map_err(std::io::Error::from));
    sync.map_err(|source| Ext4Error::Sync {
        mountpoint: mountpoint.to_path_buf(),
        source,
    })?;
    let out = tool::run_ok(["fstrim".as_ref(), "-v".as_ref(), mountpoint.as_os_str()])?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    parse_fstrim(&text).ok_or(Ext4Error::TrimOutput {
        argv: out.argv,
        output: text,
    })
}

/// `e2fsck -f -p -E discard DEV`: the same holes as [`fstrim`] for an
/// unmounted file system (no mount namespace needed).
pub fn discard_unused(device: &Path) -> Result<FsckOutcome, Ext4Error> {
    fsck(device, &["-f", "-p", "-E", "discard"], &[0, 1]).map(outcome)
}

/// "/mnt: 1.2 GiB (1288490188 bytes) trimmed" → 1288490188.
fn parse_fstrim(text: &str) -> Option<u64> {
    let open = text.find('(')?;
    let rest = &text[open + 1..];
    let number = rest.split_whitespace().next()?;
    rest[number.len()..]
        .trim_start()
        .starts_with("bytes")
        .then(|| number.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsck_codes_are_explained_bit_by_bit() {
        assert_eq!(explain_fsck(0), "no errors");
        assert_eq!(explain_fsck(1), "errors were corrected");
        let both = explain_fsck(12);
        assert!(
            both.contains("left uncorrected") && both.contains("operational error"),
            "{both}"
        );
    }

    #[test]
    fn fstrim_output_parsing() {
        for (text, bytes) in [
            (
                "/mnt: 1.2 GiB (1288490188 bytes) trimmed\n",
                Some(1288490188),
            ),
            ("/: 0 B (0 bytes) trimmed\n", Some(0)),
            (
                "/mnt: 4 KiB (4096 bytes) trimmed on /dev/loop0\n",
                Some(4096),
            ),
            (
                "fstrim: /mnt: the discard operation is not supported\n",
                None,
            ),
        ] {
            assert_eq!(parse_fstrim(text), bytes, "{text}");
        }
    }

    #[test]
    fn fsck_on_a_missing_device_is_an_explained_error() {
        let err = check_preen(Path::new("/nonexistent/pgimg-device")).unwrap_err();
        let msg = err.to_string();
        assert!(
            matches!(err, Ext4Error::Fsck { code, .. } if code & 8 != 0),
            "{msg}"
        );
        assert!(
            msg.contains("e2fsck -f -p /nonexistent/pgimg-device"),
            "{msg}"
        );
        assert!(msg.contains("operational error"), "{msg}");
    }
}
