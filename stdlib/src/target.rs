//! The `Target` seam: everything a primitive may do to an image goes through it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use crate::fetch::Fetcher;
use crate::root::{FsError, ImageRoot};
pub use crate::shared::tail;
use crate::shared::tail_suffix;

/// A command to run inside the image root.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Command {
    pub argv: Vec<String>,
    /// Added to the target's clean base environment.
    pub env: BTreeMap<String, String>,
    /// Working directory inside the image (default `/`).
    pub cwd: Option<String>,
    pub stdin: Option<Vec<u8>>,
    /// Host caches to bind into the image for this command: cache name → in-image path.
    pub caches: BTreeMap<String, String>,
    /// The command is killed after this long.
    pub timeout: Option<Duration>,
    /// Where in the recipe the command comes from; prefixes its log lines.
    pub label: String,
}

impl Command {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Command {
            argv: argv.into_iter().map(Into::into).collect(),
            ..Command::default()
        }
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Self {
        self.env.insert(key.to_string(), value.into());
        self
    }

    pub fn cwd(mut self, cwd: impl Into<String>) -> Self {
        self.cwd = Some(cwd.into());
        self
    }

    pub fn cache(mut self, name: &str, in_image: &str) -> Self {
        self.caches.insert(name.to_string(), in_image.to_string());
        self
    }
}

/// Shell-quotes one word if it needs it, so a printed command can be pasted.
pub fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        if let Some(cwd) = &self.cwd {
            write!(f, "cd {} && ", shell_quote(cwd))?;
        }
        for (k, v) in &self.env {
            write!(f, "{}={} ", k, shell_quote(v))?;
        }
        for a in &self.argv {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            f.write_str(&shell_quote(a))?;
        }
        Ok(())
    }
}

/// What a finished command produced.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub stdout: Vec<u8>,
    pub stderr_tail: String,
}

/// A command that could not be run or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("`{command}` exited with {status}{}", tail_suffix("stderr", .stderr_tail))]
    Failed {
        command: String,
        status: String,
        stderr_tail: String,
    },
    #[error("`{command}` timed out after {after:?}")]
    TimedOut { command: String, after: Duration },
    #[error("`{command}` could not be started: {reason}")]
    Spawn { command: String, reason: String },
    #[error("the image is full: {detail} (grow it with `--size`, e.g. `--size 12G`)")]
    DiskFull { detail: String },
    /// "No space left" while the host file system holding the image file is
    /// full: the loop device's writes to the file failed, and `--size` would
    /// not help.
    #[error(
        "no space left: the host file system holding the image file is full \
         ({host_free} free there): {detail}"
    )]
    HostFull { detail: String, host_free: String },
    #[error("interrupted")]
    Interrupted,
}

/// Facts about the image being built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// Debian architecture: `amd64`, `arm64`.
    pub arch: String,
}

impl Facts {
    /// Image naming architecture: `x64` for amd64, else the Debian name.
    pub fn image_arch(&self) -> &str {
        match self.arch.as_str() {
            "amd64" => "x64",
            other => other,
        }
    }
}

/// Debian architecture of the machine pgimg runs on (images are built natively).
pub fn host_arch() -> Result<&'static str, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok("amd64"),
        "aarch64" => Ok("arm64"),
        other => Err(format!(
            "unsupported host architecture {other}: pgimg builds amd64 images on x86_64 and arm64 images on aarch64"
        )),
    }
}

/// The place a recipe acts on: a real image, a directory, or a fake root.
pub trait Target: Send + Sync {
    /// The image's `/`, for confined file operations.
    fn root(&self) -> &ImageRoot;

    /// Runs a command inside the image and waits for it.
    fn run(&self, cmd: &Command) -> Result<Output, CommandError>;

    /// Gets URLs and git sources onto the host, verified.
    fn fetcher(&self) -> &dyn Fetcher;

    fn facts(&self) -> &Facts;

    /// Changes a file's owner. The fake target records instead, so recipe
    /// tests run without root can still assert owners.
    fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), FsError> {
        self.root().set_attrs(
            path,
            crate::root::Attrs {
                mode: None,
                uid: Some(uid),
                gid: Some(gid),
            },
        )
    }

    /// The host directory holding a named cache (apt archives, Go caches), if
    /// this target binds caches into commands.
    fn cache_dir(&self, _name: &str) -> Option<PathBuf> {
        None
    }

    /// Paths put in place for the build only and given back at its end
    /// (`borrow_file`); `None` when this target never gives anything back.
    fn borrowed(&self) -> Option<&crate::borrow::Borrowed> {
        None
    }
}
