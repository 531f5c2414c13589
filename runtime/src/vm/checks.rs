//! Checks files (`*.verify.rhai`): Rhai run on the host, each `sh(…)` one
//! command in the booted guest, each `expect_*` one reported check.
//!
//! ```rhai
//! expect_active("ssh.service");
//! expect_ok("pg_isready");
//! expect_eq(sh("id -nG postgres"), "postgres ssl-cert");
//! let v = sh("psql -tAc 'show data_checksums'");
//! expect(v.ok && v.out.contains("on"), "data checksums on");
//! ```

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use pgimg_stdlib::shared::tail_lines;
use rhai::{Dynamic, Engine, EvalAltResult, NativeCallContext, Position};

use super::agent::{Agent, Output};
use super::VmError;

/// One reported check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckResult {
    pub name: String,
    pub ok: bool,
    /// Why it failed (or extra facts), possibly several lines.
    pub detail: String,
}

/// What `sh(…)` returns: `.out` (stdout and stderr), `.status`, `.ok`;
/// as a string (e.g. in `expect_eq`) its output without surrounding blanks.
#[derive(Debug, Clone)]
pub struct Sh(pub Output);

impl std::fmt::Display for Sh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.out.trim())
    }
}

/// Called with each check as it completes (e.g. to print it at once).
pub type OnCheck = Arc<dyn Fn(&CheckResult) + Send + Sync>;

struct State {
    agent: Arc<Mutex<Agent>>,
    on_check: OnCheck,
    deadline: Instant,
    results: Vec<CheckResult>,
    notes: Vec<String>,
}

type Shared = Arc<Mutex<State>>;

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, State> {
    s.lock().unwrap_or_else(|e| e.into_inner())
}

fn run_sh(state: &Shared, cmd: &str, pos: Position) -> Result<Sh, Box<EvalAltResult>> {
    let (agent, deadline) = {
        let s = lock(state);
        (s.agent.clone(), s.deadline)
    };
    let mut agent = agent.lock().unwrap_or_else(|e| e.into_inner());
    agent.run(cmd, deadline).map(Sh).map_err(|e| {
        Box::new(EvalAltResult::ErrorRuntime(
            format!("sh({cmd:?}): {e}").into(),
            pos,
        ))
    })
}

fn record(state: &Shared, name: String, ok: bool, detail: String) -> bool {
    let result = CheckResult { name, ok, detail };
    let mut s = lock(state);
    (s.on_check)(&result);
    s.results.push(result);
    ok
}

fn text(v: &Dynamic) -> String {
    if let Some(sh) = v.clone().try_cast::<Sh>() {
        return sh.to_string();
    }
    if v.is_string() {
        return v.clone().into_string().unwrap_or_default();
    }
    v.to_string()
}

fn shown(v: &Dynamic) -> String {
    if v.is::<Sh>() || v.is_string() {
        format!("{:?}", text(v))
    } else {
        v.to_string()
    }
}

/// The engine with the checks API, acting through `state`.
fn engine(state: Shared) -> Engine {
    let mut engine = Engine::new();
    engine.set_max_operations(10_000_000);
    engine.set_max_call_levels(64);
    engine.set_strict_variables(true);
    engine.disable_symbol("eval");

    engine
        .register_type_with_name::<Sh>("ShOutput")
        .register_get("out", |s: &mut Sh| s.0.out.clone())
        .register_get("status", |s: &mut Sh| s.0.status)
        .register_get("ok", |s: &mut Sh| s.0.status == 0)
        .register_fn("to_string", |s: &mut Sh| s.to_string())
        .register_fn("to_debug", |s: &mut Sh| format!("{:?}", s.to_string()));

    let st = state.clone();
    engine.register_fn(
        "sh",
        move |ctx: NativeCallContext, cmd: &str| -> Result<Sh, Box<EvalAltResult>> {
            run_sh(&st, cmd, ctx.call_position())
        },
    );
    let st = state.clone();
    engine.register_fn(
        "expect_active",
        move |ctx: NativeCallContext, unit: &str| -> Result<bool, Box<EvalAltResult>> {
            let pos = ctx.call_position();
            let state = run_sh(&st, &format!("systemctl is-active '{unit}'"), pos)?;
            let ok = state.to_string() == "active";
            let detail = if ok {
                String::new()
            } else {
                let journal = run_sh(
                    &st,
                    &format!("journalctl -b -u '{unit}' -n 15 --no-pager -o cat"),
                    pos,
                )?;
                format!(
                    "state: {}\n{}",
                    state,
                    tail_lines(journal.0.out.as_bytes(), 15)
                )
            };
            Ok(record(&st, format!("expect_active({unit:?})"), ok, detail))
        },
    );
    let st = state.clone();
    engine.register_fn(
        "expect_ok",
        move |ctx: NativeCallContext, cmd: &str| -> Result<bool, Box<EvalAltResult>> {
            let out = run_sh(&st, cmd, ctx.call_position())?;
            let ok = out.0.status == 0;
            let detail = if ok {
                String::new()
            } else {
                format!(
                    "exit status {}\n{}",
                    out.0.status,
                    tail_lines(out.0.out.as_bytes(), 15)
                )
            };
            Ok(record(&st, format!("expect_ok({cmd:?})"), ok, detail))
        },
    );
    let st = state.clone();
    engine.register_fn("expect_eq", move |a: Dynamic, b: Dynamic| -> bool {
        let ok = if a.is::<Sh>() || b.is::<Sh>() || a.is_string() || b.is_string() {
            text(&a) == text(&b)
        } else {
            a.to_string() == b.to_string() && a.type_name() == b.type_name()
        };
        let mut detail = if ok {
            String::new()
        } else {
            format!("left:  {}\nright: {}", shown(&a), shown(&b))
        };
        if let Some(sh) = a.clone().try_cast::<Sh>() {
            if sh.0.status != 0 {
                detail.push_str(&format!("\n(the command exited with {})", sh.0.status));
            }
        }
        record(
            &st,
            format!("expect_eq({}, {})", shown(&a), shown(&b)),
            ok,
            detail,
        )
    });
    let st = state.clone();
    engine.register_fn(
        "expect_contains",
        move |hay: Dynamic, needle: &str| -> bool {
            let ok = text(&hay).contains(needle);
            let detail = if ok {
                String::new()
            } else {
                format!("in: {}", tail_lines(text(&hay).as_bytes(), 15))
            };
            record(&st, format!("expect_contains(…, {needle:?})"), ok, detail)
        },
    );
    let st = state.clone();
    engine.register_fn("expect", move |cond: bool, name: &str| -> bool {
        record(&st, name.to_string(), cond, String::new())
    });
    let st = state.clone();
    engine.register_fn("note", move |msg: Dynamic| {
        lock(&st).notes.push(text(&msg));
    });
    engine
}

/// Runs the checks file at `path`. A compile error is an error; a runtime
/// error (e.g. the guest stopped answering) ends the file as one failed check.
/// Returns the checks and the `note(…)` lines.
pub fn run_file(
    path: &Path,
    agent: Arc<Mutex<Agent>>,
    deadline: Instant,
    on_check: OnCheck,
) -> Result<(Vec<CheckResult>, Vec<String>), VmError> {
    let source = std::fs::read_to_string(path).map_err(|e| VmError::Checks {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    let state: Shared = Arc::new(Mutex::new(State {
        agent,
        on_check,
        deadline,
        results: Vec::new(),
        notes: Vec::new(),
    }));
    let engine = engine(state.clone());
    let ast = engine.compile(&source).map_err(|e| VmError::Checks {
        path: path.to_path_buf(),
        cause: format!("{}: {}", e.1, e.0),
    })?;
    let outcome = engine.run_ast(&ast);
    let mut s = lock(&state);
    if let Err(e) = outcome {
        let pos = e.position();
        let (line, col) = (pos.line().unwrap_or(0), pos.position().unwrap_or(0));
        let result = CheckResult {
            name: format!("{}:{line}:{col}", path.display()),
            ok: false,
            detail: e.to_string(),
        };
        (s.on_check)(&result);
        s.results.push(result);
    }
    Ok((std::mem::take(&mut s.results), std::mem::take(&mut s.notes)))
}

/// Compiles a checks file without running it (for `pgimg verify --checks` before a boot).
pub fn compile_only(path: &Path) -> Result<(), VmError> {
    let source = std::fs::read_to_string(path).map_err(|e| VmError::Checks {
        path: path.to_path_buf(),
        cause: e.to_string(),
    })?;
    Engine::new()
        .compile(&source)
        .map_err(|e| VmError::Checks {
            path: path.to_path_buf(),
            cause: format!("{}: {}", e.1, e.0),
        })?;
    Ok(())
}
