//! What a boot needs to know about an image, read without mounting it: the
//! root partition, whether a boot loader is installed, the root file system's
//! kernel, initrd and fstab (through `debugfs` at the partition's offset).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::convert::{self, Format};
use crate::image::{gpt, rootfs, Partition, Superblock};

use super::VmError;

/// An image as seen by the boot code.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// The image file as given.
    pub path: PathBuf,
    /// Its format (`raw`, `qcow2`, …) as `qemu-img` detected it.
    pub format: Format,
    /// The raw file whose bytes are the disk (`path` itself for raw images).
    pub raw: PathBuf,
    pub root: Partition,
    pub root_fs: Superblock,
    /// The MBR holds boot code and a BIOS boot partition holds data (GRUB's core.img).
    pub bios_loader: bool,
    /// An EFI system partition exists (whether it holds a loader is up to the firmware).
    pub efi_partition: Option<Partition>,
}

impl BootDisk {
    /// Reads `path`'s partition table and root file system. Only raw images
    /// can be read in place; anything else is refused with the conversion to run.
    pub fn open(path: &Path) -> Result<BootDisk, VmError> {
        let info = convert::detect(path).map_err(|e| VmError::Image {
            path: path.to_path_buf(),
            cause: e.to_string(),
        })?;
        if info.format != Format::Raw {
            return Err(VmError::Image {
                path: path.to_path_buf(),
                cause: format!(
                    "{} images are not read in place; convert it first: qemu-img convert -O raw {} IMAGE.raw",
                    info.format.as_str(),
                    path.display()
                ),
            });
        }
        let image_err = |cause: String| VmError::Image {
            path: path.to_path_buf(),
            cause,
        };
        let mut file = File::open(path).map_err(|e| image_err(e.to_string()))?;
        let table = gpt::read(&mut file).map_err(|e| image_err(e.to_string()))?;
        let (root, root_fs) =
            rootfs::find_root(&mut file, &table).map_err(|e| image_err(e.to_string()))?;
        let parts = table.partitions();
        let bios_part = parts.iter().find(|p| p.type_name() == "BIOS boot");
        let mut mbr = [0u8; 440];
        file.seek(SeekFrom::Start(0))
            .and_then(|_| file.read_exact(&mut mbr))
            .map_err(|e| image_err(e.to_string()))?;
        let mbr_code = mbr.iter().any(|&b| b != 0);
        let bios_loader = match bios_part {
            Some(p) => {
                let mut first = [0u8; 512];
                file.seek(SeekFrom::Start(p.offset()))
                    .and_then(|_| file.read_exact(&mut first))
                    .map_err(|e| image_err(e.to_string()))?;
                mbr_code && first.iter().any(|&b| b != 0)
            }
            None => false,
        };
        let efi_partition = parts
            .iter()
            .find(|p| p.type_name() == "EFI system")
            .cloned();
        Ok(BootDisk {
            path: path.to_path_buf(),
            format: info.format,
            raw: path.to_path_buf(),
            root,
            root_fs,
            bios_loader,
            efi_partition,
        })
    }

    /// `debugfs` names the file system as `FILE?offset=N`: no loop device, no mount, no root.
    fn debugfs_spec(&self) -> String {
        format!("{}?offset={}", self.raw.display(), self.root.offset())
    }

    /// Runs one debugfs request (`-w`: writable) and returns its stdout, or
    /// `Ok(Err(line))` with the first stderr line `is_noise` does not pass:
    /// debugfs exits 0 even when a request fails, so stderr decides.
    pub(super) fn debugfs_request(
        &self,
        writable: bool,
        request: &str,
        is_noise: fn(&str) -> bool,
    ) -> Result<Result<Vec<u8>, String>, VmError> {
        let mut cmd = Command::new("debugfs");
        if writable {
            cmd.arg("-w");
        }
        let out = cmd
            .arg("-R")
            .arg(request)
            .arg(self.debugfs_spec())
            .output()
            .map_err(|e| VmError::Tool {
                tool: "debugfs",
                cause: e.to_string(),
            })?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let complaint = stderr
            .lines()
            .find(|l| !l.starts_with("debugfs ") && !is_noise(l));
        Ok(match complaint {
            None if out.status.success() => Ok(out.stdout),
            _ => Err(complaint.unwrap_or("").trim().to_string()),
        })
    }

    /// Runs one read-only debugfs request and returns its stdout.
    fn debugfs(&self, request: &str) -> Result<Vec<u8>, VmError> {
        self.debugfs_request(false, request, |l| l.trim().is_empty())?
            .map_err(|complaint| VmError::ReadFile {
                image: self.path.clone(),
                request: request.to_string(),
                cause: if complaint.is_empty() {
                    "debugfs failed".to_string()
                } else {
                    complaint
                },
            })
    }

    /// The target of `path` when it is a symbolic link (fast or slow), `None` otherwise.
    fn link_target(&self, path: &str) -> Result<Option<String>, VmError> {
        let stat =
            String::from_utf8_lossy(&self.debugfs(&format!("stat \"{path}\""))?).into_owned();
        if !stat.contains("Type: symlink") {
            return Ok(None);
        }
        if let Some(rest) = stat.split("Fast link dest: \"").nth(1) {
            return Ok(rest.split('"').next().map(str::to_string));
        }
        let target = self.debugfs(&format!("cat \"{path}\""))?;
        Ok(Some(
            String::from_utf8_lossy(&target)
                .trim_end_matches('\0')
                .to_string(),
        ))
    }

    /// `path` with symbolic links in its last component followed, as the image resolves them.
    pub fn resolve(&self, path: &str) -> Result<String, VmError> {
        let mut current = path.to_string();
        for _ in 0..16 {
            match self.link_target(&current)? {
                None => return Ok(current),
                Some(target) if target.starts_with('/') => current = target,
                Some(target) => {
                    let dir = current.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
                    current = format!("{dir}/{target}");
                }
            }
        }
        Err(VmError::ReadFile {
            image: self.path.clone(),
            request: format!("resolve {path}"),
            cause: "too many levels of symbolic links".to_string(),
        })
    }

    /// Whether `path` (links followed) exists in the root file system.
    pub fn exists(&self, path: &str) -> bool {
        self.resolve(path).is_ok()
    }

    /// The content of `path` (links followed) in the root file system.
    pub fn read(&self, path: &str) -> Result<Vec<u8>, VmError> {
        let real = self.resolve(path)?;
        self.debugfs(&format!("cat \"{real}\""))
    }

    /// Copies `path` (links followed) out of the root file system into `dest`.
    pub fn extract(&self, path: &str, dest: &Path) -> Result<(), VmError> {
        let real = self.resolve(path)?;
        self.debugfs(&format!("dump \"{real}\" \"{}\"", dest.display()))?;
        Ok(())
    }

    /// File names in the directory `dir`.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, VmError> {
        let out = self.debugfs(&format!("ls -p \"{dir}\""))?;
        // `ls -p` lines: /inode/mode/uid/gid/name/size/
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter_map(|l| l.split('/').nth(5).map(str::to_string))
            .filter(|n| !n.is_empty() && n != "." && n != "..")
            .collect())
    }

    /// The kernel and initrd a direct boot uses: the distro's stable links
    /// (`/vmlinuz`, `/boot/vmlinuz`, …), else the newest `/boot/vmlinuz-*`
    /// with its `initrd.img-*`/`initramfs-*.img`.
    pub fn kernel(&self) -> Result<(String, Option<String>), VmError> {
        for (kernel, initrd) in [
            ("/vmlinuz", "/initrd.img"),
            ("/boot/vmlinuz", "/boot/initrd.img"),
        ] {
            if self.exists(kernel) {
                let initrd = self.exists(initrd).then(|| initrd.to_string());
                return Ok((kernel.to_string(), initrd));
            }
        }
        let names = self.list("/boot").unwrap_or_default();
        let mut versions: Vec<&str> = names
            .iter()
            .filter_map(|n| n.strip_prefix("vmlinuz-"))
            .collect();
        versions.sort_by(|a, b| version_cmp(a, b));
        let version = versions.last().ok_or_else(|| VmError::NoKernel {
            image: self.path.clone(),
        })?;
        let initrd = [
            format!("initrd.img-{version}"),
            format!("initramfs-{version}.img"),
        ]
        .into_iter()
        .find(|n| names.contains(n))
        .map(|n| format!("/boot/{n}"));
        Ok((format!("/boot/vmlinuz-{version}"), initrd))
    }

    /// The root device as the image's `/etc/fstab` names it (`LABEL=…`,
    /// `UUID=…`, `/dev/…`), for the kernel command line of a direct boot.
    pub fn fstab_root(&self) -> Result<String, VmError> {
        let fstab = String::from_utf8_lossy(&self.read("/etc/fstab")?).into_owned();
        root_from_fstab(&fstab).ok_or_else(|| VmError::ReadFile {
            image: self.path.clone(),
            request: "/etc/fstab".to_string(),
            cause: "no entry for /".to_string(),
        })
    }
}

/// The first non-comment fstab entry mounted on `/`.
pub fn root_from_fstab(fstab: &str) -> Option<String> {
    fstab
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let mut fields = l.split_whitespace();
            let spec = fields.next()?;
            (fields.next()? == "/").then(|| spec.to_string())
        })
}

/// Orders kernel versions like `6.1.0-9-cloud-amd64` < `6.1.0-10-cloud-amd64`:
/// digit runs compare as numbers.
fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    fn chunks(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = s.as_bytes();
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ca, cb) = (chunks(a), chunks(b));
    for (x, y) in ca.iter().zip(cb.iter()) {
        let ord = match (x, y) {
            ((true, x), (true, y)) => x
                .parse::<u64>()
                .unwrap_or(0)
                .cmp(&y.parse::<u64>().unwrap_or(0)),
            ((_, x), (_, y)) => x.cmp(y),
        };
        if ord.is_ne() {
            return ord;
        }
    }
    ca.len().cmp(&cb.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_from_fstab_takes_the_root_entry() {
        let cases = [
            (
                "# c\nLABEL=cloudimg-rootfs\t/\text4\tdefaults\t0 1\nLABEL=UEFI /boot/efi vfat x 0 1\n",
                Some("LABEL=cloudimg-rootfs"),
            ),
            ("UUID=abc /boot ext4 d 0 2\nUUID=def / ext4 d 0 1\n", Some("UUID=def")),
            ("#LABEL=x / ext4\n", None),
            ("", None),
        ];
        for (fstab, want) in cases {
            assert_eq!(root_from_fstab(fstab).as_deref(), want, "{fstab:?}");
        }
    }

    #[test]
    fn kernel_versions_order_numerically() {
        let mut v = vec![
            "6.1.0-10-cloud-amd64",
            "6.1.0-9-cloud-amd64",
            "5.10.0-1-amd64",
        ];
        v.sort_by(|a, b| version_cmp(a, b));
        assert_eq!(
            v,
            [
                "5.10.0-1-amd64",
                "6.1.0-9-cloud-amd64",
                "6.1.0-10-cloud-amd64"
            ]
        );
    }
}
