//! `publish ami` against a real moto server on 127.0.0.1, through a recording proxy.
//!
//! moto implements S3, RegisterImage, DescribeImages, CreateTags, CopyImage,
//! ModifyImageAttribute, DescribeSnapshots, DeleteSnapshot and the EBS direct
//! APIs; those calls go to moto, and what moto ignores (RegisterImage's
//! architecture and block devices, EBS checksums and block counts) is checked
//! on the recorded request. ImportSnapshot, DescribeImportSnapshotTasks and
//! CancelImportTask are missing from moto (HTTP 500): the proxy answers them
//! with AWS's documented responses and the tests check the requests.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::*;
use pgimg_publish::ami::{self, AmiOptions, Arch, Via};
use pgimg_publish::error::Common;

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 512 * 1024;
const TASK: &str = "import-snap-0123456789abcdef0";

fn ec2(endpoint: &str, region: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(endpoint, region))
}

fn ebs(endpoint: &str, region: &str) -> aws_sdk_ebs::Client {
    aws_sdk_ebs::Client::new(&sdk_config(endpoint, region))
}

fn options(rec: &Recorder, region: &str, name: &str, arch: Arch, via: Via) -> AmiOptions {
    let mut o = AmiOptions::new(region, name, arch);
    o.via = via;
    o.conn.endpoint = Some(rec.endpoint());
    o.conn.path_style = true;
    o.poll_secs = 1;
    o.part_size = 8 * MIB;
    o
}

fn create_bucket_in(moto: &Moto, bucket: &str, region: &str) {
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&sdk_config(&moto.endpoint(), region))
            .force_path_style(true)
            .build(),
    );
    let location = aws_sdk_s3::types::CreateBucketConfiguration::builder()
        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(region))
        .build();
    block_on(
        s3.create_bucket()
            .bucket(bucket)
            .create_bucket_configuration(location)
            .send(),
    )
    .expect("CreateBucket");
}

/// The snapshot an import task would have produced, made in moto so that the
/// calls after the import refer to something that exists.
fn imported_snapshot(moto: &Moto, region: &str) -> String {
    let c = ec2(&moto.endpoint(), region);
    block_on(async {
        let vol = c
            .create_volume()
            .size(1)
            .availability_zone(format!("{region}a"))
            .send()
            .await
            .unwrap();
        let snap = c
            .create_snapshot()
            .volume_id(vol.volume_id().unwrap())
            .send()
            .await
            .unwrap();
        snap.snapshot_id().unwrap().to_string()
    })
}

/// AWS's ImportSnapshot response (EC2 API reference, ImportSnapshot).
fn import_snapshot_response(bucket: &str, key: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<ImportSnapshotResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>5e8ab1a1-e4a1-4fb6-8a8e-1b5c3c1e5b2a</requestId>
    <description>imported</description>
    <importTaskId>{TASK}</importTaskId>
    <snapshotTaskDetail>
        <diskImageSize>0.0</diskImageSize>
        <progress>0</progress>
        <status>active</status>
        <statusMessage>pending</statusMessage>
        <userBucket><s3Bucket>{bucket}</s3Bucket><s3Key>{key}</s3Key></userBucket>
    </snapshotTaskDetail>
</ImportSnapshotResponse>"#
    )
}

/// AWS's DescribeImportSnapshotTasks response for one task.
fn task_response(status: &str, progress: &str, message: &str, snapshot: Option<&str>) -> Canned {
    let snapshot = snapshot
        .map(|s| format!("<snapshotId>{s}</snapshotId>"))
        .unwrap_or_default();
    Canned::xml(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<DescribeImportSnapshotTasksResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>3e8ab1a1-e4a1-4fb6-8a8e-1b5c3c1e5b2b</requestId>
    <importSnapshotTaskSet>
        <item>
            <importTaskId>{TASK}</importTaskId>
            <snapshotTaskDetail>
                <diskImageSize>22020096.0</diskImageSize>
                <format>RAW</format>
                <progress>{progress}</progress>
                {snapshot}
                <status>{status}</status>
                <statusMessage>{message}</statusMessage>
            </snapshotTaskDetail>
        </item>
    </importSnapshotTaskSet>
</DescribeImportSnapshotTasksResponse>"#
    ))
}

fn cancel_response() -> Canned {
    Canned::xml(format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<CancelImportTaskResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>1e8ab1a1-e4a1-4fb6-8a8e-1b5c3c1e5b2c</requestId>
    <importTaskId>{TASK}</importTaskId>
    <previousState>active</previousState>
    <state>deleting</state>
</CancelImportTaskResponse>"#
    ))
}

/// `Key.N`/`Value.N` style pairs of an EC2 Query list under `prefix`.
fn query_tags(form: &HashMap<String, String>, prefix: &str) -> HashMap<String, String> {
    (1..10)
        .filter_map(|i| {
            let k = form.get(&format!("{prefix}.{i}.Key"))?;
            Some((k.clone(), form.get(&format!("{prefix}.{i}.Value"))?.clone()))
        })
        .collect()
}

fn images_named(moto: &Moto, region: &str, name: &str) -> Vec<aws_sdk_ec2::types::Image> {
    let out = block_on(
        ec2(&moto.endpoint(), region)
            .describe_images()
            .owners("self")
            .filters(
                aws_sdk_ec2::types::Filter::builder()
                    .name("name")
                    .values(name)
                    .build(),
            )
            .send(),
    )
    .unwrap();
    out.images().to_vec()
}

fn tags_of(image: &aws_sdk_ec2::types::Image) -> HashMap<String, String> {
    image
        .tags()
        .iter()
        .map(|t| {
            (
                t.key().unwrap_or_default().to_string(),
                t.value().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn s3_requests(rec: &Recorder, method: &str, key: &str) -> usize {
    rec.requests()
        .iter()
        .filter(|r| {
            r.method == method
                && r.path().ends_with(key)
                && r.header("authorization")
                    .is_some_and(|a| a.contains("/s3/"))
        })
        .count()
}

/// Makes the bucket `imports` in `region`, answers ImportSnapshot for its
/// object `file` and DescribeImportSnapshotTasks with `tasks` in turn (moto's
/// import tasks never finish); returns options that import through it as
/// `name` (x86_64).
fn canned_import(
    moto: &Moto,
    rec: &Recorder,
    region: &str,
    file: &str,
    name: &str,
    tasks: Vec<Canned>,
) -> AmiOptions {
    create_bucket_in(moto, "imports", region);
    rec.answer(
        ec2_action("ImportSnapshot"),
        vec![Canned::xml(import_snapshot_response("imports", file))],
    );
    rec.answer(ec2_action("DescribeImportSnapshotTasks"), tasks);
    let mut o = options(rec, region, name, Arch::X86_64, Via::Import);
    o.bucket = Some("imports".into());
    o
}

#[test]
fn import_uploads_imports_registers_copies_shares_and_deletes_the_object_and_a_rerun_reuses_it() {
    let moto = Moto::start();
    let rec = Recorder::start(moto.port);
    let snap = imported_snapshot(&moto, "us-west-2");
    let dir = tempfile::tempdir().unwrap();
    let file = "postgres-ubuntu-2204-x64-t1.raw";
    let image = sparse_image(dir.path(), file, 21 * MIB + 5, 6, 21);
    let name = "postgres-ubuntu-2204-x64-t1";
    let tasks = vec![
        task_response("active", "30", "converting", None),
        task_response("completed", "100", "completed", Some(&snap)),
    ];
    let mut o = canned_import(&moto, &rec, "us-west-2", file, name, tasks);
    o.copy_to = vec!["us-east-1".into(), "eu-west-1".into(), "us-west-2".into()];
    o.public = true;
    o.step_summary = Some(dir.path().join("summary.md"));

    let out = ami::publish(&o, &image, &Recording::default()).expect("publish");
    let regions: Vec<_> = out.regions.keys().cloned().collect();
    assert_eq!(regions, ["eu-west-1", "us-east-1", "us-west-2"]);
    let home = &out.regions["us-west-2"];
    assert_eq!(home.snapshot.as_deref(), Some(snap.as_str()));
    let amis: BTreeSet<_> = out.regions.values().map(|r| r.ami.clone()).collect();
    assert_eq!(amis.len(), 3, "{out:?}");
    assert!(
        out.regions
            .values()
            .all(|r| r.ami.starts_with("ami-") && !r.existing),
        "{out:?}"
    );
    let json: serde_json::Value = serde_json::to_value(&out).unwrap();
    assert_eq!(json["us-west-2"]["ami"], home.ami.as_str());
    assert_eq!(json["us-west-2"]["snapshot"], snap.as_str());

    // The upload went to the bucket, and the object is gone again.
    assert!(
        s3_requests(&rec, "PUT", file) >= 3,
        "multipart parts uploaded"
    );
    assert_eq!(s3_requests(&rec, "DELETE", file), 1);
    assert!(
        get_object(&moto.endpoint(), "imports", file).is_none(),
        "import object left in the bucket"
    );
    assert!(multipart_uploads(&moto.endpoint(), "imports").is_empty());

    // The calls moto lacks, as sent.
    let import = &rec.ec2_calls("ImportSnapshot")[0];
    assert_eq!(
        import.get("DiskContainer.Format").map(String::as_str),
        Some("RAW")
    );
    assert_eq!(
        import
            .get("DiskContainer.UserBucket.S3Bucket")
            .map(String::as_str),
        Some("imports")
    );
    assert_eq!(
        import
            .get("DiskContainer.UserBucket.S3Key")
            .map(String::as_str),
        Some(file)
    );
    let polls = rec.ec2_calls("DescribeImportSnapshotTasks");
    assert_eq!(polls.len(), 2);
    assert!(polls
        .iter()
        .all(|p| p.get("ImportTaskId.1").map(String::as_str) == Some(TASK)));

    // What moto ignores of RegisterImage, as sent.
    let reg = &rec.ec2_calls("RegisterImage")[0];
    for (k, v) in [
        ("Name", name),
        ("Architecture", "x86_64"),
        ("VirtualizationType", "hvm"),
        ("EnaSupport", "true"),
        ("RootDeviceName", "/dev/sda1"),
        ("BlockDeviceMapping.1.DeviceName", "/dev/sda1"),
        ("BlockDeviceMapping.1.Ebs.SnapshotId", snap.as_str()),
        ("BlockDeviceMapping.1.Ebs.VolumeSize", "1"),
        ("BlockDeviceMapping.1.Ebs.VolumeType", "gp3"),
        ("BlockDeviceMapping.1.Ebs.DeleteOnTermination", "true"),
    ] {
        assert_eq!(
            reg.get(k).map(String::as_str),
            Some(v),
            "RegisterImage {k}: {reg:?}"
        );
    }
    let copies = rec.ec2_calls("CopyImage");
    assert_eq!(copies.len(), 2, "no copy into the home region");
    for c in &copies {
        assert_eq!(c.get("SourceRegion").map(String::as_str), Some("us-west-2"));
        assert_eq!(c.get("SourceImageId"), Some(&home.ami));
        assert_eq!(c.get("Name").map(String::as_str), Some(name));
    }
    let shared = rec.ec2_calls("ModifyImageAttribute");
    assert_eq!(shared.len(), 3);
    assert!(
        shared
            .iter()
            .all(|s| s.get("LaunchPermission.Add.1.Group").map(String::as_str) == Some("all")),
        "{shared:?}"
    );

    // What moto keeps: each region has exactly one AMI of that name, tagged, public.
    for region in ["us-west-2", "us-east-1", "eu-west-1"] {
        let found = images_named(&moto, region, name);
        assert_eq!(found.len(), 1, "{region}");
        assert_eq!(found[0].image_id(), Some(out.regions[region].ami.as_str()));
        let tags = tags_of(&found[0]);
        assert_eq!(
            tags.get("Name").map(String::as_str),
            Some(name),
            "{region} {tags:?}"
        );
        assert_eq!(
            tags.get("Source").map(String::as_str),
            Some(file),
            "{region} {tags:?}"
        );
        assert_eq!(
            tags.get("Architecture").map(String::as_str),
            Some("x86_64"),
            "{region} {tags:?}"
        );
        let perms = block_on(
            ec2(&moto.endpoint(), region)
                .describe_image_attribute()
                .image_id(out.regions[region].ami.as_str())
                .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
                .send(),
        )
        .unwrap();
        assert!(
            perms
                .launch_permissions()
                .iter()
                .any(|p| p.group() == Some(&aws_sdk_ec2::types::PermissionGroup::All)),
            "{region}: not public"
        );
    }
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    for r in out.regions.values() {
        assert!(summary.contains(&r.ami), "{summary}");
    }

    // Again: everything exists, so nothing is uploaded, imported or copied.
    let before = rec.requests().len();
    let notes = Recording::default();
    let again = ami::publish(&o, &image, &notes).expect("re-run");
    assert!(again.regions.values().all(|r| r.existing), "{again:?}");
    assert_eq!(
        again
            .regions
            .iter()
            .map(|(k, v)| (k.clone(), v.ami.clone()))
            .collect::<Vec<_>>(),
        out.regions
            .iter()
            .map(|(k, v)| (k.clone(), v.ami.clone()))
            .collect::<Vec<_>>()
    );
    let later: Vec<_> = rec.requests()[before..].to_vec();
    let actions: Vec<_> = later.iter().filter_map(Recorded::action).collect();
    for absent in ["ImportSnapshot", "RegisterImage", "CopyImage"] {
        assert!(
            !actions.iter().any(|a| a == absent),
            "{absent} on re-run: {actions:?}"
        );
    }
    assert!(
        !later
            .iter()
            .any(|r| r.method == "PUT" || r.method == "POST" && r.url.contains("uploads")),
        "uploaded on re-run"
    );
    assert!(
        notes.notes().iter().any(|n| n.contains("already exists")),
        "{:?}",
        notes.notes()
    );
    for region in ["us-west-2", "us-east-1", "eu-west-1"] {
        assert_eq!(
            images_named(&moto, region, name).len(),
            1,
            "{region}: duplicated"
        );
    }
}

#[test]
fn a_failed_import_task_fails_clearly_registers_nothing_and_deletes_the_object() {
    let moto = Moto::start();
    let rec = Recorder::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), "bad.raw", 6 * MIB, 2, 4);
    let why = "ClientError: Disk validation failed [Unsupported specified file format]";
    let tasks = vec![task_response("deleted", "0", why, None)];
    let o = canned_import(&moto, &rec, "us-east-2", "bad.raw", "bad-image", tasks);
    let err =
        ami::publish(&o, &image, &Recording::default()).expect_err("a failed import must fail");
    let msg = err.to_string();
    assert!(matches!(err, ami::Error::ImportFailed { .. }), "{msg}");
    assert!(
        msg.contains(TASK) && msg.contains("\"deleted\"") && msg.contains(why),
        "{msg}"
    );
    assert!(rec.ec2_calls("RegisterImage").is_empty());
    assert!(images_named(&moto, "us-east-2", "bad-image").is_empty());
    assert!(
        get_object(&moto.endpoint(), "imports", "bad.raw").is_none(),
        "object left behind"
    );
}

#[test]
fn the_import_wait_is_bounded_and_cancels_the_task() {
    let moto = Moto::start();
    let rec = Recorder::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), "slow.raw", 6 * MIB, 2, 8);
    let tasks = vec![task_response("active", "12", "converting", None)];
    let mut o = canned_import(&moto, &rec, "eu-west-1", "slow.raw", "slow-image", tasks);
    rec.answer(ec2_action("CancelImportTask"), vec![cancel_response()]);
    o.import_timeout_secs = 2;
    let started = std::time::Instant::now();
    let err = ami::publish(&o, &image, &Recording::default()).expect_err("must time out");
    assert!(started.elapsed().as_secs() < 30, "the wait was not bounded");
    let msg = err.to_string();
    assert!(
        matches!(err, ami::Error::Common(Common::Timeout { .. })),
        "{msg}"
    );
    assert!(msg.contains(TASK) && msg.contains("2 s"), "{msg}");
    let cancels = rec.ec2_calls("CancelImportTask");
    assert_eq!(cancels.len(), 1);
    assert_eq!(
        cancels[0].get("ImportTaskId").map(String::as_str),
        Some(TASK)
    );
    assert!(
        get_object(&moto.endpoint(), "imports", "slow.raw").is_none(),
        "object left behind"
    );
}

/// A sparse image over two volume GiB: (c) data in blocks 0, 100-103
/// (unaligned) and the short last block; (b) an allocated block of written
/// zeros at 700, as a file full of zeros leaves it; (a) holes everywhere else.
fn ebs_image(dir: &Path, name: &str) -> (std::path::PathBuf, u64) {
    let size = (1 << 30) + 3 * MIB + 1000;
    let path = dir.join(name);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(size).unwrap();
    let mut noise = Noise::new(99);
    let mut buf = vec![0u8; (3 * BLOCK + 1000) as usize];
    noise.fill(&mut buf);
    f.write_all_at(&buf[..4096], 0).unwrap();
    f.write_all_at(&buf, 100 * BLOCK + 777).unwrap();
    f.write_all_at(&vec![0u8; BLOCK as usize], 700 * BLOCK)
        .unwrap();
    f.write_all_at(b"tail", size - 4).unwrap();
    (path, size)
}

/// The written-zeros block of [`ebs_image`].
const ZERO_BLOCK: i32 = 700;

/// The 512 KiB blocks `indices` of the file, padded.
fn blocks_of(path: &Path, size: u64, indices: &[i32]) -> Vec<(i32, Vec<u8>)> {
    let f = std::fs::File::open(path).unwrap();
    let mut out = Vec::new();
    for &i in indices {
        let mut buf = vec![0u8; BLOCK as usize];
        let offset = i as u64 * BLOCK;
        if offset < size {
            let len = BLOCK.min(size - offset) as usize;
            f.read_exact_at(&mut buf[..len], offset).unwrap();
        }
        out.push((i, buf));
    }
    out
}

/// Block indices of PutSnapshotBlock requests to `snapshot` (all when `None`), sorted.
fn put_indices(rec: &Recorder, snapshot: Option<&str>) -> Vec<i32> {
    let mut sent: Vec<i32> = rec
        .requests()
        .iter()
        .filter(|r| r.method == "PUT" && r.path().contains("/blocks/"))
        .filter(|r| snapshot.is_none_or(|s| r.path().starts_with(&format!("/snapshots/{s}/"))))
        .map(|r| r.path().rsplit('/').next().unwrap().parse().unwrap())
        .collect();
    sent.sort();
    sent
}

/// Block indices moto holds for `snapshot` (ListSnapshotBlocks), sorted.
fn stored_indices(moto: &Moto, region: &str, snapshot: &str) -> Vec<i32> {
    let listed = block_on(
        ebs(&moto.endpoint(), region)
            .list_snapshot_blocks()
            .snapshot_id(snapshot)
            .send(),
    )
    .unwrap();
    let mut stored: Vec<i32> = listed
        .blocks()
        .iter()
        .filter_map(|b| b.block_index())
        .collect();
    stored.sort();
    stored
}

/// The idempotency token pgimg derives (publish/src/ami/mod.rs `client_token`).
fn token(op: &str, image: &Path, name: &str, region: &str) -> String {
    sha256_hex(format!("pgimg/{op}/{}/{name}/{region}", sha256_file_hex(image)).as_bytes())
}

fn b64_sha256(data: &[u8]) -> String {
    use sha2::Digest;
    aws_smithy_types::base64::encode(sha2::Sha256::digest(data))
}

#[test]
fn ebs_direct_writes_allocated_blocks_zeros_included_skips_holes_and_registers_the_snapshot() {
    let moto = Moto::start();
    let rec = Recorder::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let (image, size) = ebs_image(dir.path(), "postgres-ubuntu-2204-arm64-t.raw");
    // (c) data and (b) the allocated zeros; never (a) the holes.
    let indices = vec![0, 100, 101, 102, 103, ZERO_BLOCK, (size / BLOCK) as i32];
    let expected = blocks_of(&image, size, &indices);
    assert!(
        expected[5].1.iter().all(|&b| b == 0),
        "fixture: block {ZERO_BLOCK} is zeros"
    );
    let name = "postgres-ubuntu-2204-arm64-t";
    let o = options(&rec, "ap-southeast-2", name, Arch::Arm64, Via::EbsDirect);
    let out = ami::publish(&o, &image, &Recording::default()).expect("publish");
    let home = &out.regions["ap-southeast-2"];
    let snap = home.snapshot.clone().expect("snapshot id");

    let reqs = rec.requests();
    let start = reqs
        .iter()
        .find(|r| r.method == "POST" && r.path() == "/snapshots")
        .expect("StartSnapshot");
    let start: serde_json::Value = serde_json::from_slice(&start.body).unwrap();
    assert_eq!(start["VolumeSize"], 2, "1 GiB + 3 MiB rounds up to 2 GiB");
    assert_eq!(start["Timeout"], 60);
    assert_eq!(
        start["ClientToken"],
        token("StartSnapshot", &image, name, "ap-southeast-2").as_str()
    );
    assert!(
        start.get("Encrypted").is_none() && start.get("ParentSnapshotId").is_none(),
        "{start}"
    );
    let tags: HashMap<String, String> = start["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["Key"].as_str().unwrap().to_string(),
                t["Value"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(tags.get("Architecture").map(String::as_str), Some("arm64"));
    assert_eq!(tags.get("Name").map(String::as_str), Some(name));

    // Every allocated block once, nothing else, each with its own checksum.
    let puts: Vec<_> = reqs
        .iter()
        .filter(|r| r.method == "PUT" && r.path().contains("/blocks/"))
        .collect();
    assert_eq!(put_indices(&rec, None), indices);
    for r in &puts {
        assert!(
            r.path().starts_with(&format!("/snapshots/{snap}/blocks/")),
            "{}",
            r.url
        );
        let idx: i32 = r.path().rsplit('/').next().unwrap().parse().unwrap();
        let want = &expected.iter().find(|b| b.0 == idx).unwrap().1;
        assert!(r.body == *want, "block {idx} body differs from the image");
        assert_eq!(r.header("x-amz-data-length"), Some("524288"));
        assert_eq!(r.header("x-amz-checksum-algorithm"), Some("SHA256"));
        assert_eq!(
            r.header("x-amz-checksum"),
            Some(b64_sha256(want).as_str()),
            "block {idx}"
        );
    }
    // moto's copy of the blocks, read back through the EBS API.
    let client = ebs(&moto.endpoint(), "ap-southeast-2");
    assert_eq!(stored_indices(&moto, "ap-southeast-2", &snap), indices);
    for (idx, want) in &expected {
        let got = block_on(async {
            let b = client
                .get_snapshot_block()
                .snapshot_id(&snap)
                .block_index(*idx)
                .block_token("unused-by-moto")
                .send()
                .await
                .unwrap();
            b.block_data.collect().await.unwrap().into_bytes().to_vec()
        });
        assert!(got == *want, "stored block {idx} differs");
    }
    // CompleteSnapshot: moto ignores count and checksum; check them as sent.
    let complete = reqs
        .iter()
        .find(|r| r.path() == format!("/snapshots/completion/{snap}"))
        .expect("CompleteSnapshot");
    assert_eq!(
        complete.header("x-amz-changedblockscount"),
        Some(indices.len().to_string().as_str())
    );
    let mut digests = Vec::new();
    for (_, data) in &expected {
        use sha2::Digest;
        digests.extend(sha2::Sha256::digest(data));
    }
    assert_eq!(
        complete.header("x-amz-checksum"),
        Some(b64_sha256(&digests).as_str())
    );
    assert_eq!(complete.header("x-amz-checksum-algorithm"), Some("SHA256"));
    assert_eq!(
        complete.header("x-amz-checksum-aggregation-method"),
        Some("LINEAR")
    );

    let reg = &rec.ec2_calls("RegisterImage")[0];
    assert_eq!(reg.get("Architecture").map(String::as_str), Some("arm64"));
    assert_eq!(reg.get("BlockDeviceMapping.1.Ebs.SnapshotId"), Some(&snap));
    assert_eq!(
        reg.get("BlockDeviceMapping.1.Ebs.VolumeSize")
            .map(String::as_str),
        Some("2")
    );
    let tagged = rec.ec2_calls("CreateTags");
    assert!(
        tagged
            .iter()
            .any(|t| t.get("ResourceId.2") == Some(&snap) || t.get("ResourceId.1") == Some(&snap)),
        "snapshot not tagged: {tagged:?}"
    );
    assert_eq!(
        query_tags(&tagged[0], "Tag")
            .get("Source")
            .map(String::as_str),
        Some("postgres-ubuntu-2204-arm64-t.raw")
    );
    assert_eq!(images_named(&moto, "ap-southeast-2", name).len(), 1);
}

#[test]
fn an_ebs_block_failure_deletes_the_half_written_snapshot_and_registers_nothing() {
    let moto = Moto::start();
    let rec = Recorder::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = ebs_image(dir.path(), "broken.raw");
    rec.answer(
        |r: &Recorded| r.method == "PUT" && r.path().ends_with("/blocks/101"),
        vec![Canned::json_error(
            400,
            "ValidationException",
            "The checksum does not match",
        )],
    );
    let o = options(
        &rec,
        "us-east-1",
        "broken-image",
        Arch::X86_64,
        Via::EbsDirect,
    );
    let err =
        ami::publish(&o, &image, &Recording::default()).expect_err("a rejected block must fail");
    let msg = err.to_string();
    assert!(
        msg.contains("PutSnapshotBlock")
            && msg.contains("block 101")
            && msg.contains("checksum does not match"),
        "{msg}"
    );
    let puts_101 = rec
        .requests()
        .iter()
        .filter(|r| r.path().ends_with("/blocks/101"))
        .count();
    assert_eq!(puts_101, 1, "a 400 is not retried");
    let started = rec
        .requests()
        .iter()
        .find(|r| r.path() == "/snapshots")
        .is_some();
    assert!(started);
    let deleted = rec.ec2_calls("DeleteSnapshot");
    assert_eq!(deleted.len(), 1, "the snapshot is deleted");
    let snap = deleted[0]["SnapshotId"].clone();
    let left = block_on(
        ec2(&moto.endpoint(), "us-east-1")
            .describe_snapshots()
            .owner_ids("self")
            .send(),
    )
    .unwrap();
    assert!(
        left.snapshots()
            .iter()
            .all(|s| s.snapshot_id() != Some(snap.as_str())),
        "{snap} still exists"
    );
    assert!(rec.ec2_calls("RegisterImage").is_empty());
    assert!(images_named(&moto, "us-east-1", "broken-image").is_empty());
}

#[test]
fn skip_zero_blocks_leaves_out_the_written_zeros_too() {
    let moto = Moto::start();
    let rec = Recorder::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let (image, size) = ebs_image(dir.path(), "zeros-skipped.raw");
    let mut o = options(
        &rec,
        "us-east-1",
        "zeros-skipped",
        Arch::X86_64,
        Via::EbsDirect,
    );
    o.skip_zero_blocks = true;
    let out = ami::publish(&o, &image, &Recording::default()).expect("publish");
    let snap = out.regions["us-east-1"].snapshot.clone().unwrap();
    let indices = vec![0, 100, 101, 102, 103, (size / BLOCK) as i32];
    assert_eq!(put_indices(&rec, Some(&snap)), indices);
    assert_eq!(stored_indices(&moto, "us-east-1", &snap), indices);
}

/// AWS's EnableImageDeprecation response (moto 5.2 lacks the call).
fn deprecation_response() -> Canned {
    Canned::xml(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<EnableImageDeprecationResponse xmlns="http://ec2.amazonaws.com/doc/2016-11-15/">
    <requestId>11111111-2222-3333-4444-555555555555</requestId>
    <return>true</return>
</EnableImageDeprecationResponse>"#,
    )
}

#[test]
fn a_parent_snapshot_is_linked_and_its_blocks_the_image_leaves_empty_are_zeroed() {
    let moto = Moto::start();
    let rec = Recorder::start(moto.port);
    let dir = tempfile::tempdir().unwrap();
    let (first, size) = ebs_image(dir.path(), "release-1.raw");
    let o = options(
        &rec,
        "eu-central-1",
        "release-1",
        Arch::X86_64,
        Via::EbsDirect,
    );
    let parent = ami::publish(&o, &first, &Recording::default())
        .expect("first")
        .regions["eu-central-1"]
        .snapshot
        .clone()
        .unwrap();
    // The next release: block 100-103's data is gone (a hole), block 5 is new.
    let second = dir.path().join("release-2.raw");
    let f = std::fs::File::create(&second).unwrap();
    f.set_len(size).unwrap();
    let mut data = vec![0u8; 4096];
    Noise::new(5).fill(&mut data);
    f.write_all_at(&data, 0).unwrap();
    f.write_all_at(&data, 5 * BLOCK).unwrap();
    f.write_all_at(b"tail", size - 4).unwrap();
    drop(f);
    let mut o = options(
        &rec,
        "eu-central-1",
        "release-2",
        Arch::X86_64,
        Via::EbsDirect,
    );
    o.parent_snapshot = Some(parent.clone());
    let out = ami::publish(&o, &second, &Recording::default()).expect("second");
    let snap = out.regions["eu-central-1"].snapshot.clone().unwrap();

    let start: serde_json::Value = serde_json::from_slice(
        &rec.requests()
            .iter()
            .filter(|r| r.method == "POST" && r.path() == "/snapshots")
            .nth(1)
            .expect("second StartSnapshot")
            .body,
    )
    .unwrap();
    assert_eq!(start["ParentSnapshotId"], parent.as_str());
    // The parent's blocks are read to find what must be overwritten.
    assert!(rec
        .requests()
        .iter()
        .any(|r| r.method == "GET" && r.path() == format!("/snapshots/{parent}/blocks")));
    let last = (size / BLOCK) as i32;
    // Data (0, 5, last), and the parent's blocks 100-103 and 700 as zeros.
    let want = vec![0, 5, 100, 101, 102, 103, ZERO_BLOCK, last];
    assert_eq!(put_indices(&rec, Some(&snap)), want);
    for r in rec.requests().iter().filter(|r| {
        r.method == "PUT" && r.path().starts_with(&format!("/snapshots/{snap}/blocks/"))
    }) {
        let idx: i32 = r.path().rsplit('/').next().unwrap().parse().unwrap();
        let zeros = r.body.iter().all(|&b| b == 0);
        assert_eq!(
            zeros,
            [100, 101, 102, 103, ZERO_BLOCK].contains(&idx),
            "block {idx}"
        );
    }
}

const KEY_HOME: &str =
    "arn:aws:kms:us-east-1:123456789012:key/11111111-2222-3333-4444-555555555555";
const KEY_EU: &str = "arn:aws:kms:eu-west-1:123456789012:key/66666666-7777-8888-9999-000000000000";
const ORG: &str = "arn:aws:organizations::123456789012:organization/o-abcdefghij";
const ACCOUNT: &str = "111122223333";

#[test]
fn ami_options_encrypt_share_deprecate_and_every_region_gets_them() {
    let moto = Moto::start();
    let rec = Recorder::start(moto.port);
    rec.answer(
        ec2_action("EnableImageDeprecation"),
        vec![deprecation_response()],
    );
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = ebs_image(dir.path(), "secure.raw");
    let name = "postgres-secure-20260115";
    let mut o = options(&rec, "us-east-1", name, Arch::X86_64, Via::EbsDirect);
    o.copy_to = vec!["eu-west-1".into(), "us-west-2".into()];
    o.kms_key_id = Some(KEY_HOME.into());
    o.kms_keys.insert("eu-west-1".into(), KEY_EU.into());
    o.share_with = vec![ACCOUNT.into()];
    o.share_with_org = vec![ORG.into()];
    o.deprecate_at = Some("2027-01-15T00:00:00Z".into());
    o.imds_support = Some(ami::ImdsSupport::V2_0);
    o.boot_mode = Some(ami::BootMode::Uefi);
    o.tpm_support = Some(ami::TpmSupport::V2_0);
    let out = ami::publish(&o, &image, &Recording::default()).expect("publish");
    assert_eq!(out.regions.len(), 3);

    // Recorded: what moto ignores.
    let start: serde_json::Value = serde_json::from_slice(
        &rec.requests()
            .iter()
            .find(|r| r.method == "POST" && r.path() == "/snapshots")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(start["Encrypted"], true);
    assert_eq!(start["KmsKeyArn"], KEY_HOME);
    let reg = &rec.ec2_calls("RegisterImage")[0];
    for (k, v) in [
        ("BootMode", "uefi"),
        ("ImdsSupport", "v2.0"),
        ("TpmSupport", "v2.0"),
    ] {
        assert_eq!(reg.get(k).map(String::as_str), Some(v), "{k}: {reg:?}");
    }
    let copies = rec.ec2_calls("CopyImage");
    assert_eq!(copies.len(), 2);
    for c in &copies {
        let region = if c.get("KmsKeyId").map(String::as_str) == Some(KEY_EU) {
            "eu-west-1"
        } else {
            assert_eq!(c.get("KmsKeyId").map(String::as_str), Some(KEY_HOME));
            "us-west-2"
        };
        assert_eq!(c.get("Encrypted").map(String::as_str), Some("true"));
        assert_eq!(
            c.get("ClientToken"),
            Some(&token("CopyImage", &image, name, region)),
            "{region}"
        );
    }
    let deprecations = rec.ec2_calls("EnableImageDeprecation");
    assert_eq!(deprecations.len(), 3);
    let deprecated: BTreeSet<_> = deprecations
        .iter()
        .map(|d| {
            assert_eq!(
                d.get("DeprecateAt").map(String::as_str),
                Some("2027-01-15T00:00:00Z")
            );
            d["ImageId"].clone()
        })
        .collect();
    let amis: BTreeSet<_> = out.regions.values().map(|r| r.ami.clone()).collect();
    assert_eq!(deprecated, amis);

    // Kept by moto: launch permissions and snapshot permissions, per region.
    for (region, img) in &out.regions {
        let c = ec2(&moto.endpoint(), region);
        let perms = block_on(
            c.describe_image_attribute()
                .image_id(&img.ami)
                .attribute(aws_sdk_ec2::types::ImageAttributeName::LaunchPermission)
                .send(),
        )
        .unwrap();
        let perms = perms.launch_permissions();
        assert!(
            perms.iter().any(|p| p.user_id() == Some(ACCOUNT)),
            "{region}: {perms:?}"
        );
        assert!(
            perms.iter().any(|p| p.organization_arn() == Some(ORG)),
            "{region}: {perms:?}"
        );
        assert!(
            !perms
                .iter()
                .any(|p| p.group() == Some(&aws_sdk_ec2::types::PermissionGroup::All)),
            "{region}: public"
        );
        let snap = img.snapshot.as_deref().expect("snapshot");
        let volume_perms = block_on(
            c.describe_snapshot_attribute()
                .snapshot_id(snap)
                .attribute(aws_sdk_ec2::types::SnapshotAttributeName::CreateVolumePermission)
                .send(),
        )
        .unwrap();
        assert!(
            volume_perms
                .create_volume_permissions()
                .iter()
                .any(|p| p.user_id() == Some(ACCOUNT)),
            "{region}: snapshot {snap} not shared"
        );
    }
}

#[test]
fn a_rerun_after_a_failed_copy_resumes_with_the_same_tokens_and_duplicates_nothing() {
    let moto = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    let (image, _) = ebs_image(dir.path(), "resume.raw");
    let name = "postgres-resume-20260115";
    let in_region = |region: &'static str| {
        move |r: &Recorded| {
            r.action().as_deref() == Some("CopyImage")
                && r.header("authorization")
                    .is_some_and(|a| a.contains(&format!("/{region}/ec2/")))
        }
    };
    let first = {
        let rec = Recorder::start(moto.port);
        rec.answer(
            in_region("ap-northeast-1"),
            vec![Canned {
                status: 400,
                headers: vec![("Content-Type".into(), "text/xml".into())],
                body: "<Response><Errors><Error><Code>InvalidParameterValue</Code>\
                       <Message>copy refused for the test</Message></Error></Errors>\
                       <RequestID>r</RequestID></Response>"
                    .into(),
            }],
        );
        let mut o = options(&rec, "us-east-2", name, Arch::X86_64, Via::EbsDirect);
        o.copy_to = vec!["ap-northeast-1".into(), "sa-east-1".into()];
        let err = ami::publish(&o, &image, &Recording::default()).expect_err("copy fails");
        assert!(
            err.to_string().contains("copy refused for the test"),
            "{err}"
        );
        rec.ec2_calls("CopyImage")
    };
    let rec = Recorder::start(moto.port);
    let mut o = options(&rec, "us-east-2", name, Arch::X86_64, Via::EbsDirect);
    o.copy_to = vec!["ap-northeast-1".into(), "sa-east-1".into()];
    let out = ami::publish(&o, &image, &Recording::default()).expect("re-run");
    assert!(out.regions["us-east-2"].existing, "home AMI reused");
    assert!(
        !rec.requests().iter().any(|r| r.path() == "/snapshots"),
        "no second snapshot"
    );
    let second = rec.ec2_calls("CopyImage");
    let token_of = |calls: &[HashMap<String, String>], region: &str| {
        calls
            .iter()
            .map(|c| c["ClientToken"].clone())
            .find(|t| *t == token("CopyImage", &image, name, region))
    };
    // The failed region is copied now with the token it was first asked
    // with; the region that had succeeded is found by name, not copied again.
    assert!(token_of(&first, "ap-northeast-1").is_some());
    assert!(token_of(&second, "ap-northeast-1").is_some());
    assert!(token_of(&second, "sa-east-1").is_none(), "{second:?}");
    for region in ["us-east-2", "ap-northeast-1", "sa-east-1"] {
        assert_eq!(images_named(&moto, region, name).len(), 1, "{region}");
    }
}

#[test]
fn public_with_a_kms_key_and_tpm_without_uefi_are_refused_before_any_call() {
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), "x.raw", MIB, 1, 1);
    let mut o = AmiOptions::new("us-east-1", "refused-image", Arch::X86_64);
    o.via = Via::EbsDirect;
    o.conn.endpoint = Some("http://127.0.0.1:9".into());
    o.public = true;
    o.kms_key_id = Some(KEY_HOME.into());
    let err = ami::publish(&o, &image, &Recording::default()).unwrap_err();
    assert!(
        matches!(err, ami::Error::Common(Common::Invalid(ref m)) if m.contains("public")),
        "{err}"
    );
    o.public = false;
    o.skip_zero_blocks = true;
    let err = ami::publish(&o, &image, &Recording::default()).unwrap_err();
    assert!(
        matches!(err, ami::Error::Common(Common::Invalid(ref m)) if m.contains("corrupt")),
        "{err}"
    );
    o.skip_zero_blocks = false;
    o.tpm_support = Some(ami::TpmSupport::V2_0);
    let err = ami::publish(&o, &image, &Recording::default()).unwrap_err();
    assert!(
        matches!(err, ami::Error::Common(Common::Invalid(ref m)) if m.contains("uefi")),
        "{err}"
    );
    o.tpm_support = None;
    o.share_with = vec!["12345".into()];
    let err = ami::publish(&o, &image, &Recording::default()).unwrap_err();
    assert!(
        matches!(err, ami::Error::Common(Common::Invalid(ref m)) if m.contains("12-digit")),
        "{err}"
    );
}
