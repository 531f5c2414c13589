//! Looking into a built image from system tests: its root mounted
//! read-only, `e2fsck -fn`, allocated size, `/etc/passwd`-style fields, and
//! the finalize stage's cleanup.
//!
//! Use it from a test file with `#[path = "support/output.rs"] mod output;`.

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

/// Runs `f` on the output's root file system mounted read-only, in a
/// private mount namespace of a thread of its own (nothing of it is visible
/// outside that thread, and it all goes away with the thread).
pub fn with_root_read_only<T: Send>(image: &Path, f: impl FnOnce(&Path) -> T + Send) -> T {
    use pgimg::sandbox::{namespace, Mount};
    std::thread::scope(|s| {
        s.spawn(|| {
            namespace::private_namespace_for_calling_thread().expect("a private mount namespace");
            let img = pgimg::image::WorkImage::open(image).expect("reading the image");
            let lo = img
                .attach_root_read_only()
                .expect("attaching the root read-only");
            let mnt = tempfile::Builder::new()
                .prefix("pgimg-run-test-ro-")
                .tempdir()
                .unwrap()
                .keep();
            let m = Mount::host(
                Some(lo.path()),
                &mnt,
                Some("ext4"),
                nix::mount::MsFlags::MS_RDONLY,
                None,
                "the output's root (read-only)",
            )
            .expect("mounting the output's root read-only");
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&mnt)));
            m.close().expect("unmounting");
            let _ = std::fs::remove_dir(&mnt);
            lo.close().expect("detaching");
            r.unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// `e2fsck -fn` on the image's root partition (attached read-only); its output.
pub fn e2fsck_clean(image: &Path) -> String {
    let img = pgimg::image::WorkImage::open(image).unwrap();
    let lo = img.attach_root_read_only().unwrap();
    let out = Command::new("e2fsck")
        .args(["-fn"])
        .arg(lo.path())
        .output()
        .unwrap();
    lo.close().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "e2fsck -fn: {}\n{text}", out.status);
    text
}

pub fn allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().blocks() * 512
}

pub fn field(line: &str, n: usize) -> &str {
    line.split(':').nth(n).unwrap_or("")
}

/// The members of `group` in `/etc/group` under `root`.
pub fn group_members(root: &Path, group: &str) -> Vec<String> {
    let text = std::fs::read_to_string(root.join("etc/group")).unwrap();
    let line = text
        .lines()
        .find(|l| field(l, 0) == group)
        .unwrap_or_else(|| panic!("no group {group}"));
    field(line, 3)
        .split(',')
        .filter(|m| !m.is_empty())
        .map(str::to_string)
        .collect()
}

pub fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// What pgimg's finalize stage leaves on every output: no SSH host keys, an
/// empty `/etc/machine-id`, no root password, no apt lists or archived
/// `.deb`s, an empty `/tmp`, and no `policy-rc.d`.
pub fn check_finalized(root: &Path) {
    let ssh: Vec<String> = names_in(&root.join("etc/ssh"))
        .into_iter()
        .filter(|n| n.starts_with("ssh_host_"))
        .collect();
    assert_eq!(ssh, Vec::<String>::new(), "SSH host keys removed");
    let machine_id = std::fs::metadata(root.join("etc/machine-id")).unwrap();
    assert_eq!(machine_id.len(), 0, "/etc/machine-id truncated to 0 bytes");
    let shadow = std::fs::read_to_string(root.join("etc/shadow")).unwrap();
    let root_line = shadow.lines().find(|l| field(l, 0) == "root").unwrap();
    assert_eq!(
        field(root_line, 1),
        "",
        "root password removed: {root_line}"
    );
    let lists = root.join("var/lib/apt/lists");
    for n in names_in(&lists) {
        assert!(n == "lock" || n == "partial", "/var/lib/apt/lists/{n} left");
    }
    if lists.join("partial").exists() {
        assert_eq!(names_in(&lists.join("partial")), Vec::<String>::new());
    }
    let archives: Vec<String> = names_in(&root.join("var/cache/apt/archives"))
        .into_iter()
        .filter(|n| n.ends_with(".deb"))
        .collect();
    assert_eq!(
        archives,
        Vec::<String>::new(),
        "no .deb left in apt's archive cache"
    );
    assert_eq!(
        names_in(&root.join("tmp")),
        Vec::<String>::new(),
        "/tmp emptied"
    );
    assert!(
        !root.join("usr/sbin/policy-rc.d").exists(),
        "policy-rc.d removed"
    );
}
