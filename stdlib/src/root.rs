//! File operations confined to an image root, resolved the way a chroot would.
//!
//! Every file primitive goes through [`ImageRoot`]. Paths are resolved with
//! `openat2(RESOLVE_IN_ROOT)` (through `pathrs`): an absolute symlink inside the
//! image points inside the image, `..` stops at the image's `/`, and nothing on
//! the host is ever reached through a link planted in the image. The last path
//! component is then handled with `*at` system calls relative to the resolved
//! parent directory, so a rename or unlink never follows a link either.

use std::ffi::OsStr;
use std::fs::{File, Permissions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{FchmodatFlags, Mode, SFlag};
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use pathrs::flags::OpenFlags;
use pathrs::Root;

use crate::shared::escape_controls;

/// An error from a confined file operation; carries the in-image path.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("{}: {source}", escape_controls(path))]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", escape_controls(path))]
    Invalid { path: String, reason: String },
}

impl FsError {
    fn io(path: &Path, source: impl Into<std::io::Error>) -> Self {
        FsError::Io {
            path: path.display().to_string(),
            source: source.into(),
        }
    }

    /// True when the error means "no such file or directory".
    pub fn is_not_found(&self) -> bool {
        matches!(self, FsError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

fn pathrs_io(path: &Path, e: pathrs::error::Error) -> FsError {
    let source = match e.kind() {
        pathrs::error::ErrorKind::OsError(Some(errno)) => std::io::Error::from_raw_os_error(errno),
        _ => std::io::Error::other(e.to_string()),
    };
    FsError::io(path, source)
}

fn errno_io(path: &Path, e: nix::errno::Errno) -> FsError {
    FsError::io(path, std::io::Error::from(e))
}

/// What an in-image path is, without following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    Other,
}

/// Mode and ownership to apply to a file or directory; `None` keeps what is there.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Attrs {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl Attrs {
    pub fn mode(mode: u32) -> Self {
        Attrs {
            mode: Some(mode),
            ..Attrs::default()
        }
    }
}

/// Status of an in-image path.
#[derive(Debug, Clone, Copy)]
pub struct Stat {
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
}

/// A directory on the host treated as the `/` of an image.
pub struct ImageRoot {
    dir: PathBuf,
    root: Root,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

impl std::fmt::Debug for ImageRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageRoot").field("dir", &self.dir).finish()
    }
}

/// Splits an in-image path into its parent and final name, normalising it to
/// be absolute. `..` is kept for the resolver, which clamps it at the root.
fn split(path: &Path) -> Result<(PathBuf, std::ffi::OsString), FsError> {
    let mut parts: Vec<&OsStr> = Vec::new();
    for c in path.components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => parts.push(OsStr::new("..")),
            Component::Normal(n) => parts.push(n),
        }
    }
    match parts.pop() {
        Some(name) if name != ".." => {
            let mut parent = PathBuf::from("/");
            parent.extend(parts);
            Ok((parent, name.to_owned()))
        }
        _ => Err(FsError::Invalid {
            path: path.display().to_string(),
            reason: "needs a file name (not / or ..)".into(),
        }),
    }
}

impl ImageRoot {
    /// Opens `dir` as an image root.
    pub fn open(dir: &Path) -> Result<Self, FsError> {
        let root = Root::open(dir).map_err(|e| pathrs_io(dir, e))?;
        Ok(ImageRoot {
            dir: dir.to_path_buf(),
            root,
        })
    }

    /// The host directory this root lives in. Only the runtime uses this (to
    /// mount on it and to chroot into it); primitives never do.
    pub fn host_dir(&self) -> &Path {
        &self.dir
    }

    fn parent_dir(&self, parent: &Path, create: bool) -> Result<OwnedFd, FsError> {
        let handle = if create {
            self.root
                .mkdir_all(parent, &Permissions::from_mode(0o755))
                .map_err(|e| pathrs_io(parent, e))?
        } else {
            self.root
                .resolve(parent)
                .map_err(|e| pathrs_io(parent, e))?
        };
        Ok(handle.into())
    }

    /// Opens a file for reading, following symlinks inside the root.
    pub fn open_read(&self, path: impl AsRef<Path>) -> Result<File, FsError> {
        let path = path.as_ref();
        self.root
            .open_subpath(path, OpenFlags::O_RDONLY | OpenFlags::O_CLOEXEC)
            .map_err(|e| pathrs_io(path, e))
    }

    /// Reads a whole file.
    pub fn read(&self, path: impl AsRef<Path>) -> Result<Vec<u8>, FsError> {
        let path = path.as_ref();
        let mut buf = Vec::new();
        self.open_read(path)?
            .read_to_end(&mut buf)
            .map_err(|e| FsError::io(path, e))?;
        Ok(buf)
    }

    /// Reads a whole file as UTF-8 text.
    pub fn read_string(&self, path: impl AsRef<Path>) -> Result<String, FsError> {
        let path = path.as_ref();
        String::from_utf8(self.read(path)?).map_err(|_| FsError::Invalid {
            path: path.display().to_string(),
            reason: "is not UTF-8 text".into(),
        })
    }

    /// Reads a text file, or `None` when it does not exist.
    pub fn read_string_opt(&self, path: impl AsRef<Path>) -> Result<Option<String>, FsError> {
        match self.read_string(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Status of `path`; a final symlink is reported as such, not followed.
    pub fn lstat(&self, path: impl AsRef<Path>) -> Result<Stat, FsError> {
        let path = path.as_ref();
        let handle = self
            .root
            .resolve_nofollow(path)
            .map_err(|e| pathrs_io(path, e))?;
        stat_fd(path, handle.as_fd())
    }

    /// Status of `path`, following symlinks inside the root.
    pub fn stat(&self, path: impl AsRef<Path>) -> Result<Stat, FsError> {
        let path = path.as_ref();
        let handle = self.root.resolve(path).map_err(|e| pathrs_io(path, e))?;
        stat_fd(path, handle.as_fd())
    }

    /// What is at `path` (not following a final symlink), or `None`.
    pub fn kind(&self, path: impl AsRef<Path>) -> Option<FileKind> {
        self.lstat(path).ok().map(|s| s.kind)
    }

    /// True when something (even a dangling symlink) is at `path`.
    pub fn exists(&self, path: impl AsRef<Path>) -> bool {
        self.kind(path).is_some()
    }

    /// Target of the symlink at `path`.
    pub fn readlink(&self, path: impl AsRef<Path>) -> Result<PathBuf, FsError> {
        let path = path.as_ref();
        self.root.readlink(path).map_err(|e| pathrs_io(path, e))
    }

    /// Names in the directory at `path`, sorted.
    pub fn read_dir(&self, path: impl AsRef<Path>) -> Result<Vec<String>, FsError> {
        let path = path.as_ref();
        let handle = self.root.resolve(path).map_err(|e| pathrs_io(path, e))?;
        let dir = handle
            .reopen(OpenFlags::O_RDONLY | OpenFlags::O_DIRECTORY | OpenFlags::O_CLOEXEC)
            .map_err(|e| pathrs_io(path, e))?;
        let proc_path = format!("/proc/self/fd/{}", dir.as_raw_fd());
        let mut names: Vec<String> = std::fs::read_dir(&proc_path)
            .map_err(|e| FsError::io(path, e))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        Ok(names)
    }

    /// Writes `content` to `path` atomically (temporary file + rename in the
    /// same directory), creating parent directories. Without an explicit mode
    /// or owner, an existing regular file keeps its own; a new one gets 0644.
    pub fn write(
        &self,
        path: impl AsRef<Path>,
        content: &[u8],
        attrs: Attrs,
    ) -> Result<(), FsError> {
        self.write_from(path, &mut &content[..], attrs).map(|_| ())
    }

    /// Like [`write`](Self::write), streaming from `reader`; returns the byte count.
    pub fn write_from(
        &self,
        path: impl AsRef<Path>,
        reader: &mut dyn Read,
        attrs: Attrs,
    ) -> Result<u64, FsError> {
        let path = path.as_ref();
        let (parent, name) = split(path)?;
        let dir = self.parent_dir(&parent, true)?;
        let existing =
            nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()
                .filter(|st| {
                    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG
                });
        if let Ok(st) =
            nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
        {
            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR {
                return Err(FsError::Invalid {
                    path: path.display().to_string(),
                    reason: "is a directory".into(),
                });
            }
        }
        let tmp = format!(
            ".{}.pgimg-{}-{}",
            name.to_string_lossy(),
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let fd = nix::fcntl::openat(
            &dir,
            tmp.as_str(),
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(|e| errno_io(path, e))?;
        let mut file = File::from(fd);
        let result = (|| {
            let n = std::io::copy(reader, &mut file).map_err(|e| FsError::io(path, e))?;
            file.flush().map_err(|e| FsError::io(path, e))?;
            let mode = attrs
                .mode
                .or(existing.map(|st| st.st_mode & 0o7777))
                .unwrap_or(0o644);
            let uid = attrs.uid.or(existing.map(|st| st.st_uid));
            let gid = attrs.gid.or(existing.map(|st| st.st_gid));
            if uid.is_some() || gid.is_some() {
                nix::unistd::fchown(&file, uid.map(Uid::from_raw), gid.map(Gid::from_raw))
                    .map_err(|e| errno_io(path, e))?;
            }
            // chmod after chown: chown clears setuid bits.
            nix::sys::stat::fchmod(&file, Mode::from_bits_truncate(mode))
                .map_err(|e| errno_io(path, e))?;
            nix::fcntl::renameat(&dir, tmp.as_str(), &dir, name.as_os_str())
                .map_err(|e| errno_io(path, e))?;
            Ok(n)
        })();
        if result.is_err() {
            let _ = nix::unistd::unlinkat(&dir, tmp.as_str(), UnlinkatFlags::NoRemoveDir);
        }
        result
    }

    /// Appends to `path`, creating it (mode 0644) and its parents if needed.
    pub fn append(&self, path: impl AsRef<Path>, content: &[u8]) -> Result<(), FsError> {
        let path = path.as_ref();
        let (parent, name) = split(path)?;
        let dir = self.parent_dir(&parent, true)?;
        let fd = nix::fcntl::openat(
            &dir,
            name.as_os_str(),
            OFlag::O_CREAT
                | OFlag::O_APPEND
                | OFlag::O_WRONLY
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        );
        let fd = match fd {
            Ok(fd) => fd,
            // A symlink at the name: append to what it points at, resolved in the root.
            Err(nix::errno::Errno::ELOOP) => self
                .root
                .open_subpath(
                    path,
                    OpenFlags::O_WRONLY | OpenFlags::O_APPEND | OpenFlags::O_CLOEXEC,
                )
                .map_err(|e| pathrs_io(path, e))?
                .into(),
            Err(e) => return Err(errno_io(path, e)),
        };
        File::from(fd)
            .write_all(content)
            .map_err(|e| FsError::io(path, e))
    }

    /// Creates `path` and its parents (`mkdir -p`); applies `attrs` to the last one.
    pub fn mkdir_all(&self, path: impl AsRef<Path>, attrs: Attrs) -> Result<(), FsError> {
        let path = path.as_ref();
        // Parents get 0755 like `mkdir -p`; only the last component gets `mode`
        // (pathrs would give every directory it creates the same mode).
        if let Some(parent) = path.parent() {
            self.root
                .mkdir_all(parent, &Permissions::from_mode(0o755))
                .map_err(|e| pathrs_io(parent, e))?;
        }
        let mode = attrs.mode.unwrap_or(0o755);
        self.root
            .mkdir_all(path, &Permissions::from_mode(mode))
            .map_err(|e| pathrs_io(path, e))?;
        self.set_attrs(path, attrs)
    }

    /// Creates (or replaces) the symlink `link` pointing at `target`.
    pub fn symlink(&self, target: impl AsRef<Path>, link: impl AsRef<Path>) -> Result<(), FsError> {
        let link = link.as_ref();
        let (parent, name) = split(link)?;
        let dir = self.parent_dir(&parent, true)?;
        match nix::sys::stat::fstatat(&dir, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFDIR => {
                return Err(FsError::Invalid {
                    path: link.display().to_string(),
                    reason: "is a directory; remove it first".into(),
                })
            }
            Ok(_) => nix::unistd::unlinkat(&dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| errno_io(link, e))?,
            Err(_) => {}
        }
        nix::unistd::symlinkat(target.as_ref(), &dir, name.as_os_str())
            .map_err(|e| errno_io(link, e))
    }

    /// Removes `path` recursively; returns whether anything was there.
    /// A symlink is removed itself, never what it points at. Refuses, before
    /// removing anything, when `path` is or holds a mount point: what is
    /// mounted there during the build (a host cache bound in, the ESP) is not
    /// the image's to delete.
    pub fn remove(&self, path: impl AsRef<Path>) -> Result<bool, FsError> {
        let path = path.as_ref();
        if !self.exists(path) {
            return Ok(false);
        }
        self.check_no_mount_beneath(path)?;
        self.root.remove_all(path).map_err(|e| pathrs_io(path, e))?;
        Ok(true)
    }

    /// Errs when `path` (not following a final link) is a mount point or a
    /// directory with a mount point anywhere beneath it. Mount points are told
    /// by their mount id (`statx(STATX_MNT_ID)`), which also tells apart a
    /// bind mount of the same file system, where the device number would not.
    pub fn check_no_mount_beneath(&self, path: impl AsRef<Path>) -> Result<(), FsError> {
        let path = path.as_ref();
        let (parent, name) = split(path)?;
        let dir = self.parent_dir(&parent, false)?;
        let parent_id = mount_id(dir.as_fd(), c"", path)?;
        let name_c = std::ffi::CString::new(name.as_bytes()).map_err(|_| FsError::Invalid {
            path: path.display().to_string(),
            reason: "contains a NUL byte".into(),
        })?;
        let (id, is_dir) = mount_id_of(dir.as_fd(), &name_c, path)?;
        if id != parent_id {
            return Err(mount_point_error(path));
        }
        if is_dir {
            let sub = nix::fcntl::openat(
                &dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| errno_io(path, e))?;
            check_tree(sub, id, path)?;
        }
        Ok(())
    }

    /// Applies mode and ownership to `path` (following symlinks inside the root).
    pub fn set_attrs(&self, path: impl AsRef<Path>, attrs: Attrs) -> Result<(), FsError> {
        let path = path.as_ref();
        if attrs == Attrs::default() {
            return Ok(());
        }
        let handle = self.root.resolve(path).map_err(|e| pathrs_io(path, e))?;
        // An O_PATH descriptor cannot be fchmod'ed; its /proc/self/fd magic
        // link names exactly the resolved inode, so chmod through it is safe.
        let proc_path = format!("/proc/self/fd/{}", handle.as_fd().as_raw_fd());
        if attrs.uid.is_some() || attrs.gid.is_some() {
            nix::unistd::fchownat(
                nix::fcntl::AT_FDCWD,
                proc_path.as_str(),
                attrs.uid.map(Uid::from_raw),
                attrs.gid.map(Gid::from_raw),
                AtFlags::empty(),
            )
            .map_err(|e| errno_io(path, e))?;
        }
        if let Some(mode) = attrs.mode {
            nix::sys::stat::fchmodat(
                nix::fcntl::AT_FDCWD,
                proc_path.as_str(),
                Mode::from_bits_truncate(mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| errno_io(path, e))?;
        }
        Ok(())
    }

    /// Copies a host file or directory tree into the root at `dest`.
    /// Symlinks are copied as links; special files are refused.
    pub fn copy_from_host(
        &self,
        src: &Path,
        dest: impl AsRef<Path>,
        attrs: Attrs,
    ) -> Result<Vec<String>, FsError> {
        let dest = dest.as_ref();
        let mut written = Vec::new();
        self.copy_tree(src, dest, attrs, &mut written)?;
        Ok(written)
    }

    fn copy_tree(
        &self,
        src: &Path,
        dest: &Path,
        attrs: Attrs,
        written: &mut Vec<String>,
    ) -> Result<(), FsError> {
        let meta = std::fs::symlink_metadata(src).map_err(|e| FsError::io(src, e))?;
        let ft = meta.file_type();
        if ft.is_symlink() {
            let target = std::fs::read_link(src).map_err(|e| FsError::io(src, e))?;
            self.symlink(target, dest)?;
        } else if ft.is_dir() {
            let dir_attrs = Attrs {
                mode: attrs
                    .mode
                    .map(|_| 0o755)
                    .or(Some(meta.permissions().mode() & 0o7777)),
                ..attrs
            };
            self.mkdir_all(dest, dir_attrs)?;
            written.push(dest.display().to_string());
            let mut entries: Vec<_> = std::fs::read_dir(src)
                .map_err(|e| FsError::io(src, e))?
                .filter_map(|e| e.ok())
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                self.copy_tree(&entry.path(), &dest.join(entry.file_name()), attrs, written)?;
            }
            return Ok(());
        } else if ft.is_file() {
            let mut file = File::open(src).map_err(|e| FsError::io(src, e))?;
            let attrs = Attrs {
                mode: attrs.mode.or(Some(meta.permissions().mode() & 0o7777)),
                ..attrs
            };
            self.write_from(dest, &mut file, attrs)?;
        } else {
            return Err(FsError::Invalid {
                path: src.display().to_string(),
                reason: "is not a regular file, directory or symlink".into(),
            });
        }
        written.push(dest.display().to_string());
        Ok(())
    }
}

fn mount_point_error(path: &Path) -> FsError {
    FsError::Invalid {
        path: path.display().to_string(),
        reason: "is or holds a mount point (something the build mounted there, such as a \
                 host cache); pgimg never deletes into a mount, so nothing was removed"
            .into(),
    }
}

/// Mount id and whether it is a directory, of `name` in `dir` (a final link not followed).
fn mount_id_of(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    path: &Path,
) -> Result<(u64, bool), FsError> {
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    let flags = libc::AT_SYMLINK_NOFOLLOW
        | libc::AT_NO_AUTOMOUNT
        | if name.is_empty() {
            libc::AT_EMPTY_PATH
        } else {
            0
        };
    // SAFETY: a valid descriptor, a NUL-terminated name and a zeroed buffer.
    let r = unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::STATX_TYPE | libc::STATX_MNT_ID,
            &mut stx,
        )
    };
    if r != 0 {
        return Err(FsError::io(path, std::io::Error::last_os_error()));
    }
    if stx.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(FsError::Invalid {
            path: path.display().to_string(),
            reason: "the kernel reports no mount id (statx STATX_MNT_ID needs Linux 5.8)".into(),
        });
    }
    let is_dir = u32::from(stx.stx_mode) & libc::S_IFMT == libc::S_IFDIR;
    Ok((stx.stx_mnt_id, is_dir))
}

fn mount_id(
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::CStr,
    path: &Path,
) -> Result<u64, FsError> {
    mount_id_of(dir, name, path).map(|(id, _)| id)
}

/// Walks the directory `dir` (on mount `id`) and errs at the first entry on another mount.
fn check_tree(dir: OwnedFd, id: u64, path: &Path) -> Result<(), FsError> {
    let names: Vec<std::ffi::OsString> =
        std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))
            .map_err(|e| FsError::io(path, e))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| FsError::io(path, e))?;
    for name in names {
        let child = path.join(&name);
        let name_c =
            std::ffi::CString::new(name.as_bytes()).expect("directory entries have no NUL");
        let (child_id, is_dir) = mount_id_of(dir.as_fd(), &name_c, &child)?;
        if child_id != id {
            return Err(mount_point_error(&child));
        }
        if is_dir {
            let sub = nix::fcntl::openat(
                &dir,
                name.as_os_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| errno_io(&child, e))?;
            check_tree(sub, id, &child)?;
        }
    }
    Ok(())
}

fn stat_fd(path: &Path, fd: std::os::fd::BorrowedFd<'_>) -> Result<Stat, FsError> {
    let st = nix::sys::stat::fstatat(
        fd,
        "",
        AtFlags::AT_EMPTY_PATH | AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| errno_io(path, e))?;
    let fmt = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
    let kind = if fmt == SFlag::S_IFREG {
        FileKind::File
    } else if fmt == SFlag::S_IFDIR {
        FileKind::Dir
    } else if fmt == SFlag::S_IFLNK {
        FileKind::Symlink
    } else {
        FileKind::Other
    };
    Ok(Stat {
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: st.st_size as u64,
    })
}

/// Turns a host path's bytes into a display string (lossy), for messages.
pub fn display(path: &Path) -> String {
    String::from_utf8_lossy(path.as_os_str().as_bytes()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, ImageRoot) {
        let dir = tempfile::tempdir().unwrap();
        let root = ImageRoot::open(dir.path()).unwrap();
        (dir, root)
    }

    #[test]
    fn write_read_roundtrip_creates_parents() {
        let (_d, r) = root();
        r.write("/etc/a/b.conf", b"x=1\n", Attrs::mode(0o640))
            .unwrap();
        assert_eq!(r.read_string("/etc/a/b.conf").unwrap(), "x=1\n");
        assert_eq!(r.stat("/etc/a/b.conf").unwrap().mode, 0o640);
        // Rewriting without a mode keeps the existing one.
        r.write("/etc/a/b.conf", b"x=2\n", Attrs::default())
            .unwrap();
        assert_eq!(r.stat("/etc/a/b.conf").unwrap().mode, 0o640);
    }

    /// The image's `/etc/foo` links to a host path; writing it must stay inside.
    #[test]
    fn symlink_escape_absolute_and_relative() {
        let host = tempfile::tempdir().unwrap();
        let host_file = host.path().join("host-file");
        std::fs::write(&host_file, "host").unwrap();
        for target in [
            host_file.display().to_string(),
            format!("../../../../..{}", host_file.display()),
        ] {
            let (d, r) = root();
            std::fs::create_dir(d.path().join("etc")).unwrap();
            std::os::unix::fs::symlink(&target, d.path().join("etc/foo")).unwrap();
            r.write("/etc/foo", b"image", Attrs::default()).unwrap();
            r.append("/etc/foo", b"+").unwrap();
            assert_eq!(std::fs::read_to_string(&host_file).unwrap(), "host");
            assert_eq!(r.read_string("/etc/foo").unwrap(), "image+");
        }
    }

    #[test]
    fn reads_through_links_resolve_inside_the_root() {
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("secret"), "host secret").unwrap();
        let (d, r) = root();
        std::os::unix::fs::symlink(host.path().join("secret"), d.path().join("link")).unwrap();
        assert!(r.read("/link").unwrap_err().is_not_found());
        std::fs::create_dir(d.path().join("etc")).unwrap();
        assert!(r
            .read("/etc/../../../../../etc/hostname")
            .unwrap_err()
            .is_not_found());
        std::os::unix::fs::symlink("/", d.path().join("etc/up")).unwrap();
        r.write("/etc/up/etc/inside", b"1", Attrs::default())
            .unwrap();
        assert!(d.path().join("etc/inside").exists());
    }

    #[test]
    fn append_through_a_link_lands_at_its_in_root_target() {
        let (d, r) = root();
        r.write("/var/real.log", b"a", Attrs::default()).unwrap();
        std::os::unix::fs::symlink("/var/real.log", d.path().join("log")).unwrap();
        r.append("/log", b"b").unwrap();
        assert_eq!(r.read_string("/var/real.log").unwrap(), "ab");
    }

    #[test]
    fn symlink_replace_and_remove_never_follow() {
        let (d, r) = root();
        r.write("/data/keep", b"k", Attrs::default()).unwrap();
        r.symlink("/data", "/l").unwrap();
        r.symlink("/other", "/l").unwrap();
        assert_eq!(r.readlink("/l").unwrap(), PathBuf::from("/other"));
        r.symlink("/data", "/l").unwrap();
        assert!(r.remove("/l").unwrap());
        assert!(d.path().join("data/keep").exists());
        assert!(!r.remove("/l").unwrap());
    }

    #[test]
    fn refuses_root_as_file_name() {
        let (_d, r) = root();
        assert!(r.write("/", b"x", Attrs::default()).is_err());
        assert!(r.write("/..", b"x", Attrs::default()).is_err());
    }

    /// A host folder bound into the image (as the apt archives cache is):
    /// removing its parent refuses and deletes nothing, on either side.
    #[test]
    fn remove_never_descends_into_a_bind_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("remove_never_descends_into_a_bind_mount: SKIPPED (needs root)");
            return;
        }
        // This test thread only: the bind vanishes with it.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).unwrap();
        nix::mount::mount(
            None::<&str>,
            "/",
            None::<&str>,
            nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("hello_2.10.deb"), b"deb").unwrap();
        let (d, r) = root();
        r.write("/var/cache/apt/pkgcache.bin", b"x", Attrs::default())
            .unwrap();
        r.mkdir_all("/var/cache/apt/archives", Attrs::default())
            .unwrap();
        let target = d.path().join("var/cache/apt/archives");
        nix::mount::mount(
            Some(host.path()),
            &target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        for p in [
            "/var/cache/apt/archives",
            "/var/cache/apt",
            "/var/cache",
            "/var",
        ] {
            let e = r.remove(p).unwrap_err();
            assert!(e.to_string().contains("mount point"), "{p}: {e}");
        }
        assert!(host.path().join("hello_2.10.deb").exists());
        assert!(r.exists("/var/cache/apt/pkgcache.bin"));
        nix::mount::umount(&target).unwrap();
        assert!(r.remove("/var/cache").unwrap());
    }

    #[test]
    fn mkdir_and_read_dir() {
        let (_d, r) = root();
        r.mkdir_all("/a/b/c", Attrs::mode(0o700)).unwrap();
        r.write("/a/b/z", b"", Attrs::default()).unwrap();
        assert_eq!(r.read_dir("/a/b").unwrap(), vec!["c", "z"]);
        assert_eq!(r.stat("/a/b/c").unwrap().mode, 0o700);
        // Only the last component takes the mode; new parents are 0755.
        assert_eq!(r.stat("/a/b").unwrap().mode, 0o755);
        assert_eq!(r.stat("/a").unwrap().mode, 0o755);
        assert_eq!(r.kind("/a/b/c"), Some(FileKind::Dir));
    }
}
