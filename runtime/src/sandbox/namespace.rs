//! Puts the build into a private mount namespace, so the kernel releases every mount it makes.
//!
//! Why: if pgimg is killed with SIGKILL, no teardown code runs. A mount
//! namespace is freed when its last process exits; every mount inside it goes
//! with it, which in turn lets auto-clear loop devices detach. `/` is made
//! recursively private first so nothing mounted here propagates back to the
//! host (systemd hosts mount `/` shared).

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

/// Entering the namespace failed; nothing was changed when this is returned
/// before the `unshare`.
#[derive(Debug, thiserror::Error)]
pub enum NamespaceError {
    #[error(
        "pgimg has {threads} threads: a private mount namespace must be entered before any \
         thread starts (unshare moves only the calling thread)"
    )]
    Threaded { threads: usize },
    #[error("reading /proc/self/status: {0}")]
    Status(#[source] std::io::Error),
    #[error("unshare(CLONE_NEWNS): {0} (pgimg needs root: CAP_SYS_ADMIN)")]
    Unshare(#[source] nix::Error),
    #[error("making / recursively private: {0}")]
    MakePrivate(#[source] nix::Error),
    /// mount(2) answers EINVAL for a path that is not a mount point: `/` of a
    /// plain chroot. Making a mount of our own there would propagate to the
    /// host's namespace, so pgimg stops instead.
    #[error(
        "making / recursively private: / is not a mount point (is pgimg running in a chroot?): \
         run it where / is a mount (a VM or a container), or make the chroot a mount point first \
         (`mount --bind DIR DIR`, then chroot into DIR)"
    )]
    RootNotAMount,
}

/// Moves the whole pgimg process into a new, private mount namespace.
///
/// Call it at the very start of `pgimg run` and `pgimg shell`, before clap,
/// logging or anything else may have started a thread: in a multi-threaded
/// process `unshare(CLONE_NEWNS)` moves only the calling thread, and a mount
/// made later from another thread would land in the host's namespace, outside
/// the SIGKILL guarantee. It refuses (with [`NamespaceError::Threaded`]) when
/// more than one thread exists.
pub fn enter_private_mount_namespace() -> Result<(), NamespaceError> {
    let threads = thread_count()?;
    if threads != 1 {
        return Err(NamespaceError::Threaded { threads });
    }
    private_namespace_for_calling_thread()
}

/// Moves only the calling thread into a new, private mount namespace.
///
/// For a process that is already multi-threaded and does every mount, image
/// file access and command spawn of the build from this one thread (the test
/// harness runs each test in its own thread). Threads it starts afterwards
/// inherit the namespace; threads that already exist do not. Inspect its
/// mounts through `/proc/thread-self/mountinfo`, not `/proc/self/...`, which
/// shows the main thread's namespace.
pub fn private_namespace_for_calling_thread() -> Result<(), NamespaceError> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(NamespaceError::Unshare)?;
    mount(
        None::<&str>,
        Path::new("/"),
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| match e {
        nix::Error::EINVAL => NamespaceError::RootNotAMount,
        e => NamespaceError::MakePrivate(e),
    })
}

fn thread_count() -> Result<usize, NamespaceError> {
    let status = std::fs::read_to_string("/proc/self/status").map_err(NamespaceError::Status)?;
    parse_threads(&status)
        .ok_or_else(|| NamespaceError::Status(std::io::Error::other("no `Threads:` line")))
}

fn parse_threads(status: &str) -> Option<usize> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_thread_count() {
        for (status, want) in [
            ("Name:\tpgimg\nThreads:\t1\nSigQ:\t0/1\n", Some(1)),
            ("Threads:\t17\n", Some(17)),
            ("Name:\tx\n", None),
        ] {
            assert_eq!(parse_threads(status), want, "{status:?}");
        }
    }

    /// The unit-test harness itself runs tests on threads.
    #[test]
    fn refuses_a_multi_threaded_process() {
        let _keep = std::thread::spawn(|| std::thread::sleep(std::time::Duration::from_secs(2)));
        match enter_private_mount_namespace() {
            Err(NamespaceError::Threaded { threads }) => assert!(threads >= 2),
            other => panic!("expected Threaded, got {other:?}"),
        }
    }
}
