//! `pgimg cache`: list and prune the step cache's checkpoints.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, Subcommand};

use super::parse_size;
use crate::build::cache::{Entry, Store};

/// `pgimg cache ls|prune`.
#[derive(Subcommand, Debug)]
pub enum CacheCmd {
    /// List the checkpoints: key, size, recipe and step, age; least recently used first.
    Ls(LsArgs),
    /// Remove checkpoints unused for longer than --older-than, then the least
    /// recently used until the rest fit in --max-size.
    Prune(PruneArgs),
}

/// Where the cache is.
#[derive(Args, Debug, Clone)]
pub struct Where {
    /// The host cache `pgimg run` used. Default: $XDG_CACHE_HOME/pgimg (or ~/.cache/pgimg).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

impl Where {
    fn store(&self) -> Store {
        Store::new(
            &self
                .cache_dir
                .clone()
                .unwrap_or_else(pgimg_stdlib::fetch::default_cache_dir),
        )
    }
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[command(flatten)]
    pub at: Where,
    /// One JSON array on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    #[command(flatten)]
    pub at: Where,
    /// Remove checkpoints not used for this long (e.g. 7d, 12h, 0s for all).
    #[arg(long, value_parser = pgimg_publish::prune::parse_age, value_name = "AGE")]
    pub older_than: Option<Duration>,
    /// Keep at most this much (e.g. 20G), least recently used removed first.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub max_size: Option<u64>,
}

/// Runs `pgimg cache …`.
pub fn cache(cmd: &CacheCmd) -> Result<()> {
    match cmd {
        CacheCmd::Ls(a) => {
            let store = a.at.store();
            let entries = store.entries();
            if a.json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            let total = print_entries(&entries, "");
            println!(
                "{} checkpoints, {} in {}",
                entries.len(),
                mib(total),
                store.dir().display()
            );
            Ok(())
        }
        CacheCmd::Prune(a) => {
            if a.older_than.is_none() && a.max_size.is_none() {
                return Err(crate::error::UsageError(
                    "cache prune: give --older-than, --max-size or both".into(),
                )
                .into());
            }
            let store = a.at.store();
            let _lock = store.lock()?;
            let removed = store.evict(a.max_size, a.older_than);
            let freed = print_entries(&removed, "removed ");
            println!(
                "{} checkpoints removed, {} freed",
                removed.len(),
                mib(freed)
            );
            Ok(())
        }
    }
}

/// Prints a line per entry, after `prefix`; returns their total size.
fn print_entries(entries: &[Entry], prefix: &str) -> u64 {
    let now = now();
    for e in entries {
        println!("{prefix}{}", line(e, now));
    }
    entries.iter().map(|e| e.size).sum()
}

fn line(e: &Entry, now: u64) -> String {
    format!(
        "{}  {:>9}  {}  after {} ({} steps)  created {} ago, used {} ago",
        &e.key[..12],
        mib(e.size),
        e.recipe,
        e.after,
        e.steps,
        age(now.saturating_sub(e.created)),
        age(now.saturating_sub(e.used)),
    )
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn age(s: u64) -> String {
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
