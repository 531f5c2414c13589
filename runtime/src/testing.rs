//! `pgimg test`: runs `*.test.rhai` files against fake roots and reports one line per test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pgimg_stdlib::api::failure;
use pgimg_stdlib::ctx::Journal;
use pgimg_stdlib::fetch::RecordingFetcher;
use pgimg_stdlib::journal::Asked;
use pgimg_stdlib::register::Str;
use pgimg_stdlib::rhai_fns;
use pgimg_stdlib::root::FileKind;
use pgimg_stdlib::{Ctx, FakeOs, FakeTarget, Target};
use rhai::{Array, Dynamic, Engine, EvalAltResult, Map};
use serde::Deserialize;

use crate::engine::{self, build_engine, display_path, Limits};
use crate::host::{self, RecipeInputs};

/// Options of `fake_rootfs(#{ ... })`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FakeRootOpts {
    id: Option<String>,
    version_id: Option<String>,
    codename: Option<String>,
    arch: Option<String>,
    /// URL → fixture file (relative to the test file's folder) answering fetches.
    fixtures: Option<BTreeMap<String, String>>,
    /// Extra asset folders (relative to the test file's folder).
    assets: Option<Vec<String>>,
    /// Source redirections, as `--mirror NAME=URL`.
    mirrors: Option<BTreeMap<String, String>>,
}

/// The value `fake_rootfs()` returns to a test script.
#[derive(Clone)]
pub struct FakeRoot {
    target: Arc<FakeTarget>,
    journal: Arc<Mutex<Journal>>,
    base_dir: PathBuf,
    assets: Vec<PathBuf>,
    mirrors: BTreeMap<String, String>,
    log: Arc<Mutex<Vec<String>>>,
}

fn err(msg: impl Into<String>) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(msg.into().into(), rhai::Position::NONE).into()
}

impl FakeRoot {
    fn new(base_dir: &Path, opts: Map) -> Result<Self, Box<EvalAltResult>> {
        let o: FakeRootOpts =
            pgimg_stdlib::api::options(opts).map_err(|e| err(format!("fake_rootfs: {e}")))?;
        let d = FakeOs::default();
        let os = FakeOs {
            id: o.id.unwrap_or(d.id),
            version_id: o.version_id.unwrap_or(d.version_id),
            codename: o.codename.unwrap_or(d.codename),
            arch: o.arch.unwrap_or(d.arch),
        };
        // Paths a test file names stay inside its folder (no `..`, no link out).
        let inside = |rel: &str, what: &str| {
            pgimg_stdlib::ctx::beneath(base_dir, rel, what)
                .map_err(|e| err(format!("fake_rootfs: {e}")))
        };
        let fixtures = o
            .fixtures
            .unwrap_or_default()
            .into_iter()
            .map(|(url, p)| Ok((url, inside(&p, "fixture")?)))
            .collect::<Result<_, Box<EvalAltResult>>>()?;
        let target = FakeTarget::new(&os, Box::new(RecordingFetcher::new(fixtures)))
            .map_err(|e| err(format!("fake_rootfs: {e}")))?;
        Ok(FakeRoot {
            target: Arc::new(target),
            journal: Arc::default(),
            base_dir: base_dir.to_path_buf(),
            assets: o
                .assets
                .unwrap_or_default()
                .iter()
                .map(|a| inside(a, "asset folder"))
                .collect::<Result<_, _>>()?,
            mirrors: o.mirrors.unwrap_or_default(),
            log: Arc::default(),
        })
    }

    fn run(&self, recipe: &str, params: Map) -> Result<(), Box<EvalAltResult>> {
        let path = pgimg_stdlib::ctx::beneath(&self.base_dir, recipe, "recipe")
            .map_err(|e| err(format!("run: {e}")))?;
        let path = engine::normalize(&path);
        let params = params
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let log = self.log.clone();
        let inputs = RecipeInputs {
            params,
            mirrors: self.mirrors.clone(),
            assets: self.assets.clone(),
            lock: None,
        };
        let ctx = host::recipe_ctx(
            &path,
            &inputs,
            self.target.clone(),
            self.journal.clone(),
            Arc::new(move |loc, msg| log.lock().unwrap().push(format!("{loc}: {msg}"))),
        );
        // The names this run reads, apart from earlier runs on the same root.
        let earlier = std::mem::take(&mut self.journal.lock().unwrap().asked.params);
        let engine = build_engine(&ctx, &Limits::default());
        let ran = engine::run_file(&engine, &path).map_err(|e| err(e.0));
        let unused = pgimg_stdlib::facts::unused_params(&ctx);
        let mut journal = self.journal.lock().unwrap();
        for name in earlier {
            Asked::note(&mut journal.asked.params, &name);
        }
        ran?;
        // A misspelled parameter fails the test, as `--set` fails the build.
        let unused = host::Unused {
            params: unused,
            ..host::Unused::default()
        };
        unused
            .error(false)
            .map_err(|e| err(format!("run {recipe}: {}", e.0)))
    }
}

fn check<T>(r: pgimg_stdlib::Result<T>) -> Result<T, Box<EvalAltResult>> {
    r.map_err(|e| err(e.to_string()))
}

impl FakeRoot {
    /// `user:group` of the owner a primitive set on `path`, or `()`.
    fn owner(&self, path: &str) -> Dynamic {
        let Some((uid, gid)) = self.target.owner(path) else {
            return Dynamic::UNIT;
        };
        let name = |db: &str, id: u32| -> String {
            self.target
                .root()
                .read_string(db)
                .ok()
                .and_then(|text| {
                    text.lines().find_map(|l| {
                        let f: Vec<&str> = l.split(':').collect();
                        (f.len() > 2 && f[2] == id.to_string()).then(|| f[0].to_string())
                    })
                })
                .unwrap_or_else(|| id.to_string())
        };
        format!("{}:{}", name("/etc/passwd", uid), name("/etc/group", gid)).into()
    }

    /// The recorded inputs as maps for a test script.
    fn fetches(&self) -> Array {
        self.journal
            .lock()
            .unwrap()
            .inputs
            .iter()
            .map(|i| {
                let mut m = Map::new();
                m.insert("kind".into(), i.kind.clone().into());
                m.insert("url".into(), i.url.clone().into());
                m.insert("sha256".into(), i.pin.clone().into());
                m.insert("pin".into(), i.pin.clone().into());
                m.insert("dest".into(), i.dest.clone().into());
                m.insert(
                    "sha256_from".into(),
                    i.from.clone().map_or(Dynamic::UNIT, Dynamic::from),
                );
                m.insert(
                    "upstream".into(),
                    i.upstream.clone().map_or(Dynamic::UNIT, Dynamic::from),
                );
                Dynamic::from_map(m)
            })
            .collect()
    }
}

/// Registers `fake_rootfs`, the fake root's methods, `assert` and `assert_eq`
/// (with their docs, so `pgimg defs` lists them).
pub fn register_test_api(engine: &mut Engine) {
    engine.register_type_with_name::<FakeRoot>("FakeRoot");
    let mut m = rhai::Module::new();
    test_api(&mut m);
    engine.register_global_module(m.into());
}

rhai_fns! { fn test_api;
    /// A fake root (`id`, `version_id`, `codename`, `arch`, `fixtures`, `assets`, `mirrors`);
    /// relative paths are taken from the test file's folder.
    function fake_rootfs([opts]) |nctx, _| {
        let file = Path::new(nctx.call_source().unwrap_or_default());
        // A test file named without a folder (`r.test.rhai`) has the empty path as parent.
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty());
        FakeRoot::new(dir.unwrap_or(Path::new(".")), opts)
    };
    /// Runs a recipe (relative to the test file's folder) on the fake root; `params` as `--set`.
    function run(t: FakeRoot, recipe: Str, [params]) |_, _| t.run(&recipe, params);
    /// The content of `path` as a string, or `()` when absent.
    function file(t: FakeRoot, path: Str) |_, _| Ok(match t.target.root().read(path.as_str()) {
        Ok(b) => Dynamic::from(String::from_utf8_lossy(&b).into_owned()),
        Err(_) => Dynamic::UNIT,
    });
    /// Whether anything is at `path`.
    function exists(t: FakeRoot, path: Str) |_, _| Ok(t.target.root().exists(path.as_str()));
    /// Whether `path` is a symbolic link.
    function is_symlink(t: FakeRoot, path: Str) |_, _| Ok(t.target.root().kind(path.as_str()) == Some(FileKind::Symlink));
    /// The target of the link `path`, or `()`.
    function read_link(t: FakeRoot, path: Str) |_, _| Ok(t.target.root().readlink(path.as_str()).map_or(Dynamic::UNIT, |p| p.display().to_string().into()));
    /// The permission bits of `path`, or `()`.
    function mode(t: FakeRoot, path: Str) |_, _| Ok(t.target.root().stat(path.as_str()).map_or(Dynamic::UNIT, |s| (s.mode as i64).into()));
    /// The owner a primitive set on `path` as `user:group`, or `()`.
    function owner(t: FakeRoot, path: Str) |_, _| Ok(t.owner(&path));
    /// The names in the folder `path` (empty when absent).
    function list_dir(t: FakeRoot, path: Str) |_, _| Ok(t.target.root().read_dir(path.as_str()).unwrap_or_default().into_iter().map(Dynamic::from).collect::<Array>());
    /// Whether the user exists in the fake root's `/etc/passwd`.
    function user_exists(t: FakeRoot, name: Str) |_, _| check(pgimg_stdlib::users::user_exists(t.target.root(), &name));
    /// Whether `user` is in `group` (primary or supplementary).
    function in_group(t: FakeRoot, user: Str, group: Str) |_, _| check(pgimg_stdlib::users::in_group(t.target.root(), &user, &group));
    /// Whether the unit is enabled (a `.wants`/`.requires`/`.upholds` link to it exists).
    function unit_enabled(t: FakeRoot, unit: Str) |_, _| check(pgimg_stdlib::systemd::unit_enabled(t.target.root(), &unit));
    /// The commands that would have run, as strings, in order.
    function commands(t: FakeRoot) |_, _| Ok(t.target.commands().iter().map(|c| Dynamic::from(c.to_string())).collect::<Array>());
    /// The inputs pulled in, as maps (`kind`, `url`, `sha256`, `pin`, `dest`, `sha256_from`, `upstream`).
    function fetches(t: FakeRoot) |_, _| Ok(t.fetches());
    /// The primitives called, by name, in order.
    function actions(t: FakeRoot) |_, _| {
        let names: Array = t.journal.lock().unwrap().actions.iter().map(|a| a.primitive.clone().into()).collect();
        Ok(names)
    };
    /// The lines the recipe logged.
    function logs(t: FakeRoot) |_, _| {
        let lines: Array = t.log.lock().unwrap().iter().cloned().map(Dynamic::from).collect();
        Ok(lines)
    };
    /// Fails the test with `msg` unless `cond` is true.
    function assert(cond: bool, msg: Str) |_, loc| if cond { Ok(()) } else { Err(failure(loc, "assert", format!("assertion failed: {msg}"))) };
    /// Fails the test unless `a == b` (compared by value and type).
    function assert_eq(a: Dynamic, b: Dynamic) |_, loc| {
        let same = a.type_name() == b.type_name() && format!("{a:?}") == format!("{b:?}");
        if same { Ok(()) } else { Err(failure(loc, "assert_eq", format!("left: {a:?}, right: {b:?}"))) }
    };
}

/// The engine a test file runs in: the test API plus every primitive on a
/// throwaway fake root (so helper code in a test may call them too).
pub fn test_engine(_test_file: &Path) -> Engine {
    let scratch = Arc::new(FakeTarget::ubuntu());
    let ctx = Ctx::new(scratch);
    let mut engine = build_engine(&ctx, &Limits::default());
    register_test_api(&mut engine);
    engine
}

/// The outcome of one test.
#[derive(Debug)]
pub struct TestResult {
    pub name: String,
    pub error: Option<String>,
    pub seconds: f64,
}

/// Runs one test file. A file defining `test_*` functions yields one test per
/// function (after its top level ran); otherwise the whole file is one test.
pub fn run_test_file(path: &Path) -> Vec<TestResult> {
    let shown = display_path(path);
    let engine = test_engine(path);
    let start = Instant::now();
    let ast = match engine::compile(&engine, path) {
        Ok(ast) => ast,
        Err(e) => {
            return vec![TestResult {
                name: shown,
                error: Some(e.0),
                seconds: start.elapsed().as_secs_f64(),
            }]
        }
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut tests: Vec<(usize, String)> = ast
        .iter_functions()
        .filter(|f| f.name.starts_with("test_") && f.params.is_empty())
        .map(|f| {
            let at = text.find(&format!("fn {}(", f.name)).unwrap_or(usize::MAX);
            (at, f.name.to_string())
        })
        .collect();
    // In the order they appear in the file.
    tests.sort();
    let tests: Vec<String> = tests.into_iter().map(|(_, n)| n).collect();
    let top = engine.run_ast(&ast).map_err(|e| engine::render(&e, &shown));
    if tests.is_empty() || top.is_err() {
        return vec![TestResult {
            name: shown,
            error: top.err(),
            seconds: start.elapsed().as_secs_f64(),
        }];
    }
    tests
        .into_iter()
        .map(|name| {
            let start = Instant::now();
            let r = engine.call_fn::<Dynamic>(&mut rhai::Scope::new(), &ast, &name, ());
            TestResult {
                name: format!("{shown}::{name}"),
                error: r.err().map(|e| engine::render(&e, &shown)),
                seconds: start.elapsed().as_secs_f64(),
            }
        })
        .collect()
}

/// Finds `*.test.rhai` files under `paths`, sorted.
pub fn discover(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for p in paths {
        if p.is_file() {
            found.push(p.clone());
        } else {
            walk(p, &mut found);
        }
    }
    found.sort();
    found.dedup();
    found
}

fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if p.is_dir() && !name.starts_with('.') && name != "target" {
            walk(&p, found);
        } else if name.ends_with(".test.rhai") {
            found.push(p);
        }
    }
}
