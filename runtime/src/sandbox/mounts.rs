//! Mounts as guards: each unmounts when dropped, and a stack of them unmounts in reverse.
//!
//! A [`Mount`] unmounts on `close()` (returning the error) or, as a fallback,
//! on drop (logging it; never panicking). Busy mounts are retried a bounded
//! number of times, then detached lazily so the tree is still released. No
//! code here ever removes a mountpoint directory: had an unmount failed, a
//! recursive delete would reach into what is still mounted there.
//!
//! Mountpoints inside an image are resolved with [`ImageRoot`] (the image's own
//! absolute symlinks stay inside it) and mounted on through the resolved
//! descriptor's `/proc/self/fd/N` link, so a link planted in the image can never
//! redirect a mount onto the host.

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use pgimg_stdlib::root::{Attrs, FileKind, FsError};
use pgimg_stdlib::ImageRoot;

/// Attempts at unmounting a busy mount before it is detached lazily.
const UNMOUNT_ATTEMPTS: u32 = 6;

/// A mount or unmount that failed; names the mountpoint.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mounting {what} on {}: {source}", .target.display())]
    Mount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("preparing the mountpoint {path} in the image: {source}")]
    Target {
        path: String,
        #[source]
        source: FsError,
    },
    #[error("the mountpoint {path} in the image is not a directory")]
    NotADirectory { path: String },
    #[error("unmounting {what} from {}: {source}", .target.display())]
    Unmount {
        what: String,
        target: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error(
        "unmounting {what} from {}: still busy after {attempts} attempts; {}",
        .target.display(),
        if *.detached { "detached lazily (released once its last user is gone)" } else { "lazy detach failed too" }
    )]
    Busy {
        what: String,
        target: PathBuf,
        attempts: u32,
        detached: bool,
    },
    #[error("setting up {what}: {reason}")]
    Setup { what: String, reason: String },
}

/// One active mount. Unmounts on [`close`](Mount::close); `Drop` unmounts too
/// (bounded retries, then a lazy detach) and logs a failure instead of panicking.
#[derive(Debug)]
pub struct Mount {
    target: PathBuf,
    what: String,
    mounted: bool,
}

impl Mount {
    /// Mounts on a host path the caller trusts (not inside an image).
    pub fn host(
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
        what: &str,
    ) -> Result<Mount, MountError> {
        mount(source, target, fstype, flags, data).map_err(|e| MountError::Mount {
            what: what.to_string(),
            target: target.to_path_buf(),
            source: e,
        })?;
        Ok(Mount {
            target: target.to_path_buf(),
            what: what.to_string(),
            mounted: true,
        })
    }

    /// Mounts on the directory `in_image` of `root`, creating it (0755) when missing.
    /// `source` is a host path or a pseudo-filesystem name (`proc`, `tmpfs`).
    pub fn in_root(
        root: &ImageRoot,
        in_image: &str,
        source: Option<&Path>,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
        what: &str,
    ) -> Result<Mount, MountError> {
        let target_err = |e| MountError::Target {
            path: in_image.to_string(),
            source: e,
        };
        match root.kind(in_image) {
            Some(FileKind::Dir) => {}
            // A link is resolved inside the image; what it names must be a directory.
            Some(FileKind::Symlink) if matches!(root.stat(in_image), Ok(s) if s.kind == FileKind::Dir) =>
                {}
            None => root
                .mkdir_all(in_image, Attrs::mode(0o755))
                .map_err(target_err)?,
            Some(_) => {
                return Err(MountError::NotADirectory {
                    path: in_image.to_string(),
                })
            }
        }
        let dir = root.open_read(in_image).map_err(target_err)?;
        let fd_link = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
        // The host path of what was resolved: where it is unmounted from and how
        // it is named in messages.
        let target = std::fs::read_link(&fd_link).map_err(|e| {
            target_err(FsError::Io {
                path: in_image.to_string(),
                source: e,
            })
        })?;
        mount(source, &fd_link, fstype, flags, data).map_err(|e| MountError::Mount {
            what: what.to_string(),
            target: target.clone(),
            source: e,
        })?;
        Ok(Mount {
            target,
            what: what.to_string(),
            mounted: true,
        })
    }

    /// Bind-mounts the host directory `host_dir` on `in_image`.
    pub fn bind_in_root(
        root: &ImageRoot,
        host_dir: &Path,
        in_image: &str,
        what: &str,
    ) -> Result<Mount, MountError> {
        Mount::in_root(
            root,
            in_image,
            Some(host_dir),
            None,
            MsFlags::MS_BIND,
            None,
            what,
        )
    }

    /// Where it is mounted, as a host path.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// What is mounted, for messages (`devpts`, `apt archives cache`).
    pub fn what(&self) -> &str {
        &self.what
    }

    /// Unmounts now and reports how that went.
    pub fn close(mut self) -> Result<(), MountError> {
        self.mounted = false;
        unmount(&self.target, &self.what)
    }
}

impl Drop for Mount {
    /// Unmounts if [`close`](Mount::close) was not called; failures are logged.
    fn drop(&mut self) {
        if self.mounted {
            self.mounted = false;
            if let Err(e) = unmount(&self.target, &self.what) {
                pgimg_stdlib::stderr_line!("pgimg: warning: {e}");
            }
        }
    }
}

fn unmount(target: &Path, what: &str) -> Result<(), MountError> {
    let mut delay = Duration::from_millis(25);
    for _ in 0..UNMOUNT_ATTEMPTS {
        match umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => return Ok(()),
            Err(Errno::EBUSY) => {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_millis(400));
            }
            Err(Errno::EINTR) => {}
            Err(e) => {
                return Err(MountError::Unmount {
                    what: what.to_string(),
                    target: target.to_path_buf(),
                    source: e,
                })
            }
        }
    }
    let detached = umount2(target, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW).is_ok();
    Err(MountError::Busy {
        what: what.to_string(),
        target: target.to_path_buf(),
        attempts: UNMOUNT_ATTEMPTS,
        detached,
    })
}

/// Mount points at or below `dir` in the calling thread's mount namespace
/// (`/proc/thread-self/mountinfo`: the namespace this thread mounted in).
pub fn mountpoints_under(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo")?;
    Ok(parse_mountpoints(&text)
        .into_iter()
        .filter(|m| m.starts_with(dir))
        .collect())
}

/// The mount point column of mountinfo, with its octal escapes (`\040`) decoded.
fn parse_mountpoints(mountinfo: &str) -> Vec<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let b = m.as_bytes();
            let mut out = Vec::with_capacity(b.len());
            let mut i = 0;
            while i < b.len() {
                let octal = b[i] == b'\\'
                    && i + 3 < b.len()
                    && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
                if octal {
                    out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
                    i += 4;
                } else {
                    out.push(b[i]);
                    i += 1;
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .collect()
}

/// Mounts made in order, released in reverse. `Drop` releases what is left.
#[derive(Debug, Default)]
pub struct MountStack {
    mounts: Vec<Mount>,
}

impl MountStack {
    pub fn new() -> Self {
        MountStack::default()
    }

    pub fn push(&mut self, m: Mount) {
        self.mounts.push(m);
    }

    /// Unmounts the most recent mount, if any.
    pub fn pop(&mut self) -> Option<Result<(), MountError>> {
        self.mounts.pop().map(Mount::close)
    }

    pub fn len(&self) -> usize {
        self.mounts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.mounts.is_empty()
    }

    /// The mountpoints, oldest first.
    pub fn targets(&self) -> Vec<PathBuf> {
        self.mounts.iter().map(|m| m.target.clone()).collect()
    }

    /// Unmounts everything in reverse order. Keeps going after a failure (so
    /// as much as possible is released) and returns the first error; the
    /// others are logged.
    pub fn close(mut self) -> Result<(), MountError> {
        self.close_all()
    }

    fn close_all(&mut self) -> Result<(), MountError> {
        let mut first = None;
        while let Some(m) = self.mounts.pop() {
            if let Err(e) = m.close() {
                if first.is_none() {
                    first = Some(e);
                } else {
                    pgimg_stdlib::stderr_line!("pgimg: warning: {e}");
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for MountStack {
    /// Unmounts whatever is still mounted, newest first, logging failures.
    fn drop(&mut self) {
        if let Err(e) = self.close_all() {
            pgimg_stdlib::stderr_line!("pgimg: warning: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mountinfo_mount_points() {
        let info = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    90 27 0:50 / /var/tmp/a\\040b rw - tmpfs tmpfs rw\n\
                    91 90 0:51 / /var/tmp/a\\040b/dev rw - tmpfs tmpfs rw\n";
        assert_eq!(
            parse_mountpoints(info),
            [
                PathBuf::from("/proc"),
                PathBuf::from("/var/tmp/a b"),
                PathBuf::from("/var/tmp/a b/dev")
            ]
        );
    }
}
