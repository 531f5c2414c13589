//! `<output>.manifest.json`: what an image was built from and how, also
//! embedded in the image at [`MANIFEST_PATH`](crate::image::inspect::MANIFEST_PATH).

use std::collections::BTreeMap;

use pgimg_stdlib::ctx::{Input, Journal};
use serde::Serialize;

use super::Format;
use crate::sandbox::FinalizeOptions;

/// One stage and how long it took.
#[derive(Debug, Clone, Serialize)]
pub struct StageTime {
    pub stage: &'static str,
    pub seconds: f64,
}

/// The base the image was built from.
#[derive(Debug, Clone, Serialize)]
pub struct BaseRecord {
    /// The file built from (for `--base URL`, the cached download or its
    /// conversion to raw).
    pub path: String,
    /// The sha256 of that file (absent for `--rootfs`).
    pub sha256: Option<String>,
    /// `--base URL`: the URL and the pinned sha256 of the download.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<BaseDownload>,
}

/// Where a downloaded base came from (`--base URL`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BaseDownload {
    pub url: String,
    /// The sha256 of the download (before any conversion), as pinned.
    pub sha256: String,
    /// The checksum list the pin was read from (`--base-sha256-from`, or a
    /// lock line's `from=`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256_from: Option<String>,
}

/// The manifest of one build.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub pgimg_version: &'static str,
    pub recipe: String,
    pub params: BTreeMap<String, String>,
    pub mirrors: BTreeMap<String, String>,
    pub base: BaseRecord,
    pub arch: String,
    /// Every input fetched or built, with its pin.
    pub inputs: Vec<Input>,
    pub finalize: FinalizeOptions,
    pub stages: Vec<StageTime>,
    pub output: Option<OutputRecord>,
    /// What the step cache did (absent with `--no-cache` and `--rootfs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<CacheReport>,
}

/// What the manifest says about the cache.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CacheReport {
    /// `file:line primitive` of the checkpoint resumed from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_after: Option<String>,
    /// Its key (as `pgimg cache ls` shows it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resumed_from: Option<String>,
    /// Actions (primitives with an effect) replayed instead of run.
    pub actions_skipped: usize,
    /// Every call replayed, queries such as `param` included.
    pub calls_replayed: usize,
    /// Checkpoints this build wrote.
    pub checkpoints_written: usize,
}

/// The written image.
#[derive(Debug, Clone, Serialize)]
pub struct OutputRecord {
    pub path: String,
    pub format: Format,
    pub sha256: String,
    pub apparent_size: u64,
    pub allocated_size: u64,
}

/// The journal's `finalize` setting (from the recipe's `finalize(#{...})`).
pub fn finalize_options(journal: &Journal) -> anyhow::Result<FinalizeOptions> {
    use anyhow::Context;
    match journal.settings.get("finalize") {
        None => Ok(FinalizeOptions::default()),
        Some(v) => serde_json::from_value(v.clone()).context("finalize options"),
    }
}
