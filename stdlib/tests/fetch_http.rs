//! `HttpFetcher`, its git side and `fetch_verify` against a real HTTP server on
//! 127.0.0.1 and real local git repositories.

mod support;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgimg_stdlib::fake::host_tool;
use pgimg_stdlib::fetch::{FetchError, Fetcher, HttpFetcher, RetryPolicy};
use pgimg_stdlib::fetch_verify::{fetch_verify, Extract, FetchVerify, Installed};
use pgimg_stdlib::{Ctx, FakeOs, FakeTarget, Target};

use support::{sha256, tar_gz, tree, GitDaemon, Member, Reply, Server};

const FAST: RetryPolicy = RetryPolicy {
    attempts: 4,
    initial_backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(50),
};

/// A fetcher on `cache` whose log lines are kept for assertions.
fn fetcher(cache: &Path) -> (HttpFetcher, Arc<Mutex<Vec<String>>>) {
    let lines: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = lines.clone();
    let f = HttpFetcher::new(cache)
        .unwrap()
        .with_retry(FAST)
        .with_log(Arc::new(move |line| {
            l.lock().unwrap().push(line.to_string())
        }));
    (f, lines)
}

/// A fake root fetching over HTTP into a fresh cache, which lives as long as
/// the returned guard: where the `fetch_verify` tests start.
fn fake_fetching() -> (tempfile::TempDir, Arc<FakeTarget>, Ctx) {
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    let (t, ctx) = fake(f);
    (cache, t, ctx)
}

/// Runs `o`, which must be refused, and checks that the image root is as it
/// was; returns the error message.
fn refused(t: &FakeTarget, ctx: &Ctx, o: &FetchVerify) -> String {
    let before = tree(t.root().host_dir());
    let msg = fetch_verify(ctx, o).unwrap_err().to_string();
    assert_eq!(tree(t.root().host_dir()), before, "{msg}");
    msg
}

fn fake(f: HttpFetcher) -> (Arc<FakeTarget>, Ctx) {
    let t = Arc::new(FakeTarget::new(&FakeOs::default(), Box::new(f)).unwrap());
    (t.clone(), Ctx::new(t))
}

fn opts(url: &str, sha: &str, dest: &str) -> FetchVerify {
    FetchVerify::pinned(url, sha, dest)
}

fn extracting(url: &str, sha: &str, dest: &str) -> FetchVerify {
    FetchVerify {
        extract: Some(Extract::All(true)),
        ..opts(url, sha, dest)
    }
}

fn cache_files(cache: &Path) -> Vec<String> {
    if cache.exists() {
        tree(cache)
    } else {
        Vec::new()
    }
}

#[test]
fn downloads_into_a_fake_root_through_the_cache() {
    let body = b"#!/bin/sh\necho node_exporter\n".to_vec();
    let sha = sha256(&body);
    let server = Server::start(vec![("/dl/node_exporter", Reply::Bytes(body.clone()))]);
    let cache = tempfile::tempdir().unwrap();
    let (f, log) = fetcher(cache.path());
    let (t, ctx) = fake(f);
    let o = FetchVerify {
        mode: Some(0o755),
        owner: Some("daemon".into()),
        ..opts(&server.url("/dl/node_exporter"), &sha, "/usr/local/bin/")
    };
    let got = fetch_verify(&ctx, &o).unwrap();
    assert_eq!(got, Installed::File("/usr/local/bin/node_exporter".into()));
    assert_eq!(t.root().read("/usr/local/bin/node_exporter").unwrap(), body);
    assert_eq!(
        t.root().stat("/usr/local/bin/node_exporter").unwrap().mode,
        0o755
    );
    assert_eq!(t.owner("/usr/local/bin/node_exporter"), Some((1, 1)));
    assert_eq!(
        std::fs::read(cache.path().join("sha256").join(&sha)).unwrap(),
        body
    );
    assert_eq!(
        cache_files(cache.path()),
        ["sha256".to_string(), format!("sha256/{sha}")]
    );
    assert_eq!(server.hits("/dl/node_exporter"), 1);
    let log = log.lock().unwrap();
    assert!(log[0].starts_with("fetching http://127.0.0.1:"), "{log:?}");
    assert!(log[1].contains(&format!("{} B in", body.len())), "{log:?}");
}

#[test]
fn cache_hit_makes_no_request() {
    let body = b"prometheus.yml".to_vec();
    let sha = sha256(&body);
    let server = Server::start(vec![("/p.yml", Reply::Bytes(body.clone()))]);
    let cache = tempfile::tempdir().unwrap();
    let url = server.url("/p.yml");
    let (first, _) = fetcher(cache.path());
    first.fetch(&url, &sha).unwrap();
    assert_eq!(server.hits("/p.yml"), 1);
    // A new fetcher (a later build) on the same cache, into a new root.
    let (second, log) = fetcher(cache.path());
    let (t, ctx) = fake(second);
    fetch_verify(&ctx, &opts(&url, &sha, "/etc/prometheus/prometheus.yml")).unwrap();
    assert_eq!(
        t.root().read("/etc/prometheus/prometheus.yml").unwrap(),
        body
    );
    assert_eq!(server.hits("/p.yml"), 1);
    assert!(
        log.lock().unwrap().is_empty(),
        "a cache hit logs no download"
    );
}

#[test]
fn sha_mismatch_leaves_nothing_in_root_or_cache() {
    let server = Server::start(vec![("/tampered", Reply::Bytes(b"tampered".to_vec()))]);
    let (cache, t, ctx) = fake_fetching();
    let pinned = sha256(b"original");
    let url = server.url("/tampered");
    let msg = refused(&t, &ctx, &opts(&url, &pinned, "/usr/local/bin/tool"));
    assert!(
        msg.contains(&url) && msg.contains(&pinned) && msg.contains(&sha256(b"tampered")),
        "{msg}"
    );
    assert_eq!(
        cache_files(cache.path()),
        ["sha256"],
        "no partial file, no cached file"
    );
    // A mismatch is not transient: no retry.
    assert_eq!(server.hits("/tampered"), 1);
}

#[test]
fn tarball_with_dotdot_member_is_refused() {
    let tgz = tar_gz(&[
        Member::File("app/ok", b"fine", 0o644),
        Member::File("app/../../../etc/cron.d/evil", b"* * * * * root sh", 0o644),
    ]);
    let sha = sha256(&tgz);
    let server = Server::start(vec![("/app.tar.gz", Reply::Bytes(tgz))]);
    let (_cache, t, ctx) = fake_fetching();
    let url = server.url("/app.tar.gz");
    let msg = refused(&t, &ctx, &extracting(&url, &sha, "/opt/app"));
    assert!(
        msg.contains("member `app/../../../etc/cron.d/evil`") && msg.contains(&url),
        "{msg}"
    );
}

#[test]
fn tarball_with_escaping_symlink_is_refused() {
    let tgz = tar_gz(&[
        Member::File("app/bin/app", b"bin", 0o755),
        Member::Symlink("app/etc", "../../../../etc"),
        Member::File("app/README", b"readme", 0o644),
    ]);
    let sha = sha256(&tgz);
    let server = Server::start(vec![("/app.tgz", Reply::Bytes(tgz))]);
    let (_cache, t, ctx) = fake_fetching();
    let o = FetchVerify {
        strip: Some(1),
        ..extracting(&server.url("/app.tgz"), &sha, "/opt/app")
    };
    let msg = refused(&t, &ctx, &o);
    assert!(
        msg.contains("member `app/etc`") && msg.contains("outside the destination"),
        "{msg}"
    );
}

#[test]
fn zip_is_extracted() {
    use std::io::Write;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opt = |m: u32| zip::write::SimpleFileOptions::default().unix_permissions(m);
    w.start_file("exporter-1.2/exporter", opt(0o755)).unwrap();
    w.write_all(b"ELF").unwrap();
    w.start_file("exporter-1.2/LICENSE", opt(0o644)).unwrap();
    w.write_all(b"Apache-2.0").unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let sha = sha256(&bytes);
    // No extension in the URL: the kind comes from the magic bytes.
    let server = Server::start(vec![("/download", Reply::Bytes(bytes))]);
    let (_cache, t, ctx) = fake_fetching();
    let o = FetchVerify {
        strip: Some(1),
        extract: Some(Extract::Matching("exporter".into())),
        owner: Some("www-data".into()),
        ..opts(&server.url("/download"), &sha, "/usr/local/bin")
    };
    let got = fetch_verify(&ctx, &o).unwrap();
    assert_eq!(
        got,
        Installed::Extracted(vec!["/usr/local/bin/exporter".into()])
    );
    assert_eq!(t.root().read("/usr/local/bin/exporter").unwrap(), b"ELF");
    assert_eq!(
        t.root().stat("/usr/local/bin/exporter").unwrap().mode,
        0o755
    );
    assert!(!t.root().exists("/usr/local/bin/LICENSE"));
    assert_eq!(t.owner("/usr/local/bin/exporter"), Some((33, 33)));
}

#[test]
fn retries_after_500_and_succeeds() {
    let body = b"flaky mirror".to_vec();
    let sha = sha256(&body);
    let server = Server::start(vec![
        (
            "/flaky",
            Reply::FailThen {
                status: 500,
                times: 2,
                then: body.clone(),
            },
        ),
        (
            "/busy",
            Reply::FailThen {
                status: 429,
                times: 1,
                then: body.clone(),
            },
        ),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let (f, log) = fetcher(cache.path());
    let path = f.fetch(&server.url("/flaky"), &sha).unwrap().unwrap();
    assert_eq!(std::fs::read(path).unwrap(), body);
    assert_eq!(server.hits("/flaky"), 3);
    let retries: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("retrying"))
        .cloned()
        .collect();
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(
        retries[0].contains("attempt 1/4") && retries[0].contains("500"),
        "{retries:?}"
    );

    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    assert_eq!(f.fetch_text(&server.url("/busy")).unwrap(), "flaky mirror");
    assert_eq!(server.hits("/busy"), 2);
}

#[test]
fn gives_up_after_the_last_attempt() {
    let server = Server::start(vec![("/down", Reply::Status(503))]);
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    let f = f.with_retry(RetryPolicy {
        attempts: 3,
        ..FAST
    });
    let url = server.url("/down");
    let err = f.fetch(&url, &"a".repeat(64)).unwrap_err();
    assert!(matches!(err, FetchError::Http { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(&url) && msg.contains("503") && msg.contains("after 3 attempts"),
        "{msg}"
    );
    assert_eq!(server.hits("/down"), 3);
    assert_eq!(cache_files(cache.path()), ["sha256"]);
}

#[test]
fn connection_refused_is_retried_then_reported() {
    // Bind and drop a listener to get a port with nothing behind it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cache = tempfile::tempdir().unwrap();
    let (f, log) = fetcher(cache.path());
    let url = format!("http://127.0.0.1:{port}/x");
    let msg = f.fetch(&url, &"a".repeat(64)).unwrap_err().to_string();
    assert!(
        msg.contains(&url) && msg.contains("after 4 attempts"),
        "{msg}"
    );
    assert_eq!(
        log.lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("retrying"))
            .count(),
        3
    );
}

#[test]
fn not_found_fails_at_once_naming_the_status() {
    let server = Server::start(vec![
        ("/gone", Reply::Status(404)),
        ("/forbidden", Reply::Status(403)),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    for (path, status) in [("/gone", "404 Not Found"), ("/forbidden", "403 Forbidden")] {
        let url = server.url(path);
        let msg = f.fetch(&url, &"a".repeat(64)).unwrap_err().to_string();
        assert_eq!(msg, format!("{url}: HTTP {status}"));
        assert_eq!(server.hits(path), 1);
    }
    let msg = f.fetch_text(&server.url("/gone")).unwrap_err().to_string();
    assert!(msg.contains("404"), "{msg}");
}

#[test]
fn fetch_text_refuses_large_documents() {
    let big = vec![b'a'; (pgimg_stdlib::fetch::MAX_TEXT_BYTES + 1) as usize];
    let server = Server::start(vec![
        ("/SHA256SUMS", Reply::Bytes(b"abc  file.tar.gz\n".to_vec())),
        ("/big", Reply::Bytes(big)),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    assert_eq!(
        f.fetch_text(&server.url("/SHA256SUMS")).unwrap(),
        "abc  file.tar.gz\n"
    );
    let msg = f.fetch_text(&server.url("/big")).unwrap_err().to_string();
    assert!(msg.contains("larger than"), "{msg}");
    assert!(
        cache_files(cache.path()).is_empty(),
        "text documents are not cached"
    );
}

/// Hashes what the server will send, with the host's sha256sum (fast even
/// when this test is built without optimisations).
fn sha256_of_generated(len: u64) -> String {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::io::copy(&mut support::Generated::new(len), &mut stdin).unwrap();
    stdin.flush().unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn streams_a_1gib_download_to_disk_with_flat_memory() {
    const LEN: u64 = 1 << 30;
    let sha = sha256_of_generated(LEN);
    let server = Server::start(vec![("/big.img", Reply::Generated { len: LEN })]);
    let cache = tempfile::tempdir().unwrap();
    let (f, log) = fetcher(cache.path());
    let rss_before = support::peak_rss_kib();
    let start = Instant::now();
    let path = f.fetch(&server.url("/big.img"), &sha).unwrap().unwrap();
    let elapsed = start.elapsed();
    let rss_after = support::peak_rss_kib();
    assert_eq!(std::fs::metadata(&path).unwrap().len(), LEN);
    let out = std::process::Command::new("sha256sum")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with(&sha),
        "the cached file hashes to its name"
    );
    eprintln!(
        "1 GiB download: {:.2} s; peak RSS {} MiB before, {} MiB after (growth {} MiB); log: {:?}",
        elapsed.as_secs_f64(),
        rss_before / 1024,
        rss_after / 1024,
        (rss_after - rss_before) / 1024,
        log.lock().unwrap()
    );
    assert!(
        rss_after - rss_before < 200 * 1024,
        "peak RSS grew by {} MiB while downloading 1 GiB",
        (rss_after - rss_before) / 1024
    );
    assert_eq!(server.hits("/big.img"), 1);
}

// ---- git ----

fn git(dir: &Path, args: &[&str]) -> String {
    let mut git = std::process::Command::new("git");
    git.args([
        "-c",
        "user.name=pgimg",
        "-c",
        "user.email=pgimg@localhost",
        "-c",
        "init.defaultBranch=main",
    ])
    .args(args)
    .current_dir(dir)
    .env("LC_ALL", "C");
    let stdout = host_tool(&mut git, "the git fetcher tests need it");
    String::from_utf8(stdout).unwrap().trim().to_string()
}

/// A repository served by `git daemon` on 127.0.0.1.
struct Repo {
    dir: tempfile::TempDir,
    daemon: GitDaemon,
}

impl Repo {
    fn path(&self) -> PathBuf {
        self.dir.path().join("repo")
    }

    /// `git://127.0.0.1:PORT/repo`.
    fn url(&self) -> String {
        self.daemon.url("127.0.0.1", "repo")
    }

    /// Another URL of the same repository (`127.0.0.2`).
    fn other_url(&self) -> String {
        self.daemon.url("127.0.0.2", "repo")
    }
}

/// A repository with two commits; returns (it, first commit, second commit).
fn repo() -> (Repo, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = &dir.path().join("repo");
    std::fs::create_dir(p).unwrap();
    git(p, &["init", "-q"]);
    std::fs::write(p.join("main.go"), "package main\n").unwrap();
    std::fs::create_dir(p.join("cmd")).unwrap();
    std::fs::write(p.join("cmd/tool.go"), "package cmd\n").unwrap();
    // A `git archive` export would drop this file; a checkout keeps it.
    std::fs::write(p.join(".gitattributes"), "secret.txt export-ignore\n").unwrap();
    std::fs::write(p.join("secret.txt"), "kept\n").unwrap();
    git(p, &["add", "."]);
    git(p, &["commit", "-qm", "one"]);
    let first = git(p, &["rev-parse", "HEAD"]);
    std::fs::write(p.join("main.go"), "package main // v2\n").unwrap();
    git(p, &["commit", "-qam", "two"]);
    let second = git(p, &["rev-parse", "HEAD"]);
    let daemon = GitDaemon::serve(dir.path());
    (Repo { dir, daemon }, first, second)
}

/// The test's git daemon leaves nothing behind: once its guard is dropped
/// nothing listens on its port (the daemon was once orphaned instead).
#[test]
fn the_git_daemon_of_a_test_stops_with_its_guard() {
    let (src, _, _) = repo();
    let port: u16 = src
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    drop(src);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a git daemon still listens on 127.0.0.1:{port}"
    );
}

#[test]
fn git_fetches_a_pinned_commit_and_reuses_it_without_git() {
    let (src, first, second) = repo();
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    let url = src.url();
    // The older commit, not a branch tip; upper case is normalised.
    let tree_dir = f.git(&url, &first.to_uppercase()).unwrap().unwrap();
    assert_eq!(tree_dir, cache.path().join("git").join(&first));
    assert_eq!(
        std::fs::read_to_string(tree_dir.join("main.go")).unwrap(),
        "package main\n"
    );
    assert_eq!(
        std::fs::read_to_string(tree_dir.join("secret.txt")).unwrap(),
        "kept\n"
    );
    assert!(tree_dir.join("cmd/tool.go").is_file());
    assert!(!tree_dir.join(".git").exists());
    assert_eq!(
        tree(&cache.path().join("git")),
        [
            first.clone(),
            format!("{first}/.gitattributes"),
            format!("{first}/cmd"),
            format!("{first}/cmd/tool.go"),
            format!("{first}/main.go"),
            format!("{first}/secret.txt")
        ]
    );

    let other_url = src.other_url();
    let tip = f.git(&other_url, &second).unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(tip.join("main.go")).unwrap(),
        "package main // v2\n"
    );

    // With no git to run at all, cached commits are still served.
    let (offline, _) = fetcher(cache.path());
    let offline = offline.with_git_program("/nonexistent/git");
    assert_eq!(offline.git(&url, &first).unwrap().unwrap(), tree_dir);
    assert_eq!(offline.git(&other_url, &second).unwrap().unwrap(), tip);
    let err = offline.git(&url, &"0".repeat(40)).unwrap_err().to_string();
    assert!(
        err.contains("/nonexistent/git"),
        "a miss does need git: {err}"
    );
}

#[test]
fn git_refuses_short_and_unknown_revisions() {
    let (src, first, _) = repo();
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    let url = src.url();
    for rev in [&first[..12], "main", "HEAD", ""] {
        let err = f.git(&url, rev).unwrap_err();
        assert!(matches!(err, FetchError::Invalid(_)), "{rev}: {err}");
        assert!(
            err.to_string().contains("not a full git commit id"),
            "{rev}: {err}"
        );
    }
    let missing = "1234567890123456789012345678901234567890";
    let err = f.git(&url, missing).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, FetchError::Git { .. }), "{msg}");
    assert!(
        msg.contains(&url) && msg.contains(missing) && msg.contains("not our ref"),
        "{msg}"
    );
    assert!(!cache.path().join("git").join(missing).exists());
}

/// Old servers (protocol v0 without allowReachableSHA1InWant) refuse to send
/// a commit by id unless a ref points at it; all branches are fetched instead.
#[test]
fn git_falls_back_to_fetching_all_refs() {
    use std::os::unix::fs::PermissionsExt;
    let (src, first, _) = repo();
    let bin = tempfile::tempdir().unwrap();
    let calls = bin.path().join("calls");
    let wrapper = bin.path().join("git-v0");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$*\" >> '{}'\nexec git -c protocol.version=0 \"$@\"\n",
            calls.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let (f, log) = fetcher(cache.path());
    let f = f.with_git_program(&wrapper);
    let url = src.url();
    let dir = f.git(&url, &first).unwrap().unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.join("main.go")).unwrap(),
        "package main\n"
    );
    let calls = std::fs::read_to_string(&calls).unwrap();
    let fetches: Vec<&str> = calls.lines().filter(|l| l.contains(" fetch ")).collect();
    assert_eq!(fetches.len(), 2, "{calls}");
    assert!(fetches[1].contains("refs/heads/*"), "{calls}");
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("refused fetching")));
}

#[test]
fn git_source_is_usable_through_the_target_fetcher() {
    let (src, first, _) = repo();
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    let (t, _) = fake(f);
    let dir: PathBuf = t.fetcher().git(&src.url(), &first).unwrap().unwrap();
    assert!(dir.join("main.go").is_file());
}

/// `repo()` with tags: annotated `v1.0` and lightweight `light` on the first
/// commit, `v2.0` on the second.
fn tagged_repo() -> (Repo, String, String) {
    let (src, first, second) = repo();
    let p = &src.path();
    git(p, &["tag", "-a", "v1.0", "-m", "v1.0", &first]);
    git(p, &["tag", "light", &first]);
    git(p, &["tag", "v2.0", &second]);
    (src, first, second)
}

#[test]
fn git_checkout_is_a_detached_clone_with_tags_and_origin_and_is_reused_without_git() {
    let (src, first, _) = tagged_repo();
    let cache = tempfile::tempdir().unwrap();
    let (f, log) = fetcher(cache.path());
    let url = src.url();
    let dir = f
        .git_checkout(&url, &first.to_uppercase())
        .unwrap()
        .unwrap();
    assert!(
        dir.starts_with(cache.path().join("git-checkout").join(&first)),
        "{}",
        dir.display()
    );
    assert!(dir.join(".git").is_dir());
    assert_eq!(git(&dir, &["rev-parse", "HEAD"]), first);
    assert_eq!(
        git(&dir, &["rev-parse", "--abbrev-ref", "HEAD"]),
        "HEAD",
        "detached"
    );
    assert_eq!(git(&dir, &["tag", "--points-at", "HEAD"]), "light\nv1.0");
    assert_eq!(git(&dir, &["describe", "--tags", "--exact-match"]), "v1.0");
    assert_eq!(git(&dir, &["remote", "get-url", "origin"]), url);
    assert_eq!(
        git(&dir, &["status", "--porcelain"]),
        "",
        "a clean work tree"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("main.go")).unwrap(),
        "package main\n"
    );
    // Not an export: export-ignore does not apply.
    assert!(dir.join("secret.txt").is_file());
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains(&format!("fetching {first}"))));
    // Copied, not hard-linked to the mirror that later fetches change.
    use std::os::unix::fs::MetadataExt;
    let pack_links = walk_files(&dir.join(".git/objects"))
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().nlink())
        .max()
        .unwrap();
    assert_eq!(pack_links, 1);
    // The plain tree of the same commit is still served without `.git`.
    assert!(!f.git(&url, &first).unwrap().unwrap().join(".git").exists());

    // With no git to run at all, the checkout is served from the cache.
    let (offline, _) = fetcher(cache.path());
    let offline = offline.with_git_program("/nonexistent/git");
    assert_eq!(offline.git_checkout(&url, &first).unwrap().unwrap(), dir);
    // Another URL for the same commit needs its own `origin`, so its own checkout.
    let path_url = src.other_url();
    let err = offline
        .git_checkout(&path_url, &first)
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/git"), "{err}");
    let other = f.git_checkout(&path_url, &first).unwrap().unwrap();
    assert_ne!(other, dir);
    assert_eq!(git(&other, &["remote", "get-url", "origin"]), path_url);
}

#[test]
fn git_checkout_of_an_unknown_commit_leaves_nothing_behind() {
    let (src, _, _) = tagged_repo();
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    let url = src.url();
    let missing = "1234567890123456789012345678901234567890";
    let err = f.git_checkout(&url, missing).unwrap_err();
    assert!(matches!(err, FetchError::Git { .. }), "{err}");
    assert!(!cache.path().join("git-checkout").join(missing).exists());
}

#[test]
fn git_checkout_lands_with_its_git_dir_in_the_build_folder() {
    use pgimg_stdlib::ctx::Loc;
    use pgimg_stdlib::source::{with_build_dir, Source};
    let (src, first, _) = tagged_repo();
    let cache = tempfile::tempdir().unwrap();
    let (f, _) = fetcher(cache.path());
    let (t, c) = fake(f);
    let url = src.url();
    let source = Source::Git {
        url: url.clone(),
        rev: first.clone(),
        keep_git: true,
    };
    let loc = Loc {
        file: "r.rhai".into(),
        line: 1,
        col: 1,
    };
    let staged = with_build_dir(&c, &loc, &source, |d| {
        let root = t.root();
        Ok((
            root.read_string(format!("{d}/.git/HEAD"))?,
            root.read_string(format!("{d}/.git/config"))?,
            root.read_string(format!("{d}/main.go"))?,
        ))
    })
    .unwrap();
    assert_eq!(staged.0, format!("{first}\n"), "detached HEAD staged");
    assert!(staged.1.contains(&format!("url = {url}\n")), "{}", staged.1);
    assert_eq!(staged.2, "package main\n");
    let cmds: Vec<String> = t.commands().iter().map(ToString::to_string).collect();
    assert_eq!(cmds.len(), 1);
    assert!(
        cmds[0].ends_with("&& git rev-parse --verify HEAD"),
        "{cmds:?}"
    );
}

fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
