//! `pgimg inspect`: partition table, root file system, apparent vs allocated size and the embedded manifest of an image.

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use super::convert::{self, Format};
use super::gpt::{self, Guid};
use super::loopdev;
use pgimg_stdlib::shared::HumanBytes;

use super::rootfs;
use super::superblock::Superblock;
use super::tool;
use super::workcopy::allocated_size;
use super::ImageError;

/// Where a built image carries its manifest (written by the build's output stage).
pub const MANIFEST_PATH: &str = "/usr/share/pgimg/manifest.json";

/// Everything `pgimg inspect` reports.
#[derive(Debug, serde::Serialize)]
pub struct Inspection {
    pub path: PathBuf,
    pub format: Format,
    pub virtual_size: u64,
    /// File length (`ls -l`).
    pub apparent_size: u64,
    /// Blocks on disk (`du`).
    pub allocated_size: u64,
    pub sector_size: u64,
    pub disk_guid: Guid,
    pub partitions: Vec<PartitionReport>,
    /// Number of the root partition, when exactly one holds an ext file system.
    pub root: Option<u32>,
    /// Why there is no root partition.
    pub root_error: Option<String>,
    pub manifest: Manifest,
}

#[derive(Debug, serde::Serialize)]
pub struct PartitionReport {
    #[serde(flatten)]
    pub partition: gpt::Partition,
    pub type_name: &'static str,
    pub filesystem: Option<Superblock>,
}

/// The manifest embedded at [`MANIFEST_PATH`], if any.
#[derive(Debug, serde::Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Manifest {
    Present {
        content: serde_json::Value,
    },
    Absent,
    /// It could not be read (not root, not JSON, …).
    Unavailable {
        reason: String,
    },
}

/// Inspects `path` (raw or anything `qemu-img` reads; non-raw images are
/// converted to a temporary raw file first). Never writes to `path`.
pub fn inspect(path: &Path) -> Result<Inspection, ImageError> {
    let io_err = |source| ImageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let apparent_size = std::fs::metadata(path).map_err(io_err)?.len();
    let allocated_size = allocated_size(path).map_err(io_err)?;
    let info = convert::detect(path)?;
    let scratch;
    let raw = if info.format == Format::Raw {
        path.to_path_buf()
    } else {
        scratch = tempfile::tempdir().map_err(io_err)?;
        let raw = scratch.path().join("inspect.raw");
        convert::to_raw(path, &info.format, &raw)?;
        raw
    };

    let mut disk = File::open(&raw).map_err(io_err)?;
    let table = gpt::read(&mut disk).map_err(|source| ImageError::Gpt {
        path: path.to_path_buf(),
        source,
    })?;
    let probed = rootfs::probe(&mut disk, &table).map_err(|source| ImageError::Root {
        path: path.to_path_buf(),
        source,
    })?;
    let (root, root_error) = match rootfs::find_root(&mut disk, &table) {
        Ok((p, _)) => (Some(p), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let manifest = match &root {
        Some(p) => read_manifest(&raw, p.offset(), p.size()),
        None => Manifest::Unavailable {
            reason: "no root file system".to_string(),
        },
    };
    Ok(Inspection {
        path: path.to_path_buf(),
        format: info.format,
        virtual_size: info.virtual_size,
        apparent_size,
        allocated_size,
        sector_size: table.sector_size(),
        disk_guid: table.disk_guid(),
        partitions: probed
            .into_iter()
            .map(|p| PartitionReport {
                type_name: p.partition.type_name(),
                partition: p.partition,
                filesystem: p.superblock,
            })
            .collect(),
        root: root.map(|p| p.number),
        root_error,
        manifest,
    })
}

/// `debugfs -R "cat PATH"` on a read-only loop device: no mount needed.
/// debugfs exits 0 even when the file is missing, so its stderr decides.
fn read_manifest(raw: &Path, offset: u64, size: u64) -> Manifest {
    if !nix::unistd::geteuid().is_root() {
        return Manifest::Unavailable {
            reason: "reading it needs root (a loop device)".to_string(),
        };
    }
    let guard = match loopdev::attach(raw, offset, size, true) {
        Ok(g) => g,
        Err(e) => {
            return Manifest::Unavailable {
                reason: e.to_string(),
            }
        }
    };
    let request = format!("cat {MANIFEST_PATH}");
    let result = tool::run([
        "debugfs".as_ref(),
        "-R".as_ref(),
        request.as_ref(),
        guard.path().as_os_str(),
    ]);
    let manifest = match result {
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let problems: Vec<&str> = stderr
                .lines()
                .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
                .collect();
            if problems.iter().any(|l| l.contains("File not found")) {
                Manifest::Absent
            } else if !out.status.success() || !problems.is_empty() {
                Manifest::Unavailable {
                    reason: format!("`{}`: {}", out.argv, problems.join("; ")),
                }
            } else {
                match serde_json::from_slice(&out.stdout) {
                    Ok(content) => Manifest::Present { content },
                    Err(e) => Manifest::Unavailable {
                        reason: format!("{MANIFEST_PATH} is not JSON: {e}"),
                    },
                }
            }
        }
        Err(e) => Manifest::Unavailable {
            reason: e.to_string(),
        },
    };
    if let Err(e) = guard.close() {
        pgimg_stdlib::stderr_line!("warning: {e}");
    }
    manifest
}

impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "image       {}", self.path.display())?;
        writeln!(
            f,
            "format      {} (disk {})",
            self.format,
            HumanBytes(self.virtual_size)
        )?;
        writeln!(
            f,
            "size        {} apparent, {} allocated ({} / {} bytes)",
            HumanBytes(self.apparent_size),
            HumanBytes(self.allocated_size),
            self.apparent_size,
            self.allocated_size
        )?;
        writeln!(
            f,
            "table       GPT, {}-byte sectors, disk GUID {}",
            self.sector_size, self.disk_guid
        )?;
        writeln!(f, "partitions")?;
        for p in &self.partitions {
            let part = &p.partition;
            let fs = match &p.filesystem {
                Some(sb) => format!("  {} {:?}", sb.kind, sb.label),
                None => String::new(),
            };
            let root = if self.root == Some(part.number) {
                "  (root)"
            } else {
                ""
            };
            writeln!(
                f,
                "  p{:<3} sectors {}-{}  {}  {}  GUID {}{}{}",
                part.number,
                part.first_lba,
                part.last_lba,
                HumanBytes(part.size()),
                p.type_name,
                part.unique_guid,
                fs,
                root
            )?;
        }
        let root_fs = self
            .partitions
            .iter()
            .find(|p| Some(p.partition.number) == self.root)
            .and_then(|p| Some((p.partition.number, p.filesystem.as_ref()?)));
        match (root_fs, &self.root_error) {
            (Some((n, sb)), _) => writeln!(
                f,
                "root fs     p{n}: {}, {} ({} free), label {:?}, UUID {}",
                sb.kind,
                HumanBytes(sb.size()),
                HumanBytes(sb.free_blocks * sb.block_size),
                sb.label,
                sb.uuid
            )?,
            (None, Some(e)) => writeln!(f, "root fs     none: {e}")?,
            (None, None) => writeln!(f, "root fs     none")?,
        }
        match &self.manifest {
            Manifest::Present { content } => {
                let pretty = serde_json::to_string_pretty(content).map_err(|_| fmt::Error)?;
                writeln!(f, "manifest    {MANIFEST_PATH}:")?;
                for line in pretty.lines() {
                    writeln!(f, "  {line}")?;
                }
            }
            Manifest::Absent => writeln!(f, "manifest    none ({MANIFEST_PATH} absent)")?,
            Manifest::Unavailable { reason } => writeln!(f, "manifest    unavailable: {reason}")?,
        }
        Ok(())
    }
}
