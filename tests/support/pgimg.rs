//! Driving the `pgimg` binary from system tests: a running `pgimg` whose
//! output is echoed and kept, `pgimg shell`, the manifest and stage table a
//! build writes, and the scratch folder builds work in.
//!
//! Use it from a test file with `#[path = "support/pgimg.rs"] mod pgimg_bin;`
//! beside `#[path = "support/fixture.rs"] mod fixture;` (it uses
//! `crate::fixture`).

#![allow(dead_code)]

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::fixture::{self, loud};
use nix::sys::signal::Signal;
use serde_json::Value;

pub const PGIMG: &str = env!("CARGO_BIN_EXE_pgimg");

pub fn repo_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A folder for one test's recipes and outputs, beside the fixture (same
/// file system as the work copies, outside the small `/tmp`).
pub fn scratch() -> tempfile::TempDir {
    let d = fixture::fixture_dir();
    std::fs::create_dir_all(&d).unwrap();
    tempfile::Builder::new()
        .prefix("run-test-")
        .tempdir_in(d)
        .unwrap()
}

/// Lines a process printed, and a way to wait for one.
#[derive(Default)]
struct Lines {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

fn collect(stream: impl Read + Send + 'static, sink: Arc<Lines>, echo: bool) -> JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if echo {
                loud(&format!("  | {line}"));
            }
            sink.lines.lock().unwrap().push(line);
            sink.changed.notify_all();
        }
    })
}

/// A running `pgimg`: stderr echoed (so a long build shows progress) and
/// kept; stdout kept. Killed if dropped while running.
pub struct Pgimg {
    child: Child,
    started: Instant,
    stderr: Arc<Lines>,
    stdout: Arc<Lines>,
    readers: Vec<JoinHandle<()>>,
}

/// How a `pgimg` run ended.
pub struct Finished {
    pub status: ExitStatus,
    pub stderr: String,
    pub stdout: String,
    pub seconds: f64,
}

impl Finished {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl Pgimg {
    pub fn spawn(args: &[OsString], stdin: Option<&str>) -> Pgimg {
        Pgimg::spawn_with_env(args, stdin, &[])
    }

    /// [`Pgimg::spawn`] with `env` added to the environment.
    pub fn spawn_with_env(args: &[OsString], stdin: Option<&str>, env: &[(&str, &Path)]) -> Pgimg {
        Pgimg::start(Command::new(PGIMG), args, stdin, env)
    }

    /// [`Pgimg::spawn`] in a network namespace the test makes for it
    /// (`unshare --net`: only a loopback interface, down): whatever pgimg
    /// and its commands do cannot reach a network. The sandbox itself may
    /// not create one (no `CAP_SYS_ADMIN`), so the test does it outside.
    pub fn spawn_offline(args: &[OsString], stdin: Option<&str>) -> Pgimg {
        let mut cmd = Command::new("unshare");
        cmd.args(["--net", PGIMG]);
        Pgimg::start(cmd, args, stdin, &[])
    }

    fn start(
        mut cmd: Command,
        args: &[OsString],
        stdin: Option<&str>,
        env: &[(&str, &Path)],
    ) -> Pgimg {
        loud(&format!(
            "$ pgimg {}",
            args.iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        // Builds in the other tests run every step, as they did before the
        // step cache: a resumed build would not show what they look for
        // (downloads, command output). tests/cache.rs turns it back on.
        let mut child = cmd
            .args(args)
            .current_dir(repo_dir())
            .env("PGIMG_NO_CACHE", "1")
            .envs(env.iter().copied())
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting pgimg");
        if let Some(text) = stdin {
            let mut w = child.stdin.take().unwrap();
            w.write_all(text.as_bytes()).expect("writing pgimg's stdin");
        }
        let stderr = Arc::new(Lines::default());
        let stdout = Arc::new(Lines::default());
        let readers = vec![
            collect(child.stderr.take().unwrap(), stderr.clone(), true),
            collect(child.stdout.take().unwrap(), stdout.clone(), false),
        ];
        Pgimg {
            child,
            started: Instant::now(),
            stderr,
            stdout,
            readers,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until a stderr line satisfies `pred`; returns it. Panics (the
    /// drop kills pgimg) when pgimg exits first or `limit` passes.
    pub fn wait_for_line(
        &mut self,
        what: &str,
        limit: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + limit;
        let mut seen = 0;
        loop {
            {
                let lines = self.stderr.lines.lock().unwrap();
                if let Some(l) = lines[seen..].iter().find(|l| pred(l)) {
                    return l.clone();
                }
                seen = lines.len();
                let (_guard, _) = self
                    .stderr
                    .changed
                    .wait_timeout(lines, Duration::from_millis(100))
                    .unwrap();
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                let lines = self.stderr.lines.lock().unwrap();
                if let Some(l) = lines.iter().find(|l| pred(l)) {
                    return l.clone();
                }
                panic!(
                    "pgimg exited ({status}) before {what}:\n{}",
                    lines.join("\n")
                );
            }
            assert!(Instant::now() < deadline, "no {what} within {limit:?}");
        }
    }

    pub fn signal(&self, sig: Signal) {
        loud(&format!(
            "----- sending {sig} to pgimg ({}) after {:.1} s -----",
            self.pid(),
            self.started.elapsed().as_secs_f64()
        ));
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig).unwrap();
    }

    /// Waits for pgimg to exit (at most `limit`; past that it is killed and
    /// the test fails) and returns what it printed.
    pub fn finish(mut self, limit: Duration) -> Finished {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "pgimg did not exit within {limit:?}:\n{}",
                    self.stderr.lines.lock().unwrap().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let seconds = self.started.elapsed().as_secs_f64();
        let join = |l: &Lines| l.lines.lock().unwrap().join("\n");
        Finished {
            status,
            stderr: join(&self.stderr),
            stdout: join(&self.stdout),
            seconds,
        }
    }
}

impl Drop for Pgimg {
    /// A test that panicked mid-run must not leave a build running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

pub fn pgimg(args: &[OsString], stdin: Option<&str>, limit: Duration) -> Finished {
    Pgimg::spawn(args, stdin).finish(limit)
}

/// `pgimg shell IMAGE -- sh -c SCRIPT`; asserts exit 0; returns stdout.
pub fn shell_sh(image: &Path, script: &str) -> String {
    let args: Vec<OsString> = vec![
        "shell".into(),
        image.into(),
        "--".into(),
        "sh".into(),
        "-c".into(),
        script.into(),
    ];
    let f = pgimg(&args, None, Duration::from_secs(180));
    assert_eq!(
        f.code(),
        Some(0),
        "pgimg shell failed:\n{}\n{}",
        f.stdout,
        f.stderr
    );
    f.stdout
}

/// The parameters of `recipes/debian.test.rhai`, which the flavor builds
/// of the system tests use: PostgreSQL 15 and the package lists of Debian's
/// archive; the steps this machine cannot run left out (why:
/// `NOT_RUN` in `tests/recipes_real.rs`).
pub const DEBIAN_PARAMS: &[&str] = &[
    "--set",
    "pg_versions=15",
    "--set",
    "package_lists=debian-bookworm",
    "--assets",
    "recipes/fixtures",
    "--set",
    "skip=pgdg,golang-backports,walg,pguint,azure,cloud-init,grub",
];

/// Asserts that `text` contains at least one of `any`; `what` says what
/// that shows, and `text` is printed when it does not.
pub fn assert_has_any(text: &str, any: &[&str], what: &str) {
    assert!(
        any.iter().any(|s| text.contains(s)),
        "{what}: none of {any:?} in:\n{text}"
    );
}

pub fn sidecar(output: &Path, suffix: &str) -> PathBuf {
    let mut s = output.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

pub fn read_json(path: &Path) -> Value {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Prints the manifest's stage table; returns `(stage, seconds)`.
pub fn print_stages(title: &str, manifest: &Value) -> Vec<(String, f64)> {
    let stages: Vec<(String, f64)> = manifest["stages"]
        .as_array()
        .expect("stages")
        .iter()
        .map(|s| {
            (
                s["stage"].as_str().unwrap().to_string(),
                s["seconds"].as_f64().unwrap(),
            )
        })
        .collect();
    let total: f64 = stages.iter().map(|s| s.1).sum();
    let mut text = format!("\n===== stage durations: {title} =====\n");
    for (s, secs) in &stages {
        text.push_str(&format!("  {s:<13} {secs:>7.2} s\n"));
    }
    text.push_str(&format!("  {:<13} {total:>7.2} s", "total"));
    if let Some(o) = manifest.get("output").filter(|o| !o.is_null()) {
        text.push_str(&format!(
            "\n  output: {} bytes apparent, {} bytes allocated ({:.1} MiB)",
            o["apparent_size"],
            o["allocated_size"],
            o["allocated_size"].as_f64().unwrap() / 1048576.0
        ));
    }
    loud(&text);
    stages
}
