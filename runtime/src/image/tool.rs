//! Runs a host tool (e2fsprogs, qemu-img, util-linux) and reports failures with argv, status and output tail.

use std::ffi::OsString;
use std::fmt;
use std::process::{Command, ExitStatus, Stdio};

use pgimg_stdlib::shared::{tail_lines, tail_suffix};

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
    let output = Command::new(&argv.0[0])
        .args(&argv.0[1..])
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|source| ToolError::Spawn {
            argv: argv.clone(),
            source,
        })?;
    Ok(ToolOutput {
        argv,
        status: output.status,
        stdout: output.stdout,
        stderr: output.stderr,
    })
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
