//! The output stage's file work: convert when asked, hash, write the
//! `.sha256` sidecar, rename into place — the rename last, so a failure
//! leaves nothing under the output name.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
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

/// Writes a file that must not exist yet: a sidecar that appeared during
/// the build (another build to the same output) is never overwritten.
pub fn write_new(path: &Path, content: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| match path.exists() {
            true => format!(
                "writing {}: it appeared during the build, perhaps another build's; not replaced",
                path.display()
            ),
            false => format!("writing {}", path.display()),
        })?;
    file.write_all(content)
        .with_context(|| format!("writing {}", path.display()))
}

/// Hex sha256 of a file, streamed; stops with `ErrorKind::Interrupted`
/// once SIGINT/SIGTERM arrived.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    pgimg_publish::hash::sha256_path(path, &UNTIL_INTERRUPTED)
}

/// Reports nothing; cancels on SIGINT/SIGTERM, or once `abandoned` is set.
struct UntilInterrupted<'a> {
    abandoned: Option<&'a AtomicBool>,
}

const UNTIL_INTERRUPTED: UntilInterrupted<'static> = UntilInterrupted { abandoned: None };

impl Progress for UntilInterrupted<'_> {
    fn start(&self, _: &str, _: u64, _: Unit) {}
    fn advance(&self, _: u64) {}
    fn set(&self, _: u64) {}
    fn finish(&self) {}
    fn note(&self, _: &str) {}
    fn cancelled(&self) -> bool {
        interrupt::interrupted() || self.abandoned.is_some_and(|a| a.load(Ordering::Relaxed))
    }
}

/// The raw image's sha256, computed on a thread of its own from the moment
/// the image's content is final (the root file system unmounted) while the
/// build checks the file system and detaches the loop device, which only
/// read it. Dropped without [`Prehash::wait`] (the build failed), it stops
/// the thread at its next chunk and waits for it.
pub struct Prehash {
    abandoned: Arc<AtomicBool>,
    thread: Option<JoinHandle<std::io::Result<String>>>,
}

impl Prehash {
    pub fn start(image: PathBuf) -> Prehash {
        let abandoned = Arc::new(AtomicBool::new(false));
        let flag = abandoned.clone();
        let thread = std::thread::spawn(move || {
            let progress = UntilInterrupted {
                abandoned: Some(&flag),
            };
            pgimg_publish::hash::sha256_path(&image, &progress)
        });
        Prehash {
            abandoned,
            thread: Some(thread),
        }
    }

    /// The digest, once the thread is done.
    fn wait(mut self) -> std::io::Result<String> {
        let thread = self.thread.take().expect("waited once");
        thread
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }
}

impl Drop for Prehash {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take() {
            self.abandoned.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
    }
}

/// Writes the built image in `work` to `output` in `format`; `prehash` is
/// the raw image's digest under way (used when the output is raw).
pub fn write_output(
    work: &WorkDir,
    output: &Path,
    format: Format,
    compress: bool,
    prehash: Option<Prehash>,
) -> Result<OutputRecord> {
    let (produced, prehash) = match format {
        Format::Raw => (work.image(), prehash),
        Format::Qcow2 => {
            // The digest is of the converted file.
            drop(prehash);
            image::convert::to_qcow2(&work.image(), &work.converted(), compress)?;
            (work.converted(), None)
        }
    };
    let stopped = |how: &str| {
        anyhow::anyhow!(
            "interrupted before the image was renamed to {}{how}",
            output.display()
        )
    };
    let hashed = match prehash {
        Some(prehash) => prehash.wait(),
        None => sha256_file(&produced),
    };
    let sha = match hashed {
        Ok(sha) => sha,
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            return Err(stopped(&format!(" ({e})")))
        }
        Err(e) => return Err(e).with_context(|| format!("hashing {}", produced.display())),
    };
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // A signal between the hash's last chunk and here must still stop the
    // build before anything appears under the output name.
    if interrupt::interrupted() {
        return Err(stopped(""));
    }
    let sums = sidecar(output, "sha256");
    write_new(&sums, format!("{sha}  {name}\n").as_bytes())?;
    // RENAME_NOREPLACE: the output was refused at the start if it existed,
    // and must not be replaced if it appeared since (another build to the
    // same name finished first).
    if let Err(e) = nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &produced,
        nix::fcntl::AT_FDCWD,
        output,
        nix::fcntl::RenameFlags::RENAME_NOREPLACE,
    ) {
        let _ = std::fs::remove_file(&sums);
        let why = match e {
            nix::errno::Errno::EEXIST => {
                " (it appeared during the build, perhaps another build's; not replaced)"
            }
            _ => "",
        };
        return Err(std::io::Error::from(e))
            .with_context(|| format!("renaming the image to {}{why}", output.display()));
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
