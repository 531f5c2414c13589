//! `pgimg publish s3|ami|gce`: command-line arguments for the `pgimg-publish` library.

use std::path::{Path, PathBuf};

use anyhow::Result;

use clap::{Args, Subcommand};
use pgimg_publish::error::TargetError;
use pgimg_publish::progress::{Bar, Progress, Quiet};
use pgimg_publish::s3::{self, S3Options};
use pgimg_publish::Connection;

use crate::error::{Interrupted, UsageError};

#[derive(Subcommand, Debug)]
pub enum PublishCmd {
    /// Upload an image and its `<name>.sha256` sidecar to MinIO, Cloudflare R2 or AWS S3.
    #[command(long_about = S3_ABOUT)]
    S3(S3Args),
    /// Make AWS AMIs from a raw image: snapshot (import or EBS direct), register, tag, copy, share.
    #[cfg(feature = "ami")]
    #[command(long_about = AMI_ABOUT)]
    Ami(AmiArgs),
    /// Make a GCE image from a raw image: GNU sparse tar.gz, upload to GCS, images.insert, share.
    #[cfg(feature = "gce")]
    #[command(long_about = GCE_ABOUT)]
    Gce(GceArgs),
}

#[cfg(feature = "gce")]
const GCE_ABOUT: &str = "\
Make a GCE image from a raw image: pack it as `disk.raw` in a GNU sparse tar.gz (holes stay \
holes), upload that to the Cloud Storage bucket, create the image from it (images.insert), \
wait until it is READY (bounded by --timeout-minutes), and with --public let every \
authenticated Google account use it (allAuthenticatedUsers as roles/compute.imageUser). \
The tarball is deleted from the bucket afterwards, also when something failed or on Ctrl-C. \
An image of that name already there is reported, not duplicated.

Credentials come from Application Default Credentials: GOOGLE_APPLICATION_CREDENTIALS (a \
service-account key or a workload identity federation config, as google-github-actions/auth \
writes it), `gcloud auth application-default login`, or the metadata server. The account \
needs roles/compute.storageAdmin on the project and object create and delete on the bucket. \
Prints one JSON object with the outcome on stdout.

Example (the release workflow's publishing):
  pgimg publish gce postgres-ubuntu-2204-x64-20260115.raw --project my-project \\
    --bucket my-image-uploads --name postgres-ubuntu-2204-x64-20260115 \\
    --family postgres-ubuntu-2204-x64 --guest-os-features VIRTIO_SCSI_MULTIQUEUE,GVNIC \\
    --labels flavor=standard,pg=16 --public";

#[cfg(feature = "ami")]
const AMI_ABOUT: &str = "\
Make AWS AMIs from a raw image: snapshot, register, tag, copy to regions, share, deprecate.

The snapshot is made by `--via import` (S3 upload + ImportSnapshot; 10-60 min; needs --bucket \
and the vmimport role) or `--via ebs-direct` (EBS direct APIs: seconds to minutes, no bucket). \
EBS direct writes every allocated block of the image, zero blocks included, and leaves out only \
the holes of the (sparse) file: a block missing from an encrypted snapshot does not read back \
as zeros. --skip-zero-blocks also leaves out blocks of zeros; only for snapshots that stay \
unencrypted. --parent-snapshot-id makes the snapshot an increment of an earlier one.

Everything is idempotent: an AMI of that name already in a region is reused, CopyImage and \
StartSnapshot carry client tokens derived from the image's sha256, name and region, so a re-run \
after a failure resumes instead of duplicating. Copies run in parallel. Sharing, \
create-volume permissions and deprecation are applied in every region.

Credentials come from the standard AWS chain (environment, profile, web identity for OIDC roles).
Prints one JSON object mapping region → AMI id and snapshot id on stdout.

Example (the release workflow's publishing):
  pgimg publish ami postgres-ubuntu-2204-x64-20260115.raw --region us-east-1 \\
    --name postgres-ubuntu-2204-x64-20260115 --arch x86_64 --via ebs-direct \\
    --copy-to us-west-2,eu-west-1 --kms-key-id arn:aws:kms:us-east-1:111122223333:key/mrk-1 \\
    --kms-key-id us-west-2=arn:aws:kms:us-west-2:111122223333:key/mrk-1 \\
    --kms-key-id eu-west-1=arn:aws:kms:eu-west-1:111122223333:key/mrk-1 \\
    --share-with 123456789012,210987654321 --deprecate-at 2027-01-15T00:00:00Z \\
    --imds-support v2.0 --boot-mode uefi-preferred";

const S3_ABOUT: &str = "\
Upload an image and its `<name>.sha256` sidecar to MinIO, Cloudflare R2 or AWS S3.

Multipart with parts in parallel and per-part SHA-256 checksums; a re-run for an object already \
there with the same sha256 uploads nothing. Any failure or Ctrl-C aborts the multipart upload. \
Credentials come from the standard AWS chain (environment, profile). Prints one JSON object \
with the outcome on stdout.

Example (Cloudflare R2):
  pgimg publish s3 postgres-ubuntu-2204-x64-20260115.raw --bucket images --key images/ \\
    --endpoint https://<account>.r2.cloudflarestorage.com --region auto";

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
    pub(crate) fn conn(&self) -> Connection {
        Connection {
            endpoint: self.endpoint.clone(),
            path_style: self.path_style,
            profile: self.profile.clone(),
        }
    }

    pub(crate) fn progress(&self) -> Box<dyn Progress> {
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
    /// Make every AMI public (not with --kms-key-id).
    #[arg(long)]
    pub public: bool,
    /// AWS account ids given launch permission and the snapshots' create-volume permission.
    #[arg(long, value_delimiter = ',', value_name = "ACCOUNT,...")]
    pub share_with: Vec<String>,
    /// AWS Organizations or OU ARN given launch permission; repeatable.
    #[arg(long, value_name = "ARN")]
    pub share_with_org: Vec<String>,
    /// Encrypt the snapshot and every copy with this KMS key (id, ARN or alias/NAME; ebs-direct
    /// needs an ARN). KMS keys are regional: REGION=KEY sets one region's key; repeatable.
    #[arg(long, value_name = "[REGION=]KEY")]
    pub kms_key_id: Vec<String>,
    /// Deprecate every AMI at this RFC 3339 time (e.g. 2027-01-31T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub deprecate_at: Option<String>,
    /// Require IMDSv2 on instances of the AMI: v2.0.
    #[arg(long, value_name = "v2.0")]
    pub imds_support: Option<pgimg_publish::ami::ImdsSupport>,
    /// Firmware: legacy-bios, uefi or uefi-preferred.
    #[arg(long)]
    pub boot_mode: Option<pgimg_publish::ami::BootMode>,
    /// NitroTPM: v2.0 (needs --boot-mode uefi).
    #[arg(long, value_name = "v2.0")]
    pub tpm_support: Option<pgimg_publish::ami::TpmSupport>,
    /// How to make the snapshot: import (S3 + ImportSnapshot) or ebs-direct (EBS direct APIs).
    #[arg(long, default_value = "import")]
    pub via: pgimg_publish::ami::Via,
    /// ebs-direct: also skip blocks of zeros, not only holes. Corrupts files holding zero
    /// blocks if the snapshot is ever encrypted (a copy, EBS encryption by default).
    #[arg(long)]
    pub skip_zero_blocks: bool,
    /// ebs-direct: make the snapshot an increment of this one (ParentSnapshotId).
    #[arg(long, value_name = "SNAPSHOT")]
    pub parent_snapshot_id: Option<String>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[cfg(feature = "gce")]
#[derive(Args, Debug)]
pub struct GceArgs {
    /// The raw image file.
    pub image: PathBuf,
    /// Google Cloud project of the image.
    #[arg(long)]
    pub project: String,
    /// Cloud Storage bucket for the tarball (deleted afterwards, also on failure).
    #[arg(long)]
    pub bucket: String,
    /// Image name: lowercase letters, digits and -, starting with a letter (at most 63).
    #[arg(long)]
    pub name: String,
    /// Image family, e.g. postgres-ubuntu-2204-x64.
    #[arg(long)]
    pub family: Option<String>,
    /// Image description.
    #[arg(long)]
    pub description: Option<String>,
    /// CPU architecture of the image: X86_64 or ARM64.
    #[arg(long, value_parser = ["X86_64", "ARM64"])]
    pub architecture: Option<String>,
    /// Guest OS features, comma-separated (e.g. VIRTIO_SCSI_MULTIQUEUE,GVNIC,UEFI_COMPATIBLE).
    #[arg(long, value_delimiter = ',', value_name = "FEATURE,...",
          value_parser = pgimg_publish::gce::parse_guest_os_feature)]
    pub guest_os_features: Vec<String>,
    /// Labels, comma-separated KEY=VALUE (lowercase letters, digits, _ and -).
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE,...",
          value_parser = pgimg_publish::gce::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Let every authenticated Google account use the image (allAuthenticatedUsers).
    #[arg(long)]
    pub public: bool,
    /// Object name of the tarball in the bucket; default: <name>.tar.gz.
    #[arg(long)]
    pub object: Option<String>,
    /// Folder for the tarball while it is made; default: the image's folder.
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Give up waiting for the image to become READY after this many minutes.
    #[arg(long, default_value_t = 60)]
    pub timeout_minutes: u64,
    /// Seconds between polls of the image creation.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub poll_secs: u64,
    /// Attempts per request before giving up (with exponential backoff between them).
    #[arg(long, default_value_t = 5)]
    pub attempts: u32,
    /// Cloud Storage endpoint (an emulator); default: https://storage.googleapis.com.
    #[arg(long, value_name = "URL")]
    pub storage_endpoint: Option<String>,
    /// Compute Engine endpoint; default: https://compute.googleapis.com/compute/v1.
    #[arg(long, value_name = "URL")]
    pub compute_endpoint: Option<String>,
    /// No progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Append a Markdown summary to this file (default: $GITHUB_STEP_SUMMARY when set).
    #[arg(long, env = "GITHUB_STEP_SUMMARY")]
    pub step_summary: Option<PathBuf>,
}

pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A publication error in `doing`; one the user interrupted exits 130.
pub(crate) fn failed(
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

/// A publish target's error: its refusal of the options is a usage error;
/// anything else failed `doing` (interrupted when it was).
fn target_failed(e: impl TargetError, doing: String) -> anyhow::Error {
    if let Some(m) = e.refused_options() {
        return UsageError(m.to_string()).into();
    }
    let interrupted = e.interrupted();
    failed(e, interrupted, doing)
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
            let outcome = s3::publish(&opts, &a.image, a.conn.progress().as_ref())
                .map_err(|e| target_failed(e, format!("publishing {} to S3", a.image.display())))?;
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
            opts.share_with = a.share_with.clone();
            opts.share_with_org = a.share_with_org.clone();
            for k in &a.kms_key_id {
                match k.split_once('=') {
                    Some((region, key)) if !region.is_empty() && !key.is_empty() => {
                        opts.kms_keys.insert(region.to_string(), key.to_string());
                    }
                    Some(_) => {
                        return Err(
                            UsageError(format!("--kms-key-id {k:?} is not REGION=KEY")).into()
                        )
                    }
                    None => opts.kms_key_id = Some(k.clone()),
                }
            }
            opts.deprecate_at = a.deprecate_at.clone();
            opts.imds_support = a.imds_support;
            opts.boot_mode = a.boot_mode;
            opts.tpm_support = a.tpm_support;
            opts.skip_zero_blocks = a.skip_zero_blocks;
            opts.parent_snapshot = a.parent_snapshot_id.clone();
            opts.conn = a.conn.conn();
            opts.step_summary = a.conn.step_summary.clone();
            let outcome =
                ami::publish(&opts, &a.image, a.conn.progress().as_ref()).map_err(|e| {
                    target_failed(e, format!("publishing {} as an AMI", a.image.display()))
                })?;
            print_json(&outcome)
        }
        #[cfg(feature = "gce")]
        PublishCmd::Gce(a) => {
            use pgimg_publish::gce::{self, GceOptions};
            ensure_exists(&a.image)?;
            let mut opts = GceOptions::new(a.project.clone(), a.bucket.clone(), a.name.clone());
            opts.family = a.family.clone();
            opts.description = a.description.clone();
            opts.architecture = a.architecture.clone();
            opts.guest_os_features = a.guest_os_features.clone();
            opts.labels = a.labels.clone();
            opts.public = a.public;
            opts.object = a.object.clone();
            opts.work_dir = a.work_dir.clone();
            opts.timeout = std::time::Duration::from_secs(a.timeout_minutes.saturating_mul(60));
            opts.poll = std::time::Duration::from_secs(a.poll_secs);
            opts.attempts = a.attempts;
            opts.storage_endpoint = a.storage_endpoint.clone();
            opts.compute_endpoint = a.compute_endpoint.clone();
            opts.step_summary = a.step_summary.clone();
            let progress: Box<dyn Progress> = if a.quiet {
                Box::new(Quiet)
            } else {
                Box::new(Bar::new())
            };
            let outcome = gce::publish(&opts, &a.image, progress.as_ref()).map_err(|e| {
                target_failed(
                    e,
                    format!("publishing {} as a GCE image", a.image.display()),
                )
            })?;
            print_json(&outcome)
        }
    }
}
