//! `pgimg publish s3` as a user runs it, against a real S3 emulator (moto) on 127.0.0.1.
//! The library's own tests (publish/tests/) cover multipart, aborts and the AMI flow.

#[path = "support/moto.rs"]
mod moto;
#[path = "support/throttle.rs"]
mod throttle;

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const CANARY: &str = "pgimg-cli-canary-secret-0c1d2e3f";

struct Moto {
    child: Child,
    port: u16,
}

impl Moto {
    fn start() -> Moto {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(moto::moto_server())
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(200));
        }
        Moto { child, port }
    }
    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that `o` is a usage error (exit 2) whose stderr says `says`;
/// `case` names the attempt in a failure.
fn usage_error(o: &Output, says: &str, case: &str) {
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{case}: {stderr}");
    assert!(stderr.contains(says), "{case}: {says:?} in {stderr}");
}

fn aws(cmd: &mut Command) -> &mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", CANARY)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env_remove("GITHUB_STEP_SUMMARY")
}

/// `pgimg publish s3` of `image` to bucket `images`, which must succeed:
/// its JSON outcome, and stdout and stderr together (for the leak check).
fn publish(endpoint: &str, image: &Path, summary: &Path) -> (serde_json::Value, String) {
    let o = aws(&mut Command::new(env!("CARGO_BIN_EXE_pgimg")))
        .args(["publish", "s3"])
        .arg(image)
        .args([
            "--endpoint",
            endpoint,
            "--bucket",
            "images",
            "--path-style",
            "--quiet",
        ])
        .args(["--part-size-mib", "5", "--step-summary"])
        .arg(summary)
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let text = format!("{out}\n{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{text}");
    (serde_json::from_str(&out).unwrap(), text)
}

#[test]
fn publish_s3_uploads_once_with_a_sidecar_and_never_shows_the_secret() {
    let moto = Moto::with_bucket("images");

    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img.raw");
    let data: Vec<u8> = (0..12u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&image, &data).unwrap();
    let summary = dir.path().join("summary.md");

    let (v, out) = publish(&moto.endpoint(), &image, &summary);
    assert_eq!(v["uploaded"], true, "{out}");
    assert_eq!(v["key"], "img.raw");
    assert_eq!(v["sidecar_key"], "img.raw.sha256");
    assert!(v["parts"].as_u64().unwrap() >= 3, "multipart: {out}");

    let (v2, out2) = publish(&moto.endpoint(), &image, &summary);
    assert_eq!(v2["uploaded"], false, "the re-run uploads nothing: {out2}");
    assert_eq!(v2["sha256"], v["sha256"]);

    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(md.contains(v["sha256"].as_str().unwrap()), "{md}");
    for text in [&out, &out2, &md] {
        assert!(!text.contains(CANARY), "the secret leaked: {text}");
    }
}

#[test]
fn publish_s3_missing_image_is_a_usage_error() {
    let o = aws(&mut Command::new(env!("CARGO_BIN_EXE_pgimg")))
        .args(["publish", "s3", "/nonexistent.raw", "--bucket", "b"])
        .output()
        .unwrap();
    usage_error(&o, "no such image file", "a missing image");
}

/// Options the target refuses before any request (a part size outside S3's
/// limits, no concurrency) are usage errors, as for `ami` and `gce`: exit 2.
#[test]
fn publish_s3_options_out_of_range_are_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("small.raw");
    std::fs::write(&image, b"image").unwrap();
    for (flags, says) in [
        (&["--part-size-mib", "1"][..], "outside S3's 5 MiB to 5 GiB"),
        (&["--concurrency", "0"][..], "must be at least 1"),
    ] {
        let o = aws(&mut Command::new(env!("CARGO_BIN_EXE_pgimg")))
            .args(["publish", "s3"])
            .arg(&image)
            .args(["--bucket", "b", "--endpoint", "http://127.0.0.1:9"])
            .args(flags)
            .output()
            .unwrap();
        usage_error(&o, says, &format!("{flags:?}"));
    }
}

/// Runs `script` in python3 with `c`, a boto3 S3 client of moto, and `args`
/// as `sys.argv[2..]`; returns its stdout, trimmed.
fn boto3(moto: &Moto, script: &str, args: &[&str]) -> String {
    let out = aws(&mut Command::new(moto::moto_python()))
        .args([
            "-c",
            &format!(
                "import boto3,sys\nc = boto3.client('s3', endpoint_url=sys.argv[1])\n{script}"
            ),
            &moto.endpoint(),
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "boto3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl Moto {
    /// A moto server with an empty bucket `name`.
    fn with_bucket(name: &str) -> Moto {
        let moto = Moto::start();
        boto3(&moto, "c.create_bucket(Bucket=sys.argv[2])", &[name]);
        moto
    }
}

/// Keys of the multipart uploads still open in `bucket`, and whether `key` exists.
fn leftovers(moto: &Moto, bucket: &str, key: &str) -> String {
    boto3(
        moto,
        "ups = c.list_multipart_uploads(Bucket=sys.argv[2]).get('Uploads', [])\n\
         objs = [o['Key'] for o in c.list_objects_v2(Bucket=sys.argv[2]).get('Contents', []) if o['Key'] == sys.argv[3]]\n\
         print(len(ups), len(objs))",
        &[bucket, key],
    )
}

fn noise_image(path: &Path, size: usize) {
    let data: Vec<u8> = (0..size as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(path, data).unwrap();
}

#[test]
fn sigint_mid_upload_aborts_the_multipart_upload_and_exits_130() {
    use std::io::{BufRead, BufReader};
    let moto = Moto::with_bucket("sigint");
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("sigint.raw");
    noise_image(&image, 200 << 20);
    // 30 MiB at full speed, then 10 MiB/s: the upload is still running when
    // the first progress line (at least a second in) brings the signal.
    let slow = throttle::Throttle::start(moto.port, 30 << 20, 10 << 20);
    let mut child = aws(&mut Command::new(env!("CARGO_BIN_EXE_pgimg")))
        .args(["publish", "s3"])
        .arg(&image)
        .args(["--bucket", "sigint", "--endpoint", &slow.endpoint()])
        .args(["--path-style", "--part-size-mib", "5", "--concurrency", "2"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let (mut seen, mut line, mut signalled) = (String::new(), String::new(), false);
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        // Plain progress lines (stderr is not a terminal): "uploading: 10% (...)".
        if !signalled && line.starts_with("uploading: ") && line.contains('%') {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )
            .unwrap();
            signalled = true;
        }
        line.clear();
    }
    let status = child.wait().unwrap();
    assert!(signalled, "never saw upload progress:\n{seen}");
    assert_eq!(status.code(), Some(130), "stderr:\n{seen}");
    assert!(
        seen.contains("interrupted by SIGINT") && seen.contains("aborted"),
        "{seen}"
    );
    assert_eq!(
        leftovers(&moto, "sigint", "sigint.raw"),
        "0 0",
        "no multipart upload and no object left behind"
    );
}

#[test]
fn failed_publications_report_the_failure_and_never_show_the_secret() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("canary.raw");
    noise_image(&image, 1 << 20);
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    for (what, endpoint) in [
        ("missing bucket", moto.endpoint()),
        ("nothing listening", closed),
    ] {
        let out = aws(&mut Command::new(env!("CARGO_BIN_EXE_pgimg")))
            .env("AWS_SESSION_TOKEN", CANARY)
            .args(["publish", "s3"])
            .arg(&image)
            .args(["--bucket", "nope", "--endpoint", &endpoint])
            .args(["--path-style", "--quiet", "--attempts", "2"])
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {text}");
        assert!(
            text.contains("pgimg: publishing"),
            "{what}: the failure is reported: {text}"
        );
        assert!(!text.contains(CANARY), "{what}: secret in output:\n{text}");
    }
}

/// Object keys in `bucket`.
fn object_keys(moto: &Moto, bucket: &str) -> Vec<String> {
    boto3(
        moto,
        "print('\\n'.join(sorted(o['Key'] for o in c.list_objects_v2(Bucket=sys.argv[2]).get('Contents', []))))",
        &[bucket],
    )
    .lines()
        .map(str::to_string)
        .collect()
}

fn prune_cli(moto: &Moto, extra: &[&str]) -> (serde_json::Value, String) {
    let out = aws(&mut Command::new(env!("CARGO_BIN_EXE_pgimg")))
        .args([
            "prune", "--prefix", "pg-x64-", "--keep", "2", "--bucket", "rel",
        ])
        .args(["--endpoint", &moto.endpoint(), "--path-style", "--quiet"])
        .args(extra)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stdout}\n{stderr}");
    (serde_json::from_str(&stdout).unwrap(), stderr)
}

#[test]
fn prune_cli_lists_by_default_and_deletes_only_with_yes() {
    let moto = Moto::with_bucket("rel");
    boto3(
        &moto,
        "for i in range(1, 6):\n\
         \x20   c.put_object(Bucket='rel', Key=f'pg-x64-2026010{i}.raw', Body=b'img')\n\
         \x20   c.put_object(Bucket='rel', Key=f'pg-x64-2026010{i}.raw.sha256', Body=b'sum')\n\
         c.put_object(Bucket='rel', Key='pg-arm64-20260101.raw', Body=b'other')",
        &[],
    );
    let before = object_keys(&moto, "rel");
    assert_eq!(before.len(), 11);

    let (dry, _) = prune_cli(&moto, &[]);
    assert_eq!(dry["dry_run"], true);
    let listed: Vec<&str> = dry["delete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        [
            "pg-x64-20260103.raw",
            "pg-x64-20260102.raw",
            "pg-x64-20260101.raw"
        ]
    );
    assert_eq!(
        object_keys(&moto, "rel"),
        before,
        "the dry run deleted something"
    );

    let (done, _) = prune_cli(&moto, &["--yes"]);
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["delete"], dry["delete"]);
    assert_eq!(
        object_keys(&moto, "rel"),
        [
            "pg-arm64-20260101.raw",
            "pg-x64-20260104.raw",
            "pg-x64-20260104.raw.sha256",
            "pg-x64-20260105.raw",
            "pg-x64-20260105.raw.sha256",
        ]
    );
}

#[test]
fn prune_option_mistakes_are_usage_errors_before_any_request() {
    let gce = "--compute-endpoint http://127.0.0.1:9";
    // The arguments, and what the message must say (not only an unknown flag).
    for (args, says) in [
        ("prune --prefix pg- --bucket b".to_string(), "--keep"),
        ("prune --prefix= --keep 1 --bucket b".to_string(), "prefix"),
        (
            "prune --prefix pg- --keep 1 --bucket b --yes --dry-run".to_string(),
            "--dry-run",
        ),
        // No GCE image name has a dot: refused before any request.
        (
            format!("prune --prefix pg-16.1- --keep 1 --gce-project p {gce}"),
            "GCE image name",
        ),
        // An endpoint for a project never given.
        (
            format!("prune --prefix pg- --keep 1 --bucket b {gce}"),
            "--gce-project",
        ),
    ] {
        let o = aws(&mut Command::new(env!("CARGO_BIN_EXE_pgimg")))
            .args(args.split_whitespace())
            .output()
            .unwrap();
        usage_error(&o, says, &args);
    }
}

#[test]
fn publish_gce_bad_names_labels_and_features_are_usage_errors_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("img.raw");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let image = image.to_str().unwrap();
    let base = ["publish", "gce", image, "--project", "p", "--bucket", "b"];
    for (extra, why) in [
        (&["--name", "Pg_16"][..], "image name"),
        (&["--name", "pg", "--family", "Pg"][..], "family"),
        (&["--name", "pg", "--labels", "Flavor=x"][..], "label key"),
        (&["--name", "pg", "--labels", "novalue"][..], "KEY=VALUE"),
        (
            &["--name", "pg", "--guest-os-features", "gvnic"][..],
            "guest OS feature",
        ),
    ] {
        // Nothing may be contacted: the endpoints are closed ports.
        let o = Command::new(env!("CARGO_BIN_EXE_pgimg"))
            .args(base)
            .args(extra)
            .args([
                "--storage-endpoint",
                "http://127.0.0.1:9",
                "--compute-endpoint",
                "http://127.0.0.1:9",
            ])
            .env("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/adc.json")
            .env_remove("GITHUB_STEP_SUMMARY")
            .output()
            .unwrap();
        usage_error(&o, why, &format!("{extra:?}"));
    }
}

#[test]
fn publish_help_teaches_each_targets_flags_with_an_example() {
    for (target, flags) in [
        (
            "s3",
            &["--bucket", "--endpoint", "--path-style", "Example"][..],
        ),
        (
            "ami",
            &[
                "--kms-key-id",
                "--share-with",
                "--share-with-org",
                "--deprecate-at",
                "--imds-support",
                "--boot-mode",
                "--tpm-support",
                "--skip-zero-blocks",
                "--parent-snapshot-id",
                "encrypted",
                "Example",
            ][..],
        ),
        (
            "gce",
            &[
                "--project",
                "--bucket",
                "--name",
                "--family",
                "--guest-os-features",
                "--labels",
                "--public",
                "allAuthenticatedUsers",
                "GNU sparse",
                "Application Default Credentials",
                "deleted",
                "Example",
            ][..],
        ),
    ] {
        let o = Command::new(env!("CARGO_BIN_EXE_pgimg"))
            .args(["publish", target, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{target}: {help}");
        for flag in flags {
            assert!(
                help.contains(flag),
                "`publish {target} --help` lacks {flag}:\n{help}"
            );
        }
    }
    let o = Command::new(env!("CARGO_BIN_EXE_pgimg"))
        .args(["prune", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for text in [
        "--keep",
        "--older-than",
        "--yes",
        "--gce-project",
        "--compute-endpoint",
        "GCE images",
        "Nothing else is ever touched",
        "Example",
    ] {
        assert!(help.contains(text), "`prune --help` lacks {text}:\n{help}");
    }
}
