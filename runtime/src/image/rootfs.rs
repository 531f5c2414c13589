//! Finds the root partition: the one GPT partition holding an ext2/3/4 file system.

use std::fmt::Write as _;
use std::io::{Read, Seek};

use pgimg_stdlib::shared::HumanBytes;

use super::gpt::{Partition, PartitionTable};
use super::superblock::Superblock;

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("no partition holds an ext4 file system; partitions:\n{listing}")]
    None { listing: String },
    #[error(
        "several partitions hold an ext4 file system ({}), cannot tell which is the root; partitions:\n{listing}",
        numbers(.candidates)
    )]
    Several {
        candidates: Vec<u32>,
        listing: String,
    },
    #[error("reading partition {number}'s superblock: {source}")]
    Io {
        number: u32,
        #[source]
        source: std::io::Error,
    },
}

fn numbers(candidates: &[u32]) -> String {
    let names: Vec<String> = candidates.iter().map(|n| format!("p{n}")).collect();
    names.join(", ")
}

/// A partition and the ext superblock found in it, if any.
#[derive(Debug, Clone)]
pub struct Probed {
    pub partition: Partition,
    pub superblock: Option<Superblock>,
}

/// Reads each used partition's superblock.
pub fn probe(
    disk: &mut (impl Read + Seek),
    table: &PartitionTable,
) -> Result<Vec<Probed>, RootError> {
    table
        .partitions()
        .into_iter()
        .map(|partition| {
            // A superblock past the partition's end belongs to someone else.
            let superblock = if partition.size() < 2048 {
                None
            } else {
                Superblock::read(disk, partition.offset()).map_err(|source| RootError::Io {
                    number: partition.number,
                    source,
                })?
            };
            Ok(Probed {
                partition,
                superblock,
            })
        })
        .collect()
}

/// The root partition and its superblock: exactly one partition must hold an
/// ext file system (Ubuntu's and Debian's cloud images have one).
pub fn find_root(
    disk: &mut (impl Read + Seek),
    table: &PartitionTable,
) -> Result<(Partition, Superblock), RootError> {
    let probed = probe(disk, table)?;
    let mut candidates: Vec<(Partition, Superblock)> = probed
        .iter()
        .filter_map(|p| Some((p.partition.clone(), p.superblock.clone()?)))
        .collect();
    match candidates.len() {
        1 => Ok(candidates.remove(0)),
        0 => Err(RootError::None {
            listing: listing(&probed),
        }),
        _ => Err(RootError::Several {
            candidates: candidates.iter().map(|(p, _)| p.number).collect(),
            listing: listing(&probed),
        }),
    }
}

/// One line per partition, for error messages and `inspect`.
pub fn listing(probed: &[Probed]) -> String {
    let mut out = String::new();
    for p in probed {
        let part = &p.partition;
        let fs = match &p.superblock {
            Some(sb) => format!("{} {:?}", sb.kind, sb.label),
            None => "no ext file system".to_string(),
        };
        let _ = writeln!(
            out,
            "  p{:<3} sectors {}-{}  {}  {}  {}",
            part.number,
            part.first_lba,
            part.last_lba,
            HumanBytes(part.size()),
            part.type_name(),
            fs
        );
    }
    out.trim_end().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::gpt::{self, tests::ubuntu_like_disk};
    use crate::image::superblock::tests::ext4_superblock;
    use std::io::Cursor;

    const MIB: u64 = 1 << 20;

    fn put_superblock(disk: &mut Cursor<Vec<u8>>, part: &Partition, label: &str) {
        let at = (part.offset() + 1024) as usize;
        disk.get_mut()[at..at + 1024].copy_from_slice(&ext4_superblock(100, label));
    }

    #[test]
    fn finds_the_single_ext4_partition() {
        let mut disk = ubuntu_like_disk(16 * MIB);
        let table = gpt::read(&mut disk).unwrap();
        put_superblock(&mut disk, &table.partition(1).unwrap(), "cloudimg-rootfs");
        let (root, sb) = find_root(&mut disk, &table).unwrap();
        assert_eq!(root.number, 1);
        assert_eq!(sb.label, "cloudimg-rootfs");
    }

    #[test]
    fn none_lists_the_partitions() {
        let mut disk = ubuntu_like_disk(16 * MIB);
        let table = gpt::read(&mut disk).unwrap();
        let err = find_root(&mut disk, &table).unwrap_err().to_string();
        assert!(err.starts_with("no partition holds an ext4"), "{err}");
        for line in [
            "p1 ",
            "p14",
            "p15",
            "BIOS boot",
            "EFI system",
            "Linux filesystem",
        ] {
            assert!(err.contains(line), "{line:?} missing in:\n{err}");
        }
    }

    #[test]
    fn several_candidates_names_them_and_lists_the_partitions() {
        let mut disk = ubuntu_like_disk(16 * MIB);
        let table = gpt::read(&mut disk).unwrap();
        put_superblock(&mut disk, &table.partition(1).unwrap(), "root");
        put_superblock(&mut disk, &table.partition(15).unwrap(), "other");
        let err = find_root(&mut disk, &table).unwrap_err();
        assert!(matches!(&err, RootError::Several { candidates, .. } if candidates == &[1, 15]));
        let msg = err.to_string();
        assert!(msg.contains("(p1, p15)"), "{msg}");
        assert!(msg.contains("ext4 \"other\""), "{msg}");
        assert!(msg.contains("p14"), "{msg}");
    }
}
