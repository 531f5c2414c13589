//! `pgimg lock`: resolve every pin of recipes into `pgimg.lock` beside them.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pgimg_stdlib::fetch::{Fetcher, HttpFetcher};

use super::FakeArgs;
use crate::engine::display_path;
use crate::lock::{lock_with, ResolvingFetcher, ARCHES};

/// Arguments of `pgimg lock`.
#[derive(Args, Debug)]
pub struct LockArgs {
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub fake: FakeArgs,
}

/// `pgimg lock RECIPE...`: every architecture in [`ARCHES`]; `--arch` is
/// not used, since a lock missing one architecture's inputs would make
/// `--locked` builds fail there.
pub fn lock(args: &LockArgs) -> Result<()> {
    let cache = pgimg_stdlib::fetch::default_cache_dir().join("downloads");
    let fetcher = || -> Result<Box<dyn Fetcher>> {
        let http = HttpFetcher::new(&cache).context("setting up the downloader")?;
        Ok(Box::new(ResolvingFetcher::new(http)))
    };
    let s = lock_with(
        &args.recipes,
        &args.fake.recipe.inputs(),
        &args.fake.os(),
        &ARCHES,
        &fetcher,
    )?;
    for (recipe, arch, why) in &s.skipped {
        eprintln!("{recipe}: {arch} skipped: {why}");
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
