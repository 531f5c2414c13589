//! One machine for one image: the overlay, the choice of boot path
//! (the image's boot loader, or its kernel booted directly), the accelerator,
//! and `pgimg boot`'s interactive run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::agent;
use super::disk::BootDisk;
use super::qemu::{self, Accel, AccelChoice, Firmware, Loader, MachineConfig, RawView};
use super::VmError;

/// How the kernel is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelChoice {
    /// The image's boot loader when it has one for the firmware, else `direct`.
    Auto,
    /// The firmware runs the image's boot loader (GRUB); an error when there is none.
    Loader,
    /// QEMU loads the kernel and initrd from the image's /boot, root from its fstab.
    Direct,
}

/// What `boot` and `verify` share.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub accel: Accel,
    pub firmware: Firmware,
    pub kernel: KernelChoice,
    pub memory_mib: u32,
    pub cpus: u32,
    /// Boot the image itself, keeping changes (no overlay). `boot` only.
    pub persist: bool,
    /// Extra kernel command-line arguments for a direct boot.
    pub append: Option<String>,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            accel: Accel::Auto,
            firmware: Firmware::Bios,
            kernel: KernelChoice::Auto,
            memory_mib: 1024,
            cpus: 2,
            persist: false,
            append: None,
        }
    }
}

/// A machine ready to start, and the scratch folder (overlay, extracted
/// kernel, sockets) removed when it is dropped.
pub struct Prepared {
    pub config: MachineConfig,
    pub accel: AccelChoice,
    /// One line each on how the machine boots, for the user.
    pub notes: Vec<String>,
    pub scratch: tempfile::TempDir,
}

/// Where scratch folders go: beside other big temporary files, not in a
/// (possibly small, memory-backed) /tmp.
fn scratch_dir() -> Result<tempfile::TempDir, VmError> {
    let base = std::env::var_os("PGIMG_VM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    tempfile::Builder::new()
        .prefix("pgimg-vm-")
        .tempdir_in(&base)
        .map_err(|e| VmError::Tool {
            tool: "scratch",
            cause: format!("creating a folder in {}: {e}", base.display()),
        })
}

/// Whether the ESP holds the removable-media loader OVMF boots without NVRAM entries.
fn efi_loader(view: &Path, disk: &BootDisk) -> Result<bool, String> {
    let Some(esp) = &disk.efi_partition else {
        return Err("no EFI system partition".to_string());
    };
    let out = Command::new("mdir")
        .arg("-b")
        .arg("-i")
        .arg(format!("{}@@{}", view.display(), esp.offset()))
        .arg("::/EFI/BOOT")
        .output()
        .map_err(|e| format!("mdir (mtools) to look into the EFI partition: {e}"))?;
    let listing = String::from_utf8_lossy(&out.stdout).to_ascii_uppercase();
    if out.status.success() && listing.contains("BOOTX64.EFI") {
        Ok(true)
    } else {
        Err("the EFI system partition has no EFI/BOOT/BOOTX64.EFI".to_string())
    }
}

/// Prepares a machine for `image`: the overlay (unless `persist`), the boot
/// path, the verify agent when `agent_socket` is wanted, the accelerator.
pub fn prepare(
    image: &Path,
    opts: &BootOptions,
    with_agent: bool,
    console_log: bool,
) -> Result<Prepared, VmError> {
    let scratch = scratch_dir()?;
    let dir = scratch.path();
    let mut notes = Vec::new();
    let disk_path = if opts.persist {
        notes.push(format!(
            "disk: {} itself (--persist: changes are kept)",
            image.display()
        ));
        image.to_path_buf()
    } else {
        let overlay = dir.join("overlay.qcow2");
        qemu::create_overlay(image, &overlay)?;
        notes.push(format!(
            "disk: a throw-away overlay over {} (the image is not changed)",
            image.display()
        ));
        overlay
    };
    // An overlay is qcow2 by construction (and `detect` refuses backing files).
    let disk_format = if opts.persist {
        crate::image::convert::detect(image)
            .map_err(|e| VmError::Image {
                path: image.to_path_buf(),
                cause: e.to_string(),
            })?
            .format
            .as_str()
            .to_string()
    } else {
        "qcow2".to_string()
    };

    let view = RawView::export(&disk_path, &disk_format, &dir.join("view.raw"), with_agent)?;
    let disk = BootDisk::open(view.path()).map_err(|e| match e {
        VmError::Image { cause, .. } => VmError::Image {
            path: image.to_path_buf(),
            cause,
        },
        other => other,
    })?;

    let loader_missing = match opts.firmware {
        Firmware::Bios => (!disk.bios_loader)
            .then(|| "no boot code in the MBR and the BIOS boot partition".to_string()),
        Firmware::Uefi => efi_loader(view.path(), &disk).err(),
    };
    let direct = match (opts.kernel, &loader_missing) {
        (KernelChoice::Direct, _) => true,
        (KernelChoice::Auto, Some(why)) => {
            notes.push(format!(
                "boot: the image has no boot loader for {} ({why}); booting its kernel directly",
                firmware_name(opts.firmware)
            ));
            true
        }
        (KernelChoice::Loader, Some(why)) => {
            return Err(VmError::NoLoader {
                image: image.to_path_buf(),
                firmware: firmware_name(opts.firmware),
                why: why.clone(),
            })
        }
        (_, None) => false,
    };

    // The kernel is extracted for a direct boot, and for the KVM probe.
    let need_kernel = direct || (opts.accel == Accel::Auto && qemu::kvm_probe_needed());
    let mut kernel_file = None;
    let mut loader = Loader::Firmware;
    if need_kernel {
        let (kernel, initrd) = disk.kernel().map_err(|e| match e {
            VmError::NoKernel { .. } => VmError::NoKernel {
                image: image.to_path_buf(),
            },
            other => other,
        })?;
        let kfile = dir.join("vmlinuz");
        disk.extract(&kernel, &kfile)?;
        kernel_file = Some(kfile.clone());
        if direct {
            let ifile = match &initrd {
                Some(i) => {
                    let f = dir.join("initrd");
                    disk.extract(i, &f)?;
                    Some(f)
                }
                None => None,
            };
            let root = disk.fstab_root()?;
            let mut append = format!("root={root} ro console=tty1 console=ttyS0,115200");
            if console_log {
                // Unattended: a panic ends the machine instead of hanging.
                append.push_str(" panic=-1");
            }
            if let Some(extra) = &opts.append {
                append.push(' ');
                append.push_str(extra);
            }
            notes.push(format!(
                "boot: kernel {kernel}{} from the image, `{append}` (root from /etc/fstab)",
                initrd
                    .as_deref()
                    .map(|i| format!(" and initrd {i}"))
                    .unwrap_or_default()
            ));
            loader = Loader::Direct {
                kernel: kfile,
                initrd: ifile,
                append,
            };
        }
    }
    if !direct {
        notes.push(format!(
            "boot: {} firmware runs the image's boot loader",
            firmware_name(opts.firmware)
        ));
    }
    if with_agent {
        agent::inject(&disk, dir)?;
    }
    view.close()?;

    let accel = qemu::choose_accel(opts.accel, kernel_file.as_deref());
    notes.push(format!("accelerator: {}", accel.reason));

    let efi_vars = if opts.firmware == Firmware::Uefi {
        let (_, vars) = qemu::ovmf()?;
        let copy = dir.join("efi-vars.fd");
        std::fs::copy(&vars, &copy).map_err(|e| VmError::Tool {
            tool: "OVMF",
            cause: format!("copying {}: {e}", vars.display()),
        })?;
        Some(copy)
    } else {
        None
    };

    let config = MachineConfig {
        disk: disk_path,
        disk_format,
        accel: accel.accel,
        firmware: opts.firmware,
        efi_vars,
        loader,
        memory_mib: opts.memory_mib,
        cpus: opts.cpus,
        console_log: console_log.then(|| dir.join("console.log")),
        agent_socket: with_agent.then(|| dir.join("agent.sock")),
        no_reboot: console_log,
    };
    Ok(Prepared {
        config,
        accel,
        notes,
        scratch,
    })
}

/// Human name of a firmware.
pub fn firmware_name(f: Firmware) -> &'static str {
    match f {
        Firmware::Bios => "BIOS",
        Firmware::Uefi => "UEFI",
    }
}

/// `pgimg boot`: starts the machine with its serial console on this
/// terminal and waits until it powers off (or QEMU is quit with Ctrl-A X).
/// SIGINT/SIGTERM to pgimg stop the machine; the overlay is removed either way.
/// Returns QEMU's exit code.
pub fn boot(image: &Path, opts: &BootOptions) -> Result<i32, VmError> {
    let prepared = prepare(image, opts, false, false)?;
    for note in &prepared.notes {
        pgimg_stdlib::stderr_line!("pgimg boot: {note}");
    }
    pgimg_stdlib::stderr_line!(
        "pgimg boot: serial console follows; Ctrl-A X quits QEMU, Ctrl-A C opens its monitor"
    );
    let mut child = prepared
        .config
        .command()?
        .spawn()
        .map_err(|e| VmError::Tool {
            tool: qemu::QEMU,
            cause: format!("{e} (install qemu-system-x86, or run tests/setup-boot.sh)"),
        })?;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| VmError::Tool {
            tool: qemu::QEMU,
            cause: e.to_string(),
        })? {
            return Ok(status.code().unwrap_or(1));
        }
        if crate::sandbox::interrupt::interrupted() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(VmError::Interrupted);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
