//! System tests of the step cache on the Debian fixture: each invalidation
//! cause misses and an unchanged rebuild hits; an incremental build writes
//! the same file tree as a build from scratch; `--no-cache`; `cache ls` and
//! `cache prune`; eviction of the least recently used; a failing build leaves
//! only complete checkpoints; two builds sharing a cache at once.
//!
//! Needs root; `cargo test --test cache -- --nocapture`. Every test has its
//! own cache folder (removed with its scratch folder), and checkpoints are
//! cut after 0.5 s of work (`PGIMG_CHECKPOINT_MIN_SECONDS`), so the test
//! recipe's two `sleep 1` steps place them.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/output.rs"]
mod output;
#[path = "support/pgimg.rs"]
mod pgimg_bin;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fixture::checked_base_image as base_image;
use output::with_root_read_only;
use pgimg_bin::{pgimg, read_json, scratch, sidecar, Finished, Pgimg};
use serde_json::Value;

/// Line numbers matter: the tests name the checkpoints by them.
const RECIPE: &str = r#"let greeting = param("greeting", "hello");
let site = mirror("site", "http://example.invalid/pub");
write_file("/etc/cache-test-first", `${greeting} ${site}\n`);
run("sleep 1");
copy_asset("note.txt", "/etc/cache-test-note", #{ mode: 0o640 });
run("sleep 1");
write_file("/etc/cache-test-last", "LAST\n");
"#;

/// A recipe folder (`r.rhai`, `assets/note.txt`), its cache and outputs.
struct Scene {
    dir: tempfile::TempDir,
    n: std::cell::Cell<u32>,
}

impl Scene {
    fn new() -> Scene {
        let dir = scratch();
        std::fs::create_dir_all(dir.path().join("assets")).unwrap();
        std::fs::write(dir.path().join("assets/note.txt"), "note 1\n").unwrap();
        let s = Scene {
            dir,
            n: std::cell::Cell::new(0),
        };
        s.recipe(RECIPE);
        s
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn recipe(&self, text: &str) {
        std::fs::write(self.path("r.rhai"), text).unwrap();
    }

    fn cache(&self) -> PathBuf {
        self.path("cache")
    }

    fn args(&self, base: &Path, out: &Path, extra: &[&str]) -> Vec<OsString> {
        let mut a: Vec<OsString> = vec!["run".into(), self.path("r.rhai").into()];
        a.extend(["--base".into(), base.into()]);
        a.extend(["--output".into(), out.into()]);
        a.extend(["--cache-dir".into(), self.cache().into()]);
        a.extend(extra.iter().map(OsString::from));
        a
    }

    fn start(&self, base: &Path, extra: &[&str]) -> (Pgimg, PathBuf) {
        self.n.set(self.n.get() + 1);
        let out = self.path(&format!("out{}.raw", self.n.get()));
        let args = self.args(base, &out, extra);
        let env = [
            ("PGIMG_NO_CACHE", Path::new("0")),
            ("PGIMG_CHECKPOINT_MIN_SECONDS", Path::new("0.5")),
        ];
        (Pgimg::spawn_with_env(&args, None, &env), out)
    }

    /// A build that must succeed: its output and what the manifest says of the cache.
    fn build_on(&self, base: &Path, extra: &[&str]) -> Built {
        let (p, out) = self.start(base, extra);
        let run = p.finish(Duration::from_secs(600));
        assert_eq!(run.code(), Some(0), "{}", run.stderr);
        let manifest = read_json(&sidecar(&out, "manifest.json"));
        Built {
            cache: manifest["cache"].clone(),
            out,
            run,
        }
    }

    fn build(&self, extra: &[&str]) -> Built {
        self.build_on(&base_image(), extra)
    }

    fn cache_cmd(&self, args: &[&str]) -> Finished {
        let mut a: Vec<OsString> = vec!["cache".into()];
        a.extend(args.iter().map(OsString::from));
        a.extend(["--cache-dir".into(), self.cache().into()]);
        let f = pgimg(&a, None, Duration::from_secs(60));
        assert_eq!(f.code(), Some(0), "{}", f.stderr);
        f
    }

    /// Files in the store (checkpoints and anything else).
    fn store_files(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.cache().join("steps"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n != ".lock")
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }
}

struct Built {
    out: PathBuf,
    cache: Value,
    run: Finished,
}

impl Built {
    /// `file:line primitive` resumed after, or None for a build from the start.
    fn resumed_after(&self) -> Option<String> {
        self.cache["resumed_after"].as_str().map(|s| {
            // The recipe's path is shown relative to the repository or absolute.
            s.rsplit('/').next().unwrap().to_string()
        })
    }

    fn skipped(&self) -> u64 {
        self.cache["actions_skipped"].as_u64().unwrap()
    }

    /// Removes the output image (hundreds of MiB) once only what the
    /// manifest said of the cache is wanted: two tests at once each keeping
    /// four outputs beside their checkpoints needed 7 GB.
    fn discard(&self) {
        std::fs::remove_file(&self.out).unwrap();
    }
}

fn root_or_skip(name: &str) -> bool {
    fixture::require_root(name)
}

/// A cold build writes two checkpoints; the same build again resumes after
/// the last one and runs only the step after it.
fn cold_then_warm(s: &Scene) {
    let cold = s.build(&[]);
    assert_eq!(cold.resumed_after(), None, "{}", cold.run.stderr);
    assert_eq!(cold.cache["checkpoints_written"], 2, "{}", cold.run.stderr);
    cold.discard();
    let warm = s.build(&[]);
    warm.discard();
    assert_eq!(warm.resumed_after().as_deref(), Some("r.rhai:6 run"));
    assert_eq!(
        warm.skipped(),
        5,
        "mirror, write_file, run, copy_asset, run"
    );
    assert!(
        warm.run.stderr.contains("resumed after ")
            && warm.run.stderr.contains("r.rhai:6 run: 5 actions skipped"),
        "{}",
        warm.run.stderr
    );
}

/// A change of something in the first key: from the start, then (unchanged) resumed.
fn misses_then_hits(s: &Scene, base: &Path, extra: &[&str]) {
    let changed = s.build_on(base, extra);
    assert_eq!(changed.resumed_after(), None, "{}", changed.run.stderr);
    changed.discard();
    let again = s.build_on(base, extra);
    again.discard();
    assert_eq!(again.resumed_after().as_deref(), Some("r.rhai:6 run"));
}

#[test]
fn an_unchanged_rebuild_resumes_from_the_last_checkpoint() {
    if !root_or_skip("an_unchanged_rebuild_resumes_from_the_last_checkpoint") {
        return;
    }
    let s = Scene::new();
    cold_then_warm(&s);
}

#[test]
fn a_changed_asset_misses_from_the_step_reading_it() {
    if !root_or_skip("a_changed_asset_misses_from_the_step_reading_it") {
        return;
    }
    let s = Scene::new();
    cold_then_warm(&s);
    std::fs::write(s.path("assets/note.txt"), "note 2\n").unwrap();
    let b = s.build(&[]);
    assert_eq!(b.resumed_after().as_deref(), Some("r.rhai:4 run"));
    assert_eq!(b.skipped(), 3, "mirror, write_file, run");
    let text = with_root_read_only(&b.out, |r| {
        std::fs::read_to_string(r.join("etc/cache-test-note")).unwrap()
    });
    assert_eq!(text, "note 2\n");
    // The asset's mode is part of it too.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        s.path("assets/note.txt"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let b = s.build(&[]);
    assert_eq!(b.resumed_after().as_deref(), Some("r.rhai:4 run"));
    let b = s.build(&[]);
    assert_eq!(b.resumed_after().as_deref(), Some("r.rhai:6 run"));
}

#[test]
fn a_changed_argument_misses_from_that_step() {
    if !root_or_skip("a_changed_argument_misses_from_that_step") {
        return;
    }
    let s = Scene::new();
    cold_then_warm(&s);
    // The last step: the build resumes after the one before it.
    s.recipe(&RECIPE.replace("LAST", "CHANGED"));
    let b = s.build(&[]);
    assert_eq!(b.resumed_after().as_deref(), Some("r.rhai:6 run"));
    let text = with_root_read_only(&b.out, |r| {
        std::fs::read_to_string(r.join("etc/cache-test-last")).unwrap()
    });
    assert_eq!(text, "CHANGED\n");
    // A step in the middle (a pin is an argument like this one).
    s.recipe(&RECIPE.replace("mode: 0o640", "mode: 0o644"));
    let b = s.build(&[]);
    assert_eq!(b.resumed_after().as_deref(), Some("r.rhai:4 run"));
    // A step before the first checkpoint: from the start.
    s.recipe(&RECIPE.replace("run(\"sleep 1\");\ncopy", "run(\"sleep 1 \");\ncopy"));
    let b = s.build(&[]);
    assert_eq!(b.resumed_after(), None);
}

#[test]
fn a_changed_param_misses_everything() {
    if !root_or_skip("a_changed_param_misses_everything") {
        return;
    }
    let s = Scene::new();
    cold_then_warm(&s);
    misses_then_hits(&s, &base_image(), &["--set", "greeting=hi"]);
}

#[test]
fn a_changed_mirror_misses_everything() {
    if !root_or_skip("a_changed_mirror_misses_everything") {
        return;
    }
    let s = Scene::new();
    cold_then_warm(&s);
    misses_then_hits(
        &s,
        &base_image(),
        &["--mirror", "site=http://mirror.invalid/pub"],
    );
}

#[test]
fn a_changed_final_size_misses_everything() {
    if !root_or_skip("a_changed_final_size_misses_everything") {
        return;
    }
    let s = Scene::new();
    cold_then_warm(&s);
    misses_then_hits(&s, &base_image(), &["--size", "3G"]);
}

#[test]
fn a_changed_lock_file_misses_everything() {
    if !root_or_skip("a_changed_lock_file_misses_everything") {
        return;
    }
    let s = Scene::new();
    cold_then_warm(&s);
    std::fs::write(
        s.path("pgimg.lock"),
        "url http://example.invalid/x 0000000000000000000000000000000000000000000000000000000000000000\n",
    )
    .unwrap();
    misses_then_hits(&s, &base_image(), &[]);
}

#[test]
fn a_changed_base_image_misses_everything_also_when_changed_in_place() {
    if !root_or_skip("a_changed_base_image_misses_everything_also_when_changed_in_place") {
        return;
    }
    let s = Scene::new();
    cold_then_warm(&s);
    // A copy of the fixture with one byte changed in the gap after the GPT's
    // partition entries (LBA 40), which nothing reads.
    let base = s.path("base.raw");
    let st = std::process::Command::new("cp")
        .args(["--sparse=always"])
        .arg(base_image())
        .arg(&base)
        .status()
        .unwrap();
    assert!(st.success());
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&base).unwrap();
        f.write_all_at(&[0x5a], 40 * 512).unwrap();
    }
    misses_then_hits(&s, &base, &[]);
    // Changed again in place, its mtime put back: the same inode, size and
    // mtime, so only its ctime tells the base's remembered digest is stale.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&base).unwrap();
        let mtime = f.metadata().unwrap().modified().unwrap();
        f.write_all_at(&[0xa5], 40 * 512).unwrap();
        f.set_modified(mtime).unwrap();
    }
    misses_then_hits(&s, &base, &[]);
}

/// `(kind, mode, uid, gid, content or link target)` of every path of a root.
fn tree(root: &Path) -> BTreeMap<String, (String, u32, u32, u32, String)> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (String, u32, u32, u32, String)>) {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let p = dir.join(&n);
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            // The embedded manifest holds the build's timings and cache report.
            if rel == "usr/share/pgimg/manifest.json" || rel == "lost+found" {
                continue;
            }
            let m = std::fs::symlink_metadata(&p).unwrap();
            let (kind, what) = if m.file_type().is_symlink() {
                (
                    "link",
                    std::fs::read_link(&p).unwrap().display().to_string(),
                )
            } else if m.is_dir() {
                ("dir", String::new())
            } else if m.is_file() {
                use sha2::Digest;
                let bytes = std::fs::read(&p).unwrap();
                ("file", hex::encode(sha2::Sha256::digest(&bytes)))
            } else {
                ("other", m.rdev().to_string())
            };
            out.insert(rel, (kind.into(), m.mode(), m.uid(), m.gid(), what));
            if m.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

#[test]
fn an_incremental_build_has_the_same_tree_as_a_build_from_scratch() {
    if !root_or_skip("an_incremental_build_has_the_same_tree_as_a_build_from_scratch") {
        return;
    }
    let s = Scene::new();
    s.build(&[]);
    // A change in the last step, so the incremental build runs a step
    // after a restored checkpoint.
    s.recipe(&RECIPE.replace("LAST", "CHANGED"));
    let incremental = s.build(&[]);
    assert_eq!(incremental.resumed_after().as_deref(), Some("r.rhai:6 run"));
    let before = s.store_files();
    let scratch_build = s.build(&["--no-cache"]);
    assert!(scratch_build.cache.is_null(), "--no-cache: no cache report");
    assert!(
        !scratch_build.run.stderr.contains("step cache"),
        "{}",
        scratch_build.run.stderr
    );
    assert_eq!(s.store_files(), before, "--no-cache wrote no checkpoint");
    let a = with_root_read_only(&incremental.out, tree);
    let b = with_root_read_only(&scratch_build.out, tree);
    assert!(a.len() > 1000, "a real root: {} paths", a.len());
    let differ: Vec<_> = a
        .iter()
        .filter(|(k, v)| b.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
        .collect();
    assert!(differ.is_empty(), "paths that differ: {differ:?}");
    output::e2fsck_clean(&incremental.out);
}

#[test]
fn cache_ls_lists_and_prune_removes_the_least_recently_used() {
    if !root_or_skip("cache_ls_lists_and_prune_removes_the_least_recently_used") {
        return;
    }
    let s = Scene::new();
    s.build(&[]);
    let ls = s.cache_cmd(&["ls"]);
    assert!(ls.stdout.contains("r.rhai:4 run"), "{}", ls.stdout);
    assert!(ls.stdout.contains("r.rhai:6 run"), "{}", ls.stdout);
    assert!(ls.stdout.contains("2 checkpoints"), "{}", ls.stdout);
    let json: Value = serde_json::from_str(&s.cache_cmd(&["ls", "--json"]).stdout).unwrap();
    let sizes: Vec<u64> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["size"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes.len(), 2);
    // Room for one (the two are about the same size): the least recently
    // used, the first written, goes.
    let max = (sizes.iter().max().unwrap() * 3 / 2).to_string();
    let pruned = s.cache_cmd(&["prune", "--max-size", &max]);
    assert!(pruned.stdout.contains("r.rhai:4 run"), "{}", pruned.stdout);
    assert!(
        pruned.stdout.contains("1 checkpoints removed"),
        "{}",
        pruned.stdout
    );
    let ls = s.cache_cmd(&["ls"]);
    assert!(ls.stdout.contains("1 checkpoints"), "{}", ls.stdout);
    assert!(ls.stdout.contains("r.rhai:6 run"), "{}", ls.stdout);
    // Still usable.
    let b = s.build(&[]);
    assert_eq!(b.resumed_after().as_deref(), Some("r.rhai:6 run"));
    // A resume makes a checkpoint the most recently used; a build over the
    // limit evicts the least recently used.
    s.recipe(&RECIPE.replace("LAST", "OTHER").replace(
        "run(\"sleep 1\");\nwrite",
        "run(\"sleep 1\");\nrun(\"sleep 1\");\nwrite",
    ));
    let b = s.build(&["--cache-max-size", &max]);
    assert!(
        b.run.stderr.contains("cache: evicted the checkpoint after"),
        "{}",
        b.run.stderr
    );
    let pruned = s.cache_cmd(&["prune", "--older-than", "0s"]);
    assert!(
        pruned.stdout.contains("1 checkpoints removed"),
        "{}",
        pruned.stdout
    );
    assert_eq!(s.store_files(), Vec::<String>::new());
}

#[test]
fn a_failing_build_leaves_only_complete_checkpoints_and_the_next_resumes() {
    if !root_or_skip("a_failing_build_leaves_only_complete_checkpoints_and_the_next_resumes") {
        return;
    }
    let s = Scene::new();
    s.recipe(&RECIPE.replace(
        "write_file(\"/etc/cache-test-last\", \"LAST\\n\");",
        "run(\"exit 3\");",
    ));
    let (p, out) = s.start(&base_image(), &[]);
    let failed = p.finish(Duration::from_secs(600));
    assert_eq!(failed.code(), Some(1), "{}", failed.stderr);
    assert!(!out.exists());
    let files = s.store_files();
    assert!(
        files.iter().all(|f| !f.starts_with(".tmp")),
        "no temporary left: {files:?}"
    );
    assert_eq!(files.len(), 4, "two complete checkpoints: {files:?}");
    s.recipe(RECIPE);
    let b = s.build(&[]);
    assert_eq!(b.resumed_after().as_deref(), Some("r.rhai:6 run"));
}

#[test]
fn two_builds_sharing_a_cache_at_once_both_succeed() {
    if !root_or_skip("two_builds_sharing_a_cache_at_once_both_succeed") {
        return;
    }
    let s = Scene::new();
    let base = base_image();
    let (a, out_a) = s.start(&base, &[]);
    let (b, out_b) = s.start(&base, &[]);
    let (ra, rb) = (
        a.finish(Duration::from_secs(600)),
        b.finish(Duration::from_secs(600)),
    );
    assert_eq!(ra.code(), Some(0), "{}", ra.stderr);
    assert_eq!(rb.code(), Some(0), "{}", rb.stderr);
    assert!(out_a.exists() && out_b.exists());
    let files = s.store_files();
    assert!(files.iter().all(|f| !f.starts_with(".tmp")), "{files:?}");
    let warm = s.build(&[]);
    assert_eq!(warm.resumed_after().as_deref(), Some("r.rhai:6 run"));
}
