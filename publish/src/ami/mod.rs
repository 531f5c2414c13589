//! Publish a raw image as AWS AMIs: make a snapshot (import or EBS direct), register it, copy and share.

mod ebs_direct;
mod import;
mod register;

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use aws_config::SdkConfig;
use serde::Serialize;

use crate::conn::{sdk_config, Connection};
use crate::progress::Progress;
use crate::retry::{sdk_message, Backoff};
use crate::rt::{self, Interrupt};
use crate::s3;
use crate::summary;

const GIB: u64 = 1 << 30;

/// CPU architecture of an image, as EC2 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Arch {
    /// 64-bit x86 (`x86_64`).
    #[serde(rename = "x86_64")]
    X86_64,
    /// 64-bit Arm (`arm64`).
    #[serde(rename = "arm64")]
    Arm64,
}

impl Arch {
    /// EC2's name: `x86_64` or `arm64`.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = String;
    /// Accepts EC2's names and the Debian / image-name spellings.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "x86_64" | "amd64" | "x64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            other => Err(format!("unknown architecture {other:?} (x86_64 or arm64)")),
        }
    }
}

/// How the snapshot behind the AMI is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Via {
    /// Upload to S3, then EC2 ImportSnapshot (format raw); 10-60 minutes.
    Import,
    /// Write the image's non-zero blocks straight into a snapshot with the EBS
    /// direct APIs; no bucket needed, and seconds to minutes.
    EbsDirect,
}

impl FromStr for Via {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "import" => Ok(Via::Import),
            "ebs-direct" => Ok(Via::EbsDirect),
            other => Err(format!(
                "unknown snapshot method {other:?} (import or ebs-direct)"
            )),
        }
    }
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Via::Import => "import",
            Via::EbsDirect => "ebs-direct",
        })
    }
}

/// What `pgimg publish ami` needs besides the image path.
#[derive(Debug, Clone)]
pub struct AmiOptions {
    /// Region the snapshot and the first AMI are made in (with `import`, the
    /// bucket's region too).
    pub region: String,
    /// AMI name. An AMI of this account with this name is reported, not duplicated.
    pub name: String,
    /// CPU architecture of the image.
    pub arch: Arch,
    /// How to make the snapshot: `import` (S3 upload + ImportSnapshot) or
    /// `ebs-direct` (EBS direct APIs, much faster, no bucket).
    pub via: Via,
    /// Bucket in `region` for `import`; the object is deleted afterwards,
    /// whether the import succeeded or not.
    pub bucket: Option<String>,
    /// Object key for `import`; default: the image's file name.
    pub key: Option<String>,
    /// Regions to copy the AMI to, with the same name and tags.
    pub copy_to: Vec<String>,
    /// Make every AMI public (launch permission for everyone).
    pub public: bool,
    /// AMI and snapshot description; default: the name.
    pub description: Option<String>,
    /// Value of the `Source` tag; default: the image's file name.
    pub source: Option<String>,
    /// IAM role ImportSnapshot uses to read the bucket; default: `vmimport`.
    pub import_role: Option<String>,
    /// Endpoint, addressing style and profile (an endpoint applies to S3, EC2 and EBS).
    pub conn: Connection,
    /// Seconds between checks of an import task, a snapshot or an AMI.
    pub poll_secs: u64,
    /// Give up on ImportSnapshot after this many seconds (the task is cancelled).
    pub import_timeout_secs: u64,
    /// Give up waiting for a snapshot or an AMI (copies included) to become
    /// available after this many seconds.
    pub available_timeout_secs: u64,
    /// Multipart part size in bytes for the `import` upload.
    pub part_size: u64,
    /// S3 parts uploaded at once by `import` (each holds a part in memory).
    pub concurrency: usize,
    /// EBS blocks (512 KiB each) written at once by `ebs-direct`.
    pub block_concurrency: usize,
    /// Attempts per request, with exponential backoff between them.
    pub attempts: u32,
    /// Append a Markdown summary to this file (GitHub Actions sets
    /// `GITHUB_STEP_SUMMARY`).
    pub step_summary: Option<PathBuf>,
}

/// Default number of EBS blocks in flight (512 KiB each).
pub const DEFAULT_BLOCK_CONCURRENCY: usize = 32;

impl AmiOptions {
    /// Options with defaults for everything but region, name and architecture.
    pub fn new(region: impl Into<String>, name: impl Into<String>, arch: Arch) -> Self {
        AmiOptions {
            region: region.into(),
            name: name.into(),
            arch,
            via: Via::Import,
            bucket: None,
            key: None,
            copy_to: Vec::new(),
            public: false,
            description: None,
            source: None,
            import_role: None,
            conn: Connection::default(),
            poll_secs: 15,
            import_timeout_secs: 90 * 60,
            available_timeout_secs: 60 * 60,
            part_size: s3::DEFAULT_PART_SIZE,
            concurrency: s3::DEFAULT_CONCURRENCY,
            block_concurrency: DEFAULT_BLOCK_CONCURRENCY,
            attempts: s3::DEFAULT_ATTEMPTS,
            step_summary: None,
        }
    }
}

/// One region's AMI.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RegionImage {
    /// The AMI id (`ami-...`).
    pub ami: String,
    /// Root volume snapshot, when EC2 reports one.
    pub snapshot: Option<String>,
    /// True when the AMI existed before this run and was reused.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub existing: bool,
}

/// Region → AMI; serializes as one JSON object `{"us-east-1": {"ami": ..., "snapshot": ...}}`.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
#[serde(transparent)]
pub struct AmiOutcome {
    /// Region name → its AMI.
    pub regions: BTreeMap<String, RegionImage>,
}

impl AmiOutcome {
    /// Markdown for the step summary: one row per region.
    pub fn markdown(&self, image: &Path, size: u64, name: &str) -> String {
        let mut md = summary::heading("AMIs from", image);
        md.push_str(&format!(
            "Name `{}`, image size {}.\n\n| region | AMI | snapshot | |\n|---|---|---|---|\n",
            summary::escape(name),
            summary::size_cell(size)
        ));
        for (region, img) in &self.regions {
            md.push_str(&format!(
                "| {} | `{}` | `{}` | {} |\n",
                summary::escape(region),
                summary::escape(&img.ami),
                summary::escape(img.snapshot.as_deref().unwrap_or("-")),
                if img.existing {
                    "already existed"
                } else {
                    "created"
                }
            ));
        }
        md.push('\n');
        md
    }
}

/// Everything that can go wrong publishing an AMI.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The options cannot work (no bucket for import, a bad name, ...).
    #[error("invalid option: {0}")]
    Invalid(String),
    /// Reading the image or writing the summary failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The upload for `import` failed (its multipart upload was aborted).
    #[error("uploading for import: {0}")]
    Upload(#[from] s3::Error),
    /// An AWS call failed: operation, what it was about, the service's message.
    #[error("{op} {target}: {message}")]
    Api {
        op: &'static str,
        target: String,
        message: String,
    },
    /// The import task ended in a state other than `completed`.
    #[error("import-snapshot task {task} ended with status {status:?}: {message}")]
    ImportFailed {
        task: String,
        status: String,
        message: String,
    },
    /// The snapshot went to state `error`.
    #[error("snapshot {snapshot} is in state {state:?}: {message}")]
    SnapshotFailed {
        snapshot: String,
        state: String,
        message: String,
    },
    /// An AMI is unusable (failed, deregistered, ...).
    #[error("AMI {ami} in {region} is in state {state:?}: {reason}")]
    ImageFailed {
        ami: String,
        region: String,
        state: String,
        reason: String,
    },
    /// A bounded wait ran out.
    #[error("gave up after {secs} s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    /// SIGINT or SIGTERM arrived; what had been started was cleaned up.
    #[error("interrupted by {signal}")]
    Interrupted { signal: &'static str },
    /// Everything worked but removing a temporary resource (the import object).
    #[error("{0}")]
    CleanupFailed(String),
    /// A step failed, and cleaning up after it failed too.
    #[error("{cause}; also, {cleanup}")]
    Cleanup { cause: Box<Error>, cleanup: String },
    /// A worker task panicked or was cancelled.
    #[error("{what} task failed: {message}")]
    Task { what: String, message: String },
}

impl Error {
    /// True when the run stopped because of SIGINT or SIGTERM (the CLI exits 130).
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Interrupted { .. } => true,
            Error::Upload(e) => e.is_interrupted(),
            Error::Cleanup { cause, .. } => cause.is_interrupted(),
            _ => false,
        }
    }

    fn api<E>(
        op: &'static str,
        target: impl Into<String>,
        err: &aws_smithy_runtime_api::client::result::SdkError<
            E,
            aws_smithy_runtime_api::client::orchestrator::HttpResponse,
        >,
    ) -> Self
    where
        E: std::error::Error + aws_smithy_types::error::metadata::ProvideErrorMetadata + 'static,
    {
        Error::Api {
            op,
            target: target.into(),
            message: sdk_message(err),
        }
    }

    /// `self`, with a failed cleanup step mentioned.
    fn with_cleanup(self, cleanup: Option<String>) -> Self {
        match cleanup {
            None => self,
            Some(cleanup) => Error::Cleanup {
                cause: Box::new(self),
                cleanup,
            },
        }
    }
}

/// Makes the AMI in `opts.region` from `image` (unless one with the name
/// exists), copies it to `opts.copy_to`, waits until every one is available,
/// shares them when asked, and returns region → AMI.
pub fn publish(
    opts: &AmiOptions,
    image: &Path,
    progress: &dyn Progress,
) -> Result<AmiOutcome, Error> {
    crate::progress::stop_on_error(progress, || publish_inner(opts, image, progress))
}

fn publish_inner(
    opts: &AmiOptions,
    image: &Path,
    progress: &dyn Progress,
) -> Result<AmiOutcome, Error> {
    validate(opts)?;
    let (file, size) = s3::open_image(image).map_err(|e| match e {
        s3::Error::Io { path, source } => Error::Io { path, source },
        other => Error::Invalid(other.to_string()),
    })?;
    let file = Arc::new(file);
    let outcome = rt::run(|interrupt| async move {
        // No select on the interrupt here: dropping the flow would skip the
        // cleanup its steps do when they see the signal (cancel the import
        // task, delete the object or the half-written snapshot).
        let ctx = Ctx::new(opts, image, file, size).await;
        flow(&ctx, progress, interrupt).await
    })
    .map_err(|source| Error::Io {
        path: image.to_path_buf(),
        source,
    })??;
    if let Some(path) = &opts.step_summary {
        summary::append(path, &outcome.markdown(image, size, &opts.name)).map_err(|source| {
            Error::Io {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(outcome)
}

fn validate(opts: &AmiOptions) -> Result<(), Error> {
    if opts.region.is_empty() || opts.name.is_empty() {
        return Err(Error::Invalid("region and name must not be empty".into()));
    }
    // EC2's rule for AMI names.
    let name_ok = (3..=128).contains(&opts.name.len())
        && opts
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if !name_ok {
        return Err(Error::Invalid(format!(
            "AMI name {:?} must be 3-128 characters of letters, digits and ()[] ./-'@_",
            opts.name
        )));
    }
    if opts.via == Via::Import && opts.bucket.as_deref().unwrap_or("").is_empty() {
        return Err(Error::Invalid("--via import needs a bucket".into()));
    }
    if opts.concurrency == 0
        || opts.block_concurrency == 0
        || opts.attempts == 0
        || opts.poll_secs == 0
    {
        return Err(Error::Invalid(
            "concurrency, attempts and poll interval must be at least 1".into(),
        ));
    }
    Ok(())
}

/// Everything the steps share.
struct Ctx<'a> {
    opts: &'a AmiOptions,
    image: &'a Path,
    file: Arc<File>,
    size: u64,
    home: SdkConfig,
    backoff: Backoff,
}

impl<'a> Ctx<'a> {
    async fn new(opts: &'a AmiOptions, image: &'a Path, file: Arc<File>, size: u64) -> Ctx<'a> {
        Ctx {
            opts,
            image,
            file,
            size,
            home: sdk_config(&opts.conn, Some(&opts.region), opts.attempts).await,
            backoff: Backoff::new(opts.attempts),
        }
    }

    async fn config_for(&self, region: &str) -> SdkConfig {
        if region == self.opts.region {
            self.home.clone()
        } else {
            sdk_config(&self.opts.conn, Some(region), self.opts.attempts).await
        }
    }

    fn file_name(&self) -> String {
        self.image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    fn description(&self) -> String {
        self.opts
            .description
            .clone()
            .unwrap_or_else(|| self.opts.name.clone())
    }

    /// `Name`, `Source`, `Architecture`: on every snapshot and AMI.
    fn tags(&self) -> Vec<(&'static str, String)> {
        vec![
            ("Name", self.opts.name.clone()),
            (
                "Source",
                self.opts.source.clone().unwrap_or_else(|| self.file_name()),
            ),
            ("Architecture", self.opts.arch.to_string()),
        ]
    }

    /// Root volume size: the image size rounded up to whole GiB.
    fn volume_gib(&self) -> i32 {
        self.size.div_ceil(GIB).max(1) as i32
    }

    fn poll(&self) -> Duration {
        Duration::from_secs(self.opts.poll_secs)
    }
}

async fn flow(
    ctx: &Ctx<'_>,
    progress: &dyn Progress,
    interrupt: Interrupt,
) -> Result<AmiOutcome, Error> {
    let opts = ctx.opts;
    let ec2 = aws_sdk_ec2::Client::new(&ctx.home);
    let mut outcome = AmiOutcome::default();

    let home = match register::find_by_name(&ec2, &opts.region, &opts.name).await? {
        Some(found) => {
            progress.note(&format!(
                "AMI {:?} already exists in {}: {}; not creating another",
                opts.name, opts.region, found.ami
            ));
            found
        }
        None => {
            let snapshot = match opts.via {
                Via::Import => import::snapshot(ctx, progress, interrupt.clone()).await?,
                Via::EbsDirect => ebs_direct::snapshot(ctx, progress, interrupt.clone()).await?,
            };
            let ami = match register::register(ctx, &ec2, &snapshot).await {
                Ok(ami) => ami,
                Err(e) => {
                    // A later run makes a new snapshot; this one would only cost money.
                    let cleanup = register::delete_snapshot(&ec2, &snapshot).await.err();
                    return Err(e.with_cleanup(cleanup));
                }
            };
            progress.note(&format!(
                "registered {ami} in {} from snapshot {snapshot}",
                opts.region
            ));
            RegionImage {
                ami,
                snapshot: Some(snapshot),
                existing: false,
            }
        }
    };
    // CopyImage wants an available source, so the home AMI comes first.
    let home_entry = [(opts.region.clone(), ec2.clone(), home)];
    let mut home = home_entry[0].2.clone();
    if let Some(snapshot) = register::wait_available(ctx, &home_entry, progress, interrupt.clone())
        .await?
        .remove(0)
    {
        home.snapshot.get_or_insert(snapshot);
    }

    let mut copies = Vec::new();
    for region in &opts.copy_to {
        if region == &opts.region || copies.iter().any(|(r, _, _)| r == region) {
            continue;
        }
        let client = aws_sdk_ec2::Client::new(&ctx.config_for(region).await);
        let img = match register::find_by_name(&client, region, &opts.name).await? {
            Some(found) => {
                progress.note(&format!(
                    "AMI {:?} already exists in {region}: {}; not copying",
                    opts.name, found.ami
                ));
                found
            }
            None => {
                let ami = register::copy(ctx, &client, region, &home.ami).await?;
                progress.note(&format!("copying {} to {region} as {ami}", home.ami));
                RegionImage {
                    ami,
                    snapshot: None,
                    existing: false,
                }
            }
        };
        copies.push((region.clone(), client, img));
    }
    let snapshots = register::wait_available(ctx, &copies, progress, interrupt).await?;
    for ((region, client, mut img), snapshot) in copies.into_iter().zip(snapshots) {
        if img.snapshot.is_none() {
            img.snapshot = snapshot;
        }
        // A copy's snapshot is new and untagged; the home one was tagged at registration.
        if !img.existing {
            if let Some(snap) = &img.snapshot {
                register::tag(ctx, &client, &[snap.as_str()]).await?;
            }
        }
        if opts.public {
            register::make_public(&client, &region, &img.ami).await?;
        }
        outcome.regions.insert(region, img);
    }
    if opts.public {
        register::make_public(&ec2, &opts.region, &home.ami).await?;
    }
    outcome.regions.insert(opts.region.clone(), home);
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arch_and_via_parse_the_cli_spellings() {
        for (s, want) in [
            ("x86_64", Arch::X86_64),
            ("amd64", Arch::X86_64),
            ("x64", Arch::X86_64),
            ("arm64", Arch::Arm64),
            ("aarch64", Arch::Arm64),
        ] {
            assert_eq!(s.parse::<Arch>().unwrap(), want, "{s}");
        }
        assert!("i386".parse::<Arch>().is_err());
        assert_eq!("import".parse::<Via>().unwrap(), Via::Import);
        assert_eq!("ebs-direct".parse::<Via>().unwrap(), Via::EbsDirect);
        assert!("ebs".parse::<Via>().is_err());
    }

    #[test]
    fn validate_checks_names_and_the_import_bucket() {
        let mut o = AmiOptions::new(
            "us-east-1",
            "postgres-ubuntu-2204-x64-20260115.1.0",
            Arch::X86_64,
        );
        o.via = Via::EbsDirect;
        assert!(validate(&o).is_ok());
        o.via = Via::Import;
        assert!(matches!(validate(&o), Err(Error::Invalid(m)) if m.contains("bucket")));
        o.bucket = Some("b".into());
        assert!(validate(&o).is_ok());
        for bad in ["ab", "name with a *", &"x".repeat(129)] {
            o.name = bad.to_string();
            assert!(matches!(validate(&o), Err(Error::Invalid(_))), "{bad}");
        }
    }

    #[test]
    fn outcome_serializes_as_one_object_keyed_by_region() {
        let mut o = AmiOutcome::default();
        o.regions.insert(
            "us-east-1".into(),
            RegionImage {
                ami: "ami-1".into(),
                snapshot: Some("snap-1".into()),
                existing: false,
            },
        );
        o.regions.insert(
            "eu-west-1".into(),
            RegionImage {
                ami: "ami-2".into(),
                snapshot: None,
                existing: true,
            },
        );
        assert_eq!(
            serde_json::to_string(&o).unwrap(),
            r#"{"eu-west-1":{"ami":"ami-2","snapshot":null,"existing":true},"us-east-1":{"ami":"ami-1","snapshot":"snap-1"}}"#
        );
        let md = o.markdown(Path::new("/o/img.raw"), 2 << 30, "img");
        assert!(
            md.contains("| us-east-1 | `ami-1` | `snap-1` | created |"),
            "{md}"
        );
        assert!(
            md.contains("| eu-west-1 | `ami-2` | `-` | already existed |"),
            "{md}"
        );
        assert!(md.contains("2.0 GiB (2147483648 bytes)"), "{md}");
    }
}
