//! The host's apt archives cache as one build sees it: a folder of its own,
//! filled with hard links to the shared cache's packages, whose new packages
//! go back into the shared cache when the build lets it go.
//!
//! Binding the shared folder itself on `/var/cache/apt/archives` made two
//! builds with the same `--cache-dir` share apt's lock file: the second
//! `apt-get install` stopped with "Could not get lock
//! /var/cache/apt/archives/lock" (apt takes that lock with `F_SETLK` and
//! never waits). With a folder per build, each apt has its own lock, and the
//! shared folder only ever gains complete packages, by `link(2)`:
//! apt finishes a download in `partial/` and renames it into place, and it
//! never rewrites a package file (one whose hash doesn't match is deleted
//! and downloaded again), so a package linked into two folders is never
//! seen half-written.
//!
//! A build holds an `flock` on `.held` in its folder for its lifetime; the
//! next build removes folders whose lock is free (their build was killed).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// Where the per-build folders live, beside the shared cache (one file
/// system, so hard links work).
fn builds_dir(shared: &Path) -> PathBuf {
    let mut name = shared.as_os_str().to_owned();
    name.push(".builds");
    PathBuf::from(name)
}

/// One build's apt archives folder; see the module docs.
#[derive(Debug)]
pub struct BuildArchives {
    shared: PathBuf,
    own: tempfile::TempDir,
    _held: Flock<File>,
}

/// What [`BuildArchives::open`] found and did, for the log.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Packages of the shared cache linked into the build's folder.
    pub linked: usize,
    /// Folders of builds that are gone, removed.
    pub swept: Vec<PathBuf>,
}

impl BuildArchives {
    /// Creates the build's folder beside `shared` (creating `shared` when
    /// missing), with apt's `partial/` and `lock`, and links every `.deb` of
    /// `shared` into it.
    ///
    /// Errors: creating the folders or files, or listing `shared`; a package
    /// that cannot be linked is copied instead.
    pub fn open(shared: &Path) -> io::Result<(BuildArchives, Opened)> {
        std::fs::create_dir_all(shared)?;
        let builds = builds_dir(shared);
        std::fs::create_dir_all(&builds)?;
        let swept = sweep(&builds)?;
        let own = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&builds)?;
        let held = File::create(own.path().join(".held"))?;
        let held = Flock::lock(held, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, errno)| io::Error::from(errno))?;
        std::fs::create_dir(own.path().join("partial"))?;
        File::create(own.path().join("lock"))?;
        let linked = link_packages(shared, own.path())?;
        Ok((
            BuildArchives {
                shared: shared.to_path_buf(),
                own,
                _held: held,
            },
            Opened { linked, swept },
        ))
    }

    /// The folder to bind on `/var/cache/apt/archives`.
    pub fn path(&self) -> &Path {
        self.own.path()
    }

    /// Links the packages the build downloaded into the shared cache (a
    /// package another build put there meanwhile is the same file, and is
    /// kept), then removes the build's folder. Returns how many were added.
    pub fn give_back(self) -> io::Result<usize> {
        let added = link_packages(self.own.path(), &self.shared)?;
        self.own.close()?;
        Ok(added)
    }
}

/// Links (or, across file systems, copies) each `*.deb` file of `from` that
/// `to` lacks; returns how many.
fn link_packages(from: &Path, to: &Path) -> io::Result<usize> {
    let mut added = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let name = entry.file_name();
        if !entry.file_type()?.is_file() || !name.to_string_lossy().ends_with(".deb") {
            continue;
        }
        let dest = to.join(&name);
        match std::fs::hard_link(entry.path(), &dest) {
            Ok(()) => added += 1,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => {
                // Another file system: a copy under a temporary name, renamed
                // only when complete.
                let tmp = tempfile::NamedTempFile::new_in(to)?;
                std::fs::copy(entry.path(), tmp.path())?;
                tmp.persist_noclobber(&dest).map_err(|e| e.error)?;
                added += 1;
            }
        }
    }
    Ok(added)
}

/// Removes the folders in `builds` whose `.held` lock nobody holds.
fn sweep(builds: &Path) -> io::Result<Vec<PathBuf>> {
    let mut swept = Vec::new();
    for entry in std::fs::read_dir(builds)? {
        let path = entry?.path();
        let Ok(held) = File::open(path.join(".held")) else {
            // Created but not yet locked by a build starting right now, or
            // not a build folder: leave it.
            continue;
        };
        if Flock::lock(held, FlockArg::LockExclusiveNonblock).is_ok() {
            std::fs::remove_dir_all(&path)?;
            swept.push(path);
        }
    }
    Ok(swept)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deb(dir: &Path, name: &str, body: &str) {
        std::fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn two_builds_get_separate_folders_and_share_complete_packages() {
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("apt-archives");
        std::fs::create_dir(&shared).unwrap();
        deb(&shared, "a_1_amd64.deb", "a");
        let (one, opened) = BuildArchives::open(&shared).unwrap();
        assert_eq!(opened.linked, 1);
        let (two, _) = BuildArchives::open(&shared).unwrap();
        assert_ne!(one.path(), two.path());
        for b in [&one, &two] {
            assert!(b.path().join("partial").is_dir() && b.path().join("lock").is_file());
            assert_eq!(std::fs::read(b.path().join("a_1_amd64.deb")).unwrap(), b"a");
        }
        // Both download b; one removes a (apt-get clean): the shared cache keeps it.
        deb(one.path(), "b_1_amd64.deb", "b");
        deb(two.path(), "b_1_amd64.deb", "b");
        std::fs::remove_file(one.path().join("a_1_amd64.deb")).unwrap();
        deb(one.path(), "partial-not-a-package", "x");
        let (p1, p2) = (one.path().to_path_buf(), two.path().to_path_buf());
        assert_eq!(one.give_back().unwrap(), 1);
        assert_eq!(two.give_back().unwrap(), 0);
        assert!(!p1.exists() && !p2.exists());
        let mut names: Vec<String> = std::fs::read_dir(&shared)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["a_1_amd64.deb", "b_1_amd64.deb"]);
    }

    #[test]
    fn the_folder_of_a_build_that_is_gone_is_swept_and_a_live_one_kept() {
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("apt-archives");
        let (live, _) = BuildArchives::open(&shared).unwrap();
        let (dead, _) = BuildArchives::open(&shared).unwrap();
        let dead_path = dead.path().to_path_buf();
        // A killed build: its lock is gone, its folder stays.
        let BuildArchives { own, _held, .. } = dead;
        drop(_held);
        let kept = own.keep();
        assert_eq!(kept, dead_path);
        let (_next, opened) = BuildArchives::open(&shared).unwrap();
        assert_eq!(opened.swept, vec![dead_path.clone()]);
        assert!(!dead_path.exists());
        assert!(live.path().is_dir());
    }
}
