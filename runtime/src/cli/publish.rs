//! `pgimg publish s3|ami`: command-line arguments for the `pgimg-publish` library.

use std::path::{Path, PathBuf};

use anyhow::Result;

use clap::{Args, Subcommand};
use pgimg_publish::progress::{Bar, Progress, Quiet};
use pgimg_publish::s3::{self, S3Options};
use pgimg_publish::Connection;

use crate::error::{Interrupted, UsageError};

#[derive(Subcommand, Debug)]
pub enum PublishCmd {
    /// Upload an image and its `<name>.sha256` sidecar to MinIO, Cloudflare R2 or AWS S3.
    ///
    /// Multipart with parts in parallel and per-part SHA-256 checksums; a re-run for an object
    /// already there with the same sha256 uploads nothing. Any failure or Ctrl-C aborts the
    /// multipart upload. Credentials come from the standard AWS chain (environment, profile).
    /// Prints one JSON object with the outcome on stdout.
    S3(S3Args),
    /// Make AWS AMIs from a raw image: snapshot (import or EBS direct), register, tag, copy, share.
    ///
    /// Prints one JSON object mapping region → AMI id and snapshot id on stdout.
    #[cfg(feature = "ami")]
    Ami(AmiArgs),
}

/// Endpoint and credentials shared by both targets.
#[derive(Args, Debug, Clone)]
pub struct ConnArgs {
    /// Endpoint URL (MinIO, R2 `https://<account>.r2.cloudflarestorage.com`, an emulator); default: AWS.
    #[arg(long)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`<endpoint>/<bucket>/<key>`); MinIO needs it.
    #[arg(long)]
    pub path_style: bool,
    /// Named AWS profile; default: AWS_PROFILE, else `default`.
    #[arg(long)]
    pub profile: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Append a Markdown summary to this file (default: $GITHUB_STEP_SUMMARY when set).
    #[arg(long, env = "GITHUB_STEP_SUMMARY")]
    pub step_summary: Option<PathBuf>,
}

impl ConnArgs {
    fn conn(&self) -> Connection {
        Connection {
            endpoint: self.endpoint.clone(),
            path_style: self.path_style,
            profile: self.profile.clone(),
        }
    }

    fn progress(&self) -> Box<dyn Progress> {
        if self.quiet {
            Box::new(Quiet)
        } else {
            Box::new(Bar::new())
        }
    }
}

#[derive(Args, Debug)]
pub struct S3Args {
    /// The image file to upload.
    pub image: PathBuf,
    /// Bucket to upload to.
    #[arg(long)]
    pub bucket: String,
    /// Object key; default: the image's file name. A key ending in `/` is a prefix.
    #[arg(long)]
    pub key: Option<String>,
    /// Region to sign for (R2: `auto`); default: the AWS chain's, else us-east-1.
    #[arg(long)]
    pub region: Option<String>,
    /// Multipart part size in MiB (raised automatically to fit 10,000 parts).
    #[arg(long, default_value_t = s3::DEFAULT_PART_SIZE >> 20)]
    pub part_size_mib: u64,
    /// Parts uploaded at once.
    #[arg(long, default_value_t = s3::DEFAULT_CONCURRENCY)]
    pub concurrency: usize,
    /// Attempts per request before giving up (with exponential backoff between them).
    #[arg(long, default_value_t = s3::DEFAULT_ATTEMPTS)]
    pub attempts: u32,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[cfg(feature = "ami")]
#[derive(Args, Debug)]
pub struct AmiArgs {
    /// The raw image file.
    pub image: PathBuf,
    /// Region of the snapshot and the first AMI.
    #[arg(long)]
    pub region: String,
    /// AMI name; an AMI with this name already there is reported, not duplicated.
    #[arg(long)]
    pub name: String,
    /// CPU architecture: x86_64 or arm64.
    #[arg(long)]
    pub arch: pgimg_publish::ami::Arch,
    /// Bucket for `--via import` (the object is deleted afterwards, also on failure).
    #[arg(long)]
    pub bucket: Option<String>,
    /// Regions to copy the AMI to, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub copy_to: Vec<String>,
    /// Make every AMI public.
    #[arg(long)]
    pub public: bool,
    /// How to make the snapshot: import (S3 + ImportSnapshot) or ebs-direct (EBS direct APIs).
    #[arg(long, default_value = "import")]
    pub via: pgimg_publish::ami::Via,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A publication error in `doing`; one the user interrupted exits 130.
fn failed(
    e: impl std::error::Error + Send + Sync + 'static,
    interrupted: bool,
    doing: String,
) -> anyhow::Error {
    let e = anyhow::Error::new(e).context(doing);
    if interrupted {
        Interrupted(e).into()
    } else {
        e
    }
}

fn ensure_exists(image: &Path) -> Result<()> {
    if image.is_file() {
        Ok(())
    } else {
        Err(UsageError(format!("{}: no such image file", image.display())).into())
    }
}

/// Runs `pgimg publish ...`; prints the outcome as JSON on stdout.
pub fn publish(cmd: &PublishCmd) -> Result<()> {
    match cmd {
        PublishCmd::S3(a) => {
            ensure_exists(&a.image)?;
            let mut opts = S3Options::new(a.bucket.clone());
            opts.key = a.key.clone();
            opts.region = a.region.clone();
            opts.conn = a.conn.conn();
            opts.part_size = a.part_size_mib << 20;
            opts.concurrency = a.concurrency;
            opts.attempts = a.attempts;
            opts.step_summary = a.conn.step_summary.clone();
            let outcome =
                s3::publish(&opts, &a.image, a.conn.progress().as_ref()).map_err(|e| {
                    let interrupted = e.is_interrupted();
                    failed(
                        e,
                        interrupted,
                        format!("publishing {} to S3", a.image.display()),
                    )
                })?;
            print_json(&outcome)
        }
        #[cfg(feature = "ami")]
        PublishCmd::Ami(a) => {
            use pgimg_publish::ami::{self, AmiOptions};
            ensure_exists(&a.image)?;
            let mut opts = AmiOptions::new(a.region.clone(), a.name.clone(), a.arch);
            opts.via = a.via;
            opts.bucket = a.bucket.clone();
            opts.copy_to = a.copy_to.clone();
            opts.public = a.public;
            opts.conn = a.conn.conn();
            opts.step_summary = a.conn.step_summary.clone();
            let outcome =
                ami::publish(&opts, &a.image, a.conn.progress().as_ref()).map_err(|e| {
                    let interrupted = e.is_interrupted();
                    failed(
                        e,
                        interrupted,
                        format!("publishing {} as an AMI", a.image.display()),
                    )
                })?;
            print_json(&outcome)
        }
    }
}
