//! QEMU: the accelerator probe, throw-away overlays, the FUSE view of a disk
//! that lets pgimg read and write it without mounting, and the machine itself.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::VmError;

/// The emulator binary (x86-64 guests only, for now).
pub const QEMU: &str = "qemu-system-x86_64";

/// How the guest CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// KVM when the probe finds it working, else TCG.
    Auto,
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's software emulation: slow (a boot takes tens of seconds) but works everywhere.
    Tcg,
}

/// The firmware the machine starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    /// SeaBIOS: boots GRUB from the MBR and the BIOS boot partition.
    Bios,
    /// OVMF: boots EFI/BOOT/BOOTX64.EFI from the EFI system partition.
    Uefi,
}

/// Where OVMF's code and variable-store template live on Debian and Ubuntu.
const OVMF_PAIRS: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
    (
        "/usr/share/edk2/ovmf/OVMF_CODE.fd",
        "/usr/share/edk2/ovmf/OVMF_VARS.fd",
    ),
];

/// OVMF's code and variable-store template, or an error saying what to install.
pub fn ovmf() -> Result<(PathBuf, PathBuf), VmError> {
    OVMF_PAIRS
        .iter()
        .map(|(c, v)| (PathBuf::from(c), PathBuf::from(v)))
        .find(|(c, v)| c.exists() && v.exists())
        .ok_or(VmError::Tool {
            tool: "OVMF",
            cause:
                "no OVMF firmware found (install the `ovmf` package, or run tests/setup-boot.sh)"
                    .to_string(),
        })
}

/// The accelerator chosen, and why.
#[derive(Debug, Clone)]
pub struct AccelChoice {
    pub accel: Accel,
    pub reason: String,
}

/// Decides between KVM and TCG. `Auto` probes KVM once per process by
/// booting `kernel` (the image's own) for a few seconds and waiting for its
/// first console line: /dev/kvm can be present and its ioctls answer while
/// guests still hang (nested KVM on this project's CI hosts stops before the
/// kernel prints anything), so only a boot proves it.
pub fn choose_accel(requested: Accel, kernel: Option<&Path>) -> AccelChoice {
    match requested {
        Accel::Kvm => AccelChoice {
            accel: Accel::Kvm,
            reason: "KVM (requested)".to_string(),
        },
        Accel::Tcg => AccelChoice {
            accel: Accel::Tcg,
            reason: "TCG (requested)".to_string(),
        },
        Accel::Auto => {
            static PROBED: OnceLock<AccelChoice> = OnceLock::new();
            PROBED
                .get_or_init(|| {
                    if let Some(cached) = cached_probe() {
                        return cached;
                    }
                    let choice = probe_kvm(kernel);
                    // A probe without a kernel proved nothing: not remembered.
                    if kernel.is_some() {
                        store_probe(&choice);
                    }
                    choice
                })
                .clone()
        }
    }
}

/// The probe's answer is remembered for the host's current boot (a failed
/// probe costs seconds on every run otherwise); `/run` is emptied at reboot.
const PROBE_CACHE: &str = "/run/pgimg-kvm-probe";

fn boot_id() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|s| s.trim().to_string())
}

fn cached_probe() -> Option<AccelChoice> {
    let text = std::fs::read_to_string(PROBE_CACHE).ok()?;
    let mut lines = text.lines();
    if lines.next()? != boot_id()? {
        return None;
    }
    let accel = match lines.next()? {
        "kvm" => Accel::Kvm,
        "tcg" => Accel::Tcg,
        _ => return None,
    };
    Some(AccelChoice {
        accel,
        reason: format!(
            "{} (probed earlier in this host boot; {PROBE_CACHE})",
            lines.next()?
        ),
    })
}

fn store_probe(choice: &AccelChoice) {
    if let Some(id) = boot_id() {
        let word = if choice.accel == Accel::Kvm {
            "kvm"
        } else {
            "tcg"
        };
        let _ = std::fs::write(PROBE_CACHE, format!("{id}\n{word}\n{}\n", choice.reason));
    }
}

/// Whether [`choose_accel`] with `Auto` would run a probe boot (and so needs a kernel).
pub fn kvm_probe_needed() -> bool {
    Path::new("/dev/kvm").exists() && cached_probe().is_none()
}

fn probe_kvm(kernel: Option<&Path>) -> AccelChoice {
    let tcg = |why: String| AccelChoice {
        accel: Accel::Tcg,
        reason: format!("TCG (software emulation, slow): {why}"),
    };
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        return tcg(format!("/dev/kvm: {e}"));
    }
    let Some(kernel) = kernel else {
        return tcg("no kernel to probe KVM with".to_string());
    };
    const PROBE_TIME: Duration = Duration::from_secs(8);
    let child = Command::new(QEMU)
        .args(["-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-serial", "stdio"])
        .arg("-kernel")
        .arg(kernel)
        .args([
            "-append",
            "console=ttyS0 earlyprintk=serial,ttyS0,115200 panic=-1",
        ])
        .args(["-no-reboot"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => KillOnDrop(c),
        Err(e) => return tcg(format!("running {QEMU}: {e}")),
    };
    let stdout = child.0.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.contains("Linux version") {
                let _ = tx.send(());
                break;
            }
        }
    });
    match rx.recv_timeout(PROBE_TIME) {
        Ok(()) => AccelChoice {
            accel: Accel::Kvm,
            reason: "KVM (a probe boot printed the kernel banner)".to_string(),
        },
        Err(_) => {
            let mut err = String::new();
            let _ = child.0.kill();
            if let Some(mut e) = child.0.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let err = err.lines().last().unwrap_or("").trim().to_string();
            tcg(if err.is_empty() {
                format!(
                    "/dev/kvm is present but a probe boot printed nothing in {} s",
                    PROBE_TIME.as_secs()
                )
            } else {
                format!("/dev/kvm is present but a probe boot failed: {err}")
            })
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs a tool to completion; a non-zero exit is an error carrying its stderr.
pub fn run_tool(tool: &'static str, cmd: &mut Command) -> Result<String, VmError> {
    let out = cmd.output().map_err(|e| VmError::Tool {
        tool,
        cause: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(VmError::Tool {
            tool,
            cause: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Creates `overlay` as a qcow2 file whose backing file is `image` (read only
/// by QEMU, so the image never changes).
pub fn create_overlay(image: &Path, overlay: &Path) -> Result<(), VmError> {
    let format = crate::image::convert::detect(image)
        .map_err(|e| VmError::Image {
            path: image.to_path_buf(),
            cause: e.to_string(),
        })?
        .format;
    let image = std::fs::canonicalize(image).map_err(|e| VmError::Image {
        path: image.to_path_buf(),
        cause: e.to_string(),
    })?;
    run_tool(
        "qemu-img",
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"])
            .arg(&image)
            .arg(overlay),
    )?;
    Ok(())
}

/// A disk image (any format QEMU reads) exported as a raw file through FUSE by
/// `qemu-storage-daemon`, so pgimg can read it and write into it at byte
/// offsets (debugfs) with no loop device, no mount of the guest's file
/// systems, and no `qemu-nbd` (this kernel has no nbd module). Dropping it
/// stops the daemon, which removes the FUSE mount.
pub struct RawView {
    daemon: KillOnDrop,
    file: PathBuf,
}

impl RawView {
    /// Exports `disk` (in `format`: `qcow2`, `raw`, …) at `file` (created empty).
    pub fn export(
        disk: &Path,
        format: &str,
        file: &Path,
        writable: bool,
    ) -> Result<RawView, VmError> {
        std::fs::write(file, b"").map_err(|e| VmError::Tool {
            tool: "qemu-storage-daemon",
            cause: format!("creating {}: {e}", file.display()),
        })?;
        let read_only = if writable { "off" } else { "on" };
        let mut daemon = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,read-only={read_only},filename={}",
                disk.display()
            ))
            .arg("--blockdev")
            .arg(format!(
                "driver={format},node-name=disk0,file=file0,read-only={read_only}"
            ))
            .arg("--export")
            .arg(format!(
                "type=fuse,id=exp0,node-name=disk0,mountpoint={},writable={}",
                file.display(),
                if writable { "on" } else { "off" }
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| VmError::Tool {
                tool: "qemu-storage-daemon",
                cause: e.to_string(),
            })?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if is_mountpoint(file) {
                break;
            }
            if let Some(status) = daemon.try_wait().ok().flatten() {
                let mut err = String::new();
                if let Some(mut e) = daemon.stderr.take() {
                    let _ = e.read_to_string(&mut err);
                }
                return Err(VmError::Tool {
                    tool: "qemu-storage-daemon",
                    cause: format!(
                        "exporting {} through FUSE ({status}): {} (needs /dev/fuse)",
                        disk.display(),
                        err.trim()
                    ),
                });
            }
            if Instant::now() > deadline {
                let _ = daemon.kill();
                let _ = daemon.wait();
                return Err(VmError::Tool {
                    tool: "qemu-storage-daemon",
                    cause: format!(
                        "the FUSE export of {} did not appear in 20 s",
                        disk.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(RawView {
            daemon: KillOnDrop(daemon),
            file: file.to_path_buf(),
        })
    }

    /// The raw file.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Stops the daemon (SIGTERM: it flushes and unmounts) and waits for it.
    pub fn close(mut self) -> Result<(), VmError> {
        let pid = nix::unistd::Pid::from_raw(self.daemon.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.daemon.0.try_wait() {
                return if status.success() || status.code().is_none() {
                    Ok(())
                } else {
                    Err(VmError::Tool {
                        tool: "qemu-storage-daemon",
                        cause: format!("exited with {status} while closing the export"),
                    })
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(VmError::Tool {
            tool: "qemu-storage-daemon",
            cause: "did not stop within 20 s of SIGTERM".to_string(),
        })
    }
}

/// True when `path` is the mount point of a mount in this namespace.
fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let Ok(path) = std::fs::canonicalize(path) else {
        return false;
    };
    let want = path.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| mp.replace("\\040", " ") == want)
}

/// How the kernel is started.
#[derive(Debug, Clone)]
pub enum Loader {
    /// The firmware runs the image's boot loader.
    Firmware,
    /// QEMU loads this kernel and initrd (extracted from the image) with this command line.
    Direct {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: String,
    },
}

/// Everything QEMU needs to start one machine.
#[derive(Debug, Clone)]
pub struct MachineConfig {
    pub disk: PathBuf,
    /// `qcow2` for an overlay; the image's own format with `--persist`.
    pub disk_format: String,
    pub accel: Accel,
    pub firmware: Firmware,
    /// A private copy of OVMF's variable store, for UEFI.
    pub efi_vars: Option<PathBuf>,
    pub loader: Loader,
    pub memory_mib: u32,
    pub cpus: u32,
    /// `None`: the serial console on the terminal (interactive); `Some`: logged to this file.
    pub console_log: Option<PathBuf>,
    /// A unix socket QEMU serves as the guest's virtio-serial port `org.pgimg.verify`.
    pub agent_socket: Option<PathBuf>,
    /// Exit instead of rebooting (unattended runs).
    pub no_reboot: bool,
}

/// The virtio-serial port name the verify agent looks for.
pub const AGENT_PORT: &str = "org.pgimg.verify";

impl MachineConfig {
    /// The `qemu-system-x86_64` command line.
    pub fn command(&self) -> Result<Command, VmError> {
        let mut cmd = Command::new(QEMU);
        match self.accel {
            Accel::Kvm => cmd.args(["-accel", "kvm", "-cpu", "host"]),
            // `max` gives TCG guests the x86-64-v2+ features distro kernels expect.
            Accel::Tcg | Accel::Auto => cmd.args(["-accel", "tcg", "-cpu", "max"]),
        };
        cmd.args(["-machine", "q35", "-nodefaults", "-no-user-config"])
            .args(["-m", &self.memory_mib.to_string()])
            .args(["-smp", &self.cpus.to_string()]);
        if self.firmware == Firmware::Uefi {
            let (code, _) = ovmf()?;
            let vars = self.efi_vars.as_ref().ok_or(VmError::Tool {
                tool: "OVMF",
                cause: "no private copy of the variable store".to_string(),
            })?;
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                code.display()
            ));
            cmd.arg("-drive").arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
        }
        cmd.arg("-drive").arg(format!(
            "file={},format={},if=none,id=disk0,discard=unmap",
            self.disk.display(),
            self.disk_format
        ));
        cmd.args(["-device", "virtio-blk-pci,drive=disk0"]);
        // A NIC as clouds give one, on a user-mode network with no way out
        // (restrict=on): DHCP works, nothing leaves the machine.
        cmd.args(["-netdev", "user,id=net0,restrict=on"])
            .args(["-device", "virtio-net-pci,netdev=net0"]);
        cmd.args(["-device", "virtio-rng-pci"]);
        if let Loader::Direct {
            kernel,
            initrd,
            append,
        } = &self.loader
        {
            cmd.arg("-kernel").arg(kernel).arg("-append").arg(append);
            if let Some(initrd) = initrd {
                cmd.arg("-initrd").arg(initrd);
            }
        }
        match &self.console_log {
            Some(log) => {
                cmd.args(["-display", "none"])
                    .arg("-serial")
                    .arg(format!("file:{}", log.display()));
            }
            None => {
                cmd.args(["-nographic", "-serial", "mon:stdio"]);
            }
        }
        if let Some(socket) = &self.agent_socket {
            cmd.args(["-device", "virtio-serial-pci,id=vser0"])
                .arg("-chardev")
                .arg(format!(
                    "socket,id=agent0,path={},server=on,wait=off",
                    socket.display()
                ))
                .args([
                    "-device",
                    &format!("virtserialport,bus=vser0.0,chardev=agent0,name={AGENT_PORT}"),
                ]);
        }
        if self.no_reboot {
            cmd.arg("-no-reboot");
        }
        Ok(cmd)
    }
}
