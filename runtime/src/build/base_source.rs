//! `--base URL`: the base image as a pinned input, like every other
//! download. It goes through the download cache (verified against its
//! sha256, with progress, kept by digest), and an image in another format
//! than raw (an Ubuntu cloud image is qcow2) is converted once and kept under
//! `<cache_dir>/bases/<sha256>.raw`, so a rebuild neither downloads nor
//! converts again; the base's own digest is then remembered too
//! ([`super::base_digest`]).
//!
//! Its pin comes from `--base-sha256`, from `--base-sha256-from` (the entry
//! for the URL's file name in a checksum list such as a cloud-image serial's
//! `SHA256SUMS`), or from a `url` line of `pgimg.lock` (which `pgimg lock
//! --base` writes); [`pin_for`] decides between them.

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pgimg_stdlib::fetch::{normalize_sha256, sha256_for, url_file_name, Fetcher, HttpFetcher};
use pgimg_stdlib::lock::LockEntry;

pub use super::manifest::BaseDownload;
use super::stages::log;
use crate::error::UsageError;
use crate::image::convert::{self, Format};
use crate::sandbox::interrupt;

/// How the command line pins a `--base` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GivenPin {
    /// `--base-sha256 HEX`.
    Sha256(String),
    /// `--base-sha256-from LIST`: the entry for the URL's file name in the
    /// checksum list at that URL (`sha256sum` or BSD format).
    List(String),
}

/// The sha256 that the checksum list at `list` gives for `url`'s file name
/// (the list is read as text through `fetcher`, not cached).
pub fn sha256_in_list(fetcher: &HttpFetcher, url: &str, list: &str) -> Result<String> {
    let name = url_file_name(url)
        .ok_or_else(|| UsageError(format!("{url} has no file name to look up in {list}")))?;
    let text = fetcher
        .fetch_text(list)
        .with_context(|| format!("reading the checksum list {list}"))?;
    sha256_for(&text, &name).with_context(|| format!("--base-sha256-from {list}"))
}

/// The pin of the base `url`: from `given` on the command line and the
/// lock file's entry `locked` (shown as `lock_file`).
///
/// - `require_lock` (`--locked`): the lock must have the entry, and a given
///   pin must agree with it (the same hex, or the same checksum list it came
///   from); nothing is fetched.
/// - Otherwise a given pin is resolved (`lookup(list)` reads a checksum
///   list) and must agree with the lock's, if there is one; without a given
///   pin the lock's serves.
///
/// Every refusal is a [`UsageError`] naming the flag or line to change.
pub fn pin_for(
    url: &str,
    given: Option<&GivenPin>,
    locked: Option<&LockEntry>,
    require_lock: bool,
    lock_file: &str,
    lookup: &dyn Fn(&str) -> Result<String>,
) -> Result<BaseDownload> {
    let download = |sha256: &str, from: Option<&String>| -> Result<BaseDownload> {
        Ok(BaseDownload {
            url: url.to_string(),
            sha256: normalize_sha256(sha256)
                .map_err(|e| UsageError(format!("--base {url}: {e}")))?,
            sha256_from: from.cloned(),
        })
    };
    let update = format!("pgimg lock RECIPE --base {url} --base-sha256-from LIST");
    if require_lock {
        let Some(entry) = locked else {
            return Err(UsageError(format!(
                "--locked: the base {url} has no `url` line in {lock_file}; record it with `{update}`"
            ))
            .into());
        };
        let agrees = match given {
            None => true,
            Some(GivenPin::Sha256(hex)) => {
                normalize_sha256(hex).ok().as_deref() == Some(&entry.pin)
            }
            Some(GivenPin::List(list)) => entry.from.as_deref() == Some(list.as_str()),
        };
        if !agrees {
            return Err(UsageError(format!(
                "--base {url}: {} differs from its line in {lock_file} ({} {}); change one of them",
                shown(given.expect("a pin that disagrees was given")),
                entry.pin,
                entry
                    .from
                    .as_deref()
                    .map_or(String::new(), |f| format!("from={f}"))
            ))
            .into());
        }
        return download(&entry.pin, entry.from.as_ref());
    }
    let Some(given) = given else {
        return match locked {
            Some(entry) => download(&entry.pin, entry.from.as_ref()),
            None => Err(UsageError(format!(
                "--base {url}: a URL needs its sha256: --base-sha256 HEX, or --base-sha256-from \
                 LIST (e.g. the release serial's SHA256SUMS), or a line `url {url} HEX` in \
                 {lock_file} (`{update}` writes it)"
            ))
            .into()),
        };
    };
    let resolved = match given {
        GivenPin::Sha256(hex) => download(hex, None)?,
        GivenPin::List(list) => download(&lookup(list)?, Some(list))?,
    };
    match locked {
        Some(entry) if entry.pin != resolved.sha256 => {
            let what = match given {
                GivenPin::Sha256(hex) => format!("--base-sha256 {hex}"),
                GivenPin::List(list) => format!("{} (from {list})", resolved.sha256),
            };
            Err(UsageError(format!(
                "--base {url}: {what} differs from its pin in {lock_file} ({}); change one of them",
                entry.pin
            ))
            .into())
        }
        _ => Ok(resolved),
    }
}

fn shown(pin: &GivenPin) -> String {
    match pin {
        GivenPin::Sha256(hex) => format!("--base-sha256 {hex}"),
        GivenPin::List(list) => format!("--base-sha256-from {list}"),
    }
}

/// Whether `--base` names a URL (`http://` or `https://`) rather than a file.
pub fn is_url(base: &OsStr) -> bool {
    base.to_str()
        .is_some_and(|s| s.starts_with("https://") || s.starts_with("http://"))
}

/// The raw file to build from for `download`: fetched into
/// `<cache_dir>/downloads` unless already there, then converted to raw into
/// `<cache_dir>/bases` unless it is raw already or was converted before.
/// Concurrent builds wait for one another's conversion on a lock.
pub fn resolve(download: &BaseDownload, cache_dir: &Path) -> Result<PathBuf> {
    let fetcher = HttpFetcher::new(cache_dir.join("downloads"))
        .context("setting up the downloader")?
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_interrupt(&interrupt::INTERRUPTED);
    let cached = fetcher.cached(&download.sha256).is_some();
    if !cached {
        log(&format!("base: downloading {}", download.url));
    }
    let file = fetcher
        .fetch(&download.url, &download.sha256)
        .with_context(|| format!("downloading the base {}", download.url))?
        .expect("an HTTP fetcher gives a file");
    if cached {
        // The cache is content-addressed: the pin found it, the URL was not
        // contacted (and is recorded as given).
        log(&format!(
            "base: sha256 {} already in the download cache; {} not contacted",
            download.sha256, download.url
        ));
    }
    let info = convert::detect(&file)?;
    if info.format == Format::Raw {
        return Ok(file);
    }
    let dir = cache_dir.join("bases");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let raw = dir.join(format!("{}.raw", download.sha256));
    let lock_path = dir.join(format!("{}.lock", download.sha256));
    let lock_file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    let _lock =
        match nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(lock) => lock,
            Err((file, _)) => {
                log(&format!(
                    "base: waiting for another build converting {}",
                    download.url
                ));
                nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                    .map_err(|(_, e)| e)
                    .with_context(|| format!("locking {}", lock_path.display()))?
            }
        };
    if raw.is_file() {
        log(&format!("base: converted before: {}", raw.display()));
        return Ok(raw);
    }
    log(&format!(
        "base: converting the {} image to raw, once: {}",
        info.format,
        raw.display()
    ));
    let partial = dir.join(format!(".partial-{}.raw", download.sha256));
    let _ = std::fs::remove_file(&partial);
    let converted = convert::to_raw(&file, &info.format, &partial)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            std::fs::rename(&partial, &raw)
                .with_context(|| format!("renaming {} to {}", partial.display(), raw.display()))
        });
    if let Err(e) = converted {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    Ok(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_are_urls() {
        for url in [
            "https://cloud-images.ubuntu.com/x.img",
            "http://127.0.0.1:8000/b.qcow2",
        ] {
            assert!(is_url(OsStr::new(url)), "{url}");
        }
        for path in [
            "/var/tmp/base.raw",
            "base.raw",
            "file:///base.raw",
            "ftp://h/b.img",
            "https",
        ] {
            assert!(!is_url(OsStr::new(path)), "{path}");
        }
    }

    const URL: &str = "https://cloud-images.example/release-20260101/disk-amd64.img";
    const LIST: &str = "https://cloud-images.example/release-20260101/SHA256SUMS";

    fn hex(c: char) -> String {
        c.to_string().repeat(64)
    }

    fn entry(pin: &str, from: Option<&str>) -> LockEntry {
        LockEntry {
            kind: "url".into(),
            url: URL.into(),
            pin: pin.into(),
            from: from.map(String::from),
        }
    }

    /// `pin_for`, with a checksum list that gives `a…a` and counts its reads.
    fn pin(
        given: Option<GivenPin>,
        locked: Option<LockEntry>,
        require_lock: bool,
    ) -> (Result<BaseDownload, String>, usize) {
        let reads = std::cell::Cell::new(0);
        let lookup = |list: &str| -> Result<String> {
            assert_eq!(list, LIST);
            reads.set(reads.get() + 1);
            Ok(hex('a'))
        };
        let got = pin_for(
            URL,
            given.as_ref(),
            locked.as_ref(),
            require_lock,
            "recipes/pgimg.lock",
            &lookup,
        )
        .map_err(|e| {
            assert!(
                e.downcast_ref::<UsageError>().is_some(),
                "a usage error: {e:#}"
            );
            format!("{e:#}")
        });
        (got, reads.get())
    }

    #[test]
    fn a_base_pin_comes_from_the_flag_the_checksum_list_or_the_lock() {
        let (got, reads) = pin(Some(GivenPin::Sha256(hex('B'))), None, false);
        assert_eq!((got.unwrap().sha256, reads), (hex('b'), 0));

        let (got, reads) = pin(Some(GivenPin::List(LIST.into())), None, false);
        let got = got.unwrap();
        assert_eq!(
            (got.sha256.as_str(), got.sha256_from.as_deref(), reads),
            (hex('a').as_str(), Some(LIST), 1)
        );

        let (got, _) = pin(None, Some(entry(&hex('c'), Some(LIST))), false);
        let got = got.unwrap();
        assert_eq!(
            (got.sha256, got.sha256_from.as_deref()),
            (hex('c'), Some(LIST))
        );

        let (err, _) = pin(None, None, false);
        let err = err.unwrap_err();
        assert!(
            err.contains("a URL needs its sha256") && err.contains("--base-sha256-from"),
            "{err}"
        );
    }

    #[test]
    fn a_base_pin_that_contradicts_the_lock_is_refused() {
        let (err, _) = pin(
            Some(GivenPin::Sha256(hex('b'))),
            Some(entry(&hex('c'), None)),
            false,
        );
        assert!(err
            .unwrap_err()
            .contains("differs from its pin in recipes/pgimg.lock"));
        // The list now gives another digest than the lock recorded from it.
        let (err, reads) = pin(
            Some(GivenPin::List(LIST.into())),
            Some(entry(&hex('c'), Some(LIST))),
            false,
        );
        let err = err.unwrap_err();
        assert!(err.contains(&hex('a')) && err.contains(&hex('c')), "{err}");
        assert_eq!(reads, 1);
        // Agreeing pins pass.
        let (got, _) = pin(
            Some(GivenPin::List(LIST.into())),
            Some(entry(&hex('a'), Some(LIST))),
            false,
        );
        assert_eq!(got.unwrap().sha256, hex('a'));
    }

    #[test]
    fn a_locked_base_takes_the_lock_line_and_reads_no_checksum_list() {
        let locked = entry(&hex('c'), Some(LIST));
        for given in [
            None,
            Some(GivenPin::List(LIST.into())),
            Some(GivenPin::Sha256(hex('c'))),
        ] {
            let (got, reads) = pin(given.clone(), Some(locked.clone()), true);
            assert_eq!((got.unwrap().sha256, reads), (hex('c'), 0), "{given:?}");
        }
        for given in [
            Some(GivenPin::List(
                "https://elsewhere.example/SHA256SUMS".into(),
            )),
            Some(GivenPin::Sha256(hex('d'))),
        ] {
            let (err, _) = pin(given.clone(), Some(locked.clone()), true);
            assert!(
                err.unwrap_err().contains("differs from its line in"),
                "{given:?}"
            );
        }
        let (err, _) = pin(Some(GivenPin::Sha256(hex('c'))), None, true);
        let err = err.unwrap_err();
        assert!(
            err.contains("has no `url` line") && err.contains("pgimg lock RECIPE --base"),
            "{err}"
        );
    }
}
