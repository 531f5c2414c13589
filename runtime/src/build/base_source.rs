//! `--base URL`: the base image as a pinned input, like every other
//! download. It goes through the download cache (verified against its
//! sha256, with progress, kept by digest), and an image in another format
//! than raw (an Ubuntu cloud image is qcow2) is converted once and kept under
//! `<cache_dir>/bases/<sha256>.raw`, so a rebuild neither downloads nor
//! converts again; the base's own digest is then remembered too
//! ([`super::base_digest`]).

use std::ffi::OsStr;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pgimg_stdlib::fetch::{Fetcher, HttpFetcher};

pub use super::manifest::BaseDownload;
use super::stages::log;
use crate::image::convert::{self, Format};
use crate::sandbox::interrupt;

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
}
