//! The Debian bookworm fixture base image for system tests, and the root check
//! every privileged test starts with.
//!
//! The image itself is built and cached by `pgimg::fixture` (the same builder
//! `pgimg run` uses when no `--base` is given), in `$PGIMG_FIXTURE_DIR`
//! (default `/var/tmp/pgimg-fixtures`). Use it from a test file with
//! `#[path = "support/fixture.rs"] mod fixture;`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The cache folder.
pub fn fixture_dir() -> PathBuf {
    pgimg::fixture::fixture_dir()
}

/// Whether the tests run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// For tests that need root: returns false after printing a loud SKIPPED
/// line when not root, or panics when `PGIMG_REQUIRE_ROOT_TESTS=1` (CI),
/// so a skip cannot pass unnoticed there.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("PGIMG_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{test}: needs root, and PGIMG_REQUIRE_ROOT_TESTS=1 forbids skipping");
    }
    loud(&format!("\n!!!!! {test}: SKIPPED (needs root) !!!!!\n"));
    false
}

/// [`require_root`] for the test function it stands in, named after it:
/// returns from the test when it is skipped. The name comes from a function
/// defined in place, so it cannot drift from the test's.
// Not every test file that includes this module uses it (as `dead_code` above).
#[allow(unused_macros)]
macro_rules! skip_unless_root {
    () => {{
        fn here() {}
        let path = std::any::type_name_of_val(&here);
        let path = path.strip_suffix("::here").unwrap_or(path);
        let test = path.rsplit("::").next().unwrap_or(path);
        if !$crate::fixture::require_root(test) {
            return;
        }
    }};
}
#[allow(unused_imports)]
pub(crate) use skip_unless_root;

/// The base image and a scratch folder beside it (the same file system, so
/// a work copy can share the base's blocks).
pub fn base_and_scratch() -> (PathBuf, tempfile::TempDir) {
    let base = base_image();
    let dir = tempfile::tempdir_in(fixture_dir()).unwrap();
    (base, dir)
}

/// Writes straight to the stderr fd: libtest captures `eprintln!` of passing
/// tests, and a skip or a minute-long build must be seen.
pub fn loud(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Path of the cached base image, building it first when missing. The image
/// is shared: tests must copy it, never write to it. Its sha256 is in
/// `<image>.sha256` (sha256sum format) for tests that check it is unchanged.
pub fn base_image() -> PathBuf {
    pgimg::fixture::base_image().unwrap_or_else(|e| panic!("the fixture base image: {e}"))
}

/// `sha256sum FILE`'s output line, without the newline (the host tool is
/// much faster than a debug-build hasher on a 2 GiB image).
pub fn sha256sum(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("running sha256sum");
    assert!(out.status.success(), "sha256sum {} failed", path.display());
    String::from_utf8(out.stdout)
        .unwrap()
        .trim_end()
        .to_string()
}

/// The hex digest recorded when the fixture was built.
pub fn recorded_sha256(image: &Path) -> String {
    let sidecar = pgimg::fixture::checksum_path(image);
    let line = std::fs::read_to_string(&sidecar)
        .unwrap_or_else(|e| panic!("reading {}: {e}", sidecar.display()));
    line.split_whitespace().next().unwrap().to_string()
}

/// The image's current hex digest.
pub fn current_sha256(image: &Path) -> String {
    sha256sum(image)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// What any write to a file changes: its size, modification and change times.
pub type Stamp = (u64, i64, i64, i64, i64);

pub fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    (
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    )
}

/// The fixture base image and its [`Stamp`] once its sha256 was checked.
static BASE: std::sync::OnceLock<(PathBuf, Stamp)> = std::sync::OnceLock::new();

/// The fixture base image. The first call in the test process checks its
/// sha256 against the one recorded when it was built and notes its stamp;
/// [`assert_base_unchanged`] then compares stamps, which costs nothing,
/// where hashing 2 GiB costs seconds per build.
pub fn checked_base_image() -> PathBuf {
    BASE.get_or_init(|| {
        let base = base_image();
        let before = stamp(&base);
        assert_base_sha256_unchanged(&base);
        assert_eq!(stamp(&base), before, "the base changed while it was hashed");
        (base, before)
    })
    .0
    .clone()
}

/// The base was not written to since [`checked_base_image`] hashed it.
pub fn assert_base_unchanged(base: &Path) {
    let (path, first) = BASE.get().expect("checked_base_image() gave the base");
    assert_eq!(base, path);
    assert_eq!(
        stamp(base),
        *first,
        "the base image {} was written to",
        base.display()
    );
}

/// The base's sha256 is the one recorded when the fixture was built.
pub fn assert_base_sha256_unchanged(base: &Path) {
    assert_eq!(
        current_sha256(base),
        recorded_sha256(base),
        "the base image {} changed",
        base.display()
    );
}

/// An exclusive `flock` on the fixture folder's `disk-heavy.lock`, held
/// until dropped. Tests that write gigabytes at once (a fully allocated base
/// conversion, an image filled to the brim) take it, so they run one at a
/// time across test threads and binaries: the suite's peak disk use is one
/// of them plus the light tests, not the sum of whichever ran together (a
/// runner with a small disk failed with ENOSPC when two overlapped).
pub struct DiskHeavy(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

/// Waits for, then holds, the [`DiskHeavy`] lock.
pub fn disk_heavy() -> DiskHeavy {
    let dir = fixture_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("disk-heavy.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            // libtest names each test's thread after the test.
            let test = std::thread::current()
                .name()
                .unwrap_or("a test")
                .to_string();
            loud(&format!(
                "{test}: waiting for another disk-heavy test to finish"
            ));
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .unwrap_or_else(|(_, e)| panic!("flock {}: {e}", path.display()))
        }
    };
    DiskHeavy(lock)
}

/// The fixture base as a qcow2 image (zero clusters left out, so a few
/// hundred MiB), converted once beside it and reused: what a release's
/// cloud image looks like to the URL-base tests.
pub fn base_qcow2() -> PathBuf {
    let base = base_image();
    let qcow2 = base.with_extension("qcow2");
    if qcow2.exists() {
        return qcow2;
    }
    let partial = tempfile::Builder::new()
        .prefix(".partial-")
        .suffix(".qcow2")
        .tempfile_in(fixture_dir())
        .unwrap()
        .into_temp_path();
    let converted = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&base)
        .arg(&partial)
        .status()
        .expect("running qemu-img");
    assert!(
        converted.success(),
        "qemu-img convert of {}",
        base.display()
    );
    partial.persist(&qcow2).unwrap();
    qcow2
}
