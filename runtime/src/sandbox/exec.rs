//! Runs one command inside the image, in new PID, mount, UTS, IPC and cgroup namespaces, and waits for it.
//!
//! Process tree, for each command:
//!
//! ```text
//! pgimg (calling thread) ── clone(CLONE_NEW{PID,NS,UTS,IPC,CGROUP}) ──> init (PID 1)
//!     init: pivot_root into the image (old root detached), /proc + masks, caches, nodev,
//!           seccomp, capabilities dropped
//!     └─ fork ─> command (PID 2): session, working directory, exec
//! ```
//!
//! What the command can reach (docs/recipes.md, "What a command can and cannot do"):
//!
//! * **Only the image's tree.** Init bind-mounts the image root (with the
//!   sandbox's `/dev`, `/sys`, `/run` and cache mounts under it) onto itself,
//!   `pivot_root`s into it and detaches the old root, so the namespace holds no
//!   host mount at all: `/proc/1/root`, every `/proc/<pid>/root`, `cwd` and
//!   `fd` of every process the command can see point inside the image. (A plain
//!   `chroot` with init outside it left `/proc/1/root` as the host's `/`.)
//! * **Its own host name, IPC objects and cgroup view** (UTS, IPC and cgroup
//!   namespaces): `hostname`, `domainname`, SysV shared memory and message
//!   queues stay in the command's namespaces.
//! * **No device of the host.** Every mount is `nodev` except the sandbox's own
//!   `/dev` tmpfs and its `devpts`; `CAP_MKNOD` is gone, so no new node appears.
//!   A device node shipped in a base image cannot be opened.
//! * **Kernel interfaces read-only or masked**, as systemd-nspawn and Docker do
//!   (see [`PROC_READ_ONLY`] and [`PROC_MASKED`]): `/proc/sys`,
//!   `/proc/sysrq-trigger`, … are read-only binds; `/proc/kcore`, `/proc/kmsg`,
//!   `/proc/keys`, … are `/dev/null`. `/sys` is mounted read-only by the sandbox.
//! * **A reduced capability set** ([`KEPT_CAPS`]): bounding, effective,
//!   permitted and inheritable sets hold only what installing packages uses;
//!   ambient is cleared. Without `CAP_SYS_ADMIN` the command can neither mount
//!   nor remount (so the read-only binds stay), nor `unshare` a mount namespace.
//! * **No kernel keyring** (a seccomp filter refuses `keyctl`, `add_key` and
//!   `request_key`, whose user keyring for uid 0 is the host root's).
//! * **No descriptor to a host file**: everything above fd 2 is closed, stdin
//!   is the image's `/dev/null` unless pgimg feeds it through a pipe. (The
//!   interactive `pgimg shell` is the exception: it gets pgimg's terminal.)
//!
//! Lifetime: everything the command starts lives in the PID namespace; when
//! init exits (right after the command does) the kernel kills every other
//! process in it, so a double-forked daemon cannot outlive the command. Init
//! dies with SIGKILL from us on timeout or interrupt (a namespace's PID 1
//! ignores SIGTERM), and with SIGKILL through `PR_SET_PDEATHSIG` when the pgimg
//! thread that started it dies. Init being inside the image, systemd's tools no
//! longer detect a chroot; `SYSTEMD_OFFLINE=1` in the base environment keeps
//! them offline (`systemctl start` a no-op, `enable` acting on files).
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
    /// or the image's `/dev/null`. The command gets a session of its own, so a
    /// Ctrl-C on pgimg's terminal reaches pgimg (which then stops it), not the command.
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
const STEP_BIND_ROOT: u32 = 4;
const STEP_CHDIR_ROOT: u32 = 5;
const STEP_MOUNT_PROC: u32 = 6;
const STEP_BIND_CACHE: u32 = 7;
const STEP_CHDIR_CWD: u32 = 8;
const STEP_EXEC: u32 = 9;
const STEP_FDS: u32 = 10;
const STEP_PRIVATE: u32 = 11;
const STEP_PIVOT: u32 = 12;
const STEP_DETACH: u32 = 13;
const STEP_NODEV: u32 = 14;
const STEP_PROC_READ_ONLY: u32 = 15;
const STEP_PROC_MASK: u32 = 16;
const STEP_STDIN: u32 = 17;
const STEP_SECCOMP: u32 = 18;
const STEP_CAPS: u32 = 19;

/// Fixed descriptor numbers in the child.
const FD_ERR: c_int = 3;
const FD_STATUS: c_int = 4;

/// Stack for init (which also forks the command from it); the child copies it.
const CHILD_STACK: usize = 256 * 1024;

/// Capabilities a command keeps (bounding, effective, permitted), each with
/// why installing packages needs it. Every other capability the kernel knows,
/// including ones newer than this list, is dropped.
///
/// Dropped, and why it is never needed: `CAP_SYS_ADMIN` (mount, remount,
/// `unshare -m`, `setns`: it would reopen `/proc/sys` read-write or mount a
/// fresh proc), `CAP_DAC_READ_SEARCH` (`open_by_handle_at` reaches any inode
/// of a file system a bind mount or a `--rootfs` directory shares with the
/// host; `CAP_DAC_OVERRIDE` still reads everything), `CAP_MKNOD` (a block
/// node would reach the host's disks), `CAP_SYS_MODULE`, `CAP_SYS_TIME`,
/// `CAP_SYS_BOOT`, `CAP_SYS_RAWIO`, `CAP_SYSLOG`, `CAP_SYS_PACCT`,
/// `CAP_WAKE_ALARM`, `CAP_BLOCK_SUSPEND`, `CAP_SYS_TTY_CONFIG` (kernel-wide
/// effects no namespace contains), `CAP_NET_ADMIN`, `CAP_NET_RAW`,
/// `CAP_NET_BIND_SERVICE`, `CAP_NET_BROADCAST` (the command shares the host's
/// network: a `postinst` calling `iptables` would change the host's firewall),
/// `CAP_MAC_ADMIN`, `CAP_MAC_OVERRIDE` (`dh_apparmor` snippets would load
/// AppArmor profiles into the host kernel; they tolerate the failure),
/// `CAP_AUDIT_CONTROL`, `CAP_AUDIT_READ`, `CAP_SYS_NICE` (real-time
/// scheduling could starve the host), `CAP_IPC_LOCK` (unbounded locked
/// memory), `CAP_IPC_OWNER`, `CAP_LEASE`, `CAP_LINUX_IMMUTABLE` (an immutable
/// file in a `--rootfs` directory would survive pgimg's own cleanup),
/// `CAP_SYS_PTRACE` (only processes of the command's own namespace are
/// visible, but nothing in a build needs it), `CAP_PERFMON`, `CAP_BPF`,
/// `CAP_CHECKPOINT_RESTORE`.
pub(crate) const KEPT_CAPS: [(u32, &str, &str); 12] = [
    (0, "CAP_CHOWN", "dpkg and chown set owners"),
    (
        1,
        "CAP_DAC_OVERRIDE",
        "root reads and writes files it does not own",
    ),
    (3, "CAP_FOWNER", "chmod and utime on other users' files"),
    (4, "CAP_FSETID", "setuid and setgid bits survive a chown"),
    (5, "CAP_KILL", "maintainer scripts stop their own daemons"),
    (6, "CAP_SETGID", "su, runuser, setpriv switch groups"),
    (7, "CAP_SETUID", "su, runuser, setpriv switch users"),
    (8, "CAP_SETPCAP", "tools that drop their own capabilities"),
    (
        18,
        "CAP_SYS_CHROOT",
        "chroot inside the image (debootstrap)",
    ),
    (
        24,
        "CAP_SYS_RESOURCE",
        "root's reserved blocks on the image's ext4, raised limits",
    ),
    (
        29,
        "CAP_AUDIT_WRITE",
        "useradd and login tools write audit records",
    ),
    (31, "CAP_SETFCAP", "setcap in postinst (iputils-ping)"),
];

/// The kept capabilities as a bit mask.
pub(crate) fn kept_mask() -> u64 {
    KEPT_CAPS.iter().fold(0, |m, (cap, _, _)| m | (1u64 << cap))
}

/// Made read-only in the command's `/proc` (bound on themselves, then
/// remounted read-only), as systemd-nspawn and Docker do: writes there act on
/// the host's kernel (`sysctl`, `sysrq`, IRQ affinity, …).
pub(crate) const PROC_READ_ONLY: [&str; 8] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/acpi",
    "/proc/scsi",
    "/proc/asound",
];

/// Hidden behind `/dev/null` in the command's `/proc`: kernel memory, the
/// kernel log, key and timer lists of the whole machine.
pub(crate) const PROC_MASKED: [&str; 10] = [
    "/proc/kcore",
    "/proc/kallsyms",
    "/proc/kmsg",
    "/proc/keys",
    "/proc/key-users",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/latency_stats",
    "/proc/kpagecount",
    "/proc/kpageflags",
];

/// `struct mount_attr` for `mount_setattr(2)`.
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_NODEV: u64 = 0x4;

#[cfg(target_arch = "x86_64")]
mod arch {
    /// `AUDIT_ARCH_X86_64`: the native system call table.
    pub const NATIVE: u32 = 0xC000_003E;
    /// `AUDIT_ARCH_I386`: `int 0x80` reaches the 32-bit table.
    pub const COMPAT: u32 = 0x4000_0003;
    /// keyctl, add_key, request_key.
    pub const KEYRING_NATIVE: [u32; 3] = [250, 248, 249];
    pub const KEYRING_COMPAT: [u32; 3] = [288, 286, 287];
    /// x32 system calls carry this bit; none is allowed.
    pub const X32_BIT: u32 = 0x4000_0000;
}

#[cfg(target_arch = "aarch64")]
mod arch {
    pub const NATIVE: u32 = 0xC000_00B7;
    /// `AUDIT_ARCH_ARM`: 32-bit ARM processes.
    pub const COMPAT: u32 = 0x4000_0028;
    pub const KEYRING_NATIVE: [u32; 3] = [219, 217, 218];
    pub const KEYRING_COMPAT: [u32; 3] = [311, 309, 310];
    /// No x32-like ABI on arm64; bit 30 is never set in a system call number.
    pub const X32_BIT: u32 = 0x4000_0000;
}

/// The seccomp program: refuse the kernel keyring system calls (EPERM) in
/// every ABI the CPU offers, allow everything else.
///
/// Layout (indices): 0 load arch; 1 native?; 2 compat?; 3–8 native checks;
/// 9–13 compat checks; 14 refuse. Jump offsets count from the next instruction.
fn seccomp_program() -> Vec<libc::sock_filter> {
    const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    // offsetof(struct seccomp_data, nr) and (…, arch)
    const NR: u32 = 0;
    const ARCH: u32 = 4;
    const NATIVE_START: usize = 3;
    const COMPAT_START: usize = 9;
    const REFUSE: usize = 14;
    let st = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let to = |from: usize, target: usize| (target - from - 1) as u8;
    let mut p = vec![
        st(LD_W_ABS, 0, 0, ARCH),
        st(JEQ_K, to(1, NATIVE_START), 0, arch::NATIVE),
        // Any other ABI is refused outright: the kernel offers none on these CPUs.
        st(JEQ_K, to(2, COMPAT_START), to(2, REFUSE), arch::COMPAT),
        st(LD_W_ABS, 0, 0, NR),
        st(JSET_K, to(4, REFUSE), 0, arch::X32_BIT),
    ];
    for nr in arch::KEYRING_NATIVE {
        let i = p.len();
        p.push(st(JEQ_K, to(i, REFUSE), 0, nr));
    }
    p.push(st(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    debug_assert_eq!(p.len(), COMPAT_START);
    p.push(st(LD_W_ABS, 0, 0, NR));
    for nr in arch::KEYRING_COMPAT {
        let i = p.len();
        p.push(st(JEQ_K, to(i, REFUSE), 0, nr));
    }
    p.push(st(RET_K, 0, 0, libc::SECCOMP_RET_ALLOW));
    debug_assert_eq!(p.len(), REFUSE);
    p.push(st(
        RET_K,
        0,
        0,
        libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
    ));
    p
}

/// The command's whole launch, prepared before `clone` so the child only reads it.
struct Plan {
    root: CString,
    slash: CString,
    dot: CString,
    dev: CString,
    dev_pts: CString,
    dev_null: CString,
    proc_dir: CString,
    proc_fs: CString,
    proc_read_only: Vec<CString>,
    proc_masked: Vec<CString>,
    cwd: CString,
    init_name: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    candidates: Vec<CString>,
    cache_sources: Vec<CString>,
    cache_targets: Vec<CString>,
    /// Sources for the child's fds 0, 1, 2, 3 (error pipe) and 4 (status pipe);
    /// -1 for stdin means the image's `/dev/null`, opened once inside.
    fds: [c_int; 5],
    go: c_int,
    new_session: bool,
    /// Highest capability number the kernel knows (`/proc/sys/kernel/cap_last_cap`).
    last_cap: u32,
    kept_caps: u64,
    seccomp: Vec<libc::sock_filter>,
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

/// The kernel's highest capability number; 40 (`CAP_CHECKPOINT_RESTORE`) when unreadable.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .filter(|n| *n < 64)
        .unwrap_or(40)
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
        let consts = |list: &[&str]| -> Vec<CString> {
            list.iter()
                .map(|p| CString::new(*p).expect("constant paths have no NUL"))
                .collect()
        };
        Ok(Plan {
            root: cstring("the root path", spec.root.as_os_str().as_bytes())?,
            slash: c"/".to_owned(),
            dot: c".".to_owned(),
            dev: c"/dev".to_owned(),
            dev_pts: c"/dev/pts".to_owned(),
            dev_null: c"/dev/null".to_owned(),
            proc_dir: c"/proc".to_owned(),
            proc_fs: c"proc".to_owned(),
            proc_read_only: consts(&PROC_READ_ONLY),
            proc_masked: consts(&PROC_MASKED),
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
            last_cap: last_cap(),
            kept_caps: kept_mask(),
            seccomp: seccomp_program(),
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

unsafe fn sys_mount(
    source: *const c_char,
    target: *const c_char,
    fstype: *const c_char,
    flags: libc::c_ulong,
) -> bool {
    libc::mount(source, target, fstype, flags, std::ptr::null()) == 0
}

/// `mount_setattr(path, flags, {set, clr})`; true on success.
unsafe fn set_mount_attr(path: *const c_char, recursive: bool, set: u64, clr: u64) -> bool {
    let attr = MountAttr {
        attr_set: set,
        attr_clr: clr,
        propagation: 0,
        userns_fd: 0,
    };
    let flags = if recursive { libc::AT_RECURSIVE } else { 0 };
    libc::syscall(
        libc::SYS_mount_setattr,
        libc::AT_FDCWD,
        path,
        flags as libc::c_uint,
        &attr as *const MountAttr,
        std::mem::size_of::<MountAttr>(),
    ) == 0
}

/// Moves init into the image: the image root (with its submounts) becomes
/// `/`, the host's tree is detached, the caches are moved in, every mount but
/// `/dev` loses its devices, and a fresh `/proc` is mounted with its kernel
/// interfaces read-only or masked. Raw system calls only.
unsafe fn enter_image(plan: &Plan) {
    // Cache directories are host paths: take them as detached mount trees
    // before the host's `/` goes away (at most 64, checked by the parent).
    let mut trees = [-1 as c_int; 64];
    for (i, src) in plan.cache_sources.iter().enumerate() {
        let fd = libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            src.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        );
        if fd < 0 {
            fail(STEP_OPEN_CACHE, i as u32);
        }
        trees[i] = fd as c_int;
    }
    // pivot_root needs the new root to be a mount point: a `--rootfs`
    // directory is not. MS_REC keeps the sandbox's /dev, /sys, /run and the
    // apt cache under it.
    let bind = (libc::MS_BIND | libc::MS_REC) as libc::c_ulong;
    if !sys_mount(
        plan.root.as_ptr(),
        plan.root.as_ptr(),
        std::ptr::null(),
        bind,
    ) {
        fail(STEP_BIND_ROOT, 0);
    }
    if libc::chdir(plan.root.as_ptr()) != 0 {
        fail(STEP_CHDIR_ROOT, 0);
    }
    // pivot_root(".", ".") stacks the old root on the new one; unmounting "."
    // then detaches it (pivot_root(2), NOTES). Nothing of the host stays
    // reachable in this namespace, not even through /proc/1/root.
    if libc::syscall(libc::SYS_pivot_root, plan.dot.as_ptr(), plan.dot.as_ptr()) != 0 {
        fail(STEP_PIVOT, 0);
    }
    if libc::umount2(plan.dot.as_ptr(), libc::MNT_DETACH) != 0 {
        fail(STEP_DETACH, 0);
    }
    if libc::chdir(plan.slash.as_ptr()) != 0 {
        fail(STEP_CHDIR_ROOT, 0);
    }
    // From here paths resolve inside the image: its absolute links stay in it.
    for (i, target) in plan.cache_targets.iter().enumerate() {
        if libc::syscall(
            libc::SYS_move_mount,
            trees[i],
            c"".as_ptr(),
            libc::AT_FDCWD,
            target.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH as libc::c_uint,
        ) != 0
        {
            fail(STEP_BIND_CACHE, i as u32);
        }
        libc::close(trees[i]);
    }
    if !set_mount_attr(plan.slash.as_ptr(), true, MOUNT_ATTR_NODEV, 0) {
        fail(STEP_NODEV, 0);
    }
    for (i, dir) in [&plan.dev, &plan.dev_pts].into_iter().enumerate() {
        if !set_mount_attr(dir.as_ptr(), false, 0, MOUNT_ATTR_NODEV) {
            fail(STEP_NODEV, i as u32 + 1);
        }
    }
    let proc_flags = (libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC) as libc::c_ulong;
    if !sys_mount(
        plan.proc_fs.as_ptr(),
        plan.proc_dir.as_ptr(),
        plan.proc_fs.as_ptr(),
        proc_flags,
    ) {
        fail(STEP_MOUNT_PROC, 0);
    }
    for (i, p) in plan.proc_read_only.iter().enumerate() {
        if !sys_mount(p.as_ptr(), p.as_ptr(), std::ptr::null(), bind) {
            // Not every kernel has every entry.
            if errno() == libc::ENOENT {
                continue;
            }
            fail(STEP_PROC_READ_ONLY, i as u32);
        }
        let ro = (libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY) as libc::c_ulong | proc_flags;
        if !sys_mount(std::ptr::null(), p.as_ptr(), std::ptr::null(), ro) {
            fail(STEP_PROC_READ_ONLY, i as u32);
        }
    }
    for (i, p) in plan.proc_masked.iter().enumerate() {
        if !sys_mount(plan.dev_null.as_ptr(), p.as_ptr(), std::ptr::null(), bind) {
            if errno() == libc::ENOENT {
                continue;
            }
            fail(STEP_PROC_MASK, i as u32);
        }
    }
}

/// Drops every capability but [`KEPT_CAPS`] from all five sets. Raw system calls only.
unsafe fn drop_capabilities(plan: &Plan) {
    for cap in 0..=plan.last_cap {
        if plan.kept_caps & (1u64 << cap) != 0 {
            continue;
        }
        if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0
            && errno() != libc::EINVAL
        {
            fail(STEP_CAPS, cap);
        }
    }
    if libc::prctl(
        libc::PR_CAP_AMBIENT,
        libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
        0,
        0,
        0,
    ) != 0
    {
        fail(STEP_CAPS, 100);
    }
    #[repr(C)]
    struct Header {
        version: u32,
        pid: c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    // Keep only what the process has: pgimg itself may run without some
    // (a container's runtime drops CAP_SYS_RESOURCE, say); capset refuses to add.
    let mut data = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    if libc::syscall(
        libc::SYS_capget,
        &header as *const Header,
        data.as_mut_ptr(),
    ) != 0
    {
        fail(STEP_CAPS, 102);
    }
    let kept = [plan.kept_caps as u32, (plan.kept_caps >> 32) as u32];
    for (d, k) in data.iter_mut().zip(kept) {
        d.permitted &= k;
        d.effective = d.permitted;
        d.inheritable = 0;
    }
    if libc::syscall(libc::SYS_capset, &header as *const Header, data.as_ptr()) != 0 {
        fail(STEP_CAPS, 101);
    }
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
        // then move them down, then close everything else. A stdin of -1 is
        // filled once the image's /dev/null is reachable.
        let base = plan.fds.iter().copied().max().unwrap_or(0).max(4) + 1;
        let mut high = [-1 as c_int; 5];
        for (i, fd) in plan.fds.iter().enumerate() {
            if *fd < 0 {
                continue;
            }
            high[i] = libc::fcntl(*fd, libc::F_DUPFD, base);
            if high[i] < 0 {
                libc::_exit(125);
            }
        }
        for (i, fd) in high.iter().enumerate() {
            if *fd < 0 {
                libc::close(i as c_int);
            } else if libc::dup2(*fd, i as c_int) < 0 {
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
        enter_image(plan);
        if plan.fds[0] < 0 {
            let fd = libc::open(plan.dev_null.as_ptr(), libc::O_RDONLY);
            if fd < 0 {
                fail(STEP_STDIN, 0);
            }
            if fd != 0 {
                if libc::dup2(fd, 0) < 0 {
                    fail(STEP_STDIN, 0);
                }
                libc::close(fd);
            }
        }
        // The filter needs CAP_SYS_ADMIN (or no_new_privs) to be installed:
        // before the capabilities go.
        let prog = libc::sock_fprog {
            len: plan.seccomp.len() as libc::c_ushort,
            filter: plan.seccomp.as_ptr() as *mut libc::sock_filter,
        };
        if libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0 as libc::c_uint,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            fail(STEP_SECCOMP, 0);
        }
        drop_capabilities(plan);
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

/// The command process: session, cwd, exec. Raw system calls only.
unsafe fn command_main(plan: &Plan) -> ! {
    if plan.new_session && libc::setsid() < 0 {
        fail(STEP_SETSID, 0);
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
        STEP_BIND_ROOT => format!(
            "binding the image root {} on itself: {err}",
            spec.root.display()
        ),
        STEP_CHDIR_ROOT => format!("entering the image root: {err}"),
        STEP_PIVOT => format!(
            "pivot_root into {}: {err} (pgimg's own root must be a mount point: \
             it cannot run inside a plain chroot)",
            spec.root.display()
        ),
        STEP_DETACH => format!("detaching the host's tree from the command: {err}"),
        STEP_NODEV => format!(
            "making the command's mounts nodev{}: {err}",
            ["", " (except /dev)", " (except /dev/pts)"][index.min(2) as usize]
        ),
        STEP_PROC_READ_ONLY => format!(
            "making {} read-only: {err}",
            PROC_READ_ONLY.get(index as usize).unwrap_or(&"?")
        ),
        STEP_PROC_MASK => format!(
            "masking {}: {err}",
            PROC_MASKED.get(index as usize).unwrap_or(&"?")
        ),
        STEP_STDIN => format!("opening the image's /dev/null as stdin: {err}"),
        STEP_SECCOMP => format!("installing the seccomp filter: {err}"),
        STEP_CAPS => format!("dropping capabilities (step {index}): {err}"),
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
                    Some(ir)
                }
                None => None,
            };
            let fds = [
                input.as_ref().map_or(-1, |i| i.as_raw_fd()),
                ow.as_raw_fd(),
                ew.as_raw_fd(),
                err_w.as_raw_fd(),
                status_w.as_raw_fd(),
            ];
            out_r = Some(or);
            errs_r = Some(er);
            child_ends = input.into_iter().chain([ow, ew]).collect();
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
            libc::CLONE_NEWPID
                | libc::CLONE_NEWNS
                | libc::CLONE_NEWUTS
                | libc::CLONE_NEWIPC
                | libc::CLONE_NEWCGROUP
                | libc::SIGCHLD,
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
