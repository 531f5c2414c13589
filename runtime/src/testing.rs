//! `pgimg test`: runs `*.test.rhai` files against fake roots and reports one line per test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pgimg_stdlib::ctx::Journal;
use pgimg_stdlib::fetch::RecordingFetcher;
use pgimg_stdlib::{Ctx, FakeOs, FakeTarget, Target};
use rhai::{
    Array, Dynamic, Engine, EvalAltResult, FuncRegistration, ImmutableString, Map,
    NativeCallContext,
};
use serde::Deserialize;

use crate::engine::{self, build_engine, display_path, Limits};

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
        let ctx = Ctx::new(self.target.clone())
            .with_params(params)
            .with_asset_dirs(asset_dirs(&path, &self.assets))
            .with_mirrors(self.mirrors.clone())
            .with_log(Arc::new(move |loc, msg| {
                log.lock().unwrap().push(format!("{loc}: {msg}"))
            }));
        let ctx = Ctx {
            journal: self.journal.clone(),
            ..ctx
        };
        let engine = build_engine(&ctx, &Limits::default());
        engine::run_file(&engine, &path).map_err(err)
    }
}

/// Asset folders of a recipe: its own `assets/`; for a flavor recipe
/// `recipes/<flavor>.rhai`, the flavor's `flavors/<flavor>/assets/` (found
/// beside the recipes folder, when it exists); then extra ones. The first
/// folder holding an asset wins, so a flavor adds assets but does not
/// silently replace the common ones.
pub fn asset_dirs(recipe: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
    let dir = recipe.parent().unwrap_or(Path::new("."));
    let mut dirs = vec![dir.join("assets")];
    if let Some(flavor) = recipe.file_stem() {
        let assets = engine::normalize(&dir.join("..").join("flavors").join(flavor).join("assets"));
        if assets.is_dir() {
            dirs.push(assets);
        }
    }
    dirs.extend(extra.iter().cloned());
    dirs
}

fn check<T>(r: pgimg_stdlib::Result<T>) -> Result<T, Box<EvalAltResult>> {
    r.map_err(|e| err(e.to_string()))
}

/// Registers `fake_rootfs`, the fake root's methods, `assert` and `assert_eq`.
fn register_test_api(engine: &mut Engine, base_dir: PathBuf) {
    engine.register_type_with_name::<FakeRoot>("FakeRoot");
    FuncRegistration::new("fake_rootfs")
        .with_comments(["/// A fake root (`id`, `version_id`, `codename`, `arch`, `fixtures`, `assets`, `mirrors`)."])
        .with_params_info(["opts: Map", "FakeRoot"])
        .register_into_engine(engine, {
            let base_dir = base_dir.clone();
            move |opts: Map| FakeRoot::new(&base_dir, opts)
        });
    engine.register_fn("fake_rootfs", move || FakeRoot::new(&base_dir, Map::new()));
    engine.register_fn("run", |t: &mut FakeRoot, recipe: &str, params: Map| {
        t.run(recipe, params)
    });
    engine.register_fn("run", |t: &mut FakeRoot, recipe: &str| {
        t.run(recipe, Map::new())
    });
    engine.register_fn("file", |t: &mut FakeRoot, path: &str| -> Dynamic {
        match t.target.root().read(path) {
            Ok(b) => String::from_utf8_lossy(&b).into_owned().into(),
            Err(_) => Dynamic::UNIT,
        }
    });
    engine.register_fn("exists", |t: &mut FakeRoot, path: &str| {
        t.target.root().exists(path)
    });
    engine.register_fn("is_symlink", |t: &mut FakeRoot, path: &str| {
        t.target.root().kind(path) == Some(pgimg_stdlib::root::FileKind::Symlink)
    });
    engine.register_fn("read_link", |t: &mut FakeRoot, path: &str| -> Dynamic {
        match t.target.root().readlink(path) {
            Ok(p) => p.display().to_string().into(),
            Err(_) => Dynamic::UNIT,
        }
    });
    engine.register_fn("mode", |t: &mut FakeRoot, path: &str| -> Dynamic {
        match t.target.root().stat(path) {
            Ok(s) => (s.mode as i64).into(),
            Err(_) => Dynamic::UNIT,
        }
    });
    engine.register_fn("owner", |t: &mut FakeRoot, path: &str| -> Dynamic {
        let Some((uid, gid)) = t.target.owner(path) else {
            return Dynamic::UNIT;
        };
        let name = |db: &str, id: u32| -> String {
            t.target
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
    });
    engine.register_fn("list_dir", |t: &mut FakeRoot, path: &str| -> Array {
        t.target
            .root()
            .read_dir(path)
            .unwrap_or_default()
            .into_iter()
            .map(Dynamic::from)
            .collect()
    });
    engine.register_fn("user_exists", |t: &mut FakeRoot, name: &str| {
        check(pgimg_stdlib::users::user_exists(t.target.root(), name))
    });
    engine.register_fn("in_group", |t: &mut FakeRoot, user: &str, group: &str| {
        check(pgimg_stdlib::users::in_group(t.target.root(), user, group))
    });
    engine.register_fn("unit_enabled", |t: &mut FakeRoot, unit: &str| {
        check(pgimg_stdlib::systemd::unit_enabled(t.target.root(), unit))
    });
    engine.register_fn("commands", |t: &mut FakeRoot| -> Array {
        t.target
            .commands()
            .iter()
            .map(|c| Dynamic::from(c.to_string()))
            .collect()
    });
    engine.register_fn("fetches", |t: &mut FakeRoot| -> Array {
        t.journal
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
    });
    engine.register_fn("actions", |t: &mut FakeRoot| -> Array {
        t.journal
            .lock()
            .unwrap()
            .actions
            .iter()
            .map(|a| Dynamic::from(a.primitive.clone()))
            .collect()
    });
    engine.register_fn("logs", |t: &mut FakeRoot| -> Array {
        t.log
            .lock()
            .unwrap()
            .iter()
            .cloned()
            .map(Dynamic::from)
            .collect()
    });
    FuncRegistration::new("assert")
        .with_comments(["/// Fails the test with `msg` unless `cond` is true."])
        .register_into_engine(
            engine,
            |nctx: NativeCallContext, cond: bool, msg: ImmutableString| {
                if cond {
                    Ok(())
                } else {
                    Err(pgimg_stdlib::api::failure(
                        &pgimg_stdlib::api::location(&nctx),
                        "assert",
                        format!("assertion failed: {msg}"),
                    ))
                }
            },
        );
    FuncRegistration::new("assert_eq")
        .with_comments(["/// Fails the test unless `a == b` (compared by value and type)."])
        .register_into_engine(engine, |nctx: NativeCallContext, a: Dynamic, b: Dynamic| {
            let same = a.type_name() == b.type_name() && format!("{a:?}") == format!("{b:?}");
            if same {
                Ok(())
            } else {
                Err(pgimg_stdlib::api::failure(
                    &pgimg_stdlib::api::location(&nctx),
                    "assert_eq",
                    format!("left: {a:?}, right: {b:?}"),
                ))
            }
        });
}

/// The engine a test file runs in: the test API plus every primitive on a
/// throwaway fake root (so helper code in a test may call them too).
pub fn test_engine(test_file: &Path) -> Engine {
    let base_dir = test_file.parent().unwrap_or(Path::new(".")).to_path_buf();
    let scratch = Arc::new(FakeTarget::ubuntu());
    let ctx = Ctx::new(scratch);
    let mut engine = build_engine(&ctx, &Limits::default());
    register_test_api(&mut engine, base_dir);
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
                error: Some(e),
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
