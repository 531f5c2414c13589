//! Borrowed paths: files pgimg puts in place for the build only (the
//! mechanism; the recipe primitive is `borrow_file`).
//!
//! One rule for every such path (`/etc/resolv.conf`, `/usr/sbin/policy-rc.d`,
//! the archive redirect of `sources.list`, …):
//!
//! * what the recipe made of the path survives (a file it wrote, a link a
//!   package or `update-alternatives` put there, its removal);
//! * pgimg's own version never does;
//! * when the recipe left the path alone, the original comes back exactly:
//!   content, mode, owner, link-ness, or absence.
//!
//! pgimg's version is recognised by identity, not only by content: the inode
//! it created (device and inode number) still holding the bytes or link target
//! pgimg put there. A tool that rewrites a file replaces its inode (dpkg,
//! `sed -i`, `write_file`), one that appends changes its content: either way
//! the path is the recipe's.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;

use crate::root::{Attrs, FileKind, FsError, ImageRoot};

/// What was at an in-image path before pgimg borrowed it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Saved {
    Absent,
    Symlink(PathBuf),
    File {
        content: Vec<u8>,
        mode: u32,
        uid: u32,
        gid: u32,
    },
}

impl Saved {
    /// Reads what is at `path` now. A directory or special file is refused:
    /// pgimg never replaces one.
    pub fn capture(root: &ImageRoot, path: &str) -> std::result::Result<Saved, FsError> {
        let st = match root.lstat(path) {
            Ok(st) => st,
            Err(e) if e.is_not_found() => return Ok(Saved::Absent),
            Err(e) => return Err(e),
        };
        match st.kind {
            FileKind::Symlink => Ok(Saved::Symlink(root.readlink(path)?)),
            FileKind::File => Ok(Saved::File {
                content: root.read(path)?,
                mode: st.mode,
                uid: st.uid,
                gid: st.gid,
            }),
            _ => Err(FsError::Invalid {
                path: path.to_string(),
                reason: "is neither a file nor a symlink; pgimg will not replace it".into(),
            }),
        }
    }

    /// Puts this state at `path`, replacing whatever is there.
    pub fn restore(&self, root: &ImageRoot, path: &str) -> std::result::Result<(), FsError> {
        match self {
            Saved::Absent => root.remove(path).map(|_| ()),
            Saved::Symlink(target) => root.symlink(target, path),
            Saved::File {
                content,
                mode,
                uid,
                gid,
            } => {
                // Remove first: `write` keeps the mode of a file already there.
                root.remove(path)?;
                root.write(
                    path,
                    content,
                    Attrs {
                        mode: Some(*mode),
                        uid: Some(*uid),
                        gid: Some(*gid),
                    },
                )
            }
        }
    }
}

/// pgimg's version of a borrowed path: the inode it made and what it held.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Ours {
    dev: u64,
    ino: u64,
    state: Saved,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Entry {
    /// A file or link pgimg put in place of `original`.
    Path {
        path: String,
        original: Saved,
        ours: Ours,
    },
    /// A directory pgimg created where nothing was (a mount point).
    Dir { path: String, dev: u64, ino: u64 },
}

impl Entry {
    fn path(&self) -> &str {
        match self {
            Entry::Path { path, .. } | Entry::Dir { path, .. } => path,
        }
    }
}

/// The borrowed paths of one build, given back by [`Borrowed::give_back`].
#[derive(Debug, Default)]
pub struct Borrowed {
    entries: Mutex<Vec<Entry>>,
}

/// How one path came out of [`Borrowed::give_back`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The recipe left it alone: the original is back.
    Restored(String),
    /// The recipe changed it: its version stays.
    KeptTheBuilds(String),
}

impl Borrowed {
    /// Puts a regular file with `content` and `mode` at `path` for the build.
    pub fn put_file(
        &self,
        root: &ImageRoot,
        path: &str,
        content: &[u8],
        mode: u32,
    ) -> std::result::Result<(), FsError> {
        self.put(root, path, |root| {
            root.write(path, content, Attrs::mode(mode))
        })
    }

    /// Puts a symlink to `target` at `path` for the build. A link (rather
    /// than a file) is what `update-alternatives` agrees to replace.
    pub fn put_link(
        &self,
        root: &ImageRoot,
        path: &str,
        target: &str,
    ) -> std::result::Result<(), FsError> {
        self.put(root, path, |root| root.symlink(target, path))
    }

    fn put(
        &self,
        root: &ImageRoot,
        path: &str,
        write: impl FnOnce(&ImageRoot) -> std::result::Result<(), FsError>,
    ) -> std::result::Result<(), FsError> {
        let mut entries = self.entries.lock().unwrap();
        // Into a root without the folder (a bare `--rootfs`): the folders
        // made for it go again at the end, like a mount point's.
        if let Some((parent, _)) = path.rsplit_once('/').filter(|(p, _)| !p.is_empty()) {
            make_dirs(&mut entries, root, parent, 0o755)?;
        }
        let known = entries
            .iter()
            .position(|e| matches!(e, Entry::Path { path: p, .. } if p == path));
        // Borrowing twice keeps the first original: the image's own.
        let original = match known.map(|i| &entries[i]) {
            Some(Entry::Path { original, .. }) => original.clone(),
            _ => Saved::capture(root, path)?,
        };
        // Remove first: a link must not be written through, and `write` keeps
        // the mode and owner of a file already there.
        root.remove(path)?;
        write(root)?;
        let ours = identity(root, path)?;
        match known.map(|i| &mut entries[i]) {
            Some(Entry::Path { ours: o, .. }) => *o = ours,
            _ => entries.push(Entry::Path {
                path: path.to_string(),
                original,
                ours,
            }),
        }
        Ok(())
    }

    /// Creates the directory `path` (the last one with `mode`) and its missing
    /// parents for the build, as a mount point needs. At the end each one
    /// pgimg created goes again if it is still that same, empty directory;
    /// one the build put something in stays.
    pub fn put_dir(
        &self,
        root: &ImageRoot,
        path: &str,
        mode: u32,
    ) -> std::result::Result<(), FsError> {
        make_dirs(&mut self.entries.lock().unwrap(), root, path, mode)
    }

    /// The borrowed entries, for a checkpoint of the image (see
    /// [`Borrowed::import`]).
    pub fn export(&self) -> serde_json::Value {
        serde_json::to_value(&*self.entries.lock().unwrap()).unwrap_or_default()
    }

    /// Takes over the entries [`Borrowed::export`] wrote for the same image,
    /// now mounted with device number `dev` (inode numbers survive a copy of
    /// the file system; its device number does not): a build resumed from a
    /// checkpoint gives back the image's originals, not pgimg's versions the
    /// checkpoint holds.
    pub fn import(&self, entries: &serde_json::Value, dev: u64) -> std::result::Result<(), String> {
        let mut list: Vec<Entry> =
            serde_json::from_value(entries.clone()).map_err(|e| e.to_string())?;
        for e in &mut list {
            match e {
                Entry::Path { ours, .. } => ours.dev = dev,
                Entry::Dir { dev: d, .. } => *d = dev,
            }
        }
        *self.entries.lock().unwrap() = list;
        Ok(())
    }

    /// Whether pgimg's version is still at `path`: `None` when `path` is not
    /// borrowed, `Some(false)` when the recipe made it its own.
    pub fn holds(&self, root: &ImageRoot, path: &str) -> Option<bool> {
        let entries = self.entries.lock().unwrap();
        entries.iter().find_map(|e| match e {
            Entry::Path { path: p, ours, .. } if p == path => {
                Some(identity(root, path).is_ok_and(|now| &now == ours))
            }
            _ => None,
        })
    }

    /// The paths borrowed so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.entries
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.path().to_string())
            .collect()
    }

    /// Gives every borrowed path back (newest first) under the rule of the
    /// module docs. Does every path even when one fails; returns what
    /// happened to each, or the first failure. Idempotent.
    pub fn give_back(&self, root: &ImageRoot) -> std::result::Result<Vec<Outcome>, FsError> {
        let entries = std::mem::take(&mut *self.entries.lock().unwrap());
        let mut outcomes = Vec::new();
        let mut first_error = None;
        for e in entries.into_iter().rev() {
            let (path, original, ours) = match e {
                Entry::Path {
                    path,
                    original,
                    ours,
                } => (path, original, ours),
                Entry::Dir { path, dev, ino } => {
                    let same = host_path(root, &path)
                        .and_then(|p| {
                            std::fs::symlink_metadata(p).map_err(|e| FsError::Io {
                                path: path.clone(),
                                source: e,
                            })
                        })
                        .is_ok_and(|m| m.is_dir() && m.dev() == dev && m.ino() == ino);
                    if same && root.read_dir(&path).is_ok_and(|names| names.is_empty()) {
                        match root.remove(&path) {
                            Ok(_) => outcomes.push(Outcome::Restored(path)),
                            Err(err) => {
                                first_error.get_or_insert(err);
                            }
                        }
                    }
                    continue;
                }
            };
            let untouched = match identity(root, &path) {
                Ok(now) => now == ours,
                // Gone, or a directory now: the recipe's doing either way.
                Err(_) => false,
            };
            if untouched {
                match original.restore(root, &path) {
                    Ok(()) => outcomes.push(Outcome::Restored(path)),
                    Err(err) => {
                        first_error.get_or_insert(err);
                    }
                }
            } else {
                outcomes.push(Outcome::KeptTheBuilds(path));
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(outcomes),
        }
    }
}

/// Inode and state of what is at `path`; an error when nothing is.
fn identity(root: &ImageRoot, path: &str) -> std::result::Result<Ours, FsError> {
    let state = Saved::capture(root, path)?;
    if state == Saved::Absent {
        return Err(FsError::Invalid {
            path: path.into(),
            reason: "is absent".into(),
        });
    }
    let meta = std::fs::symlink_metadata(host_path(root, path)?).map_err(|e| FsError::Io {
        path: path.into(),
        source: e,
    })?;
    // Mode and owner are left out: only bytes, link target and inode say
    // whose version it is.
    let state = match state {
        Saved::File { content, .. } => Saved::File {
            content,
            mode: 0,
            uid: 0,
            gid: 0,
        },
        other => other,
    };
    Ok(Ours {
        dev: meta.dev(),
        ino: meta.ino(),
        state,
    })
}

/// The host path of an in-image path, its parent resolved inside the root,
/// for an `lstat` of the final component.
fn host_path(root: &ImageRoot, path: &str) -> std::result::Result<PathBuf, FsError> {
    let (parent, name) = match path.rsplit_once('/') {
        Some((p, n)) if !n.is_empty() => (if p.is_empty() { "/" } else { p }, n),
        _ => {
            return Err(FsError::Invalid {
                path: path.into(),
                reason: "needs a file name".into(),
            })
        }
    };
    let dir = root.open_read(parent)?;
    let fd_link = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&dir));
    let host = std::fs::read_link(fd_link).map_err(|e| FsError::Io {
        path: parent.into(),
        source: e,
    })?;
    Ok(host.join(name))
}

/// Creates the directory `path` (the last one with `mode`) and its missing
/// parents, recording each in `entries` (see [`Borrowed::put_dir`]).
fn make_dirs(
    entries: &mut Vec<Entry>,
    root: &ImageRoot,
    path: &str,
    mode: u32,
) -> std::result::Result<(), FsError> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    if parts.iter().any(|c| *c == "." || *c == "..") {
        // Not worth tracking: created like `mkdir -p`, and kept.
        return root.mkdir_all(path, Attrs::mode(mode));
    }
    let mut prefix = String::new();
    for (i, part) in parts.iter().enumerate() {
        prefix.push('/');
        prefix.push_str(part);
        if root.exists(&prefix) {
            continue;
        }
        let m = if i + 1 == parts.len() { mode } else { 0o755 };
        root.mkdir_all(&prefix, Attrs::mode(m))?;
        let meta =
            std::fs::symlink_metadata(host_path(root, &prefix)?).map_err(|e| FsError::Io {
                path: prefix.clone(),
                source: e,
            })?;
        entries.push(Entry::Dir {
            path: prefix.clone(),
            dev: meta.dev(),
            ino: meta.ino(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::temp_root;

    const P: &str = "/etc/apt/sources.list";

    /// How a test puts the original in place before pgimg borrows the path.
    type Seed = Box<dyn Fn(&ImageRoot)>;

    fn seeds() -> Vec<(&'static str, Seed)> {
        vec![
            ("absent", Box::new(|_| {})),
            (
                "dangling link",
                Box::new(|r| r.symlink("../run/elsewhere", P).unwrap()),
            ),
            (
                "file 0600",
                Box::new(|r| {
                    r.write(P, b"deb http://archive/ jammy main\n", Attrs::mode(0o600))
                        .unwrap()
                }),
            ),
        ]
    }

    /// Left alone, every kind of original comes back exactly.
    #[test]
    fn an_untouched_borrowed_path_gets_its_original_back_exactly() {
        for (name, seed) in seeds() {
            let (_d, r) = temp_root();
            r.mkdir_all("/etc/apt", Attrs::default()).unwrap();
            seed(&r);
            let before = Saved::capture(&r, P).unwrap();
            let b = Borrowed::default();
            b.put_file(&r, P, b"deb http://mirror/ jammy main\n", 0o644)
                .unwrap();
            // Borrowed twice: still the image's original afterwards.
            b.put_file(&r, P, b"deb http://mirror2/ jammy main\n", 0o644)
                .unwrap();
            assert_eq!(
                b.give_back(&r).unwrap(),
                [Outcome::Restored(P.into())],
                "{name}"
            );
            assert_eq!(Saved::capture(&r, P).unwrap(), before, "{name}");
            // Idempotent.
            assert_eq!(b.give_back(&r).unwrap(), []);
        }
    }

    /// Rewritten, appended to, replaced by a link or removed by the recipe:
    /// the recipe's version stays.
    #[test]
    fn what_the_recipe_made_of_a_borrowed_path_survives() {
        type Change = Box<dyn Fn(&ImageRoot)>;
        let changes: Vec<(&str, Change)> = vec![
            (
                "rewritten with the same bytes",
                Box::new(|r| r.write(P, b"ours\n", Attrs::default()).unwrap()),
            ),
            (
                "appended",
                Box::new(|r| r.append(P, b"deb extra\n").unwrap()),
            ),
            (
                "a link",
                Box::new(|r| r.symlink("/etc/alternatives/x", P).unwrap()),
            ),
            (
                "removed",
                Box::new(|r| {
                    r.remove(P).unwrap();
                }),
            ),
        ];
        for (name, change) in changes {
            for (seed_name, seed) in seeds() {
                let (_d, r) = temp_root();
                r.mkdir_all("/etc/apt", Attrs::default()).unwrap();
                seed(&r);
                let b = Borrowed::default();
                b.put_file(&r, P, b"ours\n", 0o644).unwrap();
                change(&r);
                let after_recipe = Saved::capture(&r, P).unwrap();
                assert_eq!(
                    b.give_back(&r).unwrap(),
                    [Outcome::KeptTheBuilds(P.into())],
                    "{name} over {seed_name}"
                );
                assert_eq!(
                    Saved::capture(&r, P).unwrap(),
                    after_recipe,
                    "{name} over {seed_name}"
                );
            }
        }
    }

    /// pgimg's own link is recognised as such and goes.
    #[test]
    fn a_borrowed_link_is_given_back_too() {
        let (_d, r) = temp_root();
        r.write(
            "/usr/sbin/policy-rc.d",
            b"#!/bin/sh\nexit 0\n",
            Attrs::mode(0o700),
        )
        .unwrap();
        let before = Saved::capture(&r, "/usr/sbin/policy-rc.d").unwrap();
        let b = Borrowed::default();
        b.put_link(&r, "/usr/sbin/policy-rc.d", "/run/pgimg/policy-rc.d")
            .unwrap();
        assert_eq!(r.kind("/usr/sbin/policy-rc.d"), Some(FileKind::Symlink));
        b.give_back(&r).unwrap();
        assert_eq!(Saved::capture(&r, "/usr/sbin/policy-rc.d").unwrap(), before);
    }

    /// Mount points pgimg made go again when empty; one the build filled stays.
    #[test]
    fn directories_pgimg_created_go_when_left_empty() {
        let (_d, r) = temp_root();
        r.mkdir_all("/root", Attrs::mode(0o700)).unwrap();
        let b = Borrowed::default();
        b.put_dir(&r, "/root/.cache/go-build", 0o755).unwrap();
        b.put_dir(&r, "/var/cache/apt/archives", 0o755).unwrap();
        r.write("/var/cache/apt/archives/lock", b"", Attrs::default())
            .unwrap();
        b.give_back(&r).unwrap();
        assert!(!r.exists("/root/.cache"));
        assert_eq!(r.kind("/root"), Some(FileKind::Dir));
        assert!(r.exists("/var/cache/apt/archives/lock"));
    }

    /// Into a bare root (`--rootfs` on an empty folder) a borrowed file's
    /// missing folders are made, and go again with it.
    #[test]
    fn folders_made_for_a_borrowed_file_go_with_it() {
        let (_d, r) = temp_root();
        let b = Borrowed::default();
        b.put_link(&r, "/usr/sbin/policy-rc.d", "/run/pgimg/policy-rc.d")
            .unwrap();
        b.put_file(&r, "/etc/resolv.conf", b"nameserver 127.0.0.1\n", 0o644)
            .unwrap();
        assert_eq!(r.kind("/usr/sbin/policy-rc.d"), Some(FileKind::Symlink));
        b.give_back(&r).unwrap();
        for gone in ["/usr", "/etc"] {
            assert!(!r.exists(gone), "{gone} was left behind");
        }
    }

    #[test]
    fn a_directory_is_not_borrowed() {
        let (_d, r) = temp_root();
        r.mkdir_all(P, Attrs::default()).unwrap();
        assert!(Borrowed::default().put_file(&r, P, b"x", 0o644).is_err());
        assert_eq!(r.kind(P), Some(FileKind::Dir));
    }
}
