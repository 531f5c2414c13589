//! The step cache: checkpoints of the image keyed by everything that shaped
//! it so far, and the replay that resumes a build from the latest one.
//!
//! Keys form a chain. `k0` digests what the build starts from (pgimg's own
//! executable, the base image's sha256, the final size, params, mirrors, the
//! architecture, the lock file); each primitive call `i`, actions and queries
//! alike, gives `k_i = sha256(k_{i-1}, name, arguments as JSON, the content
//! of every asset an argument names)`. A checkpoint taken after call `n` is
//! the image file plus a record: `k_n`, every call's key and return value up
//! to `n`, the journal (inputs, mirrors, settings) and the borrowed paths.
//!
//! A build first runs the recipe in *probe* mode: every call returns the value
//! a record holds for its key, without acting, until a key no record knows
//! (or the end); the latest checkpoint passed is the one to resume from. The
//! image is copied from it, and the recipe runs again, *replaying* the calls up
//! to the checkpoint and executing from there. This is exact as long as a
//! recipe is deterministic given the values its primitives return, which Rhai
//! without `eval`, time or randomness is.
//!
//! A checkpoint is taken before a call when the calls executed since the
//! previous one took at least [`Session::min_seconds`], and at the end of the
//! recipe under the same rule. It is written under a temporary name and
//! renamed (image first, record last), so a killed build leaves no half
//! checkpoint that could be used; temporaries of dead builds are swept.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use pgimg_stdlib::ctx::{Call, Steps};
use pgimg_stdlib::ctx::{Input, Journal, Redirect};
use pgimg_stdlib::journal::Asked;
use pgimg_stdlib::{Ctx, Target};
use rhai::Dynamic;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::manifest::CacheReport;
use super::stages::log;
use crate::image::workcopy;

/// Version of the key derivation and record format; a change misses every
/// older checkpoint.
const FORMAT: u32 = 2;

/// Default bound on the total size of the checkpoints (allocated bytes).
pub const DEFAULT_MAX_SIZE: u64 = 10 << 30;

/// Default for [`Session::min_seconds`]; `pgimg run --checkpoint-min-seconds`
/// (or `PGIMG_CHECKPOINT_MIN_SECONDS`) sets it.
pub const DEFAULT_MIN_SECONDS: f64 = 10.0;

/// What the first key is made of.
#[derive(Debug, Clone, Serialize)]
pub struct KeyInputs {
    /// sha256 of pgimg's own executable: any rebuild of pgimg misses.
    pub identity: String,
    pub pgimg_version: String,
    pub base_sha256: String,
    pub size: Option<u64>,
    pub params: std::collections::BTreeMap<String, String>,
    pub mirrors: std::collections::BTreeMap<String, String>,
    pub arch: String,
    /// sha256 of `pgimg.lock` beside the recipe, when there is one
    /// (`sha256_from: "lock"` pins come from it).
    pub lock_sha256: Option<String>,
    pub locked: bool,
}

impl KeyInputs {
    /// `k0`.
    pub fn first_key(&self) -> String {
        let mut h = Sha256::new();
        h.update(format!("pgimg-step-cache-v{FORMAT}\0"));
        h.update(serde_json::to_vec(self).expect("plain data"));
        hex::encode(h.finalize())
    }
}

/// sha256 of the running executable (`/proc/self/exe`).
pub fn build_identity() -> Result<String> {
    super::sha256_file(Path::new("/proc/self/exe")).context("hashing pgimg's own executable")
}

/// One primitive call in a record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    /// The chain key after this call.
    pub key: String,
    pub name: String,
    /// A primitive with an effect (else a query such as `param`).
    #[serde(default)]
    pub action: bool,
    pub location: String,
    /// What the call returned (JSON of the Rhai value).
    pub value: serde_json::Value,
}

/// The journal a build had at a checkpoint, less the actions (which replay
/// records again, with the current locations).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JournalState {
    pub inputs: Vec<Input>,
    pub asked: Asked,
    pub redirects: Vec<Redirect>,
    pub settings: std::collections::BTreeMap<String, serde_json::Value>,
}

impl JournalState {
    fn of(j: &Journal) -> JournalState {
        JournalState {
            inputs: j.inputs.clone(),
            asked: j.asked.clone(),
            redirects: j.redirects.clone(),
            settings: j.settings.clone(),
        }
    }

    fn apply(&self, j: &mut Journal) {
        j.inputs = self.inputs.clone();
        j.asked = self.asked.clone();
        j.redirects = self.redirects.clone();
        j.settings = self.settings.clone();
    }
}

/// A checkpoint's record (`<key>.json` beside `<key>.img`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Record {
    pub format: u32,
    pub key: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub recipe: String,
    /// `file:line primitive` of the last call before the checkpoint.
    pub after: String,
    pub steps: Vec<StepRecord>,
    pub journal: JournalState,
    /// The borrowed paths ([`pgimg_stdlib::borrow::Borrowed::export`]).
    pub borrowed: serde_json::Value,
}

/// A checkpoint on disk, as `pgimg cache ls` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    pub key: String,
    pub recipe: String,
    pub after: String,
    pub steps: usize,
    /// Allocated bytes of the image.
    pub size: u64,
    pub created: u64,
    /// Seconds since the epoch of the last write or resume (LRU order).
    pub used: u64,
    /// The same in nanoseconds, so checkpoints written within one second
    /// still sort in the order they were used.
    #[serde(skip)]
    used_ns: i128,
    #[serde(skip)]
    record: PathBuf,
    #[serde(skip)]
    image: PathBuf,
}

/// The checkpoints under `<cache>/steps`.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// The store's lock, released on drop (flock).
pub struct StoreLock {
    _file: File,
}

impl Store {
    pub fn new(cache_dir: &Path) -> Store {
        Store {
            dir: cache_dir.join("steps"),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn image(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.img"))
    }

    fn record(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.json"))
    }

    /// Takes the store's lock, saying whose lock it waits for.
    pub fn lock(&self) -> Result<StoreLock> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating {}", self.dir.display()))?;
        let path = self.dir.join(".lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        let fd = file.as_raw_fd();
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(fd, libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            log(&format!(
                "waiting for the cache lock held by pid {}",
                if holder.is_empty() { "?" } else { holder }
            ));
            // SAFETY: as above.
            if unsafe { libc::flock(fd, libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("locking {}", path.display()));
            }
        }
        let _ = file.set_len(0);
        let _ = file.write_all(std::process::id().to_string().as_bytes());
        Ok(StoreLock { _file: file })
    }

    /// Every complete checkpoint (record and image), least recently used first.
    pub fn entries(&self) -> Vec<Entry> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(key) = name.strip_suffix(".json") else {
                continue;
            };
            if key.starts_with('.') {
                continue;
            }
            let (record, image) = (self.record(key), self.image(key));
            let (Ok(rm), Ok(im)) = (std::fs::metadata(&record), std::fs::metadata(&image)) else {
                continue;
            };
            let Some(r) = read_record(&record) else {
                continue;
            };
            out.push(Entry {
                key: key.to_string(),
                recipe: r.recipe,
                after: r.after,
                steps: r.steps.len(),
                size: im.blocks() * 512,
                created: r.created,
                used: rm.mtime().max(0) as u64,
                used_ns: i128::from(rm.mtime()) * 1_000_000_000 + i128::from(rm.mtime_nsec()),
                record,
                image,
            });
        }
        out.sort_by_key(|e| (e.used_ns, e.created));
        out
    }

    /// Removes checkpoints unused for longer than `older_than`, then the least
    /// recently used until the rest fit in `max_size`. Call with the lock held.
    pub fn evict(&self, max_size: Option<u64>, older_than: Option<Duration>) -> Vec<Entry> {
        let now = now_secs();
        let mut entries = self.entries();
        let mut removed = Vec::new();
        if let Some(age) = older_than {
            let (old, keep): (Vec<Entry>, Vec<Entry>) = entries
                .into_iter()
                .partition(|e| now.saturating_sub(e.used) >= age.as_secs());
            removed.extend(old);
            entries = keep;
        }
        if let Some(max) = max_size {
            let mut total: u64 = entries.iter().map(|e| e.size).sum();
            let mut rest = entries.into_iter();
            for e in rest.by_ref() {
                if total <= max {
                    break;
                }
                total -= e.size;
                removed.push(e);
            }
        }
        for e in &removed {
            // Record first: an image without its record is never used.
            let _ = std::fs::remove_file(&e.record);
            let _ = std::fs::remove_file(&e.image);
        }
        removed
    }

    /// Removes temporaries that builds no longer running left behind.
    fn sweep(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix(".tmp-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            if !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }

    /// Marks `key` used now (LRU).
    fn touch(&self, key: &str) {
        if let Ok(f) = File::options().append(true).open(self.record(key)) {
            let _ = f.set_modified(SystemTime::now());
        }
    }
}

fn read_record(path: &Path) -> Option<Record> {
    let r: Record = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    (r.format == FORMAT).then_some(r)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Where checkpoints are cut from: the working image file and the mounted
/// root (to sync and freeze).
#[derive(Debug, Clone)]
pub struct Source {
    pub image: PathBuf,
    pub mountpoint: PathBuf,
}

/// Where a build resumes.
#[derive(Debug, Clone)]
pub struct Resume {
    pub record: Record,
}

enum Mode {
    /// Return recorded values while their keys are known; remember the
    /// latest checkpoint passed.
    Probe {
        values: HashMap<String, serde_json::Value>,
        checkpoints: HashMap<String, Record>,
        best: Option<Record>,
        /// Past the first unknown call: a recipe that catches the error must
        /// not go on matching keys.
        stopped: bool,
    },
    /// Return the record's values up to its last step, then execute.
    Replay(Record),
    Execute,
}

struct State {
    key: String,
    steps: Vec<StepRecord>,
    mode: Mode,
    /// `steps.len()` at the last checkpoint (or the resume point).
    last_checkpoint: usize,
    /// Time spent in executed calls since then.
    since: Duration,
    started: Option<Instant>,
    report: CacheReport,
    /// A failed checkpoint, a caught failure or a value JSON cannot carry
    /// turns checkpoints off for the rest of the build.
    broken: bool,
}

/// One build's use of the cache: the [`Steps`] hook of its recipe run.
pub struct Session {
    store: Store,
    recipe: String,
    min_seconds: f64,
    max_size: u64,
    source: Mutex<Option<Source>>,
    state: Mutex<State>,
}

/// Probe stopped at a call no record knows.
const UNKNOWN: &str = "pgimg-step-cache: unknown step";

impl Session {
    fn new(
        store: Store,
        recipe: &str,
        k0: String,
        mode: Mode,
        max_size: u64,
        min_seconds: f64,
    ) -> Session {
        Session {
            store,
            recipe: recipe.to_string(),
            min_seconds,
            max_size,
            source: Mutex::new(None),
            state: Mutex::new(State {
                key: k0,
                steps: Vec::new(),
                mode,
                last_checkpoint: 0,
                since: Duration::ZERO,
                started: None,
                report: CacheReport::default(),
                broken: false,
            }),
        }
    }

    /// A session for a probe run: every record of the store, by key.
    pub fn probe(store: &Store, recipe: &str, k0: String) -> Option<Session> {
        let _lock = store.lock().ok()?;
        store.sweep();
        let mut values = HashMap::new();
        let mut checkpoints = HashMap::new();
        for e in store.entries() {
            let Some(r) = read_record(&e.record) else {
                continue;
            };
            for s in &r.steps {
                values
                    .entry(s.key.clone())
                    .or_insert_with(|| s.value.clone());
            }
            checkpoints.insert(r.key.clone(), r);
        }
        if checkpoints.is_empty() {
            return None;
        }
        Some(Session::new(
            store.clone(),
            recipe,
            k0,
            Mode::Probe {
                values,
                checkpoints,
                best: None,
                stopped: false,
            },
            0,
            // A probe takes no checkpoint.
            DEFAULT_MIN_SECONDS,
        ))
    }

    /// The checkpoint a probe run found, if any.
    pub fn found(&self) -> Option<Resume> {
        match &self.state.lock().unwrap().mode {
            Mode::Probe { best, .. } => best.clone().map(|record| Resume { record }),
            _ => None,
        }
    }

    /// The session of the real run: replaying `resume` first, if given;
    /// checkpoints after `min_seconds` of executed calls, bounded to
    /// `max_size` bytes in all.
    pub fn build(
        store: Store,
        recipe: &str,
        k0: String,
        resume: Option<Resume>,
        max_size: u64,
        min_seconds: f64,
    ) -> Session {
        let mode = match resume {
            Some(r) => Mode::Replay(r.record),
            None => Mode::Execute,
        };
        Session::new(store, recipe, k0, mode, max_size, min_seconds)
    }

    /// Copies the checkpoint's image to `work` (a new file) and marks it used.
    pub fn restore(store: &Store, resume: &Resume, work: &Path) -> Result<()> {
        // No eviction while the image is copied.
        let _lock = store.lock()?;
        let img = store.image(&resume.record.key);
        workcopy::copy(&img, work)
            .with_context(|| format!("restoring the checkpoint {}", img.display()))?;
        store.touch(&resume.record.key);
        Ok(())
    }

    /// Runs every step after all (the checkpoint could not be restored).
    pub fn forget_resume(&self) {
        self.state.lock().unwrap().mode = Mode::Execute;
    }

    /// Checkpoints are cut from `source` from now on.
    pub fn set_source(&self, source: Source) {
        *self.source.lock().unwrap() = Some(source);
    }

    /// After the recipe succeeded: a last checkpoint when due; the report.
    pub fn finish(&self, target: &dyn Target, journal: &Journal) -> CacheReport {
        let mut st = self.state.lock().unwrap();
        if st.started.take().is_some() {
            // The last call failed and the recipe caught it (see `before`).
            st.broken = true;
        }
        if matches!(st.mode, Mode::Execute) {
            self.checkpoint_if_due(&mut st, target, journal);
        }
        st.report.clone()
    }

    fn checkpoint_if_due(&self, st: &mut State, target: &dyn Target, journal: &Journal) {
        if st.broken
            || st.steps.len() <= st.last_checkpoint
            || st.since.as_secs_f64() < self.min_seconds
        {
            return;
        }
        let Some(source) = self.source.lock().unwrap().clone() else {
            return;
        };
        match self.checkpoint(st, &source, target, journal) {
            Ok(()) => {
                st.report.checkpoints_written += 1;
            }
            Err(e) => {
                log(&format!(
                    "warning: no checkpoint (the build goes on without): {e:#}"
                ));
                st.broken = true;
            }
        }
        st.last_checkpoint = st.steps.len();
        st.since = Duration::ZERO;
    }

    fn checkpoint(
        &self,
        st: &State,
        source: &Source,
        target: &dyn Target,
        journal: &Journal,
    ) -> Result<()> {
        let started = Instant::now();
        let last = st.steps.last().expect("a step ran");
        let record = Record {
            format: FORMAT,
            key: st.key.clone(),
            created: now_secs(),
            recipe: self.recipe.clone(),
            after: format!("{} {}", short_location(&last.location), last.name),
            steps: st.steps.clone(),
            journal: JournalState::of(journal),
            borrowed: target
                .borrowed()
                .map(|b| b.export())
                .unwrap_or(serde_json::Value::Null),
        };
        std::fs::create_dir_all(&self.store.dir)
            .with_context(|| format!("creating {}", self.store.dir.display()))?;
        if self.store.record(&record.key).exists() && self.store.image(&record.key).exists() {
            return Ok(());
        }
        let tmp = Temp::new(&self.store.dir, &record.key);
        {
            let _frozen = Frozen::new(&source.mountpoint)?;
            workcopy::copy(&source.image, &tmp.image)?;
        }
        // On disk before the record names it: a crash must not leave a
        // record whose image is partly unwritten.
        File::open(&tmp.image)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("syncing {}", tmp.image.display()))?;
        std::fs::write(&tmp.record, serde_json::to_vec(&record)?)
            .with_context(|| format!("writing {}", tmp.record.display()))?;
        let _ = std::fs::set_permissions(&tmp.record, std::fs::Permissions::from_mode(0o600));
        let size = std::fs::metadata(&tmp.image)
            .map(|m| m.blocks() * 512)
            .unwrap_or(0);
        {
            let _lock = self.store.lock()?;
            std::fs::rename(&tmp.image, self.store.image(&record.key))
                .context("storing the checkpoint image")?;
            std::fs::rename(&tmp.record, self.store.record(&record.key))
                .context("storing the checkpoint record")?;
            for e in self.store.evict(Some(self.max_size), None) {
                log(&format!(
                    "cache: evicted the checkpoint after {} ({}, {} MiB)",
                    e.after,
                    e.recipe,
                    e.size >> 20
                ));
            }
        }
        log(&format!(
            "checkpoint after {}: {} MiB in {:.1} s",
            record.after,
            size >> 20,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }

    fn step_key(prev: &str, ctx: &Ctx, name: &str, args: &[Dynamic]) -> String {
        let mut h = Sha256::new();
        h.update(prev.as_bytes());
        h.update(b"\0");
        h.update(name.as_bytes());
        h.update(b"\0");
        let json = serde_json::to_vec(args).unwrap_or_else(|_| format!("{args:?}").into_bytes());
        h.update(&json);
        for s in strings(args) {
            if let Some(path) = asset_path(ctx, &s) {
                h.update(b"\0asset\0");
                h.update(s.as_bytes());
                hash_tree(&path, true, &mut h);
            }
        }
        hex::encode(h.finalize())
    }
}

/// `file:line` of a `file:line:col` location.
fn short_location(loc: &str) -> &str {
    loc.rsplit_once(':').map(|(a, _)| a).unwrap_or(loc)
}

impl Steps for Session {
    fn before(&self, ctx: &Ctx, call: &Call) -> Result<Option<Dynamic>, String> {
        let Call {
            name,
            action,
            loc,
            args,
        } = *call;
        let mut guard = self.state.lock().unwrap();
        let st = &mut *guard;
        if let Mode::Probe { stopped: true, .. } = st.mode {
            return Err(UNKNOWN.into());
        }
        let key = Session::step_key(&st.key, ctx, name, args);
        let location = loc.to_string();
        let value = match &mut st.mode {
            Mode::Probe {
                values,
                checkpoints,
                best,
                stopped,
            } => {
                let Some(v) = values.get(&key).cloned() else {
                    *stopped = true;
                    return Err(UNKNOWN.into());
                };
                if let Some(r) = checkpoints.get(&key) {
                    *best = Some(r.clone());
                }
                v
            }
            Mode::Replay(record) => {
                let i = st.steps.len();
                let Some(rec) = record.steps.get(i) else {
                    return Err("the step cache replayed past its checkpoint".into());
                };
                if rec.key != key {
                    return Err(format!(
                        "the recipe did not replay as recorded (call {} differs from {} {}); \
                         is it deterministic? Build with --no-cache",
                        i + 1,
                        rec.location,
                        rec.name
                    ));
                }
                let v = rec.value.clone();
                if i + 1 == record.steps.len() {
                    let (after, state) = (record.after.clone(), record.journal.clone());
                    let actions = record.steps.iter().filter(|s| s.action).count();
                    state.apply(&mut ctx.journal.lock().unwrap());
                    st.report.resumed_after = Some(after.clone());
                    st.report.resumed_from = Some(record.key.clone());
                    st.report.actions_skipped = actions;
                    st.report.calls_replayed = i + 1;
                    st.last_checkpoint = i + 1;
                    st.mode = Mode::Execute;
                    log(&format!("resumed after {after}: {actions} actions skipped"));
                }
                v
            }
            Mode::Execute => {
                if st.started.take().is_some() && !st.broken {
                    // The previous call failed and the recipe caught it: a
                    // failure is not something a replay gives back.
                    st.broken = true;
                    log(&format!(
                        "step cache: {} failed and the recipe went on; no more checkpoints in this build",
                        st.steps.last().map(|s| short_location(&s.location)).unwrap_or("?")
                    ));
                }
                if !st.steps.is_empty() {
                    let journal = ctx.journal.lock().unwrap();
                    self.checkpoint_if_due(st, ctx.target.as_ref(), &journal);
                }
                st.steps.push(StepRecord {
                    key: key.clone(),
                    name: name.to_string(),
                    action,
                    location,
                    value: serde_json::Value::Null,
                });
                st.key = key;
                st.started = Some(Instant::now());
                return Ok(None);
            }
        };
        st.steps.push(StepRecord {
            key: key.clone(),
            name: name.to_string(),
            action,
            location,
            value: value.clone(),
        });
        st.key = key;
        let v: Dynamic = serde_json::from_value(value).map_err(|e| e.to_string())?;
        Ok(Some(v))
    }

    fn after(&self, _ctx: &Ctx, value: &Dynamic) {
        let mut st = self.state.lock().unwrap();
        if let Some(t) = st.started.take() {
            st.since += t.elapsed();
        }
        let json = serde_json::to_value(value).ok();
        // What a replay would return must be what the body returned.
        let back = json
            .clone()
            .and_then(|j| serde_json::from_value::<Dynamic>(j).ok());
        if back.is_none_or(|b| b.type_name() != value.type_name()) && !st.broken {
            st.broken = true;
            log(&format!(
                "step cache: {} returned a {} that cannot be stored; no more checkpoints in this build",
                st.steps.last().map(|s| short_location(&s.location)).unwrap_or("?"),
                value.type_name()
            ));
        }
        if let Some(last) = st.steps.last_mut() {
            last.value = json.unwrap_or(serde_json::Value::Null);
        }
    }
}

/// Every string in the arguments, map keys left out.
fn strings(args: &[Dynamic]) -> Vec<String> {
    fn walk(d: &Dynamic, out: &mut Vec<String>) {
        if let Some(s) = d.read_lock::<rhai::ImmutableString>() {
            out.push(s.to_string());
        } else if let Some(a) = d.read_lock::<rhai::Array>() {
            a.iter().for_each(|x| walk(x, out));
        } else if let Some(m) = d.read_lock::<rhai::Map>() {
            m.values().for_each(|x| walk(x, out));
        }
    }
    let mut out = Vec::new();
    args.iter().for_each(|a| walk(a, &mut out));
    out
}

/// The asset a string names, when it names one (any primitive taking an
/// asset path finds it the same way).
fn asset_path(ctx: &Ctx, s: &str) -> Option<PathBuf> {
    if s.is_empty() || s.len() > 1024 || s.contains('\n') || s.starts_with('/') || s.contains("://")
    {
        return None;
    }
    let p = ctx.asset(s).ok()?;
    p.symlink_metadata().is_ok().then_some(p)
}

/// Names, kinds, modes, link targets and contents of a file or folder.
fn hash_tree(path: &Path, follow: bool, h: &mut Sha256) {
    let meta = if follow {
        std::fs::metadata(path)
    } else {
        std::fs::symlink_metadata(path)
    };
    let Ok(meta) = meta else {
        h.update(b"?");
        return;
    };
    h.update(format!("{:o}\0", meta.mode()));
    if meta.file_type().is_symlink() {
        h.update(b"L");
        if let Ok(t) = std::fs::read_link(path) {
            h.update(t.as_os_str().as_encoded_bytes());
        }
    } else if meta.is_dir() {
        h.update(b"D");
        let mut names: Vec<_> = std::fs::read_dir(path)
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        names.sort();
        for n in names {
            h.update(n.as_encoded_bytes());
            h.update(b"\0");
            hash_tree(&path.join(&n), false, h);
        }
        h.update(b"\0end\0");
    } else {
        h.update(format!("F{}\0", meta.len()));
        if let Ok(mut f) = File::open(path) {
            let _ = std::io::copy(&mut f, h);
        }
    }
}

/// A checkpoint being written: removed on drop unless renamed.
struct Temp {
    image: PathBuf,
    record: PathBuf,
}

impl Temp {
    fn new(dir: &Path, key: &str) -> Temp {
        let stem = format!(".tmp-{}-{key}", std::process::id());
        Temp {
            image: dir.join(format!("{stem}.img")),
            record: dir.join(format!("{stem}.json")),
        }
    }
}

impl Drop for Temp {
    /// Removes whatever of the temporary checkpoint is left.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.image);
        let _ = std::fs::remove_file(&self.record);
    }
}

/// The mounted root synced and frozen (`FIFREEZE`), so the image file holds a
/// consistent file system while it is copied; thawed on drop.
struct Frozen {
    dir: File,
    frozen: bool,
}

// _IOWR('X', 119, int) and _IOWR('X', 120, int).
const FIFREEZE: libc::c_ulong = 0xC004_5877;
const FITHAW: libc::c_ulong = 0xC004_5878;

impl Frozen {
    fn new(mountpoint: &Path) -> Result<Frozen> {
        let dir =
            File::open(mountpoint).with_context(|| format!("opening {}", mountpoint.display()))?;
        // What the build mounted under /boot (an ESP, a separate /boot) is in
        // the same image file but another file system: flushed too. No
        // command runs between two primitive calls, so nothing writes there
        // while the copy is made.
        // SAFETY: sync takes no arguments.
        unsafe { libc::sync() };
        // SAFETY: syncfs and ioctl on an fd we own; no memory is passed.
        if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("syncing {}", mountpoint.display()));
        }
        // SAFETY: as above.
        let frozen = unsafe { libc::ioctl(dir.as_raw_fd(), FIFREEZE as _, 0) } == 0;
        Ok(Frozen { dir, frozen })
    }
}

impl Drop for Frozen {
    /// Thaws the file system (`FITHAW`) when it was frozen.
    fn drop(&mut self) {
        if self.frozen {
            // SAFETY: ioctl on an fd we own.
            if unsafe { libc::ioctl(self.dir.as_raw_fd(), FITHAW as _, 0) } != 0 {
                log(&format!(
                    "warning: thawing the root file system: {}",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
}

/// Recipe runs under the cache need this to tell a stopped probe from a failure.
pub fn is_probe_stop(msg: &str) -> bool {
    msg.contains(UNKNOWN)
}

/// The probe run's session, for callers holding it in an `Arc`.
pub fn as_steps(s: &Arc<Session>) -> Arc<dyn Steps> {
    s.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs() -> KeyInputs {
        KeyInputs {
            identity: "a".repeat(64),
            pgimg_version: "0.1.0".into(),
            base_sha256: "b".repeat(64),
            size: Some(4 << 30),
            params: [("k".to_string(), "v".to_string())].into(),
            mirrors: Default::default(),
            arch: "amd64".into(),
            lock_sha256: None,
            locked: false,
        }
    }

    /// A rebuilt pgimg (another executable) misses every checkpoint.
    #[test]
    fn build_identity_is_part_of_the_first_key() {
        let a = inputs();
        let mut b = inputs();
        b.identity = "c".repeat(64);
        assert_ne!(a.first_key(), b.first_key());
        assert_eq!(a.first_key(), inputs().first_key());
        let id = build_identity().unwrap();
        assert_eq!(id.len(), 64);
    }

    /// Each input of the first key changes it.
    #[test]
    fn every_build_input_changes_the_first_key() {
        let base = inputs().first_key();
        type Change = Box<dyn Fn(&mut KeyInputs)>;
        let changes: Vec<(&str, Change)> = vec![
            ("base", Box::new(|k| k.base_sha256 = "d".repeat(64))),
            ("size", Box::new(|k| k.size = Some(5 << 30))),
            (
                "param",
                Box::new(|k| {
                    k.params.insert("k".into(), "w".into());
                }),
            ),
            (
                "mirror",
                Box::new(|k| {
                    k.mirrors.insert("m".into(), "http://x".into());
                }),
            ),
            ("arch", Box::new(|k| k.arch = "arm64".into())),
            ("lock", Box::new(|k| k.lock_sha256 = Some("e".repeat(64)))),
            ("locked", Box::new(|k| k.locked = true)),
            ("version", Box::new(|k| k.pgimg_version = "0.2.0".into())),
        ];
        for (what, change) in changes {
            let mut k = inputs();
            change(&mut k);
            assert_ne!(k.first_key(), base, "{what}");
        }
    }

    /// Asset trees hash names, modes and contents.
    #[test]
    fn an_asset_tree_hash_sees_content_mode_and_names() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("t")).unwrap();
        std::fs::write(d.path().join("t/a"), "1").unwrap();
        let digest = || {
            let mut h = Sha256::new();
            hash_tree(&d.path().join("t"), true, &mut h);
            hex::encode(h.finalize())
        };
        let first = digest();
        assert_eq!(first, digest());
        std::fs::write(d.path().join("t/a"), "2").unwrap();
        let second = digest();
        assert_ne!(first, second);
        std::fs::set_permissions(d.path().join("t/a"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        let third = digest();
        assert_ne!(second, third);
        std::fs::write(d.path().join("t/b"), "").unwrap();
        assert_ne!(third, digest());
    }
}
