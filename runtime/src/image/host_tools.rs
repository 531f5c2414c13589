//! The host tools pgimg runs (qemu-img, e2fsprogs, debootstrap, …): found on `PATH`, installed with apt-get when missing, and version-checked.
//!
//! A fresh Debian or Ubuntu machine has none of them. When one is missing and
//! pgimg runs as root on a machine with apt-get, it installs the Debian
//! packages, saying so on stderr; otherwise (or with `PGIMG_NO_INSTALL=1`)
//! it stops with the exact `apt-get install` command to run. Tools are found
//! by name, not by package status, so a newer build (e.g. qemu-utils from
//! backports, or a self-built qemu-img) is accepted as long as its version
//! passes the check.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

/// Set to `1` to forbid installing packages (the error then names the command).
pub const NO_INSTALL_ENV: &str = "PGIMG_NO_INSTALL";

/// Checks an installed tool at its path; the error says what is wrong and why it matters.
pub type ToolCheck = fn(&Path) -> Result<(), String>;

/// A command pgimg runs on the host, and the Debian/Ubuntu package providing it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    /// The command, looked up on `PATH`; or an absolute path to a file the package installs.
    pub command: &'static str,
    /// The package that provides it (same name on Debian 12 and Ubuntu 22.04/24.04).
    pub package: &'static str,
    /// Checks the installed tool (its version); the error says what is wrong and why it matters.
    pub check: Option<ToolCheck>,
}

impl Tool {
    /// A tool with no version requirement.
    pub const fn new(command: &'static str, package: &'static str) -> Tool {
        Tool {
            command,
            package,
            check: None,
        }
    }

    /// A tool whose installed version `check` verifies.
    pub const fn checked(
        command: &'static str,
        package: &'static str,
        check: fn(&Path) -> Result<(), String>,
    ) -> Tool {
        Tool {
            command,
            package,
            check: Some(check),
        }
    }
}

/// `qemu-img`, 4.0 or newer: older ones do not report a qcow2's external data file.
pub const QEMU_IMG: Tool = Tool::checked("qemu-img", "qemu-utils", check_qemu_img);
/// `e2fsck` (with `resize2fs`, `mke2fs` and `dumpe2fs` from the same package).
pub const E2FSCK: Tool = Tool::new("e2fsck", "e2fsprogs");
/// `resize2fs`.
pub const RESIZE2FS: Tool = Tool::new("resize2fs", "e2fsprogs");
/// `mke2fs`, 1.43 or newer: the fixture fills the file system with `mke2fs -d`.
pub const MKE2FS: Tool = Tool::checked("mke2fs", "e2fsprogs", check_mke2fs);
/// `debootstrap`, recent enough to know bookworm (the fixture's suite).
pub const DEBOOTSTRAP: Tool = Tool::checked("debootstrap", "debootstrap", check_debootstrap);
/// `sgdisk`.
pub const SGDISK: Tool = Tool::new("sgdisk", "gdisk");
/// `mkfs.vfat`.
pub const MKFS_VFAT: Tool = Tool::new("mkfs.vfat", "dosfstools");

/// debootstrap checks the fixture's Debian packages against this keyring
/// (Ubuntu does not have it by default; without it debootstrap would go on unchecked).
pub const DEBIAN_KEYRING: Tool = Tool::new(
    "/usr/share/keyrings/debian-archive-keyring.gpg",
    "debian-archive-keyring",
);
/// `gpgv`, which debootstrap verifies the Release file with.
pub const GPGV: Tool = Tool::new("gpgv", "gpgv");
/// Writes the fixture's ESP (FAT) without mounting it: this kernel may lack vfat.
pub const MTOOLS: Tool = Tool::new("mcopy", "mtools");

/// What every image build runs: format probe and conversion, file system check and grow.
pub const BUILD: &[Tool] = &[QEMU_IMG, E2FSCK, RESIZE2FS];

/// A host tool is missing or unusable.
#[derive(Debug, thiserror::Error)]
pub enum HostToolError {
    #[error(
        "{why} needs {missing}, not found on PATH; install {} with \
         `apt-get install -y --no-install-recommends {}` as root{reason}",
        if .packages.len() == 1 { "its package" } else { "their packages" },
        .packages.join(" ")
    )]
    Missing {
        why: String,
        missing: String,
        packages: Vec<String>,
        /// Why pgimg did not install them itself.
        reason: String,
    },
    #[error("installing {} with apt-get failed ({status}); run `apt-get update && apt-get install -y --no-install-recommends {}` as root and look at its output", .packages.join(" "), .packages.join(" "))]
    Install {
        packages: Vec<String>,
        status: String,
    },
    #[error("{command} ({path}): {detail}")]
    Unusable {
        command: &'static str,
        path: PathBuf,
        detail: String,
    },
}

/// The first executable `command` on `PATH` (an absolute `command`: when it exists).
pub fn find(command: &str) -> Option<PathBuf> {
    if command.starts_with('/') {
        let p = PathBuf::from(command);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(command))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Makes sure every tool in `tools` is on `PATH` and passes its check,
/// installing missing ones with apt-get when allowed. `why` names what needs
/// them, for the messages (e.g. "building the fixture base image").
pub fn ensure(tools: &[Tool], why: &str) -> Result<(), HostToolError> {
    let forbidden = std::env::var(NO_INSTALL_ENV).as_deref() == Ok("1");
    ensure_with(tools, why, !forbidden)
}

fn ensure_with(tools: &[Tool], why: &str, may_install: bool) -> Result<(), HostToolError> {
    // Threads of one process (parallel tests) install once.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _guard = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());

    let missing: Vec<&Tool> = tools.iter().filter(|t| find(t.command).is_none()).collect();
    if !missing.is_empty() {
        let mut packages: Vec<String> = missing.iter().map(|t| t.package.to_string()).collect();
        packages.dedup();
        let names: Vec<&str> = missing.iter().map(|t| t.command).collect();
        let refuse = |reason: String| HostToolError::Missing {
            why: why.to_string(),
            missing: names.join(", "),
            packages: packages.clone(),
            reason,
        };
        if !may_install {
            return Err(refuse(format!(" ({NO_INSTALL_ENV}=1 forbids pgimg to)")));
        }
        if !nix::unistd::geteuid().is_root() {
            return Err(refuse(" (pgimg installs them itself only as root)".into()));
        }
        if find("apt-get").is_none() {
            return Err(refuse(
                " (or the equivalent of your distribution: there is no apt-get here)".into(),
            ));
        }
        apt_install(&packages, &names, why)?;
        if let Some(t) = tools.iter().find(|t| find(t.command).is_none()) {
            return Err(HostToolError::Missing {
                why: why.to_string(),
                missing: t.command.to_string(),
                packages: vec![t.package.to_string()],
                reason: ": apt-get installed the package but the command is still not on PATH \
                         (is /usr/sbin on PATH?)"
                    .into(),
            });
        }
    }
    for t in tools {
        if let (Some(check), Some(path)) = (t.check, find(t.command)) {
            check(&path).map_err(|detail| HostToolError::Unusable {
                command: t.command,
                path,
                detail,
            })?;
        }
    }
    Ok(())
}

/// `apt-get update` (a fresh machine or container has no package lists),
/// then `apt-get install`; their output goes to stderr.
fn apt_install(packages: &[String], commands: &[&str], why: &str) -> Result<(), HostToolError> {
    let _ = writeln!(
        std::io::stderr(),
        "pgimg: {why} needs {}: installing {} with apt-get (set {NO_INSTALL_ENV}=1 to forbid)",
        commands.join(", "),
        packages.join(" ")
    );
    let failed = |status: String| HostToolError::Install {
        packages: packages.to_vec(),
        status,
    };
    let lock_wait = ["-o", "DPkg::Lock::Timeout=300"];
    let mut update = vec!["update", "-q"];
    update.extend(lock_wait);
    let mut install = vec!["install", "-y", "-q", "--no-install-recommends"];
    install.extend(lock_wait);
    install.extend(packages.iter().map(String::as_str));
    for args in [update, install] {
        let status = Command::new("apt-get")
            .args(&args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .stdout(stderr_stdio())
            .status()
            .map_err(|e| failed(e.to_string()))?;
        if !status.success() {
            return Err(failed(format!("`apt-get {}` {status}", args.join(" "))));
        }
    }
    Ok(())
}

/// Our stderr, for a child's stdout: pgimg's stdout carries results (JSON).
fn stderr_stdio() -> Stdio {
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::inherit(),
    }
}

/// The first `major.minor` in `text` after `marker`.
fn version_after(text: &str, marker: &str) -> Option<(u32, u32)> {
    let rest = &text[text.find(marker)? + marker.len()..];
    let word = rest.split_whitespace().next()?;
    let mut parts = word.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next().unwrap_or("0").parse().unwrap_or(0);
    Some((major, minor))
}

fn version_output(path: &Path, arg: &str) -> Result<String, String> {
    let out = Command::new(path)
        .arg(arg)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `{} {arg}`: {e}", path.display()))?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn at_least(
    found: Option<(u32, u32)>,
    min: (u32, u32),
    output: &str,
    why: &str,
) -> Result<(), String> {
    match found {
        Some(v) if v >= min => Ok(()),
        Some((a, b)) => Err(format!(
            "version {a}.{b} is too old: pgimg needs {}.{} or newer ({why})",
            min.0, min.1
        )),
        None => Err(format!(
            "cannot read its version from {:?}",
            output.lines().next().unwrap_or("")
        )),
    }
}

/// Runs `path arg` and requires the version after `marker` to be `min` or
/// newer; `why` tells the user what older versions lack.
fn version_at_least(
    path: &Path,
    arg: &str,
    marker: &str,
    min: (u32, u32),
    why: &str,
) -> Result<(), String> {
    let out = version_output(path, arg)?;
    at_least(version_after(&out, marker), min, &out, why)
}

fn check_qemu_img(path: &Path) -> Result<(), String> {
    let why = "older ones do not report a qcow2's external data file";
    version_at_least(path, "--version", "version ", (4, 0), why)
}

fn check_mke2fs(path: &Path) -> Result<(), String> {
    let why = "the fixture fills the file system with `mke2fs -d`";
    version_at_least(path, "-V", "mke2fs ", (1, 43), why)
}

/// debootstrap has no `--version`; it knows a suite when it has its script.
fn check_debootstrap(path: &Path) -> Result<(), String> {
    let scripts = [
        PathBuf::from("/usr/share/debootstrap/scripts"),
        path.parent()
            .and_then(Path::parent)
            .map(|prefix| prefix.join("share/debootstrap/scripts"))
            .unwrap_or_default(),
    ];
    if scripts.iter().any(|d| d.join("bookworm").exists()) {
        Ok(())
    } else {
        Err("it does not know Debian bookworm (no scripts/bookworm): \
             install debootstrap 1.0.124 or newer"
            .into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_read_from_the_tools_banners() {
        let qemu =
            "qemu-img version 10.0.2 (Debian 1:10.0.2+ds-1~bpo12+1)\nCopyright (c) 2003-2025";
        assert_eq!(version_after(qemu, "version "), Some((10, 0)));
        let mke2fs = "mke2fs 1.47.0 (5-Feb-2023)\n\tUsing EXT2FS Library version 1.47.0";
        assert_eq!(version_after(mke2fs, "mke2fs "), Some((1, 47)));
        assert!(at_least(Some((10, 0)), (4, 0), qemu, "x").is_ok());
        let old = at_least(Some((3, 1)), (4, 0), "qemu-img version 3.1.0", "why").unwrap_err();
        assert!(
            old.contains("3.1 is too old") && old.contains("4.0"),
            "{old}"
        );
        assert!(at_least(None, (4, 0), "garbage", "why")
            .unwrap_err()
            .contains("garbage"));
    }

    #[test]
    fn missing_tool_without_install_names_the_apt_get_command() {
        let tool = Tool::new("pgimg-no-such-tool", "pgimg-no-such-package");
        let err = ensure_with(&[tool], "testing", false)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("testing needs pgimg-no-such-tool")
                && err
                    .contains("`apt-get install -y --no-install-recommends pgimg-no-such-package`"),
            "{err}"
        );
    }

    #[test]
    fn present_tools_pass_their_checks_here() {
        ensure(&[Tool::new("sh", "dash")], "testing").unwrap();
    }
}
