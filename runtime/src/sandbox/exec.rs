//! Runs one command chrooted in the image, in new PID and mount namespaces, and waits for it.
//!
//! Process tree, for each command:
//!
//! ```text
//! pgimg (calling thread) ── clone(CLONE_NEWPID | CLONE_NEWNS) ──> init (PID 1, not chrooted)
//!                                                                  └─ fork ─> command (PID 2): chroot, mount /proc + caches, exec
//! ```
//!
//! * Everything the command starts lives in the PID namespace; when init exits
//!   (right after the command does) the kernel kills every other process in it,
//!   so a double-forked daemon cannot outlive the command. Init dies with
//!   SIGKILL from us on timeout or interrupt (a namespace's PID 1 ignores
//!   SIGTERM), and with SIGKILL through `PR_SET_PDEATHSIG` when the pgimg
//!   thread that started it dies.
//! * The command's own mount namespace holds a fresh `/proc` for its PID
//!   namespace and the command's cache binds; both vanish with it, whatever
//!   happens to pgimg.
//! * Init stays outside the chroot so `/proc/1/root` differs from `/` inside:
//!   systemd's tools then know they run in a chroot and act offline.
//!
//! Why `clone` and not re-executing `/proc/self/exe` in a hidden mode: the
//! target works the same from the `pgimg` binary and from the test harness
//! (whose executable is not pgimg), with no extra process image to load. The
//! price is the rule for the code between `clone` and `execve`: the parent is
//! multi-threaded, so the child may hold copies of locks other threads held
//! (the allocator's). It therefore only makes raw system calls on data
//! prepared before the clone ([`Plan`]): no allocation, no formatting, no
//! panics, no glibc `fork` (whose atfork handlers take locks).

use std::ffi::CString;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use libc::{c_char, c_int, c_void};
use nix::errno::Errno;
use nix::fcntl::OFlag;

/// What the command may read and where its output goes.
pub(crate) enum Stdio {
    /// Output through pipes (streamed and captured); stdin from these bytes,
    /// or `/dev/null`. The command gets a session of its own, so a Ctrl-C on
    /// pgimg's terminal reaches pgimg (which then stops it), not the command.
    Piped { stdin: Option<Vec<u8>> },
    /// pgimg's own stdin, stdout and stderr, and its terminal (`pgimg shell`).
    Inherit,
}

/// Everything needed to start one command.
pub(crate) struct Spec {
    /// The image root on the host.
    pub root: PathBuf,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// In-image working directory.
    pub cwd: String,
    /// Host directory → in-image mountpoint (which must exist), bound for this command only.
    pub caches: Vec<(PathBuf, String)>,
    pub stdio: Stdio,
    pub timeout: Option<Duration>,
}

/// Which output stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// How the command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Ending {
    Exited(i32),
    Signaled(i32),
    TimedOut(Duration),
    Interrupted,
}

/// A finished command.
pub(crate) struct Finished {
    pub ending: Ending,
    pub stdout: Vec<u8>,
    /// The last bytes of stderr (at least [`STDERR_KEEP`] when there were that many).
    pub stderr: Vec<u8>,
}

/// How much of stderr is kept for the error message.
pub(crate) const STDERR_KEEP: usize = 4096;

/// The command could not be started; `reason` says which step failed.
#[derive(Debug)]
pub(crate) struct SpawnError(pub String);

// Steps the child reports on failure, through the error pipe (fd 3).
const STEP_FORK: u32 = 1;
const STEP_SETSID: u32 = 2;
const STEP_OPEN_CACHE: u32 = 3;
const STEP_CHROOT: u32 = 4;
const STEP_CHDIR_ROOT: u32 = 5;
const STEP_MOUNT_PROC: u32 = 6;
const STEP_BIND_CACHE: u32 = 7;
const STEP_CHDIR_CWD: u32 = 8;
const STEP_EXEC: u32 = 9;
const STEP_FDS: u32 = 10;
const STEP_PRIVATE: u32 = 11;

/// Fixed descriptor numbers in the child.
const FD_ERR: c_int = 3;
const FD_STATUS: c_int = 4;

/// Stack for init (which also forks the command from it); the child copies it.
const CHILD_STACK: usize = 256 * 1024;

/// The command's whole launch, prepared before `clone` so the child only reads it.
struct Plan {
    root: CString,
    slash: CString,
    proc_dir: CString,
    proc_fs: CString,
    cwd: CString,
    init_name: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    candidates: Vec<CString>,
    cache_sources: Vec<CString>,
    cache_targets: Vec<CString>,
    /// Sources for the child's fds 0, 1, 2, 3 (error pipe) and 4 (status pipe).
    fds: [c_int; 5],
    go: c_int,
    new_session: bool,
}

fn cstring(what: &str, s: &[u8]) -> Result<CString, SpawnError> {
    CString::new(s).map_err(|_| SpawnError(format!("{what} contains a NUL byte")))
}

/// Where `argv0` is looked for, in order, as `execvp` would with `path`.
fn exec_candidates(argv0: &str, path: &str) -> Vec<String> {
    if argv0.contains('/') {
        return vec![argv0.to_string()];
    }
    path.split(':')
        .map(|dir| {
            let dir = if dir.is_empty() {
                "."
            } else {
                dir.trim_end_matches('/')
            };
            format!("{dir}/{argv0}")
        })
        .collect()
}

impl Plan {
    fn new(spec: &Spec, fds: [c_int; 5], go: c_int) -> Result<Plan, SpawnError> {
        let argv0 = spec
            .argv
            .first()
            .ok_or_else(|| SpawnError("empty argv".into()))?;
        let argv = spec
            .argv
            .iter()
            .map(|a| cstring("an argument", a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let env = spec
            .env
            .iter()
            .map(|(k, v)| cstring("an environment variable", format!("{k}={v}").as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let path = spec
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or("/usr/bin:/bin");
        let candidates = exec_candidates(argv0, path)
            .iter()
            .map(|c| cstring("the program path", c.as_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const c_char> = env.iter().map(|a| a.as_ptr()).collect();
        env_ptrs.push(std::ptr::null());
        Ok(Plan {
            root: cstring("the root path", spec.root.as_os_str().as_bytes())?,
            slash: c"/".to_owned(),
            proc_dir: c"/proc".to_owned(),
            proc_fs: c"proc".to_owned(),
            cwd: cstring("the working directory", spec.cwd.as_bytes())?,
            init_name: c"pgimg-init".to_owned(),
            _argv: argv,
            argv_ptrs,
            _env: env,
            env_ptrs,
            candidates,
            cache_sources: spec
                .caches
                .iter()
                .map(|(h, _)| cstring("a cache path", h.as_os_str().as_bytes()))
                .collect::<Result<_, _>>()?,
            cache_targets: spec
                .caches
                .iter()
                .map(|(_, t)| cstring("a cache mountpoint", t.as_bytes()))
                .collect::<Result<_, _>>()?,
            fds,
            go,
            new_session: matches!(spec.stdio, Stdio::Piped { .. }),
        })
    }
}

fn errno() -> c_int {
    Errno::last_raw()
}

/// Reports a failed step to the parent and exits. Async-signal-safe.
unsafe fn fail(step: u32, index: u32) -> ! {
    let e = errno();
    let mut buf = [0u8; 12];
    buf[..4].copy_from_slice(&step.to_ne_bytes());
    buf[4..8].copy_from_slice(&index.to_ne_bytes());
    buf[8..].copy_from_slice(&e.to_ne_bytes());
    libc::write(FD_ERR, buf.as_ptr() as *const c_void, buf.len());
    libc::_exit(127)
}

/// `/proc/self/fd/<fd>` into `buf`, NUL-terminated, without allocating.
fn fd_path(fd: c_int, buf: &mut [u8; 32]) -> *const c_char {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd as u32;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    buf.as_ptr() as *const c_char
}

/// PID 1 of the command's namespace. Runs in the cloned child: raw system calls only.
extern "C" fn init_main(arg: *mut c_void) -> c_int {
    // SAFETY: `arg` is the parent's `Plan`, copied into this address space by clone.
    let plan = unsafe { &*(arg as *const Plan) };
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        );
        // The parent writes one byte once clone returned. If it died before our
        // prctl took effect, its end is closed and the read returns 0: stop.
        let mut byte = 0u8;
        loop {
            let r = libc::read(plan.go, &mut byte as *mut u8 as *mut c_void, 1);
            if r == 1 {
                break;
            }
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            libc::_exit(126);
        }
        // Place the five descriptors at 0..=4: first copy each above every
        // source and above 4 (so no copy lands on a slot still to be filled),
        // then move them down, then close everything else.
        let base = plan.fds.iter().copied().max().unwrap_or(0).max(4) + 1;
        let mut high = [0 as c_int; 5];
        for (i, fd) in plan.fds.iter().enumerate() {
            high[i] = libc::fcntl(*fd, libc::F_DUPFD, base);
            if high[i] < 0 {
                libc::_exit(125);
            }
        }
        for (i, fd) in high.iter().enumerate() {
            if libc::dup2(*fd, i as c_int) < 0 {
                libc::_exit(125);
            }
        }
        if libc::syscall(
            libc::SYS_close_range,
            5 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        ) < 0
        {
            fail(STEP_FDS, 0);
        }
        // Neither pipe may stay open in the command: exec closes them.
        libc::fcntl(FD_ERR, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::fcntl(FD_STATUS, libc::F_SETFD, libc::FD_CLOEXEC);
        libc::prctl(
            libc::PR_SET_NAME,
            plan.init_name.as_ptr() as libc::c_ulong,
            0,
            0,
            0,
        );
        // The mount namespace is a copy of the build's; make sure nothing
        // mounted here propagates back, whatever the build's propagation is.
        if libc::mount(
            std::ptr::null(),
            plan.slash.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            fail(STEP_PRIVATE, 0);
        }
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
        // A raw fork: glibc's fork() would run atfork handlers and take locks.
        let pid = libc::syscall(
            libc::SYS_clone,
            libc::SIGCHLD as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        );
        if pid < 0 {
            fail(STEP_FORK, 0);
        }
        if pid == 0 {
            command_main(plan);
        }
        libc::close(FD_ERR);
        libc::close(0);
        libc::close(1);
        libc::close(2);
        loop {
            let mut status: c_int = 0;
            let r = libc::waitpid(-1, &mut status, 0);
            if r as libc::c_long == pid {
                libc::write(FD_STATUS, &status as *const c_int as *const c_void, 4);
                libc::_exit(0);
            }
            if r < 0 && errno() != libc::EINTR {
                libc::_exit(124);
            }
        }
    }
}

/// The command process: chroot, mounts, cwd, exec. Raw system calls only.
unsafe fn command_main(plan: &Plan) -> ! {
    if plan.new_session && libc::setsid() < 0 {
        fail(STEP_SETSID, 0);
    }
    // Cache directories are host paths: open them before leaving the host's `/`.
    // At most 64 caches per command (checked by the parent).
    let mut cache_fds = [-1 as c_int; 64];
    for (i, src) in plan.cache_sources.iter().enumerate() {
        cache_fds[i] = libc::open(
            src.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if cache_fds[i] < 0 {
            fail(STEP_OPEN_CACHE, i as u32);
        }
    }
    if libc::chroot(plan.root.as_ptr()) != 0 {
        fail(STEP_CHROOT, 0);
    }
    if libc::chdir(plan.slash.as_ptr()) != 0 {
        fail(STEP_CHDIR_ROOT, 0);
    }
    // From here paths resolve inside the image: its absolute links stay in it.
    if libc::mount(
        plan.proc_fs.as_ptr(),
        plan.proc_dir.as_ptr(),
        plan.proc_fs.as_ptr(),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        std::ptr::null(),
    ) != 0
    {
        fail(STEP_MOUNT_PROC, 0);
    }
    for (i, target) in plan.cache_targets.iter().enumerate() {
        let mut buf = [0u8; 32];
        let src = fd_path(cache_fds[i], &mut buf);
        if libc::mount(
            src,
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ) != 0
        {
            fail(STEP_BIND_CACHE, i as u32);
        }
        libc::close(cache_fds[i]);
    }
    if libc::chdir(plan.cwd.as_ptr()) != 0 {
        fail(STEP_CHDIR_CWD, 0);
    }
    // Rust ignores SIGPIPE; the command must get the default back. Handlers
    // pgimg installed are reset by execve itself.
    for sig in [
        libc::SIGPIPE,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGQUIT,
        libc::SIGHUP,
        libc::SIGCHLD,
    ] {
        libc::signal(sig, libc::SIG_DFL);
    }
    let mut empty: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut empty);
    libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
    let mut denied = false;
    for c in &plan.candidates {
        libc::execve(c.as_ptr(), plan.argv_ptrs.as_ptr(), plan.env_ptrs.as_ptr());
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => denied = true,
            _ => fail(STEP_EXEC, 0),
        }
    }
    if denied {
        *libc::__errno_location() = libc::EACCES;
    } else {
        *libc::__errno_location() = libc::ENOENT;
    }
    fail(STEP_EXEC, 0)
}

fn pipe() -> Result<(OwnedFd, OwnedFd), SpawnError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| SpawnError(format!("creating a pipe: {e}")))
}

fn set_nonblocking(fd: &OwnedFd) {
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) };
}

fn explain(step: u32, index: u32, err: Errno, spec: &Spec) -> String {
    let cache = |i: u32| spec.caches.get(i as usize);
    match step {
        STEP_FORK => format!("forking the command in its PID namespace: {err}"),
        STEP_SETSID => format!("starting a session: {err}"),
        STEP_OPEN_CACHE => format!(
            "opening the host cache {}: {err}",
            cache(index)
                .map(|c| c.0.display().to_string())
                .unwrap_or_default()
        ),
        STEP_CHROOT => format!("chroot into {}: {err}", spec.root.display()),
        STEP_CHDIR_ROOT => format!("entering the image root: {err}"),
        STEP_MOUNT_PROC => format!("mounting /proc in the image: {err}"),
        STEP_BIND_CACHE => format!(
            "binding the cache {} on {}: {err}",
            cache(index)
                .map(|c| c.0.display().to_string())
                .unwrap_or_default(),
            cache(index).map(|c| c.1.as_str()).unwrap_or_default()
        ),
        STEP_CHDIR_CWD => format!("changing to the working directory {}: {err}", spec.cwd),
        STEP_EXEC if err == Errno::ENOENT => {
            let path = spec
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == "PATH")
                .map(|(_, v)| v.as_str())
                .unwrap_or_default();
            format!("{}: not found in the image (PATH={path})", spec.argv[0])
        }
        STEP_EXEC => format!("executing {}: {err}", spec.argv[0]),
        STEP_FDS => format!("closing inherited descriptors: {err}"),
        STEP_PRIVATE => format!("making the command's mounts private: {err}"),
        _ => format!("step {step}: {err}"),
    }
}

/// A started init; killing it takes the whole namespace.
struct Child {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    reaped: Option<c_int>,
}

impl Child {
    fn kill(&self) {
        // Through the pidfd: never a recycled pid.
        unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.as_raw_fd(),
                libc::SIGKILL,
                std::ptr::null::<c_void>(),
                0 as libc::c_uint,
            )
        };
    }

    /// Reaps init if it has exited; blocks when `block`.
    fn try_reap(&mut self, block: bool) -> bool {
        if self.reaped.is_some() {
            return true;
        }
        let mut status: c_int = 0;
        let flags = if block { 0 } else { libc::WNOHANG };
        loop {
            let r = unsafe { libc::waitpid(self.pid, &mut status, flags) };
            if r == self.pid {
                self.reaped = Some(status);
                return true;
            }
            if r < 0 && errno() == libc::EINTR {
                continue;
            }
            if r < 0 {
                // ECHILD: someone else reaped it; treat it as gone.
                self.reaped = Some(0);
                return true;
            }
            return false;
        }
    }
}

impl Drop for Child {
    /// Kills and reaps init if the caller did not get that far (a panic in a
    /// log sink); nothing of the command survives its handle.
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.kill();
            self.try_reap(true);
        }
    }
}

/// Splits a stream into lines for the log, keeping the unterminated rest.
struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    fn new() -> Self {
        LineSplitter {
            pending: Vec::new(),
        }
    }

    fn push(&mut self, data: &[u8], mut emit: impl FnMut(&str)) {
        self.pending.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|&b| b == b'\n') {
            let line = &self.pending[start..start + nl];
            emit(String::from_utf8_lossy(line).trim_end_matches('\r'));
            start += nl + 1;
        }
        self.pending.drain(..start);
    }

    fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.pending.is_empty() {
            emit(String::from_utf8_lossy(&self.pending).trim_end_matches('\r'));
            self.pending.clear();
        }
    }
}

/// Runs `spec` and waits for it, streaming each output line to `on_line`.
/// The command is killed (its whole PID namespace) when `interrupt` becomes
/// true or its timeout passes.
pub(crate) fn run(
    spec: &Spec,
    interrupt: &AtomicBool,
    on_line: &mut dyn FnMut(Stream, &str),
) -> Result<Finished, SpawnError> {
    if spec.caches.len() > 64 {
        return Err(SpawnError(format!(
            "{} caches for one command; at most 64",
            spec.caches.len()
        )));
    }
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let (status_r, status_w) = pipe()?;
    // Parent ends and the child's sources, per mode.
    let mut out_r = None;
    let mut errs_r = None;
    let mut stdin_w = None;
    let mut stdin_bytes = Vec::new();
    let child_ends: Vec<OwnedFd>;
    let fds: [c_int; 5] = match &spec.stdio {
        Stdio::Piped { stdin } => {
            let (or, ow) = pipe()?;
            let (er, ew) = pipe()?;
            let input = match stdin {
                Some(bytes) => {
                    let (ir, iw) = pipe()?;
                    stdin_bytes = bytes.clone();
                    stdin_w = Some(iw);
                    ir
                }
                None => OwnedFd::from(
                    std::fs::File::open("/dev/null")
                        .map_err(|e| SpawnError(format!("opening /dev/null: {e}")))?,
                ),
            };
            let fds = [
                input.as_raw_fd(),
                ow.as_raw_fd(),
                ew.as_raw_fd(),
                err_w.as_raw_fd(),
                status_w.as_raw_fd(),
            ];
            out_r = Some(or);
            errs_r = Some(er);
            child_ends = vec![input, ow, ew];
            fds
        }
        Stdio::Inherit => {
            child_ends = Vec::new();
            [0, 1, 2, err_w.as_raw_fd(), status_w.as_raw_fd()]
        }
    };
    let plan = Plan::new(spec, fds, go_r.as_raw_fd())?;
    let mut stack = vec![0u8; CHILD_STACK];
    // SAFETY: the child runs `init_main` on its own copy of `stack` and `plan`
    // (no CLONE_VM) and only makes raw system calls on them.
    let pid = unsafe {
        let top = stack.as_mut_ptr().add(stack.len());
        let top = top.sub(top as usize % 16);
        libc::clone(
            init_main,
            top as *mut c_void,
            libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::SIGCHLD,
            &plan as *const Plan as *mut c_void,
        )
    };
    if pid < 0 {
        return Err(SpawnError(format!(
            "creating the command's PID namespace (clone): {}",
            Errno::last()
        )));
    }
    drop(stack);
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if pidfd < 0 {
        // Without a pidfd we cannot kill it safely later: kill it now by pid
        // (not reaped yet, so the pid is still ours) and give up.
        let e = Errno::last();
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let mut st = 0;
        unsafe { libc::waitpid(pid, &mut st, 0) };
        return Err(SpawnError(format!("pidfd_open: {e}")));
    }
    let mut child = Child {
        pid,
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) },
        reaped: None,
    };
    drop(go_r);
    nix::unistd::write(&go_w, &[1u8]).ok();
    drop(go_w);
    drop(err_w);
    drop(status_w);
    drop(child_ends);

    // Blocks until the command's exec (which closes the pipe) or its report.
    let mut report = Vec::new();
    std::fs::File::from(err_r).read_to_end(&mut report).ok();
    if report.len() >= 12 {
        let step = u32::from_ne_bytes(report[0..4].try_into().unwrap());
        let index = u32::from_ne_bytes(report[4..8].try_into().unwrap());
        let err = Errno::from_raw(i32::from_ne_bytes(report[8..12].try_into().unwrap()));
        child.kill();
        child.try_reap(true);
        return Err(SpawnError(explain(step, index, err, spec)));
    }

    let started = Instant::now();
    let deadline = spec.timeout.map(|t| started + t);
    let mut ending = None;
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    let mut split_out = LineSplitter::new();
    let mut split_err = LineSplitter::new();
    let mut stdin_off = 0usize;
    for fd in [&out_r, &errs_r, &stdin_w].into_iter().flatten() {
        set_nonblocking(fd);
    }
    if stdin_w.is_some() && stdin_bytes.is_empty() {
        stdin_w = None;
    }
    let mut reaped_at: Option<Instant> = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if ending.is_none() {
            if interrupt.load(Ordering::SeqCst) {
                child.kill();
                ending = Some(Ending::Interrupted);
            } else if let Some(d) = deadline {
                if Instant::now() >= d {
                    child.kill();
                    ending = Some(Ending::TimedOut(spec.timeout.unwrap_or_default()));
                }
            }
        }
        let outputs_open = out_r.is_some() || errs_r.is_some();
        if child.reaped.is_some() {
            if !outputs_open {
                break;
            }
            // Every process of the namespace is gone, so the pipes are at EOF
            // or about to be; do not wait forever on a descriptor leaked elsewhere.
            if reaped_at.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
                break;
            }
        }
        let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(4);
        let mut who: Vec<u8> = Vec::with_capacity(4);
        let mut add = |fd: RawFd, events: i16, tag: u8| {
            pfds.push(libc::pollfd {
                fd,
                events,
                revents: 0,
            });
            who.push(tag);
        };
        if let Some(fd) = &out_r {
            add(fd.as_raw_fd(), libc::POLLIN, 0);
        }
        if let Some(fd) = &errs_r {
            add(fd.as_raw_fd(), libc::POLLIN, 1);
        }
        if let Some(fd) = &stdin_w {
            add(fd.as_raw_fd(), libc::POLLOUT, 2);
        }
        if child.reaped.is_none() {
            add(child.pidfd.as_raw_fd(), libc::POLLIN, 3);
        }
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
        if r < 0 {
            if errno() == libc::EINTR {
                continue;
            }
            child.kill();
            return Err(SpawnError(format!(
                "waiting for the command (poll): {}",
                Errno::last()
            )));
        }
        for (p, tag) in pfds.iter().zip(&who) {
            if p.revents == 0 {
                continue;
            }
            match tag {
                0 | 1 => {
                    let slot = if *tag == 0 { &mut out_r } else { &mut errs_r };
                    let fd = slot.as_ref().expect("polled only when open");
                    match nix::unistd::read(fd, &mut buf) {
                        Ok(0) => {
                            *slot = None;
                            if *tag == 0 {
                                split_out.finish(|l| on_line(Stream::Stdout, l));
                            } else {
                                split_err.finish(|l| on_line(Stream::Stderr, l));
                            }
                        }
                        Ok(n) => {
                            if *tag == 0 {
                                stdout.extend_from_slice(&buf[..n]);
                                split_out.push(&buf[..n], |l| on_line(Stream::Stdout, l));
                            } else {
                                stderr.extend_from_slice(&buf[..n]);
                                if stderr.len() > 16 * STDERR_KEEP {
                                    stderr.drain(..stderr.len() - 2 * STDERR_KEEP);
                                }
                                split_err.push(&buf[..n], |l| on_line(Stream::Stderr, l));
                            }
                        }
                        Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                        Err(_) => *slot = None,
                    }
                }
                2 => {
                    let fd = stdin_w.as_ref().expect("polled only when open");
                    match nix::unistd::write(fd, &stdin_bytes[stdin_off..]) {
                        Ok(n) => {
                            stdin_off += n;
                            if stdin_off >= stdin_bytes.len() {
                                stdin_w = None;
                            }
                        }
                        Err(Errno::EAGAIN) | Err(Errno::EINTR) => {}
                        // EPIPE: the command stopped reading; that is its business.
                        Err(_) => stdin_w = None,
                    }
                }
                _ => {
                    if child.try_reap(false) {
                        reaped_at = Some(Instant::now());
                        // Nobody is left to read what stdin still holds.
                        stdin_w = None;
                    }
                }
            }
        }
    }
    let init_status = child.reaped.unwrap_or(0);
    let ending = match ending {
        Some(e) => e,
        None => {
            let mut st = [0u8; 4];
            let mut status_file = std::fs::File::from(status_r);
            if status_file.read_exact(&mut st).is_ok() {
                let st = c_int::from_ne_bytes(st);
                if libc::WIFEXITED(st) {
                    Ending::Exited(libc::WEXITSTATUS(st))
                } else {
                    Ending::Signaled(libc::WTERMSIG(st))
                }
            } else if libc::WIFSIGNALED(init_status) {
                // Init itself was killed (by someone else's SIGKILL).
                Ending::Signaled(libc::WTERMSIG(init_status))
            } else {
                return Err(SpawnError(format!(
                    "the command's init exited with {} without reporting the command's status",
                    libc::WEXITSTATUS(init_status)
                )));
            }
        }
    };
    Ok(Finished {
        ending,
        stdout,
        stderr,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_candidates_follow_path_like_execvp() {
        for (argv0, path, want) in [
            (
                "apt-get",
                "/usr/sbin:/usr/bin",
                vec!["/usr/sbin/apt-get", "/usr/bin/apt-get"],
            ),
            ("/bin/sh", "/usr/bin", vec!["/bin/sh"]),
            ("./x", "/usr/bin", vec!["./x"]),
            ("ls", ":/bin/", vec!["./ls", "/bin/ls"]),
        ] {
            assert_eq!(exec_candidates(argv0, path), want, "{argv0} {path}");
        }
    }

    #[test]
    fn fd_path_formats_without_allocating() {
        for (fd, want) in [
            (0, "/proc/self/fd/0"),
            (7, "/proc/self/fd/7"),
            (1234, "/proc/self/fd/1234"),
        ] {
            let mut buf = [0u8; 32];
            let p = fd_path(fd, &mut buf);
            let s = unsafe { std::ffi::CStr::from_ptr(p) };
            assert_eq!(s.to_str().unwrap(), want);
        }
    }

    #[test]
    fn line_splitter_keeps_partial_lines_and_strips_cr() {
        let mut s = LineSplitter::new();
        let mut got = Vec::new();
        s.push(b"one\r\ntw", |l| got.push(l.to_string()));
        s.push(b"o\nthree", |l| got.push(l.to_string()));
        assert_eq!(got, ["one", "two"]);
        s.finish(|l| got.push(l.to_string()));
        assert_eq!(got, ["one", "two", "three"]);
    }
}
