//! The Rhai host: one `build_engine` for the CLI and the tests, with limits,
//! strict variables, no `eval`, imports relative to the importing file, and
//! errors rendered as `file:line:col: primitive: cause`.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pgimg_stdlib::api::PrimitiveFailure;
use pgimg_stdlib::Ctx;

use crate::error::RecipeError;
use rhai::{Dynamic, Engine, EvalAltResult, Module, ModuleResolver, Position, Scope, Shared, AST};

type SharedModule = Shared<Module>;

/// Bounds on what a recipe may consume, so a runaway script stops with a message.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_operations: u64,
    pub max_call_levels: usize,
    pub max_string_size: usize,
    pub max_array_size: usize,
    pub max_map_size: usize,
    pub max_modules: usize,
    /// Script evaluation time (commands have their own timeouts).
    pub wall_clock: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 10_000_000,
            max_call_levels: 64,
            max_string_size: 64 << 20,
            max_array_size: 100_000,
            max_map_size: 100_000,
            max_modules: 256,
            wall_clock: Duration::from_secs(4 * 3600),
        }
    }
}

/// Marks a termination by the wall-clock budget (vs. one by the operation limit).
#[derive(Debug, Clone)]
struct WallClockExceeded(Duration);

/// Marks a termination by SIGINT or SIGTERM.
#[derive(Debug, Clone)]
struct StoppedBySignal;

/// Normalises `a/./b/../c` to `a/c` without touching the file system, so
/// locations read the same whatever the import path looked like. A `..`
/// cancels only a normal component: `../../m` stays `../../m`, and `/..` is `/`.
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.components().next_back() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                Some(Component::ParentDir) | Some(Component::CurDir) | None => out.push(".."),
            },
            other => out.push(other),
        }
    }
    out
}

/// The display form of a recipe path: relative to the working directory when inside it.
pub fn display_path(path: &Path) -> String {
    let path = normalize(path);
    if let Ok(cwd) = std::env::current_dir() {
        if let Ok(rel) = path.strip_prefix(&cwd) {
            return rel.display().to_string();
        }
    }
    path.display().to_string()
}

/// Resolves `import "x"` to `x.rhai` beside the importing file, evaluates
/// each module once per engine (a module's top level may call primitives), and
/// names the module by its path so errors inside it carry that file.
#[derive(Default)]
struct RecipeResolver {
    loaded: Mutex<HashMap<PathBuf, SharedModule>>,
}

impl ModuleResolver for RecipeResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> Result<SharedModule, Box<EvalAltResult>> {
        let dir = source
            .and_then(|s| Path::new(s).parent())
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let mut file = dir.join(path);
        match file.extension() {
            None => {
                file.set_extension("rhai");
            }
            Some(ext) if ext == "rhai" => {}
            Some(_) => {
                return Err(EvalAltResult::ErrorRuntime(
                    format!("import `{path}`: modules are .rhai files").into(),
                    pos,
                )
                .into())
            }
        }
        let file = normalize(&file);
        if let Some(m) = self.loaded.lock().unwrap().get(&file) {
            return Ok(m.clone());
        }
        let shown = display_path(&file);
        let text = std::fs::read_to_string(&file).map_err(|e| {
            EvalAltResult::ErrorRuntime(format!("cannot import `{path}`: {shown}: {e}").into(), pos)
        })?;
        // The error names the import statement and where the module is
        // broken, never the module's text: `import` may have been pointed
        // (or symlinked) at a host file such as a credentials file.
        let mut ast = engine.compile(&text).map_err(|e| {
            EvalAltResult::ErrorRuntime(
                format!(
                    "import `{path}`: {}: not a valid Rhai module ({})",
                    locate(&shown, e.position()),
                    describe_parse_error(&e.0)
                )
                .into(),
                pos,
            )
        })?;
        refuse_nested_imports(&ast).map_err(|at| {
            EvalAltResult::ErrorRuntime(
                format!("{}: {NESTED_IMPORT}", locate(&shown, at)).into(),
                pos,
            )
        })?;
        ast.set_source(file.display().to_string());
        let module = Module::eval_ast_as_new(Scope::new(), &ast, engine)
            .map_err(|e| EvalAltResult::ErrorInModule(shown.clone(), e, pos))?;
        let module: SharedModule = module.into();
        self.loaded.lock().unwrap().insert(file, module.clone());
        Ok(module)
    }
}

/// Builds the engine every recipe and recipe test runs in.
pub fn build_engine(ctx: &Ctx, limits: &Limits) -> Engine {
    let mut engine = Engine::new();
    engine
        .set_max_operations(limits.max_operations)
        .set_max_call_levels(limits.max_call_levels)
        .set_max_string_size(limits.max_string_size)
        .set_max_array_size(limits.max_array_size)
        .set_max_map_size(limits.max_map_size)
        .set_max_modules(limits.max_modules)
        .set_max_expr_depths(128, 64)
        .set_strict_variables(true)
        .set_fail_on_invalid_map_property(true);
    // Rhai's optimizer drops statements it deems pure, among them an
    // `import` inside a block whose alias is unused, so the module (whose
    // top level may call primitives) would silently never run. Recipes
    // spend their time in primitives, not in the script.
    engine.set_optimization_level(rhai::OptimizationLevel::None);
    engine.disable_symbol("eval");
    engine.set_module_resolver(RecipeResolver::default());

    let start = Instant::now();
    let budget = limits.wall_clock;
    engine.on_progress(move |ops| {
        if ops % 256 != 0 {
            None
        } else if crate::sandbox::interrupt::interrupted() {
            // A script busy in primitives or loops stops at the next
            // operation, not when its operation budget runs out.
            Some(Dynamic::from(StoppedBySignal))
        } else if start.elapsed() > budget {
            Some(Dynamic::from(WallClockExceeded(budget)))
        } else {
            None
        }
    });
    let log = ctx.clone();
    engine.on_print(move |msg| log.log(&pgimg_stdlib::Loc::default(), msg));
    pgimg_stdlib::register(&mut engine, ctx);
    let mut finalize = Module::new();
    register_finalize(&mut finalize);
    engine.register_global_module(finalize.into());
    engine
}

// `finalize(#{ item: false, ... })`: switches cleanup items of the finalize
// stage off. It lives here, not in the stdlib, because the items are the
// sandbox's; an unknown item is an error naming it.
pgimg_stdlib::rhai_fns! { fn register_finalize;
    /// Configures the built-in finalize stage (on by default): pass `false` for an item to keep it.
    /// Items: `ssh_host_keys`, `root_password`, `apt`, `cloud_init`, `logs`, `shell_histories`,
    /// `caches`, `tmp`, `machine_id`.
    action finalize(opts: rhai::Map) |c, _| set_finalize(c, opts);
}

/// Validates the names and types; a later call changes only the items it names.
fn set_finalize(c: &Ctx, opts: rhai::Map) -> pgimg_stdlib::Result<()> {
    let _: crate::sandbox::FinalizeOptions = pgimg_stdlib::api::options(opts.clone())?;
    let mut j = c.journal.lock().unwrap();
    let current = j
        .settings
        .entry("finalize".into())
        .or_insert_with(|| serde_json::json!({}));
    for (k, v) in opts {
        current[k.as_str()] = serde_json::Value::Bool(v.as_bool().unwrap_or(true));
    }
    Ok(())
}

const NESTED_IMPORT: &str = "`import` must be at the top level of the file \
     (not in a block or function), so that every module is evaluated";

/// The kind of a parse error without the text it carries (an identifier or
/// token of the file), e.g. `variable undefined`.
fn describe_parse_error(e: &rhai::ParseErrorType) -> String {
    let debug = format!("{e:?}");
    let name = debug.split(['(', ' ', '{']).next().unwrap_or_default();
    let mut words = String::new();
    for (i, ch) in name.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            words.push(' ');
        }
        words.push(ch.to_ascii_lowercase());
    }
    words
}

/// An `import` inside a block or function runs only if that code runs, so a
/// module's top level (which may call primitives) could silently never be
/// evaluated: imports must be top-level statements. Returns the position of
/// the first other one.
fn refuse_nested_imports(ast: &AST) -> Result<(), Position> {
    let top: Vec<Position> = ast
        .statements()
        .iter()
        .filter(|s| matches!(s, rhai::Stmt::Import(..)))
        .map(|s| s.position())
        .collect();
    let mut nested = None;
    ast.walk(&mut |path: &[rhai::ASTNode]| {
        if let Some(rhai::ASTNode::Stmt(stmt @ rhai::Stmt::Import(..))) = path.last() {
            if path.len() > 1 || !top.contains(&stmt.position()) {
                nested = Some(stmt.position());
                return false;
            }
        }
        true
    });
    nested.map_or(Ok(()), Err)
}

/// Compiles a recipe file, naming it by its path for error locations.
pub fn compile(engine: &Engine, path: &Path) -> Result<AST, RecipeError> {
    let shown = display_path(path);
    let text = std::fs::read_to_string(path).map_err(|e| RecipeError(format!("{shown}: {e}")))?;
    let mut ast = engine
        .compile(&text)
        .map_err(|e| RecipeError(render(&EvalAltResult::from(e), &shown)))?;
    refuse_nested_imports(&ast)
        .map_err(|at| RecipeError(format!("{}: {NESTED_IMPORT}", locate(&shown, at))))?;
    ast.set_source(normalize(path).display().to_string());
    Ok(ast)
}

/// Compiles and runs a recipe; the error is the message the user sees.
pub fn run_file(engine: &Engine, path: &Path) -> Result<(), RecipeError> {
    let ast = compile(engine, path)?;
    engine
        .run_ast(&ast)
        .map_err(|e| RecipeError(render(&e, &display_path(path))))
}

fn locate(file: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}"),
        (Some(l), None) => format!("{file}:{l}"),
        _ => file.to_string(),
    }
}

/// Renders a Rhai error as `file:line:col: cause`. Primitive failures already
/// carry their location (the innermost call, possibly inside an imported
/// module); other errors get the location of the innermost script frame.
pub fn render(err: &EvalAltResult, file: &str) -> String {
    let mut file = file.to_string();
    let mut err = err;
    loop {
        match err {
            EvalAltResult::ErrorInFunctionCall(_, src, inner, _) => {
                if !src.is_empty() {
                    file = display_path(Path::new(src));
                }
                err = inner;
            }
            EvalAltResult::ErrorInModule(path, inner, _) => {
                file = path.clone();
                err = inner;
            }
            _ => break,
        }
    }
    match err {
        EvalAltResult::ErrorRuntime(v, pos) => {
            if let Some(f) = v.read_lock::<PrimitiveFailure>() {
                return relative_location(&f.message);
            }
            format!("{}: {}", locate(&file, *pos), v)
        }
        EvalAltResult::ErrorTooManyOperations(pos) => format!(
            "{}: the recipe ran too many operations and was stopped (an endless loop?)",
            locate(&file, *pos)
        ),
        EvalAltResult::ErrorStackOverflow(pos) => format!(
            "{}: calls nested too deeply and were stopped (runaway recursion?)",
            locate(&file, *pos)
        ),
        EvalAltResult::ErrorTerminated(token, pos) => {
            if token.is::<StoppedBySignal>() {
                return format!("{}: interrupted", locate(&file, *pos));
            }
            match token.read_lock::<WallClockExceeded>() {
                Some(w) => format!(
                    "{}: the recipe ran longer than its {}s budget and was stopped",
                    locate(&file, *pos),
                    w.0.as_secs()
                ),
                None => format!("{}: the recipe was stopped", locate(&file, *pos)),
            }
        }
        EvalAltResult::ErrorParsing(p, pos) => format!("{}: {p}", locate(&file, *pos)),
        other => {
            let pos = other.position();
            let mut msg = other.to_string();
            if let Some(i) = msg.rfind(" (line ") {
                msg.truncate(i);
            }
            format!("{}: {msg}", locate(&file, pos))
        }
    }
}

/// Primitive failures carry the source as the engine saw it (absolute for
/// modules); show it relative to the working directory like everything else.
fn relative_location(msg: &str) -> String {
    match msg.split_once(':') {
        Some((path, rest)) if path.starts_with('/') => {
            format!("{}:{rest}", display_path(Path::new(path)))
        }
        _ => msg.to_string(),
    }
}
