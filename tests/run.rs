//! System tests of `pgimg run`, `pgimg shell` and `pgimg inspect` on the Debian
//! fixture image, driving the real binary: every primitive for real (one
//! shared build of `recipes/examples/everything.rhai`, then PostgreSQL, the Go
//! binary, users, units and the finalize cleanup checked in the output), a
//! no-op recipe, and the failure paths (a failing recipe, SIGINT/SIGTERM during
//! a download, apt and finalize, SIGKILL, a full image), after each of which no
//! mount, loop device, process or output file may remain.
//!
//! Needs root; run with `cargo test --test run -- --nocapture --test-threads=1`.
//! Downloads come from the machine's Debian mirror (apt inside the image, and
//! `apt-get download` for the test repository); everything else is served on
//! 127.0.0.1. Host caches live in `$PGIMG_FIXTURE_DIR/run-tests-cache`.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/output.rs"]
mod output;
#[path = "support/pgimg.rs"]
mod pgimg_bin;
#[path = "support/served.rs"]
mod served;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use fixture::{
    assert_base_sha256_unchanged, assert_base_unchanged, checked_base_image as base_image, loud,
};
use nix::sys::signal::Signal;
use output::{allocated, e2fsck_clean, field, group_members, names_in, with_root_read_only};
use pgimg_bin::{
    os, pgimg, print_stages, read_json, repo_dir, scratch, shell_sh, sidecar, Finished, Pgimg,
};
use serde_json::Value;
use served::{AptRepo, Served, Trickle, REPO_VERSION_SUFFIX};

/// Host caches shared by the tests' builds (apt archives, Go caches): warm
/// after the first run, so reruns do not download PostgreSQL again.
fn cache_dir() -> PathBuf {
    fixture::fixture_dir().join("run-tests-cache")
}

// ---------------------------------------------------------------- pgimg ---

/// `pgimg run RECIPE --base BASE --output OUTPUT --cache-dir ... EXTRA...`, started.
fn start_run(recipe: &Path, base: &Path, output: &Path, extra: &[&str]) -> Pgimg {
    let mut args: Vec<OsString> = vec!["run".into(), recipe.into()];
    args.extend(["--base".into(), base.into()]);
    args.extend(["--output".into(), output.into()]);
    args.extend(["--cache-dir".into(), cache_dir().into()]);
    args.extend(os(extra));
    Pgimg::spawn(&args, None)
}

fn write_recipe(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `(line, col)` of the first line containing `needle`, col of its first non-blank.
fn position(text: &str, needle: &str) -> (usize, usize) {
    let (i, l) = text
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the recipe"));
    (i + 1, l.len() - l.trim_start().len() + 1)
}

// ------------------------------------------------- what a build left ---

/// Mount points at or under `dir` in this process's namespace.
fn mounts_under(dir: &Path) -> Vec<String> {
    mounts_in("/proc/self/mountinfo", dir)
}

fn mounts_in(mountinfo: &str, dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string(mountinfo)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(dir.as_str()))
        .map(str::to_string)
        .collect()
}

/// Loop devices whose backing file is under `dir`.
fn loops_under(dir: &Path) -> Vec<String> {
    let out = Command::new("losetup")
        .args(["--list", "--noheadings", "--output", "NAME,BACK-FILE"])
        .output()
        .expect("running losetup");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(dir.to_str().unwrap()))
        .map(|l| l.trim().to_string())
        .collect()
}

/// A process as `/proc/PID/stat` shows it; `start` tells a recycled pid apart.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Proc {
    pid: i32,
    start: u64,
    comm: String,
}

/// `(pid, ppid, start time, comm)` from `/proc/PID/stat`.
fn stat(pid: i32) -> Option<(i32, u64, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text[open + 1..close].to_string();
    let fields: Vec<&str> = text[close + 2..].split(' ').collect();
    // After "pid (comm) ": state ppid ... ; starttime is field 22 overall.
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, start, comm))
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Every live descendant of `root`.
fn descendants(root: i32) -> BTreeSet<Proc> {
    let table: Vec<(i32, i32, u64, String)> = all_pids()
        .into_iter()
        .filter_map(|p| stat(p).map(|(pp, s, c)| (p, pp, s, c)))
        .collect();
    let mut out = BTreeSet::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for (pid, ppid, start, comm) in &table {
            if *ppid == parent {
                out.insert(Proc {
                    pid: *pid,
                    start: *start,
                    comm: comm.clone(),
                });
                frontier.push(*pid);
            }
        }
    }
    out
}

/// Those of `procs` still alive (same pid and start time).
fn alive(procs: &BTreeSet<Proc>) -> Vec<Proc> {
    procs
        .iter()
        .filter(|p| matches!(stat(p.pid), Some((_, s, _)) if s == p.start))
        .cloned()
        .collect()
}

/// Processes whose argv is exactly `argv`.
fn processes_with(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    all_pids()
        .into_iter()
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// Polls `cond` until it holds or `limit` passes; returns whether it held.
fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Asserts that a failed build left nothing: no mount or loop device under
/// `out_dir`, none of `procs` (the build's processes seen while it ran) and
/// no marker `sleep`, nothing at all in `out_dir` (no output, no sidecar,
/// no `.NAME.pgimg-*` work folder), the base unchanged.
fn assert_nothing_left(out_dir: &Path, procs: &BTreeSet<Proc>, markers: &[&[&str]], base: &Path) {
    assert_eq!(mounts_under(out_dir), Vec::<String>::new(), "mounts left");
    assert_eq!(
        loops_under(out_dir),
        Vec::<String>::new(),
        "loop devices left"
    );
    // The kernel kills a PID namespace's processes as its init exits; allow
    // it a moment to finish reaping them.
    let gone = eventually(Duration::from_secs(5), || alive(procs).is_empty());
    assert!(gone, "processes of the build left: {:?}", alive(procs));
    for argv in markers {
        assert_eq!(
            processes_with(argv),
            Vec::<i32>::new(),
            "{argv:?} still runs"
        );
    }
    let left: Vec<String> = std::fs::read_dir(out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, Vec::<String>::new(), "files left beside the output");
    assert_base_unchanged(base);
}

/// A recipe folder and an (empty) output folder.
struct Scene {
    _tmp: tempfile::TempDir,
    recipes: PathBuf,
    out: PathBuf,
}

impl Scene {
    fn new() -> Scene {
        let tmp = scratch();
        let recipes = tmp.path().join("recipes");
        let out = tmp.path().join("out");
        std::fs::create_dir_all(&recipes).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        Scene {
            _tmp: tmp,
            recipes,
            out,
        }
    }
}

// ------------------------------------------- the image, read-only ---

// ------------------------------------------------------ the success path ---

/// Checks the output's files with the root mounted read-only.
fn check_finished_root(root: &Path) {
    output::check_finalized(root);

    // apt_download: kept through finalize, and from the test repository.
    let debs = names_in(&root.join("var/cache/pgimg-example/debs"));
    assert!(
        debs.iter().any(|d| d.starts_with("hello_")
            && d.contains(REPO_VERSION_SUFFIX)
            && d.ends_with(".deb")),
        "the test repository's hello .deb is in /var/cache/pgimg-example/debs: {debs:?}"
    );

    // Users, groups, owners.
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    for user in ["greeter", "operator1"] {
        assert!(passwd.lines().any(|l| field(l, 0) == user), "user {user}");
    }
    let operator = passwd.lines().find(|l| field(l, 0) == "operator1").unwrap();
    assert_eq!(field(operator, 6), "/bin/bash", "{operator}");
    let readers = group_members(root, "cert_readers");
    for user in ["greeter", "operator1"] {
        assert!(
            readers.contains(&user.to_string()),
            "{user} in cert_readers: {readers:?}"
        );
    }

    // Units.
    let unit = root.join("etc/systemd/system/hello.service");
    assert!(
        std::fs::read_to_string(&unit)
            .unwrap()
            .contains("ExecStart=/usr/local/bin/hello"),
        "hello.service installed"
    );
    let link = root.join("etc/systemd/system/multi-user.target.wants/hello.service");
    let target = std::fs::read_link(&link).expect("hello.service enabled (wants link)");
    assert_eq!(target, Path::new("/etc/systemd/system/hello.service"));
    assert!(
        std::fs::read_to_string(root.join("etc/systemd/system/hello.service.d/greeting.conf"))
            .unwrap()
            .contains("GREETING=1")
    );

    // Files and builds.
    assert!(
        root.join("usr/local/bin/hello").is_file(),
        "Go binary installed"
    );
    assert!(
        root.join("opt/greeting/bin/greeting").is_file(),
        "tarball extracted"
    );
    assert!(root
        .join("usr/share/postgresql/15/extension/add_one.control")
        .is_file());
    assert!(root.join("usr/lib/postgresql/15/lib/add_one.so").is_file());
    assert!(
        root.join("usr/share/pgimg/manifest.json").is_file(),
        "manifest embedded"
    );
}

/// PostgreSQL 15 started in a chroot of the output (as postgres, data and
/// socket in /tmp), the built extension created and called, then stopped;
/// the Go binary and the fetched tool run.
const IN_IMAGE_SCRIPT: &str = r#"set -eu
d=$(mktemp -d /tmp/pg.XXXXXX)
chown postgres:postgres "$d"
bin=/usr/lib/postgresql/15/bin
runuser -u postgres -- "$bin/initdb" -D "$d/data" -A trust -U postgres >"$d/initdb.log" 2>&1 || { cat "$d/initdb.log"; exit 1; }
runuser -u postgres -- "$bin/pg_ctl" -D "$d/data" -l "$d/server.log" -w -t 60 \
    -o "-k $d -c listen_addresses=''" start >/dev/null || { cat "$d/server.log"; exit 1; }
echo "add_one: $(runuser -u postgres -- "$bin/psql" -h "$d" -qAt -c 'CREATE EXTENSION add_one' -c 'SELECT add_one(41)')"
runuser -u postgres -- "$bin/pg_ctl" -D "$d/data" -m fast -w stop >/dev/null
rm -rf "$d"
echo "hello: $(/usr/local/bin/hello)"
echo "greeting: $(greeting)"
"#;

#[test]
fn every_primitive_for_real() {
    if !fixture::require_root("every_primitive_for_real") {
        return;
    }
    let _heavy = fixture::disk_heavy();
    let base = base_image();
    let tmp = scratch();
    let dir = tmp.path();

    loud("----- building the signed test apt repository -----");
    let repo = AptRepo::build(&dir.join("repo"), &["hello"]);
    let apt = Served::folder(&repo.root, &dir.join("apt-server.log"));
    let downloads = Served::folder(
        &repo_dir().join("recipes/examples/fixtures"),
        &dir.join("download-server.log"),
    );
    // The tarball must come from the server, not from a previous run's cache.
    let _ = std::fs::remove_dir_all(cache_dir().join("downloads"));

    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();
    let out = out_dir.join("everything.raw");
    let apt_uri = format!("apt_uri={}/debian", apt.url());
    let dl = format!("downloads={}", downloads.url());
    let run = start_run(
        &repo_dir().join("recipes/examples/everything.rhai"),
        &base,
        &out,
        &[
            "--size",
            "4G",
            "--set",
            &apt_uri,
            "--set",
            &dl,
            "--set",
            "repo_packages=hello",
        ],
    )
    .finish(Duration::from_secs(1200));
    assert_eq!(run.code(), Some(0), "the build failed:\n{}", run.stderr);
    loud(&format!(
        "----- everything.rhai built in {:.1} s -----",
        run.seconds
    ));

    // Sidecars first: everything below that mounts the output read-write
    // (pgimg shell) changes its bytes.
    let manifest = read_json(&sidecar(&out, "manifest.json"));
    let stages = print_stages(
        "recipes/examples/everything.rhai, fixture grown to 4 GiB",
        &manifest,
    );
    let names: Vec<&str> = stages.iter().map(|s| s.0.as_str()).collect();
    assert_eq!(
        names,
        [
            "acquire",
            "grow",
            "attach",
            "check+resize",
            "mount",
            "recipe",
            "finalize",
            "output"
        ]
    );
    for stage in &names {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.starts_with(&format!("pgimg: stage {stage} done in "))),
            "one log line with the duration of stage {stage}"
        );
    }
    let sha = fixture::current_sha256(&out);
    assert_eq!(
        std::fs::read_to_string(sidecar(&out, "sha256")).unwrap(),
        format!("{sha}  everything.raw\n"),
        "the .sha256 sidecar in sha256sum format"
    );
    let check = Command::new("sha256sum")
        .args(["--check", "--status", "everything.raw.sha256"])
        .current_dir(&out_dir)
        .status()
        .unwrap();
    assert!(check.success(), "sha256sum --check accepts the sidecar");
    assert_eq!(manifest["output"]["sha256"], sha.as_str());
    assert_eq!(
        manifest["base"]["sha256"],
        fixture::recorded_sha256(&base).as_str()
    );
    assert_eq!(manifest["params"]["repo_packages"], "hello");
    assert_eq!(
        manifest["params"]["apt_uri"],
        apt_uri.trim_start_matches("apt_uri=")
    );
    assert_eq!(manifest["recipe"], "recipes/examples/everything.rhai");
    assert!(manifest["pgimg_version"].is_string());
    let inputs = manifest["inputs"].as_array().unwrap();
    let input = |kind: &str, url: &str| {
        inputs
            .iter()
            .find(|i| i["kind"] == kind && i["url"].as_str().unwrap().contains(url))
            .unwrap_or_else(|| panic!("no {kind} input {url} in {inputs:?}"))
    };
    assert_eq!(
        input("url", "/greeting-1.0.tar.gz")["pin"],
        "6b9fc3ec17248e9f4bfe2c998279db15db863452858ff50b760e3363919fb665"
    );
    let key_pin = input("apt-key", "keys/pgimg-test-repo.asc")["pin"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(key_pin.len(), 64, "the key is pinned by its sha256");

    // Sizes: free space went back as holes.
    let apparent = std::fs::metadata(&out).unwrap().len();
    let alloc = allocated(&out);
    loud(&format!(
        "everything.raw: {apparent} bytes apparent, {alloc} bytes allocated ({:.0}%)",
        100.0 * alloc as f64 / apparent as f64
    ));
    assert_eq!(apparent, 4 << 30);
    assert_eq!(manifest["output"]["apparent_size"], apparent);
    assert!(
        alloc < apparent * 3 / 5,
        "allocated {alloc} not well under apparent {apparent}"
    );

    // What went over 127.0.0.1.
    assert!(
        apt.served("/debian/dists/stable/InRelease"),
        "apt log:\n{}",
        apt.log()
    );
    let (name, version) = &repo.versions[0];
    // apt escapes the `+` of the version in the request.
    let deb = format!("/debian/pool/main/{name}_{}_", version.replace('+', "%2b"));
    assert!(
        apt.log()
            .lines()
            .any(|l| l.to_ascii_lowercase().contains(&deb) && l.contains("\" 200")),
        "apt_download got {deb}* from the test repository:\n{}",
        apt.log()
    );
    assert!(
        downloads.served("/greeting-1.0.tar.gz"),
        "download log:\n{}",
        downloads.log()
    );

    assert_base_unchanged(&base);
    assert_base_sha256_unchanged(&base);
    loud(&e2fsck_clean(&out));
    with_root_read_only(&out, check_finished_root);
    assert_eq!(
        fixture::current_sha256(&out),
        sha,
        "read-only checks left the output as it was"
    );

    // `pgimg inspect` shows the embedded manifest.
    let inspect = pgimg(
        &["inspect".into(), out.clone().into()],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(inspect.code(), Some(0), "{}", inspect.stderr);
    assert!(
        inspect
            .stdout
            .contains("manifest    /usr/share/pgimg/manifest.json:"),
        "{}",
        inspect.stdout
    );
    assert!(
        inspect.stdout.contains("recipes/examples/everything.rhai"),
        "{}",
        inspect.stdout
    );

    go_build_from_a_git_repository_served_on_localhost(dir, &out, &sha);

    // Last: a shell writes to the image.
    loud("----- PostgreSQL, the Go binary and the tarball in a chroot of the output -----");
    let said = shell_sh(&out, IN_IMAGE_SCRIPT);
    loud(&said);
    assert!(said.lines().any(|l| l == "add_one: 42"), "{said}");
    assert!(
        said.lines()
            .any(|l| l.starts_with("hello: hello from pgimg (linux/")),
        "{said}"
    );
    assert!(
        said.lines()
            .any(|l| l == "greeting: greetings from a pinned tarball"),
        "{said}"
    );
    assert_eq!(mounts_under(dir), Vec::<String>::new());
    assert_eq!(loops_under(dir), Vec::<String>::new());
}

/// A second build on the first one's output (which has Go): `go_build` from
/// a git repository served over HTTP at a pinned commit that is not its
/// HEAD. A path or `file://` URL to the same repository is refused: a recipe
/// must not read the host's repositories. The base, here the first output,
/// stays as it was.
fn go_build_from_a_git_repository_served_on_localhost(dir: &Path, base: &Path, base_sha: &str) {
    loud("----- go_build from a served git repository at a pinned commit -----");
    let git_dir = dir.join("hello.git");
    std::fs::create_dir_all(&git_dir).unwrap();
    for f in ["go.mod", "main.go"] {
        std::fs::copy(
            repo_dir().join("recipes/examples/assets/go/hello").join(f),
            git_dir.join(f),
        )
        .unwrap();
    }
    let git = |args: &[&str]| {
        let mut argv = vec![
            "git",
            "-c",
            "user.name=pgimg test",
            "-c",
            "user.email=test@pgimg.invalid",
            "-c",
            "init.defaultBranch=main",
        ];
        argv.extend_from_slice(args);
        served::host(&argv, Some(&git_dir), &[]).trim().to_string()
    };
    git(&["init", "-q"]);
    git(&["add", "."]);
    git(&["commit", "-q", "-m", "hello"]);
    let pinned = git(&["rev-parse", "HEAD"]);
    let main = std::fs::read_to_string(git_dir.join("main.go")).unwrap();
    std::fs::write(
        git_dir.join("main.go"),
        main.replace("hello from pgimg", "NOT THE PINNED COMMIT"),
    )
    .unwrap();
    git(&["commit", "-q", "-am", "later"]);

    // Git's "dumb" HTTP transport: a bare copy with its info/refs listing.
    let served_dir = dir.join("git-served");
    std::fs::create_dir_all(&served_dir).unwrap();
    let bare = served_dir.join("hello.git");
    git(&["clone", "-q", "--bare", ".", bare.to_str().unwrap()]);
    served::host(&["git", "update-server-info"], Some(&bare), &[]);
    let server = Served::folder(&served_dir, &dir.join("git-served.log"));

    let host_repo = write_recipe(
        dir,
        "git-from-host.rhai",
        &format!(
            "go_build(#{{ git: \"file://{}\", rev: \"{pinned}\", build: #{{ \"bin/hello\": \".\" }} }});\n",
            git_dir.display()
        ),
    );
    let refused = start_run(&host_repo, base, &dir.join("out/git-from-host.raw"), &[])
        .finish(Duration::from_secs(300));
    assert_ne!(refused.code(), Some(0), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("on the build host")
            && refused.stderr.contains("git-from-host.rhai:1"),
        "a host repository is refused, naming the recipe line:\n{}",
        refused.stderr
    );

    let recipe = write_recipe(
        dir,
        "git-build.rhai",
        &format!(
            r#"let built = go_build(#{{
    git: "{}/hello.git",
    rev: "{pinned}",
    build: #{{ "bin/hello": "." }},
    install: #{{ "bin/hello": "/usr/local/bin/hello-from-git" }},
}});
log(`installed ${{built}}`);
"#,
            server.url()
        ),
    );
    let out = dir.join("out/git-build.raw");
    let run = start_run(&recipe, base, &out, &[]).finish(Duration::from_secs(600));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let manifest = read_json(&sidecar(&out, "manifest.json"));
    print_stages("go_build from git on the first output", &manifest);
    let inputs = manifest["inputs"].as_array().unwrap();
    assert!(
        inputs.iter().any(
            |i| i["pin"] == pinned.as_str() && i["url"].as_str().unwrap().contains("hello.git")
        ),
        "the git input and its commit are in the manifest: {inputs:?}"
    );
    assert_eq!(
        fixture::current_sha256(base),
        base_sha,
        "the base (first output) is unchanged"
    );
    let said = shell_sh(&out, "/usr/local/bin/hello-from-git a b");
    assert!(
        said.starts_with("hello from pgimg (linux/") && said.contains(", 2 args)"),
        "{said}"
    );
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn a_no_op_recipe_on_the_fixture_grown_to_4g() {
    if !fixture::require_root("a_no_op_recipe_on_the_fixture_grown_to_4g") {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let out = scene.out.join("hello.raw");
    let run = start_run(
        &repo_dir().join("recipes/examples/hello.rhai"),
        &base,
        &out,
        &["--size", "4G"],
    )
    .finish(Duration::from_secs(300));
    assert_eq!(run.code(), Some(0), "{}", run.stderr);
    let manifest = read_json(&sidecar(&out, "manifest.json"));
    print_stages(
        "recipes/examples/hello.rhai, fixture grown to 4 GiB",
        &manifest,
    );
    let apparent = std::fs::metadata(&out).unwrap().len();
    let alloc = allocated(&out);
    assert_eq!(apparent, 4 << 30);
    assert!(alloc < apparent / 4, "{alloc} allocated of {apparent}");
    assert_base_unchanged(&base);
    e2fsck_clean(&out);

    let inspect = pgimg(
        &["inspect".into(), out.clone().into()],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(inspect.code(), Some(0), "{}", inspect.stderr);
    loud(&inspect.stdout);
    for want in [
        "format      raw (disk 4.00 GiB)",
        "ext4 \"cloudimg-rootfs\"  (root)",
        "manifest    /usr/share/pgimg/manifest.json:",
        "\"recipe\": \"recipes/examples/hello.rhai\"",
    ] {
        assert!(
            inspect.stdout.contains(want),
            "{want:?} in:\n{}",
            inspect.stdout
        );
    }
    let json = pgimg(
        &["inspect".into(), "--json".into(), out.clone().into()],
        None,
        Duration::from_secs(60),
    );
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["apparent_size"], apparent);
    assert_eq!(v["root"], 1);
    assert_eq!(v["manifest"]["status"], "present");
    assert_eq!(
        v["manifest"]["content"]["recipe"],
        "recipes/examples/hello.rhai"
    );
    assert_eq!(
        v["manifest"]["content"]["base"]["sha256"],
        manifest["base"]["sha256"]
    );
}

// ------------------------------------------------------- shell, inspect ---

#[test]
fn shell_runs_a_here_document_from_stdin() {
    if !fixture::require_root("shell_runs_a_here_document_from_stdin") {
        return;
    }
    let base = base_image();
    let tmp = scratch();
    // `pgimg shell` writes to the image it opens: work on a copy.
    let copy = tmp.path().join("copy.raw");
    served::host(
        &[
            "cp",
            "--sparse=always",
            base.to_str().unwrap(),
            copy.to_str().unwrap(),
        ],
        None,
        &[],
    );
    let heredoc = r#"
echo "debian $(cat /etc/debian_version)"
echo "uid $(id -u) pid-of-shell $$"
test -f /etc/ssh/ssh_host_ed25519_key && echo "host keys present"
test -L /dev/ptmx && echo "dev is the sandbox's"
grep -q ' /boot/efi ' /proc/self/mounts && echo "the ESP's mount point is mounted"
echo "written by a here-document" > /root/from-shell
exit 7
"#;
    let f = pgimg(
        &["shell".into(), copy.clone().into()],
        Some(heredoc),
        Duration::from_secs(120),
    );
    loud(&f.stdout);
    assert_eq!(
        f.code(),
        Some(7),
        "the shell's exit code is pgimg's:\n{}",
        f.stderr
    );
    assert!(f.stdout.contains("debian 12."), "{}", f.stdout);
    assert!(
        f.stdout.contains("uid 0 pid-of-shell 2"),
        "in its own PID namespace: {}",
        f.stdout
    );
    assert!(f.stdout.contains("host keys present"), "{}", f.stdout);
    assert!(f.stdout.contains("dev is the sandbox's"), "{}", f.stdout);
    assert!(
        f.stdout.contains("the ESP's mount point is mounted"),
        "/boot/efi as in a build: {}\n{}",
        f.stdout,
        f.stderr
    );
    assert_eq!(mounts_under(tmp.path()), Vec::<String>::new());
    assert_eq!(loops_under(tmp.path()), Vec::<String>::new());

    // The change was written to the image; the sandbox's own files were not.
    let said = shell_sh(&copy, "cat /root/from-shell");
    assert_eq!(said, "written by a here-document");
    with_root_read_only(&copy, |root| {
        assert!(
            !root.join("usr/sbin/policy-rc.d").exists(),
            "policy-rc.d removed"
        );
        assert!(
            root.join("etc/ssh/ssh_host_ed25519_key").exists(),
            "shell does not finalize"
        );
    });
    assert_base_unchanged(&base);
}

#[test]
fn inspect_shows_the_fixture() {
    if !fixture::require_root("inspect_shows_the_fixture") {
        return;
    }
    let base = base_image();
    let f = pgimg(
        &["inspect".into(), base.clone().into()],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(f.code(), Some(0), "{}", f.stderr);
    loud(&f.stdout);
    for want in [
        "format      raw (disk 2.00 GiB)",
        "table       GPT, 512-byte sectors",
        "BIOS boot",
        "EFI system",
        "ext4 \"cloudimg-rootfs\"  (root)",
        "manifest    none (/usr/share/pgimg/manifest.json absent)",
    ] {
        assert!(f.stdout.contains(want), "{want:?} in:\n{}", f.stdout);
    }
    let json = pgimg(
        &["inspect".into(), "--json".into(), base.clone().into()],
        None,
        Duration::from_secs(60),
    );
    assert_eq!(json.code(), Some(0), "{}", json.stderr);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    let numbers: BTreeSet<u64> = v["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, BTreeSet::from([1, 14, 15]));
    assert_eq!(v["root"], 1);
    assert_eq!(v["apparent_size"], 2u64 << 30);
    assert_base_unchanged(&base);
}

// ------------------------------------------------------ failure paths ---

#[test]
fn a_recipe_failing_midway_reports_where_and_leaves_nothing() {
    if !fixture::require_root("a_recipe_failing_midway_reports_where_and_leaves_nothing") {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let text = r#"// Fails after some work, with a background process started earlier.
run(["sh", "-c", "sleep 7919 >/dev/null 2>&1 &"]);
write_file("/etc/pgimg-midway", "written before the failure\n");
add_user("midway");
run(["sh", "-c", "sleep 7920 >/dev/null 2>&1 & echo oops >&2; exit 3"]);
write_file("/etc/never", "not reached\n");
"#;
    let recipe = write_recipe(&scene.recipes, "midway.rhai", text);
    let out = scene.out.join("midway.raw");
    let f = start_run(&recipe, &base, &out, &[]).finish(Duration::from_secs(300));
    assert_eq!(
        f.code(),
        Some(1),
        "exit 1 for a failed build:\n{}",
        f.stderr
    );
    let (line, col) = position(text, "echo oops");
    let at = format!("{}:{line}:{col}: run", recipe.display());
    let msg = f
        .stderr
        .lines()
        .find(|l| l.starts_with("pgimg: build failed: "))
        .unwrap_or_else(|| panic!("no failure line:\n{}", f.stderr));
    assert!(msg.contains(&at), "{at:?} in {msg:?}");
    assert!(msg.contains("exit status 3"), "{msg}");
    let after: String = f.stderr.split(msg).nth(1).unwrap().to_string();
    assert!(
        after.lines().any(|l| l.trim() == "oops"),
        "stderr tail after the message:\n{after}"
    );
    assert!(
        !f.stderr.contains("stage finalize"),
        "no finalize after a failed recipe"
    );
    assert_nothing_left(
        &scene.out,
        &BTreeSet::new(),
        &[&["sleep", "7919"], &["sleep", "7920"]],
        &base,
    );
}

#[test]
fn a_failed_build_removes_the_output_folders_it_created() {
    if !fixture::require_root("a_failed_build_removes_the_output_folders_it_created") {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let recipe = write_recipe(&scene.recipes, "stop.rhai", "throw \"stop here\";\n");
    let out = scene.out.join("new/deeper/stop.raw");
    let f = start_run(&recipe, &base, &out, &[]).finish(Duration::from_secs(300));
    assert_eq!(f.code(), Some(1), "{}", f.stderr);
    assert!(f.stderr.contains("stop here"), "{}", f.stderr);
    assert!(
        !scene.out.join("new").exists(),
        "the folders made for --output are gone"
    );
    assert_nothing_left(&scene.out, &BTreeSet::new(), &[], &base);
}

#[test]
fn a_base_that_is_not_a_file_is_named_for_what_it_is() {
    if !fixture::require_root("a_base_that_is_not_a_file_is_named_for_what_it_is") {
        return;
    }
    let scene = Scene::new();
    let recipe = write_recipe(&scene.recipes, "r.rhai", "log(\"x\");\n");
    let fifo = scene.out.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    for (base, says) in [
        (scene.out.clone(), "is a directory"),
        (fifo, "is a FIFO"),
        (PathBuf::from("/dev/null"), "is a character device"),
        (scene.out.join("absent.raw"), "no such file"),
    ] {
        let f = start_run(&recipe, &base, &scene.out.join("o.raw"), &[])
            .finish(Duration::from_secs(60));
        assert_eq!(f.code(), Some(2), "{base:?}: {}", f.stderr);
        let want = format!("pgimg: --base {}: {says}", base.display());
        assert!(f.stderr.contains(&want), "{want:?} in {}", f.stderr);
    }
}

/// Mistakes found from the command line and the recipe's text alone stop
/// the build before the base is copied or anything is built (exit 2): a
/// syntax error, named by `file:line:col`, and a `--size` below the base's.
#[test]
fn a_syntax_error_or_a_shrinking_size_stops_the_build_before_the_base_is_copied() {
    if !fixture::require_root(
        "a_syntax_error_or_a_shrinking_size_stops_the_build_before_the_base_is_copied",
    ) {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let broken = write_recipe(&scene.recipes, "broken.rhai", "log(\"a\");\nlet x = ;\n");
    let fine = write_recipe(&scene.recipes, "fine.rhai", "log(\"a\");\n");
    let base_len = std::fs::metadata(&base).unwrap().len();
    let smaller = (base_len / 2).to_string();
    // A qcow2 base is smaller on disk than the disk it holds: its header
    // gives the size the image would shrink from.
    let qcow2 = fixture::base_qcow2();
    let shrinks = format!("is already {base_len} bytes");
    for (recipe, from, extra, says) in [
        (&broken, &base, vec![], format!("{}:2:", broken.display())),
        (
            &fine,
            &base,
            vec!["--size", smaller.as_str()],
            shrinks.clone(),
        ),
        (&fine, &qcow2, vec!["--size", smaller.as_str()], shrinks),
    ] {
        let out = scene.out.join("o.raw");
        let f = start_run(recipe, from, &out, &extra).finish(Duration::from_secs(60));
        assert_eq!(f.code(), Some(2), "{}", f.stderr);
        assert!(f.stderr.contains(&says), "{says:?} in {}", f.stderr);
        assert!(
            !f.stderr.contains("stage acquire"),
            "nothing was copied: {}",
            f.stderr
        );
        assert_eq!(
            std::fs::read_dir(&scene.out).unwrap().count(),
            0,
            "nothing written"
        );
    }
    assert_base_unchanged(&base);
}

/// The fixture as qcow2 ([`fixture::base_qcow2`]), hard-linked as `name`
/// into a `served/` folder of the scene (to serve over HTTP), and its sha256.
fn served_qcow2_base(scene: &Scene, name: &str) -> (PathBuf, String) {
    let served_dir = scene.out.join("served");
    std::fs::create_dir_all(&served_dir).unwrap();
    let qcow2 = served_dir.join(name);
    std::fs::hard_link(fixture::base_qcow2(), &qcow2).unwrap();
    let pin = served::host(&["sha256sum", qcow2.to_str().unwrap()], None, &[])
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    (served_dir, pin)
}

/// `--base URL --base-sha256`: the base is an input like any other. The
/// fixture, as qcow2, is served on 127.0.0.1: the first build downloads and
/// converts it, the second does neither (one GET in the server's log), the
/// manifest records the URL and pin, and a wrong pin or a missing one is
/// refused before anything is built; a pin in pgimg.lock serves too.
#[test]
fn a_base_url_is_downloaded_and_converted_once_and_its_pin_is_checked() {
    if !fixture::require_root("a_base_url_is_downloaded_and_converted_once_and_its_pin_is_checked")
    {
        return;
    }
    let _heavy = fixture::disk_heavy();
    let base = base_image();
    let scene = Scene::new();
    let (served_dir, pin) = served_qcow2_base(&scene, "base.qcow2");
    let server = Served::folder(&served_dir, &scene.out.join("served.log"));
    let url = format!("{}/base.qcow2", server.url());
    // A cache of its own: the first build must download.
    let cache = scene.out.join("cache");
    let recipe = write_recipe(&scene.recipes, "noop.rhai", "log(\"nothing\");\n");
    let build = |out: &Path, pin: Option<&str>| {
        let mut args = os(&["run", recipe.to_str().unwrap(), "--base", &url]);
        if let Some(pin) = pin {
            args.extend(os(&["--base-sha256", pin]));
        }
        args.extend(os(&["--output", out.to_str().unwrap()]));
        args.extend(os(&["--cache-dir", cache.to_str().unwrap()]));
        Pgimg::spawn(&args, None).finish(Duration::from_secs(300))
    };

    let first = build(&scene.out.join("first.raw"), Some(&pin));
    assert_eq!(first.code(), Some(0), "{}", first.stderr);
    assert!(
        first.stderr.contains("base: downloading"),
        "{}",
        first.stderr
    );
    assert!(
        first
            .stderr
            .contains("converting the qcow2 image to raw, once"),
        "{}",
        first.stderr
    );
    let manifest = read_json(&sidecar(&scene.out.join("first.raw"), "manifest.json"));
    assert_eq!(manifest["base"]["download"]["url"], url.as_str());
    assert_eq!(manifest["base"]["download"]["sha256"], pin.as_str());
    let raw = cache.join(format!("bases/{pin}.raw"));
    assert_eq!(manifest["base"]["path"], raw.to_str().unwrap());
    assert_eq!(
        manifest["base"]["sha256"].as_str().unwrap(),
        served::host(&["sha256sum", raw.to_str().unwrap()], None, &[])
            .split_whitespace()
            .next()
            .unwrap()
    );

    // Each output holds hundreds of MiB; only its manifest is read later.
    std::fs::remove_file(scene.out.join("first.raw")).unwrap();
    let second = build(&scene.out.join("second.raw"), Some(&pin));
    assert_eq!(second.code(), Some(0), "{}", second.stderr);
    std::fs::remove_file(scene.out.join("second.raw")).unwrap();
    for says in [
        "already in the download cache",
        "converted before",
        "remembered",
    ] {
        assert!(
            second.stderr.contains(says),
            "{says:?} in {}",
            second.stderr
        );
    }
    let gets = server
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /base.qcow2 "))
        .count();
    assert_eq!(gets, 1, "downloaded once:\n{}", server.log());

    let wrong = "0".repeat(64);
    let refused = build(&scene.out.join("wrong.raw"), Some(&wrong));
    assert_eq!(refused.code(), Some(1), "{}", refused.stderr);
    assert!(
        refused.stderr.contains(&url) && refused.stderr.contains(&wrong),
        "the error names the URL and the pin: {}",
        refused.stderr
    );
    assert!(!scene.out.join("wrong.raw").exists());

    let unpinned = build(&scene.out.join("unpinned.raw"), None);
    assert_eq!(unpinned.code(), Some(2), "{}", unpinned.stderr);
    assert!(
        unpinned
            .stderr
            .contains("a URL needs its sha256: --base-sha256"),
        "{}",
        unpinned.stderr
    );

    // The pin from the lock file beside the recipe.
    std::fs::write(
        scene.recipes.join("pgimg.lock"),
        format!("url {url} {pin}\n"),
    )
    .unwrap();
    let locked = build(&scene.out.join("locked.raw"), None);
    assert_eq!(locked.code(), Some(0), "{}", locked.stderr);
    let manifest = read_json(&sidecar(&scene.out.join("locked.raw"), "manifest.json"));
    assert_eq!(manifest["base"]["download"]["sha256"], pin.as_str());
    assert!(
        locked.stderr.contains("already in the download cache")
            && locked.stderr.contains("not contacted"),
        "a cache hit says the URL was not contacted: {}",
        locked.stderr
    );
    // A --base-sha256 that contradicts the lock is refused, not preferred.
    let contradicted = build(&scene.out.join("contradicted.raw"), Some(&wrong));
    assert_eq!(contradicted.code(), Some(2), "{}", contradicted.stderr);
    assert!(
        contradicted.stderr.contains("differs from its pin in"),
        "{}",
        contradicted.stderr
    );
    // --locked: a base URL missing from the lock is refused.
    std::fs::write(scene.recipes.join("pgimg.lock"), "").unwrap();
    let mut args = os(&["run", recipe.to_str().unwrap(), "--locked", "--base", &url]);
    args.extend(os(&["--base-sha256", &pin]));
    args.extend(os(&[
        "--output",
        scene.out.join("unlocked.raw").to_str().unwrap(),
    ]));
    args.extend(os(&["--cache-dir", cache.to_str().unwrap()]));
    let unlocked = Pgimg::spawn(&args, None).finish(Duration::from_secs(300));
    assert_eq!(unlocked.code(), Some(2), "{}", unlocked.stderr);
    assert!(
        unlocked.stderr.contains("--locked: the base")
            && unlocked.stderr.contains("has no `url` line"),
        "{}",
        unlocked.stderr
    );
    assert_base_unchanged(&base);
}

/// `pgimg lock --base`: the base's pin is recorded on purpose, first by
/// trust on first use, then from the release's checksum list (the line
/// changes to name it); a `--locked` build then takes the lock's line,
/// reads no checksum list, and records where the pin came from. Unlocked,
/// `--base-sha256-from` reads the list, and a list that names no such file
/// is refused before anything is built.
#[test]
fn a_base_pin_is_locked_on_purpose_and_read_from_a_checksum_list() {
    if !fixture::require_root("a_base_pin_is_locked_on_purpose_and_read_from_a_checksum_list") {
        return;
    }
    let _heavy = fixture::disk_heavy();
    let base = base_image();
    let scene = Scene::new();
    let (served_dir, pin) = served_qcow2_base(&scene, "disk-amd64.img");
    // The cloud images' format: binary-mode `sha256sum` lines.
    std::fs::write(
        served_dir.join("SHA256SUMS"),
        format!(
            "{} *disk-arm64.img\n{pin} *disk-amd64.img\n",
            "1".repeat(64)
        ),
    )
    .unwrap();
    let server = Served::folder(&served_dir, &scene.out.join("served.log"));
    let url = format!("{}/disk-amd64.img", server.url());
    let list = format!("{}/SHA256SUMS", server.url());
    let gets = |path: &str| {
        server
            .log()
            .lines()
            .filter(|l| l.contains(&format!("\"GET /{path} ")))
            .count()
    };
    let xdg = scene.out.join("xdg");
    let cache = xdg.join("pgimg");
    let recipe = write_recipe(&scene.recipes, "noop.rhai", "log(\"nothing\");\n");
    let lock_file = scene.recipes.join("pgimg.lock");
    let lock = |extra: &[&str]| {
        let mut args = os(&["lock", recipe.to_str().unwrap(), "--base", &url]);
        args.extend(os(extra));
        Pgimg::spawn_with_env(&args, None, &[("XDG_CACHE_HOME", &xdg)])
            .finish(Duration::from_secs(300))
    };
    let lock_line = || {
        std::fs::read_to_string(&lock_file)
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("url "))
            .map(String::from)
            .collect::<Vec<_>>()
    };

    let first_use = lock(&[]);
    assert_eq!(first_use.code(), Some(0), "{}", first_use.stderr);
    assert!(
        first_use.stderr.contains("trust on first use"),
        "{}",
        first_use.stderr
    );
    assert_eq!(lock_line(), [format!("url {url} {pin} from=lock")]);

    let from_list = lock(&["--base-sha256-from", &list]);
    assert_eq!(from_list.code(), Some(0), "{}", from_list.stderr);
    assert!(
        from_list.stdout.contains(&format!("changed url {url}")),
        "{}",
        from_list.stdout
    );
    assert_eq!(lock_line(), [format!("url {url} {pin} from={list}")]);
    assert_eq!(gets("SHA256SUMS"), 1);

    let build = |name: &str, extra: &[&str]| {
        let out = scene.out.join(name);
        let mut args = os(&["run", recipe.to_str().unwrap(), "--base", &url]);
        args.extend(os(extra));
        args.extend(os(&["--output", out.to_str().unwrap()]));
        args.extend(os(&["--cache-dir", cache.to_str().unwrap()]));
        (
            out,
            Pgimg::spawn(&args, None).finish(Duration::from_secs(300)),
        )
    };
    let (out, locked) = build("locked.raw", &["--locked"]);
    assert_eq!(locked.code(), Some(0), "{}", locked.stderr);
    let manifest = read_json(&sidecar(&out, "manifest.json"));
    assert_eq!(manifest["base"]["download"]["sha256"], pin.as_str());
    assert_eq!(manifest["base"]["download"]["sha256_from"], list.as_str());
    assert_eq!(
        gets("SHA256SUMS"),
        1,
        "a locked build reads no checksum list"
    );
    assert_eq!(
        gets("disk-amd64.img"),
        1,
        "the image `pgimg lock` downloaded is the build's cache hit"
    );
    // Hundreds of MiB; only the manifest was wanted.
    std::fs::remove_file(&out).unwrap();

    // A locked build whose list is not the one the lock names is refused.
    let other_list = format!("{}/other/SHA256SUMS", server.url());
    let (out, refused) = build(
        "other.raw",
        &["--locked", "--base-sha256-from", &other_list],
    );
    assert_eq!(refused.code(), Some(2), "{}", refused.stderr);
    assert!(
        refused.stderr.contains("differs from its line in"),
        "{}",
        refused.stderr
    );
    assert!(!out.exists());

    // Unlocked, without a lock line: the list is read.
    std::fs::remove_file(&lock_file).unwrap();
    let (out, unlocked) = build("unlocked.raw", &["--base-sha256-from", &list]);
    assert_eq!(unlocked.code(), Some(0), "{}", unlocked.stderr);
    assert_eq!(gets("SHA256SUMS"), 2);
    let manifest = read_json(&sidecar(&out, "manifest.json"));
    assert_eq!(manifest["base"]["download"]["sha256_from"], list.as_str());

    // A list without the file's name: refused, naming the list and the name.
    std::fs::write(
        served_dir.join("SHA256SUMS"),
        format!("{pin} *disk-arm64.img\n"),
    )
    .unwrap();
    let (out, missing) = build("missing.raw", &["--base-sha256-from", &list]);
    assert_eq!(missing.code(), Some(1), "{}", missing.stderr);
    assert!(
        missing.stderr.contains(&list) && missing.stderr.contains("disk-amd64.img"),
        "{}",
        missing.stderr
    );
    assert!(!out.exists());
    assert_base_unchanged(&base);
}

/// Starts a build of `text`, waits for `ready`, sends `sig`, and checks
/// that it failed saying it was interrupted and left nothing. `attached`:
/// the image is mounted and on a loop device at that moment (checked, so
/// the checks afterwards are known to look at the right things).
fn interrupt_at(
    name: &str,
    attached: bool,
    text: &str,
    extra: &[&str],
    sig: Signal,
    ready: &dyn Fn(&mut Pgimg) -> String,
    markers: &[&[&str]],
) -> Finished {
    let base = base_image();
    let scene = Scene::new();
    let recipe = write_recipe(&scene.recipes, &format!("{name}.rhai"), text);
    let out = scene.out.join(format!("{name}.raw"));
    let mut p = start_run(&recipe, &base, &out, extra);
    let seen = ready(&mut p);
    loud(&format!("----- ready: {seen}"));
    let procs = descendants(p.pid());
    if attached {
        let mounted = mounts_in(&format!("/proc/{}/mountinfo", p.pid()), &scene.out);
        assert!(
            !mounted.is_empty(),
            "the image is mounted in pgimg's namespace while it runs"
        );
        assert!(
            !loops_under(&scene.out).is_empty(),
            "the work image is on a loop device"
        );
    }
    p.signal(sig);
    let f = p.finish(Duration::from_secs(120));
    loud(&format!(
        "----- pgimg exited {} after {:.1} s",
        f.status, f.seconds
    ));
    assert_eq!(f.code(), Some(130), "exit 130 after {sig}:\n{}", f.stderr);
    assert!(
        f.stderr.contains(&format!(
            "pgimg: interrupted by {sig}; everything was torn down"
        )),
        "{}",
        f.stderr
    );
    assert!(!f.stderr.contains("stage output done"), "{}", f.stderr);
    assert!(
        !out.exists() && !sidecar(&out, "sha256").exists(),
        "no output after {sig}"
    );
    assert_nothing_left(&scene.out, &procs, markers, &base);
    f
}

#[test]
fn sigint_and_sigterm_stop_a_recipe_busy_in_file_primitives_mid_loop() {
    if !fixture::require_root("sigint_and_sigterm_stop_a_recipe_busy_in_file_primitives_mid_loop") {
        return;
    }
    let text = r#"log("looping");
for i in 0..600000 { write_file("/var/tmp/pgimg-loop", `${i}`); }
log("loop done");
"#;
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let f = interrupt_at(
            "busy",
            true,
            text,
            &[],
            sig,
            &|p| {
                p.wait_for_line("the loop", Duration::from_secs(120), |l| {
                    l.ends_with("looping")
                })
            },
            &[],
        );
        assert!(!f.stderr.contains("loop done"), "{}", f.stderr);
        assert!(
            f.stderr.contains("busy.rhai:2:") && f.stderr.contains(": interrupted"),
            "the loop was stopped where it was: {}",
            f.stderr
        );
    }
}

#[test]
fn sigint_and_sigterm_during_a_download_tear_everything_down() {
    if !fixture::require_root("sigint_and_sigterm_during_a_download_tear_everything_down") {
        return;
    }
    let trickle = Trickle::start();
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // The download never ends, so nothing can ever be cached under this pin.
        let pin = "5".repeat(64);
        let url = trickle.url(&format!("/big-{}.tar.gz", sig.as_str()));
        let text = format!(
            r#"write_file("/etc/pgimg-before-download", "x\n");
fetch_verify(#{{ url: "{url}", sha256: "{pin}", dest: "/opt/big.tar.gz" }});
"#
        );
        let before = trickle.sent.load(std::sync::atomic::Ordering::SeqCst);
        interrupt_at(
            "download",
            true,
            &text,
            &[],
            sig,
            &|p| {
                let line = p.wait_for_line("the download", Duration::from_secs(120), |l| {
                    l.contains(&format!("fetching {url}"))
                });
                let flowing = eventually(Duration::from_secs(10), || {
                    trickle.sent.load(std::sync::atomic::Ordering::SeqCst) > before + 4096
                });
                assert!(flowing, "the download is under way");
                line
            },
            &[],
        );
        let partial: Vec<String> = std::fs::read_dir(cache_dir().join("downloads/sha256"))
            .map(|d| {
                d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".partial-"))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            partial,
            Vec::<String>::new(),
            "the abandoned download left no partial file"
        );
    }
}

#[test]
fn sigint_and_sigterm_during_apt_tear_everything_down() {
    if !fixture::require_root("sigint_and_sigterm_during_apt_tear_everything_down") {
        return;
    }
    let text = r#"write_file("/etc/pgimg-before-apt", "x\n");
apt_update();
apt_install(["postgresql-15"]);
"#;
    let (line, _) = position(text, "apt_update");
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let prefix = format!("apt.rhai:{line}:");
        interrupt_at(
            "apt",
            true,
            text,
            &[],
            sig,
            &|p| {
                let seen = p.wait_for_line("apt-get's output", Duration::from_secs(120), |l| {
                    l.contains(&prefix)
                });
                let apt_runs = eventually(Duration::from_secs(10), || {
                    descendants(p.pid())
                        .iter()
                        .any(|c| c.comm.starts_with("apt-get"))
                });
                assert!(apt_runs, "apt-get is running");
                seen
            },
            &[],
        );
    }
}

#[test]
fn sigint_and_sigterm_during_finalize_tear_everything_down() {
    if !fixture::require_root("sigint_and_sigterm_during_finalize_tear_everything_down") {
        return;
    }
    // Two moments in finalize: its first item runs `apt-get clean` in the
    // chroot (the command is killed); with that item off, it starts by
    // deleting files, here 100000 of them in /tmp (the file work finishes,
    // and the next stage is refused).
    let with_apt = "write_file(\"/etc/pgimg-before-finalize\", \"x\\n\");\n";
    let files_only = r#"finalize(#{ apt: false });
run(["sh", "-c", "mkdir -p /tmp/many && cd /tmp/many && seq 1 100000 | xargs touch"]);
"#;
    // Where the signal lands depends on the machine's speed: inside `apt-get
    // clean`, in a host tool of the stage, or after the stage's work when the
    // next stage is refused. All must end the build with everything torn down
    // (interrupt_at checks that).
    let in_apt_or_after = [
        "stage finalize: finalize apt: interrupted",
        "interrupted before output",
        // The stage's host tools after the file work (fstrim, e2fsck), stopped
        // mid-run: where the signal lands after 100000 deletions depends on
        // the machine's speed too.
        "was stopped: interrupted by a signal",
    ];
    for (text, expect) in [
        (with_apt, &in_apt_or_after[..]),
        (files_only, &in_apt_or_after[1..]),
    ] {
        for sig in [Signal::SIGINT, Signal::SIGTERM] {
            let f = interrupt_at(
                "finalize",
                true,
                text,
                &[],
                sig,
                &|p| {
                    p.wait_for_line("the finalize stage", Duration::from_secs(300), |l| {
                        l == "pgimg: stage finalize ..."
                    })
                },
                &[],
            );
            assert!(
                expect.iter().any(|e| f.stderr.contains(e)),
                "one of {expect:?} in:\n{}",
                f.stderr
            );
        }
    }
}

#[test]
fn sigint_and_sigterm_while_the_output_is_hashed_leave_no_output() {
    if !fixture::require_root("sigint_and_sigterm_while_the_output_is_hashed_leave_no_output") {
        return;
    }
    let text = "write_file(\"/etc/pgimg-before-output\", \"x\\n\");\n";
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let f = interrupt_at(
            "output",
            false,
            text,
            &[],
            sig,
            &|p| {
                p.wait_for_line("the output stage", Duration::from_secs(300), |l| {
                    l == "pgimg: stage output ..."
                })
            },
            &[],
        );
        assert!(f.stderr.contains("stage output failed"), "{}", f.stderr);
        assert!(
            f.stderr
                .contains("interrupted before the image was renamed"),
            "{}",
            f.stderr
        );
    }
}

#[test]
fn sigint_and_sigterm_stop_qemu_img_convert_mid_conversion() {
    if !fixture::require_root("sigint_and_sigterm_stop_qemu_img_convert_mid_conversion") {
        return;
    }
    // Incompressible data makes `qemu-img convert -c` take tens of seconds,
    // so the signal lands while it runs.
    let text = r#"run(["dd", "if=/dev/urandom", "of=/var/tmp/noise", "bs=1M", "count=600", "status=none"]);
"#;
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        let f = interrupt_at(
            "convert",
            false,
            text,
            &["--format", "qcow2", "--compress"],
            sig,
            &|p| {
                let line = p.wait_for_line("the output stage", Duration::from_secs(300), |l| {
                    l == "pgimg: stage output ..."
                });
                let converting = eventually(Duration::from_secs(30), || {
                    descendants(p.pid()).iter().any(|c| c.comm == "qemu-img")
                });
                assert!(converting, "qemu-img convert is running");
                line
            },
            &[],
        );
        assert!(
            f.stderr.contains("`qemu-img convert -f raw -O qcow2 -c")
                && f.stderr.contains("was stopped: interrupted by a signal"),
            "the conversion was stopped, not waited for:\n{}",
            f.stderr
        );
        assert!(!f.stderr.contains("wrote "), "{}", f.stderr);
    }
}

/// A SIGKILL of pgimg while `qemu-img convert` runs: the conversion dies
/// with it (`PR_SET_PDEATHSIG`) instead of writing on into the orphaned
/// work folder.
#[test]
fn sigkill_during_the_conversion_kills_qemu_img_too() {
    if !fixture::require_root("sigkill_during_the_conversion_kills_qemu_img_too") {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let recipe = write_recipe(
        &scene.recipes,
        "killconvert.rhai",
        r#"run(["dd", "if=/dev/urandom", "of=/var/tmp/noise", "bs=1M", "count=600", "status=none"]);
"#,
    );
    let out = scene.out.join("killconvert.qcow2");
    let mut p = start_run(&recipe, &base, &out, &["--format", "qcow2", "--compress"]);
    p.wait_for_line("the output stage", Duration::from_secs(300), |l| {
        l == "pgimg: stage output ..."
    });
    let mut converter = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            converter = descendants(p.pid())
                .into_iter()
                .find(|c| c.comm == "qemu-img");
            converter.is_some()
        }),
        "qemu-img convert is running"
    );
    let converter = converter.unwrap();
    p.signal(Signal::SIGKILL);
    let f = p.finish(Duration::from_secs(30));
    assert_eq!(f.status.code(), None, "killed");
    let converter = BTreeSet::from([converter]);
    assert!(
        eventually(Duration::from_secs(5), || alive(&converter).is_empty()),
        "qemu-img outlived pgimg: {:?}",
        alive(&converter)
    );
    assert!(!out.exists(), "nothing under the output name");
}

/// The fixture's fstab mounts its ESP (p15, vfat, `LABEL=UEFI`) on
/// `/boot/efi`. A write there must reach the ESP, or, on a kernel without
/// vfat (this machine's), fail naming why, never land in the root file
/// system's directory that the ESP hides at boot.
#[test]
fn writes_under_the_esp_reach_it_or_are_refused_naming_it() {
    if !fixture::require_root("writes_under_the_esp_reach_it_or_are_refused_naming_it") {
        return;
    }
    let vfat = std::fs::read_to_string("/proc/filesystems")
        .unwrap()
        .lines()
        .any(|l| l.split_whitespace().last() == Some("vfat"));
    let base = base_image();
    let scene = Scene::new();
    for (name, text) in [
        (
            "esp-file",
            "write_file(\"/boot/efi/EFI/pgimg-test\", \"x\\n\");\n",
        ),
        (
            "esp-command",
            "run([\"sh\", \"-c\", \"echo x > /boot/efi/pgimg-test\"]);\n",
        ),
    ] {
        let recipe = write_recipe(&scene.recipes, &format!("{name}.rhai"), text);
        let out = scene.out.join(format!("{name}.raw"));
        let f = start_run(&recipe, &base, &out, &[]).finish(Duration::from_secs(600));
        if vfat {
            assert_eq!(f.code(), Some(0), "{}", f.stderr);
            assert!(
                f.stderr.contains("mounted p15 (vfat) on /boot/efi"),
                "{}",
                f.stderr
            );
            continue;
        }
        assert_eq!(f.code(), Some(1), "{name}: {}", f.stderr);
        assert!(
            f.stderr.contains(
                "/boot/efi: this kernel cannot mount vfat, so it is read-only for the build"
            ),
            "{}",
            f.stderr
        );
        assert!(f.stderr.contains("Read-only file system"), "{}", f.stderr);
        assert!(
            f.stderr.contains(
                "note: /boot/efi is read-only during the build: the image mounts partition 15 (vfat) there at boot"
            ),
            "{name}: {}",
            f.stderr
        );
        assert!(!out.exists(), "no output");
        assert_nothing_left(&scene.out, &BTreeSet::new(), &[], &base);
    }
}

/// Build A holds apt's lock on its `/var/cache/apt/archives` (as an
/// `apt-get install` does for its whole run) while build B, with the same
/// `--cache-dir`, installs a package: B must not stop at "Could not get lock",
/// and the package B downloaded ends up in the shared cache.
#[test]
fn two_builds_sharing_a_cache_install_packages_at_once() {
    if !fixture::require_root("two_builds_sharing_a_cache_install_packages_at_once") {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let cache = scene.out.join("shared-cache");
    // apt takes its lock with fcntl(F_SETLK); perl (perl-base, always in
    // Debian) holds the same kind of lock until the test lets it go.
    let holder = write_recipe(
        &scene.recipes,
        "holder.rhai",
        r#"run(["perl", "-MFcntl", "-e", "open(my $f, '>>', '/var/cache/apt/archives/lock') or die $!; my $l = pack('s s x4 q q i x4', F_WRLCK, 0, 0, 0, 0); fcntl($f, F_SETLK, $l) or die \"lock: $!\"; $| = 1; print \"holding the apt archives lock\\n\"; for (1..600) { last if -e '/tmp/pgimg-release'; sleep 1 }"]);
"#,
    );
    let installer = write_recipe(
        &scene.recipes,
        "installer.rhai",
        "apt_update();\napt_install([\"hello\"]);\n",
    );
    let spawn = |recipe: &Path, name: &str| {
        let args: Vec<OsString> = os(&[
            "run",
            recipe.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
            "--output",
            scene.out.join(name).to_str().unwrap(),
            "--cache-dir",
            cache.to_str().unwrap(),
        ]);
        Pgimg::spawn(&args, None)
    };
    let mut a = spawn(&holder, "a.raw");
    a.wait_for_line(
        "build A holding apt's lock",
        Duration::from_secs(300),
        |l| l.ends_with("holding the apt archives lock"),
    );
    let b = spawn(&installer, "b.raw").finish(Duration::from_secs(900));
    assert_eq!(
        b.code(),
        Some(0),
        "build B installs while build A holds its apt lock:\n{}",
        b.stderr
    );
    assert!(!b.stderr.contains("Could not get lock"), "{}", b.stderr);
    let perl = descendants(a.pid())
        .into_iter()
        .find(|p| p.comm == "perl")
        .expect("build A's perl still holds the lock");
    std::fs::write(format!("/proc/{}/root/tmp/pgimg-release", perl.pid), "").unwrap();
    let a = a.finish(Duration::from_secs(300));
    assert_eq!(a.code(), Some(0), "build A:\n{}", a.stderr);
    let shared = names_in(&cache.join("apt-archives"));
    assert!(
        shared
            .iter()
            .any(|n| n.starts_with("hello_") && n.ends_with(".deb")),
        "the package B downloaded is in the shared cache: {shared:?}"
    );
    assert_eq!(
        names_in(&cache.join("apt-archives.builds")),
        Vec::<String>::new(),
        "both builds removed their own folders"
    );
}

#[test]
fn sigkill_leaves_only_the_work_file_and_the_next_build_sweeps_it() {
    if !fixture::require_root("sigkill_leaves_only_the_work_file_and_the_next_build_sweeps_it") {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let text = r#"write_file("/etc/pgimg-before-kill", "x\n");
log("about to sleep");
run(["sleep", "7921"]);
"#;
    let recipe = write_recipe(&scene.recipes, "kill.rhai", text);
    let out = scene.out.join("kill.raw");
    let mut p = start_run(&recipe, &base, &out, &[]);
    p.wait_for_line("the recipe's sleep", Duration::from_secs(120), |l| {
        l.ends_with("about to sleep")
    });
    assert!(
        eventually(Duration::from_secs(10), || !processes_with(&[
            "sleep", "7921"
        ])
        .is_empty()),
        "the recipe's command runs"
    );
    let procs = descendants(p.pid());
    assert!(procs.iter().any(|c| c.comm == "pgimg-init"), "{procs:?}");
    let mounted = mounts_in(&format!("/proc/{}/mountinfo", p.pid()), &scene.out);
    assert!(
        mounted.len() >= 5,
        "root, /dev, /dev/pts, /dev/shm, /sys, /run: {mounted:?}"
    );
    assert_eq!(
        loops_under(&scene.out).len(),
        1,
        "the work image on a loop device"
    );
    let pid = p.pid();
    p.signal(Signal::SIGKILL);
    let f = p.finish(Duration::from_secs(30));
    assert_eq!(f.status.code(), None, "killed");

    assert_eq!(mounts_under(&scene.out), Vec::<String>::new());
    let started = Instant::now();
    let cleared = eventually(Duration::from_secs(20), || {
        loops_under(&scene.out).is_empty()
    });
    assert!(
        cleared,
        "the auto-clear loop device is still there: {:?}",
        loops_under(&scene.out)
    );
    loud(&format!(
        "----- the loop device was gone {:.2} s after pgimg was reaped -----",
        started.elapsed().as_secs_f64()
    ));
    assert!(
        eventually(Duration::from_secs(5), || alive(&procs).is_empty()),
        "processes of the build left: {:?}",
        alive(&procs)
    );
    assert_eq!(processes_with(&["sleep", "7921"]), Vec::<i32>::new());
    assert!(!out.exists(), "nothing under the output name");

    // What SIGKILL leaves, by design: the hidden work folder with the work
    // copy (no code ran to delete it) and the empty mountpoint.
    let work = scene.out.join(format!(".kill.raw.pgimg-{pid}"));
    assert_eq!(
        names_in(&scene.out),
        [work.file_name().unwrap().to_str().unwrap()]
    );
    assert_eq!(names_in(&work), ["root", "work.raw"]);
    assert_eq!(
        names_in(&work.join("root")),
        Vec::<String>::new(),
        "the mountpoint is empty"
    );

    // The next build in that folder sweeps it, and says so.
    let next = write_recipe(&scene.recipes, "next.rhai", "throw \"stop here\";\n");
    let f =
        start_run(&next, &base, &scene.out.join("next.raw"), &[]).finish(Duration::from_secs(300));
    assert_eq!(f.code(), Some(1), "{}", f.stderr);
    assert!(
        f.stderr.contains(&format!(
            "removing {}, left by pgimg process {pid} which is gone",
            work.display()
        )),
        "{}",
        f.stderr
    );
    assert!(!work.exists(), "the killed build's work folder was swept");
    assert_nothing_left(&scene.out, &procs, &[], &base);
    assert_base_sha256_unchanged(&base);
}

#[test]
fn a_full_image_says_so_and_how_to_grow_it() {
    if !fixture::require_root("a_full_image_says_so_and_how_to_grow_it") {
        return;
    }
    let _heavy = fixture::disk_heavy();
    let base = base_image();
    let scene = Scene::new();
    // The fixture is not grown: 4 GiB cannot fit in its 2 GiB.
    let text = r#"run(["dd", "if=/dev/zero", "of=/var/tmp/fill", "bs=4M", "count=1024"]);
"#;
    let recipe = write_recipe(&scene.recipes, "full.rhai", text);
    let out = scene.out.join("full.raw");
    let f = start_run(&recipe, &base, &out, &[]).finish(Duration::from_secs(300));
    assert_eq!(f.code(), Some(1), "{}", f.stderr);
    let msg = f
        .stderr
        .lines()
        .find(|l| l.starts_with("pgimg: build failed: "))
        .unwrap_or_else(|| panic!("no failure line:\n{}", f.stderr));
    assert!(
        msg.contains(&format!("{}:1:1: run", recipe.display())),
        "{msg}"
    );
    assert!(msg.contains("the image is full"), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    assert!(msg.contains("--size"), "says how to grow it: {msg}");
    assert_nothing_left(&scene.out, &BTreeSet::new(), &[], &base);
}

/// pgimg never replaces an output or its sidecars: a stale `OUT.sha256` or
/// `OUT.manifest.json` without its image is refused at the start, as the
/// image itself is (a usage error, nothing built); the final rename will
/// not replace an image that appeared during the build (RENAME_NOREPLACE).
#[test]
fn an_existing_sidecar_of_the_output_is_refused_before_anything_is_built() {
    if !fixture::require_root(
        "an_existing_sidecar_of_the_output_is_refused_before_anything_is_built",
    ) {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let recipe = write_recipe(&scene.recipes, "r.rhai", "log(\"x\");\n");
    let out = scene.out.join("o.raw");
    for suffix in ["sha256", "manifest.json"] {
        let stale = sidecar(&out, suffix);
        std::fs::write(&stale, "stale\n").unwrap();
        let f = start_run(&recipe, &base, &out, &[]).finish(Duration::from_secs(120));
        assert_eq!(f.code(), Some(2), "{}", f.stderr);
        assert!(
            f.stderr.contains(&format!("{} exists", stale.display())),
            "{}",
            f.stderr
        );
        assert!(
            !f.stderr.contains("stage grow"),
            "refused before building: {}",
            f.stderr
        );
        assert_eq!(std::fs::read_to_string(&stale).unwrap(), "stale\n");
        std::fs::remove_file(&stale).unwrap();
    }
    assert!(!out.exists());
}

/// The other full disk: the host's. The work file lives beside the output,
/// here on a 700 MiB tmpfs mounted in a mount namespace the test creates
/// (the host never sees it). The base's copy fits; the recipe's 600 MiB do
/// not, so the loop device's writes fail and ext4 turns the image
/// read-only. The build fails, says the host file system is the cause, and
/// leaves nothing behind.
#[test]
fn a_full_host_file_system_is_named_as_the_cause() {
    if !fixture::require_root("a_full_host_file_system_is_named_as_the_cause") {
        return;
    }
    let base = base_image();
    let scene = Scene::new();
    let text = r#"run(["dd", "if=/dev/urandom", "of=/var/tmp/fill", "bs=4M", "count=150", "conv=fsync", "status=none"]);
"#;
    let recipe = write_recipe(&scene.recipes, "hostfull.rhai", text);
    let small = scene.out.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let out = small.join("hostfull.raw");
    let script = format!(
        "mount -t tmpfs -o size=700m pgimg-test-small {small} && exec {pgimg} run {recipe} \
         --base {base} --output {out} --size 3G --cache-dir {cache}",
        small = small.display(),
        pgimg = env!("CARGO_BIN_EXE_pgimg"),
        recipe = recipe.display(),
        base = base.display(),
        out = out.display(),
        cache = cache_dir().display(),
    );
    let f = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("PGIMG_NO_CACHE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&f.stderr);
    assert_eq!(f.status.code(), Some(1), "{stderr}");
    let note = stderr
        .lines()
        .find(|l| l.starts_with("pgimg: note: the host file system holding"))
        .unwrap_or_else(|| panic!("no note on the host's space:\n{stderr}"));
    assert!(
        note.contains(&small.display().to_string()) && note.contains("dmesg"),
        "{note}"
    );
    // Not the image: growing it with --size would not help.
    let failed = stderr
        .lines()
        .find(|l| l.starts_with("pgimg: build failed: "))
        .unwrap_or_else(|| panic!("no failure line:\n{stderr}"));
    assert!(
        failed.contains("the host file system holding the image file is full")
            && !failed.contains("the image is full")
            && !failed.contains("--size"),
        "{failed}"
    );
    // The tmpfs went with the namespace: nothing is mounted on the host.
    assert!(mounts_under(&scene.out).is_empty());
    assert!(loops_under(&scene.out).is_empty());
    assert_base_unchanged(&base);
}
