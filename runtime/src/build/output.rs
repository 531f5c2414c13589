//! The output stage's file work: convert when asked, hash, write the
//! `.sha256` sidecar, rename into place — the rename last, so a failure
//! leaves nothing under the output name.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use indicatif::HumanBytes;
use pgimg_publish::progress::{Progress, Unit};

use super::manifest::OutputRecord;
use super::stages::log;
use super::workdir::WorkDir;
use super::Format;
use crate::image;
use crate::sandbox::interrupt;

/// `<output>.<suffix>`, e.g. `img.raw.sha256`.
pub fn sidecar(output: &Path, suffix: &str) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

/// Bytes the file occupies on disk (holes excluded).
pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .map(|m| m.blocks() * 512)
        .unwrap_or(0)
}

/// Hex sha256 of a file, streamed; stops with `ErrorKind::Interrupted`
/// once SIGINT/SIGTERM arrived.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    pgimg_publish::hash::sha256_path(path, &UntilInterrupted)
}

/// Reports nothing; cancels on SIGINT/SIGTERM.
struct UntilInterrupted;

impl Progress for UntilInterrupted {
    fn start(&self, _: &str, _: u64, _: Unit) {}
    fn advance(&self, _: u64) {}
    fn set(&self, _: u64) {}
    fn finish(&self) {}
    fn note(&self, _: &str) {}
    fn cancelled(&self) -> bool {
        interrupt::interrupted()
    }
}

/// Writes the built image in `work` to `output` in `format`.
pub fn write_output(
    work: &WorkDir,
    output: &Path,
    format: Format,
    compress: bool,
) -> Result<OutputRecord> {
    let produced = match format {
        Format::Raw => work.image(),
        Format::Qcow2 => {
            image::convert::to_qcow2(&work.image(), &work.converted(), compress)?;
            work.converted()
        }
    };
    let sha = sha256_file(&produced)?;
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Hashing a large image takes seconds; a SIGINT/SIGTERM meanwhile must
    // still stop the build before anything appears under the output name.
    if interrupt::interrupted() {
        bail!(
            "interrupted before the image was renamed to {}",
            output.display()
        );
    }
    let sums = sidecar(output, "sha256");
    std::fs::write(&sums, format!("{sha}  {name}\n"))
        .with_context(|| format!("writing {}", sums.display()))?;
    if let Err(e) = std::fs::rename(&produced, output) {
        let _ = std::fs::remove_file(&sums);
        return Err(e).with_context(|| format!("renaming the image to {}", output.display()));
    }
    let record = OutputRecord {
        path: output.display().to_string(),
        format,
        sha256: sha,
        apparent_size: std::fs::metadata(output)?.len(),
        allocated_size: allocated(output),
    };
    log(&format!(
        "wrote {} ({}, {} apparent, {} allocated)",
        record.path,
        format.as_str(),
        HumanBytes(record.apparent_size),
        HumanBytes(record.allocated_size)
    ));
    Ok(record)
}
