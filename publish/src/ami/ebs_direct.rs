//! Snapshot by EBS direct APIs: StartSnapshot, PutSnapshotBlock for each allocated 512 KiB block, CompleteSnapshot.
//!
//! Only the holes of the image file are left out. A block of zeros that a
//! file really contains is written: in an encrypted snapshot a block never
//! written does not read back as zeros (awslabs/coldsnap#395), so skipping
//! by content is the explicit opt-in `skip_zero_blocks`.

use std::collections::BTreeMap;
use std::fs::File;

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Status, Tag};
use aws_sdk_ec2::types::SnapshotState;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::{register, Ctx, Error};
use crate::conn::data_plane;
use crate::error::CommonError;
use crate::hash;
pub(super) use crate::holes::data_ranges;
use crate::progress::{Progress, Unit};
use crate::retry::{retry, sdk_retryable, Backoff};
use crate::rt::{Interrupt, Wait};

/// EBS's only block size.
pub(super) const BLOCK: u64 = 512 * 1024;
/// How long AWS keeps a started snapshot pending without a new block before
/// failing it; bounds what a killed run leaves behind.
const SNAPSHOT_TIMEOUT_MINUTES: i32 = 60;

/// Writes the image into a new snapshot and returns its id once EC2 reports
/// it completed. On any failure or interrupt the snapshot is deleted.
pub(super) async fn snapshot(
    ctx: &Ctx<'_>,
    progress: &dyn Progress,
    interrupt: Interrupt,
) -> Result<String, Error> {
    let ebs = aws_sdk_ebs::Client::new(&ctx.home);
    let ec2 = aws_sdk_ec2::Client::new(&ctx.home);
    let tags: Vec<Tag> = ctx
        .tags()
        .into_iter()
        .map(|(k, v)| Tag::builder().key(k).value(v).build())
        .collect();
    let parent = match &ctx.opts.parent_snapshot {
        Some(parent) => Some(parent_blocks(&ebs, parent).await?),
        None => None,
    };
    let token = ctx
        .token("StartSnapshot", &ctx.opts.region, progress)
        .await?;
    let mut started = start(ctx, &ebs, tags.clone(), &token).await?;
    if started.status() != Some(&Status::Pending) {
        // The token names a snapshot an earlier run completed or gave up on
        // (and deleted); only a pending one can take blocks, so start afresh.
        let retry_token = client_token_again(&token);
        progress.note(&format!(
            "snapshot {} of an earlier run is {:?}; starting a new one",
            started.snapshot_id().unwrap_or_default(),
            started.status().map(|s| s.as_str()).unwrap_or("unknown")
        ));
        started = start(ctx, &ebs, tags, &retry_token).await?;
    }
    let id = started.snapshot_id().unwrap_or_default().to_string();
    if id.is_empty() {
        return Err(Error::api_message(
            "StartSnapshot",
            ctx.opts.name.clone(),
            "the response has no snapshot id".into(),
        ));
    }
    // EBS has one block size; the response's BlockSize is not trusted over it
    // (moto reports 512, which would mean a thousand times the requests).
    if let Some(reported) = started.block_size().filter(|&b| b as u64 != BLOCK) {
        progress.note(&format!(
            "StartSnapshot reported block size {reported}; using EBS's {BLOCK}"
        ));
    }
    let block = BLOCK;
    progress.note(&format!("writing snapshot {id} with the EBS direct APIs"));
    let mut stop = interrupt.clone();
    let result = async {
        let written = tokio::select! {
            r = put_blocks(ctx, &ebs, &id, block, parent.as_ref(), progress) => r?,
            signal = stop.wait() => return Err(Error::interrupted(signal)),
        };
        complete(&ebs, &id, &written).await?;
        wait_completed(ctx, &ec2, &id, progress, interrupt).await
    }
    .await;
    match result {
        Ok(()) => Ok(id),
        Err(e) => {
            let cleanup = register::delete_snapshot(&ec2, &id).await.err();
            Err(e.with_cleanup(cleanup))
        }
    }
}

/// StartSnapshot for the image's volume: tagged, bounded, encrypted with the
/// home region's KMS key when one is set, continuing `parent_snapshot` when
/// given, idempotent under `token`.
async fn start(
    ctx: &Ctx<'_>,
    ebs: &aws_sdk_ebs::Client,
    tags: Vec<Tag>,
    token: &str,
) -> Result<aws_sdk_ebs::operation::start_snapshot::StartSnapshotOutput, Error> {
    let key = ctx.opts.kms_key_for(&ctx.opts.region);
    ebs.start_snapshot()
        .volume_size(ctx.volume_gib() as i64)
        .description(ctx.description())
        .set_tags(Some(tags))
        .timeout(SNAPSHOT_TIMEOUT_MINUTES)
        .client_token(token)
        .set_parent_snapshot_id(ctx.opts.parent_snapshot.clone())
        .set_encrypted(key.map(|_| true))
        .set_kms_key_arn(key.map(str::to_string))
        .send()
        .await
        .map_err(|e| {
            Error::api(
                "StartSnapshot",
                format!("{} GiB for {:?}", ctx.volume_gib(), ctx.opts.name),
                &e,
            )
        })
}

/// A token for a second start: distinct from `token`, and from every
/// earlier second start (the time is part of it).
fn client_token_again(token: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    hash::hex(&hash::digest(format!("{token}/again/{now}").as_bytes()))
}

/// Indices of the blocks `parent` holds (ListSnapshotBlocks, every page).
async fn parent_blocks(
    ebs: &aws_sdk_ebs::Client,
    parent: &str,
) -> Result<std::collections::BTreeSet<u64>, Error> {
    let mut blocks = std::collections::BTreeSet::new();
    let mut next: Option<String> = None;
    loop {
        let page = ebs
            .list_snapshot_blocks()
            .snapshot_id(parent)
            .max_results(10_000)
            .set_next_token(next.take())
            .send()
            .await
            .map_err(|e| Error::api("ListSnapshotBlocks", format!("parent {parent}"), &e))?;
        blocks.extend(
            page.blocks()
                .iter()
                .filter_map(|b| b.block_index())
                .map(|i| i as u64),
        );
        match page.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => return Ok(blocks),
        }
    }
}

/// The blocks written: index → raw SHA-256, in index order.
#[derive(Default)]
pub(super) struct Written {
    pub digests: BTreeMap<i32, [u8; 32]>,
}

impl Written {
    /// EBS's "linear" aggregate: SHA-256 over the blocks' raw digests in
    /// ascending index order, base64 (as awslabs/coldsnap computes it).
    pub(super) fn linear_checksum(&self) -> String {
        let mut h = Sha256::new();
        for d in self.digests.values() {
            h.update(d);
        }
        aws_smithy_types::base64::encode(h.finalize())
    }
}

enum Msg {
    Block {
        index: i32,
        data: bytes::Bytes,
        len: u64,
    },
    Skipped(u64),
    Failed(std::io::Error),
}

/// A reader thread scans the file's data extents and sends the blocks to
/// write; up to `block_concurrency` PutSnapshotBlock requests run at once.
async fn put_blocks(
    ctx: &Ctx<'_>,
    ebs: &aws_sdk_ebs::Client,
    id: &str,
    block: u64,
    parent: Option<&std::collections::BTreeSet<u64>>,
    progress: &dyn Progress,
) -> Result<Written, Error> {
    let io = |source| Error::io(ctx.image, source);
    let ranges = data_ranges(&ctx.file, ctx.size, block).map_err(io)?;
    let concurrency = ctx.opts.block_concurrency;
    let (tx, mut rx) = mpsc::channel(concurrency * 2);
    let plan = Plan {
        size: ctx.size,
        block,
        volume_blocks: ctx.volume_gib() as u64 * super::GIB / block,
        ranges,
        skip_zero: ctx.opts.skip_zero_blocks,
        parent: parent.cloned().unwrap_or_default(),
    };
    let file = ctx.file.clone();
    let reader = tokio::task::spawn_blocking(move || read_blocks(&file, &plan, &tx));
    progress.start("writing blocks", ctx.size, Unit::Bytes);
    let mut running = JoinSet::new();
    let mut written = Written::default();
    let mut input_done = false;
    while !(input_done && running.is_empty()) {
        let take = !input_done && running.len() < concurrency;
        tokio::select! {
            msg = rx.recv(), if take => match msg {
                Some(Msg::Block { index, data, len }) => {
                    running.spawn(put_block(ebs.clone(), id.to_string(), index, data, len, ctx.backoff));
                }
                Some(Msg::Skipped(n)) => progress.advance(n),
                Some(Msg::Failed(e)) => return Err(io(e)),
                None => input_done = true,
            },
            Some(joined) = running.join_next(), if !running.is_empty() => {
                let (index, digest, len) = joined.map_err(|e| Error::Task {
                    what: format!("block upload to {id}"),
                    message: e.to_string(),
                })??;
                written.digests.insert(index, digest);
                progress.advance(len);
            }
        }
    }
    reader.await.map_err(|e| Error::Task {
        what: "reading blocks".into(),
        message: e.to_string(),
    })?;
    progress.finish();
    Ok(written)
}

async fn put_block(
    ebs: aws_sdk_ebs::Client,
    id: String,
    index: i32,
    data: bytes::Bytes,
    len: u64,
    backoff: Backoff,
) -> Result<(i32, [u8; 32], u64), Error> {
    let digest = hash::digest(&data);
    let checksum = aws_smithy_types::base64::encode(digest);
    // A just-started snapshot can briefly be unknown to the block API
    // (coldsnap retries for minutes on that), so not-found is transient here.
    let retryable = |e: &aws_sdk_ebs::error::SdkError<_, _>| {
        sdk_retryable(e)
            || matches!(
                e.as_service_error(),
                Some(aws_sdk_ebs::operation::put_snapshot_block::PutSnapshotBlockError::ResourceNotFoundException(_))
            )
    };
    retry(backoff, retryable, |_| {
        ebs.put_snapshot_block()
            .snapshot_id(&id)
            .block_index(index)
            .block_data(ByteStream::from(data.clone()))
            .data_length(data.len() as i32)
            .checksum(&checksum)
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .customize()
            .config_override({
                let (retries, timeouts) = data_plane(BLOCK);
                aws_sdk_ebs::config::Builder::default()
                    .retry_config(retries)
                    .timeout_config(timeouts)
            })
            .send()
    })
    .await
    .map_err(|e| Error::api("PutSnapshotBlock", format!("{id} block {index}"), &e))?;
    Ok((index, digest, len))
}

async fn complete(ebs: &aws_sdk_ebs::Client, id: &str, written: &Written) -> Result<(), Error> {
    let done = ebs
        .complete_snapshot()
        .snapshot_id(id)
        .changed_blocks_count(written.digests.len() as i32)
        .checksum(written.linear_checksum())
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(|e| Error::api("CompleteSnapshot", id, &e))?;
    if done.status() == Some(&Status::Error) {
        return Err(Error::SnapshotFailed {
            snapshot: id.to_string(),
            state: "error".into(),
            message: "CompleteSnapshot reported an error".into(),
        });
    }
    Ok(())
}

/// Polls EC2 until the snapshot leaves `pending` (bounded by `available_timeout_secs`).
async fn wait_completed(
    ctx: &Ctx<'_>,
    ec2: &aws_sdk_ec2::Client,
    id: &str,
    progress: &dyn Progress,
    mut interrupt: Interrupt,
) -> Result<(), Error> {
    let wait = Wait::new(ctx.poll(), ctx.available_timeout());
    progress.start("sealing snapshot", 100, Unit::Percent);
    loop {
        let described = ec2
            .describe_snapshots()
            .snapshot_ids(id)
            .send()
            .await
            .map_err(|e| Error::api("DescribeSnapshots", id, &e))?;
        let snap = described.snapshots().first();
        match snap.and_then(|s| s.state()) {
            Some(SnapshotState::Completed) => {
                progress.set(100);
                progress.finish();
                return Ok(());
            }
            Some(SnapshotState::Error) => {
                return Err(Error::SnapshotFailed {
                    snapshot: id.to_string(),
                    state: "error".into(),
                    message: snap
                        .and_then(|s| s.state_message())
                        .unwrap_or("no message")
                        .to_string(),
                })
            }
            _ => {
                if let Some(pct) = snap
                    .and_then(|s| s.progress())
                    .and_then(|p| p.trim_end_matches('%').parse::<u64>().ok())
                {
                    progress.set(pct.min(100));
                }
            }
        }
        wait.pause_or_interrupt(|| format!("snapshot {id} to complete"), &mut interrupt)
            .await?;
    }
}

/// What to write of the image.
pub(super) struct Plan {
    /// Image size in bytes.
    pub size: u64,
    /// Snapshot block size.
    pub block: u64,
    /// Blocks in the snapshot's volume (whole GiB, at least the image).
    pub volume_blocks: u64,
    /// Block-aligned ranges that may hold data ([`data_ranges`]).
    pub ranges: Vec<(u64, u64)>,
    /// Also leave out blocks of zeros (unsafe for encrypted snapshots).
    pub skip_zero: bool,
    /// Blocks the parent snapshot holds: each is written, as zeros where the
    /// image has nothing, or the parent's content would show through.
    pub parent: std::collections::BTreeSet<u64>,
}

/// Sends every block of the plan's ranges (the last one padded to a full
/// block, as EBS requires), zeros for the parent's blocks outside them, and
/// the byte count of everything left out.
fn read_blocks(file: &File, plan: &Plan, tx: &mpsc::Sender<Msg>) {
    let Plan {
        size,
        block,
        volume_blocks,
        ..
    } = *plan;
    let file_blocks = size.div_ceil(block);
    let last_parent = plan.parent.last().map_or(0, |&i| i + 1);
    let blocks = file_blocks.max(last_parent.min(volume_blocks));
    let mut range = 0;
    let mut skipped = 0u64;
    for index in 0..blocks {
        let offset = index * block;
        while range < plan.ranges.len() && plan.ranges[range].1 <= offset {
            range += 1;
        }
        let allocated = range < plan.ranges.len() && plan.ranges[range].0 <= offset;
        let in_parent = plan.parent.contains(&index);
        // Bytes of the image this block stands for (none past its end).
        let len = if offset < size {
            block.min(size - offset)
        } else {
            0
        };
        if !allocated && !in_parent {
            skipped += len;
            continue;
        }
        let mut buf = vec![0u8; block as usize];
        if allocated && len > 0 {
            if let Err(e) = hash::read_exact_at(file, &mut buf[..len as usize], offset) {
                let _ = tx.blocking_send(Msg::Failed(e));
                return;
            }
        }
        if plan.skip_zero && !in_parent && is_zero(&buf) {
            skipped += len;
            continue;
        }
        if skipped > 0
            && tx
                .blocking_send(Msg::Skipped(std::mem::take(&mut skipped)))
                .is_err()
        {
            return;
        }
        let msg = Msg::Block {
            index: index as i32,
            data: bytes::Bytes::from(buf),
            len,
        };
        if tx.blocking_send(msg).is_err() {
            return;
        }
    }
    if skipped > 0 {
        let _ = tx.blocking_send(Msg::Skipped(skipped));
    }
}

fn is_zero(buf: &[u8]) -> bool {
    let words = buf.chunks_exact(16);
    let rest = words.remainder();
    words
        .map(|w| u128::from_ne_bytes(w.try_into().unwrap_or([1; 16])))
        .all(|w| w == 0)
        && rest.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn data_ranges_cover_written_data_and_skip_holes() {
        let f = tempfile::tempfile().unwrap();
        let size = 64 * BLOCK;
        f.set_len(size).unwrap();
        f.write_all_at(b"x", 3 * BLOCK + 10).unwrap();
        f.write_all_at(&vec![7u8; BLOCK as usize], 40 * BLOCK)
            .unwrap();
        let ranges = data_ranges(&f, size, BLOCK).unwrap();
        let covered = |off: u64| ranges.iter().any(|&(s, e)| s <= off && off < e);
        assert!(
            covered(3 * BLOCK + 10) && covered(40 * BLOCK) && covered(41 * BLOCK - 1),
            "{ranges:?}"
        );
        for &(s, e) in &ranges {
            assert!(
                s % BLOCK == 0 && e % BLOCK == 0 && s < e && e <= size,
                "{ranges:?}"
            );
        }
        // The file system may round extents up, but a 32 MiB file with two
        // small writes must not be reported as all data.
        let total: u64 = ranges.iter().map(|(s, e)| e - s).sum();
        assert!(total < size / 2, "{ranges:?}");
    }

    /// 5.5 blocks: data in block 1, zeros written in block 2, holes in
    /// blocks 0, 3 and 4, data at the end of the half last block 5.
    fn fixture() -> (File, u64) {
        let f = tempfile::tempfile().unwrap();
        let size = 5 * BLOCK + BLOCK / 2;
        f.set_len(size).unwrap();
        f.write_all_at(&[1, 2, 3], BLOCK + 5).unwrap();
        f.write_all_at(&vec![0u8; BLOCK as usize], 2 * BLOCK)
            .unwrap();
        f.write_all_at(&[9], size - 1).unwrap();
        (f, size)
    }

    fn plan(f: &File, size: u64, skip_zero: bool, parent: &[u64]) -> Plan {
        Plan {
            size,
            block: BLOCK,
            volume_blocks: 16,
            ranges: data_ranges(f, size, BLOCK).unwrap(),
            skip_zero,
            parent: parent.iter().copied().collect(),
        }
    }

    /// Runs `read_blocks`: the blocks sent (index, data) and the bytes skipped.
    fn run(f: &File, plan: &Plan) -> (Vec<(i32, bytes::Bytes)>, u64, u64) {
        let (tx, mut rx) = mpsc::channel(100);
        read_blocks(f, plan, &tx);
        drop(tx);
        let (mut blocks, mut skipped, mut sent) = (Vec::new(), 0, 0);
        while let Some(m) = rx.blocking_recv() {
            match m {
                Msg::Block { index, data, len } => {
                    assert_eq!(data.len() as u64, BLOCK, "block {index} padded");
                    sent += len;
                    blocks.push((index, data));
                }
                Msg::Skipped(n) => skipped += n,
                Msg::Failed(e) => panic!("{e}"),
            }
        }
        (blocks, skipped, sent)
    }

    #[test]
    fn read_blocks_writes_allocated_zero_blocks_and_skips_only_holes() {
        let (f, size) = fixture();
        let (blocks, skipped, sent) = run(&f, &plan(&f, size, false, &[]));
        let indices: Vec<i32> = blocks.iter().map(|b| b.0).collect();
        // tmpfs and ext4 allocate in pages, so a file system may report the
        // block next to written data as data too; never a block that is a
        // hole from end to end (0, 3, 4).
        assert!(
            indices.contains(&1) && indices.contains(&2) && indices.contains(&5),
            "{indices:?}"
        );
        assert!(
            !indices.iter().any(|i| [0, 3, 4].contains(i)),
            "{indices:?}"
        );
        let one = &blocks.iter().find(|b| b.0 == 1).unwrap().1;
        assert_eq!(&one[5..8], &[1, 2, 3]);
        assert!(is_zero(&blocks.iter().find(|b| b.0 == 2).unwrap().1));
        let last = &blocks.iter().find(|b| b.0 == 5).unwrap().1;
        assert_eq!(last[(BLOCK / 2 - 1) as usize], 9);
        assert!(last[(BLOCK / 2) as usize..].iter().all(|&b| b == 0));
        assert_eq!(sent + skipped, size, "every byte accounted for once");
    }

    #[test]
    fn skip_zero_blocks_also_leaves_out_written_zeros() {
        let (f, size) = fixture();
        let (blocks, skipped, sent) = run(&f, &plan(&f, size, true, &[]));
        let indices: Vec<i32> = blocks.iter().map(|b| b.0).collect();
        assert_eq!(indices, vec![1, 5]);
        assert_eq!(sent + skipped, size);
    }

    #[test]
    fn a_parent_block_the_image_leaves_empty_is_overwritten_with_zeros() {
        let (f, size) = fixture();
        // Parent blocks: 1 (data here), 2 (zeros here: written even when
        // skipping zeros), 3 (a hole here), 9 (past the file, in the volume),
        // 40 (past the volume: cannot exist in it, so not written).
        let (blocks, skipped, sent) = run(&f, &plan(&f, size, true, &[1, 2, 3, 9, 40]));
        let indices: Vec<i32> = blocks.iter().map(|b| b.0).collect();
        assert_eq!(indices, vec![1, 2, 3, 5, 9]);
        for (i, data) in &blocks {
            assert_eq!(is_zero(data), [2, 3, 9].contains(i), "block {i}");
        }
        assert_eq!(sent + skipped, size);
    }

    #[test]
    fn linear_checksum_hashes_raw_digests_in_index_order() {
        let mut w = Written::default();
        let (a, b) = (hash::digest(b"a"), hash::digest(b"b"));
        w.digests.insert(7, b);
        w.digests.insert(2, a);
        let mut cat = a.to_vec();
        cat.extend(b);
        assert_eq!(
            w.linear_checksum(),
            aws_smithy_types::base64::encode(hash::digest(&cat))
        );
    }

    #[test]
    fn is_zero_checks_every_byte_whatever_the_alignment() {
        let mut buf = vec![0u8; 4099];
        assert!(is_zero(&buf) && is_zero(&buf[1..]) && is_zero(&[]));
        for i in [0, 1, 17, 2048, 4098] {
            buf[i] = 1;
            assert!(
                !is_zero(&buf) && (i == 0 || !is_zero(&buf[1..])),
                "byte {i}"
            );
            buf[i] = 0;
        }
    }
}
