//! Reads the ext2/3/4 superblock of a partition: magic, size, label, UUID.

use std::io::{self, Read, Seek, SeekFrom};

/// The superblock starts 1024 bytes into the file system.
pub const SUPERBLOCK_OFFSET: u64 = 1024;
/// `s_magic`, at byte 56 of the superblock.
pub const EXT_MAGIC: u16 = 0xEF53;
const SUPERBLOCK_LEN: usize = 1024;

const COMPAT_HAS_JOURNAL: u32 = 0x4;
const INCOMPAT_EXTENTS: u32 = 0x40;
const INCOMPAT_64BIT: u32 = 0x80;

/// The fields of an ext2/3/4 superblock that pgimg reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Superblock {
    pub block_size: u64,
    pub blocks_count: u64,
    pub free_blocks: u64,
    pub inodes_count: u32,
    pub free_inodes: u32,
    /// `s_uuid` in the usual 8-4-4-4-12 lower-case form (what `blkid` prints).
    pub uuid: String,
    pub label: String,
    /// "ext4", "ext3" or "ext2", from the feature flags.
    pub kind: &'static str,
}

impl Superblock {
    /// Reads the superblock of the file system starting at `offset`; `None`
    /// when the magic is absent or the partition is too short to hold one.
    pub fn read(disk: &mut (impl Read + Seek), offset: u64) -> io::Result<Option<Superblock>> {
        let mut sb = [0u8; SUPERBLOCK_LEN];
        disk.seek(SeekFrom::Start(offset + SUPERBLOCK_OFFSET))?;
        match disk.read_exact(&mut sb) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        Ok(Self::parse(&sb))
    }

    /// Parses the 1024 superblock bytes; `None` without the ext magic.
    pub fn parse(sb: &[u8; SUPERBLOCK_LEN]) -> Option<Superblock> {
        let u16_at = |o: usize| u16::from_le_bytes([sb[o], sb[o + 1]]);
        let u32_at = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().expect("4 bytes"));
        if u16_at(56) != EXT_MAGIC {
            return None;
        }
        let log_block_size = u32_at(24);
        if log_block_size > 6 {
            return None;
        }
        let compat = u32_at(0x5C);
        let incompat = u32_at(0x60);
        let wide = incompat & INCOMPAT_64BIT != 0;
        let hi = |o: usize| if wide { u64::from(u32_at(o)) << 32 } else { 0 };
        let kind = if incompat & (INCOMPAT_EXTENTS | INCOMPAT_64BIT) != 0 {
            "ext4"
        } else if compat & COMPAT_HAS_JOURNAL != 0 {
            "ext3"
        } else {
            "ext2"
        };
        let label_bytes = &sb[0x78..0x88];
        let label_len = label_bytes.iter().position(|&b| b == 0).unwrap_or(16);
        Some(Superblock {
            block_size: 1024 << log_block_size,
            blocks_count: u64::from(u32_at(4)) | hi(0x150),
            free_blocks: u64::from(u32_at(12)) | hi(0x158),
            inodes_count: u32_at(0),
            free_inodes: u32_at(16),
            uuid: format_uuid(&sb[0x68..0x78]),
            label: String::from_utf8_lossy(&label_bytes[..label_len]).into_owned(),
            kind,
        })
    }

    /// Size of the file system in bytes.
    pub fn size(&self) -> u64 {
        self.blocks_count * self.block_size
    }
}

fn format_uuid(b: &[u8]) -> String {
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// Superblock bytes for a 64-bit ext4 of `blocks` 4 KiB blocks.
    pub(crate) fn ext4_superblock(blocks: u64, label: &str) -> [u8; SUPERBLOCK_LEN] {
        let mut sb = [0u8; SUPERBLOCK_LEN];
        sb[0..4].copy_from_slice(&1000u32.to_le_bytes());
        sb[4..8].copy_from_slice(&(blocks as u32).to_le_bytes());
        sb[12..16].copy_from_slice(&7u32.to_le_bytes());
        sb[16..20].copy_from_slice(&900u32.to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes());
        sb[56..58].copy_from_slice(&EXT_MAGIC.to_le_bytes());
        sb[0x5C..0x60].copy_from_slice(&COMPAT_HAS_JOURNAL.to_le_bytes());
        sb[0x60..0x64].copy_from_slice(&(INCOMPAT_EXTENTS | INCOMPAT_64BIT).to_le_bytes());
        for (i, b) in sb[0x68..0x78].iter_mut().enumerate() {
            *b = 0x10 + i as u8;
        }
        sb[0x78..0x78 + label.len()].copy_from_slice(label.as_bytes());
        sb[0x150..0x154].copy_from_slice(&((blocks >> 32) as u32).to_le_bytes());
        sb
    }

    #[test]
    fn parses_size_label_uuid_and_kind() {
        let sb = Superblock::parse(&ext4_superblock((1 << 32) + 5, "cloudimg-rootfs")).unwrap();
        assert_eq!(sb.block_size, 4096);
        assert_eq!(sb.blocks_count, (1 << 32) + 5, "s_blocks_count_hi honoured");
        assert_eq!(sb.size(), ((1 << 32) + 5) * 4096);
        assert_eq!(sb.free_blocks, 7);
        assert_eq!(sb.label, "cloudimg-rootfs");
        assert_eq!(sb.uuid, "10111213-1415-1617-1819-1a1b1c1d1e1f");
        assert_eq!(sb.kind, "ext4");
    }

    #[test]
    fn kinds_from_feature_flags() {
        let mut sb = ext4_superblock(100, "");
        sb[0x60..0x64].fill(0);
        assert_eq!(Superblock::parse(&sb).unwrap().kind, "ext3");
        sb[0x5C..0x60].fill(0);
        let ext2 = Superblock::parse(&sb).unwrap();
        assert_eq!(ext2.kind, "ext2");
        // Without INCOMPAT_64BIT the high word is garbage, not size.
        sb[0x150] = 0xFF;
        assert_eq!(Superblock::parse(&sb).unwrap().blocks_count, 100);
    }

    #[test]
    fn no_magic_or_short_partition_is_none() {
        assert_eq!(Superblock::parse(&[0u8; SUPERBLOCK_LEN]), None);
        let mut disk = Cursor::new(vec![0u8; 1500]);
        assert_eq!(Superblock::read(&mut disk, 0).unwrap(), None);
    }

    #[test]
    fn reads_at_a_partition_offset() {
        let mut bytes = vec![0u8; 8192];
        bytes[4096 + 1024..4096 + 2048].copy_from_slice(&ext4_superblock(10, "x"));
        let mut disk = Cursor::new(bytes);
        assert_eq!(Superblock::read(&mut disk, 0).unwrap(), None);
        assert_eq!(
            Superblock::read(&mut disk, 4096).unwrap().unwrap().label,
            "x"
        );
    }
}
