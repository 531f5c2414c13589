//! `gce::publish` against a real Cloud Storage emulator (gcp-storage-emulator,
//! installed by tests/setup.sh) on 127.0.0.1. Compute Engine has no emulator:
//! a stand-in on 127.0.0.1 records every request and answers `images.get`,
//! `images.list`, `images.insert`, `images.delete`, `globalOperations.get`,
//! `images.getIamPolicy` and `images.setIamPolicy` with the documented
//! resources; at `images.insert` it reads the tarball from the emulator, as
//! Compute reads `rawDisk.source`. `prune` is tested against the same
//! stand-in.
//! Credentials are real Application Default Credentials: an
//! `authorized_user` file in `GOOGLE_APPLICATION_CREDENTIALS` whose
//! `token_uri` is a token endpoint on 127.0.0.1.
#![cfg(feature = "gce")]

mod common;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{http_raw, RawResponse, Recorded, Recorder, Recording};
use pgimg_publish::error::Common;
use pgimg_publish::gce::{self, GceOptions};
use pgimg_publish::prune::{self, PruneOptions};
use serde_json::{json, Value};

const PROJECT: &str = "pgimg-test-project";
const BUCKET: &str = "pgimg-gce-uploads";
/// The access token the token endpoint hands out.
const TOKEN: &str = "ya29.pgimg-test-access-token";

// ---------------------------------------------------------------------------
// Application Default Credentials

/// Points ADC, once for the whole test binary, at an `authorized_user` file
/// whose token endpoint is a server on 127.0.0.1 (the refresh-token exchange
/// `gcloud auth application-default login` credentials make).
fn adc() {
    static TOKEN_SERVER: OnceLock<(Recorder, tempfile::TempDir)> = OnceLock::new();
    TOKEN_SERVER.get_or_init(|| {
        let server = Recorder::serve(Arc::new(|r: &Recorded| {
            let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
            if r.method == "POST"
                && r.path() == "/token"
                && body["grant_type"] == "refresh_token"
                && body["refresh_token"] == "pgimg-test-refresh-token"
            {
                json_response(
                    200,
                    &json!({"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer",
                            "scope": "https://www.googleapis.com/auth/cloud-platform"}),
                )
            } else {
                json_response(
                    400,
                    &json!({"error": "invalid_grant", "error_description": "Bad Request"}),
                )
            }
        }));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("application_default_credentials.json");
        std::fs::write(
            &file,
            json!({
                "type": "authorized_user",
                "client_id": "pgimg-test.apps.googleusercontent.com",
                "client_secret": "pgimg-test-client-secret",
                "refresh_token": "pgimg-test-refresh-token",
                "token_uri": format!("{}/token", server.endpoint()),
            })
            .to_string(),
        )
        .unwrap();
        // Runs once, before any test of this binary builds a client.
        std::env::set_var("GOOGLE_APPLICATION_CREDENTIALS", &file);
        (server, dir)
    });
}

fn json_response(status: u16, body: &Value) -> RawResponse {
    RawResponse {
        status,
        headers: vec![(
            "Content-Type".into(),
            "application/json; charset=UTF-8".into(),
        )],
        body: body.to_string().into_bytes(),
    }
}

// ---------------------------------------------------------------------------
// Cloud Storage: the emulator

/// A `gcp-storage-emulator` child process with [`BUCKET`], behind a recording
/// proxy; killed and reaped on drop.
struct Gcs {
    child: Child,
    port: u16,
    log: tempfile::NamedTempFile,
    proxy: Option<Recorder>,
}

impl Gcs {
    fn start() -> Gcs {
        let port = common::free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = Command::new(common::gcs_emulator())
            .args(["start", "--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--in-memory", "--default-bucket", BUCKET])
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("starting gcp-storage-emulator");
        let mut gcs = Gcs {
            child,
            port,
            log,
            proxy: None,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = gcs.child.try_wait().unwrap() {
                panic!(
                    "gcp-storage-emulator exited with {status} before answering:\n{}",
                    std::fs::read_to_string(gcs.log.path()).unwrap_or_default()
                );
            }
            // The bucket is made at start-up; wait until it is listed.
            if let Ok(r) = http_raw(port, "GET", &format!("/storage/v1/b/{BUCKET}"), &[], b"") {
                if r.status == 200 {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "gcp-storage-emulator did not answer on 127.0.0.1:{port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        gcs.proxy = Some(Recorder::start(port));
        gcs
    }

    /// The proxy's endpoint: what pgimg is pointed at.
    fn endpoint(&self) -> String {
        self.proxy.as_ref().unwrap().endpoint()
    }

    /// The requests pgimg sent to Cloud Storage.
    fn requests(&self) -> Vec<Recorded> {
        self.proxy.as_ref().unwrap().requests()
    }

    /// Panics unless [`BUCKET`] is empty: every run deletes its tarball.
    fn assert_empty(&self) {
        assert_eq!(
            self.objects(),
            Vec::<String>::new(),
            "the tarball was left in the bucket"
        );
    }

    /// Names of the objects in [`BUCKET`].
    fn objects(&self) -> Vec<String> {
        let r = http_raw(
            self.port,
            "GET",
            &format!("/storage/v1/b/{BUCKET}/o"),
            &[],
            b"",
        )
        .unwrap();
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let listed: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(listed["kind"], "storage#objects", "{listed}");
        listed["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .map(|i| i["name"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Gcs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Compute Engine: a recording stand-in

/// How the stand-in's operations (image creation, deletion) end.
#[derive(Clone, Copy, PartialEq)]
enum Ending {
    /// The operation runs once, then is DONE: the image READY, or gone.
    Ready,
    /// The operation is DONE with an error (as for a tarball GCE cannot read).
    Fails,
    /// The operation stays RUNNING (the image PENDING, or DELETING).
    Never,
}

/// An operation of the stand-in: what it does to which image, how often it was polled.
struct Operation {
    kind: &'static str,
    image: String,
    polls: u32,
}

#[derive(Default)]
struct World {
    /// Image name → resource.
    images: HashMap<String, Value>,
    /// Operation name → operation.
    operations: HashMap<String, Operation>,
    /// Image name → IAM policy.
    policies: HashMap<String, Value>,
    /// The `rawDisk.source` objects as read from Cloud Storage at `images.insert`.
    sources: Vec<Vec<u8>>,
}

struct Compute {
    server: Recorder,
    world: Arc<Mutex<World>>,
}

const IMAGES: &str = "/compute/v1/projects/pgimg-test-project/global/images";
const OPERATIONS: &str = "/compute/v1/projects/pgimg-test-project/global/operations";

impl Compute {
    fn start(gcs_port: u16, ending: Ending) -> Compute {
        let world = Arc::new(Mutex::new(World::default()));
        let w = world.clone();
        let server = Recorder::serve(Arc::new(move |r: &Recorded| {
            answer(&mut w.lock().unwrap(), r, gcs_port, ending)
        }));
        Compute { server, world }
    }

    fn endpoint(&self) -> String {
        format!("{}/compute/v1", self.server.endpoint())
    }

    /// Requests as `METHOD path` (query left out), in order.
    fn calls(&self) -> Vec<String> {
        self.server
            .requests()
            .iter()
            .map(|r| format!("{} {}", r.method, r.path()))
            .collect()
    }

    fn request(&self, method: &str, path: &str) -> Recorded {
        self.server
            .requests()
            .into_iter()
            .find(|r| r.method == method && r.path() == path)
            .unwrap_or_else(|| panic!("no {method} {path} among {:?}", self.calls()))
    }
}

fn self_link(path: &str) -> String {
    format!("https://www.googleapis.com{path}")
}

fn not_found(what: &str) -> RawResponse {
    let message = format!("The resource '{what}' was not found");
    json_response(
        404,
        &json!({"error": {"code": 404, "message": message,
                "errors": [{"message": message, "domain": "global", "reason": "notFound"}]}}),
    )
}

/// Answers one Compute request the way the documented API does.
fn answer(w: &mut World, r: &Recorded, gcs_port: u16, ending: Ending) -> RawResponse {
    if r.header("authorization") != Some(&format!("Bearer {TOKEN}")) {
        return json_response(
            401,
            &json!({"error": {"code": 401, "status": "UNAUTHENTICATED",
                    "message": "Request is missing required authentication credential."}}),
        );
    }
    let path = r.path().to_string();
    let body: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
    match (r.method.as_str(), path.as_str()) {
        ("POST", IMAGES) => {
            let name = body["name"].as_str().unwrap_or_default().to_string();
            if w.images.contains_key(&name) {
                let message = format!(
                    "The resource 'projects/{PROJECT}/global/images/{name}' already exists"
                );
                return json_response(
                    409,
                    &json!({"error": {"code": 409, "message": message,
                            "errors": [{"message": message, "domain": "global", "reason": "alreadyExists"}]}}),
                );
            }
            // Compute reads the tarball from Cloud Storage itself.
            let source = body["rawDisk"]["source"].as_str().unwrap_or_default();
            let Some(object) = source.strip_prefix("https://storage.googleapis.com/") else {
                return json_response(
                    400,
                    &json!({"error": {"code": 400, "message": format!(
                        "Invalid value for field 'resource.rawDisk.source': '{source}'.")}}),
                );
            };
            let got = http_raw(gcs_port, "GET", &format!("/{object}"), &[], b"").unwrap();
            if got.status != 200 {
                return json_response(
                    400,
                    &json!({"error": {"code": 400, "message": format!(
                        "The resource '{source}' of type 'GCS object' was not found.")}}),
                );
            }
            w.sources.push(got.body);
            let op = w.start("insert", &name);
            w.add(body.clone(), "2026-01-15T00:00:00.000-08:00", "PENDING");
            json_response(200, &operation(&op, "insert", &name, "RUNNING", 0, None))
        }
        ("GET", IMAGES) => list(w, r),
        ("DELETE", p) if p.starts_with(&format!("{IMAGES}/")) => {
            let name = image_name(p, "");
            let Some(image) = w.images.get_mut(&name) else {
                return not_found(&format!("projects/{PROJECT}/global/images/{name}"));
            };
            image["status"] = json!("DELETING");
            let op = w.start("delete", &name);
            json_response(200, &operation(&op, "delete", &name, "RUNNING", 0, None))
        }
        ("GET", p) if p.starts_with(OPERATIONS) => {
            let op = p[OPERATIONS.len() + 1..].to_string();
            let Some(o) = w.operations.get_mut(&op) else {
                return not_found(&format!("projects/{PROJECT}/global/operations/{op}"));
            };
            o.polls += 1;
            let (kind, name) = (o.kind, o.image.clone());
            if o.polls < 2 || ending == Ending::Never {
                return json_response(200, &operation(&op, kind, &name, "RUNNING", 40, None));
            }
            let error = (ending == Ending::Fails).then(|| match kind {
                "insert" => json!({"errors": [{"code": "IMAGE_PREPARATION_FAILED",
                    "message": "Image preparation failed: the tarball has no disk.raw"}]}),
                _ => json!({"errors": [{"code": "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE",
                    "message": format!("The image resource '{name}' is already being used")}]}),
            });
            match (kind, &error) {
                ("insert", Some(_)) | ("delete", None) => {
                    w.images.remove(&name);
                }
                // Created, or not deleted after all.
                _ => {
                    if let Some(i) = w.images.get_mut(&name) {
                        i["status"] = json!("READY");
                    }
                }
            }
            json_response(200, &operation(&op, kind, &name, "DONE", 100, error))
        }
        ("GET", p) if p.starts_with(IMAGES) && p.ends_with("/getIamPolicy") => {
            let name = image_name(p, "/getIamPolicy");
            if !w.images.contains_key(&name) {
                return not_found(&format!("projects/{PROJECT}/global/images/{name}"));
            }
            // An image nobody shared yet: no bindings, an etag.
            json_response(
                200,
                w.policies
                    .get(&name)
                    .unwrap_or(&json!({"version": 1, "etag": "BwYAAAAAAAA="})),
            )
        }
        ("POST", p) if p.starts_with(IMAGES) && p.ends_with("/setIamPolicy") => {
            let name = image_name(p, "/setIamPolicy");
            if !w.images.contains_key(&name) {
                return not_found(&format!("projects/{PROJECT}/global/images/{name}"));
            }
            let mut policy = body["policy"].clone();
            policy["etag"] = json!("BwYBBBBBBBB=");
            w.policies.insert(name, policy.clone());
            json_response(200, &policy)
        }
        ("GET", p) if p.starts_with(IMAGES) => {
            let name = image_name(p, "");
            match w.images.get(&name) {
                Some(i) => json_response(200, i),
                None => not_found(&format!("projects/{PROJECT}/global/images/{name}")),
            }
        }
        _ => json_response(
            404,
            &json!({"error": {"code": 404, "message": format!("stand-in: no {} {path}", r.method)}}),
        ),
    }
}

impl World {
    /// Adds the image `body` describes as Compute stores it: with kind, id,
    /// status, selfLink and creation time.
    fn add(&mut self, mut image: Value, created: &str, status: &str) {
        let name = image["name"].as_str().unwrap().to_string();
        let n = self.images.len() as u64 + 1;
        image["kind"] = json!("compute#image");
        image["id"] = json!(format!("{}", 4_000_000_000_000_000_000u64 + n));
        image["creationTimestamp"] = json!(created);
        image["status"] = json!(status);
        image["selfLink"] = json!(self_link(&format!("{IMAGES}/{name}")));
        image["sourceType"] = json!("RAW");
        self.images.insert(name, image);
    }

    /// A new RUNNING operation `kind` about `image`; returns its name.
    fn start(&mut self, kind: &'static str, image: &str) -> String {
        let op = format!(
            "operation-1768435200000-pgimg-{kind}-{}",
            self.operations.len() + 1
        );
        let o = Operation {
            kind,
            image: image.to_string(),
            polls: 0,
        };
        self.operations.insert(op.clone(), o);
        op
    }
}

/// Images in one page of `images.list`: fewer than the default 500 (a server
/// may return fewer than `maxResults`), so that listing five takes pages.
const PAGE: usize = 2;

/// `images.list`, in name order, [`PAGE`] at a time. Of Compute's filter
/// syntax the stand-in knows only `name eq "<literal>.*"` (RE2, matching the
/// whole name); any other filter is answered 400, so a change shows.
fn list(w: &World, r: &Recorded) -> RawResponse {
    let q = r.query();
    let matches: Box<dyn Fn(&str) -> bool> = match q.get("filter") {
        None => Box::new(|_| true),
        Some(f) => {
            let literal = f
                .strip_prefix("name eq \"")
                .and_then(|f| f.strip_suffix(".*\""))
                .filter(|l| !l.contains(|c: char| "\\.+*?()|[]{}^$\"".contains(c)));
            match literal {
                Some(l) => {
                    let l = l.to_string();
                    Box::new(move |name| name.starts_with(&l))
                }
                None => {
                    return json_response(
                        400,
                        &json!({"error": {"code": 400, "message": format!(
                            "stand-in: unsupported filter expression {f:?}")}}),
                    )
                }
            }
        }
    };
    let mut names: Vec<&String> = w.images.keys().filter(|n| matches(n)).collect();
    names.sort();
    let start = match q.get("pageToken") {
        None => 0,
        Some(t) => match t.strip_prefix("page-").and_then(|n| n.parse().ok()) {
            Some(n) => n,
            None => {
                return json_response(
                    400,
                    &json!({"error": {"code": 400, "message": "Invalid value for field 'pageToken'"}}),
                )
            }
        },
    };
    let end = (start + PAGE).min(names.len());
    let mut page = json!({
        "kind": "compute#imageList",
        "id": format!("projects/{PROJECT}/global/images"),
        "selfLink": self_link(IMAGES),
    });
    if start < end {
        page["items"] = names[start..end]
            .iter()
            .map(|n| w.images[*n].clone())
            .collect();
    }
    if end < names.len() {
        page["nextPageToken"] = json!(format!("page-{end}"));
    }
    json_response(200, &page)
}

fn image_name(path: &str, suffix: &str) -> String {
    path[IMAGES.len() + 1..path.len() - suffix.len()].to_string()
}

fn operation(
    name: &str,
    kind: &str,
    image: &str,
    status: &str,
    progress: u32,
    error: Option<Value>,
) -> Value {
    let mut op = json!({
        "kind": "compute#operation",
        "id": "7311042800000000001",
        "name": name,
        "operationType": kind,
        "targetLink": self_link(&format!("{IMAGES}/{image}")),
        "targetId": "4000000000000000001",
        "status": status,
        "user": "pgimg-test@example.com",
        "progress": progress,
        "insertTime": "2026-01-15T00:00:00.000-08:00",
        "startTime": "2026-01-15T00:00:00.500-08:00",
        "selfLink": self_link(&format!("{OPERATIONS}/{name}")),
    });
    if status == "DONE" {
        op["endTime"] = json!("2026-01-15T00:01:30.000-08:00");
    }
    if let Some(e) = error {
        op["error"] = e;
        op["httpErrorStatusCode"] = json!(400);
        op["httpErrorMessage"] = json!("BAD REQUEST");
    }
    op
}

// ---------------------------------------------------------------------------
// Fixtures

/// An image with (a) holes, (b) zeros written into an allocated range, (c)
/// 20 MiB of incompressible data, so the upload takes two 16 MiB chunks.
fn image(dir: &Path) -> (PathBuf, Vec<u8>) {
    use std::os::unix::fs::FileExt;
    let path = dir.join("postgres-ubuntu-2204-x64-20260115.raw");
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(64 << 20).unwrap();
    let mut data = vec![0u8; 20 << 20];
    common::Noise::new(7).fill(&mut data);
    f.write_all_at(&data, 1 << 20).unwrap();
    f.write_all_at(&vec![0u8; 1 << 20], 32 << 20).unwrap();
    f.write_all_at(b"the last data range", 48 << 20).unwrap();
    f.sync_all().unwrap();
    let content = std::fs::read(&path).unwrap();
    (path, content)
}

/// One publish test's world: the Cloud Storage emulator, a fake Compute
/// whose image creations end as `ending` says, the test image (and its
/// content) in a folder that lives as long as the fixture, and options that
/// publish it as `name` through both.
///
/// Destructure it keeping `gcs`, `compute` and `dir` bound: they stop the
/// servers and remove the folder when dropped.
struct Fixture {
    gcs: Gcs,
    compute: Compute,
    dir: tempfile::TempDir,
    path: PathBuf,
    content: Vec<u8>,
    opts: GceOptions,
}

fn fixture(ending: Ending, name: &str) -> Fixture {
    let gcs = Gcs::start();
    let compute = Compute::start(gcs.port, ending);
    let dir = tempfile::tempdir().unwrap();
    let (path, content) = image(dir.path());
    adc();
    let mut opts = GceOptions::new(PROJECT, BUCKET, name);
    opts.storage_endpoint = Some(gcs.endpoint());
    opts.compute_endpoint = Some(compute.endpoint());
    opts.poll = Duration::from_millis(20);
    opts.timeout = Duration::from_secs(120);
    opts.attempts = 2;
    Fixture {
        gcs,
        compute,
        dir,
        path,
        content,
        opts,
    }
}

/// The single member of a `.tar.gz`: its name, entry type and content.
fn untar(targz: &[u8]) -> (String, tar::EntryType, Vec<u8>) {
    let mut tar_bytes = Vec::new();
    flate2::read::GzDecoder::new(targz)
        .read_to_end(&mut tar_bytes)
        .unwrap();
    let mut archive = tar::Archive::new(&tar_bytes[..]);
    let mut members = archive.entries().unwrap();
    let mut m = members.next().expect("an empty tarball").unwrap();
    let name = m.path().unwrap().to_string_lossy().into_owned();
    let kind = m.header().entry_type();
    let mut content = Vec::new();
    m.read_to_end(&mut content).unwrap();
    drop(m);
    assert!(members.next().is_none(), "more than one member");
    (name, kind, content)
}

// ---------------------------------------------------------------------------
// Tests

#[test]
fn publish_uploads_a_sparse_tarball_creates_a_public_image_and_deletes_the_tarball() {
    let name = "postgres-ubuntu-2204-x64-20260115";
    let Fixture {
        gcs,
        compute,
        dir,
        path,
        content,
        opts: mut o,
    } = fixture(Ending::Ready, name);
    o.family = Some("postgres-ubuntu-2204-x64".into());
    o.guest_os_features = vec!["VIRTIO_SCSI_MULTIQUEUE".into(), "GVNIC".into()];
    o.labels = vec![
        ("flavor".into(), "standard".into()),
        ("pg".into(), "16".into()),
    ];
    o.public = true;
    let summary = dir.path().join("summary.md");
    o.step_summary = Some(summary.clone());

    let progress = Recording::default();
    let outcome = gce::publish(&o, &path, &progress).expect("publishing");

    let link = format!("https://www.googleapis.com{IMAGES}/{name}");
    assert_eq!(outcome.image, name);
    assert_eq!(outcome.status, "READY");
    assert!(outcome.created && outcome.public && outcome.tarball_deleted);
    assert_eq!(outcome.self_link.as_deref(), Some(link.as_str()));
    assert_eq!(
        outcome.source.as_deref(),
        Some(format!("https://storage.googleapis.com/{BUCKET}/{name}.tar.gz").as_str())
    );

    // The request pgimg sent, against the recorded expectation.
    let insert = compute.request("POST", IMAGES);
    assert!(
        insert.url.contains("requestId="),
        "images.insert without a requestId: {}",
        insert.url
    );
    let body: Value = serde_json::from_slice(&insert.body).unwrap();
    assert_eq!(
        body,
        json!({
            "name": name,
            "family": "postgres-ubuntu-2204-x64",
            "rawDisk": {
                "source": format!("https://storage.googleapis.com/{BUCKET}/{name}.tar.gz"),
                "containerType": "TAR"
            },
            "guestOsFeatures": [{"type": "VIRTIO_SCSI_MULTIQUEUE"}, {"type": "GVNIC"}],
            "labels": {"flavor": "standard", "pg": "16"}
        })
    );

    // What Compute read from Cloud Storage: one GNU sparse `disk.raw` that
    // is the image, byte for byte; the holes were not stored.
    let sources = std::mem::take(&mut compute.world.lock().unwrap().sources);
    assert_eq!(sources.len(), 1);
    assert_eq!(outcome.tarball_bytes, Some(sources[0].len() as u64));
    let (member, kind, read) = untar(&sources[0]);
    assert_eq!(member, "disk.raw");
    assert_eq!(kind, tar::EntryType::GNUSparse);
    assert!(read == content, "disk.raw differs from the image");
    assert!(
        sources[0].len() < 30 << 20,
        "the 64 MiB image with 21 MiB of data packed to {} bytes: holes were stored",
        sources[0].len()
    );

    // Shared with every authenticated user, other policy fields kept.
    let set = compute.request("POST", &format!("{IMAGES}/{name}/setIamPolicy"));
    let policy: Value = serde_json::from_slice(&set.body).unwrap();
    assert_eq!(
        policy,
        json!({"policy": {"version": 1, "etag": "BwYAAAAAAAA=", "bindings": [
            {"role": "roles/compute.imageUser", "members": ["allAuthenticatedUsers"]}
        ]}})
    );

    // The calls in order: nothing before the existence check, the IAM change
    // only after the image is READY.
    let calls = compute.calls();
    let first = |c: &str| calls.iter().position(|x| x.starts_with(c)).unwrap();
    assert_eq!(calls[0], format!("GET {IMAGES}/{name}"));
    assert!(
        first("POST /compute/v1/projects/pgimg-test-project/global/images")
            < first("GET /compute/v1/projects/pgimg-test-project/global/operations")
    );
    assert!(
        first(&format!("GET {IMAGES}/{name}/getIamPolicy"))
            > first("GET /compute/v1/projects/pgimg-test-project/global/operations")
    );

    // Cloud Storage: a resumable upload in two chunks (16 MiB, then the
    // rest), then the tarball deleted; every request authorized.
    let object = format!("{name}.tar.gz");
    let total = sources[0].len();
    let storage: Vec<String> = gcs
        .requests()
        .iter()
        .map(|r| {
            assert_eq!(
                r.header("authorization"),
                Some(format!("Bearer {TOKEN}").as_str()),
                "{} {}",
                r.method,
                r.url
            );
            match r.header("content-range") {
                Some(range) => format!("{} {range}", r.method),
                None => format!("{} {}", r.method, r.url.split('&').next().unwrap()),
            }
        })
        .collect();
    assert_eq!(
        storage,
        [
            format!("POST /upload/storage/v1/b/{BUCKET}/o?uploadType=resumable"),
            format!("PUT bytes 0-{}/{total}", (16 << 20) - 1),
            format!("PUT bytes {}-{}/{total}", 16 << 20, total - 1),
            format!("DELETE /storage/v1/b/{BUCKET}/o/{object}"),
        ]
    );

    // The tarball is gone from the bucket and from the image's folder.
    gcs.assert_empty();
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tar.gz"))
        .collect();
    assert!(left.is_empty(), "tarballs left beside the image: {left:?}");
    assert!(progress
        .notes()
        .iter()
        .any(|n| n.contains(&format!("deleted gs://{BUCKET}/{name}.tar.gz"))));
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.contains(&format!("projects/{PROJECT}/global/images/{name}")),
        "{md}"
    );
}

#[test]
fn a_failed_image_creation_names_the_cause_and_still_deletes_the_tarball() {
    let Fixture {
        gcs,
        compute,
        dir: _dir,
        path,
        opts: o,
        ..
    } = fixture(Ending::Fails, "pg-fails");

    let err = gce::publish(&o, &path, &Recording::default()).unwrap_err();
    let text = format!("{err}");
    assert!(matches!(err, gce::Error::ImageFailed { .. }), "{err:?}");
    assert!(
        text.contains("pg-fails") && text.contains("IMAGE_PREPARATION_FAILED"),
        "{text}"
    );
    assert_eq!(
        compute.world.lock().unwrap().sources.len(),
        1,
        "never uploaded"
    );
    gcs.assert_empty();
}

#[test]
fn an_image_that_never_becomes_ready_ends_the_bounded_wait_and_the_tarball_is_deleted() {
    let Fixture {
        gcs,
        compute: _compute,
        dir: _dir,
        path,
        opts: mut o,
        ..
    } = fixture(Ending::Never, "pg-never-ready");
    o.timeout = Duration::from_millis(300);

    let err = gce::publish(&o, &path, &Recording::default()).unwrap_err();
    assert!(
        matches!(err, gce::Error::Common(Common::Timeout { .. })),
        "{err:?}"
    );
    assert!(format!("{err}").contains("gave up after"), "{err}");
    gcs.assert_empty();
}

#[test]
fn an_image_already_there_is_reported_and_nothing_is_uploaded() {
    let name = "pg-already-there";
    let Fixture {
        gcs: _gcs,
        compute,
        dir: _dir,
        path,
        opts: o,
        ..
    } = fixture(Ending::Ready, name);
    gce::publish(&o, &path, &Recording::default()).expect("first run");
    let before = compute.calls().len();

    let progress = Recording::default();
    let outcome = gce::publish(&o, &path, &progress).expect("second run");
    assert!(!outcome.created, "{outcome:?}");
    assert_eq!(outcome.status, "READY");
    let again = &compute.calls()[before..];
    assert!(
        !again.is_empty() && again.iter().all(|c| *c == format!("GET {IMAGES}/{name}")),
        "a re-run only looks at the image: {again:?}"
    );
    assert_eq!(compute.world.lock().unwrap().sources.len(), 1);
    assert!(progress
        .notes()
        .iter()
        .any(|n| n.contains("already exists")));
}

// ---------------------------------------------------------------------------
// prune

/// Five releases `pg-x64-2026010N`, a day apart (Compute writes Pacific
/// time), and one older image of another prefix; deletions end as `ending` says.
fn releases(ending: Ending) -> Compute {
    // prune never inserts an image, so the stand-in needs no Cloud Storage.
    let compute = Compute::start(0, ending);
    let mut w = compute.world.lock().unwrap();
    for day in 1..=5 {
        w.add(
            json!({"name": format!("pg-x64-2026010{day}"), "family": "pg-x64"}),
            &format!("2026-01-0{day}T00:00:00.000-08:00"),
            "READY",
        );
    }
    w.add(
        json!({"name": "pg-arm64-20251201", "family": "pg-arm64"}),
        "2025-12-01T00:00:00.000-08:00",
        "READY",
    );
    drop(w);
    compute
}

fn prune_options(compute: &Compute) -> PruneOptions {
    adc();
    let mut o = PruneOptions::new("pg-x64-");
    o.keep = Some(2);
    o.gce_project = Some(PROJECT.into());
    o.compute_endpoint = Some(compute.endpoint());
    o.poll = Duration::from_millis(20);
    o.timeout = Duration::from_secs(30);
    o.attempts = 2;
    o
}

/// A request as `METHOD path?query`, the query sorted and each `requestId`
/// (new for every run) checked to be UUID-shaped and written `<uuid>`.
fn sent(r: &Recorded) -> String {
    let mut query: Vec<String> = r
        .query()
        .into_iter()
        .map(|(k, v)| {
            if k == "requestId" {
                let parts: Vec<usize> = v.split('-').map(str::len).collect();
                assert_eq!(parts, [8, 4, 4, 4, 12], "requestId {v}");
                format!("{k}=<uuid>")
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    query.sort();
    if query.is_empty() {
        format!("{} {}", r.method, r.path())
    } else {
        format!("{} {}?{}", r.method, r.path(), query.join("&"))
    }
}

fn names(releases: &[prune::Release]) -> Vec<&str> {
    releases.iter().map(|r| r.name.as_str()).collect()
}

#[test]
fn prune_gce_keeps_the_newest_two_and_deletes_only_the_three_older_matching_images() {
    let compute = releases(Ending::Ready);
    let mut o = prune_options(&compute);
    let list = |token: &str| format!("GET {IMAGES}?filter=name eq \"pg-x64-.*\"{token}");
    let listing = [
        list(""),
        list("&pageToken=page-2"),
        list("&pageToken=page-4"),
    ];

    // The dry run lists every page and deletes nothing.
    let dry = prune::prune(&o, &Recording::default()).expect("dry run");
    assert!(dry.dry_run);
    assert_eq!(
        names(&dry.delete),
        ["pg-x64-20260103", "pg-x64-20260102", "pg-x64-20260101"]
    );
    assert_eq!(names(&dry.keep), ["pg-x64-20260105", "pg-x64-20260104"]);
    let third = &dry.delete[0];
    assert_eq!(
        (third.kind, third.place.as_str(), third.id.as_str()),
        ("gce", PROJECT, "pg-x64-20260103")
    );
    assert_eq!(third.created, "2026-01-03T08:00:00Z");
    let requests: Vec<String> = compute.server.requests().iter().map(sent).collect();
    assert_eq!(requests, listing);
    assert_eq!(compute.world.lock().unwrap().images.len(), 6);

    // With delete: the same three, each waited for until its operation is DONE.
    let before = compute.server.requests().len();
    o.delete = true;
    let progress = Recording::default();
    let done = prune::prune(&o, &progress).expect("deleting");
    assert!(!done.dry_run);
    assert_eq!(done.delete, dry.delete);
    assert_eq!(done.keep, dry.keep);
    let mut expected = listing.to_vec();
    for (n, day) in [(1, 3), (2, 2), (3, 1)] {
        let op = format!("GET {OPERATIONS}/operation-1768435200000-pgimg-delete-{n}");
        expected.push(format!(
            "DELETE {IMAGES}/pg-x64-2026010{day}?requestId=<uuid>"
        ));
        // RUNNING, then DONE.
        expected.extend([op.clone(), op]);
    }
    let requests: Vec<String> = compute.server.requests()[before..]
        .iter()
        .map(sent)
        .collect();
    assert_eq!(requests, expected);

    // Exactly those three are gone; the other prefix was never named.
    let mut left: Vec<String> = compute
        .world
        .lock()
        .unwrap()
        .images
        .keys()
        .cloned()
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["pg-arm64-20251201", "pg-x64-20260104", "pg-x64-20260105"]
    );
    assert!(
        !compute.calls().iter().any(|c| c.contains("pg-arm64")),
        "{:?}",
        compute.calls()
    );
    assert!(progress
        .notes()
        .iter()
        .any(|n| n.contains("deleted gce pg-x64-20260101")));
}

#[test]
fn a_gce_deletion_that_never_finishes_ends_the_bounded_wait_with_nothing_done() {
    let compute = releases(Ending::Never);
    let mut o = prune_options(&compute);
    o.delete = true;
    o.timeout = Duration::from_millis(300);

    let err = prune::prune(&o, &Recording::default()).unwrap_err();
    let prune::Error::Partial { cause, done } = &err else {
        panic!("{err:?}");
    };
    assert!(
        matches!(
            **cause,
            prune::Error::Gce(gce::Error::Common(Common::Timeout { .. }))
        ),
        "{err:?}"
    );
    assert!(done.is_empty(), "{err}");
    assert!(format!("{err}").contains("gave up after"), "{err}");
    // The first deletion was asked for, the others never were.
    let deletes: Vec<String> = compute
        .calls()
        .into_iter()
        .filter(|c| c.starts_with("DELETE"))
        .collect();
    assert_eq!(deletes, [format!("DELETE {IMAGES}/pg-x64-20260103")]);
}
