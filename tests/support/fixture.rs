//! The Debian bookworm fixture base image for system tests: built once by
//! `tests/fixtures/build-base-image.sh`, cached by the script's sha256.
//!
//! Cache folder: `$PGIMG_FIXTURE_DIR`, default `/var/tmp/pgimg-fixtures`
//! (kept across runs and reboots, unlike `/tmp`). Editing the script changes
//! the image's name and so rebuilds it. Use it from a test file with
//! `#[path = "support/fixture.rs"] mod fixture;`.

#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

const DEFAULT_DIR: &str = "/var/tmp/pgimg-fixtures";

/// The cache folder.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("PGIMG_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/build-base-image.sh")
}

fn script_key() -> String {
    let content = std::fs::read(script()).expect("reading tests/fixtures/build-base-image.sh");
    let digest = Sha256::digest(&content);
    digest.iter().take(8).map(|b| format!("{b:02x}")).collect()
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

/// Writes straight to the stderr fd: libtest captures `eprintln!` of passing
/// tests, and a skip or a minute-long build must be seen.
fn loud(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

/// Path of the cached base image, building it first when missing. The image
/// is shared: tests must copy it, never write to it. Its sha256 is in
/// `<image>.sha256` (sha256sum format) for tests that check it is unchanged.
pub fn base_image() -> PathBuf {
    // Threads of one test binary wait here; other processes on the flock.
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());

    let dir = fixture_dir();
    let image = dir.join(format!("base-bookworm-{}.raw", script_key()));
    if is_complete(&image) {
        return image;
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".build.lock"))
        .expect("opening the fixture lock file");
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .expect("locking the fixture folder");
    if is_complete(&image) {
        return image;
    }

    loud(&format!(
        "\n===== building the fixture base image {} (about a minute, once; cached in {}) =====",
        image.display(),
        dir.display()
    ));
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(script())
        .arg(&image)
        .arg(&dir)
        .status()
        .expect("running tests/fixtures/build-base-image.sh");
    assert!(status.success(), "build-base-image.sh failed: {status}");
    write_checksum(&image);
    loud(&format!(
        "===== fixture base image built in {:.1} s =====\n",
        started.elapsed().as_secs_f64()
    ));
    image
}

/// The image and its checksum sidecar both exist (the sidecar is written
/// last, so an interrupted build is redone).
fn is_complete(image: &Path) -> bool {
    image.exists() && checksum_path(image).exists()
}

fn checksum_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

fn write_checksum(image: &Path) {
    let line = sha256sum(image);
    let tmp = image.with_extension("sha256.tmp");
    std::fs::write(&tmp, format!("{line}\n")).expect("writing the checksum");
    std::fs::rename(&tmp, checksum_path(image)).expect("renaming the checksum");
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
    let line = std::fs::read_to_string(checksum_path(image)).expect("reading the checksum");
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
