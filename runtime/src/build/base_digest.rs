//! The base image's sha256, remembered by the file's identity so that an
//! unchanged base is not read again on every build.
//!
//! A record under `<cache_dir>/base-digests/` is named after the file's
//! device and inode and holds its size, mtime and ctime (nanoseconds) beside
//! the digest. Writing the file (also through a loop device, which updates
//! mtime) or resetting its mtime with `touch -d` (which moves ctime) changes
//! the identity, and the base is hashed again. This is the rule `git` uses
//! for its index ("racy git" aside, which the ctime check narrows) and
//! `make` for its targets: cheap, and exact for every writer that goes
//! through the kernel.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What identifies one version of a file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl Identity {
    fn of(path: &Path) -> std::io::Result<Identity> {
        let m = std::fs::metadata(path)?;
        Ok(Identity {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
        })
    }

    fn record_name(&self) -> String {
        format!("{}-{}", self.dev, self.ino)
    }

    fn line(&self, sha256: &str) -> String {
        format!(
            "{} {} {} {sha256}\n",
            self.size, self.mtime_ns, self.ctime_ns
        )
    }
}

/// Where the records live.
pub fn records_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("base-digests")
}

/// The remembered digest of `path`, if its identity is unchanged since it
/// was recorded. Any unreadable or malformed record is a miss.
pub fn remembered(cache_dir: &Path, path: &Path) -> Option<String> {
    let id = Identity::of(path).ok()?;
    let text = std::fs::read_to_string(records_dir(cache_dir).join(id.record_name())).ok()?;
    let sha = text.trim_end().rsplit(' ').next()?;
    let valid = sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit());
    (valid && text == id.line(sha)).then(|| sha.to_string())
}

/// Records `sha256` as the digest of `path` as it is now. `identity_before`
/// is the identity read before hashing began: a file that changed while it
/// was hashed is not recorded (the digest may mix both versions).
pub fn remember(cache_dir: &Path, path: &Path, before: &FileVersion, sha256: &str) -> Result<()> {
    let now = Identity::of(path).with_context(|| format!("reading {}", path.display()))?;
    if now != before.0 {
        return Ok(());
    }
    let dir = records_dir(cache_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let record = dir.join(now.record_name());
    // Written beside and renamed: a concurrent build reads the old record or
    // the new one, never half of one.
    let tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("creating a record in {}", dir.display()))?;
    std::fs::write(tmp.path(), now.line(sha256))
        .with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(&record)
        .with_context(|| format!("writing {}", record.display()))?;
    Ok(())
}

/// A file's identity at one moment, taken before it is hashed.
#[derive(Debug, Clone)]
pub struct FileVersion(Identity);

impl FileVersion {
    pub fn of(path: &Path) -> Result<FileVersion> {
        Identity::of(path)
            .map(FileVersion)
            .with_context(|| format!("reading {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache folder holding `base.raw` with `content`.
    fn scene(content: &[u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("base.raw");
        std::fs::write(&file, content).unwrap();
        (dir, file)
    }

    fn hashed(cache: &Path, file: &Path, sha: &str) {
        let before = FileVersion::of(file).unwrap();
        remember(cache, file, &before, sha).unwrap();
    }

    #[test]
    fn an_unchanged_file_is_remembered() {
        let (dir, file) = scene(b"base");
        let sha = "a".repeat(64);
        assert_eq!(remembered(dir.path(), &file), None);
        hashed(dir.path(), &file, &sha);
        assert_eq!(remembered(dir.path(), &file), Some(sha));
    }

    #[test]
    fn a_rewritten_base_is_hashed_again_even_with_its_old_mtime() {
        let (dir, file) = scene(b"base");
        let mtime = std::fs::metadata(&file).unwrap().modified().unwrap();
        hashed(dir.path(), &file, &"b".repeat(64));
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Same size, content changed, mtime put back: only ctime tells.
        std::fs::write(&file, b"BASE").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().modified().unwrap(), mtime);
        assert_eq!(remembered(dir.path(), &file), None);
    }

    #[test]
    fn a_file_replaced_under_the_same_name_is_hashed_again() {
        let (dir, file) = scene(b"one");
        hashed(dir.path(), &file, &"c".repeat(64));
        let other = dir.path().join("other.raw");
        std::fs::write(&other, b"two").unwrap();
        std::fs::rename(&other, &file).unwrap();
        assert_eq!(remembered(dir.path(), &file), None);
    }

    #[test]
    fn a_file_changed_while_hashed_is_not_recorded() {
        let (dir, file) = scene(b"one");
        let before = FileVersion::of(&file).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&file, b"one more").unwrap();
        remember(dir.path(), &file, &before, &"d".repeat(64)).unwrap();
        assert_eq!(remembered(dir.path(), &file), None);
    }

    #[test]
    fn a_damaged_record_is_a_miss() {
        let (dir, file) = scene(b"base");
        hashed(dir.path(), &file, &"e".repeat(64));
        let records: Vec<_> = std::fs::read_dir(records_dir(dir.path()))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        std::fs::write(&records[0], "garbage\n").unwrap();
        assert_eq!(remembered(dir.path(), &file), None);
    }
}
