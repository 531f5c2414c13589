//! `ChrootTarget`: the real [`Target`], acting on a mounted image root or a plain directory.
//!
//! [`ChrootTarget::setup`] prepares the root for chrooted commands and
//! [`ChrootTarget::teardown`] undoes it, leaving the root as it found it
//! except for what the recipe did:
//!
//! | in the image | during the build | afterwards |
//! |---|---|---|
//! | `/dev` | tmpfs with the basic nodes, `pts` (a new devpts instance), `shm` (tmpfs) | unmounted |
//! | `/sys` | sysfs, read-only | unmounted |
//! | `/run` | tmpfs, so what packages put there is not left in the image | unmounted |
//! | `/proc` | a fresh proc per command, for its PID namespace | gone with the command |
//! | `/var/cache/apt/archives` | the build's own folder of the host's apt archives cache ([`super::apt_archives`]), bound | unmounted (also by finalize, before `apt-get clean`); new packages go to the shared cache |
//! | `/usr/sbin/policy-rc.d` | `exit 101`: no package starts a daemon | restored exactly (or removed) |
//! | `/etc/resolv.conf` | the host's content, as a plain file | restored exactly: link target, or content and mode, or absence (unless the build replaced it: then the build's is kept) |
//!
//! `/dev` is a fresh tmpfs rather than a bind of the host's `/dev`: commands
//! cannot reach host disks and loop devices, and what a package writes into
//! `/dev` lands on a throwaway tmpfs instead of the host's devtmpfs. The
//! host's devpts is mounted `ptmxmode=000`, so the chroot gets its own
//! `newinstance` devpts with `/dev/ptmx` a link to `pts/ptmx`.
//!
//! After a SIGKILL of pgimg the mounts vanish with its namespace, but a
//! `--rootfs` directory keeps the build's `policy-rc.d` and `resolv.conf`:
//! nothing runs to restore them.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use nix::mount::MsFlags;
use nix::sys::stat::{fchmodat, makedev, mknodat, FchmodatFlags, Mode, SFlag};
use pgimg_stdlib::borrow::{Borrowed, Outcome};
use pgimg_stdlib::fetch::Fetcher;
use pgimg_stdlib::root::{Attrs, FileKind, FsError, ImageRoot};
use pgimg_stdlib::target::{host_arch, tail, Command, CommandError, Facts, Output, Target};

use super::apt_archives::BuildArchives;
pub use super::exec::Stream;
use super::exec::{self, Ending, Spec, Stdio, STDERR_KEEP};
use super::interrupt::INTERRUPTED;
use super::mounts::{mountpoints_under, Mount, MountError, MountStack};

/// Where command output lines go: `(label, stream, line)`.
pub type LineSink = Arc<dyn Fn(&str, Stream, &str) + Send + Sync>;

/// The environment every command starts from; the command's own `env` is added on top.
///
/// `SYSTEMD_OFFLINE=1`: the command's init lives inside the image, so
/// systemd's tools would not detect a chroot; this keeps `systemctl` from
/// trying to reach a service manager (`start` is a no-op, `enable` edits links).
pub const BASE_ENV: [(&str, &str); 5] = [
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("LC_ALL", "C.UTF-8"),
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("SYSTEMD_OFFLINE", "1"),
];

/// The name of the host cache bound on `/var/cache/apt/archives` (the same
/// name `apt_install` asks for per command).
pub use pgimg_stdlib::apt::APT_ARCHIVES_CACHE;
const APT_ARCHIVES: &str = "/var/cache/apt/archives";
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// On the build's `/run` tmpfs: gone with the sandbox, never in the image.
const POLICY_RC_D_SCRIPT: &str = "/run/pgimg/policy-rc.d";
const RESOLV_CONF: &str = "/etc/resolv.conf";
const POLICY_RC_D_DENY: &[u8] =
    b"#!/bin/sh\n# Written by pgimg for the build: no package starts a service.\nexit 101\n";

/// How to set up a [`ChrootTarget`].
pub struct SandboxOptions {
    /// Host directory holding the named caches (`<cache_dir>/<name>`); `None`
    /// binds no cache (apt archives and per-command caches stay in the image).
    pub cache_dir: Option<PathBuf>,
    /// Gets URLs and git sources onto the host for the primitives.
    pub fetcher: Box<dyn Fetcher>,
    /// Receives every line commands print.
    pub log: LineSink,
    /// Commands are killed when this becomes true; by default the flag the
    /// SIGINT/SIGTERM handler sets ([`INTERRUPTED`]).
    pub interrupt: &'static AtomicBool,
    /// The host file whose content becomes the image's `/etc/resolv.conf`.
    pub host_resolv_conf: PathBuf,
    /// The borrowed paths of a build resumed from a checkpoint
    /// ([`pgimg_stdlib::borrow::Borrowed::export`]): the image already holds
    /// pgimg's versions, and the originals to give back are these.
    pub resumed_borrowed: Option<serde_json::Value>,
}

impl SandboxOptions {
    pub fn new(fetcher: Box<dyn Fetcher>) -> Self {
        SandboxOptions {
            cache_dir: None,
            fetcher,
            log: Arc::new(default_log),
            interrupt: &INTERRUPTED,
            host_resolv_conf: PathBuf::from("/etc/resolv.conf"),
            resumed_borrowed: None,
        }
    }
}

fn default_log(label: &str, _stream: Stream, line: &str) {
    let label = if label.is_empty() { "chroot" } else { label };
    pgimg_stdlib::stderr_line!("{label}: {line}");
}

/// Setting up the sandbox failed; what was already done has been undone.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("opening the image root {}: {source}", .path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: FsError,
    },
    #[error(transparent)]
    Mount(#[from] MountError),
    #[error("{what}: {source}")]
    File {
        what: String,
        #[source]
        source: FsError,
    },
    #[error("{what} {}: {source}", .path.display())]
    Host {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Arch(String),
    #[error("the sandbox on {} was already torn down", .0.display())]
    TornDown(PathBuf),
}

#[derive(Default)]
struct State {
    mounts: MountStack,
    apt_cache: Option<Mount>,
    /// The build's apt archives folder, bound by `apt_cache` and by each
    /// command that asks for the cache; given back once unbound.
    apt_archives: Option<BuildArchives>,
    torn_down: bool,
}

/// Runs a recipe's commands chrooted in an image root (see the module docs).
pub struct ChrootTarget {
    dir: PathBuf,
    root: ImageRoot,
    facts: Facts,
    fetcher: Box<dyn Fetcher>,
    cache_dir: Option<PathBuf>,
    log: LineSink,
    interrupt: &'static AtomicBool,
    host_resolv_conf: PathBuf,
    /// resolv.conf, policy-rc.d and what the recipe borrows (`borrow_file`).
    borrowed: Borrowed,
    state: Mutex<State>,
}

impl std::fmt::Debug for ChrootTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChrootTarget")
            .field("dir", &self.dir)
            .finish()
    }
}

fn file_err(what: impl Into<String>) -> impl FnOnce(FsError) -> SetupError {
    let what = what.into();
    move |source| SetupError::File { what, source }
}

impl ChrootTarget {
    /// Prepares `dir` (an image's mounted root, or a directory) for the build.
    /// Call it inside the build's private mount namespace. On error, whatever
    /// was already set up is undone before returning.
    pub fn setup(dir: &Path, opts: SandboxOptions) -> Result<ChrootTarget, SetupError> {
        let root = ImageRoot::open(dir).map_err(|source| SetupError::Root {
            path: dir.to_path_buf(),
            source,
        })?;
        let arch = host_arch().map_err(SetupError::Arch)?;
        let target = ChrootTarget {
            dir: dir.to_path_buf(),
            root,
            facts: Facts {
                arch: arch.to_string(),
            },
            fetcher: opts.fetcher,
            cache_dir: opts.cache_dir,
            log: opts.log,
            interrupt: opts.interrupt,
            host_resolv_conf: opts.host_resolv_conf,
            borrowed: Borrowed::default(),
            state: Mutex::new(State::default()),
        };
        if let Some(entries) = &opts.resumed_borrowed {
            use std::os::unix::fs::MetadataExt;
            let dev =
                std::fs::metadata(dir)
                    .map(|m| m.dev())
                    .map_err(|source| SetupError::Host {
                        what: "reading the root's device",
                        path: dir.to_path_buf(),
                        source,
                    })?;
            target
                .borrowed
                .import(entries, dev)
                .map_err(|e| SetupError::File {
                    what: "taking over the checkpoint's borrowed paths".into(),
                    source: FsError::Invalid {
                        path: dir.display().to_string(),
                        reason: e,
                    },
                })?;
        }
        if let Err(e) = target.prepare() {
            if let Err(undo) = target.teardown() {
                pgimg_stdlib::stderr_line!(
                    "pgimg: warning: undoing a partial sandbox setup: {undo}"
                );
            }
            return Err(e);
        }
        Ok(target)
    }

    /// The image root on the host.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn prepare(&self) -> Result<(), SetupError> {
        let mut st = self.state.lock().unwrap();
        let root = &self.root;
        let nodev = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        // Mount points an unusual image lacks are borrowed too: they go again.
        for dir in ["/dev", "/sys", "/run"] {
            if root.kind(dir).is_none() {
                self.borrowed
                    .put_dir(root, dir, 0o755)
                    .map_err(file_err(format!("creating {dir}")))?;
            }
        }
        // The kernel's file systems over the image's own folders, in this
        // order: (where, type, flags, options, how errors name it).
        let kernel_fs: [(&str, &str, MsFlags, Option<&str>, &str); 5] = [
            (
                "/dev",
                "tmpfs",
                MsFlags::MS_NOSUID,
                Some("mode=0755,size=4m"),
                "/dev (tmpfs)",
            ),
            (
                "/dev/pts",
                "devpts",
                MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
                "/dev/pts (devpts)",
            ),
            (
                "/dev/shm",
                "tmpfs",
                nodev,
                Some("mode=1777"),
                "/dev/shm (tmpfs)",
            ),
            (
                "/sys",
                "sysfs",
                nodev | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY,
                None,
                "/sys (sysfs, read-only)",
            ),
            ("/run", "tmpfs", nodev, Some("mode=0755"), "/run (tmpfs)"),
        ];
        for (path, fstype, flags, data, what) in kernel_fs {
            st.mounts.push(Mount::in_root(
                root,
                path,
                Some(Path::new(fstype)),
                Some(fstype),
                flags,
                data,
                what,
            )?);
            // The device nodes go on the fresh /dev before anything mounts below it.
            if path == "/dev" {
                self.populate_dev()?;
            }
        }
        // Debian's /var/lock is a link to /run/lock.
        root.mkdir_all("/run/lock", Attrs::mode(0o1777))
            .map_err(file_err("creating /run/lock"))?;
        // Each command mounts its own /proc here.
        self.borrowed
            .put_dir(root, "/proc", 0o555)
            .map_err(file_err("creating /proc"))?;
        if let Some(shared) = self.cache_dir.as_ref().map(|d| d.join(APT_ARCHIVES_CACHE)) {
            let (archives, opened) =
                BuildArchives::open(&shared).map_err(|source| SetupError::Host {
                    what: "preparing this build's folder of the apt archives cache",
                    path: shared.clone(),
                    source,
                })?;
            for gone in &opened.swept {
                pgimg_stdlib::stderr_line!(
                    "pgimg: removed {}: the apt archives folder of a build that is gone",
                    gone.display()
                );
            }
            let host = archives.path().to_path_buf();
            st.apt_archives = Some(archives);
            self.borrowed
                .put_dir(root, APT_ARCHIVES, 0o755)
                .map_err(file_err(format!("creating {APT_ARCHIVES}")))?;
            st.apt_cache = Some(Mount::bind_in_root(
                root,
                &host,
                APT_ARCHIVES,
                "the apt archives cache",
            )?);
        }

        // A link to a script on the build's /run: `update-alternatives`
        // replaces a link (a package providing policy-rc.d that way then keeps
        // it), while it refuses to replace a regular file.
        root.write(POLICY_RC_D_SCRIPT, POLICY_RC_D_DENY, Attrs::mode(0o755))
            .map_err(file_err(format!("writing {POLICY_RC_D_SCRIPT}")))?;
        // Resumed from a checkpoint, a path the recipe made its own stays so.
        if self.borrowed.holds(root, POLICY_RC_D) != Some(false) {
            self.borrowed
                .put_link(root, POLICY_RC_D, POLICY_RC_D_SCRIPT)
                .map_err(file_err("putting /usr/sbin/policy-rc.d in place"))?;
        }

        let host_dns =
            std::fs::read(&self.host_resolv_conf).map_err(|source| SetupError::Host {
                what: "reading the host's DNS configuration",
                path: self.host_resolv_conf.clone(),
                source,
            })?;
        // Often a link to a file that exists only on a booted system
        // (systemd-resolved): a plain file takes its place for the build.
        if self.borrowed.holds(root, RESOLV_CONF) != Some(false) {
            self.borrowed
                .put_file(root, RESOLV_CONF, &host_dns, 0o644)
                .map_err(file_err("putting /etc/resolv.conf in place"))?;
        }
        Ok(())
    }

    /// Device nodes and links of a minimal `/dev` on the fresh tmpfs.
    fn populate_dev(&self) -> Result<(), SetupError> {
        let root = &self.root;
        let dev = root.open_read("/dev").map_err(file_err("opening /dev"))?;
        for (name, major, minor) in [
            ("null", 1, 3),
            ("zero", 1, 5),
            ("full", 1, 7),
            ("random", 1, 8),
            ("urandom", 1, 9),
            ("tty", 5, 0),
        ] {
            let failed = |e: nix::errno::Errno| SetupError::File {
                what: format!("creating /dev/{name}"),
                source: FsError::Io {
                    path: format!("/dev/{name}"),
                    source: e.into(),
                },
            };
            mknodat(
                dev.as_fd(),
                name,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o666),
                makedev(major, minor),
            )
            .map_err(failed)?;
            // mknod applied the umask.
            fchmodat(
                dev.as_fd(),
                name,
                Mode::from_bits_truncate(0o666),
                FchmodatFlags::NoFollowSymlink,
            )
            .or_else(|_| {
                fchmodat(
                    dev.as_fd(),
                    name,
                    Mode::from_bits_truncate(0o666),
                    FchmodatFlags::FollowSymlink,
                )
            })
            .map_err(failed)?;
        }
        for (target, link) in [
            ("pts/ptmx", "/dev/ptmx"),
            ("/proc/self/fd", "/dev/fd"),
            ("/proc/self/fd/0", "/dev/stdin"),
            ("/proc/self/fd/1", "/dev/stdout"),
            ("/proc/self/fd/2", "/dev/stderr"),
        ] {
            root.symlink(target, link)
                .map_err(file_err(format!("creating {link}")))?;
        }
        for d in ["/dev/pts", "/dev/shm"] {
            root.mkdir_all(d, Attrs::mode(0o755))
                .map_err(file_err(format!("creating {d}")))?;
        }
        Ok(())
    }

    /// Mounts inside the image root that are not the sandbox's own (nor the
    /// root itself): finalize refuses to delete anything while one exists,
    /// since a recursive delete would reach into it.
    pub fn foreign_mounts(&self) -> std::io::Result<Vec<PathBuf>> {
        let st = self.state.lock().unwrap();
        let mut own = st.mounts.targets();
        own.extend(st.apt_cache.as_ref().map(|m| m.target().to_path_buf()));
        let canonical = std::fs::canonicalize(&self.dir)?;
        Ok(mountpoints_under(&canonical)?
            .into_iter()
            .filter(|m| *m != canonical && !own.contains(m))
            .collect())
    }

    /// Unbinds the host's apt archives cache from the image, so `apt-get
    /// clean` and finalize empty the image's own directory, never the cache.
    pub fn release_apt_cache(&self) -> Result<(), SetupError> {
        let mut st = self.state.lock().unwrap();
        if let Some(m) = st.apt_cache.take() {
            m.close()?;
        }
        give_back_archives(st.apt_archives.take())
    }

    /// Unmounts everything, newest first, then gives back the borrowed paths
    /// (resolv.conf, policy-rc.d, `borrow_file`s, mount points pgimg created). Does every step even when one fails and
    /// returns the first failure. Idempotent; `Drop` calls it too.
    pub fn teardown(&self) -> Result<(), SetupError> {
        let mut st = self.state.lock().unwrap();
        if st.torn_down {
            return Ok(());
        }
        st.torn_down = true;
        let mut errors: Vec<SetupError> = Vec::new();
        if let Some(m) = st.apt_cache.take() {
            if let Err(e) = m.close() {
                errors.push(e.into());
            }
        }
        if let Err(e) = give_back_archives(st.apt_archives.take()) {
            errors.push(e);
        }
        if let Err(e) = std::mem::take(&mut st.mounts).close() {
            errors.push(e.into());
        }
        // After the unmounts: a mount point pgimg created is empty only then.
        match self.borrowed.give_back(&self.root) {
            Ok(outcomes) => {
                for o in outcomes {
                    if let Outcome::KeptTheBuilds(path) = o {
                        pgimg_stdlib::stderr_line!(
                            "pgimg: note: the build changed {path}; keeping its version instead of the image's original"
                        );
                    }
                }
            }
            Err(e) => errors.push(file_err("giving back the paths borrowed for the build")(e)),
        }
        let mut errors = errors.into_iter();
        let first = errors.next();
        for e in errors {
            pgimg_stdlib::stderr_line!("pgimg: warning: tearing down the sandbox: {e}");
        }
        first.map_or(Ok(()), Err)
    }

    fn base_env(&self, cmd: &Command) -> Vec<(String, String)> {
        let mut env: BTreeMap<String, String> = BASE_ENV
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        env.extend(cmd.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.into_iter().collect()
    }

    /// Host directories for the command's caches, created, with their
    /// in-image mountpoints created too. Without a cache dir, none are bound.
    fn command_caches(&self, cmd: &Command) -> Result<Vec<(PathBuf, String)>, String> {
        let mut out = Vec::new();
        for (name, in_image) in &cmd.caches {
            let valid_name = !name.is_empty()
                && name != "."
                && name != ".."
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
            if !valid_name {
                return Err(format!(
                    "cache name `{name}`: use letters, digits, `.`, `_`, `-`"
                ));
            }
            if !in_image.starts_with('/') || in_image.trim_matches('/').is_empty() {
                return Err(format!(
                    "cache `{name}`: `{in_image}` is not an absolute path below /"
                ));
            }
            let Some(host) = self.cache_dir(name) else {
                continue;
            };
            std::fs::create_dir_all(&host)
                .map_err(|e| format!("creating the host cache {}: {e}", host.display()))?;
            match self.root.stat(in_image).map(|s| s.kind) {
                Ok(FileKind::Dir) => {}
                Ok(_) => {
                    return Err(format!(
                        "cache `{name}`: {in_image} exists in the image and is not a directory"
                    ))
                }
                Err(e) if e.is_not_found() => self
                    .borrowed
                    .put_dir(&self.root, in_image, 0o755)
                    .map_err(|e| format!("cache `{name}`: creating {e}"))?,
                Err(e) => return Err(format!("cache `{name}`: {e}")),
            }
            out.push((host, in_image.clone()));
        }
        Ok(out)
    }

    fn spec(
        &self,
        cmd: &Command,
        stdio: Stdio,
        extra_env: &[(&str, String)],
    ) -> Result<Spec, CommandError> {
        let spawn_err = |reason: String| CommandError::Spawn {
            command: cmd.to_string(),
            reason,
        };
        if self.state.lock().unwrap().torn_down {
            return Err(spawn_err(format!(
                "the sandbox on {} was torn down",
                self.dir.display()
            )));
        }
        if cmd.argv.is_empty() {
            return Err(spawn_err("empty argv".into()));
        }
        let mut env = self.base_env(cmd);
        for (k, v) in extra_env {
            if !cmd.env.contains_key(*k) {
                env.push((k.to_string(), v.clone()));
            }
        }
        Ok(Spec {
            root: self.dir.clone(),
            argv: cmd.argv.clone(),
            env,
            cwd: cmd.cwd.clone().unwrap_or_else(|| "/".into()),
            caches: self.command_caches(cmd).map_err(spawn_err)?,
            stdio,
            timeout: cmd.timeout,
        })
    }

    /// Runs `cmd` with pgimg's own stdin, stdout, stderr and terminal (for
    /// `pgimg shell`) and returns its exit code (128 + N when killed by
    /// signal N). `TERM` is passed through from pgimg's environment.
    pub fn run_interactive(&self, cmd: &Command) -> Result<i32, CommandError> {
        if self.interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CommandError::Interrupted);
        }
        let term: Vec<(&str, String)> = std::env::var("TERM")
            .map(|t| vec![("TERM", t)])
            .unwrap_or_default();
        let spec = self.spec(cmd, Stdio::Inherit, &term)?;
        let finished =
            exec::run(&spec, self.interrupt, &mut |_, _| {}).map_err(|e| CommandError::Spawn {
                command: cmd.to_string(),
                reason: e.0,
            })?;
        match finished.ending {
            Ending::Exited(code) => Ok(code),
            Ending::Signaled(sig) => Ok(128 + sig),
            Ending::TimedOut(after) => Err(CommandError::TimedOut {
                command: cmd.to_string(),
                after,
            }),
            Ending::Interrupted => Err(CommandError::Interrupted),
        }
    }
}

/// The host's apt archives cache as apt expects the directory: `partial/`
/// and a `lock` file (apt chowns `partial/` to its `_apt` user itself).
/// Puts the packages a build downloaded into the shared cache and removes
/// the build's folder (see [`BuildArchives::give_back`]).
fn give_back_archives(archives: Option<BuildArchives>) -> Result<(), SetupError> {
    let Some(archives) = archives else {
        return Ok(());
    };
    let path = archives.path().to_path_buf();
    archives.give_back().map_err(|source| SetupError::Host {
        what: "giving the build's apt packages back to the cache from",
        path,
        source,
    })?;
    Ok(())
}

/// Free space on the host file system holding the image file below which a
/// "no space left" is the host's: the image file could not take the loop
/// device's writes (the kernel logs "critical space allocation error").
pub(crate) const HOST_ROOM: u64 = 64 << 20;

/// Bytes root may still write in the file system at `dir` (root may use
/// the blocks reserved for it, so `f_bfree`).
pub(crate) fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(st.blocks_free() as u64 * st.fragment_size() as u64)
}

/// The line of `stderr` that says the disk is full, if one does.
pub(crate) fn disk_full_line(stderr_tail: &str) -> Option<String> {
    const SIGNS: [&str; 3] = ["no space left on device", "enospc", "enough free space"];
    stderr_tail
        .lines()
        .rev()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            SIGNS.iter().any(|s| l.contains(s))
        })
        .map(|l| l.trim().to_string())
}

fn signal_name(sig: i32) -> String {
    match nix::sys::signal::Signal::try_from(sig) {
        Ok(s) => format!("signal {sig} ({})", s.as_str()),
        Err(_) => format!("signal {sig}"),
    }
}

impl Target for ChrootTarget {
    fn root(&self) -> &ImageRoot {
        &self.root
    }

    fn run(&self, cmd: &Command) -> Result<Output, CommandError> {
        if self.interrupt.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(CommandError::Interrupted);
        }
        let spec = self.spec(
            cmd,
            Stdio::Piped {
                stdin: cmd.stdin.clone(),
            },
            &[],
        )?;
        let label = cmd.label.as_str();
        let log = &self.log;
        let finished = exec::run(&spec, self.interrupt, &mut |stream, line| {
            log(label, stream, line)
        })
        .map_err(|e| CommandError::Spawn {
            command: cmd.to_string(),
            reason: e.0,
        })?;
        let stderr_tail = tail(&finished.stderr, STDERR_KEEP);
        let status = match finished.ending {
            Ending::Exited(0) => {
                return Ok(Output {
                    stdout: finished.stdout,
                    stderr_tail,
                })
            }
            Ending::Exited(code) => format!("exit status {code}"),
            Ending::Signaled(sig) => signal_name(sig),
            Ending::TimedOut(after) => {
                return Err(CommandError::TimedOut {
                    command: cmd.to_string(),
                    after,
                })
            }
            Ending::Interrupted => return Err(CommandError::Interrupted),
        };
        if let Some(detail) = disk_full_line(&stderr_tail) {
            let detail = format!("`{cmd}` failed ({status}): {detail}");
            // The image is mounted from a file in the work folder, which
            // holds the mount point: that folder's file system is the host's.
            let host_free = self.dir.parent().and_then(free_bytes);
            return Err(match host_free {
                Some(free) if free < HOST_ROOM => CommandError::HostFull {
                    detail,
                    host_free: indicatif::HumanBytes(free).to_string(),
                },
                _ => CommandError::DiskFull { detail },
            });
        }
        Err(CommandError::Failed {
            command: cmd.to_string(),
            status,
            stderr_tail,
        })
    }

    fn fetcher(&self) -> &dyn Fetcher {
        self.fetcher.as_ref()
    }

    fn facts(&self) -> &Facts {
        &self.facts
    }

    fn borrowed(&self) -> Option<&Borrowed> {
        Some(&self.borrowed)
    }

    /// The host folder bound for the cache `name`: for the apt archives,
    /// the build's own folder while it has one (none after finalize let it go).
    fn cache_dir(&self, name: &str) -> Option<PathBuf> {
        if name == APT_ARCHIVES_CACHE {
            let st = self.state.lock().unwrap();
            return st.apt_archives.as_ref().map(|a| a.path().to_path_buf());
        }
        self.cache_dir.as_ref().map(|d| d.join(name))
    }
}

impl Drop for ChrootTarget {
    /// Tears down (restores files, unmounts) if the caller did not; failures are logged.
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            pgimg_stdlib::stderr_line!(
                "pgimg: warning: tearing down the sandbox on {}: {e}",
                self.dir.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgimg_stdlib::fake::temp_root;

    #[test]
    fn recognises_a_full_disk() {
        for (tail, want) in [
            (
                "dpkg: error: No space left on device\n",
                Some("dpkg: error: No space left on device"),
            ),
            ("write: ENOSPC\nother\n", Some("write: ENOSPC")),
            (
                "E: You don't have enough free space in /var/cache/apt/archives/.\n",
                Some("E: You don't have enough free space in /var/cache/apt/archives/."),
            ),
            ("E: Unable to locate package nope\n", None),
        ] {
            assert_eq!(disk_full_line(tail).as_deref(), want, "{tail:?}");
        }
    }

    #[test]
    fn command_env_overrides_the_base() {
        let opts = SandboxOptions::new(Box::new(pgimg_stdlib::fetch::RecordingFetcher::default()));
        let (_d, r) = temp_root();
        let t = ChrootTarget {
            dir: PathBuf::from("/nonexistent"),
            root: r,
            facts: Facts {
                arch: "amd64".into(),
            },
            fetcher: opts.fetcher,
            cache_dir: None,
            log: opts.log,
            interrupt: opts.interrupt,
            host_resolv_conf: opts.host_resolv_conf,
            borrowed: Borrowed::default(),
            state: Mutex::new(State {
                torn_down: true,
                ..State::default()
            }),
        };
        let env = t.base_env(
            &Command::new(["x"])
                .env("PATH", "/opt/bin")
                .env("GOFLAGS", "-mod=vendor"),
        );
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("PATH"), Some("/opt/bin"));
        assert_eq!(get("GOFLAGS"), Some("-mod=vendor"));
        assert_eq!(get("LC_ALL"), Some("C.UTF-8"));
        assert_eq!(env.len(), 6);
        // A torn-down target refuses to run anything.
        assert!(matches!(
            t.run(&Command::new(["true"])),
            Err(CommandError::Spawn { .. })
        ));
    }
}
