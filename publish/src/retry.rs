//! Retries with exponential backoff and jitter, and which AWS errors deserve one.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

/// How often and how patiently to retry one request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    /// Attempts in total, the first included.
    pub attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Backoff {
    pub(crate) fn new(attempts: u32) -> Self {
        Backoff {
            attempts: attempts.max(1),
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
        }
    }

    /// Sleep before attempt `attempt` (2, 3, ...): "equal jitter", so parallel
    /// parts failing together do not retry in lockstep but still back off.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32 << attempt.saturating_sub(2).min(16))
            .min(self.cap);
        let half = exp / 2;
        let jitter = random_u64() % (half.as_millis() as u64 + 1);
        half + Duration::from_millis(jitter)
    }
}

fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

/// Runs `op(attempt)` until it succeeds, fails with an error `retryable` rejects,
/// or `backoff.attempts` are used up; returns the last error.
pub(crate) async fn retry<T, E, F, Fut>(
    backoff: Backoff,
    retryable: impl Fn(&E) -> bool,
    mut op: F,
) -> Result<T, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < backoff.attempts && retryable(&e) => {
                tokio::time::sleep(backoff.delay(attempt + 1)).await;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Transport failures, timeouts, 5xx, 408, 429 and throttling codes are worth
/// another try; anything else (403, 404, validation errors) will fail again.
pub(crate) fn sdk_retryable<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    match err {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => {
            let status = se.raw().status().as_u16();
            let code = se.err().code().unwrap_or_default();
            status >= 500
                || status == 408
                || status == 429
                || matches!(
                    code,
                    "SlowDown"
                        | "Throttling"
                        | "ThrottlingException"
                        | "RequestThrottledException"
                        | "RequestLimitExceeded"
                        | "RequestTimeout"
                        | "InternalError"
                        | "ServiceUnavailable"
                )
        }
        _ => false,
    }
}

/// The service's code and message (or the transport failure) without the
/// request: SDK errors never carry credentials, but a request could.
pub(crate) fn sdk_message<E>(err: &SdkError<E, HttpResponse>) -> String
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let status = se.raw().status().as_u16();
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg} (HTTP {status})"),
                (Some(code), None) => format!("{code} (HTTP {status})"),
                _ => format!("HTTP {status}: {}", chain(e)),
            }
        }
        other => chain(other),
    }
}

/// The outcome of a best-effort cleanup call (cancelling a task, deleting
/// a snapshot): `"<doing> failed: <message>"`, text for a message rather
/// than something to act on.
pub(crate) fn best_effort<T, E>(
    result: Result<T, SdkError<E, HttpResponse>>,
    doing: impl std::fmt::Display,
) -> Result<(), String>
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
{
    result
        .map(|_| ())
        .map_err(|e| format!("{doing} failed: {}", sdk_message(&e)))
}

/// `err: source: source ...` from the errors' Display alone (the SDK's
/// `DisplayErrorContext` appends a Debug dump, too noisy for a user).
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    join_sources(err.to_string(), err.source())
}

/// `first: source: source ...`, each source by its Display, leaving out one
/// whose text an earlier part already holds: the SDKs and reqwest often
/// repeat their source inside their own message.
pub(crate) fn join_sources(
    first: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    let mut parts = vec![first];
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(attempts: u32) -> Backoff {
        Backoff {
            attempts,
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
        }
    }

    #[derive(Debug, PartialEq)]
    enum E {
        Transient,
        Fatal,
    }

    /// Runs [`retry`] over `answer` (attempt number → its result) and
    /// returns the result and how many attempts were made.
    async fn attempts<T>(
        attempts: u32,
        retryable: fn(&E) -> bool,
        answer: fn(u32) -> Result<T, E>,
    ) -> (Result<T, E>, u32) {
        let calls = AtomicU32::new(0);
        let r = retry(fast(attempts), retryable, |attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            std::future::ready(answer(attempt))
        })
        .await;
        (r, calls.load(Ordering::SeqCst))
    }

    #[tokio::test]
    async fn retries_transient_errors_until_success() {
        let got = attempts(
            5,
            |e| *e == E::Transient,
            |attempt| {
                if attempt < 3 {
                    Err(E::Transient)
                } else {
                    Ok(attempt)
                }
            },
        );
        assert_eq!(got.await, (Ok(3), 3));
    }

    #[tokio::test]
    async fn stops_at_the_first_fatal_error() {
        let got = attempts::<()>(5, |e| *e == E::Transient, |_| Err(E::Fatal));
        assert_eq!(got.await, (Err(E::Fatal), 1));
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt() {
        let got = attempts::<()>(4, |_| true, |_| Err(E::Transient));
        assert_eq!(got.await, (Err(E::Transient), 4));
    }

    #[test]
    fn delay_grows_exponentially_within_jitter_and_cap() {
        let b = Backoff {
            attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for (attempt, full) in [(2, 100), (3, 200), (4, 400), (5, 800), (6, 1000), (9, 1000)] {
            for _ in 0..50 {
                let d = b.delay(attempt).as_millis() as u64;
                assert!(
                    d >= full / 2 && d <= full,
                    "attempt {attempt}: {d} ms not in [{}, {full}]",
                    full / 2
                );
            }
        }
    }
}
