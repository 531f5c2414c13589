//! Upload an image to an S3-compatible store (AWS S3, MinIO, Cloudflare R2) with its `.sha256` sidecar.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_s3::operation::get_object::GetObjectError;
use aws_sdk_s3::operation::head_object::HeadObjectError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use aws_smithy_types::body::SdkBody;
use serde::Serialize;
use tokio::task::JoinSet;

use crate::conn::{data_plane, sdk_config, Connection};
use crate::error::{Common, CommonError};
use crate::hash;
use crate::progress::{Progress, Unit};
use crate::retry::{retry, sdk_message, sdk_retryable, Backoff};
use crate::rt::{self, Interrupt};
use crate::summary::{escape, heading, size_cell};

const MIB: u64 = 1 << 20;
/// Default multipart part size (the AWS CLI's; measured faster than 16 MiB
/// parts, see BENCHMARKS.md).
pub const DEFAULT_PART_SIZE: u64 = 8 * MIB;
/// Default number of parts in flight (the AWS CLI's).
pub const DEFAULT_CONCURRENCY: usize = 10;
/// Default attempts per request.
pub const DEFAULT_ATTEMPTS: u32 = 5;
/// S3's limits: parts other than the last are 5 MiB to 5 GiB, at most 10,000 of them.
const MIN_PART_SIZE: u64 = 5 * MIB;
const MAX_PART_SIZE: u64 = 5 << 30;
const MAX_PARTS: u64 = 10_000;
/// User metadata key (`x-amz-meta-sha256`) holding the whole object's hex SHA-256.
pub const SHA256_METADATA: &str = "sha256";

/// What `pgimg publish s3` needs besides the image path.
#[derive(Debug, Clone)]
pub struct S3Options {
    /// Bucket to upload to.
    pub bucket: String,
    /// Object key; default: the image's file name. A key ending in `/` is a
    /// prefix the file name is appended to.
    pub key: Option<String>,
    /// Region to sign requests for (Cloudflare R2: `auto`); default: the AWS
    /// chain's (`AWS_REGION`, profile), else us-east-1.
    pub region: Option<String>,
    /// Endpoint, addressing style and profile.
    pub conn: Connection,
    /// Multipart part size in bytes (5 MiB to 5 GiB); raised automatically so
    /// the image fits in 10,000 parts.
    pub part_size: u64,
    /// Parts uploaded at once.
    pub concurrency: usize,
    /// Attempts per request, with exponential backoff between them.
    pub attempts: u32,
    /// Append a Markdown summary to this file (GitHub Actions sets
    /// `GITHUB_STEP_SUMMARY`).
    pub step_summary: Option<PathBuf>,
}

impl S3Options {
    /// Options with the defaults for everything but the bucket.
    pub fn new(bucket: impl Into<String>) -> Self {
        S3Options {
            bucket: bucket.into(),
            key: None,
            region: None,
            conn: Connection::default(),
            part_size: DEFAULT_PART_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            attempts: DEFAULT_ATTEMPTS,
            step_summary: None,
        }
    }
}

/// The result of [`publish`], printed as JSON by the CLI.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct S3Outcome {
    /// `s3://bucket/key`.
    pub url: String,
    /// Bucket written to.
    pub bucket: String,
    /// Object key of the image.
    pub key: String,
    /// Key of the `sha256sum`-format sidecar object.
    pub sidecar_key: String,
    /// Image size in bytes.
    pub size: u64,
    /// Hex SHA-256 of the image (also in `x-amz-meta-sha256` and the sidecar).
    pub sha256: String,
    /// False when the object was already there with the same SHA-256.
    pub uploaded: bool,
    /// False when the sidecar was already there with the same content.
    pub sidecar_uploaded: bool,
    /// Parts of the multipart upload (1 for a single PUT, 0 when nothing was uploaded).
    pub parts: usize,
    /// Wall-clock seconds spent uploading the image.
    pub seconds: f64,
}

/// Everything that can go wrong publishing to S3.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options, a file, a service call or a signal, as in every target.
    #[error(transparent)]
    Common(#[from] Common),
    /// The store's composite checksum disagrees with the parts sent.
    #[error(
        "{target}: the store's checksum {got} differs from the parts' {want}; the object was deleted"
    )]
    ChecksumMismatch {
        target: String,
        want: String,
        got: String,
    },
    /// The multipart upload failed for `cause` and was aborted: nothing is left behind.
    #[error("{cause}; multipart upload {upload_id} of {target} aborted")]
    Aborted {
        target: String,
        upload_id: String,
        cause: Box<Error>,
    },
    /// The upload failed and so did aborting it: the message says how to remove it.
    #[error("{cause}; aborting multipart upload {upload_id} failed too ({abort_error}); remove it with `{command}`")]
    AbortFailed {
        upload_id: String,
        cause: Box<Error>,
        abort_error: String,
        /// The AWS CLI command that removes the upload by hand.
        command: String,
    },
    /// A worker task panicked or was cancelled.
    #[error("{what} task failed: {message}")]
    Task { what: String, message: String },
}

impl Error {
    /// True when the run stopped because of SIGINT or SIGTERM (the CLI exits 130).
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Common(Common::Interrupted { .. }) => true,
            Error::Aborted { cause, .. } | Error::AbortFailed { cause, .. } => {
                cause.is_interrupted()
            }
            _ => false,
        }
    }
}

crate::error::target_error!(Error);

/// Uploads `image` to `s3://bucket/key` and writes `<key>.sha256` beside it.
///
/// An object already there with the same size and SHA-256 (from its
/// `x-amz-meta-sha256`, or from an existing sidecar) is not uploaded again.
/// Any failure or SIGINT/SIGTERM during a multipart upload aborts it, so no
/// incomplete upload is left behind.
pub fn publish(
    opts: &S3Options,
    image: &Path,
    progress: &dyn Progress,
) -> Result<S3Outcome, Error> {
    rt::publish(image, opts.step_summary.as_deref(), progress, || {
        validate(opts)?;
        let key = object_key(opts.key.as_deref(), image)?;
        let (file, size) = open_image(image)?;
        let sha256 =
            hash::sha256_file(&file, size, progress).map_err(|source| Error::io(image, source))?;
        let file = Arc::new(file);
        let flow = move |interrupt| async move {
            let config = sdk_config(&opts.conn, opts.region.as_deref(), opts.attempts).await;
            let client = client(&config, opts.conn.path_style);
            let job = Upload {
                client,
                bucket: opts.bucket.clone(),
                key: key.clone(),
                path: image.to_path_buf(),
                file,
                size,
                sha256: Some(sha256.clone()),
                part_size: opts.part_size,
                concurrency: opts.concurrency,
                backoff: Backoff::new(opts.attempts),
            };
            publish_with(&job, progress, interrupt).await
        };
        Ok((flow, |outcome: &S3Outcome| outcome.markdown(image)))
    })
}

async fn publish_with(
    job: &Upload,
    progress: &dyn Progress,
    interrupt: Interrupt,
) -> Result<S3Outcome, Error> {
    let sha256 = job.sha256.clone().unwrap_or_default();
    let sidecar_key = format!("{}.sha256", job.key);
    let line = hash::sidecar_line(&sha256, file_name_of_key(&job.key));
    let mut outcome = S3Outcome {
        url: job.target(),
        bucket: job.bucket.clone(),
        key: job.key.clone(),
        sidecar_key: sidecar_key.clone(),
        size: job.size,
        sha256: sha256.clone(),
        uploaded: false,
        sidecar_uploaded: false,
        parts: 0,
        seconds: 0.0,
    };
    match existing(job, &sidecar_key).await? {
        Some(how) => {
            progress.note(&format!(
                "{} is already there with sha256 {} ({how}); nothing uploaded",
                job.target(),
                sha256
            ));
            outcome.sidecar_uploaded = ensure_sidecar(job, &sidecar_key, &line).await?;
        }
        None => {
            let stats = job.run(progress, interrupt).await?;
            outcome.uploaded = true;
            outcome.parts = stats.parts;
            outcome.seconds = stats.seconds;
            put_sidecar(job, &sidecar_key, &line).await?;
            outcome.sidecar_uploaded = true;
        }
    }
    Ok(outcome)
}

fn validate(opts: &S3Options) -> Result<(), Error> {
    if opts.bucket.is_empty() {
        return Err(Error::invalid("the bucket name is empty".into()));
    }
    if !(MIN_PART_SIZE..=MAX_PART_SIZE).contains(&opts.part_size) {
        return Err(Error::invalid(format!(
            "part size {} is outside S3's 5 MiB to 5 GiB",
            opts.part_size
        )));
    }
    if opts.concurrency == 0 || opts.attempts == 0 {
        return Err(Error::invalid(
            "concurrency and attempts must be at least 1".into(),
        ));
    }
    Ok(())
}

pub(crate) fn open_image(image: &Path) -> Result<(File, u64), Error> {
    let io = |source| Error::io(image, source);
    let file = File::open(image).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(Error::invalid(format!(
            "{} is not a regular file",
            image.display()
        )));
    }
    Ok((file, meta.len()))
}

/// The object key: `key` as given, `key` + the file name when `key` ends in
/// `/`, the file name when there is no `key`.
pub fn object_key(key: Option<&str>, image: &Path) -> Result<String, Error> {
    let name = image
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::invalid(format!("{} has no UTF-8 file name", image.display())))?;
    let key = match key {
        None | Some("") => name.to_string(),
        Some(prefix) if prefix.ends_with('/') => format!("{prefix}{name}"),
        Some(key) => key.to_string(),
    };
    Ok(key.trim_start_matches('/').to_string())
}

fn file_name_of_key(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

pub(crate) fn client(config: &aws_config::SdkConfig, path_style: bool) -> Client {
    Client::from_conf(
        aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .build(),
    )
}

/// Whether the object is there with the same size and SHA-256, and how we know.
async fn existing(job: &Upload, sidecar_key: &str) -> Result<Option<&'static str>, Error> {
    let Some(sha256) = job.sha256.as_deref() else {
        return Ok(None);
    };
    let head = match job
        .client
        .head_object()
        .bucket(&job.bucket)
        .key(&job.key)
        .send()
        .await
    {
        Ok(head) => head,
        Err(e) if matches!(e.as_service_error(), Some(HeadObjectError::NotFound(_))) => {
            return Ok(None)
        }
        Err(e) => return Err(Error::api("HeadObject", job.target(), &e)),
    };
    if head.content_length() != Some(job.size as i64) {
        return Ok(None);
    }
    if let Some(sha) = head.metadata().and_then(|m| m.get(SHA256_METADATA)) {
        return Ok(sha
            .eq_ignore_ascii_case(sha256)
            .then_some("from its metadata"));
    }
    // Objects uploaded by other tools (the old workflow used `mc cp`) have no
    // metadata, only the sidecar.
    let sidecar = read_small(job, sidecar_key).await?;
    let same = sidecar.as_deref().and_then(hash::parse_sidecar).as_deref() == Some(sha256);
    Ok(same.then_some("from its .sha256 sidecar"))
}

async fn read_small(job: &Upload, key: &str) -> Result<Option<String>, Error> {
    let target = format!("s3://{}/{key}", job.bucket);
    match job
        .client
        .get_object()
        .bucket(&job.bucket)
        .key(key)
        .send()
        .await
    {
        Ok(obj) => {
            let bytes = obj
                .body
                .collect()
                .await
                .map_err(|e| Error::api_message("GetObject", target.clone(), e.to_string()))?;
            Ok(Some(
                String::from_utf8_lossy(&bytes.into_bytes()).into_owned(),
            ))
        }
        Err(e) if matches!(e.as_service_error(), Some(GetObjectError::NoSuchKey(_))) => Ok(None),
        Err(e) => Err(Error::api("GetObject", &target, &e)),
    }
}

/// Writes the sidecar unless it already says `line`; true when written.
async fn ensure_sidecar(job: &Upload, sidecar_key: &str, line: &str) -> Result<bool, Error> {
    if read_small(job, sidecar_key).await?.as_deref() == Some(line) {
        return Ok(false);
    }
    put_sidecar(job, sidecar_key, line).await?;
    Ok(true)
}

async fn put_sidecar(job: &Upload, sidecar_key: &str, line: &str) -> Result<(), Error> {
    job.client
        .put_object()
        .bucket(&job.bucket)
        .key(sidecar_key)
        .content_type("text/plain; charset=utf-8")
        .checksum_sha256(hash::base64_sha256(line.as_bytes()))
        .body(ByteStream::from(line.as_bytes().to_vec()))
        .send()
        .await
        .map_err(|e| {
            Error::api(
                "PutObject",
                format!("s3://{}/{sidecar_key}", job.bucket),
                &e,
            )
        })?;
    Ok(())
}

/// One file going to one object; also used by the AMI import flow.
pub(crate) struct Upload {
    pub client: Client,
    pub bucket: String,
    pub key: String,
    pub path: PathBuf,
    pub file: Arc<File>,
    pub size: u64,
    /// Stored as `x-amz-meta-sha256` when given.
    pub sha256: Option<String>,
    pub part_size: u64,
    pub concurrency: usize,
    pub backoff: Backoff,
}

pub(crate) struct UploadStats {
    pub parts: usize,
    pub seconds: f64,
}

impl Upload {
    pub(crate) fn target(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.key)
    }

    /// Deletes the object, best effort: the error is text for a message.
    pub(crate) async fn delete(&self) -> Result<(), String> {
        let deleted = self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await;
        crate::retry::best_effort(deleted, format_args!("deleting {}", self.target()))
    }

    fn metadata(&self) -> Option<std::collections::HashMap<String, String>> {
        self.sha256
            .as_ref()
            .map(|sha| [(SHA256_METADATA.to_string(), sha.clone())].into())
    }

    /// Part size actually used: the requested one, raised to fit 10,000 parts.
    fn effective_part_size(&self) -> u64 {
        let min_for_limit = self.size.div_ceil(MAX_PARTS).next_multiple_of(MIB);
        self.part_size.max(min_for_limit)
    }

    /// Uploads the file: one PUT when it fits in a part, else a multipart
    /// upload that is aborted on any error or on `interrupt`.
    pub(crate) async fn run(
        &self,
        progress: &dyn Progress,
        mut interrupt: Interrupt,
    ) -> Result<UploadStats, Error> {
        let started = Instant::now();
        let part_size = self.effective_part_size();
        progress.start("uploading", self.size, Unit::Bytes);
        let parts = if self.size <= part_size {
            tokio::select! {
                r = self.put_whole() => r?,
                signal = interrupt.wait() => return Err(Error::interrupted(signal)),
            };
            progress.advance(self.size);
            1
        } else {
            self.multipart(part_size, progress, interrupt).await?
        };
        progress.finish();
        Ok(UploadStats {
            parts,
            seconds: started.elapsed().as_secs_f64(),
        })
    }

    async fn put_whole(&self) -> Result<(), Error> {
        let data = read_part(&self.file, &self.path, 0, self.size).await?;
        let checksum = hash::base64_sha256(&data);
        retry(self.backoff, sdk_retryable, |_| {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type("application/octet-stream")
                .set_metadata(self.metadata())
                .checksum_sha256(&checksum)
                .body(ByteStream::new(SdkBody::from(data.clone())))
                .customize()
                .config_override(data_plane_s3(self.size))
                .send()
        })
        .await
        .map_err(|e| Error::api("PutObject", self.target(), &e))?;
        Ok(())
    }

    async fn multipart(
        &self,
        part_size: u64,
        progress: &dyn Progress,
        mut interrupt: Interrupt,
    ) -> Result<usize, Error> {
        let created = tokio::select! {
            r = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .content_type("application/octet-stream")
                .set_metadata(self.metadata())
                .checksum_algorithm(ChecksumAlgorithm::Sha256)
                .send() => r.map_err(|e| Error::api("CreateMultipartUpload", self.target(), &e))?,
            signal = interrupt.wait() => return Err(Error::interrupted(signal)),
        };
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        if upload_id.is_empty() {
            return Err(Error::api_message(
                "CreateMultipartUpload",
                self.target(),
                "the response has no upload id".into(),
            ));
        }
        let work = async {
            let parts = self.upload_parts(&upload_id, part_size, progress).await?;
            self.complete(&upload_id, parts).await
        };
        let result = tokio::select! {
            r = work => r,
            signal = interrupt.wait() => Err(Error::interrupted(signal)),
        };
        match result {
            Ok(parts) => Ok(parts),
            Err(cause) => {
                progress.note(&format!("{cause}; aborting multipart upload {upload_id}"));
                Err(match self.abort(&upload_id).await {
                    Ok(()) => Error::Aborted {
                        target: self.target(),
                        upload_id,
                        cause: Box::new(cause),
                    },
                    Err(abort_error) => Error::AbortFailed {
                        command: format!(
                            "aws s3api abort-multipart-upload --bucket {} --key {} --upload-id {upload_id}",
                            self.bucket, self.key
                        ),
                        upload_id,
                        cause: Box::new(cause),
                        abort_error,
                    },
                })
            }
        }
    }

    /// Parts in parallel, at most `concurrency` in flight. Returning early
    /// drops the `JoinSet`, which cancels the parts still running.
    async fn upload_parts(
        &self,
        upload_id: &str,
        part_size: u64,
        progress: &dyn Progress,
    ) -> Result<Vec<CompletedPart>, Error> {
        let count = self.size.div_ceil(part_size);
        let mut running = JoinSet::new();
        let mut done = Vec::with_capacity(count as usize);
        let mut next = 0u64;
        while next < count || !running.is_empty() {
            while next < count && running.len() < self.concurrency {
                let offset = next * part_size;
                let len = part_size.min(self.size - offset);
                let part = PartJob {
                    client: self.client.clone(),
                    bucket: self.bucket.clone(),
                    key: self.key.clone(),
                    upload_id: upload_id.to_string(),
                    path: self.path.clone(),
                    file: self.file.clone(),
                    number: (next + 1) as i32,
                    offset,
                    len,
                    backoff: self.backoff,
                    target: self.target(),
                };
                running.spawn(part.run());
                next += 1;
            }
            match running.join_next().await {
                Some(Ok(Ok((part, len)))) => {
                    progress.advance(len);
                    done.push(part);
                }
                Some(Ok(Err(e))) => return Err(e),
                Some(Err(e)) => {
                    return Err(Error::Task {
                        what: format!("part upload of {}", self.target()),
                        message: e.to_string(),
                    })
                }
                None => break,
            }
        }
        done.sort_by_key(|p| p.part_number());
        Ok(done)
    }

    async fn complete(&self, upload_id: &str, parts: Vec<CompletedPart>) -> Result<usize, Error> {
        let count = parts.len();
        let composite = composite_checksum(&parts);
        let done = retry(self.backoff, sdk_retryable, |_| {
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts.clone()))
                        .build(),
                )
                .send()
        })
        .await
        .map_err(|e| Error::api("CompleteMultipartUpload", self.target(), &e))?;
        // Stores that keep checksums report the composite one (SHA-256 of the
        // parts' digests, "-N"); it proves every part arrived as hashed here.
        if let (Some(got), Some(want)) = (done.checksum_sha256(), composite) {
            if got != want {
                // The mismatch is the error to report, not a failed delete.
                let _ = self.delete().await;
                return Err(Error::ChecksumMismatch {
                    target: self.target(),
                    want,
                    got: got.to_string(),
                });
            }
        }
        Ok(count)
    }

    /// Aborts the upload, then checks it is gone: a part whose request was in
    /// flight can still land after an abort and revive it (S3's
    /// AbortMultipartUpload documentation says to abort again).
    async fn abort(&self, upload_id: &str) -> Result<(), String> {
        for _ in 0..3 {
            let aborted = retry(self.backoff, sdk_retryable, |_| {
                self.client
                    .abort_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(upload_id)
                    .send()
            })
            .await;
            if let Err(e) = aborted {
                if !matches!(
                    e.as_service_error(),
                    Some(aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError::NoSuchUpload(_))
                ) {
                    return Err(sdk_message(&e));
                }
            }
            let listed = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&self.key)
                .send()
                .await
                .map_err(|e| sdk_message(&e))?;
            if !listed
                .uploads()
                .iter()
                .any(|u| u.upload_id() == Some(upload_id))
            {
                return Ok(());
            }
        }
        Err(format!(
            "upload {upload_id} is still listed after three aborts"
        ))
    }
}

fn data_plane_s3(bytes: u64) -> aws_sdk_s3::config::Builder {
    let (retries, timeouts) = data_plane(bytes);
    aws_sdk_s3::config::Builder::default()
        .retry_config(retries)
        .timeout_config(timeouts)
}

/// S3's composite checksum of a multipart upload: base64 SHA-256 of the
/// concatenated raw part digests, then `-<parts>`.
fn composite_checksum(parts: &[CompletedPart]) -> Option<String> {
    let mut raw = Vec::with_capacity(parts.len() * 32);
    for p in parts {
        raw.extend(aws_smithy_types::base64::decode(p.checksum_sha256()?).ok()?);
    }
    Some(format!(
        "{}-{}",
        aws_smithy_types::base64::encode(hash::digest(&raw)),
        parts.len()
    ))
}

struct PartJob {
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    path: PathBuf,
    file: Arc<File>,
    number: i32,
    offset: u64,
    len: u64,
    backoff: Backoff,
    target: String,
}

impl PartJob {
    async fn run(self) -> Result<(CompletedPart, u64), Error> {
        let data = read_part(&self.file, &self.path, self.offset, self.len).await?;
        let checksum = {
            let data = data.clone();
            tokio::task::spawn_blocking(move || hash::base64_sha256(&data))
                .await
                .map_err(|e| Error::Task {
                    what: "hashing a part".into(),
                    message: e.to_string(),
                })?
        };
        let uploaded = retry(self.backoff, sdk_retryable, |_| {
            self.client
                .upload_part()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(&self.upload_id)
                .part_number(self.number)
                .content_length(self.len as i64)
                .checksum_sha256(&checksum)
                .body(ByteStream::new(SdkBody::from(data.clone())))
                .customize()
                .config_override(data_plane_s3(self.len))
                .send()
        })
        .await
        .map_err(|e| {
            Error::api(
                "UploadPart",
                format!("{} part {}", self.target, self.number),
                &e,
            )
        })?;
        let part = CompletedPart::builder()
            .part_number(self.number)
            .set_e_tag(uploaded.e_tag().map(str::to_string))
            .checksum_sha256(checksum)
            .build();
        Ok((part, self.len))
    }
}

/// Reads `len` bytes at `offset` on the blocking pool.
pub(crate) async fn read_part(
    file: &Arc<File>,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<bytes::Bytes, Error> {
    let file = file.clone();
    let read = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; len as usize];
        hash::read_exact_at(&file, &mut buf, offset).map(|()| buf)
    })
    .await
    .map_err(|e| Error::Task {
        what: format!("reading {}", path.display()),
        message: e.to_string(),
    })?;
    read.map(bytes::Bytes::from)
        .map_err(|source| Error::io(path, source))
}

impl S3Outcome {
    /// The step summary: object, size, sha256, whether it was uploaded.
    pub fn markdown(&self, image: &Path) -> String {
        let o = self;
        let mut md = heading("Published", image);
        md.push_str("| | |\n|---|---|\n");
        md.push_str(&format!("| object | `{}` |\n", escape(&o.url)));
        md.push_str(&format!(
            "| sidecar | `s3://{}/{}` |\n",
            escape(&o.bucket),
            escape(&o.sidecar_key)
        ));
        md.push_str(&format!("| size | {} |\n", size_cell(o.size)));
        md.push_str(&format!("| sha256 | `{}` |\n", o.sha256));
        let upload = if o.uploaded {
            let rate = if o.seconds > 0.0 {
                format!(", {:.1} MiB/s", o.size as f64 / 1_048_576.0 / o.seconds)
            } else {
                String::new()
            };
            format!("{} part(s) in {:.1} s{rate}", o.parts, o.seconds)
        } else {
            "already there with the same sha256; nothing uploaded".to_string()
        };
        md.push_str(&format!("| upload | {upload} |\n\n"));
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(uploaded: bool) -> S3Outcome {
        S3Outcome {
            url: "s3://images/a|b.raw".into(),
            bucket: "images".into(),
            key: "a|b.raw".into(),
            sidecar_key: "a|b.raw.sha256".into(),
            size: 3 << 30,
            sha256: "ab".repeat(32),
            uploaded,
            sidecar_uploaded: uploaded,
            parts: 192,
            seconds: 12.0,
        }
    }

    #[test]
    fn s3_summary_lists_size_sha256_and_what_happened() {
        let md = outcome(true).markdown(Path::new("/x/a|b.raw"));
        assert!(md.starts_with("### Published `a\\|b.raw`\n"), "{md}");
        assert!(md.contains("| object | `s3://images/a\\|b.raw` |"), "{md}");
        assert!(
            md.contains("| size | 3.00 GiB (3221225472 bytes) |"),
            "{md}"
        );
        assert!(
            md.contains(&format!("| sha256 | `{}` |", "ab".repeat(32))),
            "{md}"
        );
        assert!(md.contains("192 part(s) in 12.0 s, 256.0 MiB/s"), "{md}");
        let skipped = outcome(false).markdown(Path::new("a.raw"));
        assert!(skipped.contains("nothing uploaded"), "{skipped}");
    }

    #[test]
    fn object_key_defaults_to_the_file_name_and_appends_it_to_prefixes() {
        let img = Path::new("/out/postgres-ubuntu-2204-x64-1.raw");
        for (key, want) in [
            (None, "postgres-ubuntu-2204-x64-1.raw"),
            (Some(""), "postgres-ubuntu-2204-x64-1.raw"),
            (Some("images/"), "images/postgres-ubuntu-2204-x64-1.raw"),
            (Some("/images/x.raw"), "images/x.raw"),
            (Some("exact.raw"), "exact.raw"),
        ] {
            assert_eq!(object_key(key, img).unwrap(), want, "{key:?}");
        }
    }

    #[test]
    fn validate_rejects_sizes_s3_refuses() {
        let mut o = S3Options::new("b");
        assert!(validate(&o).is_ok());
        o.part_size = MIB;
        assert!(matches!(
            validate(&o),
            Err(Error::Common(Common::Invalid(_)))
        ));
        o.part_size = DEFAULT_PART_SIZE;
        o.bucket.clear();
        assert!(matches!(
            validate(&o),
            Err(Error::Common(Common::Invalid(_)))
        ));
    }

    #[test]
    fn part_size_grows_to_fit_ten_thousand_parts() {
        let (file, _) = (tempfile::tempfile().unwrap(), 0);
        let job = |size| Upload {
            client: Client::from_conf(
                aws_sdk_s3::Config::builder()
                    .behavior_version_latest()
                    .build(),
            ),
            bucket: "b".into(),
            key: "k".into(),
            path: PathBuf::from("x"),
            file: Arc::new(file.try_clone().unwrap()),
            size,
            sha256: None,
            part_size: DEFAULT_PART_SIZE,
            concurrency: 1,
            backoff: Backoff::new(1),
        };
        assert_eq!(job(8 << 30).effective_part_size(), DEFAULT_PART_SIZE);
        assert!(
            DEFAULT_PART_SIZE >= MIN_PART_SIZE
                && (8u64 << 30).div_ceil(DEFAULT_PART_SIZE) <= MAX_PARTS
        );
        let big = 1u64 << 40; // 1 TiB: 8 MiB parts would be 131,072 of them
        let p = job(big).effective_part_size();
        assert!(big.div_ceil(p) <= MAX_PARTS && p % MIB == 0, "{p}");
    }

    #[test]
    fn composite_checksum_follows_s3s_definition() {
        let a = hash::digest(b"part one");
        let b = hash::digest(b"part two");
        let parts: Vec<_> = [a, b]
            .iter()
            .enumerate()
            .map(|(i, d)| {
                CompletedPart::builder()
                    .part_number(i as i32 + 1)
                    .checksum_sha256(aws_smithy_types::base64::encode(d))
                    .build()
            })
            .collect();
        let mut cat = a.to_vec();
        cat.extend(b);
        let want = format!("{}-2", aws_smithy_types::base64::encode(hash::digest(&cat)));
        assert_eq!(composite_checksum(&parts), Some(want));
        assert_eq!(
            composite_checksum(&[CompletedPart::builder().part_number(1).build()]),
            None
        );
    }
}
