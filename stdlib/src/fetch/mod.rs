//! Getting inputs onto the host: URLs pinned by sha256 and git sources pinned by commit.
//!
//! A [`Fetcher`] is its own component beside the [`Target`](crate::Target):
//! `pgimg run` pairs a real image with [`HttpFetcher`] (reqwest plus a
//! content-addressed cache); `plan` and `test` use [`RecordingFetcher`], which
//! never touches the network and answers from fixtures when it has them.

mod checksums;
mod git;
mod http;
mod recording;

pub use checksums::{sha256_for, ChecksumError};

pub use git::GitFetcher;
pub use http::{
    check_url, default_cache_dir, url_file_name, HttpFetcher, RetryPolicy, MAX_TEXT_BYTES,
};
pub use recording::RecordingFetcher;

use std::path::PathBuf;
use std::sync::Arc;

/// Where log lines of the fetchers go (start and end of downloads, retries).
pub type FetchLog = Arc<dyn Fn(&str) + Send + Sync>;

/// A fetch that failed; every variant names the URL.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{url}: sha256 mismatch: expected {expected}, got {actual}")]
    ShaMismatch {
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{url}: {reason}")]
    Http { url: String, reason: String },
    #[error("{url}: {reason}")]
    Io { url: String, reason: String },
    #[error("{url}: git: {reason}")]
    Git { url: String, reason: String },
    #[error("{url}: {reason}")]
    Checksums { url: String, reason: String },
    #[error("{url}: upstream publishes no checksum, so its only pin is the one `pgimg lock` recorded in the lock file; run `pgimg lock` and build with `--locked`")]
    OnlyInLock { url: String },
    #[error("{0}")]
    Invalid(String),
}

/// Checks that `sha256` is 64 lowercase-or-uppercase hex digits; returns it lowercased.
pub fn normalize_sha256(sha256: &str) -> Result<String, FetchError> {
    lower_hex(sha256, 64)
        .ok_or_else(|| FetchError::Invalid(format!("`{sha256}` is not a sha256 (64 hex digits)")))
}

/// Checks that `rev` is a full 40-hex git commit id (a branch or tag is not a pin).
pub fn normalize_commit(rev: &str) -> Result<String, FetchError> {
    lower_hex(rev, 40).ok_or_else(|| {
        FetchError::Invalid(format!(
            "`{rev}` is not a full git commit id (40 hex digits); branches and tags are not pins"
        ))
    })
}

/// `text` trimmed and lowercased when it is exactly `digits` hex digits.
fn lower_hex(text: &str, digits: usize) -> Option<String> {
    let s = text.trim().to_ascii_lowercase();
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_hexdigit())).then_some(s)
}

/// Gets pinned inputs onto the host.
pub trait Fetcher: Send + Sync {
    /// Returns a host path holding the content of `url`, verified against
    /// `sha256`, or `None` when this fetcher only records (no fixture).
    fn fetch(&self, url: &str, sha256: &str) -> Result<Option<PathBuf>, FetchError>;

    /// Returns a host directory holding the tree of `url` at commit `rev`
    /// (without `.git`), or `None` when this fetcher only records.
    fn git(&self, url: &str, rev: &str) -> Result<Option<PathBuf>, FetchError>;

    /// Returns a host directory holding a git checkout of `url` at commit
    /// `rev`, for builds that run git themselves: the tree with its `.git`,
    /// HEAD detached at `rev`, the upstream tags that point at `rev`, and
    /// `origin` set to `url`; or `None` when this fetcher only records.
    ///
    /// A fetcher that only records answers as its [`git`](Self::git) does
    /// (`None`) without implementing this; one that gives trees must
    /// implement it, or a checkout is refused here.
    fn git_checkout(&self, url: &str, rev: &str) -> Result<Option<PathBuf>, FetchError> {
        match self.git(url, rev)? {
            None => Ok(None),
            Some(_) => Err(FetchError::Git {
                url: url.to_string(),
                reason: "this fetcher gives source trees only, not git checkouts".into(),
            }),
        }
    }

    /// Returns a small unpinned text document (an upstream checksum list,
    /// an OpenPGP key pinned by fingerprint), or `None` when this fetcher
    /// only records. Whatever is read from it must be checked by the caller.
    fn fetch_text(&self, url: &str) -> Result<Option<String>, FetchError>;

    /// The sha256 of `url`'s content for a file whose upstream publishes no
    /// checksum: trust on first use, which only `pgimg lock` may do (it
    /// records the result for review). Every other fetcher refuses, so a
    /// build never trusts an unpinned download; a recording one returns `None`.
    fn first_use_sha256(&self, url: &str) -> Result<Option<String>, FetchError> {
        Err(FetchError::OnlyInLock {
            url: url.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Gives a tree (or records) and leaves `git_checkout` to the default.
    struct Trees(Option<PathBuf>);

    impl Fetcher for Trees {
        fn fetch(&self, url: &str, _: &str) -> Result<Option<PathBuf>, FetchError> {
            panic!("{url} must not be fetched")
        }
        fn git(&self, _: &str, _: &str) -> Result<Option<PathBuf>, FetchError> {
            Ok(self.0.clone())
        }
        fn fetch_text(&self, url: &str) -> Result<Option<String>, FetchError> {
            panic!("{url} must not be fetched")
        }
    }

    #[test]
    fn a_tree_is_never_passed_off_as_a_checkout() {
        let url = "https://h/src.git";
        let rev = "cf1ce0f5b69048e31d740b508a79d8294707e339";
        assert_eq!(Trees(None).git_checkout(url, rev).unwrap(), None);
        let e = Trees(Some("/tree".into()))
            .git_checkout(url, rev)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            format!("{url}: git: this fetcher gives source trees only, not git checkouts")
        );
    }
}
