//! The stage timer: one log line when a stage starts and one when it ends,
//! with its duration; a stage does not start after SIGINT/SIGTERM.

use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::manifest::StageTime;
use crate::sandbox::interrupt;

/// Stages run so far and their durations.
#[derive(Default)]
pub struct StageTimer {
    pub done: Vec<StageTime>,
}

impl StageTimer {
    /// Runs `f` as `stage`: refused once interrupted, logged, timed, and its
    /// error given the stage's name.
    pub fn run<T>(&mut self, stage: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        self.run_judged(stage, f, |_| true)
    }

    /// [`run`](Self::run) for a stage that returns its failure as a value
    /// (the recipe stage, to keep the cache report of a failed recipe):
    /// `succeeded` tells whether the stage's line says `done` or `failed`.
    pub fn run_judged<T>(
        &mut self,
        stage: &'static str,
        f: impl FnOnce() -> Result<T>,
        succeeded: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        if interrupt::interrupted() {
            bail!("interrupted before {stage}");
        }
        log(&format!("stage {stage} ..."));
        let start = Instant::now();
        let r = f().with_context(|| format!("stage {stage}"));
        let seconds = start.elapsed().as_secs_f64();
        let ok = r.as_ref().is_ok_and(succeeded);
        log(&format!(
            "stage {stage} {} in {seconds:.1} s",
            if ok { "done" } else { "failed" }
        ));
        self.done.push(StageTime { stage, seconds });
        r
    }

    /// Logs the table of stage durations.
    pub fn log_summary(&self) {
        for s in &self.done {
            log(&format!("  {:<13} {:>7.1} s", s.stage, s.seconds));
        }
    }
}

/// A build log line on stderr.
pub fn log(line: &str) {
    pgimg_stdlib::stderr_line!("pgimg: {line}");
}
