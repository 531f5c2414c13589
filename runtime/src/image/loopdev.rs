//! Attaches a byte range of an image file to a loop device (offset + size limit, auto-clear) behind a guard.
//!
//! Partitions are attached by offset and size limit, not by partition scanning:
//! many kernels and CI containers have no partition-table support or no udev.
//! The device is configured in one `LOOP_CONFIGURE` call (Linux 5.8+) so that
//! it is never bound without `LO_FLAGS_AUTOCLEAR`: if pgimg is killed, the
//! kernel detaches it when its last user (our fd, a mount) goes away.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use loopdev::{LoopControl, LoopDevice};

const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
/// Attempts when another process takes the free device between our
/// `LOOP_CTL_GET_FREE` and our configure.
const ATTACH_ATTEMPTS: usize = 8;
/// How long [`LoopGuard::close`] waits for the kernel to unbind the device.
const DETACH_WAIT: Duration = Duration::from_secs(2);

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

const _: () = assert!(std::mem::size_of::<LoopInfo64>() == 232);
const _: () = assert!(std::mem::size_of::<LoopConfig>() == 304);

#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening /dev/loop-control (needs root and the loop driver): {0}")]
    Control(#[source] std::io::Error),
    #[error("attaching {backing} (offset {offset}, size {size}) to {device}: {source}")]
    Attach {
        backing: PathBuf,
        device: PathBuf,
        offset: u64,
        size: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("no free loop device for {backing} after {ATTACH_ATTEMPTS} attempts")]
    Busy { backing: PathBuf },
    #[error(
        "{device} is {actual} bytes, expected {expected}: the range ends past the end of {backing}"
    )]
    SizeMismatch {
        device: PathBuf,
        backing: PathBuf,
        expected: u64,
        actual: u64,
    },
    #[error("detaching {device}: {source}")]
    Detach {
        device: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{device} is still attached to {backing}: something still uses it (a mount?); \
         the kernel detaches it when that goes away"
    )]
    StillInUse { device: PathBuf, backing: PathBuf },
}

/// A loop device bound to a byte range of a file.
///
/// Drop detaches it (`LOOP_CLR_FD`, which with auto-clear takes effect when
/// the last user closes it) and logs a failure to stderr; it never panics.
/// Call [`close`](Self::close) on the normal path to get errors.
#[derive(Debug)]
pub struct LoopGuard {
    device: Option<LoopDevice>,
    path: PathBuf,
    backing: PathBuf,
}

/// Attaches `size` bytes of `file` starting at `offset`, with auto-clear.
pub fn attach(
    file: &Path,
    offset: u64,
    size: u64,
    read_only: bool,
) -> Result<LoopGuard, LoopError> {
    let backing = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .open(file)
        .map_err(|source| LoopError::Open {
            path: file.to_path_buf(),
            source,
        })?;
    let control = LoopControl::open().map_err(LoopError::Control)?;
    for _ in 0..ATTACH_ATTEMPTS {
        let device = control.next_free().map_err(LoopError::Control)?;
        let path = device.path().unwrap_or_else(|| PathBuf::from("/dev/loop?"));
        match configure(&device, &backing, file, offset, size, read_only) {
            Ok(()) => {
                let guard = LoopGuard {
                    device: Some(device),
                    path,
                    backing: file.to_path_buf(),
                };
                guard.check_size(size)?;
                return Ok(guard);
            }
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => continue,
            Err(source) => {
                return Err(LoopError::Attach {
                    backing: file.to_path_buf(),
                    device: path,
                    offset,
                    size,
                    source,
                })
            }
        }
    }
    Err(LoopError::Busy {
        backing: file.to_path_buf(),
    })
}

fn configure(
    device: &LoopDevice,
    backing: &File,
    name: &Path,
    offset: u64,
    size: u64,
    read_only: bool,
) -> std::io::Result<()> {
    let mut flags = LO_FLAGS_AUTOCLEAR;
    if read_only {
        flags |= LO_FLAGS_READ_ONLY;
    }
    let mut file_name = [0u8; 64];
    let name = name.as_os_str().as_encoded_bytes();
    let n = name.len().min(63);
    file_name[..n].copy_from_slice(&name[..n]);
    let config = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size: 0,
        info: LoopInfo64 {
            lo_device: 0,
            lo_inode: 0,
            lo_rdevice: 0,
            lo_offset: offset,
            lo_sizelimit: size,
            lo_number: 0,
            lo_encrypt_type: 0,
            lo_encrypt_key_size: 0,
            lo_flags: flags,
            lo_file_name: file_name,
            lo_crypt_name: [0; 64],
            lo_encrypt_key: [0; 32],
            lo_init: [0; 2],
        },
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `config`
    // is (layout asserted above), and keeps no pointer to it.
    let rc = unsafe { libc::ioctl(device.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
    if rc == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        // Kernels before 5.8 do not know LOOP_CONFIGURE: two ioctls, with a
        // short window in which the device is bound without auto-clear.
        Some(libc::EINVAL) | Some(libc::ENOTTY) => device
            .with()
            .offset(offset)
            .size_limit(size)
            .read_only(read_only)
            .autoclear(true)
            .attach_fd(backing.as_raw_fd()),
        _ => Err(err),
    }
}

impl LoopGuard {
    /// The device, e.g. `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The image file behind it.
    pub fn backing(&self) -> &Path {
        &self.backing
    }

    /// The kernel clamps the size limit to the file: a partition that runs
    /// past the end of the image would silently be cut.
    fn check_size(&self, expected: u64) -> Result<(), LoopError> {
        let actual = sysfs_sectors(&self.path).map(|s| s * 512);
        match actual {
            Some(actual) if actual != expected => Err(LoopError::SizeMismatch {
                device: self.path.clone(),
                backing: self.backing.clone(),
                expected,
                actual,
            }),
            _ => Ok(()),
        }
    }

    /// Detaches the device and waits until the kernel has unbound it.
    pub fn close(mut self) -> Result<(), LoopError> {
        let device = self.device.take().expect("only close and drop take it");
        detach(device, &self.path)?;
        let deadline = Instant::now() + DETACH_WAIT;
        while bound_to(&self.path, &self.backing) {
            if Instant::now() > deadline {
                return Err(LoopError::StillInUse {
                    device: self.path.clone(),
                    backing: self.backing.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }
}

impl Drop for LoopGuard {
    fn drop(&mut self) {
        if let Some(device) = self.device.take() {
            if let Err(e) = detach(device, &self.path) {
                eprintln!("warning: {e}");
            }
        }
    }
}

/// `LOOP_CLR_FD`, then closes our fd (with auto-clear, the last close is what
/// unbinds). ENXIO means it is already unbound.
fn detach(device: LoopDevice, path: &Path) -> Result<(), LoopError> {
    match device.detach() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Ok(()),
        Err(source) => Err(LoopError::Detach {
            device: path.to_path_buf(),
            source,
        }),
    }
}

fn sysfs_dir(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?;
    Some(Path::new("/sys/block").join(name))
}

fn sysfs_sectors(device: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(sysfs_dir(device)?.join("size")).ok()?;
    text.trim().parse().ok()
}

/// Whether `device` is still bound to `backing` (a device re-used by someone
/// else for another file counts as ours being gone).
fn bound_to(device: &Path, backing: &Path) -> bool {
    let Some(dir) = sysfs_dir(device) else {
        return false;
    };
    let Ok(current) = std::fs::read_to_string(dir.join("loop/backing_file")) else {
        return false;
    };
    let ours = std::fs::canonicalize(backing).unwrap_or_else(|_| backing.to_path_buf());
    Path::new(current.trim_end_matches('\n')) == ours
}

/// Loop devices currently bound to `file`, from sysfs (what `losetup -j` shows).
pub fn attached_to(file: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|e| Path::new("/dev").join(e.file_name()))
        .filter(|dev| dev.to_string_lossy().starts_with("/dev/loop") && bound_to(dev, file))
        .collect();
    found.sort();
    found
}
