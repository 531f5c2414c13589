//! A fetcher for `plan` and `test`: records, never touches the network.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{normalize_commit, normalize_sha256, FetchError, Fetcher};

/// Answers fetches from fixtures (URL → host file or directory) and returns
/// `None` for everything else. Fixture files are still checked against the
/// pin, so a test catches a wrong sha256.
#[derive(Debug, Default)]
pub struct RecordingFetcher {
    fixtures: BTreeMap<String, PathBuf>,
    checkouts: std::sync::Mutex<Vec<tempfile::TempDir>>,
}

impl RecordingFetcher {
    pub fn new(fixtures: BTreeMap<String, PathBuf>) -> Self {
        RecordingFetcher {
            fixtures,
            checkouts: Default::default(),
        }
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
        let actual = crate::shared::sha256_hex(&bytes);
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

    /// The fixture must be a checkout (have `.git`), so a test of a build
    /// that runs git cannot pass on a plain tree.
    /// Without a fixture: a checkout holding only `.git/HEAD` at `rev` (what
    /// `git rev-parse HEAD` reads), kept until the fetcher is dropped.
    fn git_checkout(&self, url: &str, rev: &str) -> Result<Option<PathBuf>, FetchError> {
        let rev = normalize_commit(rev)?;
        let Some(dir) = self.fixtures.get(url) else {
            let io = |e: std::io::Error| FetchError::Io {
                url: url.to_string(),
                reason: e.to_string(),
            };
            let dir = tempfile::Builder::new()
                .prefix("pgimg-fake-checkout-")
                .tempdir()
                .map_err(io)?;
            std::fs::create_dir(dir.path().join(".git")).map_err(io)?;
            std::fs::write(dir.path().join(".git/HEAD"), format!("{rev}\n")).map_err(io)?;
            let path = dir.path().to_path_buf();
            self.checkouts.lock().unwrap().push(dir);
            return Ok(Some(path));
        };
        if !dir.join(".git").exists() {
            return Err(FetchError::Io {
                url: url.to_string(),
                reason: format!(
                    "fixture {} is not a git checkout (it has no .git)",
                    dir.display()
                ),
            });
        }
        Ok(Some(dir.clone()))
    }

    fn fetch_text(&self, url: &str) -> Result<Option<String>, FetchError> {
        let Some(path) = self.fixtures.get(url) else {
            return Ok(None);
        };
        std::fs::read_to_string(path)
            .map(Some)
            .map_err(|e| FetchError::Io {
                url: url.to_string(),
                reason: format!("fixture {}: {e}", path.display()),
            })
    }

    /// Plans and tests show such a file as pinned by the lock; they never
    /// trust a fixture in its place.
    fn first_use_sha256(&self, _url: &str) -> Result<Option<String>, FetchError> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_comes_from_fixtures_or_nowhere() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("sums.txt");
        std::fs::write(&list, "abc  x.tar.gz\n").unwrap();
        let f = RecordingFetcher::new(BTreeMap::from([("https://h/sums.txt".to_string(), list)]));
        assert_eq!(
            f.fetch_text("https://h/sums.txt").unwrap().as_deref(),
            Some("abc  x.tar.gz\n")
        );
        assert_eq!(f.fetch_text("https://h/other.txt").unwrap(), None);
        assert_eq!(f.first_use_sha256("https://h/x.deb").unwrap(), None);
        let missing = RecordingFetcher::new(BTreeMap::from([(
            "https://h/gone".to_string(),
            dir.path().join("gone"),
        )]));
        let e = missing
            .fetch_text("https://h/gone")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("https://h/gone: fixture "), "{e}");
    }

    #[test]
    fn checkouts_come_from_fixtures_that_have_a_git_dir() {
        let rev = "cf1ce0f5b69048e31d740b508a79d8294707e339";
        let dir = tempfile::tempdir().unwrap();
        let (checkout, plain) = (dir.path().join("checkout"), dir.path().join("plain"));
        std::fs::create_dir_all(checkout.join(".git")).unwrap();
        std::fs::create_dir_all(&plain).unwrap();
        let f = RecordingFetcher::new(BTreeMap::from([
            ("https://h/a.git".to_string(), checkout.clone()),
            ("https://h/b.git".to_string(), plain),
        ]));
        assert_eq!(
            f.git_checkout("https://h/a.git", rev).unwrap(),
            Some(checkout)
        );
        // Without a fixture: a checkout whose HEAD is the pinned commit, as git would have it.
        let made = f.git_checkout("https://h/c.git", rev).unwrap().unwrap();
        assert_eq!(
            std::fs::read_to_string(made.join(".git/HEAD")).unwrap(),
            format!("{rev}\n")
        );
        let e = f
            .git_checkout("https://h/b.git", rev)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a git checkout (it has no .git)"), "{e}");
        let e = f
            .git_checkout("https://h/a.git", "main")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a full git commit id"), "{e}");
    }
}
