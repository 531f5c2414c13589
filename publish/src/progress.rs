//! Progress reporting for long phases (hashing, uploading, waiting for AWS).

use std::io::{IsTerminal, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// Receives progress from a publish run. Implementations must be cheap: they
/// are called from the coordinating task after every part or block.
pub trait Progress: Sync {
    /// A phase begins: `label` (e.g. "uploading") over `total` units (bytes, or percent).
    fn start(&self, label: &str, total: u64, unit: Unit);
    /// `delta` more units of the current phase are done.
    fn advance(&self, delta: u64);
    /// The current phase is at `position` units (for phases that report absolute progress).
    fn set(&self, position: u64);
    /// The current phase ended.
    fn finish(&self);
    /// The current phase ended without finishing (an error or an interrupt).
    fn stop(&self) {}
    /// A one-line message for the user (e.g. "already uploaded; nothing to do").
    fn note(&self, message: &str);
    /// Whether the work should stop now (SIGINT/SIGTERM reached the caller);
    /// long loops ask between chunks.
    fn cancelled(&self) -> bool {
        false
    }
}

/// What a phase counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// Bytes of the image.
    Bytes,
    /// Percent done, as AWS reports it.
    Percent,
}

/// Reports nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn start(&self, _: &str, _: u64, _: Unit) {}
    fn advance(&self, _: u64) {}
    fn set(&self, _: u64) {}
    fn finish(&self) {}
    fn note(&self, _: &str) {}
}

/// Progress on stderr: an indicatif bar on a terminal, otherwise a plain line
/// per 10 %, at most one a second (CI logs show no bars, and a line per part
/// would drown them).
pub struct Bar {
    state: Mutex<BarState>,
    terminal: bool,
}

struct BarState {
    bar: Option<ProgressBar>,
    label: String,
    total: u64,
    position: u64,
    unit: Unit,
    next_report: u64,
    started: Instant,
    last_line: Instant,
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Bar {
    /// A bar on stderr; plain lines when stderr is not a terminal.
    pub fn new() -> Self {
        Bar {
            state: Mutex::new(BarState {
                bar: None,
                label: String::new(),
                total: 0,
                position: 0,
                unit: Unit::Bytes,
                next_report: 0,
                started: Instant::now(),
                last_line: Instant::now(),
            }),
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn line(message: &str) {
        let _ = writeln!(std::io::stderr().lock(), "{message}");
    }
}

impl Progress for Bar {
    fn start(&self, label: &str, total: u64, unit: Unit) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        }
        s.label = label.to_string();
        s.total = total;
        s.position = 0;
        s.unit = unit;
        s.next_report = total / 10;
        s.started = Instant::now();
        s.last_line = Instant::now();
        if self.terminal {
            let template = match unit {
                Unit::Bytes => {
                    "{msg:>12} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}"
                }
                Unit::Percent => "{msg:>12} [{bar:40}] {pos}% elapsed {elapsed}",
            };
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(template)
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            s.bar = Some(bar);
        } else {
            Self::line(&format!("{label}: started ({})", amount(total, unit)));
        }
    }

    fn advance(&self, delta: u64) {
        let position = self.state.lock().map(|s| s.position).unwrap_or(0);
        self.set(position.saturating_add(delta));
    }

    fn set(&self, position: u64) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.position = position;
        if let Some(bar) = &s.bar {
            bar.set_position(position);
        } else if s.total > 0
            && position >= s.next_report
            && position < s.total
            && s.last_line.elapsed() >= Duration::from_secs(1)
        {
            let percent = position * 100 / s.total;
            Self::line(&format!(
                "{}: {percent}% ({} of {})",
                s.label,
                amount(position, s.unit),
                amount(s.total, s.unit)
            ));
            s.next_report = (percent / 10 + 1) * s.total / 10;
            s.last_line = Instant::now();
        }
    }

    fn finish(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let elapsed = s.started.elapsed();
        if let Some(bar) = s.bar.take() {
            bar.finish_and_clear();
        }
        let rate = match s.unit {
            Unit::Bytes if elapsed.as_secs_f64() > 0.0 => format!(
                ", {:.1} MiB/s",
                s.position as f64 / 1_048_576.0 / elapsed.as_secs_f64()
            ),
            _ => String::new(),
        };
        Self::line(&format!(
            "{}: done in {:.1} s{rate}",
            s.label,
            elapsed.as_secs_f64()
        ));
    }

    fn stop(&self) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.bar.take() {
            Some(bar) => bar.abandon(),
            None if !s.label.is_empty() => Self::line(&format!(
                "{}: stopped at {} of {}",
                s.label,
                amount(s.position, s.unit),
                amount(s.total, s.unit)
            )),
            None => {}
        }
        s.label.clear();
    }

    fn note(&self, message: &str) {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &s.bar {
            Some(bar) => bar.println(message),
            None => Self::line(message),
        }
    }
}

fn amount(n: u64, unit: Unit) -> String {
    match unit {
        Unit::Bytes => indicatif::HumanBytes(n).to_string(),
        Unit::Percent => format!("{n}%"),
    }
}

/// Runs `f`; when it fails, stops `progress` (the bar abandoned, a "stopped
/// at" line) so the error is not printed under a bar still drawn.
pub fn stop_on_error<T, E>(
    progress: &dyn Progress,
    f: impl FnOnce() -> Result<T, E>,
) -> Result<T, E> {
    let result = f();
    if result.is_err() {
        progress.stop();
    }
    result
}
