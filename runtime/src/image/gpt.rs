//! GPT partition table: read it, and grow one partition in place onto a larger disk.

use std::fmt;
use std::io::{Read, Seek, SeekFrom, Write};
use std::str::FromStr;

use gptman::{GPTPartitionEntry, GPT};

/// A GPT GUID as stored on disk (the first three fields little-endian).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid(pub [u8; 16]);

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{:02X}{:02X}{:02X}{:02X}{:02X}{:02X}",
            u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            u16::from_le_bytes([b[4], b[5]]),
            u16::from_le_bytes([b[6], b[7]]),
            b[8],
            b[9],
            b[10],
            b[11],
            b[12],
            b[13],
            b[14],
            b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Guid {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("not a GUID: {s:?}");
        let fields: Vec<&str> = s.split('-').collect();
        let widths = [8, 4, 4, 4, 12];
        if fields.len() != 5 || fields.iter().zip(widths).any(|(f, w)| f.len() != w) {
            return Err(bad());
        }
        let hex: String = fields.concat();
        let mut raw = [0u8; 16];
        for (i, byte) in raw.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
                .map_err(|_| bad())?;
        }
        raw[0..4].reverse();
        raw[4..6].reverse();
        raw[6..8].reverse();
        Ok(Guid(raw))
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Partition type GUIDs pgimg names in messages and `inspect`.
const KNOWN_TYPES: &[(&str, &str)] = &[
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
    (
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709",
        "Linux root (x86-64)",
    ),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM64)"),
    (
        "BC13C2FF-59E6-4262-A352-B275FD6F7172",
        "Linux extended boot",
    ),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI system"),
    (
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7",
        "Microsoft basic data",
    ),
];

/// Human name of a partition type, or "unknown type".
pub fn type_name(guid: &Guid) -> &'static str {
    let text = guid.to_string();
    KNOWN_TYPES
        .iter()
        .find(|(g, _)| *g == text)
        .map_or("unknown type", |(_, name)| name)
}

/// One used entry of the partition table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// Index in the partition array, from 1 (`p14` is 14).
    pub number: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    /// Inclusive.
    pub last_lba: u64,
    pub name: String,
    pub sector_size: u64,
}

impl Partition {
    /// Byte offset of the partition in the disk.
    pub fn offset(&self) -> u64 {
        self.first_lba * self.sector_size
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        (self.last_lba + 1 - self.first_lba) * self.sector_size
    }

    pub fn type_name(&self) -> &'static str {
        type_name(&self.type_guid)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GptError {
    #[error("no GPT partition table found (not a raw GPT disk image?)")]
    NotGpt,
    #[error("reading the GPT: {0}")]
    Read(#[source] gptman::Error),
    #[error(
        "the primary GPT header is damaged and only the backup is readable; \
         repair the table (gdisk's recovery menu) before growing"
    )]
    PrimaryDamaged,
    #[error("the primary partition array is at LBA {0}; only the standard LBA 2 is supported")]
    UnusualLayout(u64),
    #[error("the disk ({disk} bytes) is smaller than its partition table says ({table} bytes); shrinking is not supported")]
    Shrink { disk: u64, table: u64 },
    #[error("the disk size {size} is not a multiple of the {sector_size}-byte sector")]
    Unaligned { size: u64, sector_size: u64 },
    #[error("partition {0} does not exist")]
    NoSuchPartition(u32),
    #[error("writing the GPT: {0}")]
    Write(#[source] gptman::Error),
    #[error("disk I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A partition table read from a disk.
#[derive(Debug, Clone)]
pub struct PartitionTable {
    gpt: GPT,
}

/// Reads the GPT (512- or 4096-byte sectors).
pub fn read(disk: &mut (impl Read + Seek)) -> Result<PartitionTable, GptError> {
    let gpt = GPT::find_from(disk).map_err(|e| match e {
        gptman::Error::InvalidSignature => GptError::NotGpt,
        gptman::Error::Io(io) if io.kind() == std::io::ErrorKind::UnexpectedEof => GptError::NotGpt,
        other => GptError::Read(other),
    })?;
    Ok(PartitionTable { gpt })
}

/// What [`PartitionTable::grow`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrowReport {
    pub partition: u32,
    pub old_last_lba: u64,
    pub new_last_lba: u64,
    pub old_backup_lba: u64,
    pub new_backup_lba: u64,
    /// False when sector 0 holds no protective (0xEE) MBR entry to update.
    pub protective_mbr_updated: bool,
}

impl PartitionTable {
    pub fn sector_size(&self) -> u64 {
        self.gpt.sector_size
    }

    pub fn disk_guid(&self) -> Guid {
        Guid(self.gpt.header.disk_guid)
    }

    pub fn first_usable_lba(&self) -> u64 {
        self.gpt.header.first_usable_lba
    }

    pub fn last_usable_lba(&self) -> u64 {
        self.gpt.header.last_usable_lba
    }

    /// LBA of the backup header, as the primary header records it.
    pub fn backup_lba(&self) -> u64 {
        self.gpt.header.backup_lba
    }

    /// Used entries, in partition-number order.
    pub fn partitions(&self) -> Vec<Partition> {
        self.gpt
            .iter()
            .filter(|(_, e)| e.is_used())
            .map(|(n, e)| to_partition(n, e, self.gpt.sector_size))
            .collect()
    }

    pub fn partition(&self, number: u32) -> Option<Partition> {
        self.partitions().into_iter().find(|p| p.number == number)
    }

    /// Moves the backup header and array to the end of `disk` (already
    /// extended by the caller) and grows partition `number` in place up to the
    /// last usable sector or the next partition, keeping its start sector,
    /// type and unique GUID. The end sector is the one `sgdisk -n N:START:0`
    /// picks (GPT fdisk 1.0.9: the last free sector, not rounded to the
    /// alignment), like Ubuntu's own images and growpart.
    pub fn grow(
        mut self,
        disk: &mut (impl Read + Write + Seek),
        number: u32,
    ) -> Result<GrowReport, GptError> {
        let ss = self.gpt.sector_size;
        if self.gpt.is_backup() {
            return Err(GptError::PrimaryDamaged);
        }
        if self.gpt.header.partition_entry_lba != 2 {
            return Err(GptError::UnusualLayout(self.gpt.header.partition_entry_lba));
        }
        let len = disk.seek(SeekFrom::End(0))?;
        if !len.is_multiple_of(ss) {
            return Err(GptError::Unaligned {
                size: len,
                sector_size: ss,
            });
        }
        let old_backup_lba = self.gpt.header.backup_lba;
        let old_array_lba = self.gpt.header.last_usable_lba + 1;
        if len / ss < old_backup_lba + 1 {
            return Err(GptError::Shrink {
                disk: len,
                table: (old_backup_lba + 1) * ss,
            });
        }
        let target = self
            .partition(number)
            .ok_or(GptError::NoSuchPartition(number))?;

        let sectors = len / ss;
        let array_sectors = (u64::from(self.gpt.header.number_of_partition_entries)
            * u64::from(self.gpt.header.size_of_partition_entry))
        .div_ceil(ss);
        self.gpt.header.backup_lba = sectors - 1;
        self.gpt.header.last_usable_lba = sectors - 2 - array_sectors;

        let next_start = self
            .partitions()
            .iter()
            .map(|p| p.first_lba)
            .filter(|&start| start > target.first_lba)
            .min();
        let limit = match next_start {
            Some(start) => start - 1,
            None => self.gpt.header.last_usable_lba,
        };
        // Never shrink an entry, even if it ended past where sgdisk would stop.
        let new_last_lba = limit.max(target.last_lba);
        self.gpt[number].ending_lba = new_last_lba;

        self.gpt.write_into(disk).map_err(GptError::Write)?;
        if old_backup_lba != self.gpt.header.backup_lba {
            wipe_old_backup(disk, ss, old_backup_lba, old_array_lba, array_sectors)?;
        }
        let protective_mbr_updated = update_protective_mbr(disk, sectors)?;
        disk.flush()?;
        Ok(GrowReport {
            partition: number,
            old_last_lba: target.last_lba,
            new_last_lba,
            old_backup_lba,
            new_backup_lba: self.gpt.header.backup_lba,
            protective_mbr_updated,
        })
    }
}

fn to_partition(number: u32, e: &GPTPartitionEntry, sector_size: u64) -> Partition {
    Partition {
        number,
        type_guid: Guid(e.partition_type_guid),
        unique_guid: Guid(e.unique_partition_guid),
        first_lba: e.starting_lba,
        last_lba: e.ending_lba,
        name: e.partition_name.as_str().to_string(),
        sector_size,
    }
}

/// A stale "EFI PART" header left in the middle of the disk could be taken for
/// the real backup by recovery tools; the area now lies in unused space past
/// the file system's end (every partition ended before the old array).
fn wipe_old_backup(
    disk: &mut (impl Write + Seek),
    ss: u64,
    header_lba: u64,
    array_lba: u64,
    array_sectors: u64,
) -> std::io::Result<()> {
    let zeros = vec![0u8; ss as usize];
    disk.seek(SeekFrom::Start(header_lba * ss))?;
    disk.write_all(&zeros)?;
    disk.seek(SeekFrom::Start(array_lba * ss))?;
    for _ in 0..array_sectors {
        disk.write_all(&zeros)?;
    }
    Ok(())
}

/// Sets the protective MBR's 0xEE entry to cover the whole disk: its size
/// (capped at 2^32-1 sectors, as UEFI says) and its end CHS address, leaving
/// boot code and flags alone.
fn update_protective_mbr(
    disk: &mut (impl Read + Write + Seek),
    sectors: u64,
) -> std::io::Result<bool> {
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Ok(false);
    }
    for i in 0..4 {
        let entry = 446 + 16 * i;
        if mbr[entry + 4] != 0xEE {
            continue;
        }
        let start = u64::from(u32::from_le_bytes(
            mbr[entry + 8..entry + 12].try_into().expect("4 bytes"),
        ));
        let count = sectors.saturating_sub(start).min(u64::from(u32::MAX)) as u32;
        disk.seek(SeekFrom::Start((entry + 5) as u64))?;
        disk.write_all(&lba_to_chs(start + u64::from(count) - 1))?;
        disk.seek(SeekFrom::Start((entry + 12) as u64))?;
        disk.write_all(&count.to_le_bytes())?;
        return Ok(true);
    }
    Ok(false)
}

/// The MBR's packed CHS address of `lba` in the 255-head, 63-sector geometry
/// GPT fdisk assumes for images (`LBAtoCHS` in gdisk's basicmbr.cc), so the
/// result is byte-identical to `sgdisk -e`; past 1024 cylinders it is the
/// conventional maximum FE FF FF.
fn lba_to_chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    const CYLINDERS: u64 = 1024;
    if lba == 0 {
        return [0, 0, 0];
    }
    if lba >= HEADS * SECTORS * CYLINDERS {
        return [0xFE, 0xFF, 0xFF];
    }
    let cylinder = lba / (HEADS * SECTORS);
    let rest = lba % (HEADS * SECTORS);
    let head = rest / SECTORS;
    let sector = rest % SECTORS + 1;
    [
        head as u8,
        (sector | ((cylinder >> 8) << 6)) as u8,
        (cylinder & 0xFF) as u8,
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    pub(crate) const LINUX_FS: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";
    pub(crate) const BIOS_BOOT: &str = "21686148-6449-6E6F-744E-656564454649";
    pub(crate) const EFI: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

    const MIB: u64 = 1 << 20;

    fn guid(s: &str) -> [u8; 16] {
        s.parse::<Guid>().unwrap().0
    }

    /// A disk shaped like Ubuntu's cloud image: p14, p15, then p1 to the end.
    pub(crate) fn ubuntu_like_disk(size: u64) -> Cursor<Vec<u8>> {
        let mut disk = Cursor::new(vec![0u8; size as usize]);
        let mut gpt =
            GPT::new_from(&mut disk, 512, guid("11111111-2222-3333-4444-555555555555")).unwrap();
        let last = gpt.header.last_usable_lba;
        let mut add = |n: u32, ty: &str, uniq: &str, first: u64, last: u64| {
            gpt[n] = GPTPartitionEntry {
                partition_type_guid: guid(ty),
                unique_partition_guid: guid(uniq),
                starting_lba: first,
                ending_lba: last,
                attribute_bits: 0,
                partition_name: "".into(),
            };
        };
        add(
            14,
            BIOS_BOOT,
            "00000000-0000-0000-0000-00000000000E",
            2048,
            4095,
        );
        add(15, EFI, "00000000-0000-0000-0000-00000000000F", 4096, 8191);
        add(
            1,
            LINUX_FS,
            "ABCDEF01-2345-6789-ABCD-EF0123456789",
            8192,
            last,
        );
        gpt.write_into(&mut disk).unwrap();
        GPT::write_protective_mbr_into(&mut disk, 512).unwrap();
        disk
    }

    fn extend(disk: &mut Cursor<Vec<u8>>, size: u64) {
        disk.get_mut().resize(size as usize, 0);
    }

    #[test]
    fn guid_round_trips_in_mixed_endian() {
        let g: Guid = BIOS_BOOT.parse().unwrap();
        // "Hah!IdontNeedEFI" is the well-known on-disk spelling of this type.
        assert_eq!(&g.0, b"Hah!IdontNeedEFI");
        assert_eq!(g.to_string(), BIOS_BOOT);
        assert!("21686148-6449".parse::<Guid>().is_err());
        assert!("ZZ686148-6449-6E6F-744E-656564454649"
            .parse::<Guid>()
            .is_err());
    }

    #[test]
    fn chs_addresses_like_gdisk() {
        // Values sgdisk 1.0.9 wrote for 256 MiB and 512 MiB images.
        assert_eq!(lba_to_chs(524287), [0xA2, 0x02, 0x20]);
        assert_eq!(lba_to_chs(1048575), [0x45, 0x04, 0x41]);
        assert_eq!(lba_to_chs(255 * 63 * 1024), [0xFE, 0xFF, 0xFF]);
        assert_eq!(lba_to_chs(0), [0, 0, 0]);
    }

    #[test]
    fn reads_partitions_in_number_order() {
        let mut disk = ubuntu_like_disk(16 * MIB);
        let table = read(&mut disk).unwrap();
        let parts = table.partitions();
        let numbers: Vec<u32> = parts.iter().map(|p| p.number).collect();
        assert_eq!(numbers, [1, 14, 15]);
        assert_eq!(parts[1].type_name(), "BIOS boot");
        assert_eq!(parts[2].type_name(), "EFI system");
        assert_eq!(parts[0].offset(), 8192 * 512);
        // Last usable LBA is the 34th sector from the end (33-sector backup array + header).
        assert_eq!(parts[0].size(), 16 * MIB - 8192 * 512 - 33 * 512);
    }

    #[test]
    fn grow_moves_backup_and_grows_root_keeping_guids() {
        let mut disk = ubuntu_like_disk(16 * MIB);
        let before = read(&mut disk).unwrap();
        let root_before = before.partition(1).unwrap();
        extend(&mut disk, 32 * MIB);

        let report = before.clone().grow(&mut disk, 1).unwrap();

        let sectors = 32 * MIB / 512;
        assert_eq!(report.old_backup_lba, 16 * MIB / 512 - 1);
        assert_eq!(report.new_backup_lba, sectors - 1);
        assert!(report.protective_mbr_updated);
        let after = read(&mut disk).unwrap();
        assert_eq!(after.backup_lba(), sectors - 1);
        assert_eq!(after.last_usable_lba(), sectors - 34);
        assert_eq!(after.first_usable_lba(), before.first_usable_lba());
        assert_eq!(after.disk_guid(), before.disk_guid());
        let root = after.partition(1).unwrap();
        assert_eq!(root.first_lba, root_before.first_lba);
        assert_eq!(root.last_lba, sectors - 34);
        assert_eq!(report.new_last_lba, sectors - 34);
        assert_eq!(root.unique_guid, root_before.unique_guid);
        assert_eq!(root.type_guid, root_before.type_guid);
        for n in [14, 15] {
            assert_eq!(after.partition(n), before.partition(n), "p{n} untouched");
        }

        // The backup copy at the new end is valid on its own.
        let bytes = disk.get_ref();
        let hdr = (sectors - 1) as usize * 512;
        assert_eq!(&bytes[hdr..hdr + 8], b"EFI PART");
        let mut backup_only = Cursor::new(bytes.clone());
        backup_only.get_mut()[512..1024].fill(0);
        let from_backup = GPT::read_from(&mut backup_only, 512).unwrap();
        assert!(from_backup.is_backup());
        assert_eq!(from_backup[1].ending_lba, sectors - 34);

        // The old backup header no longer looks like a GPT header.
        let old = report.old_backup_lba as usize * 512;
        assert_eq!(&bytes[old..old + 8], &[0u8; 8]);

        // Protective MBR covers the new disk.
        let count = u32::from_le_bytes(bytes[446 + 12..446 + 16].try_into().unwrap());
        assert_eq!(u64::from(count), sectors - 1);
    }

    #[test]
    fn grow_stops_at_the_next_partition() {
        let mut disk = ubuntu_like_disk(16 * MIB);
        let table = read(&mut disk).unwrap();
        extend(&mut disk, 32 * MIB);
        let report = table.grow(&mut disk, 14).unwrap();
        assert_eq!(report.old_last_lba, 4095);
        assert_eq!(report.new_last_lba, 4095, "p15 starts at 4096");
    }

    #[test]
    fn grow_on_same_size_keeps_the_table() {
        let mut disk = ubuntu_like_disk(16 * MIB);
        let table = read(&mut disk).unwrap();
        let report = table.clone().grow(&mut disk, 1).unwrap();
        assert_eq!(report.old_last_lba, report.new_last_lba);
        assert_eq!(report.old_backup_lba, report.new_backup_lba);
        assert_eq!(read(&mut disk).unwrap().partitions(), table.partitions());
    }

    #[test]
    fn grow_refusals() {
        type Mutate = Box<dyn Fn(&mut Cursor<Vec<u8>>) -> u32>;
        let cases: Vec<(&str, Mutate, &str)> = vec![
            (
                "shrunk disk",
                Box::new(|d| {
                    d.get_mut().truncate(8 * MIB as usize);
                    1
                }),
                "shrinking is not supported",
            ),
            (
                "size not a sector multiple",
                Box::new(|d| {
                    d.get_mut().resize(32 * MIB as usize + 100, 0);
                    1
                }),
                "not a multiple",
            ),
            (
                "missing partition",
                Box::new(|_| 7),
                "partition 7 does not exist",
            ),
        ];
        for (name, mutate, message) in cases {
            let mut disk = ubuntu_like_disk(16 * MIB);
            let table = read(&mut disk).unwrap();
            let n = mutate(&mut disk);
            let err = table.grow(&mut disk, n).unwrap_err().to_string();
            assert!(err.contains(message), "{name}: {err}");
        }
    }

    #[test]
    fn non_gpt_disks_are_refused() {
        let mut zeros = Cursor::new(vec![0u8; MIB as usize]);
        assert!(matches!(read(&mut zeros), Err(GptError::NotGpt)));
        let mut tiny = Cursor::new(vec![0u8; 100]);
        assert!(matches!(read(&mut tiny), Err(GptError::NotGpt)));
        // An MBR-only disk: boot signature and a Linux (0x83) entry, no GPT.
        let mut mbr = vec![0u8; MIB as usize];
        mbr[446 + 4] = 0x83;
        mbr[510] = 0x55;
        mbr[511] = 0xAA;
        assert!(matches!(read(&mut Cursor::new(mbr)), Err(GptError::NotGpt)));
    }

    #[test]
    fn damaged_primary_is_refused_for_grow() {
        let mut disk = ubuntu_like_disk(16 * MIB);
        disk.get_mut()[512..1024].fill(0);
        let table = read(&mut disk).unwrap();
        extend(&mut disk, 32 * MIB);
        assert!(matches!(
            table.grow(&mut disk, 1),
            Err(GptError::PrimaryDamaged)
        ));
    }
}
