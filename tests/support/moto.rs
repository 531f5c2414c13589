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
    venv_tool(
        "PGIMG_MOTO_SERVER",
        "moto_server",
        &format!(
            "these tests need moto_server >= {MIN_MOTO} (a real S3/EC2/EBS emulator).\n\
             Run `bash tests/setup.sh` as root: it installs moto in a virtualenv there \
             (or point PGIMG_MOTO_SERVER at a moto_server >= {MIN_MOTO})."
        ),
    )
}

/// The Python that runs `moto_server`, which has boto3 (a dependency of
/// moto) for tests that look at moto's state with an SDK of their own. The
/// machine's `python3` may lack boto3: a fresh Debian has none.
pub fn moto_python() -> PathBuf {
    let python = moto_server().with_file_name("python3");
    assert!(
        python.is_file(),
        "{} is missing: the tests use the Python of moto_server's virtualenv (with boto3); \
         run `bash tests/setup.sh` as root",
        python.display()
    );
    python
}

/// `$PGIMG_GCS_EMULATOR` when set, else the virtualenv's `gcp-storage-emulator`;
/// panics naming the fix when neither exists.
pub fn gcs_emulator() -> PathBuf {
    venv_tool(
        "PGIMG_GCS_EMULATOR",
        "gcp-storage-emulator",
        "these tests need gcp-storage-emulator (a real Cloud Storage emulator).\n\
         Run `bash tests/setup.sh` as root: it installs it in a virtualenv there \
         (or point PGIMG_GCS_EMULATOR at one).",
    )
}

/// `$<var>` when set, else `<tools_dir>/venv/bin/<name>`; panics with
/// "<that path> is missing: <fix>" when neither exists.
fn venv_tool(var: &str, name: &str, fix: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(var) {
        return PathBuf::from(p);
    }
    let venv = tools_dir().join("venv/bin").join(name);
    if venv.is_file() {
        return venv;
    }
    panic!("{} is missing: {fix}", venv.display())
}
