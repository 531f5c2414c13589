//! Disk images: the working copy, format conversion, GPT grow, root partition lookup and loop attach.
//!
//! The pipeline's image stages, each a function:
//! [`copy_base`] (acquire + convert) → [`grow`] → [`WorkImage::open`] →
//! [`WorkImage::attach_root`] → [`ext4::check_and_resize`] on the loop device;
//! at the end [`ext4::check_clean`], [`LoopGuard::close`] and
//! [`convert::to_qcow2`] when asked. [`prepare`] chains the first three.

pub mod boot_mounts;
pub mod convert;
pub mod ext4;
pub mod gpt;
pub mod host_tools;
pub mod inspect;
pub mod loopdev;
pub mod rootfs;
pub mod superblock;
pub mod tool;
pub mod workcopy;

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

pub use convert::Format;
pub use gpt::{GrowReport, Partition};
pub use loopdev::LoopGuard;
pub use superblock::Superblock;
pub use workcopy::CopyMethod;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Gpt {
        path: PathBuf,
        #[source]
        source: gpt::GptError,
    },
    #[error("{path}: {source}")]
    Root {
        path: PathBuf,
        #[source]
        source: rootfs::RootError,
    },
    #[error(
        "{path} is already {current} bytes; {requested} would shrink it \
         (the size is the final size of the image, and it can only grow)"
    )]
    Shrink {
        path: PathBuf,
        current: u64,
        requested: u64,
    },
    #[error("{path}: the size {size} is not a multiple of the {sector_size}-byte sector")]
    Unaligned {
        path: PathBuf,
        size: u64,
        sector_size: u64,
    },
    #[error(
        "{path}: the root partition p{root} cannot grow: p{next} follows it on disk \
         (pgimg grows images whose root partition comes last, like Ubuntu's and Debian's)"
    )]
    RootNotLast { path: PathBuf, root: u32, next: u32 },
    #[error(transparent)]
    HostTools(#[from] host_tools::HostToolError),
    #[error(transparent)]
    Convert(#[from] convert::ConvertError),
    #[error(transparent)]
    WorkCopy(#[from] workcopy::WorkCopyError),
    #[error(transparent)]
    Loop(#[from] loopdev::LoopError),
    #[error(transparent)]
    Ext4(#[from] ext4::Ext4Error),
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the working copy was made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseCopy {
    /// The base image's format.
    pub format: Format,
    /// `None` when the base was converted to raw by qemu-img.
    pub method: Option<CopyMethod>,
}

/// Acquire + convert: makes `work`, a raw copy of `base`. A raw base is
/// copied (reflink or sparse); any other format is converted by qemu-img.
/// `base` is only ever read; `work` must not exist.
pub fn copy_base(base: &Path, work: &Path) -> Result<BaseCopy, ImageError> {
    host_tools::ensure(host_tools::BUILD, "building an image")?;
    let info = convert::detect(base)?;
    if info.format == Format::Raw {
        let method = workcopy::copy(base, work)?;
        Ok(BaseCopy {
            format: info.format,
            method: Some(method),
        })
    } else {
        convert::to_raw(base, &info.format, work)?;
        Ok(BaseCopy {
            format: info.format,
            method: None,
        })
    }
}

/// What [`grow`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrowOutcome {
    /// The image already had that size, its backup GPT header is in its last
    /// sector and the root partition reaches as far as it can.
    Unchanged,
    Grown(GrowReport),
}

/// One line for the build log: what moved, in sectors (LBAs).
impl std::fmt::Display for GrowOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = match self {
            GrowOutcome::Unchanged => {
                return f.write_str("unchanged (the table and the root partition already fit)")
            }
            GrowOutcome::Grown(r) => r,
        };
        write!(
            f,
            "partition {} now ends at sector {} (was {}), backup GPT header moved from sector {} to {}",
            r.partition, r.new_last_lba, r.old_last_lba, r.old_backup_lba, r.new_backup_lba
        )?;
        if !r.protective_mbr_updated {
            f.write_str(" (no protective MBR to update)")?;
        }
        Ok(())
    }
}

/// Grows the raw GPT image to `new_size` bytes (the final size): extends the
/// file sparsely, moves the backup GPT to the new end and grows the root
/// partition in place. The file system is grown later, through a loop
/// device ([`ext4::check_and_resize`]).
///
/// At the file's own size it still moves a backup header that is not in the
/// last sector (a file extended with a plain `truncate`, as in
/// bottlerocket-os/bottlerocket#333) and grows a root partition that stops
/// short of the last usable sector; otherwise it is [`GrowOutcome::Unchanged`].
pub fn grow(image: &Path, new_size: u64) -> Result<GrowOutcome, ImageError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .map_err(io_error(image))?;
    let current = file.metadata().map_err(io_error(image))?.len();
    if new_size < current {
        return Err(ImageError::Shrink {
            path: image.to_path_buf(),
            current,
            requested: new_size,
        });
    }
    let table = gpt::read(&mut file).map_err(|source| ImageError::Gpt {
        path: image.to_path_buf(),
        source,
    })?;
    if new_size == current && spans(&table, current, image, &mut file)? {
        return Ok(GrowOutcome::Unchanged);
    }
    if !new_size.is_multiple_of(table.sector_size()) {
        return Err(ImageError::Unaligned {
            path: image.to_path_buf(),
            size: new_size,
            sector_size: table.sector_size(),
        });
    }
    let (root, _) = find_root(image, &mut file, &table)?;
    let next = table
        .partitions()
        .into_iter()
        .find(|p| p.first_lba > root.first_lba);
    // At the same size only the backup header moves then; asked for more
    // room, the root could not take it.
    if let (Some(next), true) = (next, new_size > current) {
        return Err(ImageError::RootNotLast {
            path: image.to_path_buf(),
            root: root.number,
            next: next.number,
        });
    }
    file.set_len(new_size).map_err(io_error(image))?;
    match table.grow(&mut file, root.number) {
        // Not synced: the loop device reads the table's writes back through
        // the same page cache.
        Ok(report) => Ok(GrowOutcome::Grown(report)),
        Err(source) => {
            // Before any table write failed, the old length is still valid.
            let _ = file.set_len(current);
            Err(ImageError::Gpt {
                path: image.to_path_buf(),
                source,
            })
        }
    }
}

/// Whether the table already fills a disk of `len` bytes: backup header in
/// the last sector, and the root partition last and up to the last usable
/// sector, or followed by another partition (then it cannot grow).
fn spans(
    table: &gpt::PartitionTable,
    len: u64,
    image: &Path,
    file: &mut File,
) -> Result<bool, ImageError> {
    if table.backup_lba() + 1 != len / table.sector_size() {
        return Ok(false);
    }
    let (root, _) = find_root(image, file, table)?;
    let followed = table
        .partitions()
        .iter()
        .any(|p| p.first_lba > root.first_lba);
    Ok(followed || root.last_lba >= table.last_usable_lba())
}

/// The root partition: the one ext4 partition, or, among several (a
/// separate `/boot`), the one whose `/etc/fstab` mounts itself on `/`.
fn find_root(
    image: &Path,
    file: &mut File,
    table: &gpt::PartitionTable,
) -> Result<(Partition, Superblock), ImageError> {
    let err = |source| ImageError::Root {
        path: image.to_path_buf(),
        source,
    };
    match rootfs::find_root(file, table) {
        Err(rootfs::RootError::Several {
            candidates,
            listing,
        }) => {
            let mut roots = Vec::new();
            for n in &candidates {
                let part = table.partition(*n).expect("a candidate is a partition");
                let Some(sb) = Superblock::read(file, part.offset()).map_err(io_error(image))?
                else {
                    continue;
                };
                if mounts_itself_on_root(image, &part, &sb) {
                    roots.push((part, sb));
                }
            }
            match roots.len() {
                1 => Ok(roots.remove(0)),
                _ => Err(err(rootfs::RootError::Several {
                    candidates,
                    listing,
                })),
            }
        }
        other => other.map_err(err),
    }
}

/// Whether the ext file system of `part` holds an `/etc/fstab` whose `/`
/// entry names `part`; read with debugfs (e2fsprogs, already needed for
/// e2fsck), which opens `FILE?offset=N` (ext2fs_open2's io options) read-only
/// without a loop device or a mount.
fn mounts_itself_on_root(image: &Path, part: &Partition, sb: &Superblock) -> bool {
    let mut spec = image.as_os_str().to_owned();
    spec.push(format!("?offset={}", part.offset()));
    let Ok(out) = tool::run([
        std::ffi::OsString::from("debugfs"),
        "-R".into(),
        "cat /etc/fstab".into(),
        spec,
    ]) else {
        return false;
    };
    let fstab = String::from_utf8_lossy(&out.stdout);
    let ids = boot_mounts::FsIds::from(sb);
    fstab
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?, f.next()?))
        })
        .any(|(source, path)| path == "/" && boot_mounts::names(source, part, &ids))
}

/// A raw working image and its root partition.
#[derive(Debug, Clone)]
pub struct WorkImage {
    path: PathBuf,
    root: Partition,
    root_fs: Superblock,
}

impl WorkImage {
    /// Reads the GPT of the raw image at `path` and finds its root partition.
    pub fn open(path: &Path) -> Result<WorkImage, ImageError> {
        let mut file = File::open(path).map_err(io_error(path))?;
        let table = gpt::read(&mut file).map_err(|source| ImageError::Gpt {
            path: path.to_path_buf(),
            source,
        })?;
        let (root, root_fs) = find_root(path, &mut file, &table)?;
        Ok(WorkImage {
            path: path.to_path_buf(),
            root,
            root_fs,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The root partition (number, offset, size, GUIDs).
    pub fn root(&self) -> &Partition {
        &self.root
    }

    /// The root file system's superblock as it was when opened.
    pub fn root_fs(&self) -> &Superblock {
        &self.root_fs
    }

    /// Attach stage: the root partition on a loop device, read-write, by
    /// offset and size limit, with auto-clear.
    pub fn attach_root(&self) -> Result<LoopGuard, ImageError> {
        self.attach_root_as(false)
    }

    /// Like [`attach_root`](Self::attach_root), read-only.
    pub fn attach_root_read_only(&self) -> Result<LoopGuard, ImageError> {
        self.attach_root_as(true)
    }

    fn attach_root_as(&self, read_only: bool) -> Result<LoopGuard, ImageError> {
        let (offset, size) = (self.root.offset(), self.root.size());
        Ok(loopdev::attach(&self.path, offset, size, read_only)?)
    }
}

/// Copy (or convert) `base` to `work`, grow it to `size` when given, and
/// find its root partition. `work` must not exist; on error it may be left
/// behind for the caller (who owns its folder) to remove.
pub fn prepare(base: &Path, work: &Path, size: Option<u64>) -> Result<WorkImage, ImageError> {
    copy_base(base, work)?;
    if let Some(size) = size {
        grow(work, size)?;
    }
    WorkImage::open(work)
}
