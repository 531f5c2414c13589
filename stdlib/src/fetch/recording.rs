//! A fetcher for `plan` and `test`: records, never touches the network.

use std::collections::BTreeMap;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::{normalize_commit, normalize_sha256, FetchError, Fetcher};

/// Answers fetches from fixtures (URL → host file or directory) and returns
/// `None` for everything else. Fixture files are still checked against the
/// pin, so a test catches a wrong sha256.
#[derive(Debug, Default)]
pub struct RecordingFetcher {
    fixtures: BTreeMap<String, PathBuf>,
}

impl RecordingFetcher {
    pub fn new(fixtures: BTreeMap<String, PathBuf>) -> Self {
        RecordingFetcher { fixtures }
    }
}

impl Fetcher for RecordingFetcher {
    fn fetch(&self, url: &str, sha256: &str) -> Result<Option<PathBuf>, FetchError> {
        let expected = normalize_sha256(sha256)?;
        let Some(path) = self.fixtures.get(url) else {
            return Ok(None);
        };
        let bytes = std::fs::read(path).map_err(|e| FetchError::Io {
            url: url.to_string(),
            reason: format!("fixture {}: {e}", path.display()),
        })?;
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != expected {
            return Err(FetchError::ShaMismatch {
                url: url.to_string(),
                expected,
                actual,
            });
        }
        Ok(Some(path.clone()))
    }

    fn git(&self, url: &str, rev: &str) -> Result<Option<PathBuf>, FetchError> {
        normalize_commit(rev)?;
        Ok(self.fixtures.get(url).cloned())
    }
}
