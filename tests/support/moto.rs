//! Where the tests find `moto_server` (the S3/EC2/EBS emulator) and
//! `gcp-storage-emulator` (Cloud Storage): the virtualenv `tests/setup.sh`
//! makes, so the machine's own copies (maybe too old) never matter. Shared by
//! the root package's and pgimg-publish's tests.

#![allow(dead_code)]

use std::path::PathBuf;

/// The oldest moto that answers CompleteMultipartUpload in a form the Rust SDK accepts.
pub const MIN_MOTO: &str = "5.2.5";

/// The folder `tests/setup.sh` provisions into (`$PGIMG_TOOLS_DIR`, default `/var/tmp/pgimg-tools`).
pub fn tools_dir() -> PathBuf {
    std::env::var_os("PGIMG_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/pgimg-tools"))
}

/// `$PGIMG_MOTO_SERVER` when set, else the virtualenv's `moto_server`;
/// panics naming the fix when neither exists.
pub fn moto_server() -> PathBuf {
    if let Some(p) = std::env::var_os("PGIMG_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = tools_dir().join("venv/bin/moto_server");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "{} is missing: these tests need moto_server >= {MIN_MOTO} (a real S3/EC2/EBS emulator).\n\
         Run `bash tests/setup.sh` as root: it installs moto in a virtualenv there \
         (or point PGIMG_MOTO_SERVER at a moto_server >= {MIN_MOTO}).",
        venv.display()
    )
}

/// `$PGIMG_GCS_EMULATOR` when set, else the virtualenv's `gcp-storage-emulator`;
/// panics naming the fix when neither exists.
pub fn gcs_emulator() -> PathBuf {
    if let Some(p) = std::env::var_os("PGIMG_GCS_EMULATOR") {
        return PathBuf::from(p);
    }
    let venv = tools_dir().join("venv/bin/gcp-storage-emulator");
    if venv.is_file() {
        return venv;
    }
    panic!(
        "{} is missing: these tests need gcp-storage-emulator (a real Cloud Storage emulator).\n\
         Run `bash tests/setup.sh` as root: it installs it in a virtualenv there \
         (or point PGIMG_GCS_EMULATOR at one).",
        venv.display()
    )
}
