//! The real fetcher: HTTP(S) downloads into a content-addressed cache on the host.
//!
//! A download streams to a temporary file beside its final place while it is
//! hashed, so memory stays flat for multi-gigabyte files; only a file whose
//! sha256 matches the pin is renamed to `<cache>/sha256/<hex>`. The cache is
//! trusted: a file is there only if it was verified, so a hit needs no network.

use std::io::{IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::HumanBytes;
use reqwest::blocking::{Client, Response};
use reqwest::StatusCode;
use sha2::{Digest, Sha256};

use super::git::GitFetcher;
use super::{normalize_sha256, FetchError, FetchLog, Fetcher};

/// Largest document [`HttpFetcher::fetch_text`] accepts.
pub const MAX_TEXT_BYTES: u64 = 4 << 20;

const BUF_SIZE: usize = 256 << 10;

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total attempts, the first one included (at least 1).
    pub attempts: u32,
    /// Wait after the first failure; doubled after each further one.
    pub initial_backoff: Duration,
    /// Upper bound of a wait, also for a server's `Retry-After`.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 4,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// `$XDG_CACHE_HOME/pgimg`, else `~/.cache/pgimg`, else `/var/cache/pgimg`.
pub fn default_cache_dir() -> PathBuf {
    // The XDG spec says a relative value is invalid and must be ignored.
    let absolute = |v: std::ffi::OsString| Some(PathBuf::from(v)).filter(|p| p.is_absolute());
    if let Some(xdg) = std::env::var_os("XDG_CACHE_HOME").and_then(absolute) {
        return xdg.join("pgimg");
    }
    if let Some(home) = std::env::var_os("HOME").and_then(absolute) {
        return home.join(".cache").join("pgimg");
    }
    PathBuf::from("/var/cache/pgimg")
}

/// Checks that `url` is an `http` or `https` URL with a host.
pub fn check_url(url: &str) -> Result<reqwest::Url, FetchError> {
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| FetchError::Invalid(format!("`{url}` is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(FetchError::Invalid(format!(
            "`{url}`: only http:// and https:// URLs can be fetched"
        )));
    }
    Ok(parsed)
}

/// The last path segment of a URL, percent-decoded, if it is a usable file name.
pub fn url_file_name(url: &str) -> Option<String> {
    let parsed = reqwest::Url::parse(url).ok()?;
    let last = parsed.path_segments()?.next_back()?;
    let name = percent_decode(last)?;
    let usable = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']);
    usable.then_some(name)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why one attempt failed: worth another try, or final.
enum Failure {
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    Fatal(FetchError),
}

fn transport(e: reqwest::Error) -> Failure {
    if e.is_builder() {
        Failure::Fatal(FetchError::Invalid(e.to_string()))
    } else {
        Failure::Retry {
            reason: error_chain(&e),
            after: None,
        }
    }
}

/// reqwest's top-level message is often just "error sending request"; the cause is below.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

fn io_error(url: &str, what: &str, e: impl std::fmt::Display) -> FetchError {
    FetchError::Io {
        url: url.to_string(),
        reason: format!("{what}: {e}"),
    }
}

/// Sorts a response by status: success goes on, 429 and 5xx are retried,
/// any other status fails at once.
fn check_status(url: &str, resp: Response) -> Result<Response, Failure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let reason = format!("HTTP {status}");
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        let after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        Err(Failure::Retry { reason, after })
    } else {
        Err(Failure::Fatal(FetchError::Http {
            url: url.to_string(),
            reason,
        }))
    }
}

/// Downloads over HTTP(S) into a content-addressed cache, and git sources
/// into the same cache through [`GitFetcher`].
pub struct HttpFetcher {
    cache: PathBuf,
    client: Client,
    retry: RetryPolicy,
    log: FetchLog,
    progress: bool,
    git: GitFetcher,
    interrupt: Option<&'static AtomicBool>,
}

impl std::fmt::Debug for HttpFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFetcher")
            .field("cache", &self.cache)
            .field("retry", &self.retry)
            .finish()
    }
}

impl HttpFetcher {
    /// A fetcher caching under `cache_dir` (created on first use).
    pub fn new(cache_dir: impl Into<PathBuf>) -> Result<Self, FetchError> {
        let cache = cache_dir.into();
        let client = Client::builder()
            .user_agent(concat!("pgimg/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(30))
            // The blocking client applies this to each read, not to the whole
            // body, so it catches a stalled transfer without capping big ones.
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| {
                FetchError::Invalid(format!("building the HTTP client: {}", error_chain(&e)))
            })?;
        let log: FetchLog = Arc::new(|line| crate::stderr_line!("{line}"));
        Ok(HttpFetcher {
            git: GitFetcher::new(&cache).with_log(log.clone()),
            cache,
            client,
            retry: RetryPolicy::default(),
            log,
            progress: std::io::stderr().is_terminal(),
            interrupt: None,
        })
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = RetryPolicy {
            attempts: retry.attempts.max(1),
            ..retry
        };
        self
    }

    /// Turns the download progress bar on or off (default: on when stderr
    /// is a terminal); without it, a log line marks each download's start.
    pub fn with_progress(mut self, on: bool) -> Self {
        self.progress = on;
        self
    }

    /// Abandons a download (between two reads, or instead of a retry) once
    /// `flag` is set: pgimg's SIGINT/SIGTERM flag, which a transfer would
    /// otherwise ignore until it ends.
    pub fn with_interrupt(mut self, flag: &'static AtomicBool) -> Self {
        self.interrupt = Some(flag);
        self
    }

    fn interrupted(&self, url: &str) -> Result<(), FetchError> {
        match self.interrupt {
            Some(f) if f.load(Ordering::SeqCst) => Err(FetchError::Http {
                url: url.to_string(),
                reason: "interrupted".into(),
            }),
            _ => Ok(()),
        }
    }

    /// Sends log lines to `log` instead of stderr.
    pub fn with_log(mut self, log: FetchLog) -> Self {
        self.git = self.git.with_log(log.clone());
        self.log = log;
        self
    }

    /// Runs `program` instead of the `git` on `PATH` for git sources.
    pub fn with_git_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.git = self.git.with_program(program);
        self
    }

    pub fn cache_dir(&self) -> &Path {
        &self.cache
    }

    /// The cached file for `sha256`, if it is there.
    pub fn cached(&self, sha256: &str) -> Option<PathBuf> {
        let path = self
            .cache
            .join("sha256")
            .join(normalize_sha256(sha256).ok()?);
        path.is_file().then_some(path)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the attempts run out.
    fn retrying<T>(
        &self,
        url: &str,
        mut attempt: impl FnMut() -> Result<T, Failure>,
    ) -> Result<T, FetchError> {
        let attempts = self.retry.attempts.max(1);
        let mut backoff = self.retry.initial_backoff;
        for n in 1..=attempts {
            self.interrupted(url)?;
            match attempt() {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry { reason, .. }) if n == attempts => {
                    let tries = if attempts == 1 {
                        "1 attempt".to_string()
                    } else {
                        format!("{attempts} attempts")
                    };
                    return Err(FetchError::Http {
                        url: url.to_string(),
                        reason: format!("{reason} (gave up after {tries})"),
                    });
                }
                Err(Failure::Retry { reason, after }) => {
                    let wait = after.unwrap_or(backoff).min(self.retry.max_backoff);
                    (self.log)(&format!(
                        "{url}: attempt {n}/{attempts} failed: {reason}; retrying in {wait:.1?}"
                    ));
                    std::thread::sleep(wait);
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    /// Downloads `url` once into a temporary file in `dir`, hashing as it
    /// goes; renames it to `dir/<sha256>` only when the hash is `expected`
    /// (any hash when `None`: the name still says what the content is).
    /// Returns the size and the sha256.
    fn download_once(
        &self,
        url: &str,
        expected: Option<&str>,
        dir: &Path,
    ) -> Result<(u64, String), Failure> {
        let resp = self.client.get(url).send().map_err(transport)?;
        let mut resp = check_status(url, resp)?;
        let total = resp.content_length();
        let fatal_io = |what: &str, e: std::io::Error| Failure::Fatal(io_error(url, what, e));
        // Dropping the temporary file deletes it, so every early return
        // below (mismatch included) leaves nothing in the cache.
        let mut tmp = tempfile::Builder::new()
            .prefix(".partial-")
            .tempfile_in(dir)
            .map_err(|e| {
                fatal_io(
                    &format!("creating a temporary file in {}", dir.display()),
                    e,
                )
            })?;
        let bar = self.progress_bar(url, total);
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; BUF_SIZE];
        let mut got: u64 = 0;
        loop {
            self.interrupted(url).map_err(Failure::Fatal)?;
            let n = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return Err(Failure::Retry {
                        reason: format!("reading the body after {got} bytes: {}", error_chain(&e)),
                        after: None,
                    })
                }
            };
            tmp.write_all(&buf[..n])
                .map_err(|e| fatal_io(&format!("writing {}", tmp.path().display()), e))?;
            hasher.update(&buf[..n]);
            got += n as u64;
            if let Some(bar) = &bar {
                bar.set_position(got);
            }
        }
        if let Some(bar) = &bar {
            bar.finish_and_clear();
        }
        if let Some(total) = total.filter(|t| *t != got) {
            return Err(Failure::Retry {
                reason: format!("the body ended after {got} of {total} bytes"),
                after: None,
            });
        }
        let actual = hex::encode(hasher.finalize());
        if let Some(expected) = expected.filter(|e| *e != actual) {
            return Err(Failure::Fatal(FetchError::ShaMismatch {
                url: url.to_string(),
                expected: expected.to_string(),
                actual,
            }));
        }
        let dest = dir.join(&actual);
        // The cache is trusted without rehashing, so the bytes must be on disk
        // before the name says they are verified.
        tmp.as_file()
            .sync_all()
            .map_err(|e| fatal_io(&format!("syncing {}", tmp.path().display()), e))?;
        tmp.persist(&dest)
            .map_err(|e| fatal_io(&format!("renaming into {}", dest.display()), e.error))?;
        Ok((got, actual))
    }

    fn progress_bar(&self, url: &str, total: Option<u64>) -> Option<indicatif::ProgressBar> {
        if !self.progress {
            return None;
        }
        let name = url_file_name(url).unwrap_or_else(|| url.to_string());
        let bar = match total {
            Some(t) => indicatif::ProgressBar::new(t).with_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .expect("a valid progress template")
                .progress_chars("=> "),
            ),
            None => indicatif::ProgressBar::new_spinner().with_style(
                indicatif::ProgressStyle::with_template("{spinner} {msg} {binary_bytes} {binary_bytes_per_sec}")
                    .expect("a valid progress template"),
            ),
        };
        bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
        bar.set_message(name);
        Some(bar)
    }

    /// Fetches a small unpinned text document (a checksum list, say) of at
    /// most [`MAX_TEXT_BYTES`]; nothing is cached.
    pub fn fetch_text(&self, url: &str) -> Result<String, FetchError> {
        check_url(url)?;
        let too_big = || FetchError::Http {
            url: url.to_string(),
            reason: format!("the document is larger than {MAX_TEXT_BYTES} bytes"),
        };
        let bytes = self.retrying(url, || {
            let resp = self.client.get(url).send().map_err(transport)?;
            let resp = check_status(url, resp)?;
            if resp.content_length().is_some_and(|n| n > MAX_TEXT_BYTES) {
                return Err(Failure::Fatal(too_big()));
            }
            let mut bytes = Vec::new();
            resp.take(MAX_TEXT_BYTES + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| Failure::Retry {
                    reason: format!("reading the body: {}", error_chain(&e)),
                    after: None,
                })?;
            Ok(bytes)
        })?;
        if bytes.len() as u64 > MAX_TEXT_BYTES {
            return Err(too_big());
        }
        String::from_utf8(bytes).map_err(|_| FetchError::Http {
            url: url.to_string(),
            reason: "the document is not UTF-8 text".into(),
        })
    }

    /// Downloads `url` without a pin and returns its sha256; the file stays
    /// in the cache under that hash, so a later pinned fetch is a cache hit.
    /// Only for recording a first-use pin (`pgimg lock`): it trusts whatever
    /// the server sends.
    pub fn sha256_of_download(&self, url: &str) -> Result<String, FetchError> {
        check_url(url)?;
        let dir = self.cache.join("sha256");
        std::fs::create_dir_all(&dir)
            .map_err(|e| io_error(url, &format!("creating {}", dir.display()), e))?;
        (self.log)(&format!("hashing {url} (no upstream checksum)"));
        let (_, sha256) = self.retrying(url, || self.download_once(url, None, &dir))?;
        Ok(sha256)
    }
}

impl Fetcher for HttpFetcher {
    fn fetch(&self, url: &str, sha256: &str) -> Result<Option<PathBuf>, FetchError> {
        let expected = normalize_sha256(sha256)?;
        check_url(url)?;
        let dir = self.cache.join("sha256");
        let dest = dir.join(&expected);
        if dest.is_file() {
            return Ok(Some(dest));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| io_error(url, &format!("creating {}", dir.display()), e))?;
        if !self.progress {
            (self.log)(&format!("fetching {url}"));
        }
        let start = Instant::now();
        let (size, _) = self.retrying(url, || self.download_once(url, Some(&expected), &dir))?;
        // Also after a progress bar, which clears itself: the build log keeps the line.
        let secs = start.elapsed().as_secs_f64();
        (self.log)(&format!(
            "fetched {url}: {} in {secs:.1} s ({}/s)",
            HumanBytes(size),
            HumanBytes((size as f64 / secs.max(1e-3)) as u64)
        ));
        Ok(Some(dest))
    }

    fn git(&self, url: &str, rev: &str) -> Result<Option<PathBuf>, FetchError> {
        self.git.tree(url, rev).map(Some)
    }

    fn git_checkout(&self, url: &str, rev: &str) -> Result<Option<PathBuf>, FetchError> {
        self.git.checkout(url, rev).map(Some)
    }

    fn fetch_text(&self, url: &str) -> Result<Option<String>, FetchError> {
        HttpFetcher::fetch_text(self, url).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_urls() {
        for ok in ["http://127.0.0.1:1/a", "https://example.org/x.tar.gz"] {
            assert!(check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "ftp://h/x",
            "file:///etc/passwd",
            "/etc/passwd",
            "example.org/x",
            "http://",
        ] {
            let e = check_url(bad).unwrap_err().to_string();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn file_names_from_urls() {
        let cases = [
            (
                "https://h/a/b/prometheus-2.45.0.linux-amd64.tar.gz",
                Some("prometheus-2.45.0.linux-amd64.tar.gz"),
            ),
            ("https://h/a/x%20y.zip?download=1#f", Some("x y.zip")),
            ("https://h/a/", None),
            ("https://h/a/%2e%2e", None),
            ("https://h/a/%2Fetc", None),
            ("https://h/a/%zz", None),
        ];
        for (url, want) in cases {
            assert_eq!(url_file_name(url).as_deref(), want, "{url}");
        }
    }

    #[test]
    fn default_cache_dir_is_absolute() {
        assert!(default_cache_dir().is_absolute());
        assert!(default_cache_dir().ends_with("pgimg"));
    }

    #[test]
    fn a_bad_pin_or_url_fails_before_any_request() {
        let cache = tempfile::tempdir().unwrap();
        let f = HttpFetcher::new(cache.path()).unwrap();
        let e = f
            .fetch("http://127.0.0.1:9/x", "abc")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a sha256"), "{e}");
        let e = f
            .fetch("ftp://127.0.0.1/x", &"0".repeat(64))
            .unwrap_err()
            .to_string();
        assert!(e.contains("only http"), "{e}");
        assert!(std::fs::read_dir(cache.path()).unwrap().next().is_none());
    }
}
