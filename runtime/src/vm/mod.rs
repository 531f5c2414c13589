//! Booting images in QEMU: `pgimg boot` (interactive) and `pgimg verify`
//! (unattended checks over an injected agent), both behind throw-away
//! overlays so the image itself never changes.

pub mod agent;
pub mod checks;
pub mod disk;
pub mod machine;
pub mod qemu;
pub mod verify;

use std::path::PathBuf;

pub use machine::{boot, BootOptions, KernelChoice};
pub use qemu::{Accel, Firmware};
pub use verify::{verify, Report, VerifyOptions};

/// Why a boot or a verification could not be carried out (a verification
/// that ran and found failures is a [`Report`], not an error).
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("{}: {cause}", .path.display())]
    Image { path: PathBuf, cause: String },
    #[error("{tool}: {cause}")]
    Tool { tool: &'static str, cause: String },
    #[error("reading {request} in {}: {cause}", .image.display())]
    ReadFile {
        image: PathBuf,
        request: String,
        cause: String,
    },
    #[error("{}: no kernel in the image (/vmlinuz, /boot/vmlinuz or /boot/vmlinuz-*), so it cannot be booted directly", .image.display())]
    NoKernel { image: PathBuf },
    #[error("{}: no boot loader for {firmware} ({why}); use --kernel direct to boot the image's kernel without one", .image.display())]
    NoLoader {
        image: PathBuf,
        firmware: &'static str,
        why: String,
    },
    #[error("verify agent: {0}")]
    Agent(String),
    #[error("checks file {}: {cause}", .path.display())]
    Checks { path: PathBuf, cause: String },
    #[error("interrupted")]
    Interrupted,
}
