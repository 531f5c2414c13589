//! The tokio runtime each publish call runs on, and its Ctrl-C / SIGTERM watch.

use std::future::Future;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

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
