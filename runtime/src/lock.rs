//! `pgimg lock`: resolves every input of the given recipes, for every architecture, into `pgimg.lock`.
//!
//! Each recipe runs on a fake root (nothing is built, no command runs) with
//! a [`ResolvingFetcher`]: it reads upstream checksum lists and OpenPGP keys
//! over the network, hashes the few files whose upstream publishes no
//! checksum, and downloads nothing else. The pins the run recorded become
//! the lock's lines, keyed by upstream URL (a `--mirror` only changes where
//! they are read from). Entries of other recipes already in the file stay.

use std::path::{Path, PathBuf};

use pgimg_stdlib::ctx::Input;
use pgimg_stdlib::fetch::{normalize_commit, normalize_sha256, FetchError, Fetcher, HttpFetcher};
use pgimg_stdlib::lock::{Lock, LockEntry, LOCK_FILE};

use pgimg_stdlib::FakeOs;

use crate::engine::display_path;
use crate::error::{RecipeError, UsageError};
use crate::host::{self, RecipeInputs};

/// The architectures a lock covers: images are built natively on both.
pub const ARCHES: [&str; 2] = ["amd64", "arm64"];

/// A fetcher that resolves pins and fetches nothing else: checksum lists and
/// keys as text, first-use hashes through [`HttpFetcher::sha256_of_download`]
/// (which leaves the file in the download cache for the build).
pub struct ResolvingFetcher {
    http: HttpFetcher,
}

impl ResolvingFetcher {
    pub fn new(http: HttpFetcher) -> Self {
        ResolvingFetcher { http }
    }
}

impl Fetcher for ResolvingFetcher {
    fn fetch(&self, _url: &str, sha256: &str) -> Result<Option<PathBuf>, FetchError> {
        normalize_sha256(sha256)?;
        Ok(None)
    }

    fn git(&self, _url: &str, rev: &str) -> Result<Option<PathBuf>, FetchError> {
        normalize_commit(rev)?;
        Ok(None)
    }

    fn fetch_text(&self, url: &str) -> Result<Option<String>, FetchError> {
        self.http.fetch_text(url).map(Some)
    }

    fn first_use_sha256(&self, url: &str) -> Result<Option<String>, FetchError> {
        self.http.sha256_of_download(url).map(Some)
    }
}

/// What one recipe run on one architecture gave.
#[derive(Debug)]
pub enum Resolved {
    Inputs(Vec<Input>),
    /// The recipe refused the architecture with `require_arch`; the message.
    Unsupported(String),
}

/// Resolves the inputs of `recipe` on a fake root of `os`.
pub fn resolve(
    recipe: &Path,
    inputs: &RecipeInputs,
    os: &FakeOs,
    fetcher: Box<dyn Fetcher>,
) -> anyhow::Result<(Resolved, host::Unused)> {
    let run = host::dry_run(recipe, inputs, os, fetcher)?;
    match run.result {
        Ok(()) => Ok((Resolved::Inputs(run.journal.inputs), run.unused)),
        // The failing primitive is the last action recorded.
        Err(e)
            if run.journal.actions.last().map(|a| a.primitive.as_str())
                == Some(pgimg_stdlib::require_arch::NAME) =>
        {
            Ok((Resolved::Unsupported(e.0), run.unused))
        }
        Err(e) => Err(e.into()),
    }
}

/// `e`, from resolving `recipe` for `arch`, prefixed with both and of the
/// same kind, so it exits as `check` would (2 for a recipe error); a usage
/// error (no such recipe) holds for every architecture and stays as it is.
fn for_arch(e: anyhow::Error, recipe: &Path, arch: &str) -> anyhow::Error {
    let prefix = format!("{} ({arch})", display_path(recipe));
    match e.downcast::<RecipeError>() {
        Ok(r) => RecipeError(format!("{prefix}: {}", r.0)).into(),
        Err(e) if e.is::<UsageError>() => e,
        Err(e) => anyhow::anyhow!("{prefix}: {e:#}"),
    }
}

/// The lock file that belongs to `recipe`: `pgimg.lock` in its folder.
pub fn lock_path(recipe: &Path) -> PathBuf {
    recipe.parent().unwrap_or(Path::new(".")).join(LOCK_FILE)
}

/// The lock for `pgimg run --locked RECIPE`.
pub fn load_for(recipe: &Path) -> anyhow::Result<Lock> {
    let path = lock_path(recipe);
    if !path.exists() {
        return Err(UsageError(format!(
            "{}: no lock file; run `pgimg lock {}` first",
            display_path(&path),
            display_path(recipe)
        ))
        .into());
    }
    load_inside(&path)
}

/// Reads a lock file that must really be in its recipe's folder: a
/// `pgimg.lock` linking out of it (to some host file) is refused.
fn load_inside(path: &Path) -> anyhow::Result<Lock> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    pgimg_stdlib::ctx::beneath(dir.unwrap_or(Path::new(".")), LOCK_FILE, "lock file")
        .map_err(|e| anyhow::anyhow!("{}: {e}", display_path(path)))?;
    Ok(Lock::load(path)?)
}

/// What `pgimg lock` did.
#[derive(Debug, Default)]
pub struct Summary {
    pub path: PathBuf,
    pub entries: usize,
    pub added: Vec<String>,
    pub changed: Vec<String>,
    /// (recipe, arch, why) the recipe does not support.
    pub skipped: Vec<(String, String, String)>,
}

/// Resolves `recipes` on fake roots of `os` for each of `arches` (each run
/// gets a fetcher from `fetcher`) and merges the result, with the `bases`
/// entries (`pgimg lock --base`), into the lock file beside them. Mistakes
/// in the call (recipes in different folders, a `--mirror` no recipe asks
/// for, a `--set` no recipe reads) are [`UsageError`]s.
pub fn lock_with(
    recipes: &[PathBuf],
    inputs: &RecipeInputs,
    os: &FakeOs,
    arches: &[&str],
    fetcher: &dyn Fn() -> anyhow::Result<Box<dyn Fetcher>>,
    bases: &[LockEntry],
) -> anyhow::Result<Summary> {
    let first = recipes
        .first()
        .ok_or_else(|| UsageError("no recipe given".into()))?;
    let path = lock_path(first);
    if let Some(other) = recipes.iter().find(|r| lock_path(r) != path) {
        return Err(UsageError(format!(
            "{} and {} are in different folders; one lock file covers the recipes of one folder",
            display_path(first),
            display_path(other)
        ))
        .into());
    }
    let mut fresh = Lock::default();
    let mut skipped = Vec::new();
    let mut unused: Option<host::Unused> = None;
    for recipe in recipes {
        for arch in arches {
            let os = FakeOs {
                arch: arch.to_string(),
                ..os.clone()
            };
            let (resolved, not_used) =
                resolve(recipe, inputs, &os, fetcher()?).map_err(|e| for_arch(e, recipe, arch))?;
            unused = Some(match unused {
                None => not_used,
                Some(u) => u.and(&not_used),
            });
            match resolved {
                Resolved::Inputs(inputs) => {
                    for i in &inputs {
                        LockEntry::from_input(i)
                            .and_then(|e| fresh.insert(e))
                            .map_err(|e| {
                                anyhow::anyhow!("{} ({arch}): {e}", display_path(recipe))
                            })?;
                    }
                }
                Resolved::Unsupported(why) => {
                    skipped.push((display_path(recipe), arch.to_string(), why))
                }
            }
        }
    }
    if let Some(Err(e)) = unused.map(|u| u.error(true)) {
        return Err(UsageError(e.0).into());
    }
    for base in bases {
        fresh.insert(base.clone())?;
    }
    let mut lock = if path.exists() {
        load_inside(&path)?
    } else {
        Lock::default()
    };
    let mut summary = Summary {
        path: path.clone(),
        skipped,
        ..Summary::default()
    };
    for e in fresh.entries() {
        match lock.get(&e.kind, &e.url) {
            None => summary.added.push(format!("{} {}", e.kind, e.url)),
            Some(old) if old != e => summary.changed.push(format!("{} {}", e.kind, e.url)),
            Some(_) => {}
        }
    }
    lock.update(fresh);
    summary.entries = lock.len();
    write_atomically(&path, &lock.render())?;
    Ok(summary)
}

fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let shown = display_path(path);
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| shown.clone())?;
    std::io::Write::write_all(&mut tmp, text.as_bytes()).with_context(|| shown.clone())?;
    // The temporary file is 0600; the lock is a file for review, like the
    // recipes beside it: keep the mode it had, else 0644.
    let mode = std::fs::metadata(path).map_or(0o644, |m| {
        std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777
    });
    tmp.as_file()
        .set_permissions(std::os::unix::fs::PermissionsExt::from_mode(mode))
        .with_context(|| shown.clone())?;
    tmp.persist(path).map_err(|e| e.error).context(shown)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{build_engine, run_file, Limits};
    use pgimg_stdlib::fetch::RetryPolicy;
    use pgimg_stdlib::Target;
    use pgimg_stdlib::{Ctx, FakeOs, FakeTarget};
    use sha2::{Digest, Sha256};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    /// A static file server on 127.0.0.1 that counts requests per path.
    struct Server {
        base: String,
        hits: Arc<Mutex<HashMap<String, usize>>>,
        _http: Arc<tiny_http::Server>,
    }

    impl Server {
        fn start(routes: Vec<(String, Vec<u8>)>) -> Server {
            let http = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
            let base = format!("http://{}", http.server_addr().to_ip().unwrap());
            let routes: HashMap<String, Vec<u8>> = routes.into_iter().collect();
            let hits: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
            let (h, s) = (hits.clone(), http.clone());
            std::thread::spawn(move || {
                for req in s.incoming_requests() {
                    let path = req.url().to_string();
                    *h.lock().unwrap().entry(path.clone()).or_default() += 1;
                    let _ = match routes.get(&path) {
                        Some(b) => req.respond(tiny_http::Response::from_data(b.clone())),
                        None => req
                            .respond(tiny_http::Response::from_string("no").with_status_code(404)),
                    };
                }
            });
            Server {
                base,
                hits,
                _http: http,
            }
        }

        fn hits(&self, path: &str) -> usize {
            self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
        }
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self._http.unblock();
        }
    }

    fn sha(b: &[u8]) -> String {
        Sha256::digest(b)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// A release asset's bytes (a stand-in for the binary; not extracted).
    fn asset(name: &str, arch: &str) -> Vec<u8> {
        format!("#!/bin/sh\necho {name} {arch}\n").into_bytes()
    }

    const REV: &str = "4bd044aa80bccba7c6021ddef266ef75a45a27a2";

    /// A recipe like the real ones: a release tarball pinned by upstream's
    /// list, a .deb upstream publishes no checksum for (amd64 only, as
    /// ParadeDB's), a git source and a key pinned in the recipe.
    const RECIPE: &str = r#"
let rel = mirror("releases", "https://github.com");
let base = `${rel}/acme/tool/releases/download/v1.0`;
fetch_verify(#{
    url: `${base}/tool-1.0.linux-${arch()}.tar.gz`,
    sha256_from: `${base}/sha256sums.txt`,
    dest: "/usr/bin/tool", mode: 0o100,
});
if arch() == "amd64" {
    fetch_verify(#{ url: `${rel}/acme/ext/releases/download/v2/ext_2_amd64.deb`, sha256_from: "lock", dest: "/var/cache/ext/" });
}
apt_install(["postgresql-server-dev-16"]);
pgxs_build(#{ git: `${mirror("github", "https://github.com")}/petere/pguint.git`, rev: "4bd044aa80bccba7c6021ddef266ef75a45a27a2", pg_versions: [16] });
"#;

    struct Setup {
        _dir: tempfile::TempDir,
        recipe: PathBuf,
        server: Server,
        amd64: Vec<u8>,
        arm64: Vec<u8>,
        deb: Vec<u8>,
        cache: tempfile::TempDir,
    }

    fn setup(recipe_text: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("flavor.rhai");
        std::fs::write(&recipe, recipe_text).unwrap();
        let (amd64, arm64, deb) = (
            asset("tool", "amd64"),
            asset("tool", "arm64"),
            b"!<arch>\ndeb".to_vec(),
        );
        let list = format!(
            "{}  tool-1.0.linux-amd64.tar.gz\n{}  tool-1.0.linux-arm64.tar.gz\n",
            sha(&amd64),
            sha(&arm64)
        );
        let p = "/gh/acme/tool/releases/download/v1.0";
        let server = Server::start(vec![
            (format!("{p}/tool-1.0.linux-amd64.tar.gz"), amd64.clone()),
            (format!("{p}/tool-1.0.linux-arm64.tar.gz"), arm64.clone()),
            (format!("{p}/sha256sums.txt"), list.into_bytes()),
            (
                "/gh/acme/ext/releases/download/v2/ext_2_amd64.deb".into(),
                deb.clone(),
            ),
        ]);
        Setup {
            _dir: dir,
            recipe,
            server,
            amd64,
            arm64,
            deb,
            cache: tempfile::tempdir().unwrap(),
        }
    }

    fn inputs(mirrors: &[(&str, String)]) -> RecipeInputs {
        RecipeInputs {
            mirrors: mirrors
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            ..RecipeInputs::default()
        }
    }

    fn http(cache: &Path) -> HttpFetcher {
        HttpFetcher::new(cache)
            .unwrap()
            .with_progress(false)
            .with_log(Arc::new(|_| {}))
            .with_retry(RetryPolicy {
                attempts: 1,
                initial_backoff: Duration::ZERO,
                max_backoff: Duration::ZERO,
            })
    }

    fn lock_here(s: &Setup, mirrors: &[(&str, String)]) -> Result<Summary, String> {
        let cache = s.cache.path().to_path_buf();
        lock_with(
            std::slice::from_ref(&s.recipe),
            &inputs(mirrors),
            &FakeOs::default(),
            &ARCHES,
            &|| Ok(Box::new(ResolvingFetcher::new(http(&cache)))),
            &[],
        )
        .map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn lock_resolves_both_arches_from_a_served_checksum_list() {
        let s = setup(RECIPE);
        let gh = format!("{}/gh", s.server.base);
        let summary = lock_here(
            &s,
            &[
                ("releases", gh.clone()),
                ("github", "http://127.0.0.1:1/git".into()),
            ],
        )
        .unwrap();
        let text = std::fs::read_to_string(lock_path(&s.recipe)).unwrap();
        // A file for review like the recipes: not the temporary file's 0600.
        let mode = std::fs::metadata(lock_path(&s.recipe))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o644
        );
        let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        let up = "https://github.com/acme/tool/releases/download/v1.0";
        assert_eq!(
            lines,
            [
                format!("git https://github.com/petere/pguint.git {REV}"),
                format!("url https://github.com/acme/ext/releases/download/v2/ext_2_amd64.deb {} from=lock", sha(&s.deb)),
                format!("url {up}/tool-1.0.linux-amd64.tar.gz {} from={up}/sha256sums.txt", sha(&s.amd64)),
                format!("url {up}/tool-1.0.linux-arm64.tar.gz {} from={up}/sha256sums.txt", sha(&s.arm64)),
            ]
        );
        assert_eq!(
            (summary.entries, summary.added.len(), summary.changed.len()),
            (4, 4, 0)
        );
        // Only the list and the unlisted .deb were downloaded, nothing else.
        assert_eq!(
            s.server
                .hits("/gh/acme/tool/releases/download/v1.0/sha256sums.txt"),
            2
        );
        assert_eq!(
            s.server
                .hits("/gh/acme/tool/releases/download/v1.0/tool-1.0.linux-amd64.tar.gz"),
            0
        );
        assert_eq!(
            s.server
                .hits("/gh/acme/ext/releases/download/v2/ext_2_amd64.deb"),
            1
        );

        // Run again: nothing changes; an entry of another recipe is kept.
        let other = format!("git https://example.org/other.git {}\n", "1".repeat(40));
        std::fs::write(lock_path(&s.recipe), format!("{text}{other}")).unwrap();
        let again = lock_here(&s, &[("releases", gh)]).unwrap();
        assert_eq!(
            (again.entries, again.added.len(), again.changed.len()),
            (5, 0, 0)
        );
        assert!(std::fs::read_to_string(lock_path(&s.recipe))
            .unwrap()
            .contains(other.trim()));
    }

    /// `pgimg run --locked` as the build wires it: the lock on the Ctx, a real fetcher.
    fn locked_run(
        s: &Setup,
        lock: Lock,
        mirrors: &[(&str, String)],
    ) -> (Result<(), String>, Arc<FakeTarget>) {
        let target =
            Arc::new(FakeTarget::new(&FakeOs::default(), Box::new(http(s.cache.path()))).unwrap());
        let ctx = Ctx::new(target.clone())
            .with_mirrors(
                mirrors
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect(),
            )
            .with_lock(lock)
            .with_log(Arc::new(|_, _| {}));
        let engine = build_engine(&ctx, &Limits::default());
        (run_file(&engine, &s.recipe).map_err(|e| e.0), target)
    }

    #[test]
    fn locked_runs_use_the_lock_and_refuse_what_it_lacks_or_contradicts() {
        let s = setup(
            r#"
let base = `${mirror("releases", "https://github.com")}/acme/tool/releases/download/v1.0`;
fetch_verify(#{ url: `${base}/tool-1.0.linux-${arch()}.tar.gz`, sha256_from: `${base}/sha256sums.txt`,
                dest: "/usr/bin/tool", mode: 0o100 });
"#,
        );
        let gh = vec![("releases", format!("{}/gh", s.server.base))];
        lock_here(&s, &gh).unwrap();
        let list_path = "/gh/acme/tool/releases/download/v1.0/sha256sums.txt";
        let lists_read = s.server.hits(list_path);
        let lock = load_for(&s.recipe).unwrap();

        let (r, t) = locked_run(&s, lock.clone(), &gh);
        r.unwrap();
        assert_eq!(
            t.root().read_string("/usr/bin/tool").unwrap(),
            "#!/bin/sh\necho tool amd64\n"
        );
        assert_eq!(t.root().stat("/usr/bin/tool").unwrap().mode, 0o100);
        assert_eq!(
            s.server.hits(list_path),
            lists_read,
            "--locked reads no checksum list"
        );

        // A lock whose pin differs (upstream replaced the file): the download is refused.
        let tampered = Lock::parse(
            &lock.render().replace(&sha(&s.amd64), &"0".repeat(64)),
            "pgimg.lock",
        )
        .unwrap();
        let (r, t) = locked_run(&s, tampered, &gh);
        let e = r.unwrap_err();
        assert!(e.contains("sha256 mismatch"), "{e}");
        assert!(!t.root().exists("/usr/bin/tool"));

        // An input the lock does not have: refused before anything is fetched.
        let before = s
            .server
            .hits("/gh/acme/tool/releases/download/v1.0/tool-1.0.linux-amd64.tar.gz");
        let (r, t) = locked_run(&s, Lock::default(), &gh);
        let e = r.unwrap_err();
        assert!(
            e.contains("url https://github.com/acme/tool/releases/download/v1.0/tool-1.0.linux-amd64.tar.gz is not in the lock file"),
            "{e}"
        );
        assert_eq!(
            s.server
                .hits("/gh/acme/tool/releases/download/v1.0/tool-1.0.linux-amd64.tar.gz"),
            before
        );
        assert!(!t.root().exists("/usr/bin/tool"));
    }

    /// Without `--locked`, a real fetcher reads the checksum list itself.
    #[test]
    fn unlocked_runs_read_the_list_and_refuse_first_use_pins() {
        let s = setup(RECIPE);
        let gh = [
            ("releases", format!("{}/gh", s.server.base)),
            ("github", "http://127.0.0.1:1/git".to_string()),
        ];
        let target =
            Arc::new(FakeTarget::new(&FakeOs::default(), Box::new(http(s.cache.path()))).unwrap());
        let ctx = Ctx::new(target.clone())
            .with_mirrors(gh.iter().map(|(k, v)| (k.to_string(), v.clone())).collect())
            .with_log(Arc::new(|_, _| {}));
        let engine = build_engine(&ctx, &Limits::default());
        let e = run_file(&engine, &s.recipe).unwrap_err().0;
        // The tarball came in, pinned by the list; the .deb has no pin outside the lock.
        assert_eq!(target.root().read("/usr/bin/tool").unwrap(), s.amd64);
        assert_eq!(
            s.server
                .hits("/gh/acme/tool/releases/download/v1.0/sha256sums.txt"),
            1
        );
        assert!(
            e.contains("ext_2_amd64.deb: upstream publishes no checksum"),
            "{e}"
        );
        assert_eq!(
            s.server
                .hits("/gh/acme/ext/releases/download/v2/ext_2_amd64.deb"),
            0
        );
    }

    #[test]
    fn an_architecture_the_recipe_refuses_is_skipped_not_failed() {
        let s = setup(
            r#"
require_arch(["amd64"], "upstream ships amd64 packages only");
fetch_verify(#{ url: `${mirror("releases", "https://github.com")}/acme/ext/releases/download/v2/ext_2_amd64.deb`, sha256_from: "lock", dest: "/var/cache/ext/" });
"#,
        );
        let summary = lock_here(&s, &[("releases", format!("{}/gh", s.server.base))]).unwrap();
        assert_eq!(summary.entries, 1);
        assert_eq!(summary.skipped.len(), 1);
        let (_, arch, why) = &summary.skipped[0];
        assert_eq!(arch, "arm64");
        assert!(why.ends_with("this recipe builds amd64 images only, not arm64: upstream ships amd64 packages only"), "{why}");
    }

    /// The committed recipes/pgimg.lock holds only pins the recipes state or
    /// that could be resolved here: each agrees with what the recipes record,
    /// each is used, and the checksum-list pins it lacks are named.
    #[test]
    fn the_committed_lock_agrees_with_the_recipes() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let recipes = [
            root.join("recipes/standard.rhai"),
            root.join("recipes/paradedb.rhai"),
        ];
        let lock = load_for(&recipes[0]).unwrap();
        let mut used = std::collections::BTreeSet::new();
        let mut unresolved = std::collections::BTreeSet::new();
        for recipe in &recipes {
            for arch in ARCHES {
                let fetcher = Box::new(pgimg_stdlib::fetch::RecordingFetcher::default());
                let os = FakeOs {
                    arch: arch.to_string(),
                    ..FakeOs::default()
                };
                let (resolved, _) = resolve(recipe, &inputs(&[]), &os, fetcher).unwrap();
                let Resolved::Inputs(inputs) = resolved else {
                    continue;
                };
                for i in inputs {
                    if i.pin.is_empty() {
                        unresolved.insert(i.from.clone().unwrap());
                        assert!(
                            lock.get(&i.kind, i.lock_url()).is_none(),
                            "{} locked",
                            i.url
                        );
                        continue;
                    }
                    lock.check(&i).unwrap();
                    used.insert((i.kind.clone(), i.lock_url().to_string()));
                }
            }
        }
        // Besides the recipes' inputs: the base images the workflow builds
        // from (`pgimg lock --base`), one per architecture, of the serial
        // its action names.
        let action =
            std::fs::read_to_string(root.join(".github/actions/pgimg-image/action.yml")).unwrap();
        let serial = action
            .lines()
            .find_map(|l| l.trim().strip_prefix("serial="))
            .expect("the action names its base image's release serial");
        let bases: std::collections::BTreeSet<_> = ["amd64", "arm64"]
            .map(|arch| {
                let url = format!(
                    "https://cloud-images.ubuntu.com/releases/jammy/{serial}/ubuntu-22.04-server-cloudimg-{arch}.img"
                );
                let e = lock.get("url", &url).unwrap_or_else(|| panic!("{url} locked"));
                assert_eq!(
                    e.from.as_deref(),
                    Some(format!("https://cloud-images.ubuntu.com/releases/jammy/{serial}/SHA256SUMS").as_str())
                );
                ("url".to_string(), url)
            })
            .into();
        let entries: std::collections::BTreeSet<_> = lock
            .entries()
            .map(|e| (e.kind.clone(), e.url.clone()))
            .collect();
        assert_eq!(entries, &used | &bases);
        // The exporters' lists (GitHub is unreachable here) and ParadeDB's first-use pins.
        assert_eq!(unresolved.len(), 4, "{unresolved:?}");
        assert!(unresolved.contains("lock"));
    }

    #[test]
    fn failures_name_the_recipe_and_arch_and_write_nothing() {
        let s = setup(RECIPE);
        // A list that does not list the file: unresolvable.
        let e = lock_here(&s, &[("releases", format!("{}/nowhere", s.server.base))]).unwrap_err();
        assert!(
            e.starts_with(&format!("{} (amd64): ", display_path(&s.recipe))),
            "{e}"
        );
        assert!(e.contains("404"), "{e}");
        assert!(!lock_path(&s.recipe).exists());
        let gh = format!("{}/gh", s.server.base);
        let e = lock_here(
            &s,
            &[("releases", gh), ("gihtub", "http://127.0.0.1:1/".into())],
        )
        .unwrap_err();
        assert_eq!(e, "--mirror gihtub: no recipe asks for this source");
        assert!(!lock_path(&s.recipe).exists());
    }
}
