//! `FakeTarget`: a temporary root with a minimal `/etc`, for recipe tests.
//!
//! File effects are real (they land in a temporary directory); commands and
//! fetches are recorded, never run. Ownership changes are recorded too, so
//! tests running without root can still assert owners. The commands
//! primitives read are answered as the image's tools would (see
//! [`FakeTarget::answer`]), so every primitive has one code path.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::ctx::Ctx;
use crate::fetch::{Fetcher, RecordingFetcher};
use crate::root::{Attrs, FsError, ImageRoot};
use crate::target::{Command, CommandError, Facts, Output, Target};

/// Which distribution the fake root pretends to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeOs {
    pub id: String,
    pub version_id: String,
    pub codename: String,
    pub arch: String,
}

impl Default for FakeOs {
    fn default() -> Self {
        FakeOs {
            id: "ubuntu".into(),
            version_id: "22.04".into(),
            codename: "jammy".into(),
            arch: "amd64".into(),
        }
    }
}

impl FakeOs {
    fn os_release(&self) -> String {
        let name = match self.id.as_str() {
            "ubuntu" => "Ubuntu",
            "debian" => "Debian GNU/Linux",
            other => other,
        };
        format!(
            "PRETTY_NAME=\"{name} {v} ({c})\"\nNAME=\"{name}\"\nVERSION_ID=\"{v}\"\nVERSION=\"{v} ({c})\"\nVERSION_CODENAME={c}\nID={id}\n",
            v = self.version_id,
            c = self.codename,
            id = self.id
        )
    }
}

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bin:x:2:2:bin:/bin:/usr/sbin/nologin
sys:x:3:3:sys:/dev:/usr/sbin/nologin
sync:x:4:65534:sync:/bin:/bin/sync
man:x:6:12:man:/var/cache/man:/usr/sbin/nologin
mail:x:8:8:mail:/var/mail:/usr/sbin/nologin
www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";
const GROUP: &str = "root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
man:x:12:
mail:x:8:
sudo:x:27:
www-data:x:33:
shadow:x:42:
users:x:100:
nogroup:x:65534:
";

/// A fake image root in a temporary directory.
pub struct FakeTarget {
    _dir: tempfile::TempDir,
    root: ImageRoot,
    facts: Facts,
    fetcher: Box<dyn Fetcher>,
    commands: Mutex<Vec<Command>>,
    owners: Mutex<BTreeMap<String, (u32, u32)>>,
    borrowed: crate::borrow::Borrowed,
}

impl FakeTarget {
    /// A fake root for `os`, answering fetches with `fetcher`.
    pub fn new(os: &FakeOs, fetcher: Box<dyn Fetcher>) -> Result<Self, FsError> {
        let dir = tempfile::Builder::new()
            .prefix("pgimg-fake-")
            .tempdir()
            .map_err(|e| FsError::Io {
                path: "<tempdir>".into(),
                source: e,
            })?;
        let root = ImageRoot::open(dir.path())?;
        let shadow_of = |db: &str, gshadow: bool| -> String {
            db.lines()
                .map(|l| {
                    let name = l.split(':').next().unwrap_or_default();
                    if gshadow {
                        format!("{name}:*::\n")
                    } else {
                        format!("{name}:*:19000:0:99999:7:::\n")
                    }
                })
                .collect()
        };
        root.write("/etc/passwd", PASSWD.as_bytes(), Attrs::mode(0o644))?;
        root.write("/etc/group", GROUP.as_bytes(), Attrs::mode(0o644))?;
        root.write(
            "/etc/shadow",
            shadow_of(PASSWD, false).as_bytes(),
            Attrs::mode(0o640),
        )?;
        root.write(
            "/etc/gshadow",
            shadow_of(GROUP, true).as_bytes(),
            Attrs::mode(0o640),
        )?;
        root.write(
            "/usr/lib/os-release",
            os.os_release().as_bytes(),
            Attrs::mode(0o644),
        )?;
        root.symlink("../usr/lib/os-release", "/etc/os-release")?;
        root.write("/etc/skel/.bashrc", b"# ~/.bashrc\n", Attrs::mode(0o644))?;
        root.write("/etc/skel/.profile", b"# ~/.profile\n", Attrs::mode(0o644))?;
        for d in [
            "/root",
            "/tmp",
            "/var/tmp",
            "/etc/apt/sources.list.d",
            "/etc/systemd/system",
            "/usr/bin",
            "/home",
        ] {
            root.mkdir_all(d, Attrs::default())?;
        }
        Ok(FakeTarget {
            _dir: dir,
            root,
            facts: Facts {
                arch: os.arch.clone(),
            },
            fetcher,
            commands: Mutex::default(),
            owners: Mutex::default(),
            borrowed: Default::default(),
        })
    }

    /// A fake Ubuntu 22.04 amd64 root that records every fetch.
    pub fn ubuntu() -> Self {
        FakeTarget::with_fetcher(RecordingFetcher::default())
    }

    /// A fake Ubuntu 22.04 amd64 root whose fetches are answered from
    /// `fixtures` (URL → a local file or folder), and recorded.
    pub fn with_fixtures(fixtures: BTreeMap<String, PathBuf>) -> Self {
        FakeTarget::with_fetcher(RecordingFetcher::new(fixtures))
    }

    fn with_fetcher(fetcher: RecordingFetcher) -> Self {
        FakeTarget::new(&FakeOs::default(), Box::new(fetcher))
            .expect("creating a fake root in the temporary directory")
    }

    /// The commands that would have run, in order.
    pub fn commands(&self) -> Vec<Command> {
        self.commands.lock().unwrap().clone()
    }

    /// The recorded owner of `path` (uid, gid), if a primitive set one.
    pub fn owner(&self, path: &str) -> Option<(u32, u32)> {
        self.owners.lock().unwrap().get(path).copied()
    }
}

/// A fake Ubuntu root and a [`Ctx`] acting on it: where most primitive
/// tests start.
pub fn fake_ctx() -> (Arc<FakeTarget>, Ctx) {
    let t = Arc::new(FakeTarget::ubuntu());
    (t.clone(), Ctx::new(t))
}

/// An engine with every primitive registered on `ctx`: what a recipe sees.
pub fn engine_on(ctx: &Ctx) -> rhai::Engine {
    let mut engine = rhai::Engine::new();
    crate::register(&mut engine, ctx);
    engine
}

/// The message the user sees of a primitive's failure; panics on any other
/// error, which a test of a primitive's argument checks does not expect.
// Boxed as `Engine::eval` returns it, so a test passes `unwrap_err()` as is.
#[allow(clippy::boxed_local)]
pub fn primitive_failure(err: Box<rhai::EvalAltResult>) -> String {
    match *err {
        rhai::EvalAltResult::ErrorRuntime(d, _) => d
            .try_cast::<crate::api::PrimitiveFailure>()
            .map(|f| f.message)
            .expect("a primitive's failure"),
        other => panic!("not a primitive's failure: {other}"),
    }
}

/// Evaluates `script` with the primitives on `ctx`; an error becomes the
/// message the user sees (a primitive's, or Rhai's own).
pub fn eval_on<T: rhai::Variant + Clone>(ctx: &Ctx, script: &str) -> Result<T, String> {
    engine_on(ctx).eval::<T>(script).map_err(|e| match *e {
        rhai::EvalAltResult::ErrorRuntime(d, _) => d.cast::<crate::api::PrimitiveFailure>().message,
        other => other.to_string(),
    })
}

/// The inputs `ctx`'s journal recorded so far, as (kind, url, pin): what a
/// test of a fetching primitive checks it pinned.
pub fn recorded_inputs(ctx: &Ctx) -> Vec<(String, String, String)> {
    let journal = ctx.journal.lock().unwrap();
    journal
        .inputs
        .iter()
        .map(|i| (i.kind.clone(), i.url.clone(), i.pin.clone()))
        .collect()
}

/// An empty [`ImageRoot`] in a fresh temporary directory, for tests of code
/// that works on a root directly; the directory lives as long as the
/// returned guard.
pub fn temp_root() -> (tempfile::TempDir, ImageRoot) {
    let dir = tempfile::tempdir().expect("creating a temporary directory");
    let root = ImageRoot::open(dir.path()).expect("opening the temporary directory as a root");
    (dir, root)
}

/// Runs a host tool that makes a test's fixture and returns its stdout;
/// panics with its output when it fails, and with `needed` (why the tests
/// need it, or what installs it) when it cannot start.
pub fn host_tool(cmd: &mut std::process::Command, needed: &str) -> Vec<u8> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {program} ({needed}): {e}"));
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out.stdout
}

/// A temporary host folder holding `files` (relative path → content) and
/// the folders they need: the assets or recipes of a test.
pub fn host_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

/// Every path under the host folder `dir`, relative and sorted: for tests'
/// "nothing else was written" checks.
pub fn host_tree(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
            if p.is_dir() && !p.is_symlink() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

/// One member of a test archive; names and link targets are written into
/// the header byte for byte, so hostile archives can be built (the tar
/// crate's builder refuses `..`).
pub enum TarMember<'a> {
    /// Path, content, mode.
    File(&'a str, &'a [u8], u32),
    Dir(&'a str, u32),
    /// Path, link target.
    Symlink(&'a str, &'a str),
    /// Path, the member it links to.
    Hard(&'a str, &'a str),
    Fifo(&'a str),
    Char(&'a str),
}

/// An uncompressed tar archive of `members`, in order.
pub fn raw_tar(members: &[TarMember]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for m in members {
        let (name, link, kind, mode, data): (&str, &str, _, u32, &[u8]) = match m {
            TarMember::File(n, d, mode) => (n, "", tar::EntryType::Regular, *mode, d),
            TarMember::Dir(n, mode) => (n, "", tar::EntryType::Directory, *mode, b""),
            TarMember::Symlink(n, t) => (n, t, tar::EntryType::Symlink, 0o777, b""),
            TarMember::Hard(n, t) => (n, t, tar::EntryType::Link, 0o644, b""),
            TarMember::Fifo(n) => (n, "", tar::EntryType::Fifo, 0o644, b""),
            TarMember::Char(n) => (n, "", tar::EntryType::Char, 0o644, b""),
        };
        let mut h = tar::Header::new_gnu();
        h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// `bytes` gzip-compressed.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// The version every package has on the fake root.
pub const FAKE_VERSION: &str = "1.0";

impl FakeTarget {
    /// What the image's tools would print for the commands primitives read,
    /// and the files they would leave: `apt-cache policy` (every package
    /// exists at [`FAKE_VERSION`]); `apt-get download` and `apt-get install
    /// --download-only` (a `.deb` per named package, and apt's `partial/` and
    /// `lock` beside them for the latter); `apt-get install
    /// postgresql-server-dev-<v>` (its `pg_config`); `git rev-parse HEAD` (the
    /// checkout's `.git/HEAD`); `go build -o` and `install -D -m` (the file).
    /// Any other command prints nothing.
    pub fn answer(&self, cmd: &Command) -> Result<String, FsError> {
        let argv: Vec<&str> = cmd.argv.iter().map(String::as_str).collect();
        let cwd = cmd.cwd.clone().unwrap_or_else(|| "/".into());
        let at = |p: &str| {
            if p.starts_with('/') {
                p.to_string()
            } else {
                format!("{}/{p}", cwd.trim_end_matches('/'))
            }
        };
        let words = |from: usize| {
            argv[from..]
                .iter()
                .filter(|a| !a.starts_with('-') && !a.contains("::"))
                .copied()
        };
        let deb = |spec: &str| {
            let (name, version) = spec.split_once('=').unwrap_or((spec, FAKE_VERSION));
            let name = name.split(['/', ':']).next().unwrap_or(name);
            format!("{name}_{version}_{}.deb", self.facts.arch)
        };
        match argv.as_slice() {
            ["apt-cache", "policy", ..] => Ok(words(2)
                .map(|p| format!("{p}:\n  Installed: (none)\n  Candidate: {FAKE_VERSION}\n  Version table:\n     {FAKE_VERSION} 500\n        500 fake\n"))
                .collect()),
            ["apt-get", "download", ..] => {
                for spec in words(2) {
                    self.root.write(at(&deb(spec)), b"", Attrs::mode(0o644))?;
                }
                Ok(String::new())
            }
            ["apt-get", "install", rest @ ..] if rest.contains(&"--download-only") => {
                let dir = rest.iter().find_map(|a| a.strip_prefix("Dir::Cache::archives=")).unwrap_or("/var/cache/apt/archives");
                self.root.mkdir_all(format!("{dir}/partial"), Attrs::mode(0o700))?;
                self.root.write(format!("{dir}/lock"), b"", Attrs::mode(0o640))?;
                for spec in words(2) {
                    self.root.write(format!("{dir}/{}", deb(spec)), b"", Attrs::mode(0o644))?;
                }
                Ok(String::new())
            }
            ["apt-get", "install", ..] => {
                for v in words(2).filter_map(|p| p.strip_prefix("postgresql-server-dev-")) {
                    self.root.write(format!("/usr/lib/postgresql/{v}/bin/pg_config"), b"", Attrs::mode(0o755))?;
                }
                Ok(String::new())
            }
            ["git", "rev-parse", .., "HEAD"] => Ok(self.root.read_string(at(".git/HEAD"))?),
            ["go", "build", .., "-o", out, _] => {
                self.root.write(at(out), b"", Attrs::mode(0o755))?;
                Ok(String::new())
            }
            ["install", "-D", "-m", mode, src, dest] => {
                let mode = u32::from_str_radix(mode, 8).unwrap_or(0o755);
                let bytes = self.root.read(at(src)).unwrap_or_default();
                self.root.write(at(dest), &bytes, Attrs::mode(mode))?;
                Ok(String::new())
            }
            _ => Ok(String::new()),
        }
    }
}

impl Target for FakeTarget {
    fn root(&self) -> &ImageRoot {
        &self.root
    }

    fn run(&self, cmd: &Command) -> Result<Output, CommandError> {
        self.commands.lock().unwrap().push(cmd.clone());
        let stdout = self.answer(cmd).map_err(|e| CommandError::Spawn {
            command: cmd.to_string(),
            reason: format!("fake root: {e}"),
        })?;
        Ok(Output {
            stdout: stdout.into_bytes(),
            ..Output::default()
        })
    }

    fn fetcher(&self) -> &dyn Fetcher {
        self.fetcher.as_ref()
    }

    fn facts(&self) -> &Facts {
        &self.facts
    }

    fn borrowed(&self) -> Option<&crate::borrow::Borrowed> {
        Some(&self.borrowed)
    }

    fn chown(&self, path: &str, uid: u32, gid: u32) -> Result<(), FsError> {
        self.root.stat(path)?;
        self.owners
            .lock()
            .unwrap()
            .insert(path.to_string(), (uid, gid));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_etc_and_records_commands() {
        let t = FakeTarget::ubuntu();
        assert!(t
            .root()
            .read_string("/etc/os-release")
            .unwrap()
            .contains("VERSION_CODENAME=jammy"));
        assert!(t
            .root()
            .read_string("/etc/shadow")
            .unwrap()
            .starts_with("root:*:"));
        t.run(&Command::new(["apt-get", "update"])).unwrap();
        assert_eq!(t.commands()[0].to_string(), "apt-get update");
        t.chown("/etc/passwd", 5, 6).unwrap();
        assert_eq!(t.owner("/etc/passwd"), Some((5, 6)));
        assert!(t.chown("/nope", 1, 1).is_err());
    }
}
