//! The hidden work folder beside the output: the working image, the
//! mountpoint and the converted output, removed on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::stages::log;

/// `.<output name>.pgimg-<pid>/` beside the output. Its `Drop` removes only
/// the files pgimg put there, and the mountpoint with `rmdir` — never
/// recursively: if an unmount failed, a recursive delete would walk into the
/// image.
pub struct WorkDir {
    dir: PathBuf,
}

impl WorkDir {
    pub fn create(output: &Path) -> Result<WorkDir> {
        let parent = output
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = output
            .file_name()
            .context("--output needs a file name")?
            .to_string_lossy();
        let dir = parent.join(format!(".{name}.pgimg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(WorkDir { dir })
    }

    /// The working copy of the base, grown and built in place.
    pub fn image(&self) -> PathBuf {
        self.dir.join("work.raw")
    }

    pub fn mountpoint(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The qcow2 output before its rename.
    pub fn converted(&self) -> PathBuf {
        self.dir.join("out.qcow2")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        for f in [self.image(), self.converted()] {
            let _ = std::fs::remove_file(f);
        }
        let _ = std::fs::remove_dir(self.mountpoint());
        if let Err(e) = std::fs::remove_dir(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                log(&format!("warning: leaving {}: {e}", self.dir.display()));
            }
        }
    }
}
