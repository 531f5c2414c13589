//! `pgimg boot`: an image in QEMU with its serial console on the terminal.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::error::{Interrupted, Reported, UsageError};
use crate::vm::{self, Accel, BootOptions, Firmware, KernelChoice};

/// Arguments of `pgimg boot`.
#[derive(Args, Debug, Clone)]
#[command(
    about = "Boot an image in QEMU with its serial console on this terminal",
    long_about = "Boot an image in QEMU with its serial console on this terminal, like `mkosi vm`.\n\n\
    The image is never changed: it boots behind a throw-away qcow2 overlay, removed on exit \
    (unless --persist). KVM is used when a quick probe boot shows it works, else QEMU's software \
    emulation (TCG), which is slow but works everywhere; the choice is printed.\n\n\
    The image's own boot loader runs (GRUB from the MBR with --firmware bios, EFI/BOOT/BOOTX64.EFI \
    with --firmware uefi through OVMF). An image without one (a build base, a root made from a \
    container) boots too: the kernel and initrd in its /boot are passed to QEMU directly with \
    root= taken from its /etc/fstab; this is chosen automatically and said.\n\n\
    Quit with Ctrl-A X (Ctrl-A C opens QEMU's monitor); Ctrl-C goes to the guest. \
    Needs qemu-system-x86 and qemu-utils (and ovmf for UEFI, mtools to look into the EFI \
    partition); /dev/fuse to read the image's files.\n\n\
    Examples:\n  \
    pgimg boot hello.raw                      # BIOS, GRUB, overlay, KVM or TCG\n  \
    pgimg boot hello.raw --firmware uefi      # OVMF\n  \
    pgimg boot base.raw --kernel direct       # skip the boot loader\n  \
    pgimg boot hello.raw --persist --memory 2048 --cpus 4"
)]
pub struct BootArgs {
    /// The image (raw or qcow2).
    pub image: PathBuf,
    /// Firmware: bios (SeaBIOS) or uefi (OVMF).
    #[arg(long, value_enum, default_value = "bios")]
    pub firmware: Firmware,
    /// How the kernel starts: the image's boot loader, or QEMU loading its kernel directly.
    #[arg(long, value_enum, default_value = "auto")]
    pub kernel: KernelChoice,
    /// Accelerator: auto (KVM when it works, else TCG), kvm, tcg.
    #[arg(long, value_enum, default_value = "auto")]
    pub accel: Accel,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Boot the image itself and keep the changes made while it runs.
    #[arg(long)]
    pub persist: bool,
    /// Extra kernel command-line arguments (direct kernel boot only).
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,
}

impl BootArgs {
    /// The library options these arguments describe.
    pub fn options(&self) -> BootOptions {
        BootOptions {
            accel: self.accel,
            firmware: self.firmware,
            kernel: self.kernel,
            memory_mib: self.memory,
            cpus: self.cpus,
            persist: self.persist,
            append: self.append.clone(),
        }
    }
}

/// `pgimg boot`: exits with QEMU's status. Call inside the private mount
/// namespace (the FUSE view of the disk lives there).
pub fn boot(args: &BootArgs) -> anyhow::Result<()> {
    match vm::boot(&args.image, &args.options()) {
        Ok(0) => Ok(()),
        Ok(code) => Err(Reported { code }.into()),
        Err(e) => Err(classify(e)).with_context(|| format!("booting {}", args.image.display())),
    }
}

/// The error as `main` maps it: a bad checks file is a usage error (2), an
/// interruption exits 130, anything else 1.
pub fn classify(e: vm::VmError) -> anyhow::Error {
    match e {
        vm::VmError::Checks { .. } => UsageError(e.to_string()).into(),
        vm::VmError::Interrupted => Interrupted(anyhow::Error::new(e)).into(),
        other => other.into(),
    }
}
