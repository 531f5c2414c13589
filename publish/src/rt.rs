//! The tokio runtime each publish call runs on, its Ctrl-C / SIGTERM watch,
//! and the frame every publish target runs in.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::error::{Common, CommonError};

/// One publish call, as every target makes it: `prepare` checks the options
/// and reads what it needs on this thread (no signal handler yet, so Ctrl-C
/// still simply ends the process) and returns the flow and its Markdown;
/// the flow runs on a fresh runtime watching SIGINT and SIGTERM (see [`run`]);
/// then the Markdown is appended to `step_summary`. Any error stops the
/// progress display.
pub(crate) fn publish<T, E, F, Fut, M>(
    image: &Path,
    step_summary: Option<&Path>,
    progress: &dyn crate::progress::Progress,
    prepare: impl FnOnce() -> Result<(F, M), E>,
) -> Result<T, E>
where
    E: CommonError,
    F: FnOnce(Interrupt) -> Fut,
    Fut: Future<Output = Result<T, E>>,
    M: FnOnce(&T) -> String,
{
    crate::progress::stop_on_error(progress, || {
        let (flow, markdown) = prepare()?;
        let outcome = run(flow).map_err(|source| E::io(image, source))??;
        if let Some(path) = step_summary {
            crate::summary::append(path, &markdown(&outcome))
                .map_err(|source| E::io(path, source))?;
        }
        Ok(outcome)
    })
}

/// Builds a runtime, starts listening for SIGINT and SIGTERM, and runs `f`.
///
/// Once a handler is installed the signals no longer kill the process: `f`
/// must watch its [`Interrupt`] and clean up (abort a multipart upload, cancel
/// an import task) before returning. Handlers stay installed after return
/// (tokio never removes them); the CLI exits right after publishing anyway.
pub(crate) fn run<F, Fut, T>(f: F) -> std::io::Result<T>
where
    F: FnOnce(Interrupt) -> Fut,
    Fut: Future<Output = T>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .thread_name("pgimg-publish")
        .enable_all()
        .build()?;
    rt.block_on(async {
        let interrupt = Interrupt::listen()?;
        Ok(f(interrupt).await)
    })
}

/// Resolves when SIGINT or SIGTERM arrives. Clones share one listener.
#[derive(Clone)]
pub(crate) struct Interrupt {
    rx: watch::Receiver<Option<&'static str>>,
}

impl Interrupt {
    fn listen() -> std::io::Result<Self> {
        // Registered here, synchronously, so a signal that arrives before the
        // task below first runs is still seen.
        let mut int = signal(SignalKind::interrupt())?;
        let mut term = signal(SignalKind::terminate())?;
        let (tx, rx) = watch::channel(None);
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = int.recv() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            };
            let _ = tx.send(Some(name));
        });
        Ok(Interrupt { rx })
    }

    /// Waits for the signal and names it.
    pub(crate) async fn wait(&mut self) -> &'static str {
        match self.rx.wait_for(|s| s.is_some()).await {
            Ok(name) => name.unwrap_or("signal"),
            // The listener only goes away with the runtime; never resolve then.
            Err(_) => std::future::pending().await,
        }
    }
}

/// A bounded wait: a poll every `poll`, until `timeout` after it began.
/// Only AMI and GCE publishing wait.
#[cfg_attr(not(any(feature = "ami", feature = "gce")), allow(dead_code))]
#[derive(Debug, Clone, Copy)]
pub(crate) struct Wait {
    began: Instant,
    poll: Duration,
    timeout: Duration,
}

#[cfg_attr(not(any(feature = "ami", feature = "gce")), allow(dead_code))]
impl Wait {
    /// A wait beginning now.
    pub(crate) fn new(poll: Duration, timeout: Duration) -> Self {
        Wait {
            began: Instant::now(),
            poll,
            timeout,
        }
    }

    /// Sleeps until the next poll, or fails with [`Common::Timeout`] naming
    /// what was waited for (`what()`) when the time is up.
    pub(crate) async fn pause(&self, what: impl FnOnce() -> String) -> Result<(), Common> {
        self.check(what)?;
        tokio::time::sleep(self.poll).await;
        Ok(())
    }

    /// [`Wait::pause`], cut short by SIGINT or SIGTERM
    /// ([`Common::Interrupted`]), for the waits no caller selects on.
    pub(crate) async fn pause_or_interrupt(
        &self,
        what: impl FnOnce() -> String,
        interrupt: &mut Interrupt,
    ) -> Result<(), Common> {
        self.check(what)?;
        tokio::select! {
            _ = tokio::time::sleep(self.poll) => Ok(()),
            signal = interrupt.wait() => Err(Common::Interrupted { signal }),
        }
    }

    fn check(&self, what: impl FnOnce() -> String) -> Result<(), Common> {
        if self.began.elapsed() >= self.timeout {
            return Err(Common::Timeout {
                what: what(),
                secs: self.timeout.as_secs(),
            });
        }
        Ok(())
    }
}

/// Runs `futures` concurrently within the current task and returns their
/// outputs in order. For futures that borrow (a region's copy borrows the
/// run's context), which `tokio::spawn` cannot take. Only AMI copies use it
/// (and its test).
#[cfg_attr(not(feature = "ami"), allow(dead_code))]
pub(crate) async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    use std::task::Poll;
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    // Every slot is filled: the poll above only ends when none is pending.
    outputs.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_all_runs_the_futures_together_and_keeps_their_order() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let started = std::time::Instant::now();
        let out = rt.block_on(join_all(
            [300u64, 100, 200]
                .into_iter()
                .map(|ms| async move {
                    tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                    ms
                })
                .collect(),
        ));
        assert_eq!(out, [300, 100, 200]);
        // One after the other would take 600 ms.
        assert!(
            started.elapsed().as_millis() < 550,
            "{:?}",
            started.elapsed()
        );
    }
}
