//! Git sources pinned by commit: the host's `git` fills a per-URL mirror, and the
//! tree at the commit is exported (without `.git`) to `<cache>/git/<commit>/`,
//! or cloned as a checkout (with `.git`) to `<cache>/git-checkout/<commit>/<url key>/`.
//!
//! A commit id names its content, so an exported tree is reused for every
//! later build, whatever URL asks for it, without running git at all. A
//! checkout is reused the same way, but per URL too: its `origin` is the URL.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use nix::fcntl::{Flock, FlockArg};
use sha2::{Digest, Sha256};

use super::{normalize_commit, FetchError, FetchLog};
use crate::shared::tail;

const STDERR_TAIL: usize = 2048;

/// Environment a surrounding git (a hook, a CI checkout) may have set, which
/// would point our commands at the wrong repository.
const GIT_REPO_ENV: [&str; 6] = [
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
];

/// Fetches git trees at pinned commits into a cache directory.
#[derive(Clone)]
pub struct GitFetcher {
    cache: PathBuf,
    program: PathBuf,
    log: FetchLog,
}

impl std::fmt::Debug for GitFetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitFetcher")
            .field("cache", &self.cache)
            .field("program", &self.program)
            .finish()
    }
}

/// Refuses URLs git would treat as options or as `transport::address`
/// remote-helper syntax (`ext::` runs arbitrary commands).
fn check_git_url(url: &str) -> Result<(), FetchError> {
    let invalid = |why: &str| Err(FetchError::Invalid(format!("git URL `{url}`: {why}")));
    if url.is_empty() {
        return invalid("is empty");
    }
    if url.starts_with('-') {
        return invalid("must not start with `-`");
    }
    if let Some((scheme, _)) = url.split_once("::") {
        if !scheme.is_empty()
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+.-".contains(&b))
        {
            return invalid("remote-helper (`transport::`) URLs are not allowed");
        }
    }
    if url.contains(['\n', '\0']) {
        return invalid("contains a control character");
    }
    if is_local(url) {
        return invalid(
            "names a repository on the build host; serve it (http://, https://, git://, ssh) \
             or put the tree in the recipe's asset folder and build from `dir`",
        );
    }
    Ok(())
}

/// Whether git would read `url` from the local file system: `file://`, or
/// no `scheme://` and either no `:` or a `/` before the first `:` — git's
/// own rule for telling a path from scp-like `host:path` (git-clone(1),
/// "GIT URLS"). A recipe must not read the host's repositories, like any
/// other host file outside its asset folder.
fn is_local(url: &str) -> bool {
    if let Some((scheme, _)) = url.split_once("://") {
        return scheme.eq_ignore_ascii_case("file");
    }
    match url.find(':') {
        None => true,
        Some(colon) => url[..colon].contains('/'),
    }
}

impl GitFetcher {
    /// A fetcher keeping mirrors and trees under `cache`.
    pub fn new(cache: impl Into<PathBuf>) -> Self {
        GitFetcher {
            cache: cache.into(),
            program: PathBuf::from("git"),
            log: Arc::new(|line| crate::stderr_line!("{line}")),
        }
    }

    /// Runs `program` instead of the `git` on `PATH`.
    pub fn with_program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = program.into();
        self
    }

    pub fn with_log(mut self, log: FetchLog) -> Self {
        self.log = log;
        self
    }

    /// The mirror repository used for `url`.
    pub fn mirror_dir(&self, url: &str) -> PathBuf {
        self.cache
            .join("git-mirrors")
            .join(hex::encode(Sha256::digest(url.as_bytes())))
    }

    /// Returns `<cache>/git/<commit>/`, the tree of `url` at commit `rev`,
    /// fetching and exporting it first unless it is already there.
    pub fn tree(&self, url: &str, rev: &str) -> Result<PathBuf, FetchError> {
        let rev = normalize_commit(rev)?;
        check_git_url(url)?;
        let trees = self.cache.join("git");
        let dest = trees.join(&rev);
        if dest.is_dir() {
            return Ok(dest);
        }
        let mirror = {
            let _fetching = self.lock_mirror(url)?;
            self.mirror_with_commit(url, &rev)?
        };
        let tmp = self.tempdir_in(url, &trees, &format!(".tmp-{rev}-"))?;
        let tree = tmp.path().join("tree");
        std::fs::create_dir(&tree)
            .map_err(|e| io_error(url, format!("creating {}", tree.display()), e))?;
        // A private index, so concurrent exports from one mirror never share
        // state, and read-tree + checkout-index rather than `git archive`,
        // which would apply the tree's export-ignore/export-subst attributes.
        let index = tmp.path().join("index");
        let work_tree = format!("--work-tree={}", tree.display());
        self.git(url, &mirror, &[&work_tree, "read-tree", &rev], Some(&index))?;
        self.git(
            url,
            &mirror,
            &[&work_tree, "checkout-index", "--all", "--force"],
            Some(&index),
        )?;
        publish(url, &tree, &dest)
    }

    /// Where [`checkout`](Self::checkout) keeps the checkout of `url` at
    /// `rev`: per URL as well as per commit, because the checkout's `origin` is that URL.
    pub fn checkout_dir(&self, url: &str, rev: &str) -> PathBuf {
        let url_key = hex::encode(Sha256::digest(url.as_bytes()));
        self.cache
            .join("git-checkout")
            .join(rev.to_ascii_lowercase())
            .join(&url_key[..16])
    }

    /// Returns [`checkout_dir`](Self::checkout_dir): a git checkout of `url`
    /// with `.git`, HEAD detached at `rev`, the upstream tags that point at
    /// `rev`, and `origin` set to `url`, for builds that run git themselves
    /// (version strings from `git describe`, `git submodule update` with
    /// relative URLs). Made from the mirror unless it is already there.
    pub fn checkout(&self, url: &str, rev: &str) -> Result<PathBuf, FetchError> {
        let rev = normalize_commit(rev)?;
        check_git_url(url)?;
        let dest = self.checkout_dir(url, &rev);
        if dest.is_dir() {
            return Ok(dest);
        }
        let mirror = {
            let _fetching = self.lock_mirror(url)?;
            let mirror = self.mirror_with_commit(url, &rev)?;
            self.fetch_tags_at(url, &mirror, &rev)?;
            mirror
        };
        let parent = dest.parent().expect("checkout dir has a parent");
        let tmp = self.tempdir_in(url, parent, ".tmp-")?;
        let repo = tmp.path().join("repo");
        // --no-hardlinks: the checkout is copied into images and must not
        // share inodes with the mirror, which later fetches keep changing.
        let mut clone = self.command();
        clone
            .args(["clone", "--quiet", "--no-checkout", "--no-hardlinks", "--"])
            .arg(&mirror)
            .arg(&repo);
        self.output(url, "git clone --no-checkout --no-hardlinks", clone)?;
        self.git_in(
            url,
            &repo,
            &[
                "-c",
                "advice.detachedHead=false",
                "checkout",
                "--quiet",
                "--detach",
                &rev,
            ],
        )?;
        self.git_in(url, &repo, &["remote", "set-url", "origin", url])?;
        let head = self.git_in(url, &repo, &["rev-parse", "--verify", "HEAD"])?;
        if head.trim() != rev {
            return Err(FetchError::Git {
                url: url.to_string(),
                reason: format!("the checkout's HEAD is `{}`, not {rev}", head.trim()),
            });
        }
        publish(url, &repo, &dest)
    }

    /// An exclusive `flock` on `<mirror>.lock`, held while fetching into the
    /// mirror: two `git fetch`es updating the same refs at once fail ("cannot
    /// lock ref"), so a build that finds another fetching says so and waits.
    /// Reading the mirror (export, clone) needs no lock.
    fn lock_mirror(&self, url: &str) -> Result<Flock<std::fs::File>, FetchError> {
        let mut path = self.mirror_dir(url).into_os_string();
        path.push(".lock");
        let path = PathBuf::from(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| io_error(url, format!("creating {}", parent.display()), e))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(url, format!("opening {}", path.display()), e))?;
        let failed = |errno: nix::errno::Errno| {
            io_error(
                url,
                format!("locking {}", path.display()),
                std::io::Error::from(errno),
            )
        };
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(lock),
            Err((file, nix::errno::Errno::EWOULDBLOCK)) => {
                (self.log)(&format!(
                    "git: waiting for another build fetching {url} (lock {})",
                    path.display()
                ));
                Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| failed(errno))
            }
            Err((_, errno)) => Err(failed(errno)),
        }
    }

    /// The mirror for `url`, holding commit `rev` (fetched unless it was there).
    fn mirror_with_commit(&self, url: &str, rev: &str) -> Result<PathBuf, FetchError> {
        let mirror = self.mirror(url)?;
        if !self.has_commit(url, &mirror, rev)? {
            (self.log)(&format!("git: fetching {rev} from {url}"));
            self.fetch_commit(url, &mirror, rev)?;
        }
        let resolved = self.git(
            url,
            &mirror,
            &[
                "rev-parse",
                "--verify",
                "--quiet",
                &format!("{rev}^{{commit}}"),
            ],
            None,
        );
        match resolved {
            Ok(out) if out.trim() == rev => Ok(mirror),
            Ok(out) => Err(FetchError::Git {
                url: url.to_string(),
                reason: format!("{rev} resolves to `{}`, not to itself", out.trim()),
            }),
            Err(_) => Err(FetchError::Git {
                url: url.to_string(),
                reason: format!("{rev} is not a commit in this repository"),
            }),
        }
    }

    /// Fetches into the mirror's `refs/tags/` the upstream tags that point
    /// at `rev`, and only those: the commit's history is already there, so
    /// this brings only the tag objects.
    fn fetch_tags_at(&self, url: &str, mirror: &Path, rev: &str) -> Result<(), FetchError> {
        let listing = self.git(url, mirror, &["ls-remote", "--tags", "--", url], None)?;
        let tags = tags_at(&listing, rev);
        if tags.is_empty() {
            return Ok(());
        }
        let refspecs: Vec<String> = tags.iter().map(|t| format!("+{t}:{t}")).collect();
        self.fetch_exactly(url, mirror, &refspecs)?;
        Ok(())
    }

    /// `git fetch` of exactly `refspecs` from `url` into the mirror: no tags
    /// beyond those named, and no FETCH_HEAD left behind.
    fn fetch_exactly<S: AsRef<str>>(
        &self,
        url: &str,
        mirror: &Path,
        refspecs: &[S],
    ) -> Result<String, FetchError> {
        let mut args = vec![
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-write-fetch-head",
            "--",
            url,
        ];
        args.extend(refspecs.iter().map(AsRef::as_ref));
        self.git(url, mirror, &args, None)
    }

    /// A temporary directory in `parent` (created when missing), removed on drop.
    fn tempdir_in(
        &self,
        url: &str,
        parent: &Path,
        prefix: &str,
    ) -> Result<tempfile::TempDir, FetchError> {
        std::fs::create_dir_all(parent)
            .map_err(|e| io_error(url, format!("creating {}", parent.display()), e))?;
        tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(|e| {
                io_error(
                    url,
                    format!("creating a temporary directory in {}", parent.display()),
                    e,
                )
            })
    }

    /// The bare mirror for `url`, created (atomically) when missing.
    fn mirror(&self, url: &str) -> Result<PathBuf, FetchError> {
        let mirror = self.mirror_dir(url);
        if mirror.join("HEAD").is_file() {
            return Ok(mirror);
        }
        let parent = mirror.parent().expect("mirror dir has a parent");
        let tmp = self.tempdir_in(url, parent, ".init-")?;
        let tmp_repo = tmp.path().join("repo");
        let mut cmd = self.command();
        cmd.args(["init", "--bare", "--quiet"]).arg(&tmp_repo);
        self.output(url, "git init --bare", cmd)?;
        match std::fs::rename(&tmp_repo, &mirror) {
            Ok(()) => Ok(mirror),
            Err(_) if mirror.join("HEAD").is_file() => Ok(mirror),
            Err(e) => Err(io_error(
                url,
                format!("renaming {} to {}", tmp_repo.display(), mirror.display()),
                e,
            )),
        }
    }

    fn has_commit(&self, url: &str, mirror: &Path, rev: &str) -> Result<bool, FetchError> {
        let mut cmd = self.command();
        cmd.arg(format!("--git-dir={}", mirror.display())).args([
            "cat-file",
            "-e",
            &format!("{rev}^{{commit}}"),
        ]);
        let out = cmd.output().map_err(|e| self.spawn_error(url, e))?;
        Ok(out.status.success())
    }

    /// Fetches `rev` by id; servers that refuse unadvertised objects get a
    /// second fetch of all branches and tags, which must then contain it.
    fn fetch_commit(&self, url: &str, mirror: &Path, rev: &str) -> Result<(), FetchError> {
        let by_id = format!("+{rev}:refs/pgimg/{rev}");
        let first = self.fetch_exactly(url, mirror, &[by_id]);
        let first_err = match first {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        (self.log)(&format!(
            "git: {url} refused fetching {rev} by id; fetching all branches and tags"
        ));
        self.git(
            url,
            mirror,
            &[
                "fetch",
                "--quiet",
                "--no-write-fetch-head",
                "--",
                url,
                "+refs/heads/*:refs/pgimg-heads/*",
                "+refs/tags/*:refs/pgimg-tags/*",
            ],
            None,
        )
        .map_err(|e| FetchError::Git {
            url: url.to_string(),
            reason: format!(
                "{}; before that, fetching by id failed: {}",
                git_reason(&e),
                git_reason(&first_err)
            ),
        })?;
        if self.has_commit(url, mirror, rev)? {
            Ok(())
        } else {
            Err(FetchError::Git {
                url: url.to_string(),
                reason: format!(
                    "commit {rev} is not in the repository (fetching it by id failed: {})",
                    git_reason(&first_err)
                ),
            })
        }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        for var in GIT_REPO_ENV {
            cmd.env_remove(var);
        }
        // Never wait for a password on a terminal nobody is watching; keep
        // messages in English so the stderr tail reads the same everywhere.
        cmd.env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `git --git-dir=<mirror> <args>`; returns stdout.
    fn git(
        &self,
        url: &str,
        mirror: &Path,
        args: &[&str],
        index: Option<&Path>,
    ) -> Result<String, FetchError> {
        let mut cmd = self.command();
        cmd.arg(format!("--git-dir={}", mirror.display()));
        if let Some(index) = index {
            cmd.env("GIT_INDEX_FILE", index);
        }
        self.run_args(url, cmd, args)
    }

    /// Runs `git -C <repo> <args>` in a checkout; returns stdout.
    fn git_in(&self, url: &str, repo: &Path, args: &[&str]) -> Result<String, FetchError> {
        let mut cmd = self.command();
        cmd.arg("-C").arg(repo);
        self.run_args(url, cmd, args)
    }

    fn run_args(&self, url: &str, mut cmd: Command, args: &[&str]) -> Result<String, FetchError> {
        cmd.args(args);
        let shown = format!(
            "git {}",
            args.iter()
                .copied()
                .filter(|a| !a.starts_with("--work-tree"))
                .collect::<Vec<_>>()
                .join(" ")
        );
        self.output(url, &shown, cmd)
    }

    fn output(&self, url: &str, shown: &str, mut cmd: Command) -> Result<String, FetchError> {
        let out = cmd.output().map_err(|e| self.spawn_error(url, e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            let stderr = tail(&out.stderr, STDERR_TAIL);
            let stderr = stderr.trim_end();
            Err(FetchError::Git {
                url: url.to_string(),
                reason: if stderr.is_empty() {
                    format!("`{shown}` exited with {}", out.status)
                } else {
                    format!("`{shown}` exited with {}; stderr:\n{stderr}", out.status)
                },
            })
        }
    }

    fn spawn_error(&self, url: &str, e: std::io::Error) -> FetchError {
        FetchError::Git {
            url: url.to_string(),
            reason: format!("running {}: {e}", self.program.display()),
        }
    }
}

/// Moves a finished export from its temporary place to `dest`.
fn publish(url: &str, from: &Path, dest: &Path) -> Result<PathBuf, FetchError> {
    match std::fs::rename(from, dest) {
        Ok(()) => Ok(dest.to_path_buf()),
        // Another build made the same one meanwhile; it is as good.
        Err(_) if dest.is_dir() => Ok(dest.to_path_buf()),
        Err(e) => Err(io_error(
            url,
            format!("renaming {} to {}", from.display(), dest.display()),
            e,
        )),
    }
}

fn io_error(url: &str, what: String, e: std::io::Error) -> FetchError {
    FetchError::Io {
        url: url.to_string(),
        reason: format!("{what}: {e}"),
    }
}

/// The tag refs in `git ls-remote --tags` output whose commit is `rev`; an
/// annotated tag counts by its peeled (`^{}`) line.
fn tags_at(listing: &str, rev: &str) -> Vec<String> {
    let mut commit_of: BTreeMap<&str, &str> = BTreeMap::new();
    for line in listing.lines() {
        let Some((oid, name)) = line.split_once('\t') else {
            continue;
        };
        match name.strip_suffix("^{}") {
            Some(tag) => {
                commit_of.insert(tag, oid);
            }
            None => {
                commit_of.entry(name).or_insert(oid);
            }
        }
    }
    commit_of
        .into_iter()
        .filter(|(_, oid)| oid.eq_ignore_ascii_case(rev))
        .map(|(tag, _)| tag.to_string())
        .collect()
}

fn git_reason(e: &FetchError) -> String {
    match e {
        FetchError::Git { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_fetch_into_the_same_mirror_waits_for_the_first_saying_so() {
        let cache = tempfile::tempdir().unwrap();
        let lines = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let sink = lines.clone();
        let fetcher = Arc::new(
            GitFetcher::new(cache.path())
                .with_log(Arc::new(move |l| sink.lock().unwrap().push(l.into()))),
        );
        let url = "https://example.invalid/r.git";
        let first = fetcher.lock_mirror(url).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let second = {
            let fetcher = fetcher.clone();
            std::thread::spawn(move || {
                let lock = fetcher.lock_mirror(url).unwrap();
                tx.send(()).unwrap();
                drop(lock);
            })
        };
        let waiting = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            !lines.lock().unwrap().is_empty()
        });
        assert!(waiting, "the second build says it waits");
        assert!(rx.try_recv().is_err(), "and has not got the lock");
        assert!(lines.lock().unwrap()[0]
            .starts_with("git: waiting for another build fetching https://example.invalid/r.git"));
        drop(first);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the second gets the lock once the first lets go");
        second.join().unwrap();
    }

    #[test]
    fn refuses_option_and_helper_urls() {
        let cases = [
            ("https://github.com/paradedb/paradedb.git", true),
            ("git@github.com:org/repo.git", true),
            ("ssh://git@example.org/repo.git", true),
            ("git://127.0.0.1/repo.git", true),
            ("--upload-pack=touch /tmp/x", false),
            ("ext::sh -c touch% /tmp/pwned", false),
            ("fd::3", false),
            ("", false),
        ];
        for (url, ok) in cases {
            assert_eq!(check_git_url(url).is_ok(), ok, "{url}");
        }
    }

    #[test]
    fn refuses_repositories_on_the_build_host() {
        for url in [
            "file:///srv/repo",
            "FILE:///root/secret.git",
            "/srv/repo",
            "./repo",
            "../repo.git",
            "repo",
            "srv/with:colon",
        ] {
            let e = check_git_url(url).unwrap_err().to_string();
            assert!(e.contains("on the build host"), "{url}: {e}");
        }
    }

    #[test]
    fn tags_at_a_commit_count_annotated_tags_by_their_peeled_line() {
        let rev = "2d1892b0f819be35170e530ad2b17b0729f2c522";
        let listing = format!(
            "{rev}\trefs/tags/light\n\
             bbf7fcf4c99c34cb1b2b7e9ee131e63b77d36eb1\trefs/tags/v1\n\
             {rev}\trefs/tags/v1^{{}}\n\
             5ade3e6b3e7e166a125261fbfd3eae5a78df569c\trefs/tags/v2\n\
             {rev}\trefs/tags/v0^{{}}\n\
             {}\trefs/tags/v0\n\
             garbage\n",
            "1".repeat(40)
        );
        assert_eq!(
            tags_at(&listing, &rev.to_uppercase()),
            ["refs/tags/light", "refs/tags/v0", "refs/tags/v1"]
        );
        assert!(tags_at(&listing, &"0".repeat(40)).is_empty());
    }

    #[test]
    fn short_rev_is_refused_before_git_runs() {
        let cache = tempfile::tempdir().unwrap();
        let g = GitFetcher::new(cache.path()).with_program("/nonexistent/git");
        let e = g.tree("/srv/repo", "abc123").unwrap_err().to_string();
        assert!(e.contains("not a full git commit id"), "{e}");
        let e = g.tree("ext::sh", &"a".repeat(40)).unwrap_err().to_string();
        assert!(e.contains("remote-helper"), "{e}");
        let e = g.checkout("/srv/repo", "main").unwrap_err().to_string();
        assert!(e.contains("not a full git commit id"), "{e}");
        let e = g
            .checkout("--upload-pack=x", &"a".repeat(40))
            .unwrap_err()
            .to_string();
        assert!(e.contains("must not start with `-`"), "{e}");
    }
}
