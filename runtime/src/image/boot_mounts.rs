//! What the image's `/etc/fstab` mounts under `/boot` (the ESP on
//! `/boot/efi`, a separate `/boot`), mounted for the build the way the image
//! will have them at boot.
//!
//! Without this, a recipe (or a GRUB or shim update it installs) writing to
//! `/boot/efi` writes into the root file system's directory that the ESP
//! hides at boot, and the ESP keeps its old files (osbuild/osbuild#208,
//! BlackArch/blackarch#927). Each entry is found among the image's
//! partitions by its fstab source (`LABEL=`, `UUID=`, `PARTUUID=`,
//! `PARTLABEL=` or their `/dev/disk/by-*/` links), attached by offset and
//! size and mounted on its mount point inside the root. Where the kernel
//! cannot mount the file system (a kernel without vfat), a read-only empty
//! tmpfs takes the mount point instead: a write there fails (EROFS) rather
//! than landing in the hidden directory, and [`BootMounts::explain`] says why.
//! The partition's files are not visible there during such a build.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

use nix::errno::Errno;
use nix::mount::MsFlags;
use pgimg_stdlib::root::ImageRoot;

use super::gpt::{self, Partition};
use super::loopdev::{self, LoopGuard};
use super::superblock::Superblock;
use crate::sandbox::mounts::{Mount, MountError};

/// One line of `/etc/fstab`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// The source field: `LABEL=UEFI`, `UUID=…`, `/dev/disk/by-label/…`.
    pub source: String,
    /// The mount point.
    pub path: String,
    pub fstype: String,
}

/// The entries of `fstab` (fstab(5)) mounted at boot on `/boot` or below,
/// parents first. `noauto` entries are skipped: nothing mounts them at boot.
pub fn boot_entries(fstab: &str) -> Vec<FstabEntry> {
    let mut entries: Vec<FstabEntry> = fstab
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            let (source, path, fstype) = (fields.first()?, fields.get(1)?, fields.get(2)?);
            let options = fields.get(3).copied().unwrap_or("defaults");
            let path = path.trim_end_matches('/');
            let under_boot = path == "/boot" || path.starts_with("/boot/");
            let noauto = options.split(',').any(|o| o == "noauto");
            (under_boot && !noauto).then(|| FstabEntry {
                source: unescape_octal(source),
                path: unescape_octal(path),
                fstype: fstype.to_string(),
            })
        })
        .collect();
    entries.sort_by_key(|e| e.path.matches('/').count());
    entries
}

/// fstab writes a space in a field as `\040` (fstab(5)).
fn unescape_octal(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// How a file system names itself: what `LABEL=` and `UUID=` match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FsIds {
    pub label: Option<String>,
    /// As blkid prints it: ext's 8-4-4-4-12, FAT's `XXXX-XXXX` volume id.
    pub uuid: Option<String>,
}

impl From<&Superblock> for FsIds {
    fn from(sb: &Superblock) -> FsIds {
        FsIds {
            label: (!sb.label.is_empty()).then(|| sb.label.clone()),
            uuid: Some(sb.uuid.clone()),
        }
    }
}

/// The label and volume id of a FAT file system at `offset`, from its boot
/// sector (Microsoft's FAT specification: the extended BPB at 0x24 for
/// FAT12/16 and at 0x40 for FAT32, whose 16-bit sectors-per-FAT is 0).
/// `None` when the sector is not a FAT boot sector.
pub fn fat_ids(disk: &mut (impl Read + Seek), offset: u64) -> io::Result<Option<FsIds>> {
    let mut s = [0u8; 512];
    disk.seek(SeekFrom::Start(offset))?;
    if let Err(e) = disk.read_exact(&mut s) {
        return if e.kind() == io::ErrorKind::UnexpectedEof {
            Ok(None)
        } else {
            Err(e)
        };
    }
    let fat32 = u16::from_le_bytes([s[0x16], s[0x17]]) == 0;
    let ebpb = if fat32 { 0x40 } else { 0x24 };
    let bytes_per_sector = u16::from_le_bytes([s[0x0b], s[0x0c]]);
    // 0x29: the extended boot signature that says id and label follow.
    if s[510..512] != [0x55, 0xAA] || s[ebpb + 2] != 0x29 || bytes_per_sector < 512 {
        return Ok(None);
    }
    let id = u32::from_le_bytes(s[ebpb + 3..ebpb + 7].try_into().unwrap());
    let label = String::from_utf8_lossy(&s[ebpb + 7..ebpb + 18])
        .trim_end()
        .to_string();
    Ok(Some(FsIds {
        label: (!label.is_empty() && label != "NO NAME").then_some(label),
        uuid: Some(format!("{:04X}-{:04X}", id >> 16, id & 0xffff)),
    }))
}

/// Whether the fstab `source` names `part` (whose file system is `ids`).
pub fn names(source: &str, part: &Partition, ids: &FsIds) -> bool {
    let (key, value) = match source.split_once('=') {
        Some((k, v)) if !k.contains('/') => (k, v.trim_matches('"')),
        _ => match source
            .strip_prefix("/dev/disk/by-")
            .and_then(|r| r.split_once('/'))
        {
            Some(("label", v)) => ("LABEL", v),
            Some(("uuid", v)) => ("UUID", v),
            Some(("partuuid", v)) => ("PARTUUID", v),
            Some(("partlabel", v)) => ("PARTLABEL", v),
            _ => return false,
        },
    };
    let value = value.to_string();
    match key {
        "LABEL" => ids.label.as_deref() == Some(&value),
        "UUID" => ids
            .uuid
            .as_deref()
            .is_some_and(|u| u.eq_ignore_ascii_case(&value)),
        "PARTUUID" => part.unique_guid.to_string().eq_ignore_ascii_case(&value),
        "PARTLABEL" => part.name == value,
        _ => false,
    }
}

/// A mount point under `/boot` that the kernel could not mount, held
/// read-only for the build.
#[derive(Debug, Clone)]
pub struct Placeholder {
    pub path: String,
    pub partition: u32,
    pub fstype: String,
    pub reason: String,
}

/// The `/boot` mounts of one build; unmounted by [`close`](Self::close), or
/// on drop, deepest first.
#[derive(Debug, Default)]
pub struct BootMounts {
    /// In mount order; each with the loop device it mounts, if any.
    mounts: Vec<(Mount, Option<LoopGuard>)>,
    placeholders: Vec<Placeholder>,
}

impl BootMounts {
    /// Mounts the image's `/boot` entries (see the module docs) inside
    /// `root`, the mounted root file system of the raw image `image`.
    /// `log` receives one line per entry.
    ///
    /// Errors: reading the image or the fstab, attaching a partition, a
    /// mount that fails for another reason than an unsupported file system.
    pub fn mount(image: &Path, root: &ImageRoot, log: &dyn Fn(&str)) -> anyhow::Result<BootMounts> {
        let fstab = match root.read("/etc/fstab") {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.is_not_found() => return Ok(BootMounts::default()),
            Err(e) => return Err(e.into()),
        };
        let entries = boot_entries(&fstab);
        let mut out = BootMounts::default();
        if entries.is_empty() {
            return Ok(out);
        }
        let mut disk = File::open(image)?;
        let table = gpt::read(&mut disk)?;
        for entry in entries {
            let mut found = None;
            for part in table.partitions() {
                let ids = match Superblock::read(&mut disk, part.offset())? {
                    Some(sb) => FsIds::from(&sb),
                    None => fat_ids(&mut disk, part.offset())?.unwrap_or_default(),
                };
                if names(&entry.source, &part, &ids) {
                    found = Some(part);
                    break;
                }
            }
            let Some(part) = found else {
                log(&format!(
                    "{}: /etc/fstab mounts {} there, which names no partition of the image; left as it is",
                    entry.path, entry.source
                ));
                continue;
            };
            out.mount_one(image, root, &entry, &part, log)?;
        }
        Ok(out)
    }

    fn mount_one(
        &mut self,
        image: &Path,
        root: &ImageRoot,
        entry: &FstabEntry,
        part: &Partition,
        log: &dyn Fn(&str),
    ) -> anyhow::Result<()> {
        let what = format!("p{} ({}) on {}", part.number, entry.fstype, entry.path);
        let lo = loopdev::attach(image, part.offset(), part.size(), false)?;
        let fstype = match entry.fstype.as_str() {
            "auto" => None,
            t => Some(t),
        };
        match Mount::in_root(
            root,
            &entry.path,
            Some(lo.path()),
            fstype,
            MsFlags::MS_NODEV | MsFlags::MS_NOSUID,
            None,
            &what,
        ) {
            Ok(m) => {
                log(&format!(
                    "mounted {what}, as the image's fstab does at boot"
                ));
                self.mounts.push((m, Some(lo)));
                Ok(())
            }
            // ENODEV: the kernel knows no such file system type.
            Err(MountError::Mount {
                source: Errno::ENODEV,
                ..
            }) => {
                lo.close()?;
                let reason = format!("this kernel cannot mount {}", entry.fstype);
                let m = Mount::in_root(
                    root,
                    &entry.path,
                    Some(Path::new("tmpfs")),
                    Some("tmpfs"),
                    MsFlags::MS_RDONLY
                        | MsFlags::MS_NODEV
                        | MsFlags::MS_NOSUID
                        | MsFlags::MS_NOEXEC,
                    Some("size=4k,mode=0755"),
                    &format!("read-only placeholder for {what}"),
                )?;
                log(&format!(
                    "{}: {reason}, so it is read-only for the build: the image mounts p{} there at boot, and writes must not land in the root file system's hidden {}",
                    entry.path, part.number, entry.path
                ));
                self.mounts.push((m, None));
                self.placeholders.push(Placeholder {
                    path: entry.path.clone(),
                    partition: part.number,
                    fstype: entry.fstype.clone(),
                    reason,
                });
                Ok(())
            }
            Err(e) => {
                lo.close()?;
                Err(e.into())
            }
        }
    }

    /// The mount points held read-only.
    pub fn placeholders(&self) -> &[Placeholder] {
        &self.placeholders
    }

    /// A note for a build failure whose text says a write hit a read-only
    /// file system while a placeholder is in place; `None` otherwise.
    pub fn explain(&self, failure: &str) -> Option<String> {
        if self.placeholders.is_empty() || !failure.contains("Read-only file system") {
            return None;
        }
        let lines: Vec<String> = self
            .placeholders
            .iter()
            .map(|p| {
                format!(
                    "note: {} is read-only during the build: the image mounts partition {} ({}) there at boot and {}; a write there would have landed in the root file system's hidden {} instead. Build on a host whose kernel mounts {}.",
                    p.path, p.partition, p.fstype, p.reason, p.path, p.fstype
                )
            })
            .collect();
        Some(lines.join("\n"))
    }

    /// Unmounts, deepest first, and detaches the loop devices; does every
    /// step and returns the first failure.
    pub fn close(mut self) -> anyhow::Result<()> {
        let mut first: Option<anyhow::Error> = None;
        while let Some((m, lo)) = self.mounts.pop() {
            if let Err(e) = m.close() {
                first.get_or_insert(e.into());
            }
            if let Some(lo) = lo {
                if let Err(e) = lo.close() {
                    first.get_or_insert(e.into());
                }
            }
        }
        first.map_or(Ok(()), Err)
    }
}

impl Drop for BootMounts {
    /// Deepest first, like [`close`](Self::close); failures are logged by
    /// the mounts' and loop devices' own `Drop`.
    fn drop(&mut self) {
        while let Some((m, lo)) = self.mounts.pop() {
            drop(m);
            drop(lo);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn boot_entries_are_those_under_boot_parents_first_noauto_skipped() {
        let fstab = "# comment\n\
            LABEL=cloudimg-rootfs\t/\text4\tdiscard,errors=remount-ro\t0 1\n\
            LABEL=UEFI\t/boot/efi\tvfat\tumask=0077\t0 1\n\
            UUID=0d3c-11aa /boot ext4 defaults 0 2\n\
            /dev/sdb1 /boot/extra ext4 noauto 0 0\n\
            /dev/disk/by-label/my\\040disk /bootstrap ext4 defaults 0 0\n";
        let e = boot_entries(fstab);
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/boot", "/boot/efi"]);
        assert_eq!(e[1].source, "LABEL=UEFI");
        assert_eq!(e[1].fstype, "vfat");
        assert_eq!(unescape_octal("my\\040disk"), "my disk");
    }

    fn fat32_boot_sector(id: u32, label: &str) -> Vec<u8> {
        let mut s = vec![0u8; 1024];
        s[0x0b..0x0d].copy_from_slice(&512u16.to_le_bytes());
        s[0x42] = 0x29;
        s[0x43..0x47].copy_from_slice(&id.to_le_bytes());
        let mut l = [b' '; 11];
        l[..label.len()].copy_from_slice(label.as_bytes());
        s[0x47..0x52].copy_from_slice(&l);
        s[510] = 0x55;
        s[511] = 0xAA;
        s
    }

    #[test]
    fn fat_label_and_volume_id_read_as_blkid_prints_them() {
        let mut disk = Cursor::new(fat32_boot_sector(0x1A2B_3C4D, "UEFI"));
        assert_eq!(
            fat_ids(&mut disk, 0).unwrap(),
            Some(FsIds {
                label: Some("UEFI".into()),
                uuid: Some("1A2B-3C4D".into()),
            })
        );
        let mut zeros = Cursor::new(vec![0u8; 1024]);
        assert_eq!(fat_ids(&mut zeros, 0).unwrap(), None);
    }

    #[test]
    fn fstab_sources_name_partitions_by_label_uuid_partuuid_partlabel() {
        let part = Partition {
            number: 15,
            type_guid: gpt::Guid([0; 16]),
            unique_guid: gpt::Guid([0xab; 16]),
            first_lba: 2048,
            last_lba: 4095,
            name: "ESP".into(),
            sector_size: 512,
        };
        let ids = FsIds {
            label: Some("UEFI".into()),
            uuid: Some("1A2B-3C4D".into()),
        };
        let partuuid = part.unique_guid.to_string();
        for (source, named) in [
            ("LABEL=UEFI", true),
            ("LABEL=\"UEFI\"", true),
            ("LABEL=uefi", false),
            ("UUID=1a2b-3c4d", true),
            ("/dev/disk/by-uuid/1A2B-3C4D", true),
            ("/dev/disk/by-label/UEFI", true),
            (&format!("PARTUUID={partuuid}"), true),
            ("PARTLABEL=ESP", true),
            ("/dev/disk/by-partlabel/ESP", true),
            ("/dev/sda15", false),
            ("UUID=0000-0000", false),
        ] {
            assert_eq!(names(source, &part, &ids), named, "{source}");
        }
    }

    #[test]
    fn a_failure_is_explained_only_when_it_hit_a_placeholder() {
        let mut m = BootMounts::default();
        assert_eq!(m.explain("Read-only file system (os error 30)"), None);
        m.placeholders.push(Placeholder {
            path: "/boot/efi".into(),
            partition: 15,
            fstype: "vfat".into(),
            reason: "this kernel cannot mount vfat".into(),
        });
        assert_eq!(m.explain("No space left on device"), None);
        let note = m
            .explain("/boot/efi/x: Read-only file system (os error 30)")
            .unwrap();
        assert!(note.starts_with("note: /boot/efi is read-only during the build: the image mounts partition 15 (vfat) there at boot and this kernel cannot mount vfat"), "{note}");
    }
}
