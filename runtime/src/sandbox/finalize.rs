//! The image's cleanup for first boot (the seed's list), each item switchable by a recipe.
//!
//! Runs inside the set-up sandbox, after the recipe and before
//! [`ChrootTarget::teardown`] (which restores `resolv.conf` and `policy-rc.d`
//! and unmounts). File work goes through [`ImageRoot`]; only `apt-get clean`
//! and `cloud-init clean` run in the chroot, because their packages know what
//! they own.
//!
//! Logs: files under `/var/log` are truncated to 0 bytes, keeping their owner
//! and mode, and the directories stay: services such as PostgreSQL expect
//! their log directory and file to exist with their permissions. Rotated or
//! compressed logs (`syslog.1`, `*.gz`, …) and binary journal files are removed
//! instead (an empty journal file would be reported as corrupt).

use std::fmt;

use pgimg_stdlib::root::{Attrs, FileKind, FsError, ImageRoot};
use pgimg_stdlib::shared::HumanBytes;
use pgimg_stdlib::target::{Command, CommandError, Target};
use serde::Deserialize;

use super::chroot::ChrootTarget;
use super::mounts::MountError;

/// Which cleanup items run; all are on by default. A recipe switches one off
/// by name (`#{ logs: false }`); an unknown name is an error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinalizeOptions {
    /// Remove `/etc/ssh/ssh_host_*` (regenerated on first boot).
    pub ssh_host_keys: bool,
    /// Empty root's password field in `/etc/shadow` (and its `shadow-` backup), like `passwd -d root`.
    pub root_password: bool,
    /// `apt-get clean`; empty `/var/lib/apt/lists` and `/var/cache/apt/archives` (keeping `partial/` and `lock`).
    pub apt: bool,
    /// `cloud-init clean --logs` when cloud-init is installed; empty `/var/lib/cloud` (keeping `seed/`).
    pub cloud_init: bool,
    /// Truncate the files under `/var/log`; remove rotated ones and journals.
    pub logs: bool,
    /// Remove shell and tool histories from every home directory.
    pub shell_histories: bool,
    /// Remove `~/.cache` from every home directory.
    pub caches: bool,
    /// Empty `/tmp` and `/var/tmp`.
    pub tmp: bool,
    /// Truncate `/etc/machine-id` to 0 bytes, so first boot generates one.
    pub machine_id: bool,
}

impl Default for FinalizeOptions {
    fn default() -> Self {
        FinalizeOptions {
            ssh_host_keys: true,
            root_password: true,
            apt: true,
            cloud_init: true,
            logs: true,
            shell_histories: true,
            caches: true,
            tmp: true,
            machine_id: true,
        }
    }
}

/// What one item did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemReport {
    pub name: &'static str,
    /// Files, links and directories removed (directories count with their contents).
    pub removed: u64,
    /// Files truncated or edited in place.
    pub emptied: u64,
    /// Bytes of file content removed or truncated away.
    pub bytes: u64,
    /// Set when the item did not run.
    pub skipped: Option<&'static str>,
}

/// What finalize did, item by item, for the log.
#[derive(Debug, Clone, Default)]
pub struct FinalizeReport {
    pub items: Vec<ItemReport>,
}

impl FinalizeReport {
    pub fn item(&self, name: &str) -> Option<&ItemReport> {
        self.items.iter().find(|i| i.name == name)
    }
}

impl fmt::Display for FinalizeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match item.skipped {
                Some(why) => write!(f, "{}: skipped ({why})", item.name)?,
                None => write!(
                    f,
                    "{}: {} removed, {} emptied, {} freed",
                    item.name,
                    item.removed,
                    item.emptied,
                    HumanBytes(item.bytes)
                )?,
            }
        }
        Ok(())
    }
}

/// A cleanup item failed; names it.
#[derive(Debug, thiserror::Error)]
pub enum FinalizeError {
    #[error(
        "finalize: refusing to delete files while something is mounted inside the image: {}",
        .mounts.iter().map(|m| m.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    Mounted { mounts: Vec<std::path::PathBuf> },
    #[error("finalize {item}: {source}")]
    Fs {
        item: &'static str,
        #[source]
        source: FsError,
    },
    #[error("finalize {item}: {source}")]
    Command {
        item: &'static str,
        #[source]
        source: CommandError,
    },
    #[error("finalize {item}: {source}")]
    Mount {
        item: &'static str,
        #[source]
        source: MountError,
    },
}

type ItemFn<'a> = dyn Fn(&mut ItemReport) -> Result<(), FinalizeError> + 'a;

/// Runs the enabled cleanup items in a fixed order; stops at the first failure.
pub fn finalize(
    target: &ChrootTarget,
    opts: &FinalizeOptions,
) -> Result<FinalizeReport, FinalizeError> {
    // Nothing writes to the host's apt cache after the recipe; and with it
    // still bound, `apt-get clean` would empty the cache instead of the image.
    target
        .release_apt_cache()
        .map_err(|source| FinalizeError::Mount {
            item: "apt",
            source,
        })?;
    let foreign = target.foreign_mounts().map_err(|e| FinalizeError::Fs {
        item: "mount check",
        source: FsError::Io {
            path: "/proc/thread-self/mountinfo".into(),
            source: e,
        },
    })?;
    if !foreign.is_empty() {
        return Err(FinalizeError::Mounted { mounts: foreign });
    }
    let root = target.root();
    let mut report = FinalizeReport::default();
    let items: [(&'static str, bool, &ItemFn); 9] = [
        ("apt", opts.apt, &|r| apt(target, r)),
        ("cloud_init", opts.cloud_init, &|r| cloud_init(target, r)),
        ("ssh_host_keys", opts.ssh_host_keys, &|r| {
            fs("ssh_host_keys", ssh_host_keys(root, r))?;
            fs("ssh_host_keys", ssh_keygen_at_first_boot(root))
        }),
        ("root_password", opts.root_password, &|r| {
            fs("root_password", root_password(root, r))
        }),
        ("shell_histories", opts.shell_histories, &|r| {
            fs("shell_histories", shell_histories(root, r))
        }),
        ("caches", opts.caches, &|r| fs("caches", caches(root, r))),
        ("logs", opts.logs, &|r| {
            fs("logs", logs(root, "/var/log", r))
        }),
        ("tmp", opts.tmp, &|r| fs("tmp", tmp(root, r))),
        ("machine_id", opts.machine_id, &|r| {
            fs("machine_id", machine_id(root, r))?;
            fs("machine_id", dbus_machine_id(root, r))?;
            fs("machine_id", random_seed(root, r))
        }),
    ];
    for (name, enabled, run) in items {
        let mut item = ItemReport {
            name,
            ..ItemReport::default()
        };
        if enabled {
            run(&mut item)?;
        } else {
            item.skipped = Some("switched off by the recipe");
        }
        report.items.push(item);
    }
    Ok(report)
}

fn fs<T>(item: &'static str, r: Result<T, FsError>) -> Result<T, FinalizeError> {
    r.map_err(|source| FinalizeError::Fs { item, source })
}

/// Entries (files, links, directories) and file bytes under `path`, itself included.
fn usage(root: &ImageRoot, path: &str) -> Result<(u64, u64), FsError> {
    let st = match root.lstat(path) {
        Ok(st) => st,
        Err(e) if e.is_not_found() => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    if st.kind != FileKind::Dir {
        return Ok((
            1,
            if st.kind == FileKind::File {
                st.size
            } else {
                0
            },
        ));
    }
    let mut total = (1, 0);
    for name in root.read_dir(path)? {
        let (n, b) = usage(root, &format!("{}/{name}", path.trim_end_matches('/')))?;
        total.0 += n;
        total.1 += b;
    }
    Ok(total)
}

/// Removes `path` (recursively) and counts what went.
fn remove_counted(root: &ImageRoot, path: &str, r: &mut ItemReport) -> Result<(), FsError> {
    let (n, b) = usage(root, path)?;
    if root.remove(path)? {
        r.removed += n;
        r.bytes += b;
    }
    Ok(())
}

/// Removes the entries of the directory `dir` except those named in `keep`.
fn empty_dir(
    root: &ImageRoot,
    dir: &str,
    keep: &[&str],
    r: &mut ItemReport,
) -> Result<(), FsError> {
    if root.kind(dir) != Some(FileKind::Dir) {
        return Ok(());
    }
    for name in root.read_dir(dir)? {
        if !keep.contains(&name.as_str()) {
            remove_counted(root, &format!("{}/{name}", dir.trim_end_matches('/')), r)?;
        }
    }
    Ok(())
}

fn in_image_command(argv: &[&str]) -> Command {
    Command {
        label: "finalize".into(),
        timeout: Some(std::time::Duration::from_secs(600)),
        ..Command::new(argv.iter().copied())
    }
}

fn apt(target: &ChrootTarget, r: &mut ItemReport) -> Result<(), FinalizeError> {
    const ITEM: &str = "apt";
    // `finalize` released the host's apt cache first.
    let root = target.root();
    if root.exists("/usr/bin/apt-get") {
        let (_, before) = fs(ITEM, usage(root, "/var/cache/apt"))?;
        target
            .run(&in_image_command(&["apt-get", "clean"]))
            .map_err(|source| FinalizeError::Command { item: ITEM, source })?;
        let (_, after) = fs(ITEM, usage(root, "/var/cache/apt"))?;
        r.bytes += before.saturating_sub(after);
    }
    for dir in ["/var/lib/apt/lists", "/var/cache/apt/archives"] {
        fs(ITEM, empty_dir(root, dir, &["partial", "lock"], r))?;
        fs(ITEM, empty_dir(root, &format!("{dir}/partial"), &[], r))?;
    }
    // What `apt-get clean` removes, for an image without apt-get.
    for bin in [
        "/var/cache/apt/pkgcache.bin",
        "/var/cache/apt/srcpkgcache.bin",
    ] {
        fs(ITEM, remove_counted(root, bin, r))?;
    }
    Ok(())
}

fn cloud_init(target: &ChrootTarget, r: &mut ItemReport) -> Result<(), FinalizeError> {
    const ITEM: &str = "cloud_init";
    let root = target.root();
    if root.exists("/usr/bin/cloud-init") {
        target
            .run(&in_image_command(&["cloud-init", "clean", "--logs"]))
            .map_err(|source| FinalizeError::Command { item: ITEM, source })?;
    }
    // What `cloud-init clean` leaves, it leaves the seed too.
    fs(ITEM, empty_dir(root, "/var/lib/cloud", &["seed"], r))
}

fn ssh_host_keys(root: &ImageRoot, r: &mut ItemReport) -> Result<(), FsError> {
    if root.kind("/etc/ssh") != Some(FileKind::Dir) {
        return Ok(());
    }
    for name in root.read_dir("/etc/ssh")? {
        if name.starts_with("ssh_host_") {
            remove_counted(root, &format!("/etc/ssh/{name}"), r)?;
        }
    }
    Ok(())
}

/// `shadow` with `user`'s password field emptied; `None` when the user has no
/// line. Every other byte is kept.
fn clear_password(shadow: &str, user: &str) -> Option<(String, bool)> {
    let mut found = None;
    let mut out = String::with_capacity(shadow.len());
    for line in shadow.split_inclusive('\n') {
        let mut fields = line.splitn(3, ':');
        let name = fields.next().unwrap_or_default();
        match (fields.next(), fields.next()) {
            (Some(password), Some(rest)) if name == user && found.is_none() => {
                found = Some(!password.is_empty());
                out.push_str(name);
                out.push_str("::");
                out.push_str(rest);
            }
            _ => out.push_str(line),
        }
    }
    found.map(|changed| (out, changed))
}

fn root_password(root: &ImageRoot, r: &mut ItemReport) -> Result<(), FsError> {
    for path in ["/etc/shadow", "/etc/shadow-"] {
        let Some(shadow) = root.read_string_opt(path)? else {
            continue;
        };
        if let Some((edited, changed)) = clear_password(&shadow, "root") {
            if changed {
                // Keeps the file's owner and mode.
                root.write(path, edited.as_bytes(), Attrs::default())?;
                r.emptied += 1;
            }
        }
    }
    Ok(())
}

/// Home directories of the image's accounts that exist (`/root` always
/// first), from `/etc/passwd`.
fn homes(root: &ImageRoot) -> Result<Vec<String>, FsError> {
    let mut homes = vec!["/root".to_string()];
    let passwd = root.read_string_opt("/etc/passwd")?.unwrap_or_default();
    for line in passwd.lines() {
        let Some(home) = line.split(':').nth(5) else {
            continue;
        };
        let home = home.trim_end_matches('/');
        if home.is_empty() || home == "/nonexistent" || homes.iter().any(|h| h == home) {
            continue;
        }
        if root.kind(home) == Some(FileKind::Dir) {
            homes.push(home.to_string());
        }
    }
    Ok(homes)
}

const HISTORIES: [&str; 7] = [
    ".bash_history",
    ".lesshst",
    ".viminfo",
    ".python_history",
    ".psql_history",
    ".sqlite_history",
    ".wget-hsts",
];

fn shell_histories(root: &ImageRoot, r: &mut ItemReport) -> Result<(), FsError> {
    for home in homes(root)? {
        for name in HISTORIES {
            remove_counted(root, &format!("{home}/{name}"), r)?;
        }
    }
    Ok(())
}

fn caches(root: &ImageRoot, r: &mut ItemReport) -> Result<(), FsError> {
    for home in homes(root)? {
        remove_counted(root, &format!("{home}/.cache"), r)?;
    }
    Ok(())
}

/// A rotated, compressed or binary log: removed rather than truncated.
fn is_rotated_log(name: &str) -> bool {
    const SUFFIXES: [&str; 8] = [
        ".gz",
        ".xz",
        ".bz2",
        ".zst",
        ".old",
        "-old",
        ".journal",
        ".journal~",
    ];
    if SUFFIXES.iter().any(|s| name.ends_with(s)) {
        return true;
    }
    // syslog.1, dpkg.log.2
    name.rsplit_once('.')
        .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn logs(root: &ImageRoot, dir: &str, r: &mut ItemReport) -> Result<(), FsError> {
    if root.kind(dir) != Some(FileKind::Dir) {
        return Ok(());
    }
    for name in root.read_dir(dir)? {
        let path = format!("{dir}/{name}");
        let st = root.lstat(&path)?;
        match st.kind {
            FileKind::Dir => logs(root, &path, r)?,
            FileKind::File if is_rotated_log(&name) => remove_counted(root, &path, r)?,
            FileKind::File if st.size > 0 => {
                root.write(&path, b"", Attrs::default())?;
                r.emptied += 1;
                r.bytes += st.size;
            }
            _ => {}
        }
    }
    Ok(())
}

fn tmp(root: &ImageRoot, r: &mut ItemReport) -> Result<(), FsError> {
    empty_dir(root, "/tmp", &[], r)?;
    empty_dir(root, "/var/tmp", &[], r)
}

fn machine_id(root: &ImageRoot, r: &mut ItemReport) -> Result<(), FsError> {
    match root.lstat("/etc/machine-id") {
        Ok(st) if st.kind == FileKind::File => {
            if st.size > 0 {
                root.write("/etc/machine-id", b"", Attrs::default())?;
                r.emptied += 1;
                r.bytes += st.size;
            }
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// The unit pgimg installs when finalize removed the SSH host keys and
/// nothing in the image makes new ones: without keys sshd cannot start
/// (Debian's and Ubuntu's ssh.service run `sshd -t` first).
pub const SSH_KEYGEN_UNIT: &str = "pgimg-ssh-keygen.service";

const SSH_KEYGEN_UNIT_TEXT: &str = "\
[Unit]
Description=Generate SSH host keys missing on first boot (installed by pgimg)
# Once: the keys exist afterwards. After cloud-init, whose ssh module makes
# them when a datasource is found; this only fills in when nothing did.
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
After=cloud-init.service
Before=ssh.service sshd.service ssh.socket

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
RemainAfterExit=yes

[Install]
WantedBy=multi-user.target
";

/// Unit folders of the image, where a key-generating unit would be.
const UNIT_DIRS: [&str; 3] = [
    "/etc/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];

/// Installs and enables [`SSH_KEYGEN_UNIT`] when the image has an SSH server
/// and no unit of its own that generates host keys (Fedora's
/// `sshd-keygen@.service`, Arch's `sshdgenkeys.service`, …). Idempotent.
fn ssh_keygen_at_first_boot(root: &ImageRoot) -> Result<(), FsError> {
    if !root.exists("/usr/sbin/sshd") || !root.exists("/usr/bin/ssh-keygen") {
        return Ok(());
    }
    for dir in UNIT_DIRS {
        if root.kind(dir) != Some(FileKind::Dir) {
            continue;
        }
        for name in root.read_dir(dir)? {
            if name == SSH_KEYGEN_UNIT || !name.ends_with(".service") {
                continue;
            }
            let path = format!("{dir}/{name}");
            if root.kind(&path) != Some(FileKind::File) {
                continue;
            }
            let text = root.read_string_opt(&path)?.unwrap_or_default();
            if text.lines().any(|l| {
                l.trim_start().starts_with("ExecStart")
                    && (l.contains("ssh-keygen") || l.contains("sshd-keygen"))
            }) {
                return Ok(());
            }
        }
    }
    root.write(
        format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}"),
        SSH_KEYGEN_UNIT_TEXT.as_bytes(),
        Attrs::mode(0o644),
    )?;
    let wants = "/etc/systemd/system/multi-user.target.wants";
    root.mkdir_all(wants, Attrs::mode(0o755))?;
    let link = format!("{wants}/{SSH_KEYGEN_UNIT}");
    if root.lstat(&link).is_err() {
        root.symlink(format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}"), &link)?;
    }
    Ok(())
}

/// `/var/lib/dbus/machine-id` (left by the `dbus` package) becomes a link to
/// `/etc/machine-id`: with `/etc/machine-id` empty, systemd takes the id from
/// it at boot, so every clone of the image would share the base's id.
fn dbus_machine_id(root: &ImageRoot, r: &mut ItemReport) -> Result<(), FsError> {
    const DBUS: &str = "/var/lib/dbus/machine-id";
    match root.lstat(DBUS) {
        Ok(st) if st.kind == FileKind::Symlink => Ok(()),
        Ok(_) => {
            remove_counted(root, DBUS, r)?;
            root.symlink("/etc/machine-id", DBUS)
        }
        Err(e) if e.is_not_found() => Ok(()),
        Err(e) => Err(e),
    }
}

/// systemd's saved random seed (and its credential key, systemd 250+) are
/// per machine: a clone must not start from the base's.
fn random_seed(root: &ImageRoot, r: &mut ItemReport) -> Result<(), FsError> {
    for path in [
        "/var/lib/systemd/random-seed",
        "/var/lib/systemd/credential.secret",
    ] {
        remove_counted(root, path, r)?;
    }
    Ok(())
}

#[cfg(test)]
mod first_boot_tests {
    use super::*;

    fn root() -> (tempfile::TempDir, ImageRoot) {
        let d = tempfile::tempdir().unwrap();
        let r = ImageRoot::open(d.path()).unwrap();
        (d, r)
    }

    #[test]
    fn dbus_machine_id_becomes_a_link_to_etc_machine_id() {
        let (_d, r) = root();
        r.write(
            "/var/lib/dbus/machine-id",
            b"0123456789abcdef0123456789abcdef\n",
            Attrs::default(),
        )
        .unwrap();
        let mut rep = ItemReport::default();
        dbus_machine_id(&r, &mut rep).unwrap();
        assert_eq!(
            r.readlink("/var/lib/dbus/machine-id").unwrap(),
            std::path::Path::new("/etc/machine-id")
        );
        assert_eq!(rep.removed, 1);
        // Again: already a link, nothing to do.
        dbus_machine_id(&r, &mut rep).unwrap();
        assert_eq!(rep.removed, 1);
    }

    #[test]
    fn ssh_keygen_unit_is_installed_when_nothing_recreates_host_keys() {
        let (_d, r) = root();
        r.write("/usr/sbin/sshd", b"", Attrs::default()).unwrap();
        r.write("/usr/bin/ssh-keygen", b"", Attrs::default())
            .unwrap();
        r.write(
            "/lib/systemd/system/ssh.service",
            b"[Service]\nExecStartPre=/usr/sbin/sshd -t\n",
            Attrs::default(),
        )
        .unwrap();
        ssh_keygen_at_first_boot(&r).unwrap();
        let unit = r
            .read_string(format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}"))
            .unwrap();
        assert!(unit.contains("ExecStart=/usr/bin/ssh-keygen -A"));
        assert!(unit.contains("Before=ssh.service"));
        assert!(r.exists(format!(
            "/etc/systemd/system/multi-user.target.wants/{SSH_KEYGEN_UNIT}"
        )));
        // Idempotent.
        ssh_keygen_at_first_boot(&r).unwrap();
    }

    #[test]
    fn ssh_keygen_unit_is_not_installed_beside_the_images_own_generator() {
        let (_d, r) = root();
        r.write("/usr/sbin/sshd", b"", Attrs::default()).unwrap();
        r.write("/usr/bin/ssh-keygen", b"", Attrs::default())
            .unwrap();
        r.write(
            "/usr/lib/systemd/system/sshdgenkeys.service",
            b"[Service]\nExecStart=/usr/bin/ssh-keygen -A\n",
            Attrs::default(),
        )
        .unwrap();
        ssh_keygen_at_first_boot(&r).unwrap();
        assert!(!r.exists(format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}")));
    }

    #[test]
    fn no_ssh_server_no_keygen_unit() {
        let (_d, r) = root();
        ssh_keygen_at_first_boot(&r).unwrap();
        assert!(!r.exists(format!("/etc/systemd/system/{SSH_KEYGEN_UNIT}")));
    }

    #[test]
    fn random_seed_is_removed() {
        let (_d, r) = root();
        r.write("/var/lib/systemd/random-seed", b"1234", Attrs::default())
            .unwrap();
        let mut rep = ItemReport::default();
        random_seed(&r, &mut rep).unwrap();
        assert!(!r.exists("/var/lib/systemd/random-seed"));
        assert_eq!((rep.removed, rep.bytes), (1, 4));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clears_only_the_password_field_of_the_user() {
        let shadow =
            "root:$6$salt$hash:19000:0:99999:7:::\nrooty:$6$x:1::::::\nbin:*:19000:0:99999:7:::\n";
        let (out, changed) = clear_password(shadow, "root").unwrap();
        assert!(changed);
        assert_eq!(
            out,
            "root::19000:0:99999:7:::\nrooty:$6$x:1::::::\nbin:*:19000:0:99999:7:::\n"
        );
        // Already empty: nothing to change, and the text is the same.
        let (again, changed) = clear_password(&out, "root").unwrap();
        assert!(!changed);
        assert_eq!(again, out);
        assert!(clear_password("bin:*:1::::::\n", "root").is_none());
        // No trailing newline is preserved as such.
        assert_eq!(
            clear_password("root:!:1::::::", "root").unwrap().0,
            "root::1::::::"
        );
    }

    #[test]
    fn rotated_logs_are_told_apart() {
        for (name, rotated) in [
            ("syslog", false),
            ("dpkg.log", false),
            ("syslog.1", true),
            ("dpkg.log.2.gz", true),
            ("system@0001.journal", true),
            ("btmp", false),
            ("cloud-init.log", false),
            ("alternatives.log.12", true),
        ] {
            assert_eq!(is_rotated_log(name), rotated, "{name}");
        }
    }

    #[test]
    fn options_default_on_and_reject_unknown_names() {
        let o: FinalizeOptions = serde_json::from_str(r#"{"logs": false}"#).unwrap();
        assert!(!o.logs);
        assert!(o.apt && o.machine_id && o.root_password);
        assert!(serde_json::from_str::<FinalizeOptions>(r#"{"log": false}"#).is_err());
    }

    fn root() -> (tempfile::TempDir, ImageRoot) {
        let d = tempfile::tempdir().unwrap();
        let r = ImageRoot::open(d.path()).unwrap();
        (d, r)
    }

    #[test]
    fn logs_are_truncated_in_place_and_rotated_ones_removed() {
        let (_d, r) = root();
        r.write("/var/log/syslog", b"12345", Attrs::mode(0o640))
            .unwrap();
        r.write("/var/log/syslog.1", b"123", Attrs::default())
            .unwrap();
        r.write(
            "/var/log/postgresql/postgresql-15-main.log",
            b"ab",
            Attrs::mode(0o600),
        )
        .unwrap();
        r.write(
            "/var/log/journal/abc/system.journal",
            b"JRNL",
            Attrs::default(),
        )
        .unwrap();
        let mut rep = ItemReport::default();
        logs(&r, "/var/log", &mut rep).unwrap();
        assert_eq!(r.stat("/var/log/syslog").unwrap().size, 0);
        assert_eq!(r.stat("/var/log/syslog").unwrap().mode, 0o640);
        assert_eq!(
            r.stat("/var/log/postgresql/postgresql-15-main.log")
                .unwrap()
                .mode,
            0o600
        );
        assert!(!r.exists("/var/log/syslog.1"));
        assert!(!r.exists("/var/log/journal/abc/system.journal"));
        assert!(r.exists("/var/log/journal/abc"));
        assert_eq!((rep.removed, rep.emptied, rep.bytes), (2, 2, 5 + 2 + 3 + 4));
    }

    #[test]
    fn empty_dir_keeps_what_it_is_told_and_counts() {
        let (_d, r) = root();
        r.write("/l/partial/x", b"1", Attrs::default()).unwrap();
        r.write("/l/lock", b"", Attrs::default()).unwrap();
        r.write("/l/a_Packages", b"1234", Attrs::default()).unwrap();
        r.write("/l/sub/b", b"12", Attrs::default()).unwrap();
        let mut rep = ItemReport::default();
        empty_dir(&r, "/l", &["partial", "lock"], &mut rep).unwrap();
        assert_eq!(r.read_dir("/l").unwrap(), ["lock", "partial"]);
        assert_eq!((rep.removed, rep.bytes), (3, 6));
    }
}
