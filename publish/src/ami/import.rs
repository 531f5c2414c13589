//! Snapshot by import: upload the raw image to S3, EC2 ImportSnapshot, poll until done, delete the object.

use std::time::Duration;

use aws_sdk_ec2::types::{SnapshotDiskContainer, UserBucket};
use aws_sdk_ec2::Client;

use super::{Ctx, Error};
use crate::error::CommonError;
use crate::progress::{Progress, Unit};
use crate::rt::{Interrupt, Wait};
use crate::s3::{self, Upload};

/// Import task states that mean "still working" (EC2 reports `active`; the
/// others appear in status messages of older tasks).
const IN_PROGRESS: [&str; 4] = ["active", "pending", "validating", "converting"];

/// Uploads, imports and returns the snapshot id. The object is deleted
/// whatever happens after the upload started: the import task was its only
/// reader, and a failed run must not leave gigabytes in the bucket.
pub(super) async fn snapshot(
    ctx: &Ctx<'_>,
    progress: &dyn Progress,
    interrupt: Interrupt,
) -> Result<String, Error> {
    let opts = ctx.opts;
    let bucket = opts.bucket.clone().unwrap_or_default();
    let key = s3::object_key(opts.key.as_deref(), ctx.image)?;
    let upload = Upload {
        client: s3::client(&ctx.home, opts.conn.path_style),
        bucket,
        key,
        path: ctx.image.to_path_buf(),
        file: ctx.file.clone(),
        size: ctx.size,
        sha256: None,
        part_size: opts.part_size,
        concurrency: opts.concurrency,
        backoff: ctx.backoff,
    };
    let ec2 = Client::new(&ctx.home);
    let result = async {
        upload.run(progress, interrupt.clone()).await?;
        let task = start(ctx, &ec2, &upload).await?;
        progress.note(&format!(
            "import-snapshot task {task} started from {}",
            upload.target()
        ));
        wait(ctx, &ec2, &task, progress, interrupt).await
    }
    .await;
    let cleanup = upload
        .delete()
        .await
        .err()
        .map(|e| format!("{e}; delete it by hand"));
    match (result, cleanup) {
        (Ok(snapshot), None) => Ok(snapshot),
        (Ok(_), Some(cleanup)) => Err(Error::CleanupFailed(cleanup)),
        (Err(e), cleanup) => Err(e.with_cleanup(cleanup)),
    }
}

async fn start(ctx: &Ctx<'_>, ec2: &Client, upload: &Upload) -> Result<String, Error> {
    let mut request = ec2
        .import_snapshot()
        .description(ctx.description())
        .disk_container(
            SnapshotDiskContainer::builder()
                .format("RAW")
                .description(ctx.description())
                .user_bucket(
                    UserBucket::builder()
                        .s3_bucket(&upload.bucket)
                        .s3_key(&upload.key)
                        .build(),
                )
                .build(),
        );
    if let Some(role) = &ctx.opts.import_role {
        request = request.role_name(role);
    }
    if let Some(key) = ctx.opts.kms_key_for(&ctx.opts.region) {
        request = request.encrypted(true).kms_key_id(key);
    }
    let started = request
        .send()
        .await
        .map_err(|e| Error::api("ImportSnapshot", upload.target(), &e))?;
    started.import_task_id().map(str::to_string).ok_or_else(|| {
        Error::api_message(
            "ImportSnapshot",
            upload.target(),
            "the response has no import task id".into(),
        )
    })
}

/// Polls the task every `poll_secs` until it completes; a failed or
/// cancelled task, the timeout and an interrupt end the wait (the last two
/// cancel the task, which would otherwise go on reading the object).
async fn wait(
    ctx: &Ctx<'_>,
    ec2: &Client,
    task: &str,
    progress: &dyn Progress,
    mut interrupt: Interrupt,
) -> Result<String, Error> {
    let wait = Wait::new(
        ctx.poll(),
        Duration::from_secs(ctx.opts.import_timeout_secs),
    );
    progress.start("importing snapshot", 100, Unit::Percent);
    loop {
        let described = ec2
            .describe_import_snapshot_tasks()
            .import_task_ids(task)
            .send()
            .await
            .map_err(|e| Error::api("DescribeImportSnapshotTasks", task, &e))?;
        let detail = described
            .import_snapshot_tasks()
            .first()
            .and_then(|t| t.snapshot_task_detail());
        let status = detail.and_then(|d| d.status()).unwrap_or("unknown");
        let message = detail.and_then(|d| d.status_message()).unwrap_or("");
        match status {
            "completed" => {
                progress.set(100);
                progress.finish();
                return detail
                    .and_then(|d| d.snapshot_id())
                    .map(str::to_string)
                    .ok_or_else(|| Error::ImportFailed {
                        task: task.to_string(),
                        status: status.to_string(),
                        message: "completed without a snapshot id".into(),
                    });
            }
            s if IN_PROGRESS.contains(&s) => {
                if let Some(pct) = detail
                    .and_then(|d| d.progress())
                    .and_then(|p| p.parse::<u64>().ok())
                {
                    progress.set(pct.min(100));
                }
            }
            other => {
                progress.finish();
                return Err(Error::ImportFailed {
                    task: task.to_string(),
                    status: other.to_string(),
                    message: if message.is_empty() {
                        "no status message".into()
                    } else {
                        message.to_string()
                    },
                });
            }
        }
        let what = || format!("import-snapshot task {task} (last status {status:?} {message:?})");
        if let Err(e) = wait.pause_or_interrupt(what, &mut interrupt).await {
            return Err(Error::from(e).with_cleanup(cancel(ec2, task).await.err()));
        }
    }
}

async fn cancel(ec2: &Client, task: &str) -> Result<(), String> {
    let cancelled = ec2
        .cancel_import_task()
        .import_task_id(task)
        .cancel_reason("pgimg publish stopped waiting")
        .send()
        .await;
    crate::retry::best_effort(cancelled, format_args!("cancelling import task {task}"))
}
