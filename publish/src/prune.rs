//! Removing old releases: AMIs with their snapshots in every region given,
//! S3-compatible objects with their `.sha256` sidecars, and GCE images.
//!
//! A release is selected when its name starts with the prefix and it is
//! beyond the newest `keep` of its place (a region, a bucket, a project)
//! and/or older than the cut-off. Nothing is deleted unless asked (`delete`);
//! the prefix is checked again on every name just before its deletion.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use aws_smithy_types::date_time::Format;
use aws_smithy_types::DateTime;
use serde::Serialize;

use crate::conn::{sdk_config, Connection};
use crate::error::{Common, CommonError};
use crate::progress::Progress;
use crate::rt;
use crate::summary;

/// What `pgimg prune` looks at and what it keeps.
#[derive(Debug, Clone)]
pub struct PruneOptions {
    /// Only names (AMI names, object keys below `key_prefix`) starting with
    /// this are considered; must not be empty.
    pub prefix: String,
    /// Keep the newest this many releases of each place.
    pub keep: Option<usize>,
    /// Select only releases created longer ago than this.
    pub older_than: Option<Duration>,
    /// Regions whose AMIs (owned by this account) are pruned.
    pub regions: Vec<String>,
    /// Bucket whose objects are pruned.
    pub bucket: Option<String>,
    /// Google Cloud project whose GCE images are pruned (feature `gce`).
    pub gce_project: Option<String>,
    /// Compute Engine endpoint; default: https://compute.googleapis.com/compute/v1.
    pub compute_endpoint: Option<String>,
    /// Pause between polls of a GCE image deletion.
    pub poll: Duration,
    /// Bound on the wait for each GCE image deletion.
    pub timeout: Duration,
    /// Folder of the objects in the bucket (`images/`); the object names
    /// below it must start with `prefix`.
    pub key_prefix: String,
    /// Region to sign S3 requests for; default: the AWS chain's.
    pub s3_region: Option<String>,
    /// Endpoint, addressing style and profile.
    pub conn: Connection,
    /// Delete; otherwise only list what would be deleted.
    pub delete: bool,
    /// Attempts per request.
    pub attempts: u32,
    /// "Now", for the cut-off; default: the clock.
    pub now: Option<SystemTime>,
    /// Append a Markdown summary to this file.
    pub step_summary: Option<PathBuf>,
}

impl PruneOptions {
    /// Options that look at nothing yet and delete nothing.
    pub fn new(prefix: impl Into<String>) -> Self {
        PruneOptions {
            prefix: prefix.into(),
            keep: None,
            older_than: None,
            regions: Vec::new(),
            bucket: None,
            gce_project: None,
            compute_endpoint: None,
            poll: Duration::from_secs(5),
            timeout: Duration::from_secs(10 * 60),
            key_prefix: String::new(),
            s3_region: None,
            conn: Connection::default(),
            delete: false,
            attempts: crate::s3::DEFAULT_ATTEMPTS,
            now: None,
            step_summary: None,
        }
    }
}

/// One published release.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Release {
    /// `ami`, `object` or `gce`.
    pub kind: &'static str,
    /// Region of an AMI, bucket of an object, project of a GCE image.
    pub place: String,
    /// AMI id, object key, or GCE image name.
    pub id: String,
    /// AMI name, object name below the key prefix, or GCE image name.
    pub name: String,
    /// Creation (AMI, GCE image) or last-modified (object) time, RFC 3339.
    pub created: String,
    /// What goes with it: the AMI's snapshots, the object's sidecar.
    pub with: Vec<String>,
    #[serde(skip)]
    epoch: i64,
}

/// What was (or would be) deleted and what is kept.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct PruneOutcome {
    /// True when nothing was deleted (`--dry-run`, the default).
    pub dry_run: bool,
    /// Selected releases: deleted, or to be deleted.
    pub delete: Vec<Release>,
    /// Releases matching the prefix that stay.
    pub keep: Vec<Release>,
}

impl PruneOutcome {
    /// Markdown for the step summary.
    pub fn markdown(&self) -> String {
        let mut md = format!(
            "### Prune: {} {} release(s), {} kept\n\n| | kind | where | id | created |\n|---|---|---|---|---|\n",
            if self.dry_run { "would delete" } else { "deleted" },
            self.delete.len(),
            self.keep.len()
        );
        for (what, list) in [("delete", &self.delete), ("keep", &self.keep)] {
            for r in list {
                md.push_str(&format!(
                    "| {what} | {} | {} | `{}` | {} |\n",
                    r.kind,
                    summary::escape(&r.place),
                    summary::escape(&r.id),
                    summary::escape(&r.created)
                ));
            }
        }
        md.push('\n');
        md
    }
}

/// Everything that can go wrong pruning.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Options that cannot work, or a failed call: the failures every
    /// publish target shares.
    #[error(transparent)]
    Common(#[from] Common),
    /// A Google call failed, or a GCE image deletion failed or timed out.
    #[cfg(feature = "gce")]
    #[error(transparent)]
    Gce(#[from] crate::gce::Error),
    /// The runtime could not start, or the summary could not be written.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Some deletions were done before one failed; `done` lists them.
    #[error("{cause} (already deleted: {})", if done.is_empty() { "nothing".to_string() } else { done.join(", ") })]
    Partial {
        cause: Box<Error>,
        done: Vec<String>,
    },
}

/// Lists the releases, selects the old ones and deletes them when asked.
pub fn prune(opts: &PruneOptions, progress: &dyn Progress) -> Result<PruneOutcome, Error> {
    crate::progress::stop_on_error(progress, || {
        validate(opts)?;
        let outcome = rt::run(|_| prune_async(opts, progress))??;
        if let Some(path) = &opts.step_summary {
            summary::append(path, &outcome.markdown())?;
        }
        Ok(outcome)
    })
}

fn validate(opts: &PruneOptions) -> Result<(), Error> {
    if opts.prefix.is_empty() {
        return Err(Error::invalid(
            "the prefix must not be empty: prune never looks at every image".into(),
        ));
    }
    if opts.keep.is_none() && opts.older_than.is_none() {
        return Err(Error::invalid(
            "say what to keep: --keep N, --older-than AGE, or both".into(),
        ));
    }
    if opts.regions.is_empty() && opts.bucket.is_none() && opts.gce_project.is_none() {
        return Err(Error::invalid(
            "nothing to look at: give --region (AMIs), --bucket (objects) and/or --gce-project \
             (GCE images)"
                .into(),
        ));
    }
    if opts.gce_project.is_some() {
        #[cfg(not(feature = "gce"))]
        return Err(Error::invalid(
            "this pgimg was built without GCE support (feature `gce`)".into(),
        ));
        #[cfg(feature = "gce")]
        images::validate(opts)?;
    }
    #[cfg(not(feature = "ami"))]
    if !opts.regions.is_empty() {
        return Err(Error::invalid(
            "this pgimg was built without AMI support (feature `ami`)".into(),
        ));
    }
    Ok(())
}

async fn prune_async(opts: &PruneOptions, progress: &dyn Progress) -> Result<PruneOutcome, Error> {
    let now = opts.now.unwrap_or_else(SystemTime::now);
    let cutoff = opts
        .older_than
        .map(|age| DateTime::from(now.checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)).secs());
    let mut outcome = PruneOutcome {
        dry_run: !opts.delete,
        ..Default::default()
    };
    let mut places: Vec<Vec<Release>> = Vec::new();
    #[cfg(feature = "ami")]
    for region in &opts.regions {
        places.push(amis::list(opts, region).await?);
    }
    #[cfg(feature = "gce")]
    let google = match &opts.gce_project {
        Some(project) => {
            let google = images::client(opts)?;
            places.push(images::list(&google, opts, project).await?);
            Some(google)
        }
        None => None,
    };
    let s3 = match &opts.bucket {
        Some(bucket) => {
            let config = sdk_config(&opts.conn, opts.s3_region.as_deref(), opts.attempts).await;
            let client = crate::s3::client(&config, opts.conn.path_style);
            places.push(objects::list(&client, opts, bucket).await?);
            Some(client)
        }
        None => None,
    };
    for releases in places {
        let (delete, keep) = select(releases, opts.keep, cutoff);
        outcome.delete.extend(delete);
        outcome.keep.extend(keep);
    }
    if !opts.delete {
        return Ok(outcome);
    }
    let mut done = Vec::new();
    for r in &outcome.delete {
        // The listing filtered by prefix already; this guards the deletion itself.
        if !r.name.starts_with(&opts.prefix) {
            return Err(Error::invalid(format!(
                "refusing to delete {} {:?}: it does not start with {:?}",
                r.kind, r.name, opts.prefix
            )));
        }
        let result = match r.kind {
            #[cfg(feature = "ami")]
            "ami" => amis::delete(opts, r).await,
            #[cfg(feature = "gce")]
            "gce" => match &google {
                Some(google) => images::delete(google, opts, r).await,
                None => Ok(()),
            },
            _ => match &s3 {
                Some(client) => objects::delete(client, r).await,
                None => Ok(()),
            },
        };
        if let Err(cause) = result {
            return Err(Error::Partial {
                cause: Box::new(cause),
                done,
            });
        }
        progress.note(&format!("deleted {} {} in {}", r.kind, r.id, r.place));
        done.push(r.id.clone());
    }
    Ok(outcome)
}

/// Splits one place's releases into (delete, keep): newest first (by time,
/// then by name, which for dated names breaks ties the same way), the first
/// `keep` kept, and of the rest those created before `cutoff` (epoch
/// seconds) selected — every one of them without a cut-off.
pub(crate) fn select(
    mut releases: Vec<Release>,
    keep: Option<usize>,
    cutoff: Option<i64>,
) -> (Vec<Release>, Vec<Release>) {
    releases.sort_by(|a, b| b.epoch.cmp(&a.epoch).then_with(|| b.name.cmp(&a.name)));
    let mut delete = Vec::new();
    let mut kept = Vec::new();
    for (i, r) in releases.into_iter().enumerate() {
        let beyond_newest = keep.is_none_or(|n| i >= n);
        let old_enough = cutoff.is_none_or(|c| r.epoch < c);
        if beyond_newest && old_enough {
            delete.push(r);
        } else {
            kept.push(r);
        }
    }
    (delete, kept)
}

/// Parses an age: a number and a unit, `s`, `m`, `h`, `d` or `w` (`30d`).
pub fn parse_age(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{s}` has no unit (use s, m, h, d or w, e.g. 30d)"))?;
    let n: u64 = t[..split]
        .parse()
        .map_err(|_| format!("`{s}` is not an age like 30d"))?;
    let unit = match &t[split..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => return Err(format!("`{s}`: unknown unit {other:?} (s, m, h, d or w)")),
    };
    Ok(Duration::from_secs(n.saturating_mul(unit)))
}

/// A release's creation time as listed, or an error naming it: a release of
/// unknown age is never taken for the oldest (which `--keep` would select
/// for deletion first) nor for the newest; the listing stops before anything
/// is deleted.
fn known_time(
    op: &'static str,
    target: String,
    field: &str,
    created: Option<DateTime>,
) -> Result<DateTime, Error> {
    created.ok_or_else(|| {
        Error::api_message(
            op,
            target,
            format!("no readable {field}: its age is unknown, so nothing is pruned"),
        )
    })
}

fn release(
    kind: &'static str,
    place: &str,
    id: &str,
    name: &str,
    created: DateTime,
    with: Vec<String>,
) -> Release {
    Release {
        kind,
        place: place.to_string(),
        id: id.to_string(),
        name: name.to_string(),
        created: created
            .fmt(Format::DateTime)
            .unwrap_or_else(|_| created.secs().to_string()),
        with,
        epoch: created.secs(),
    }
}

#[cfg(feature = "ami")]
mod amis {
    //! AMIs of this account named `prefix*` in one region, and their deletion.

    use aws_sdk_ec2::types::Filter;

    use super::*;

    async fn client(opts: &PruneOptions, region: &str) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::new(&sdk_config(&opts.conn, Some(region), opts.attempts).await)
    }

    pub(super) async fn list(opts: &PruneOptions, region: &str) -> Result<Vec<Release>, Error> {
        let ec2 = client(opts, region).await;
        let pattern = format!("{}*", opts.prefix);
        let listing = format!("names {pattern} in {region}");
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = ec2
                .describe_images()
                .owners("self")
                .filters(Filter::builder().name("name").values(&pattern).build())
                .set_next_token(next.take())
                .send()
                .await
                .map_err(|e| Error::api("DescribeImages", &listing, &e))?;
            for image in page.images() {
                let name = image.name().unwrap_or_default();
                if !name.starts_with(&opts.prefix) {
                    continue;
                }
                let snapshots = image
                    .block_device_mappings()
                    .iter()
                    .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()))
                    .map(str::to_string)
                    .collect();
                let id = image.image_id().unwrap_or_default();
                let created = known_time(
                    "DescribeImages",
                    format!("{id} ({name}) in {region}"),
                    "CreationDate",
                    image
                        .creation_date()
                        .and_then(|d| DateTime::from_str(d, Format::DateTime).ok()),
                )?;
                out.push(release("ami", region, id, name, created, snapshots));
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => next = Some(t.to_string()),
                _ => return Ok(out),
            }
        }
    }

    /// DeregisterImage, then DeleteSnapshot of each of its snapshots (a
    /// snapshot in use by an AMI cannot be deleted before).
    pub(super) async fn delete(opts: &PruneOptions, r: &Release) -> Result<(), Error> {
        let ec2 = client(opts, &r.place).await;
        let ami = format!("{} ({}) in {}", r.id, r.name, r.place);
        let deregistered = ec2.deregister_image().image_id(&r.id).send().await;
        deregistered.map_err(|e| Error::api("DeregisterImage", ami, &e))?;
        for snapshot in &r.with {
            let deleted = ec2.delete_snapshot().snapshot_id(snapshot).send().await;
            let target = format!("{snapshot} of {} in {}", r.id, r.place);
            deleted.map_err(|e| Error::api("DeleteSnapshot", target, &e))?;
        }
        Ok(())
    }
}

#[cfg(feature = "gce")]
mod images {
    //! GCE images named `prefix*` in one project, and their deletion.

    use super::*;
    use crate::gce;
    use crate::gce::api::Google;
    use crate::rt::Wait;

    /// Image names are RFC 1035 labels: a prefix with any other character
    /// matches none, and would have to be escaped in the list filter.
    pub(super) fn validate(opts: &PruneOptions) -> Result<(), Error> {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if !opts.prefix.chars().all(ok) {
            return Err(Error::invalid(format!(
                "prefix {:?} can match no GCE image name (lowercase letters, digits and -)",
                opts.prefix
            )));
        }
        if opts.poll.is_zero() || opts.timeout.is_zero() {
            return Err(Error::invalid(
                "the poll interval and the timeout must be positive".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn client(opts: &PruneOptions) -> Result<Google, Error> {
        Ok(Google::new(
            None,
            opts.compute_endpoint.as_deref(),
            opts.attempts,
        )?)
    }

    /// `images.list` filtered to `prefix*` (an RE2 regular expression that
    /// must match the whole name), every page.
    pub(super) async fn list(
        google: &Google,
        opts: &PruneOptions,
        project: &str,
    ) -> Result<Vec<Release>, Error> {
        let filter = format!("name eq \"{}.*\"", opts.prefix);
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let (page, token) = google
                .list_images(project, &filter, next.as_deref())
                .await?;
            for image in &page {
                let name = image["name"].as_str().unwrap_or_default();
                if !name.starts_with(&opts.prefix) {
                    continue;
                }
                out.push(release(
                    "gce",
                    project,
                    name,
                    name,
                    created(project, name, image)?,
                    Vec::new(),
                ));
            }
            match token {
                Some(t) => next = Some(t),
                None => return Ok(out),
            }
        }
    }

    /// `creationTimestamp`, RFC 3339 with an offset. An image without one is
    /// an error, not the oldest of all.
    pub(super) fn created(
        project: &str,
        name: &str,
        image: &serde_json::Value,
    ) -> Result<DateTime, Error> {
        let text = image["creationTimestamp"].as_str().unwrap_or_default();
        DateTime::from_str(text, Format::DateTimeWithOffset).map_err(|e| {
            Error::api_message(
                "images.list",
                format!("{name} in {project}"),
                format!("creationTimestamp {text:?} is not RFC 3339: {e}"),
            )
        })
    }

    /// `images.delete`, then the operation waited for until DONE (bounded).
    pub(super) async fn delete(
        google: &Google,
        opts: &PruneOptions,
        r: &Release,
    ) -> Result<(), Error> {
        let request_id = gce::request_id(&format!("delete/{}/{}", r.place, r.name));
        let Some(op) = google.delete_image(&r.place, &r.name, &request_id).await? else {
            // Already gone: nothing left to delete.
            return Ok(());
        };
        let Some(op) = op["name"].as_str() else {
            return Err(Error::api_message(
                "images.delete",
                format!("{} in {}", r.name, r.place),
                "the answer names no operation".into(),
            ));
        };
        let wait = Wait::new(opts.poll, opts.timeout);
        gce::wait_operation(google, &r.place, &r.name, op, wait, &|_| {}).await?;
        Ok(())
    }
}

mod objects {
    //! Objects `key_prefix + prefix*` in a bucket, with their sidecars.

    use aws_sdk_s3::Client;

    use super::*;

    const SIDECAR: &str = ".sha256";

    pub(super) async fn list(
        s3: &Client,
        opts: &PruneOptions,
        bucket: &str,
    ) -> Result<Vec<Release>, Error> {
        let listing_prefix = format!("{}{}", opts.key_prefix, opts.prefix);
        let listing = format!("s3://{bucket}/{listing_prefix}");
        let mut objects = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let page = s3
                .list_objects_v2()
                .bucket(bucket)
                .prefix(&listing_prefix)
                .set_continuation_token(next.take())
                .send()
                .await
                .map_err(|e| Error::api("ListObjectsV2", &listing, &e))?;
            for o in page.contents() {
                if let Some(key) = o.key() {
                    objects.push((key.to_string(), o.last_modified().copied()));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => next = Some(t.to_string()),
                _ => break,
            }
        }
        let keys: std::collections::HashSet<&str> =
            objects.iter().map(|(k, _)| k.as_str()).collect();
        let mut out = Vec::new();
        for (key, modified) in &objects {
            let Some(name) = key.strip_prefix(&opts.key_prefix) else {
                continue;
            };
            // A sidecar goes with its image; one without an image is a release of its own.
            if let Some(image) = key.strip_suffix(SIDECAR) {
                if keys.contains(image) {
                    continue;
                }
            }
            if !name.starts_with(&opts.prefix) || name.contains('/') {
                continue;
            }
            let sidecar = format!("{key}{SIDECAR}");
            let with = if keys.contains(sidecar.as_str()) {
                vec![sidecar]
            } else {
                Vec::new()
            };
            let modified = known_time(
                "ListObjectsV2",
                format!("s3://{bucket}/{key}"),
                "LastModified",
                *modified,
            )?;
            out.push(release("object", bucket, key, name, modified, with));
        }
        Ok(out)
    }

    pub(super) async fn delete(s3: &Client, r: &Release) -> Result<(), Error> {
        for key in std::iter::once(&r.id).chain(&r.with) {
            s3.delete_object()
                .bucket(&r.place)
                .key(key)
                .send()
                .await
                .map_err(|e| Error::api("DeleteObject", format!("s3://{}/{key}", r.place), &e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str, epoch: i64) -> Release {
        release("ami", "r", name, name, DateTime::from_secs(epoch), vec![])
    }

    #[test]
    fn a_release_of_unknown_age_stops_the_listing_instead_of_counting_as_the_oldest() {
        let e = known_time(
            "DescribeImages",
            "ami-1 (pg-1) in r".into(),
            "CreationDate",
            None,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("ami-1 (pg-1) in r") && text.contains("no readable CreationDate"),
            "{text}"
        );
        let at = DateTime::from_secs(1_768_464_000);
        assert_eq!(
            known_time("ListObjectsV2", "s3://b/k".into(), "LastModified", Some(at)).unwrap(),
            at
        );
    }

    fn names(v: &[Release]) -> Vec<&str> {
        v.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn select_keeps_the_newest_n_by_time_then_name() {
        let all = vec![
            r("p-1", 100),
            r("p-3", 300),
            r("p-2", 200),
            r("p-5", 300),
            r("p-4", 300),
        ];
        let (delete, keep) = select(all, Some(2), None);
        assert_eq!(names(&keep), ["p-5", "p-4"]);
        assert_eq!(names(&delete), ["p-3", "p-2", "p-1"]);
    }

    #[test]
    fn select_with_a_cutoff_only_takes_older_releases_and_both_rules_must_hold() {
        let all = vec![r("a", 100), r("b", 200), r("c", 300)];
        let (delete, _) = select(all.clone(), None, Some(250));
        assert_eq!(names(&delete), ["b", "a"]);
        // Keep 1 (c) and older than 150: only a.
        let (delete, keep) = select(all, Some(1), Some(150));
        assert_eq!(names(&delete), ["a"]);
        assert_eq!(names(&keep), ["c", "b"]);
    }

    #[test]
    fn ages_parse_with_units_and_reject_the_rest() {
        assert_eq!(parse_age("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_age("2w"), Ok(Duration::from_secs(14 * 86_400)));
        assert_eq!(parse_age("90m"), Ok(Duration::from_secs(5400)));
        for bad in ["30", "d", "3x", "-1d", ""] {
            assert!(parse_age(bad).is_err(), "{bad}");
        }
    }

    #[cfg(feature = "gce")]
    #[test]
    fn gce_creation_timestamps_keep_their_offset_and_a_missing_one_is_an_error() {
        let at = |t: &str| {
            images::created("p", "n", &serde_json::json!({ "creationTimestamp": t }))
                .map(|d| d.secs())
        };
        // 2026-01-15T08:00:00Z, as Compute writes it (Pacific time, milliseconds).
        assert_eq!(at("2026-01-15T00:00:00.000-08:00").unwrap(), 1_768_464_000);
        assert_eq!(at("2026-01-15T08:00:00Z").unwrap(), 1_768_464_000);
        for bad in ["", "yesterday"] {
            let e = at(bad).unwrap_err();
            assert!(e.to_string().contains("creationTimestamp"), "{e}");
        }
    }

    #[test]
    fn an_empty_prefix_no_rule_or_a_prefix_no_gce_image_can_have_is_refused() {
        let mut o = PruneOptions::new("");
        o.keep = Some(1);
        o.bucket = Some("b".into());
        assert!(
            matches!(validate(&o), Err(Error::Common(Common::Invalid(m))) if m.contains("prefix"))
        );
        o.prefix = "p-".into();
        o.keep = None;
        assert!(
            matches!(validate(&o), Err(Error::Common(Common::Invalid(m))) if m.contains("--keep"))
        );
        o.keep = Some(0);
        assert!(validate(&o).is_ok());
        #[cfg(feature = "gce")]
        {
            o.gce_project = Some("p".into());
            o.prefix = "pg-16.1-".into();
            assert!(
                matches!(validate(&o), Err(Error::Common(Common::Invalid(m))) if m.contains("GCE image name"))
            );
            o.prefix = "pg-16-".into();
            assert!(validate(&o).is_ok());
        }
    }
}
