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
use crate::error::{Common, CommonError};
use crate::progress::Progress;
use crate::retry::Backoff;
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
    /// Write the image's allocated blocks straight into a snapshot with the
    /// EBS direct APIs; no bucket needed, and seconds to minutes.
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

/// Firmware an AMI boots with (RegisterImage `BootMode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootMode {
    /// BIOS (`legacy-bios`).
    LegacyBios,
    /// UEFI only (`uefi`).
    Uefi,
    /// UEFI where the instance type supports it, else BIOS (`uefi-preferred`).
    UefiPreferred,
}

impl FromStr for BootMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "legacy-bios" => Ok(BootMode::LegacyBios),
            "uefi" => Ok(BootMode::Uefi),
            "uefi-preferred" => Ok(BootMode::UefiPreferred),
            other => Err(format!(
                "unknown boot mode {other:?} (legacy-bios, uefi or uefi-preferred)"
            )),
        }
    }
}

/// Instance metadata service an AMI requires (RegisterImage `ImdsSupport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImdsSupport {
    /// IMDSv2 only: instances launched from the AMI require session tokens.
    V2_0,
}

impl FromStr for ImdsSupport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v2.0" => Ok(ImdsSupport::V2_0),
            other => Err(format!("unknown IMDS support {other:?} (v2.0)")),
        }
    }
}

/// NitroTPM an AMI offers (RegisterImage `TpmSupport`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TpmSupport {
    /// TPM 2.0 (needs `--boot-mode uefi`).
    V2_0,
}

impl FromStr for TpmSupport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v2.0" => Ok(TpmSupport::V2_0),
            other => Err(format!("unknown TPM support {other:?} (v2.0)")),
        }
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
    /// AWS account ids (12 digits) given launch permission on every AMI and
    /// create-volume permission on its snapshot.
    pub share_with: Vec<String>,
    /// AWS Organizations (or organizational unit) ARNs given launch
    /// permission on every AMI.
    pub share_with_org: Vec<String>,
    /// Encrypt the snapshot and every regional copy with this KMS key (key id,
    /// ARN or `alias/...`; `ebs-direct` needs an ARN). [`AmiOptions::kms_keys`]
    /// overrides it per region: KMS keys are regional.
    pub kms_key_id: Option<String>,
    /// Region → KMS key, for the regions whose key differs from `kms_key_id`.
    pub kms_keys: BTreeMap<String, String>,
    /// RFC 3339 time at which every AMI is deprecated (EnableImageDeprecation).
    pub deprecate_at: Option<String>,
    /// Instance metadata service version required by instances of the AMI.
    pub imds_support: Option<ImdsSupport>,
    /// Firmware the AMI boots with.
    pub boot_mode: Option<BootMode>,
    /// NitroTPM version offered to instances of the AMI.
    pub tpm_support: Option<TpmSupport>,
    /// `ebs-direct`: also skip blocks whose content is all zeros, not only
    /// the holes of the file. Only safe for snapshots that stay unencrypted:
    /// a block missing from an encrypted snapshot does not read back as zeros.
    pub skip_zero_blocks: bool,
    /// `ebs-direct`: the new snapshot continues this one (ParentSnapshotId);
    /// blocks the parent has and the image leaves empty are overwritten with
    /// zeros, so the result is exactly the image.
    pub parent_snapshot: Option<String>,
    /// Hex SHA-256 of the image, the seed of the idempotency tokens; default:
    /// the `<image>.sha256` sidecar when there is one, else computed.
    pub image_sha256: Option<String>,
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
            share_with: Vec::new(),
            share_with_org: Vec::new(),
            kms_key_id: None,
            kms_keys: BTreeMap::new(),
            deprecate_at: None,
            imds_support: None,
            boot_mode: None,
            tpm_support: None,
            skip_zero_blocks: false,
            parent_snapshot: None,
            image_sha256: None,
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

impl AmiOptions {
    /// The KMS key for snapshots and copies in `region`, if encrypting.
    pub fn kms_key_for(&self, region: &str) -> Option<&str> {
        self.kms_keys
            .get(region)
            .or(self.kms_key_id.as_ref())
            .map(String::as_str)
    }

    /// Whether anything is encrypted with a chosen key.
    pub fn encrypts(&self) -> bool {
        self.kms_key_id.is_some() || !self.kms_keys.is_empty()
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
    /// Bad options, a file, a service call or a signal, as in every target.
    #[error(transparent)]
    Common(#[from] Common),
    /// The upload for `import` failed (its multipart upload was aborted).
    #[error("uploading for import: {0}")]
    Upload(#[from] s3::Error),
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
            Error::Common(Common::Interrupted { .. }) => true,
            Error::Upload(e) => e.is_interrupted(),
            Error::Cleanup { cause, .. } => cause.is_interrupted(),
            _ => false,
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

crate::error::target_error!(Error);

/// Makes the AMI in `opts.region` from `image` (unless one with the name
/// exists), copies it to `opts.copy_to`, waits until every one is available,
/// shares them when asked, and returns region → AMI.
pub fn publish(
    opts: &AmiOptions,
    image: &Path,
    progress: &dyn Progress,
) -> Result<AmiOutcome, Error> {
    rt::publish(image, opts.step_summary.as_deref(), progress, || {
        validate(opts)?;
        let (file, size) = s3::open_image(image).map_err(|e| match e {
            s3::Error::Common(io @ Common::Io { .. }) => Error::Common(io),
            other => Error::invalid(other.to_string()),
        })?;
        let file = Arc::new(file);
        let steps = move |interrupt| async move {
            // No select on the interrupt here: dropping the flow would skip the
            // cleanup its steps do when they see the signal (cancel the import
            // task, delete the object or the half-written snapshot).
            let ctx = Ctx::new(opts, image, file, size).await;
            flow(&ctx, progress, interrupt).await
        };
        let markdown = move |outcome: &AmiOutcome| outcome.markdown(image, size, &opts.name);
        Ok((steps, markdown))
    })
}

fn validate(opts: &AmiOptions) -> Result<(), Error> {
    if opts.region.is_empty() || opts.name.is_empty() {
        return Err(Error::invalid("region and name must not be empty".into()));
    }
    // EC2's rule for AMI names.
    let name_ok = (3..=128).contains(&opts.name.len())
        && opts
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "()[] ./-'@_".contains(c));
    if !name_ok {
        return Err(Error::invalid(format!(
            "AMI name {:?} must be 3-128 characters of letters, digits and ()[] ./-'@_",
            opts.name
        )));
    }
    if opts.via == Via::Import && opts.bucket.as_deref().unwrap_or("").is_empty() {
        return Err(Error::invalid("--via import needs a bucket".into()));
    }
    if let Some(at) = &opts.deprecate_at {
        aws_smithy_types::DateTime::from_str(at, aws_smithy_types::date_time::Format::DateTime)
            .map_err(|e| {
                Error::invalid(format!(
                    "--deprecate-at {at:?} is not an RFC 3339 time like 2027-01-31T00:00:00Z: {e}"
                ))
            })?;
    }
    if let Some(bad) = opts
        .share_with
        .iter()
        .find(|a| a.len() != 12 || !a.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(Error::invalid(format!(
            "--share-with {bad:?} is not a 12-digit AWS account id"
        )));
    }
    if let Some(bad) = opts
        .share_with_org
        .iter()
        .find(|a| !a.starts_with("arn:aws") || !a.contains(":organization"))
    {
        return Err(Error::invalid(format!(
            "--share-with-org {bad:?} is not an organization or OU ARN \
             (arn:aws:organizations::ACCOUNT:organization/o-... or .../ou/o-.../ou-...)"
        )));
    }
    if opts.public && opts.encrypts() {
        return Err(Error::invalid(
            "an AMI with KMS-encrypted snapshots cannot be public; \
             drop --public or --kms-key-id (share with --share-with instead)"
                .into(),
        ));
    }
    if opts.tpm_support.is_some() && opts.boot_mode != Some(BootMode::Uefi) {
        return Err(Error::invalid(
            "--tpm-support v2.0 needs --boot-mode uefi".into(),
        ));
    }
    if opts.via == Via::Import && (opts.skip_zero_blocks || opts.parent_snapshot.is_some()) {
        return Err(Error::invalid(
            "--skip-zero-blocks and --parent-snapshot-id apply to --via ebs-direct only".into(),
        ));
    }
    if opts.skip_zero_blocks && opts.encrypts() {
        return Err(Error::invalid(
            "--skip-zero-blocks with --kms-key-id would corrupt the image: a block missing \
             from an encrypted snapshot does not read back as zeros"
                .into(),
        ));
    }
    if opts.concurrency == 0
        || opts.block_concurrency == 0
        || opts.attempts == 0
        || opts.poll_secs == 0
    {
        return Err(Error::invalid(
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
    sha256: tokio::sync::OnceCell<String>,
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
            sha256: tokio::sync::OnceCell::new(),
        }
    }

    /// The image's hex SHA-256: given, from the `<image>.sha256` sidecar the
    /// build wrote, or computed (once, and only when a token is needed).
    async fn image_sha256(&self, progress: &dyn Progress) -> Result<&str, Error> {
        self.sha256
            .get_or_try_init(|| async {
                if let Some(given) = &self.opts.image_sha256 {
                    return Ok(given.to_ascii_lowercase());
                }
                let mut sidecar = self.image.as_os_str().to_owned();
                sidecar.push(".sha256");
                if let Some(sha) = std::fs::read_to_string(&sidecar)
                    .ok()
                    .and_then(|t| crate::hash::parse_sidecar(&t))
                {
                    return Ok(sha);
                }
                // The runtime is multi-threaded: hashing here blocks one worker only.
                tokio::task::block_in_place(|| {
                    crate::hash::sha256_file(&self.file, self.size, progress)
                })
                .map_err(|source| Error::io(self.image, source))
            })
            .await
            .map(String::as_str)
    }

    /// Idempotency token for `op` in `region`: the same image, name and
    /// region always give the same token, so a request retried (by the SDK
    /// or by a re-run) returns what the first one started instead of a
    /// duplicate. 64 hex characters, within every EC2/EBS token limit.
    async fn token(
        &self,
        op: &str,
        region: &str,
        progress: &dyn Progress,
    ) -> Result<String, Error> {
        let sha = self.image_sha256(progress).await?;
        Ok(client_token(op, sha, &self.opts.name, region))
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

    fn available_timeout(&self) -> Duration {
        Duration::from_secs(self.opts.available_timeout_secs)
    }
}

/// `hex(sha256("pgimg/<op>/<image sha256>/<name>/<region>"))`.
pub(crate) fn client_token(op: &str, image_sha256: &str, name: &str, region: &str) -> String {
    crate::hash::hex(&crate::hash::digest(
        format!("pgimg/{op}/{image_sha256}/{name}/{region}").as_bytes(),
    ))
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

    // Copies start together: CopyImage returns at once and AWS copies the
    // regions in parallel, so the wait below covers them all.
    let mut regions: Vec<&String> = Vec::new();
    for region in &opts.copy_to {
        if region != &opts.region && !regions.contains(&region) {
            regions.push(region);
        }
    }
    // Every region is tried even when one fails, so a re-run finds the
    // others under way instead of starting them late.
    let copies = rt::join_all(
        regions
            .into_iter()
            .map(|region| start_copy(ctx, region, &home.ami, progress))
            .collect(),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<_>, Error>>()?;
    let snapshots = register::wait_available(ctx, &copies, progress, interrupt).await?;
    let mut all = Vec::new();
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
        all.push((region, client, img));
    }
    all.push((opts.region.clone(), ec2, home));
    rt::join_all(
        all.iter()
            .map(|(region, client, img)| register::finish(ctx, client, region, img))
            .collect(),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<()>, Error>>()?;
    for (region, _, img) in all {
        outcome.regions.insert(region, img);
    }
    Ok(outcome)
}

/// The AMI named `opts.name` in `region`: found, or copied from `source_ami`
/// (not yet available).
async fn start_copy(
    ctx: &Ctx<'_>,
    region: &str,
    source_ami: &str,
    progress: &dyn Progress,
) -> Result<(String, aws_sdk_ec2::Client, RegionImage), Error> {
    let client = aws_sdk_ec2::Client::new(&ctx.config_for(region).await);
    let img = match register::find_by_name(&client, region, &ctx.opts.name).await? {
        Some(found) => {
            progress.note(&format!(
                "AMI {:?} already exists in {region}: {}; not copying",
                ctx.opts.name, found.ami
            ));
            found
        }
        None => {
            let token = ctx.token("CopyImage", region, progress).await?;
            let ami = register::copy(ctx, &client, region, source_ami, &token).await?;
            progress.note(&format!("copying {source_ami} to {region} as {ami}"));
            RegionImage {
                ami,
                snapshot: None,
                existing: false,
            }
        }
    };
    Ok((region.to_string(), client, img))
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
        assert!(
            matches!(validate(&o), Err(Error::Common(Common::Invalid(m))) if m.contains("bucket"))
        );
        o.bucket = Some("b".into());
        assert!(validate(&o).is_ok());
        for bad in ["ab", "name with a *", &"x".repeat(129)] {
            o.name = bad.to_string();
            assert!(
                matches!(validate(&o), Err(Error::Common(Common::Invalid(_)))),
                "{bad}"
            );
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
        assert!(md.contains("2.00 GiB (2147483648 bytes)"), "{md}");
    }
}
