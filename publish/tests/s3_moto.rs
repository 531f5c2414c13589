//! `publish s3` against a real moto server on 127.0.0.1: multipart, sidecar, re-runs, aborts, secrets.

mod common;

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use common::*;
use pgimg_publish::progress::Quiet;
use pgimg_publish::s3::{self, S3Options};

const MIB: u64 = 1 << 20;

fn options(moto: &Moto, bucket: &str) -> S3Options {
    let mut o = S3Options::new(bucket);
    o.region = Some("us-east-1".into());
    o.conn.endpoint = Some(moto.endpoint());
    o.conn.path_style = true;
    o
}

fn head(
    moto: &Moto,
    bucket: &str,
    key: &str,
) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
    block_on(
        s3_client(&moto.endpoint())
            .head_object()
            .bucket(bucket)
            .key(key)
            .send(),
    )
    .expect("HeadObject")
}

/// A moto server with an empty `bucket`, and a [`sparse_image`] `name` in a
/// new folder.
fn bucket_and_image(
    bucket: &str,
    name: &str,
    size: u64,
    regions: usize,
    seed: u64,
) -> (Moto, tempfile::TempDir, std::path::PathBuf) {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), bucket);
    let dir = tempfile::tempdir().unwrap();
    let image = sparse_image(dir.path(), name, size, regions, seed);
    (moto, dir, image)
}

#[test]
fn multipart_upload_of_300_mib_round_trips_with_its_sidecar_and_reruns_upload_nothing() {
    let name = "postgres-ubuntu-2204-x64-test.raw";
    let (moto, dir, image) = bucket_and_image("images", name, 300 * MIB, 40, 7);
    let sha = sha256_file_hex(&image);
    let mut opts = options(&moto, "images");
    opts.part_size = 16 * MIB;
    opts.step_summary = Some(dir.path().join("summary.md"));

    let first = s3::publish(&opts, &image, &Quiet).expect("first upload");
    assert!(first.uploaded && first.sidecar_uploaded, "{first:?}");
    assert_eq!(first.parts, 19, "300 MiB in 16 MiB parts");
    assert_eq!(
        (first.size, first.sha256.as_str(), first.key.as_str()),
        (300 * MIB, sha.as_str(), name)
    );
    let body = get_object(&moto.endpoint(), "images", name).expect("object exists");
    assert_eq!(body.len() as u64, 300 * MIB);
    assert_eq!(
        sha256_hex(&body),
        sha,
        "downloaded object differs from the image"
    );
    drop(body);
    let h = head(&moto, "images", name);
    assert_eq!(h.metadata().and_then(|m| m.get("sha256")), Some(&sha));
    let sidecar =
        get_object(&moto.endpoint(), "images", &format!("{name}.sha256")).expect("sidecar");
    assert_eq!(
        String::from_utf8(sidecar).unwrap(),
        format!("{sha}  {name}\n")
    );
    assert!(multipart_uploads(&moto.endpoint(), "images").is_empty());
    let summary = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(
        summary.contains(&sha) && summary.contains("300.00 MiB") && summary.contains("19 part(s)"),
        "{summary}"
    );

    // Same file again: nothing is uploaded, and the run says so.
    let rec = Recording::default();
    let again = s3::publish(&opts, &image, &rec).expect("re-run");
    assert!(
        !again.uploaded && !again.sidecar_uploaded && again.parts == 0,
        "{again:?}"
    );
    assert!(
        rec.notes()
            .iter()
            .any(|n| n.contains("nothing uploaded") && n.contains(&sha)),
        "{:?}",
        rec.notes()
    );
    let h2 = head(&moto, "images", name);
    assert_eq!(
        (h2.e_tag(), h2.last_modified()),
        (h.e_tag(), h.last_modified()),
        "object rewritten"
    );

    // A lost sidecar is restored without re-uploading the image.
    block_on(
        s3_client(&moto.endpoint())
            .delete_object()
            .bucket("images")
            .key(format!("{name}.sha256"))
            .send(),
    )
    .unwrap();
    let restored = s3::publish(&opts, &image, &Quiet).unwrap();
    assert!(
        !restored.uploaded && restored.sidecar_uploaded,
        "{restored:?}"
    );

    // A changed image is uploaded again.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .write_all_at(b"changed", 5 * MIB)
        .unwrap();
    let changed = s3::publish(&opts, &image, &Quiet).unwrap();
    assert!(changed.uploaded && changed.sha256 != sha, "{changed:?}");
    let sidecar = get_object(&moto.endpoint(), "images", &format!("{name}.sha256")).unwrap();
    assert!(String::from_utf8(sidecar)
        .unwrap()
        .starts_with(&changed.sha256));
}

#[test]
fn an_object_uploaded_by_another_tool_is_recognised_by_its_sidecar() {
    let (moto, _dir, image) = bucket_and_image("legacy", "old.raw", 6 * MIB, 3, 11);
    let data = std::fs::read(&image).unwrap();
    let sha = sha256_hex(&data);
    // What `mc cp` left: the object without metadata, and the sidecar.
    put_object(&moto.endpoint(), "legacy", "old.raw", data);
    let sidecar = format!("{sha}  old.raw\n");
    put_object(&moto.endpoint(), "legacy", "old.raw.sha256", sidecar);
    let rec = Recording::default();
    let out = s3::publish(&options(&moto, "legacy"), &image, &rec).unwrap();
    assert!(!out.uploaded && !out.sidecar_uploaded, "{out:?}");
    assert!(
        rec.notes().iter().any(|n| n.contains("sidecar")),
        "{:?}",
        rec.notes()
    );

    // A sidecar that disagrees means a different image: upload.
    let sidecar = format!("{}  old.raw\n", "0".repeat(64));
    put_object(&moto.endpoint(), "legacy", "old.raw.sha256", sidecar);
    let out = s3::publish(&options(&moto, "legacy"), &image, &Quiet).unwrap();
    assert!(out.uploaded, "{out:?}");
}

#[test]
fn an_image_that_shrinks_mid_upload_aborts_and_leaves_no_multipart_upload() {
    let (moto, _dir, image) = bucket_and_image("shrink", "shrink.raw", 160 * MIB, 20, 3);
    let mut opts = options(&moto, "shrink");
    opts.part_size = 8 * MIB;
    opts.concurrency = 2;
    let cut = AtomicBool::new(false);
    let path = image.clone();
    let rec = Recording {
        // After two parts are in, the file loses everything past 24 MiB:
        // later parts cannot be read, as when the image is rebuilt meanwhile.
        on_advance: Some(Box::new(move |label, pos| {
            if label == "uploading" && pos >= 16 * MIB && !cut.swap(true, Ordering::SeqCst) {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .unwrap()
                    .set_len(24 * MIB)
                    .unwrap();
            }
        })),
        ..Default::default()
    };
    let err = s3::publish(&opts, &image, &rec).expect_err("upload of a shrinking file must fail");
    let msg = err.to_string();
    assert!(matches!(err, s3::Error::Aborted { .. }), "{msg}");
    assert!(
        msg.contains("shrink.raw") && msg.contains("file ended") && msg.contains("aborted"),
        "{msg}"
    );
    assert!(
        multipart_uploads(&moto.endpoint(), "shrink").is_empty(),
        "a multipart upload was left behind"
    );
    assert!(get_object(&moto.endpoint(), "shrink", "shrink.raw").is_none());
    assert!(get_object(&moto.endpoint(), "shrink", "shrink.raw.sha256").is_none());
}
