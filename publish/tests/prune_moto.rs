//! `prune` against a real moto server on 127.0.0.1: AMIs with their snapshots
//! in two regions, S3 objects with their `.sha256` sidecars.

mod common;

use std::collections::BTreeSet;

use common::*;
use pgimg_publish::prune::{self, PruneOptions};

const PREFIX: &str = "postgres-x64-";
const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];

fn ec2(endpoint: &str, region: &str) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&sdk_config(endpoint, region))
}

fn release(i: u32) -> String {
    format!("{PREFIX}2026010{i}")
}

/// Registers an AMI (moto gives each a snapshot of its own) and returns its
/// id and snapshot.
fn register(moto: &Moto, region: &str, name: &str) -> (String, String) {
    let c = ec2(&moto.endpoint(), region);
    block_on(async {
        let ami = c
            .register_image()
            .name(name)
            .send()
            .await
            .unwrap()
            .image_id()
            .unwrap()
            .to_string();
        let described = c.describe_images().image_ids(&ami).send().await.unwrap();
        let snap = described.images()[0].block_device_mappings()[0]
            .ebs()
            .unwrap()
            .snapshot_id()
            .unwrap()
            .to_string();
        (ami, snap)
    })
}

/// Names of the AMIs and ids of the snapshots this account owns in `region`.
fn owned(moto: &Moto, region: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let c = ec2(&moto.endpoint(), region);
    block_on(async {
        let images = c.describe_images().owners("self").send().await.unwrap();
        let snapshots = c
            .describe_snapshots()
            .owner_ids("self")
            .send()
            .await
            .unwrap();
        (
            images
                .images()
                .iter()
                .map(|i| i.name().unwrap_or_default().to_string())
                .collect(),
            snapshots
                .snapshots()
                .iter()
                .map(|s| s.snapshot_id().unwrap_or_default().to_string())
                .collect(),
        )
    })
}

fn keys(moto: &Moto) -> BTreeSet<String> {
    let out = block_on(
        s3_client(&moto.endpoint())
            .list_objects_v2()
            .bucket("images")
            .send(),
    )
    .unwrap();
    out.contents()
        .iter()
        .map(|o| o.key().unwrap_or_default().to_string())
        .collect()
}

fn put(moto: &Moto, key: &str, body: &str) {
    put_object(&moto.endpoint(), "images", key, body);
}

#[test]
fn prune_keeps_the_newest_two_of_five_deletes_the_rest_with_snapshots_and_sidecars() {
    let moto = Moto::start();
    create_bucket(&moto.endpoint(), "images");
    // (region, name) → snapshot, for the five releases in each region.
    let mut snaps = std::collections::BTreeMap::new();
    for i in 1..=5 {
        for region in REGIONS {
            let (_, snap) = register(&moto, region, &release(i));
            snaps.insert((region, i), snap);
        }
        put(&moto, &format!("images/{}.raw", release(i)), "image");
        put(
            &moto,
            &format!("images/{}.raw.sha256", release(i)),
            "sha  image\n",
        );
    }
    // Not ours to touch: another prefix, and the prefix outside the folder.
    let (_, other_snap) = register(&moto, "us-east-1", "postgres-arm64-20260101");
    put(&moto, "images/postgres-arm64-20260101.raw", "other");
    put(&moto, "images/postgres-arm64-20260101.raw.sha256", "other");
    put(&moto, &format!("{}.raw", release(1)), "outside the folder");
    let all_keys = keys(&moto);
    let before: Vec<_> = REGIONS.iter().map(|r| owned(&moto, r)).collect();

    let mut o = PruneOptions::new(PREFIX);
    o.keep = Some(2);
    o.regions = REGIONS.iter().map(|r| r.to_string()).collect();
    o.bucket = Some("images".into());
    o.key_prefix = "images/".into();
    o.conn.endpoint = Some(moto.endpoint());
    o.conn.path_style = true;
    o.s3_region = Some("us-east-1".into());

    let dry = prune::prune(&o, &Recording::default()).expect("dry run");
    assert!(dry.dry_run);
    let listed = |kind: &str, place: &str| -> Vec<String> {
        dry.delete
            .iter()
            .filter(|r| r.kind == kind && r.place == place)
            .map(|r| r.name.clone())
            .collect()
    };
    let oldest: Vec<String> = [3, 2, 1].map(release).to_vec();
    for region in REGIONS {
        assert_eq!(listed("ami", region), oldest, "{region}");
    }
    assert_eq!(
        listed("object", "images"),
        oldest
            .iter()
            .map(|n| format!("{n}.raw"))
            .collect::<Vec<_>>()
    );
    assert_eq!(dry.keep.len(), 6, "{:?}", dry.keep);
    let object = dry.delete.iter().find(|r| r.kind == "object").unwrap();
    assert_eq!(object.with, [format!("{}.sha256", object.id)]);
    let ami = dry
        .delete
        .iter()
        .find(|r| r.kind == "ami" && r.place == "us-east-1" && r.name == release(1))
        .unwrap();
    assert_eq!(ami.with, [snaps[&("us-east-1", 1)].clone()]);
    // The dry run deleted nothing.
    assert_eq!(keys(&moto), all_keys);
    for (i, region) in REGIONS.iter().enumerate() {
        assert_eq!(owned(&moto, region), before[i]);
    }

    o.delete = true;
    let done = prune::prune(&o, &Recording::default()).expect("delete");
    assert!(!done.dry_run);
    assert_eq!(done.delete, dry.delete, "deletes what the dry run listed");
    for (i, region) in REGIONS.iter().enumerate() {
        let gone: BTreeSet<String> = oldest.iter().cloned().collect();
        let (left, snaps_left) = owned(&moto, region);
        assert_eq!(
            left,
            before[i].0.difference(&gone).cloned().collect(),
            "{region}"
        );
        for n in 1..=5 {
            let snap = &snaps[&(*region, n)];
            assert_eq!(
                snaps_left.contains(snap),
                n >= 4,
                "{region} release {n}: {snap}"
            );
        }
        assert_eq!(
            before[i].1.len() - snaps_left.len(),
            3,
            "{region}: only the three releases' snapshots are deleted"
        );
    }
    let (amis, snapshots) = owned(&moto, "us-east-1");
    assert!(amis.contains("postgres-arm64-20260101"));
    assert!(snapshots.contains(&other_snap));
    let mut want = all_keys.clone();
    for n in &oldest {
        want.remove(&format!("images/{n}.raw"));
        want.remove(&format!("images/{n}.raw.sha256"));
    }
    assert_eq!(keys(&moto), want);
    assert!(want.contains(&format!("{}.raw", release(1))));
}
