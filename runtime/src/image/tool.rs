//! Runs a host tool (e2fsprogs, qemu-img, util-linux) and reports failures with argv, status and output tail.

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use pgimg_stdlib::shared::{tail_lines, tail_suffix};

use crate::sandbox::interrupt;

/// Lines of output kept for an error message.
const TAIL_LINES: usize = 20;

/// An argv as the user could paste it into a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(pub Vec<OsString>);

impl fmt::Display for Argv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words: Vec<String> = self
            .0
            .iter()
            .map(|w| pgimg_stdlib::target::shell_quote(&w.to_string_lossy()))
            .collect();
        f.write_str(&words.join(" "))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error("could not start `{argv}`: {source}")]
    Spawn {
        argv: Argv,
        #[source]
        source: std::io::Error,
    },
    #[error("`{argv}` {status}{}", tail_suffix("output", .tail))]
    Failed {
        argv: Argv,
        status: ExitStatus,
        tail: String,
    },
    #[error("`{argv}` was stopped: interrupted by a signal")]
    Interrupted { argv: Argv },
}

/// What a tool printed and how it ended.
#[derive(Debug)]
pub struct ToolOutput {
    pub argv: Argv,
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl ToolOutput {
    /// The last lines of stderr, or of stdout when stderr is empty (e2fsck
    /// reports problems on stdout).
    pub fn tail(&self) -> String {
        let stream = if self.stderr.iter().all(u8::is_ascii_whitespace) {
            &self.stdout
        } else {
            &self.stderr
        };
        tail_lines(stream, TAIL_LINES)
    }

    pub fn failed(self) -> ToolError {
        ToolError::Failed {
            tail: self.tail(),
            argv: self.argv,
            status: self.status,
        }
    }
}

/// Runs `argv` with stdin closed and the C locale (so output can be parsed);
/// whatever its exit status.
pub fn run<I, S>(argv: I) -> Result<ToolOutput, ToolError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let argv = Argv(argv.into_iter().map(Into::into).collect());
    let mut cmd = Command::new(&argv.0[0]);
    cmd.args(&argv.0[1..])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    die_with_pgimg(&mut cmd);
    let spawn_error = |source| ToolError::Spawn {
        argv: argv.clone(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_error)?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_unless_interrupted(&mut child) {
        Ok(Some(status)) => status,
        Ok(None) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ToolError::Interrupted { argv });
        }
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(spawn_error(e));
        }
    };
    Ok(ToolOutput {
        argv,
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// SIGKILL for the tool when the thread that started it dies
/// (`PR_SET_PDEATHSIG`, prctl(2)), so a pgimg killed with SIGKILL does not
/// leave a `qemu-img convert` writing gigabytes into an orphaned work folder.
fn die_with_pgimg(cmd: &mut Command) {
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: only async-signal-safe calls (prctl, getppid, _exit) between
    // fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            // pgimg died before prctl took effect: the signal will never come.
            if libc::getppid() != parent {
                libc::_exit(137);
            }
            Ok(())
        });
    }
}

/// Reads a child's pipe to its end on a thread, so neither pipe can fill
/// while the other is read.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut bytes);
        }
        bytes
    })
}

/// The child's exit status, or `None` once SIGINT/SIGTERM reached pgimg.
/// Polls quickly at first (most tools end in milliseconds) and every 50 ms
/// after that.
fn wait_unless_interrupted(child: &mut Child) -> std::io::Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if interrupt::interrupted() {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `argv` and requires exit status 0.
pub fn run_ok<I, S>(argv: I) -> Result<ToolOutput, ToolError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let out = run(argv)?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(out.failed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_names_argv_status_and_stderr_tail() {
        let err = run_ok([
            "sh",
            "-c",
            "echo out; for i in $(seq 1 30); do echo line$i >&2; done; exit 3",
        ])
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("`sh -c 'echo out;"), "{err}");
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("line30") && err.contains("line11"), "{err}");
        assert!(!err.contains("line10\n"), "only the tail: {err}");
        assert!(!err.contains("out\n"), "stderr preferred: {err}");
    }

    #[test]
    fn stdout_tail_when_stderr_is_empty() {
        let err = run_ok(["sh", "-c", "echo problem on stdout; exit 4"])
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("problem on stdout"), "{err}");
    }

    #[test]
    fn missing_tool_is_a_spawn_error() {
        let err = run(["/nonexistent/pgimg-tool", "x"]).unwrap_err();
        assert!(matches!(err, ToolError::Spawn { .. }));
        assert!(err.to_string().contains("/nonexistent/pgimg-tool x"));
    }
}
