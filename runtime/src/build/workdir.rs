//! The hidden work folder beside the output: the working image, the
//! mountpoint and the converted output, removed on drop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::stages::log;

/// `.<output name>.pgimg-<pid>/` beside the output. Its `Drop` removes only
/// the files pgimg put there, and the mountpoint with `rmdir` — never
/// recursively: if an unmount failed, a recursive delete would walk into the
/// image — then the output's parent folders this build created, when they
/// are empty (a failed build leaves no folder behind; a successful one has
/// its output there).
pub struct WorkDir {
    dir: PathBuf,
    /// Folders created for the output's parent, deepest first.
    created: Vec<PathBuf>,
}

/// The marker in a work folder's name; the process id follows it.
const MARK: &str = ".pgimg-";

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
        let created: Vec<PathBuf> = parent
            .ancestors()
            .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
            .map(Path::to_path_buf)
            .collect();
        if created.is_empty() {
            sweep(parent);
        }
        let dir = parent.join(format!(".{name}{MARK}{}", std::process::id()));
        let work = WorkDir { dir, created };
        std::fs::create_dir_all(&work.dir)
            .with_context(|| format!("creating {}", work.dir.display()))?;
        Ok(work)
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
        for d in &self.created {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    }
}

/// Removes the work folders in `parent` left by builds that were killed
/// (SIGKILL runs no cleanup): those whose process is gone, or is no longer
/// pgimg. Their mounts and loop devices went with the process (private mount
/// namespace, auto-clear loops); only files remain. Like `Drop`, it removes
/// the files pgimg makes there and never deletes recursively.
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        let Some(pid) = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(MARK))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid == std::process::id() || is_pgimg(pid) || !e.path().is_dir() {
            continue;
        }
        let stale = WorkDir {
            dir: e.path(),
            created: Vec::new(),
        };
        let freed: u64 = [stale.image(), stale.converted()]
            .iter()
            .filter_map(|f| std::fs::metadata(f).ok())
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .sum();
        log(&format!(
            "removing {}, left by pgimg process {pid} which is gone ({} freed)",
            stale.dir.display(),
            indicatif::HumanBytes(freed)
        ));
        drop(stale);
    }
}

/// Whether process `pid` is alive and a pgimg (pids are reused).
fn is_pgimg(pid: u32) -> bool {
    let ours = std::fs::read_to_string("/proc/self/comm").unwrap_or_default();
    match std::fs::read_to_string(format!("/proc/{pid}/comm")) {
        Ok(comm) => comm == ours,
        Err(_) => false,
    }
}
