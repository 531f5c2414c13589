//! System tests of the sandbox (ChrootTarget, mounts, namespaces, finalize) on a real Debian rootfs.
//!
//! They need root. Without it each test prints `SKIPPED (needs root)` and
//! returns; with `PGIMG_REQUIRE_ROOT_TESTS=1` it fails instead. The rootfs is a
//! `debootstrap --variant=minbase` of bookworm from the machine's Debian
//! mirror, built once and cached as a tarball under
//! `${PGIMG_FIXTURE_DIR:-/var/tmp/pgimg-fixtures}/rootfs-minbase.tar`; each test
//! unpacks its own copy. Two tests talk to the Debian mirror through apt.
//!
//! Each test enters a private mount namespace for its own thread (the harness
//! is multi-threaded), so its mounts are inspected through
//! `/proc/thread-self/mountinfo`; the host's view (`/proc/self/mountinfo`) is
//! checked too.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgimg::sandbox::finalize::FinalizeOptions;
use pgimg::sandbox::interrupt;
use pgimg::sandbox::mounts::Mount;
use pgimg::sandbox::namespace;
use pgimg::sandbox::{finalize, ChrootTarget, SandboxOptions, SetupError, Stream};
use pgimg_stdlib::fetch::RecordingFetcher;
use pgimg_stdlib::target::{CommandError, Target};
use pgimg_stdlib::Command;

#[path = "support/fixture.rs"]
mod fixture;
use fixture::{fixture_dir, loud};

// ---------------------------------------------------------------------------
// Support: root check, the cached rootfs, mount inspection.

/// The machine's Debian mirror, from its apt sources (one-line or deb822 format).
fn debian_mirror() -> String {
    if let Ok(m) = std::env::var("PGIMG_DEBIAN_MIRROR") {
        return m;
    }
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut more: Vec<PathBuf> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        more.sort();
        files.extend(more);
    }
    for f in files {
        let Ok(text) = fs::read_to_string(&f) else {
            continue;
        };
        for line in text.lines().map(str::trim) {
            let uri = if let Some(rest) = line.strip_prefix("deb ") {
                rest.split_whitespace().find(|w| w.starts_with("http"))
            } else {
                line.strip_prefix("URIs:")
                    .and_then(|r| r.split_whitespace().next())
            };
            if let Some(uri) = uri.filter(|u| u.contains("debian") && !u.contains("security")) {
                return uri.to_string();
            }
        }
    }
    panic!("no Debian mirror in /etc/apt/sources.list*; set PGIMG_DEBIAN_MIRROR");
}

/// The cached minbase tarball, built on first use (under a file lock, so
/// parallel tests and test binaries build it once).
fn minbase_tar() -> PathBuf {
    let dir = fixture_dir();
    fs::create_dir_all(&dir).unwrap();
    let tar = dir.join("rootfs-minbase.tar");
    let lock = fs::File::create(dir.join("rootfs-minbase.tar.lock")).unwrap();
    let _lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap();
    if tar.exists() {
        return tar;
    }
    let stage = tempfile::Builder::new()
        .prefix("minbase-")
        .tempdir_in(&dir)
        .unwrap();
    let target = stage.path().join("root");
    let mirror = debian_mirror();
    loud(&format!(
        "building the minbase rootfs fixture from {mirror} (once)"
    ));
    let started = Instant::now();
    let out = Process::new("debootstrap")
        .args(["--variant=minbase", "bookworm"])
        .arg(&target)
        .arg(&mirror)
        .output()
        .expect("running debootstrap (apt-get install debootstrap)");
    assert!(
        out.status.success(),
        "debootstrap failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let partial = dir.join("rootfs-minbase.tar.partial");
    let status = Process::new("tar")
        .arg("-C")
        .arg(&target)
        .args(["-cf"])
        .arg(&partial)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success(), "tar of the minbase rootfs failed");
    fs::rename(&partial, &tar).unwrap();
    loud(&format!(
        "minbase rootfs fixture built in {:.1?}",
        started.elapsed()
    ));
    assert_no_mounts_under(&target);
    drop(stage);
    tar
}

/// Mount points (unescaped) listed in a mountinfo file.
fn mountpoints(mountinfo: &str) -> Vec<String> {
    let text = fs::read_to_string(mountinfo).unwrap();
    text.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| {
            let mut out = Vec::new();
            let b = m.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'\\' && i + 3 < b.len() {
                    if let Ok(n) = u8::from_str_radix(&m[i + 1..i + 4], 8) {
                        out.push(n);
                        i += 4;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        })
        .collect()
}

fn mounts_under(dir: &Path, mountinfo: &str) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    mountpoints(mountinfo)
        .into_iter()
        .filter(|m| m == &dir || m.starts_with(&format!("{dir}/")))
        .collect()
}

fn assert_no_mounts_under(dir: &Path) {
    for view in ["/proc/thread-self/mountinfo", "/proc/self/mountinfo"] {
        let left = mounts_under(dir, view);
        assert!(
            left.is_empty(),
            "still mounted under {} ({view}): {left:?}",
            dir.display()
        );
    }
}

/// A private copy of the minbase rootfs. Removed on drop only when nothing is
/// mounted under it (a recursive delete would reach into a mount).
struct Rootfs {
    dir: Option<tempfile::TempDir>,
}

impl Rootfs {
    fn new() -> Rootfs {
        let tar = minbase_tar();
        let dir = tempfile::Builder::new()
            .prefix("pgimg-sandbox-test-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let status = Process::new("tar")
            .arg("-C")
            .arg(dir.path())
            .arg("-xf")
            .arg(&tar)
            .status()
            .unwrap();
        assert!(status.success(), "unpacking {}", tar.display());
        Rootfs { dir: Some(dir) }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().unwrap().path()
    }

    fn join(&self, p: &str) -> PathBuf {
        self.path().join(p.trim_start_matches('/'))
    }
}

impl Drop for Rootfs {
    fn drop(&mut self) {
        let dir = self.dir.take().unwrap();
        let left = mounts_under(dir.path(), "/proc/thread-self/mountinfo");
        if !left.is_empty() {
            let kept = dir.keep();
            eprintln!(
                "keeping {} undeleted: still mounted there: {left:?}",
                kept.display()
            );
        }
    }
}

/// Collected output lines: (label, stream, line).
type Lines = Arc<Mutex<Vec<(String, Stream, String)>>>;

/// Fields drop in order: the target (unmounting) before the rootfs.
struct Sandbox {
    target: ChrootTarget,
    rootfs: Rootfs,
    cache: tempfile::TempDir,
    lines: Lines,
    interrupt: &'static AtomicBool,
}

/// A fresh flag per test: the global one belongs to the signal handler test.
fn private_flag() -> &'static AtomicBool {
    Box::leak(Box::new(AtomicBool::new(false)))
}

fn options(cache: &Path, lines: &Lines, interrupt: &'static AtomicBool) -> SandboxOptions {
    let mut opts = SandboxOptions::new(Box::new(RecordingFetcher::default()));
    opts.cache_dir = Some(cache.to_path_buf());
    let sink = lines.clone();
    opts.log = Arc::new(move |label, stream, line| {
        eprintln!("{label}: {line}");
        sink.lock()
            .unwrap()
            .push((label.to_string(), stream, line.to_string()));
    });
    opts.interrupt = interrupt;
    opts
}

impl Sandbox {
    /// Enters a private mount namespace for this thread, unpacks a rootfs,
    /// lets `prepare` change it, and sets the target up on it.
    fn new(prepare: impl FnOnce(&Rootfs)) -> Sandbox {
        namespace::private_namespace_for_calling_thread().expect("private mount namespace");
        let rootfs = Rootfs::new();
        prepare(&rootfs);
        let cache = tempfile::Builder::new()
            .prefix("pgimg-cache-test-")
            .tempdir()
            .unwrap();
        let lines = Lines::default();
        let interrupt = private_flag();
        let target = ChrootTarget::setup(rootfs.path(), options(cache.path(), &lines, interrupt))
            .expect("sandbox setup");
        Sandbox {
            rootfs,
            cache,
            target,
            lines,
            interrupt,
        }
    }

    fn run(&self, argv: &[&str]) -> Result<pgimg_stdlib::Output, CommandError> {
        self.target.run(&cmd(argv))
    }

    fn stdout(&self, argv: &[&str]) -> String {
        let out = self.run(argv).unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        String::from_utf8(out.stdout).unwrap()
    }

    /// Tears down and checks that nothing is left mounted; hands back the rootfs for inspection.
    fn teardown(self) -> (Rootfs, tempfile::TempDir) {
        self.target.teardown().expect("teardown");
        assert_no_mounts_under(self.rootfs.path());
        drop(self.target);
        (self.rootfs, self.cache)
    }
}

fn cmd(argv: &[&str]) -> Command {
    Command {
        label: "tests/sandbox.rs:1:1".into(),
        ..Command::new(argv.iter().copied())
    }
}

/// Processes whose command line is exactly `argv`.
fn processes_with(argv: &[&str]) -> Vec<u32> {
    let want: Vec<u8> = argv.iter().flat_map(|a| a.bytes().chain([0])).collect();
    fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .filter(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

// ---------------------------------------------------------------------------
// Commands

#[test]
fn runs_a_command_and_returns_its_stdout() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let want = fs::read_to_string(sb.rootfs.join("/etc/debian_version")).unwrap();
    assert_eq!(sb.stdout(&["cat", "/etc/debian_version"]), want);
    assert!(want.starts_with("12."), "{want}");
    // Streamed to the log with the command's label.
    let lines = sb.lines.lock().unwrap().clone();
    assert!(
        lines.contains(&(
            "tests/sandbox.rs:1:1".into(),
            Stream::Stdout,
            want.trim_end().into()
        )),
        "{lines:?}"
    );
    // Working directory and stdin.
    let mut c = cmd(&["pwd"]);
    c.cwd = Some("/etc/apt".into());
    assert_eq!(sb.target.run(&c).unwrap().stdout, b"/etc/apt\n");
    let mut c = cmd(&["cat"]);
    c.stdin = Some(b"fed through stdin\n".repeat(10_000));
    assert_eq!(
        sb.target.run(&c).unwrap().stdout,
        b"fed through stdin\n".repeat(10_000)
    );
    // The command's /proc is its own PID namespace: it is PID 2 under pgimg's init.
    assert_eq!(
        sb.stdout(&["sh", "-c", "echo $$; cat /proc/1/comm"]),
        "2\npgimg-init\n"
    );
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn the_environment_is_clean_plus_the_commands_own() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let c = cmd(&["env"]).env("GOFLAGS", "-trimpath");
    let out = String::from_utf8(sb.target.run(&c).unwrap().stdout).unwrap();
    let got: BTreeSet<&str> = out.lines().collect();
    let want: BTreeSet<&str> = [
        "DEBIAN_FRONTEND=noninteractive",
        "LC_ALL=C.UTF-8",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root",
        "SYSTEMD_OFFLINE=1",
        "GOFLAGS=-trimpath",
    ]
    .into();
    assert_eq!(got, want);
    // The test process has variables of its own that must not have leaked.
    let keys: BTreeSet<&str> = want
        .iter()
        .map(|kv| kv.split('=').next().unwrap())
        .collect();
    assert!(std::env::vars().any(|(k, _)| !keys.contains(k.as_str())));
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn a_failing_command_reports_its_status_and_stderr_tail() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let e = sb
        .run(&[
            "sh",
            "-c",
            "for i in $(seq 1 2000); do echo line-$i >&2; done; exit 3",
        ])
        .unwrap_err();
    match &e {
        CommandError::Failed {
            command,
            status,
            stderr_tail,
        } => {
            assert!(command.starts_with("sh -c"), "{command}");
            assert_eq!(status, "exit status 3");
            assert!(stderr_tail.ends_with("line-2000\n"), "{stderr_tail}");
            assert!(stderr_tail.len() <= 4096, "{}", stderr_tail.len());
            assert!(
                stderr_tail.starts_with("line-"),
                "cut on a line boundary: {stderr_tail:.40}"
            );
            assert!(!stderr_tail.contains("line-1\n"));
        }
        other => panic!("expected Failed, got {other:?}"),
    }
    assert!(
        e.to_string()
            .contains("exited with exit status 3; stderr:\n"),
        "{e}"
    );
    // Killed by a signal.
    match sb.run(&["sh", "-c", "kill -KILL $$"]).unwrap_err() {
        CommandError::Failed { status, .. } => assert_eq!(status, "signal 9 (SIGKILL)"),
        other => panic!("expected Failed, got {other:?}"),
    }
    // Not in the image.
    match sb.run(&["no-such-program", "x"]).unwrap_err() {
        CommandError::Spawn { reason, .. } => assert!(
            reason.contains("no-such-program: not found in the image"),
            "{reason}"
        ),
        other => panic!("expected Spawn, got {other:?}"),
    }
    // A missing working directory.
    let mut c = cmd(&["true"]);
    c.cwd = Some("/no/such/dir".into());
    match sb.target.run(&c).unwrap_err() {
        CommandError::Spawn { reason, .. } => assert!(reason.contains("/no/such/dir"), "{reason}"),
        other => panic!("expected Spawn, got {other:?}"),
    }
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn a_daemon_started_by_a_command_dies_with_it() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    // Double fork plus setsid: the classic daemon, reparented away from the command.
    let out = sb.stdout(&[
        "sh",
        "-c",
        "(setsid sh -c 'sleep 1001.5 </dev/null >/dev/null 2>&1 &' &); sleep 0.3; \
         for p in /proc/[0-9]*; do tr '\\0' ' ' < $p/cmdline; echo; done | grep -q '^sleep 1001.5 $' \
         && echo daemon-running",
    ]);
    assert_eq!(
        out, "daemon-running\n",
        "the daemon must have been running inside"
    );
    assert_eq!(processes_with(&["sleep", "1001.5"]), Vec::<u32>::new());
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn a_timeout_kills_the_whole_namespace() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let mut c = cmd(&["sh", "-c", "sleep 1002.5 & sleep 1002.5"]);
    c.timeout = Some(Duration::from_millis(500));
    let started = Instant::now();
    match sb.target.run(&c).unwrap_err() {
        CommandError::TimedOut { after, .. } => assert_eq!(after, Duration::from_millis(500)),
        other => panic!("expected TimedOut, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(processes_with(&["sleep", "1002.5"]), Vec::<u32>::new());
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn an_interrupt_stops_the_command_and_refuses_the_next() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let flag = sb.interrupt;
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        flag.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    let started = Instant::now();
    assert!(matches!(
        sb.run(&["sh", "-c", "sleep 1003.5 & sleep 1003.5"]),
        Err(CommandError::Interrupted)
    ));
    assert!(started.elapsed() < Duration::from_secs(3));
    t.join().unwrap();
    assert_eq!(processes_with(&["sleep", "1003.5"]), Vec::<u32>::new());
    assert!(matches!(sb.run(&["true"]), Err(CommandError::Interrupted)));
    let (_rootfs, _cache) = sb.teardown();
}

/// The only test that uses the process-wide flag (every other test has its
/// own): SIGINT to the test process stops the running command. Without root
/// only the handler is checked.
#[test]
fn sigint_to_pgimg_interrupts_the_running_command() {
    interrupt::install_handler().unwrap();
    assert!(!interrupt::interrupted());
    let root = nix::unistd::geteuid().is_root();
    let sb = root.then(|| {
        namespace::private_namespace_for_calling_thread().unwrap();
        let rootfs = Rootfs::new();
        let cache = tempfile::tempdir().unwrap();
        let lines = Lines::default();
        let mut opts = options(cache.path(), &lines, private_flag());
        opts.interrupt = &interrupt::INTERRUPTED;
        let target = ChrootTarget::setup(rootfs.path(), opts).unwrap();
        (target, rootfs, cache)
    });
    let pid = nix::unistd::getpid();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(if root { 500 } else { 0 }));
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    });
    if let Some((target, rootfs, _cache)) = &sb {
        let started = Instant::now();
        let r = target.run(&cmd(&["sleep", "1005.5"]));
        assert!(matches!(r, Err(CommandError::Interrupted)), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert_eq!(processes_with(&["sleep", "1005.5"]), Vec::<u32>::new());
        // The caller tears down normally.
        target.teardown().unwrap();
        assert_no_mounts_under(rootfs.path());
    }
    t.join().unwrap();
    wait_until(
        "the handler to run",
        Duration::from_secs(2),
        interrupt::interrupted,
    );
    assert_eq!(interrupt::signal(), Some(nix::sys::signal::Signal::SIGINT));
    if !root {
        fixture::require_root("sigint_to_pgimg_interrupts_the_running_command (the command part)");
    }
}

#[test]
fn an_interactive_command_gets_pgimgs_terminal_and_reports_its_code() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    assert_eq!(
        sb.target
            .run_interactive(&cmd(&["sh", "-c", "exit 7"]))
            .unwrap(),
        7
    );
    assert_eq!(
        sb.target
            .run_interactive(&cmd(&["sh", "-c", "kill -TERM $$"]))
            .unwrap(),
        128 + 15
    );
    // It writes to pgimg's own stdout: the same pipe, when the harness runs us on one.
    let ours = fs::read_link("/proc/self/fd/1")
        .unwrap()
        .to_string_lossy()
        .into_owned();
    if ours.starts_with("pipe:") {
        let check = format!("test \"$(readlink /proc/$$/fd/1)\" = '{ours}'");
        assert_eq!(
            sb.target
                .run_interactive(&cmd(&["sh", "-c", &check]))
                .unwrap(),
            0
        );
        let check = "test \"$(readlink /proc/$$/fd/1)\" = 'pipe:[1]'";
        assert_eq!(
            sb.target
                .run_interactive(&cmd(&["sh", "-c", check]))
                .unwrap(),
            1
        );
    }
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn a_full_disk_is_reported_as_such() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|r| fs::create_dir_all(r.join("/var/tmp/small")).unwrap());
    let small = Mount::host(
        Some(Path::new("tmpfs")),
        &sb.rootfs.join("/var/tmp/small"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=256k"),
        "a small tmpfs",
    )
    .unwrap();
    let e = sb
        .run(&[
            "dd",
            "if=/dev/zero",
            "of=/var/tmp/small/f",
            "bs=64k",
            "count=100",
        ])
        .unwrap_err();
    match &e {
        CommandError::DiskFull { detail } => {
            assert!(detail.contains("No space left on device"), "{detail}")
        }
        other => panic!("expected DiskFull, got {other:?}"),
    }
    assert!(e.to_string().starts_with("the image is full: "), "{e}");
    small.close().unwrap();
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn ptys_work_inside_the_chroot() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let out = sb.stdout(&["script", "-qec", "tty; echo pty-ok", "/dev/null"]);
    assert!(out.contains("/dev/pts/0"), "{out}");
    assert!(out.contains("pty-ok"), "{out}");
    // /dev/shm is writable; /sys is read-only.
    sb.stdout(&["sh", "-c", "echo x > /dev/shm/x"]);
    assert!(sb.run(&["sh", "-c", "echo x > /sys/kernel/x"]).is_err());
    let (_rootfs, _cache) = sb.teardown();
}

// ---------------------------------------------------------------------------
// Isolation: a command reaches only the image (issue 8 §2)

/// Runs the calling test again in namespaces of its own (`unshare --uts --ipc
/// --mount --pid --fork`), so that a guard failing would rename, mount or
/// signal only inside them. Returns true in that inner run, where the test's
/// body goes; false in the outer run, after checking the inner one passed.
fn in_own_namespaces(test: &str) -> bool {
    if std::env::var("PGIMG_ISOLATED_TEST").as_deref() == Ok(test) {
        return true;
    }
    let out = Process::new("unshare")
        .args([
            "--uts",
            "--ipc",
            "--mount",
            "--pid",
            "--fork",
            "--propagation",
            "private",
        ])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env("PGIMG_ISOLATED_TEST", test)
        .output()
        .expect("running unshare (util-linux)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{test} in its own namespaces: {text}");
    assert!(
        text.contains("1 passed"),
        "{test} did not run inside: {text}"
    );
    false
}

/// Bits of a `Cap*:` line of /proc/<pid>/status.
fn cap_bits(status: &str, field: &str) -> u64 {
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {status}"));
    u64::from_str_radix(line.trim(), 16).unwrap()
}

#[test]
fn command_cannot_reach_host_files_through_proc_pid_root() {
    fixture::skip_unless_root!();
    if !in_own_namespaces("command_cannot_reach_host_files_through_proc_pid_root") {
        return;
    }
    // A host folder the test owns: nothing else is touched even if a guard fails.
    let host = tempfile::Builder::new()
        .prefix("pgimg-escape-")
        .tempdir_in("/var/tmp")
        .unwrap();
    fs::write(host.path().join("secret"), "host secret\n").unwrap();
    let sb = Sandbox::new(|_| {});
    let dir = host.path().display().to_string();
    let script = format!(
        "sleep 30 & s=$!; cd /; for p in /proc/[0-9]*; do \
           n=${{p#/proc/}}; \
           cat $p/root{dir}/secret 2>/dev/null && echo LEAK-root-$n; \
           cat $p/cwd{dir}/secret 2>/dev/null && echo LEAK-cwd-$n; \
           echo x 2>/dev/null > $p/root{dir}/escaped-$n && echo WROTE-$n; \
           for f in $p/fd/*; do test -e $f/{dir}/secret 2>/dev/null && echo LEAK-fd-$n; done; \
         done; kill $s; true"
    );
    let out = sb.stdout(&["sh", "-c", &script]);
    assert!(!out.contains("LEAK") && !out.contains("WROTE"), "{out}");
    assert_eq!(
        fs::read_dir(host.path()).unwrap().count(),
        1,
        "a command created a file on the host"
    );
    // Only the image's mounts are in the command's namespace: none of the
    // host's mount points, and none is the rootfs seen from the host.
    let mountinfo = sb.stdout(&["cat", "/proc/self/mountinfo"]);
    let points: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .collect();
    let rootfs = sb.rootfs.path().display().to_string();
    assert!(
        points.iter().all(|p| !p.starts_with(&rootfs)) && points.len() < 32,
        "{mountinfo}"
    );
    assert_eq!(points.first(), Some(&"/"), "{mountinfo}");
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn command_cannot_rename_the_host() {
    fixture::skip_unless_root!();
    if !in_own_namespaces("command_cannot_rename_the_host") {
        return;
    }
    let before = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let sb = Sandbox::new(|_| {});
    // setdomainname(2): 171 on x86_64, 162 on arm64.
    let setdomainname = if cfg!(target_arch = "aarch64") {
        162
    } else {
        171
    };
    let _ = sb.run(&["hostname", "pgimg-renamed"]);
    let _ = sb.run(&[
        "perl",
        "-e",
        &format!("syscall({setdomainname}, 'pgimg-renamed', 13)"),
    ]);
    assert_eq!(
        fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        before
    );
    let domain = fs::read_to_string("/proc/sys/kernel/domainname").unwrap();
    assert_ne!(domain.trim(), "pgimg-renamed");
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn command_cannot_see_host_ipc_objects() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let id = unsafe { libc::shmget(libc::IPC_PRIVATE, 4096, libc::IPC_CREAT | 0o600) };
    assert!(id >= 0, "shmget: {}", std::io::Error::last_os_error());
    let listed = sb.stdout(&["cat", "/proc/sysvipc/shm"]);
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    let ids: Vec<&str> = listed
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert!(!ids.contains(&id.to_string().as_str()), "{listed}");
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn command_capabilities_exclude_what_package_installs_never_need() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let status = sb.stdout(&["cat", "/proc/self/status"]);
    // CAP_DAC_READ_SEARCH 2, CAP_NET_ADMIN 12, CAP_SYS_MODULE 16, CAP_SYS_RAWIO 17,
    // CAP_SYS_PTRACE 19, CAP_SYS_ADMIN 21, CAP_SYS_BOOT 22, CAP_SYS_NICE 23,
    // CAP_SYS_TIME 25, CAP_MKNOD 27, CAP_MAC_ADMIN 33, CAP_SYSLOG 34, CAP_WAKE_ALARM 35, CAP_BPF 39.
    let dropped: u64 = [2, 12, 16, 17, 19, 21, 22, 23, 25, 27, 33, 34, 35, 39]
        .iter()
        .fold(0, |m, c| m | 1 << c);
    // CAP_CHOWN 0, CAP_DAC_OVERRIDE 1, CAP_FOWNER 3, CAP_SETGID 6, CAP_SETUID 7.
    let needed: u64 = [0, 1, 3, 6, 7].iter().fold(0, |m, c| m | 1 << c);
    for field in ["CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"] {
        let bits = cap_bits(&status, field);
        assert_eq!(bits & dropped, 0, "{field} {bits:#x}");
        if field != "CapInh" && field != "CapAmb" {
            assert_eq!(bits & needed, needed, "{field} {bits:#x}");
        }
    }
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn command_cannot_write_kernel_settings_or_remount_them() {
    fixture::skip_unless_root!();
    if !in_own_namespaces("command_cannot_write_kernel_settings_or_remount_them") {
        return;
    }
    let sb = Sandbox::new(|_| {});
    // Each attempt writes the value already there (or nothing at all), so a
    // failing guard changes nothing on the host.
    for (what, script) in [
        (
            "sysctl",
            "v=$(cat /proc/sys/vm/swappiness) && echo \"$v\" > /proc/sys/vm/swappiness",
        ),
        ("sysrq", ": > /proc/sysrq-trigger"),
        ("sysfs", ": > /sys/kernel/uevent_helper"),
        ("remount", "mount -o remount,rw /proc/sys"),
        (
            "fresh proc",
            "mkdir -p /tmp/p && mount -t proc proc /tmp/p && \
             v=$(cat /tmp/p/sys/vm/swappiness) && echo \"$v\" > /tmp/p/sys/vm/swappiness",
        ),
        ("unmount the read-only bind", "umount /proc/sys && v=$(cat /proc/sys/vm/swappiness) && echo \"$v\" > /proc/sys/vm/swappiness"),
        ("new mount namespace", "unshare -m true"),
    ] {
        let r = sb.run(&["sh", "-c", script]);
        assert!(
            matches!(r, Err(CommandError::Failed { .. })),
            "{what}: `{script}` was allowed"
        );
    }
    // Kernel memory, the kernel log and the machine's keys are /dev/null
    // (checked with stat: reading /proc/kmsg would consume the host's log).
    let unmasked = sb.stdout(&[
        "sh",
        "-c",
        "for f in /proc/keys /proc/kmsg /proc/kcore /proc/timer_list /proc/kallsyms; do \
           [ -e $f ] || continue; \
           [ \"$(stat -c %F:%t:%T $f)\" = 'character special file:1:3' ] || echo UNMASKED $f; \
         done",
    ]);
    assert_eq!(unmasked, "");
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn command_cannot_open_or_make_device_nodes() {
    fixture::skip_unless_root!();
    // A node a base image might ship; /dev/null's numbers, so opening it is harmless.
    let sb = Sandbox::new(|r| {
        nix::sys::stat::mknod(
            &r.join("/root/planted-node"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 3),
        )
        .unwrap()
    });
    assert!(sb.run(&["sh", "-c", ": < /root/planted-node"]).is_err());
    assert!(sb.run(&["mknod", "/tmp/made-node", "c", "1", "3"]).is_err());
    // The sandbox's own /dev still works.
    sb.stdout(&[
        "sh",
        "-c",
        "echo x > /dev/null; head -c 1 /dev/zero >/dev/null",
    ]);
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn command_holds_no_descriptor_to_a_host_file() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    // Every descriptor of the shell: the image's /dev/null (same device and
    // inode as the in-image path) or a pipe.
    let out = sb.stdout(&[
        "sh",
        "-c",
        "null=$(stat -L -c %d:%i /dev/null); for f in /proc/$$/fd/*; do \
           t=$(stat -L -c %F:%d:%i $f); \
           case $t in fifo:*) ;; \"character special file:$null\") ;; *) echo \"HOST $f $t\";; esac; \
         done",
    ]);
    assert_eq!(out, "", "{out}");
    let (_rootfs, _cache) = sb.teardown();
}

#[test]
fn command_cannot_use_the_kernel_keyring() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    // keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_USER_KEYRING, 0): root's user
    // keyring is the host root's. 250 on x86_64, 219 on arm64.
    let keyctl = if cfg!(target_arch = "aarch64") {
        219
    } else {
        250
    };
    let out = sb.stdout(&[
        "perl",
        "-e",
        &format!("my $r = syscall({keyctl}, 0, -4, 0); print $r, ' ', $!+0, qq(\\n)"),
    ]);
    assert_eq!(out, format!("-1 {}\n", libc::EPERM), "{out}");
    let (_rootfs, _cache) = sb.teardown();
}

// ---------------------------------------------------------------------------
// What setup changes in the image, and its exact restoration

/// The state of one in-image path, read on the host after teardown.
#[derive(Debug, PartialEq, Eq)]
enum HostState {
    Absent,
    Link(PathBuf),
    File(Vec<u8>, u32),
}

fn host_state(p: &Path) -> HostState {
    match fs::symlink_metadata(p) {
        Err(_) => HostState::Absent,
        Ok(m) if m.file_type().is_symlink() => HostState::Link(fs::read_link(p).unwrap()),
        Ok(m) => HostState::File(fs::read(p).unwrap(), m.permissions().mode() & 0o7777),
    }
}

#[test]
fn resolv_conf_and_policy_rc_d_are_replaced_during_the_build_and_restored_exactly() {
    fixture::skip_unless_root!();
    let host_dns = fs::read_to_string("/etc/resolv.conf").unwrap();
    type Seed = fn(&Path);
    let cases: [(&str, Seed, Seed); 3] = [
        (
            "dangling resolved link, no policy-rc.d",
            |p| {
                let _ = fs::remove_file(p);
                std::os::unix::fs::symlink("/run/systemd/resolve/stub-resolv.conf", p).unwrap();
            },
            |p| {
                let _ = fs::remove_file(p);
            },
        ),
        (
            "private file, existing policy-rc.d",
            |p| {
                fs::write(p, "nameserver 192.0.2.1\n").unwrap();
                fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
            },
            |p| {
                fs::write(p, "#!/bin/sh\nexit 0\n").unwrap();
                fs::set_permissions(p, fs::Permissions::from_mode(0o700)).unwrap();
            },
        ),
        (
            "absent, policy-rc.d a link",
            |p| {
                let _ = fs::remove_file(p);
            },
            |p| {
                let _ = fs::remove_file(p);
                std::os::unix::fs::symlink("/bin/true", p).unwrap();
            },
        ),
    ];
    namespace::private_namespace_for_calling_thread().unwrap();
    for (name, seed_resolv, seed_policy) in cases {
        let rootfs = Rootfs::new();
        seed_resolv(&rootfs.join("/etc/resolv.conf"));
        seed_policy(&rootfs.join("/usr/sbin/policy-rc.d"));
        let before = (
            host_state(&rootfs.join("/etc/resolv.conf")),
            host_state(&rootfs.join("/usr/sbin/policy-rc.d")),
        );
        let lines = Lines::default();
        let cache = tempfile::tempdir().unwrap();
        let target =
            ChrootTarget::setup(rootfs.path(), options(cache.path(), &lines, private_flag()))
                .unwrap();
        let out = target.run(&cmd(&["cat", "/etc/resolv.conf"])).unwrap();
        assert_eq!(String::from_utf8(out.stdout).unwrap(), host_dns, "{name}");
        let out = target
            .run(&cmd(&[
                "sh",
                "-c",
                "/usr/sbin/policy-rc.d postgresql start; echo $?",
            ]))
            .unwrap();
        assert_eq!(out.stdout, b"101\n", "{name}");
        target.teardown().unwrap();
        assert_no_mounts_under(rootfs.path());
        let after = (
            host_state(&rootfs.join("/etc/resolv.conf")),
            host_state(&rootfs.join("/usr/sbin/policy-rc.d")),
        );
        assert_eq!(after, before, "{name}");
    }
}

#[test]
fn a_resolv_conf_the_build_replaced_is_kept() {
    fixture::skip_unless_root!();
    let sb =
        Sandbox::new(|r| fs::write(r.join("/etc/resolv.conf"), "nameserver 192.0.2.1\n").unwrap());
    sb.stdout(&[
        "ln",
        "-sf",
        "../run/systemd/resolve/stub-resolv.conf",
        "/etc/resolv.conf",
    ]);
    let (rootfs, _cache) = sb.teardown();
    assert_eq!(
        host_state(&rootfs.join("/etc/resolv.conf")),
        HostState::Link("../run/systemd/resolve/stub-resolv.conf".into())
    );
    assert_eq!(
        host_state(&rootfs.join("/usr/sbin/policy-rc.d")),
        HostState::Absent
    );
}

/// Debian's policy-rcd-declarative provides /usr/sbin/policy-rc.d through
/// update-alternatives, which refuses to replace a regular file: pgimg's own
/// must give way, and the package's link must be in the image afterwards.
#[test]
fn a_policy_rc_d_a_package_provides_through_alternatives_survives() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    sb.stdout(&["apt-get", "update"]);
    let install = cmd(&[
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "policy-rcd-declarative",
        "policy-rcd-declarative-allow-all",
    ])
    .cache("apt-archives", "/var/cache/apt/archives");
    sb.target.run(&install).unwrap();
    let (rootfs, _cache) = sb.teardown();
    assert_eq!(
        host_state(&rootfs.join("/usr/sbin/policy-rc.d")),
        HostState::Link("/etc/alternatives/policy-rc.d".into())
    );
    let alternative = fs::read_link(rootfs.join("/etc/alternatives/policy-rc.d")).unwrap();
    let provided = rootfs.join(alternative.to_str().unwrap());
    assert!(provided.is_file(), "{}", provided.display());
    assert!(!rootfs.join("/run/pgimg").exists());
}

#[test]
fn run_is_a_tmpfs_left_out_of_the_image() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    sb.stdout(&[
        "sh",
        "-c",
        "echo x > /run/marker; mkdir -p /run/postgresql; test -d /run/lock",
    ]);
    let (rootfs, _cache) = sb.teardown();
    assert!(!rootfs.join("/run/marker").exists());
    assert!(!rootfs.join("/run/postgresql").exists());
}

#[test]
fn a_failed_setup_undoes_itself() {
    fixture::skip_unless_root!();
    namespace::private_namespace_for_calling_thread().unwrap();
    let rootfs = Rootfs::new();
    // A directory where resolv.conf should be: setup refuses to replace it,
    // after having mounted everything and written policy-rc.d.
    let resolv = rootfs.join("/etc/resolv.conf");
    fs::remove_file(&resolv).unwrap();
    fs::create_dir(&resolv).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let e = ChrootTarget::setup(
        rootfs.path(),
        options(cache.path(), &Lines::default(), private_flag()),
    )
    .unwrap_err();
    assert!(matches!(e, SetupError::File { .. }), "{e:?}");
    assert!(e.to_string().contains("resolv.conf"), "{e}");
    assert_no_mounts_under(rootfs.path());
    assert_eq!(
        host_state(&rootfs.join("/usr/sbin/policy-rc.d")),
        HostState::Absent
    );
    assert!(resolv.is_dir());
}

// ---------------------------------------------------------------------------
// Host caches

#[test]
fn apt_update_and_downloads_go_through_the_host_cache() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    sb.stdout(&["apt-get", "update"]);
    // The apt primitive also asks for the same cache per command; both binds coexist.
    let c = cmd(&[
        "apt-get",
        "install",
        "-y",
        "--download-only",
        "--no-install-recommends",
        "hello",
    ])
    .cache("apt-archives", "/var/cache/apt/archives");
    sb.target.run(&c).unwrap();
    let debs = |dir: &Path| -> Vec<String> {
        fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("hello_") && n.ends_with(".deb"))
                    .collect()
            })
            .unwrap_or_default()
    };
    // During the build the package is in the build's own folder of the
    // cache (so builds sharing the cache never share apt's lock) ...
    let builds: Vec<PathBuf> = fs::read_dir(sb.cache.path().join("apt-archives.builds"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(builds.len(), 1, "{builds:?}");
    assert_eq!(debs(&builds[0]).len(), 1, "{:?}", builds[0]);
    assert!(builds[0].join("partial").is_dir());
    // ... and in the shared cache once the build lets it go.
    let (rootfs, cache) = sb.teardown();
    assert_eq!(
        debs(&rootfs.join("/var/cache/apt/archives")),
        Vec::<String>::new()
    );
    assert_eq!(debs(&cache.path().join("apt-archives")).len(), 1);
    assert!(!builds[0].exists(), "the build's folder is removed");
}

/// With the host's apt archives bound into the image, `remove` of a folder
/// above it refuses and deletes nothing, in the image or in the host cache.
#[test]
fn remove_never_reaches_into_the_bound_apt_cache() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let cached = sb.cache.path().join("apt-archives/hello_2.10-3_amd64.deb");
    fs::write(&cached, b"a cached package").unwrap();
    let root = sb.target.root();
    for p in ["/var/cache/apt/archives", "/var/cache/apt", "/var/cache"] {
        let e = root.remove(p).unwrap_err();
        assert!(e.to_string().contains("mount point"), "{p}: {e}");
    }
    assert!(cached.exists());
    assert!(sb.rootfs.join("/var/cache/debconf").exists());
    let (_rootfs, cache) = sb.teardown();
    assert!(cache
        .path()
        .join("apt-archives/hello_2.10-3_amd64.deb")
        .exists());
}

#[test]
fn per_command_caches_are_bound_for_that_command_only() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|_| {});
    let c = cmd(&["sh", "-c", "echo built > /root/.cache/go-build/entry"])
        .cache("go-build", "/root/.cache/go-build");
    sb.target.run(&c).unwrap();
    assert_eq!(
        fs::read_to_string(sb.cache.path().join("go-build/entry")).unwrap(),
        "built\n"
    );
    // The next command without the cache sees the image's own (empty) directory.
    assert_eq!(sb.stdout(&["ls", "-A", "/root/.cache/go-build"]), "");
    // A second command with it sees what the first left.
    let c = cmd(&["cat", "/root/.cache/go-build/entry"]).cache("go-build", "/root/.cache/go-build");
    assert_eq!(sb.target.run(&c).unwrap().stdout, b"built\n");
    // Names cannot climb out of the cache directory.
    let bad = cmd(&["true"]).cache("../etc", "/x");
    assert!(matches!(
        sb.target.run(&bad),
        Err(CommandError::Spawn { .. })
    ));
    let (rootfs, _cache) = sb.teardown();
    // The mount point pgimg made for the cache is borrowed: it goes again.
    assert!(!rootfs.join("/root/.cache").exists());
}

// ---------------------------------------------------------------------------
// Finalize

#[test]
fn finalize_empties_what_it_should() {
    fixture::skip_unless_root!();
    let sb = Sandbox::new(|r| {
        let w = |p: &str, content: &str| {
            let p = r.join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        };
        for k in [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "ssh_host_rsa_key",
        ] {
            w(&format!("/etc/ssh/{k}"), "KEY");
        }
        w("/etc/ssh/sshd_config", "PermitRootLogin no\n");
        let shadow = fs::read_to_string(r.join("/etc/shadow")).unwrap();
        w(
            "/etc/shadow",
            &shadow.replacen("root:*:", "root:$6$salt$hash:", 1),
        );
        w("/etc/machine-id", "0123456789abcdef0123456789abcdef\n");
        w(
            "/var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease",
            "x",
        );
        w("/var/lib/apt/lists/partial/stale", "x");
        w("/var/log/app.log", "hello\n");
        w("/var/log/app.log.1.gz", "old");
        w("/root/.bash_history", "ls\n");
        w("/root/.lesshst", ".less-history-file:\n");
        w("/root/.cache/pip/x", "x");
        w("/tmp/build/x", "x");
        w("/var/tmp/y", "y");
        w("/var/lib/cloud/instance/obj.pkl", "x");
        w("/var/lib/cloud/seed/nocloud/user-data", "#cloud-config\n");
    });
    let shadow_mode = fs::metadata(sb.rootfs.join("/etc/shadow")).unwrap().mode() & 0o7777;
    // Something of the host's own cache that must survive `apt-get clean`.
    let host_deb = sb.cache.path().join("apt-archives/keep_1.0_all.deb");
    fs::write(&host_deb, "deb").unwrap();

    // Nothing is deleted while a foreign mount sits inside the image.
    fs::create_dir_all(sb.rootfs.join("/tmp/mnt")).unwrap();
    let foreign = Mount::host(
        Some(Path::new("tmpfs")),
        &sb.rootfs.join("/tmp/mnt"),
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        None,
        "a foreign tmpfs",
    )
    .unwrap();
    fs::write(sb.rootfs.join("/tmp/mnt/precious"), "x").unwrap();
    let e = finalize(&sb.target, &FinalizeOptions::default()).unwrap_err();
    assert!(e.to_string().contains("/tmp/mnt"), "{e}");
    assert!(sb.rootfs.join("/tmp/mnt/precious").exists());
    assert!(sb.rootfs.join("/root/.bash_history").exists());
    foreign.close().unwrap();

    // An item switched off is left alone.
    let off = FinalizeOptions {
        ssh_host_keys: false,
        ..FinalizeOptions::default()
    };
    let report = finalize(&sb.target, &off).unwrap();
    eprintln!("{report}");
    assert!(report.item("ssh_host_keys").unwrap().skipped.is_some());
    assert!(sb.rootfs.join("/etc/ssh/ssh_host_rsa_key").exists());
    let report = finalize(&sb.target, &FinalizeOptions::default()).unwrap();
    eprintln!("{report}");
    assert_eq!(report.item("ssh_host_keys").unwrap().removed, 3);

    let (rootfs, cache) = sb.teardown();
    let p = |s: &str| rootfs.join(s);
    let names = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(p(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names("/etc/ssh"), ["sshd_config"]);
    let shadow = fs::read_to_string(p("/etc/shadow")).unwrap();
    assert!(shadow.starts_with("root::"), "{shadow}");
    assert_eq!(
        fs::metadata(p("/etc/shadow")).unwrap().mode() & 0o7777,
        shadow_mode
    );
    assert_eq!(fs::metadata(p("/etc/machine-id")).unwrap().len(), 0);
    assert!(
        names("/var/lib/apt/lists")
            .iter()
            .all(|n| n == "partial" || n == "lock"),
        "{:?}",
        names("/var/lib/apt/lists")
    );
    assert_eq!(
        fs::read_dir(p("/var/lib/apt/lists/partial"))
            .unwrap()
            .count(),
        0
    );
    // debootstrap left its .debs in the image's archives: gone, the structure kept.
    assert!(names("/var/cache/apt/archives")
        .iter()
        .all(|n| n == "partial" || n == "lock"));
    assert!(p("/var/cache/apt/archives/partial").is_dir());
    assert!(
        cache.path().join("apt-archives/keep_1.0_all.deb").exists(),
        "apt-get clean reached the host cache"
    );
    assert_eq!(fs::metadata(p("/var/log/app.log")).unwrap().len(), 0);
    assert!(!p("/var/log/app.log.1.gz").exists());
    assert!(p("/var/log/apt").is_dir());
    for gone in [
        "/root/.bash_history",
        "/root/.lesshst",
        "/root/.cache",
        "/var/lib/cloud/instance",
    ] {
        assert!(!p(gone).exists(), "{gone}");
    }
    assert!(p("/var/lib/cloud/seed/nocloud/user-data").exists());
    assert_eq!(names("/tmp"), Vec::<String>::new());
    assert_eq!(names("/var/tmp"), Vec::<String>::new());
    assert_eq!(fs::metadata(p("/tmp")).unwrap().mode() & 0o7777, 0o1777);
}

// ---------------------------------------------------------------------------
// SIGKILL

/// Runs in a child process of `sigkill_leaves_no_mount_loop_device_or_process`:
/// sets a sandbox up, loop-mounts a filesystem in it, and blocks in a command
/// until it is killed.
#[test]
#[ignore = "helper process of sigkill_leaves_no_mount_loop_device_or_process"]
fn sigkill_helper_child() {
    let Some(root) = std::env::var_os("PGIMG_SIGKILL_ROOT").map(PathBuf::from) else {
        eprintln!("sigkill_helper_child only runs as the helper process of the sigkill test");
        return;
    };
    let img = std::env::var("PGIMG_SIGKILL_IMG").unwrap();
    namespace::private_namespace_for_calling_thread().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let target = ChrootTarget::setup(
        &root,
        options(cache.path(), &Lines::default(), private_flag()),
    )
    .unwrap();
    fs::create_dir_all(root.join("mnt/loop")).unwrap();
    let status = Process::new("mount")
        .args(["-o", "loop", &img])
        .arg(root.join("mnt/loop"))
        .status()
        .unwrap();
    assert!(status.success());
    target.run(&cmd(&["sleep", "1004.5"])).unwrap();
    unreachable!("killed before the sleep ends");
}

fn loops_of(img: &Path) -> String {
    let out = Process::new("losetup").arg("-j").arg(img).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigkill_leaves_no_mount_loop_device_or_process() {
    fixture::skip_unless_root!();
    let rootfs = Rootfs::new();
    let img = rootfs.path().with_extension("ext4");
    let _img_guard = FileGuard(img.clone());
    let ok = Process::new("truncate")
        .args(["-s", "16M"])
        .arg(&img)
        .status()
        .unwrap()
        .success()
        && Process::new("mkfs.ext4")
            .args(["-q", "-F"])
            .arg(&img)
            .status()
            .unwrap()
            .success();
    assert!(ok, "making a small ext4 image");
    let mut child = Process::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "sigkill_helper_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PGIMG_SIGKILL_ROOT", rootfs.path())
        .env("PGIMG_SIGKILL_IMG", &img)
        .spawn()
        .unwrap();
    wait_until(
        "the helper's command to run",
        Duration::from_secs(30),
        || !processes_with(&["sleep", "1004.5"]).is_empty(),
    );
    assert!(
        !loops_of(&img).is_empty(),
        "the helper's loop device is attached"
    );
    // The helper's mounts are in its private namespace, not the host's.
    assert_eq!(
        mounts_under(rootfs.path(), "/proc/self/mountinfo"),
        Vec::<String>::new()
    );
    let helper_mounts = mounts_under(
        rootfs.path(),
        &format!(
            "/proc/{}/task/{}/mountinfo",
            child.id(),
            helper_thread(child.id())
        ),
    );
    assert!(helper_mounts.len() >= 6, "{helper_mounts:?}");

    child.kill().unwrap();
    child.wait().unwrap();
    wait_until(
        "the command to die with the namespace",
        Duration::from_secs(5),
        || processes_with(&["sleep", "1004.5"]).is_empty(),
    );
    wait_until(
        "the loop device to auto-clear",
        Duration::from_secs(5),
        || loops_of(&img).is_empty(),
    );
    assert_no_mounts_under(rootfs.path());
}

/// The helper's test thread (the one that entered the namespace): its task
/// with the most mounts.
fn helper_thread(pid: u32) -> u32 {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max_by_key(|tid| {
            fs::read_to_string(format!("/proc/{pid}/task/{tid}/mountinfo"))
                .map(|m| m.lines().count())
                .unwrap_or(0)
        })
        .unwrap()
}

/// Removes a file when dropped.
struct FileGuard(PathBuf);

impl Drop for FileGuard {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Cost

#[test]
fn overhead_of_one_command() {
    fixture::skip_unless_root!();
    namespace::private_namespace_for_calling_thread().unwrap();
    let rootfs = Rootfs::new();
    let cache = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let target = ChrootTarget::setup(
        rootfs.path(),
        options(cache.path(), &Lines::default(), private_flag()),
    )
    .unwrap();
    let setup = started.elapsed();
    let started = Instant::now();
    target.teardown().unwrap();
    loud(&format!(
        "sandbox setup: {setup:?}, teardown: {:?}",
        started.elapsed()
    ));
    drop(target);
    drop(rootfs);

    let sb = Sandbox::new(|_| {});
    sb.run(&["true"]).unwrap();
    let n = 50;
    let started = Instant::now();
    for _ in 0..n {
        sb.run(&["true"]).unwrap();
    }
    let each = started.elapsed() / n;
    loud(&format!(
        "sandbox overhead: {each:?} per `true` (mean of {n})"
    ));
    assert!(each < Duration::from_millis(500), "{each:?}");
    let (_rootfs, _cache) = sb.teardown();
}
