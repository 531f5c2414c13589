//! The built-in base image: Debian bookworm shaped like Ubuntu's cloud image,
//! built by `tests/fixtures/build-base-image.sh` (embedded) and cached.
//!
//! `pgimg run` uses it when no `--base` is given, so the tool can be tried
//! without an Ubuntu download; the system tests use the same image. The cache
//! folder is `$PGIMG_FIXTURE_DIR` (default `/var/tmp/pgimg-fixtures`, which
//! survives reboots unlike `/tmp`); the image's name carries the script's
//! sha256, so editing the script rebuilds it.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::Instant;

use sha2::{Digest, Sha256};

use crate::image::host_tools::{self, HostToolError, Tool};

const SCRIPT: &str = include_str!("../../tests/fixtures/build-base-image.sh");
const DEFAULT_DIR: &str = "/var/tmp/pgimg-fixtures";

/// What `build-base-image.sh` runs on the host (besides coreutils, dpkg and
/// awk, which every Debian and Ubuntu has); installed when missing.
pub const TOOLS: &[Tool] = &[
    host_tools::DEBOOTSTRAP,
    host_tools::GPGV,
    host_tools::DEBIAN_KEYRING,
    host_tools::SGDISK,
    host_tools::MKE2FS,
    host_tools::E2FSCK,
    host_tools::MKFS_VFAT,
    host_tools::MTOOLS,
];

/// Building the fixture failed.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    HostTools(#[from] HostToolError),
    #[error("build-base-image.sh failed ({status}); it needs root, debootstrap, sgdisk, mke2fs and mkfs.vfat, and the Debian mirror")]
    Script { status: std::process::ExitStatus },
}

/// The cache folder.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("PGIMG_FIXTURE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_DIR))
}

fn script_key() -> String {
    Sha256::digest(SCRIPT.as_bytes())
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The path the fixture has (or will have) in the cache.
pub fn image_path() -> PathBuf {
    fixture_dir().join(format!("base-bookworm-{}.raw", script_key()))
}

/// The sidecar holding the image's sha256 (sha256sum format), written last.
pub fn checksum_path(image: &Path) -> PathBuf {
    let mut name = image.as_os_str().to_owned();
    name.push(".sha256");
    PathBuf::from(name)
}

/// Writes straight to the stderr fd: libtest captures `eprintln!` of passing
/// tests, and a build of minutes must be seen.
fn loud(message: &str) {
    let _ = writeln!(std::io::stderr(), "{message}");
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> FixtureError {
    let path = path.to_path_buf();
    move |source| FixtureError::Io { what, path, source }
}

/// Path of the cached base image, building it first when missing. The image
/// is shared: callers copy it, never write to it.
pub fn base_image() -> Result<PathBuf, FixtureError> {
    // Threads of one process wait here; other processes on the flock.
    static IN_PROCESS: Mutex<()> = Mutex::new(());
    let _guard = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());

    let dir = fixture_dir();
    let image = image_path();
    if checksum_path(&image).exists() && image.exists() {
        return Ok(image);
    }
    std::fs::create_dir_all(&dir).map_err(io("creating", &dir))?;
    let lock_path = dir.join(".build.lock");
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("opening", &lock_path))?;
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive).map_err(
        |(_, e)| FixtureError::Io {
            what: "locking",
            path: lock_path.clone(),
            source: e.into(),
        },
    )?;
    if checksum_path(&image).exists() && image.exists() {
        return Ok(image);
    }
    host_tools::ensure(TOOLS, "building the fixture base image")?;
    let script = dir.join(format!("build-base-image-{}.sh", script_key()));
    std::fs::write(&script, SCRIPT).map_err(io("writing", &script))?;
    loud(&format!(
        "===== building the fixture base image {} (a few minutes, once: debootstrap, kernel, GRUB; cached in {}) =====",
        image.display(),
        dir.display()
    ));
    let started = Instant::now();
    let status = Command::new("bash")
        .arg(&script)
        .arg(&image)
        .arg(&dir)
        .status()
        .map_err(io("running", &script))?;
    if !status.success() {
        return Err(FixtureError::Script { status });
    }
    let sum = pgimg_publish::hash::sha256_path(&image, &pgimg_publish::progress::Quiet)
        .map_err(io("hashing", &image))?;
    let sidecar = checksum_path(&image);
    let tmp = sidecar.with_extension("tmp");
    std::fs::write(&tmp, format!("{sum}  {}\n", image.display())).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &sidecar).map_err(io("renaming", &tmp))?;
    loud(&format!(
        "===== fixture base image built in {:.1} s =====",
        started.elapsed().as_secs_f64()
    ));
    Ok(image)
}
