//! GCE images: the image packed as GCE wants it (`disk.raw` in a GNU sparse
//! `tar.gz`), uploaded to Cloud Storage, `images.insert` from it, waited for
//! until READY, made public when asked; the tarball deleted in every case.
//!
//! Credentials come from Application Default Credentials (a key file in
//! `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default login,
//! workload identity federation, the metadata server) and are never printed.

pub(crate) mod api;
pub mod tarball;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Common, CommonError};
use crate::progress::{Progress, Unit};
use crate::rt::{self, Interrupt, Wait};
use crate::summary;

pub use api::{COMPUTE, STORAGE};

/// The role `--public` grants, and to whom.
pub const PUBLIC_ROLE: &str = "roles/compute.imageUser";
/// Every holder of a Google account.
pub const PUBLIC_MEMBER: &str = "allAuthenticatedUsers";

/// What to publish where.
#[derive(Debug, Clone)]
pub struct GceOptions {
    /// Project of the image.
    pub project: String,
    /// Bucket the tarball is uploaded to (and deleted from afterwards).
    pub bucket: String,
    /// Image name: lowercase letters, digits and `-`, starting with a letter.
    pub name: String,
    /// Object name of the tarball; default `<name>.tar.gz`.
    pub object: Option<String>,
    /// Image family.
    pub family: Option<String>,
    /// Image description.
    pub description: Option<String>,
    /// `X86_64` or `ARM64`; default: GCE's (x86-64).
    pub architecture: Option<String>,
    /// Guest OS features, e.g. `VIRTIO_SCSI_MULTIQUEUE`, `GVNIC`, `UEFI_COMPATIBLE`.
    pub guest_os_features: Vec<String>,
    /// Labels, key → value.
    pub labels: Vec<(String, String)>,
    /// Grant `allAuthenticatedUsers` the `roles/compute.imageUser` role.
    pub public: bool,
    /// Cloud Storage endpoint (an emulator); default [`STORAGE`].
    pub storage_endpoint: Option<String>,
    /// Compute Engine endpoint; default [`COMPUTE`].
    pub compute_endpoint: Option<String>,
    /// Folder for the tarball while it is made; default: the image's.
    pub work_dir: Option<PathBuf>,
    /// Attempts per request.
    pub attempts: u32,
    /// Pause between polls of the operation and the image.
    pub poll: Duration,
    /// Bound on the wait for the image to become READY.
    pub timeout: Duration,
    /// Append a Markdown summary to this file.
    pub step_summary: Option<PathBuf>,
}

impl GceOptions {
    /// Options with the defaults: no family, labels or features, not public.
    pub fn new(
        project: impl Into<String>,
        bucket: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        GceOptions {
            project: project.into(),
            bucket: bucket.into(),
            name: name.into(),
            object: None,
            family: None,
            description: None,
            architecture: None,
            guest_os_features: Vec::new(),
            labels: Vec::new(),
            public: false,
            storage_endpoint: None,
            compute_endpoint: None,
            work_dir: None,
            attempts: 5,
            poll: Duration::from_secs(10),
            timeout: Duration::from_secs(60 * 60),
            step_summary: None,
        }
    }

    fn object(&self) -> String {
        self.object
            .clone()
            .unwrap_or_else(|| format!("{}.tar.gz", self.name))
    }

    /// `rawDisk.source`: Compute reads the tarball from Cloud Storage itself,
    /// so this is always the real Cloud Storage URL, whatever the endpoint.
    pub fn source_url(&self) -> String {
        format!("{STORAGE}/{}/{}", self.bucket, self.object())
    }
}

/// What was published.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct GceOutcome {
    pub project: String,
    pub image: String,
    pub family: Option<String>,
    /// `selfLink` of the image.
    pub self_link: Option<String>,
    /// Status when done: READY.
    pub status: String,
    /// False when an image of that name was already there (nothing uploaded).
    pub created: bool,
    pub public: bool,
    /// `rawDisk.source` the image was made from.
    pub source: Option<String>,
    /// Size of the uploaded `.tar.gz`.
    pub tarball_bytes: Option<u64>,
    /// The tarball is gone from the bucket.
    pub tarball_deleted: bool,
}

impl GceOutcome {
    /// Markdown for the step summary.
    pub fn markdown(&self, image: &Path) -> String {
        let mut md = summary::heading("GCE image", image);
        md.push_str("| | |\n|---|---|\n");
        md.push_str(&format!(
            "| image | `projects/{}/global/images/{}` |\n",
            summary::escape(&self.project),
            summary::escape(&self.image)
        ));
        if let Some(f) = &self.family {
            md.push_str(&format!("| family | `{}` |\n", summary::escape(f)));
        }
        md.push_str(&format!(
            "| status | {}{} |\n| public | {} |\n\n",
            self.status,
            if self.created { "" } else { " (already there)" },
            if self.public {
                "yes (allAuthenticatedUsers)"
            } else {
                "no"
            }
        ));
        md
    }
}

/// Everything that can go wrong publishing to GCE.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options, a file, a service call or a signal, as in every target.
    #[error(transparent)]
    Common(#[from] Common),
    /// Application Default Credentials gave no token.
    #[error(
        "getting a token from Application Default Credentials: {0} (point \
         GOOGLE_APPLICATION_CREDENTIALS at a service-account key or a workload identity \
         federation file, or run `gcloud auth application-default login`)"
    )]
    Auth(String),
    /// The image creation failed.
    #[error("image {image}: {message}")]
    ImageFailed { image: String, message: String },
    /// A step failed, and deleting the tarball failed too.
    #[error("{cause}; also, {cleanup}")]
    Cleanup { cause: Box<Error>, cleanup: String },
    /// Everything worked but deleting the tarball.
    #[error("the image is READY, but {0}")]
    CleanupFailed(String),
}

impl Error {
    /// True when the run stopped because of SIGINT or SIGTERM (the CLI exits 130).
    pub fn is_interrupted(&self) -> bool {
        match self {
            Error::Common(Common::Interrupted { .. }) => true,
            Error::Cleanup { cause, .. } => cause.is_interrupted(),
            _ => false,
        }
    }
}

crate::error::target_error!(Error);

/// Publishes `image` (a raw disk) as a GCE image.
pub fn publish(
    opts: &GceOptions,
    image: &Path,
    progress: &dyn Progress,
) -> Result<GceOutcome, Error> {
    rt::publish(image, opts.step_summary.as_deref(), progress, || {
        validate(opts)?;
        std::fs::File::open(image).map_err(|source| Error::io(image, source))?;
        let steps = |interrupt| flow(opts, image, progress, interrupt);
        Ok((steps, |outcome: &GceOutcome| outcome.markdown(image)))
    })
}

async fn flow(
    opts: &GceOptions,
    image: &Path,
    progress: &dyn Progress,
    mut interrupt: Interrupt,
) -> Result<GceOutcome, Error> {
    let google = api::Google::new(
        opts.storage_endpoint.as_deref(),
        opts.compute_endpoint.as_deref(),
        opts.attempts,
    )?;
    let mut outcome = GceOutcome {
        project: opts.project.clone(),
        image: opts.name.clone(),
        family: opts.family.clone(),
        public: opts.public,
        ..Default::default()
    };

    if google.get_image(&opts.project, &opts.name).await?.is_some() {
        progress.note(&format!(
            "image {} already exists in {}; nothing uploaded",
            opts.name, opts.project
        ));
        tokio::select! {
            r = wait_ready(&google, opts, None, progress) => r?,
            signal = interrupt.wait() => return Err(Error::interrupted(signal)),
        }
        if opts.public {
            make_public(&google, opts).await?;
        }
        outcome.status = "READY".into();
        outcome.self_link = found_link(&google, opts).await?;
        outcome.tarball_deleted = true;
        return Ok(outcome);
    }

    // The tarball is made beside the image (or in --work-dir) and removed
    // when this guard drops, whatever happens.
    let dir = match &opts.work_dir {
        Some(d) => d.clone(),
        None => image
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_path_buf(),
    };
    let local = tempfile::Builder::new()
        .prefix(".pgimg-gce-")
        .suffix(".tar.gz")
        .tempfile_in(&dir)
        .map_err(|source| Error::io(&dir, source))?;
    let packed = tokio::select! {
        r = pack(image, local.path(), progress) => r?,
        signal = interrupt.wait() => return Err(Error::interrupted(signal)),
    };
    outcome.tarball_bytes = Some(packed.compressed);
    outcome.source = Some(opts.source_url());

    let object = opts.object();
    let result = tokio::select! {
        r = create(&google, opts, local.path(), packed.compressed, progress) => r,
        signal = interrupt.wait() => Err(Error::interrupted(signal)),
    };
    drop(local);
    // Deleted on success and failure alike; an upload that never completed
    // left no object, and deleting none is not an error.
    let cleanup = google.delete_object(&opts.bucket, &object).await;
    match (result, cleanup) {
        (Ok(link), Ok(())) => {
            progress.note(&format!("deleted gs://{}/{object}", opts.bucket));
            outcome.status = "READY".into();
            outcome.created = true;
            outcome.self_link = link;
            outcome.tarball_deleted = true;
            Ok(outcome)
        }
        (Ok(_), Err(e)) => Err(Error::CleanupFailed(format!(
            "deleting the tarball failed: {e}"
        ))),
        (Err(cause), Ok(())) => {
            progress.note(&format!("deleted gs://{}/{object}", opts.bucket));
            Err(cause)
        }
        (Err(cause), Err(e)) => Err(Error::Cleanup {
            cause: Box::new(cause),
            cleanup: format!("deleting the tarball failed: {e}"),
        }),
    }
}

/// Packs on a blocking thread, forwarding its progress; dropping the future
/// (an interrupt) stops the thread at its next MiB.
async fn pack(image: &Path, out: &Path, progress: &dyn Progress) -> Result<tarball::Packed, Error> {
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let task = tokio::task::spawn_blocking({
        let (image, out, stop) = (image.to_path_buf(), out.to_path_buf(), stop.0.clone());
        move || tarball::pack(&image, &out, &Channel(tx), &stop)
    });
    while let Some(event) = rx.recv().await {
        match event {
            Event::Start(total) => progress.start("packing", total, Unit::Bytes),
            Event::Advance(n) => progress.advance(n),
            Event::Finish => progress.finish(),
        }
    }
    let result = task
        .await
        .map_err(|e| Error::io(out, std::io::Error::other(e.to_string())))?;
    drop(stop);
    result.map_err(|source| Error::io(image, source))
}

/// Sets the flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

enum Event {
    Start(u64),
    Advance(u64),
    Finish,
}

/// Progress sent from the packing thread to the runtime's task.
struct Channel(tokio::sync::mpsc::UnboundedSender<Event>);

impl Progress for Channel {
    fn start(&self, _: &str, total: u64, _: Unit) {
        let _ = self.0.send(Event::Start(total));
    }
    fn advance(&self, delta: u64) {
        let _ = self.0.send(Event::Advance(delta));
    }
    fn set(&self, _: u64) {}
    fn finish(&self) {
        let _ = self.0.send(Event::Finish);
    }
    fn note(&self, _: &str) {}
}

/// Upload, insert, wait, share. Returns the image's selfLink.
async fn create(
    google: &api::Google,
    opts: &GceOptions,
    tarball: &Path,
    len: u64,
    progress: &dyn Progress,
) -> Result<Option<String>, Error> {
    upload(google, opts, tarball, len, progress).await?;
    let body = image_body(opts);
    let request_id = request_id(&format!("insert/{}/{}", opts.project, opts.name));
    let op = google
        .insert_image(&opts.project, &body, &request_id)
        .await?;
    wait_ready(google, opts, op["name"].as_str(), progress).await?;
    if opts.public {
        make_public(google, opts).await?;
    }
    found_link(google, opts).await
}

async fn found_link(google: &api::Google, opts: &GceOptions) -> Result<Option<String>, Error> {
    Ok(google
        .get_image(&opts.project, &opts.name)
        .await?
        .and_then(|i| i["selfLink"].as_str().map(str::to_string)))
}

/// Resumable upload in [`api::CHUNK`] pieces; after a failed chunk the
/// service is asked how far it got and the upload resumes from there.
async fn upload(
    google: &api::Google,
    opts: &GceOptions,
    tarball: &Path,
    len: u64,
    progress: &dyn Progress,
) -> Result<(), Error> {
    use std::os::unix::fs::FileExt;
    let object = opts.object();
    let target = format!("gs://{}/{object}", opts.bucket);
    let file = std::fs::File::open(tarball).map_err(|source| Error::io(tarball, source))?;
    let session = google.start_upload(&opts.bucket, &object, len).await?;
    progress.start("uploading", len, Unit::Bytes);
    let mut offset = 0u64;
    let mut stalls = 0;
    while offset < len {
        let n = api::CHUNK.min(len - offset) as usize;
        let mut buf = vec![0u8; n];
        file.read_exact_at(&mut buf, offset)
            .map_err(|source| Error::io(tarball, source))?;
        let done = match google
            .put_chunk(&session, &target, offset, buf.into(), len)
            .await
        {
            Ok(done) => done,
            // Ask how far the service got; resume there, or give up.
            Err(e) => match google
                .put_chunk(&session, &target, offset, bytes::Bytes::new(), len)
                .await
            {
                Ok(done) if done > offset => done,
                _ => return Err(e),
            },
        };
        if done <= offset {
            stalls += 1;
            if stalls >= opts.attempts {
                return Err(Error::api_message(
                    "uploading",
                    target,
                    format!("the service keeps nothing past byte {offset}"),
                ));
            }
            continue;
        }
        progress.advance(done - offset);
        offset = done;
    }
    progress.finish();
    Ok(())
}

/// The `images.insert` body.
pub fn image_body(opts: &GceOptions) -> Value {
    let mut body = json!({
        "name": opts.name,
        "rawDisk": { "source": opts.source_url(), "containerType": "TAR" },
    });
    if let Some(f) = &opts.family {
        body["family"] = json!(f);
    }
    if let Some(d) = &opts.description {
        body["description"] = json!(d);
    }
    if let Some(a) = &opts.architecture {
        body["architecture"] = json!(a);
    }
    if !opts.guest_os_features.is_empty() {
        body["guestOsFeatures"] = opts
            .guest_os_features
            .iter()
            .map(|f| json!({ "type": f }))
            .collect();
    }
    if !opts.labels.is_empty() {
        body["labels"] = opts
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    body
}

/// A UUID-shaped request id for one call about `what`, new for each run:
/// Compute drops a retried call (`images.insert`, `images.delete`) carrying
/// the same id instead of failing it as a duplicate.
pub(crate) fn request_id(what: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let d =
        crate::hash::digest(format!("pgimg/gce/{what}/{nanos}/{}", std::process::id()).as_bytes());
    let h = crate::hash::hex(&d[..16]);
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// Waits for the insert operation (if any) to finish, then for the image to
/// be READY; FAILED, an operation error, or the time bound end it.
async fn wait_ready(
    google: &api::Google,
    opts: &GceOptions,
    operation: Option<&str>,
    progress: &dyn Progress,
) -> Result<(), Error> {
    let wait = Wait::new(opts.poll, opts.timeout);
    progress.start("creating image", 100, Unit::Percent);
    if let Some(op) = operation {
        wait_operation(google, &opts.project, &opts.name, op, wait, &|p| {
            progress.set(p.min(100))
        })
        .await?;
    }
    loop {
        let image = google.get_image(&opts.project, &opts.name).await?;
        let status = image
            .as_ref()
            .and_then(|i| i["status"].as_str())
            .unwrap_or("missing")
            .to_string();
        match status.as_str() {
            "READY" => {
                progress.set(100);
                progress.finish();
                return Ok(());
            }
            "FAILED" | "DELETING" => {
                return Err(Error::ImageFailed {
                    image: opts.name.clone(),
                    message: format!("status {status}"),
                })
            }
            "missing" if operation.is_some() => {
                return Err(Error::ImageFailed {
                    image: opts.name.clone(),
                    message: "the insert operation finished but there is no image".into(),
                })
            }
            _ => {}
        }
        wait.pause(|| format!("image {} to be READY", opts.name))
            .await?;
    }
}

/// Polls the global operation `op` about `image` until it is DONE, telling
/// `on_progress` its percentage; the operation's errors fail the image.
pub(crate) async fn wait_operation(
    google: &api::Google,
    project: &str,
    image: &str,
    op: &str,
    wait: Wait,
    on_progress: &dyn Fn(u64),
) -> Result<(), Error> {
    loop {
        let o = google.get_operation(project, op).await?;
        if let Some(p) = o["progress"].as_u64() {
            on_progress(p);
        }
        if o["status"] == "DONE" {
            return match o["error"]["errors"].as_array() {
                Some(errors) => Err(Error::ImageFailed {
                    image: image.to_string(),
                    message: errors
                        .iter()
                        .map(|e| {
                            format!(
                                "{}: {}",
                                e["code"].as_str().unwrap_or("ERROR"),
                                e["message"].as_str().unwrap_or("")
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; "),
                }),
                None => Ok(()),
            };
        }
        wait.pause(|| format!("operation {op}")).await?;
    }
}

/// Adds `allAuthenticatedUsers` to the `roles/compute.imageUser` binding,
/// keeping every other binding and the policy's etag (a concurrent change
/// makes setIamPolicy fail instead of being overwritten).
async fn make_public(google: &api::Google, opts: &GceOptions) -> Result<(), Error> {
    let mut policy = google.get_iam_policy(&opts.project, &opts.name).await?;
    if !policy.is_object() {
        policy = json!({});
    }
    add_binding(&mut policy, PUBLIC_ROLE, PUBLIC_MEMBER);
    google
        .set_iam_policy(&opts.project, &opts.name, policy)
        .await?;
    Ok(())
}

fn add_binding(policy: &mut Value, role: &str, member: &str) {
    if !policy["bindings"].is_array() {
        policy["bindings"] = json!([]);
    }
    let bindings = policy["bindings"].as_array_mut().expect("set above");
    match bindings.iter_mut().find(|b| b["role"] == role) {
        Some(b) => {
            if !b["members"].is_array() {
                b["members"] = json!([]);
            }
            let members = b["members"].as_array_mut().expect("set above");
            if !members.iter().any(|m| m == member) {
                members.push(json!(member));
            }
        }
        None => bindings.push(json!({ "role": role, "members": [member] })),
    }
}

fn validate(opts: &GceOptions) -> Result<(), Error> {
    if opts.project.is_empty() || opts.bucket.is_empty() {
        return Err(Error::invalid(
            "--project and --bucket must not be empty".into(),
        ));
    }
    if !is_resource_name(&opts.name) {
        return Err(Error::invalid(format!(
            "image name {:?}: 1-63 lowercase letters, digits and -, starting with a letter and not ending with -",
            opts.name
        )));
    }
    if let Some(f) = &opts.family {
        if !is_resource_name(f) {
            return Err(Error::invalid(format!(
                "family {f:?}: 1-63 lowercase letters, digits and -, starting with a letter"
            )));
        }
    }
    for f in &opts.guest_os_features {
        parse_guest_os_feature(f).map_err(Error::invalid)?;
    }
    for (k, v) in &opts.labels {
        parse_label(&format!("{k}={v}")).map_err(Error::invalid)?;
    }
    if opts.poll.is_zero() || opts.timeout.is_zero() {
        return Err(Error::invalid(
            "the poll interval and the timeout must be positive".into(),
        ));
    }
    Ok(())
}

/// RFC 1035 names as Compute wants them: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
fn is_resource_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_lowercase()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[b.len() - 1] != b'-'
}

/// Parses `key=value` as Compute labels allow it: keys 1-63 characters,
/// starting with a lowercase letter; values 0-63; both only lowercase
/// letters, digits, `_` and `-`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("label {s:?} is not KEY=VALUE"))?;
    let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    if k.is_empty()
        || k.len() > 63
        || !k.starts_with(|c: char| c.is_ascii_lowercase())
        || !k.chars().all(ok)
    {
        return Err(format!(
            "label key {k:?}: 1-63 lowercase letters, digits, _ or -, starting with a letter"
        ));
    }
    if v.len() > 63 || !v.chars().all(ok) {
        return Err(format!(
            "label value {v:?} (of {k}): at most 63 lowercase letters, digits, _ or -"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

/// A guest OS feature name as Compute spells them (`VIRTIO_SCSI_MULTIQUEUE`).
pub fn parse_guest_os_feature(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    {
        Ok(s.to_string())
    } else {
        Err(format!(
            "guest OS feature {s:?}: upper-case like VIRTIO_SCSI_MULTIQUEUE, GVNIC, UEFI_COMPATIBLE"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_computes_rules() {
        for good in ["flavor=standard", "pg=16", "a=", "k_1-x=v_2-y"] {
            assert!(parse_label(good).is_ok(), "{good}");
        }
        for bad in ["novalue", "=v", "Flavor=x", "1k=v", "k=V", "k=a.b", "k v=x"] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn image_body_carries_every_field_asked_for() {
        let mut o = GceOptions::new("proj", "bkt", "pg-16-x64-20260115");
        o.family = Some("pg-16".into());
        o.guest_os_features = vec!["VIRTIO_SCSI_MULTIQUEUE".into(), "GVNIC".into()];
        o.labels = vec![("flavor".into(), "standard".into())];
        assert_eq!(
            image_body(&o),
            json!({
                "name": "pg-16-x64-20260115",
                "family": "pg-16",
                "rawDisk": {
                    "source": "https://storage.googleapis.com/bkt/pg-16-x64-20260115.tar.gz",
                    "containerType": "TAR"
                },
                "guestOsFeatures": [{"type": "VIRTIO_SCSI_MULTIQUEUE"}, {"type": "GVNIC"}],
                "labels": {"flavor": "standard"}
            })
        );
    }

    #[test]
    fn public_binding_is_added_once_and_keeps_the_others() {
        let mut p = json!({"etag": "BwX=", "bindings": [{"role": "roles/owner", "members": ["user:a@example.com"]}]});
        add_binding(&mut p, PUBLIC_ROLE, PUBLIC_MEMBER);
        add_binding(&mut p, PUBLIC_ROLE, PUBLIC_MEMBER);
        assert_eq!(
            p,
            json!({"etag": "BwX=", "bindings": [
                {"role": "roles/owner", "members": ["user:a@example.com"]},
                {"role": PUBLIC_ROLE, "members": [PUBLIC_MEMBER]}
            ]})
        );
    }

    #[test]
    fn request_ids_are_uuid_shaped() {
        let id = request_id("insert/p/n");
        let parts: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12], "{id}");
    }

    #[test]
    fn resource_names_are_rfc_1035() {
        assert!(is_resource_name("postgres-ubuntu-2204-x64-20260115"));
        for bad in ["", "Pg", "1pg", "pg-", "pg_1", &"a".repeat(64)] {
            assert!(!is_resource_name(bad), "{bad}");
        }
    }
}
