//! `pgimg prune`: list, then (with `--yes`) delete old releases: AMIs with
//! their snapshots, objects with their sidecars, GCE images.

use anyhow::Result;
use clap::Args;
use pgimg_publish::error::Common;
use pgimg_publish::prune::{self, PruneOptions};

use super::publish::{failed, print_json, ConnArgs};
use crate::error::UsageError;

/// `pgimg prune --help`.
pub const ABOUT: &str = "\
Delete old releases: AMIs (and their snapshots) in the regions given, objects (and their \
`.sha256` sidecars) in the bucket given, GCE images in the project given (--gce-project).

A release is selected when its name starts with --prefix and it is beyond the newest --keep of \
its region, bucket or project and/or older than --older-than (both must hold when both are \
given). Nothing else is ever touched. Without --yes nothing is deleted: the JSON on stdout lists what \
would be (`delete`) and what stays (`keep`).

Example (keep the newest five of each region and the bucket):
  pgimg prune --prefix postgres-ubuntu-2204-x64- --keep 5 --region us-east-1,eu-west-1 \\
    --bucket images --key-prefix images/            # look
  pgimg prune ... --yes                             # delete
  pgimg prune --prefix postgres-ubuntu-2204-x64- --keep 5 --gce-project my-project --yes

GCE images are deleted with images.delete, each waited for until its operation is DONE; \
credentials come from Application Default Credentials (roles/compute.storageAdmin).";

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Only AMI names, object names (below --key-prefix) and GCE image names starting with this.
    #[arg(long)]
    pub prefix: String,
    /// Keep the newest N releases of each region, of the bucket and of the GCE project.
    #[arg(long, value_name = "N")]
    pub keep: Option<usize>,
    /// Select only releases older than this: a number and s, m, h, d or w (e.g. 30d).
    #[arg(long, value_name = "AGE", value_parser = prune::parse_age)]
    pub older_than: Option<std::time::Duration>,
    /// Regions whose AMIs (owned by this account) are pruned, comma-separated.
    #[arg(long = "region", value_delimiter = ',')]
    pub regions: Vec<String>,
    /// Bucket whose image objects are pruned.
    #[arg(long)]
    pub bucket: Option<String>,
    /// Folder of the images in the bucket, e.g. `images/`.
    #[arg(long, default_value = "")]
    pub key_prefix: String,
    /// Google Cloud project whose GCE images are pruned.
    #[arg(long, value_name = "PROJECT")]
    pub gce_project: Option<String>,
    /// Compute Engine endpoint; default: https://compute.googleapis.com/compute/v1.
    #[arg(long, value_name = "URL", requires = "gce_project")]
    pub compute_endpoint: Option<String>,
    /// Give up waiting for one GCE image deletion after this many minutes.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub gce_timeout_minutes: u64,
    /// Region to sign S3 requests for (R2: `auto`).
    #[arg(long)]
    pub s3_region: Option<String>,
    /// Only list what would be deleted (the default).
    #[arg(long, conflicts_with = "yes")]
    pub dry_run: bool,
    /// Delete.
    #[arg(long)]
    pub yes: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Runs `pgimg prune`; prints the outcome as JSON on stdout.
pub fn prune(a: &PruneArgs) -> Result<()> {
    let mut opts = PruneOptions::new(a.prefix.clone());
    opts.keep = a.keep;
    opts.older_than = a.older_than;
    opts.regions = a.regions.clone();
    opts.bucket = a.bucket.clone();
    opts.gce_project = a.gce_project.clone();
    opts.compute_endpoint = a.compute_endpoint.clone();
    opts.timeout = std::time::Duration::from_secs(a.gce_timeout_minutes * 60);
    opts.key_prefix = a.key_prefix.clone();
    opts.s3_region = a.s3_region.clone();
    opts.conn = a.conn.conn();
    opts.delete = a.yes && !a.dry_run;
    opts.step_summary = a.conn.step_summary.clone();
    let outcome = prune::prune(&opts, a.conn.progress().as_ref()).map_err(|e| match e {
        prune::Error::Common(Common::Invalid(m)) => UsageError(m).into(),
        e => failed(e, false, format!("pruning {}*", a.prefix)),
    })?;
    print_json(&outcome)
}
