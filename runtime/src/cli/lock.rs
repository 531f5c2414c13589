//! `pgimg lock`: resolve every pin of recipes into `pgimg.lock` beside them,
//! and record the pin of a base image URL on purpose (`--base`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pgimg_stdlib::fetch::{Fetcher, HttpFetcher};

use pgimg_stdlib::lock::{LockEntry, FROM_LOCK};

use super::{BasePinArgs, OsArgs, RecipeArgs};
use crate::build::base_source;
use crate::engine::display_path;
use crate::error::UsageError;
use crate::lock::{lock_with, ResolvingFetcher, ARCHES};

/// Arguments of `pgimg lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    /// Recipe files, all in one folder: the lock file is written beside them.
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub recipe: RecipeArgs,
    #[command(flatten)]
    pub os: OsArgs,
    /// Refused with a note: there is no architecture to choose.
    #[arg(long, hide = true, value_name = "ARCH")]
    pub arch: Option<String>,
    /// Also record the pin of this base image URL (for `pgimg run --base
    /// URL`), replacing its line if there is one; repeat it for each
    /// architecture's image. Without --base-sha256 or --base-sha256-from the
    /// image is downloaded and hashed (trust on first use, `from=lock`) and
    /// stays in the download cache. A dated release serial keeps the URL's
    /// content fixed; moving to a newer serial is a new URL, locked on purpose.
    #[arg(long, value_name = "URL")]
    pub base: Vec<String>,
    #[command(flatten)]
    pub base_pin: BasePinArgs,
}

/// `pgimg lock RECIPE...`: every architecture in [`ARCHES`] (there is no
/// `--arch`), since a lock missing one architecture's inputs would make
/// `--locked` builds fail there.
pub fn lock(args: &LockArgs) -> Result<()> {
    if let Some(arch) = &args.arch {
        return Err(UsageError(format!(
            "--arch {arch}: pgimg lock resolves every architecture ({}) in one run; drop --arch",
            ARCHES.join(", ")
        ))
        .into());
    }
    let cache = pgimg_stdlib::fetch::default_cache_dir().join("downloads");
    let fetcher = || -> Result<Box<dyn Fetcher>> {
        let http = HttpFetcher::new(&cache).context("setting up the downloader")?;
        Ok(Box::new(ResolvingFetcher::new(http)))
    };
    let bases = base_entries(args, &cache)?;
    let s = lock_with(
        &args.recipes,
        &args.recipe.inputs(),
        &args.os.on(ARCHES[0]),
        &ARCHES,
        &fetcher,
        &bases,
    )?;
    for (recipe, arch, why) in &s.skipped {
        pgimg_stdlib::stderr_line!("{recipe}: {arch} skipped: {why}");
    }
    for a in &s.added {
        println!("added   {a}");
    }
    for c in &s.changed {
        println!("changed {c}");
    }
    println!(
        "{}: {} inputs ({} added, {} changed)",
        display_path(&s.path),
        s.entries,
        s.added.len(),
        s.changed.len()
    );
    Ok(())
}

/// The lock lines of `--base`: each URL with its pin, resolved before any
/// recipe runs so a wrong URL or list fails fast.
fn base_entries(args: &LockArgs, cache: &std::path::Path) -> Result<Vec<LockEntry>> {
    let given = args.base_pin.given();
    if matches!(given, Some(base_source::GivenPin::Sha256(_))) && args.base.len() > 1 {
        return Err(UsageError(
            "--base-sha256 pins one --base URL; for several, use --base-sha256-from or one call each"
                .into(),
        )
        .into());
    }
    let http = || {
        HttpFetcher::new(cache)
            .context("setting up the downloader")
            .map(|h| h.with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr())))
    };
    let mut entries = Vec::new();
    for url in &args.base {
        if !base_source::is_url(std::ffi::OsStr::new(url)) {
            return Err(UsageError(format!(
                "--base {url}: not an http(s) URL; a base file is hashed when it is built from and needs no lock line"
            ))
            .into());
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(UsageError(format!(
                "--base {}: holds whitespace or control characters (percent-encode them)",
                url.escape_debug()
            ))
            .into());
        }
        pgimg_stdlib::fetch::check_url(url)
            .map_err(|e| UsageError(format!("--base {}: {e}", url.escape_debug())))?;
        if pgimg_stdlib::fetch::url_file_name(url).is_none() {
            return Err(UsageError(format!(
                "--base {url}: names no file (a folder or a server's root); give the image's URL"
            ))
            .into());
        }
        let (pin, from) = match &given {
            Some(base_source::GivenPin::Sha256(hex)) => (
                pgimg_stdlib::fetch::normalize_sha256(hex)
                    .map_err(|e| UsageError(format!("--base-sha256: {e}")))?,
                None,
            ),
            Some(base_source::GivenPin::List(list)) => (
                base_source::sha256_in_list(&http()?, url, list)?,
                Some(list.clone()),
            ),
            None => {
                pgimg_stdlib::stderr_line!("pgimg: {url}: no checksum given: downloading it to record its sha256 (trust on first use)");
                let sha = http()?
                    .sha256_of_download(url)
                    .with_context(|| format!("downloading the base {url}"))?;
                (sha, Some(FROM_LOCK.to_string()))
            }
        };
        entries.push(LockEntry {
            kind: "url".into(),
            url: url.clone(),
            pin,
            from,
        });
    }
    Ok(entries)
}
