//! `pgimg verify`: boot an image behind a throw-away overlay with no person
//! at the console, check it from inside over the agent's channel, power off.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::agent::Agent;
use super::checks::{self, CheckResult, OnCheck};
use super::machine::{self, BootOptions};
use super::qemu::KillOnDrop;
use super::VmError;

/// Options of a verification.
#[derive(Debug, Clone)]
pub struct VerifyOptions {
    pub boot: BootOptions,
    /// The checks file; `None`: the one found beside the image's recipe, if any.
    pub checks: Option<PathBuf>,
    /// Run only the built-in checks, even when a recipe's checks file exists.
    pub no_recipe_checks: bool,
    /// From power-on to the last check.
    pub timeout: Duration,
}

/// The outcome of a verification that ran.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub checks: Vec<CheckResult>,
    /// `note(…)` lines of the checks file.
    pub notes: Vec<String>,
    /// The last console lines, when the system did not come up.
    pub console_tail: Option<String>,
}

impl Report {
    pub fn passed(&self) -> usize {
        self.checks.iter().filter(|c| c.ok).count()
    }

    pub fn failed(&self) -> usize {
        self.checks.len() - self.passed()
    }
}

/// The checks file of the recipe that built `image`: the `recipe` of the
/// manifest beside it (`IMAGE.manifest.json`), with `.rhai` replaced by
/// `.verify.rhai`, when that file exists.
pub fn recipe_checks(image: &Path) -> Option<PathBuf> {
    let mut name = image.as_os_str().to_owned();
    name.push(".manifest.json");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(PathBuf::from(name)).ok()?).ok()?;
    let recipe = PathBuf::from(manifest.get("recipe")?.as_str()?);
    let stem = recipe.file_stem()?.to_str()?.to_string();
    let checks = recipe.with_file_name(format!("{stem}.verify.rhai"));
    checks.is_file().then_some(checks)
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\r' {
            continue;
        }
        out.push(c);
    }
    out
}

/// The last `n` lines of the console log, escape sequences removed.
fn console_tail(log: &Path, n: usize) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let text = strip_ansi(&String::from_utf8_lossy(&text));
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Boots `image`, runs the built-in checks and the checks file, powers off.
/// `log` receives progress lines (how the machine boots, waiting, timings).
/// `on_check` receives each check as it completes.
pub fn verify(
    image: &Path,
    opts: &VerifyOptions,
    log: &dyn Fn(&str),
    on_check: OnCheck,
) -> Result<Report, VmError> {
    let checks_file = match &opts.checks {
        Some(p) => Some(p.clone()),
        None if opts.no_recipe_checks => None,
        None => recipe_checks(image),
    };
    if let Some(p) = &checks_file {
        checks::compile_only(p)?;
        log(&format!("checks: {}", p.display()));
    }
    let prepared = machine::prepare(image, &opts.boot, true, true)?;
    for note in &prepared.notes {
        log(note);
    }
    let console = prepared
        .config
        .console_log
        .clone()
        .expect("verify logs the console");
    let socket = prepared
        .config
        .agent_socket
        .clone()
        .expect("verify has an agent");
    let qemu_log = prepared.scratch.path().join("qemu.log");
    let qemu_err = std::fs::File::create(&qemu_log).map_err(|e| VmError::Tool {
        tool: super::qemu::QEMU,
        cause: e.to_string(),
    })?;
    let started = Instant::now();
    let deadline = started + opts.timeout;
    let child = prepared
        .config
        .command()?
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(qemu_err)
        .spawn()
        .map_err(|e| VmError::Tool {
            tool: super::qemu::QEMU,
            cause: format!("{e} (install qemu-system-x86, or run tests/setup-boot.sh)"),
        })?;
    let mut child = KillOnDrop(child);
    log(&format!(
        "booting (timeout {} s) ...",
        opts.timeout.as_secs()
    ));

    let mut report = Report::default();
    let did_not_boot = |report: &mut Report, why: String, child: &mut KillOnDrop| {
        let _ = child.0.kill();
        let _ = child.0.wait();
        let qemu_err = std::fs::read_to_string(&qemu_log).unwrap_or_default();
        let mut detail = why;
        if !qemu_err.trim().is_empty() {
            detail.push_str(&format!("\nqemu: {}", qemu_err.trim()));
        }
        push(
            report,
            &on_check,
            CheckResult {
                name: "boot reaches multi-user.target".to_string(),
                ok: false,
                detail,
            },
        );
        report.console_tail = Some(console_tail(&console, 40));
    };

    let agent = match Agent::connect(&socket, (started + Duration::from_secs(30)).min(deadline)) {
        Ok(a) => a,
        Err(e) => {
            did_not_boot(&mut report, e.to_string(), &mut child);
            return Ok(report);
        }
    };
    let ready = agent.wait_ready(deadline, || {
        matches!(child.0.try_wait(), Ok(None)) && !crate::sandbox::interrupt::interrupted()
    });
    if crate::sandbox::interrupt::interrupted() {
        return Err(VmError::Interrupted);
    }
    match ready {
        Ok(true) => {}
        Ok(false) => {
            did_not_boot(
                &mut report,
                format!(
                    "the system did not reach multi-user.target within {} s",
                    opts.timeout.as_secs()
                ),
                &mut child,
            );
            return Ok(report);
        }
        Err(e) => {
            // A guest that gives up on its root reboots (panic=) well before
            // the limit; say when, so the reader knows it was not the limit.
            did_not_boot(
                &mut report,
                format!(
                    "{e} {} s after start, before reaching multi-user.target (limit {} s)",
                    started.elapsed().as_secs(),
                    opts.timeout.as_secs()
                ),
                &mut child,
            );
            return Ok(report);
        }
    }
    let agent = Arc::new(Mutex::new(agent));
    if let Err(e) = checks_inside(
        &on_check,
        &agent,
        started,
        deadline,
        checks_file.as_deref(),
        &mut report,
    ) {
        // The guest stopped answering (hung unit, crash, deadline): a failed
        // check with the console's last lines, not an error without them.
        push(
            &mut report,
            &on_check,
            CheckResult {
                name: "the guest answers the checks".to_string(),
                ok: false,
                detail: e.to_string(),
            },
        );
        report.console_tail = Some(console_tail(&console, 40));
    }

    // Power off, so the guest's shutdown path runs too; the overlay goes anyway.
    let _ = agent
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .send("systemctl poweroff --no-block");
    let off_by = Instant::now() + Duration::from_secs(60);
    while Instant::now() < off_by {
        if !matches!(child.0.try_wait(), Ok(None)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(child);
    Ok(report)
}

/// Records `result` in `report` and hands it to `on_check`.
fn push(report: &mut Report, on_check: &OnCheck, result: CheckResult) {
    on_check(&result);
    report.checks.push(result);
}

/// The built-in checks and the checks file, over the agent.
fn checks_inside(
    on_check: &OnCheck,
    agent: &Arc<Mutex<Agent>>,
    started: Instant,
    deadline: Instant,
    checks_file: Option<&Path>,
    report: &mut Report,
) -> Result<(), VmError> {
    let run = |cmd: &str| -> Result<super::agent::Output, VmError> {
        agent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .run(cmd, deadline)
    };

    // Built-in: multi-user.target reached, and when (power-on on the host's
    // clock: the guest's monotonic clock starts with its kernel, after the
    // firmware and boot loader).
    let state = run("systemctl is-system-running --wait; systemctl is-active multi-user.target")?;
    let timing = run(
        "systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target; cut -d' ' -f1 /proc/uptime",
    )?;
    // The uptime was read a moment before this: the estimate errs late by
    // one round trip over the channel (milliseconds).
    let answered = started.elapsed().as_secs_f64();
    let mut t = timing.out.split_whitespace();
    let entered_us: f64 = t.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let uptime: f64 = t.next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let reached = state.out.lines().last().map(str::trim) == Some("active") && entered_us > 0.0;
    if reached {
        let seconds = answered - (uptime - entered_us / 1e6);
        push(
            report,
            on_check,
            CheckResult {
                name: format!("multi-user.target reached ({seconds:.1} s from power-on)"),
                ok: true,
                detail: String::new(),
            },
        );
    } else {
        push(
            report,
            on_check,
            CheckResult {
                name: "multi-user.target reached".to_string(),
                ok: false,
                detail: format!("system state: {}", state.out.trim()),
            },
        );
    }

    // Built-in: no failed units; each failure named, with its journal tail.
    let failed = run("systemctl list-units --failed --no-legend --plain --full | cut -d' ' -f1")?;
    let units: Vec<String> = failed
        .out
        .split_whitespace()
        .filter(|u| !u.is_empty())
        .map(str::to_string)
        .collect();
    let mut detail = String::new();
    for unit in units.iter().take(5) {
        let journal = run(&format!(
            "journalctl -b -u '{unit}' -n 12 --no-pager -o short-monotonic"
        ))?;
        detail.push_str(&format!(
            "--- {unit}: journal tail\n{}\n",
            journal.out.trim_end()
        ));
    }
    push(
        report,
        on_check,
        CheckResult {
            name: if units.is_empty() {
                "no failed units".to_string()
            } else {
                format!("no failed units: failed: {}", units.join(", "))
            },
            ok: units.is_empty(),
            detail: detail.trim_end().to_string(),
        },
    );

    if let Some(file) = checks_file {
        let (results, notes) = checks::run_file(file, agent.clone(), deadline, on_check.clone())?;
        report.checks.extend(results);
        report.notes = notes;
    }

    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_tail_drops_escape_sequences() {
        assert_eq!(
            strip_ansi("\u{1b}[0;32m  OK  \u{1b}[0m] Reached\r"),
            "  OK  ] Reached"
        );
    }
}
