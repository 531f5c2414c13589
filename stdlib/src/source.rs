//! Build sources for `go_build` and `pgxs_build`: a pinned git commit or an asset folder, staged in the image.

use serde::{Deserialize, Serialize};

use crate::ctx::{Ctx, Loc};
use crate::error::Result;
use crate::fetch::normalize_commit;
use crate::root::Attrs;
use crate::run::command;

/// Where sources are built inside the image (removed after each build; the
/// finalize stage empties `/var/tmp` anyway).
pub const BUILD_ROOT: &str = "/var/tmp/pgimg-build";

/// A wrong combination of `git`, `rev` and `dir`.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("give the source as `git` (with `rev`) or `dir`")]
    Missing,
    #[error("give either `git` or `dir`, not both")]
    Both,
    #[error("`git` needs `rev`, the full commit id to build (a branch or tag is not a pin)")]
    NoRev,
    #[error("`rev` only applies to `git`")]
    RevWithoutGit,
    #[error("`keep_git` only applies to `git`")]
    KeepGitWithoutGit,
    #[error("{path}: the image's git sees HEAD at `{head}`, not at {rev}")]
    CheckoutHead {
        path: String,
        head: String,
        rev: String,
    },
    #[error("asset `{0}` is not a folder")]
    NotADir(String),
}

crate::error::invalid_from!(SourceError);

/// The source options `go_build` and `pgxs_build` share: flattened into
/// their options maps, whose `deny_unknown_fields` still refuses a key
/// neither knows (serde checks what the flattened struct left over).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct SourceOpts {
    /// Git repository URL (with `rev`).
    pub git: Option<String>,
    /// Full commit id of `git`.
    pub rev: Option<String>,
    /// An asset folder instead of `git`.
    pub dir: Option<String>,
    /// Stage `git` as a checkout with its `.git` (HEAD detached at `rev`,
    /// upstream tags at `rev`, `origin` = `git`) for builds that run git.
    pub keep_git: Option<bool>,
}

/// Where a build's source comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A git repository at a full commit id; with `keep_git`, staged as a
    /// checkout (with `.git`) for builds that run git themselves.
    Git {
        url: String,
        rev: String,
        keep_git: bool,
    },
    /// A folder among the recipe's assets.
    Dir(String),
}

impl Source {
    /// The source named by a primitive's `git`, `rev`, `dir` and `keep_git` options.
    pub fn from_options(opts: SourceOpts) -> Result<Self> {
        let SourceOpts {
            git,
            rev,
            dir,
            keep_git,
        } = opts;
        if git.is_none() && dir.is_some() && keep_git.is_some() {
            return Err(SourceError::KeepGitWithoutGit.into());
        }
        match (git, rev, dir) {
            (Some(_), _, Some(_)) => Err(SourceError::Both.into()),
            (Some(url), Some(rev), None) => Ok(Source::Git {
                url,
                rev: normalize_commit(&rev)?,
                keep_git: keep_git.unwrap_or(false),
            }),
            (Some(_), None, None) => Err(SourceError::NoRev.into()),
            (None, Some(_), _) => Err(SourceError::RevWithoutGit.into()),
            (None, None, Some(dir)) => Ok(Source::Dir(dir)),
            (None, None, None) => Err(SourceError::Missing.into()),
        }
    }

    /// A readable, unique-enough folder name: `<repo>-<12 hex>` or the asset folder's name.
    pub fn name(&self) -> String {
        let clean = |s: &str| -> String {
            let s: String = s
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            let s = s.trim_start_matches('.');
            if s.is_empty() {
                "source".into()
            } else {
                s.to_string()
            }
        };
        match self {
            Source::Git { url, rev, .. } => {
                let last = url
                    .trim_end_matches('/')
                    .rsplit(['/', ':'])
                    .next()
                    .unwrap_or_default();
                format!("{}-{}", clean(last.trim_end_matches(".git")), &rev[..12])
            }
            Source::Dir(dir) => clean(
                dir.trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or_default(),
            ),
        }
    }
}

/// A source tree copied into the image for one build. [`close`](Self::close)
/// removes it and reports errors; dropping it without closing (a failed
/// build) removes it too, ignoring errors.
pub struct BuildDir<'a> {
    ctx: &'a Ctx,
    path: String,
    closed: bool,
}

impl<'a> BuildDir<'a> {
    /// Copies `source` to `/var/tmp/pgimg-build/<name>` in the image, fetching
    /// a git source through the target's fetcher (and recording it as an
    /// input). A recording fetcher has no tree to give: the folder is then
    /// created empty, so the commands that would build in it can be planned.
    ///
    /// A `keep_git` checkout is then checked with the image's own git (at
    /// `loc`): a build's `$(shell git ...)` would turn a repository git
    /// refuses (not installed, "dubious ownership") into an empty version
    /// string rather than an error.
    pub fn stage(ctx: &'a Ctx, loc: &Loc, source: &Source) -> Result<Self> {
        let path = format!("{BUILD_ROOT}/{}", source.name());
        let root = ctx.target.root();
        // Left over by an interrupted build.
        root.remove(&path)?;
        root.mkdir_all(BUILD_ROOT, Attrs::mode(0o755))?;
        let host = match source {
            Source::Git { url, rev, keep_git } => {
                // Recorded first: with `--locked` an unlocked source is refused before any fetch.
                ctx.record_input("git", url, rev, &path)?;
                if *keep_git {
                    ctx.target.fetcher().git_checkout(url, rev)?
                } else {
                    ctx.target.fetcher().git(url, rev)?
                }
            }
            Source::Dir(dir) => {
                let p = ctx.asset(dir)?;
                if !p.is_dir() {
                    return Err(SourceError::NotADir(dir.clone()).into());
                }
                Some(p)
            }
        };
        let dir = BuildDir {
            ctx,
            path,
            closed: false,
        };
        match host {
            Some(tree) => root
                .copy_from_host(&tree, &dir.path, Attrs::default())
                .map(|_| ())?,
            None => root.mkdir_all(&dir.path, Attrs::mode(0o755))?,
        }
        if let Source::Git {
            rev,
            keep_git: true,
            ..
        } = source
        {
            let out = ctx.run(
                loc,
                command(["git", "rev-parse", "--verify", "HEAD"]).cwd(&dir.path),
            )?;
            let head = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if head != *rev {
                return Err(SourceError::CheckoutHead {
                    path: dir.path.clone(),
                    head,
                    rev: rev.clone(),
                }
                .into());
            }
        }
        Ok(dir)
    }

    /// The build folder's path inside the image.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Removes the build folder.
    pub fn close(mut self) -> Result<()> {
        self.closed = true;
        self.ctx.target.root().remove(&self.path)?;
        Ok(())
    }
}

impl Drop for BuildDir<'_> {
    /// Removes the build folder, ignoring errors: this runs when a build
    /// already failed, and its error is the one to report.
    fn drop(&mut self) {
        if !self.closed {
            let _ = self.ctx.target.root().remove(&self.path);
        }
    }
}

/// Runs `body` in a staged build folder and removes the folder afterwards,
/// whether `body` succeeded or not.
pub fn with_build_dir<T>(
    ctx: &Ctx,
    loc: &Loc,
    source: &Source,
    body: impl FnOnce(&str) -> Result<T>,
) -> Result<T> {
    let dir = BuildDir::stage(ctx, loc, source)?;
    let out = body(dir.path());
    let closed = dir.close();
    let out = out?;
    closed?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::fake::recorded_inputs;
    use crate::{FakeTarget, Target};
    use std::collections::BTreeMap;
    use std::sync::Arc;

    const REV: &str = "cf1ce0f5b69048e31d740b508a79d8294707e339";

    fn loc() -> Loc {
        Loc::new("recipes/common/packages.rhai", 32, 5)
    }

    #[test]
    fn options_pick_exactly_one_source() {
        let s = |g: Option<&str>, r: Option<&str>, d: Option<&str>| {
            Source::from_options(SourceOpts {
                git: g.map(Into::into),
                rev: r.map(Into::into),
                dir: d.map(Into::into),
                keep_git: None,
            })
        };
        assert_eq!(
            s(
                Some("https://github.com/wal-g/wal-g.git"),
                Some(&REV.to_uppercase()),
                None
            )
            .unwrap(),
            Source::Git {
                url: "https://github.com/wal-g/wal-g.git".into(),
                rev: REV.into(),
                keep_git: false,
            }
        );
        let keep = |d: Option<&str>| {
            Source::from_options(SourceOpts {
                git: Some("u".into()),
                rev: Some(REV.into()),
                dir: d.map(Into::into),
                keep_git: Some(true),
            })
        };
        assert_eq!(
            keep(None).unwrap(),
            Source::Git {
                url: "u".into(),
                rev: REV.into(),
                keep_git: true,
            }
        );
        let e = Source::from_options(SourceOpts {
            dir: Some("d".into()),
            keep_git: Some(true),
            ..SourceOpts::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "`keep_git` only applies to `git`");
        assert!(keep(Some("d"))
            .unwrap_err()
            .to_string()
            .contains("not both"));
        assert_eq!(
            s(None, None, Some("src/ext")).unwrap(),
            Source::Dir("src/ext".into())
        );
        let cases = [
            (s(Some("u"), Some(REV), Some("d")), "not both"),
            (s(Some("u"), None, None), "needs `rev`"),
            (
                s(Some("u"), Some("master"), None),
                "not a full git commit id",
            ),
            (s(None, Some(REV), None), "only applies to `git`"),
            (s(None, None, None), "give the source"),
        ];
        for (got, want) in cases {
            let e = got.unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn names() {
        let git = |url: &str| {
            Source::Git {
                url: url.into(),
                rev: REV.into(),
                keep_git: false,
            }
            .name()
        };
        assert_eq!(
            git("https://github.com/wal-g/wal-g.git"),
            "wal-g-cf1ce0f5b690"
        );
        assert_eq!(
            git("https://github.com/petere/pguint/"),
            "pguint-cf1ce0f5b690"
        );
        assert_eq!(git("git@example.org:x/y z.git"), "y-z-cf1ce0f5b690");
        assert_eq!(git("https://h/.."), "source-cf1ce0f5b690");
        assert_eq!(Source::Dir("builds/my_ext/".into()).name(), "my_ext");
    }

    /// An assets folder holding the source tree `my_ext/`.
    fn tree() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("my_ext/src")).unwrap();
        std::fs::write(d.path().join("my_ext/Makefile"), "all:\n").unwrap();
        std::fs::write(d.path().join("my_ext/src/a.c"), "int a;\n").unwrap();
        d
    }

    #[test]
    fn git_source_is_copied_recorded_and_removed() {
        let src = tree();
        let url = "https://github.com/petere/pguint.git";
        let fixtures = BTreeMap::from([(url.to_string(), src.path().join("my_ext"))]);
        let t = Arc::new(FakeTarget::with_fixtures(fixtures));
        let c = Ctx::new(t.clone());
        let source = Source::Git {
            url: url.into(),
            rev: REV.into(),
            keep_git: false,
        };
        let seen = with_build_dir(&c, &loc(), &source, |dir| {
            assert_eq!(dir, "/var/tmp/pgimg-build/pguint-cf1ce0f5b690");
            Ok(t.root().read_string(format!("{dir}/src/a.c"))?)
        })
        .unwrap();
        assert_eq!(seen, "int a;\n");
        assert!(!t.root().exists("/var/tmp/pgimg-build/pguint-cf1ce0f5b690"));
        assert_eq!(
            recorded_inputs(&c)[0],
            ("git".into(), url.into(), REV.into())
        );
    }

    #[test]
    fn a_failed_build_still_removes_the_folder_and_a_stale_one_is_replaced() {
        let src = tree();
        let t = Arc::new(FakeTarget::ubuntu());
        let c = Ctx::new(t.clone()).with_asset_dirs(vec![src.path().to_path_buf()]);
        let name = "my_ext".to_string();
        let dir = format!("{BUILD_ROOT}/{name}");
        t.root()
            .write(format!("{dir}/stale.o"), b"old", Attrs::default())
            .unwrap();
        let e = with_build_dir(&c, &loc(), &Source::Dir(name.clone()), |d| -> Result<()> {
            assert!(t.root().exists(format!("{d}/Makefile")));
            assert!(!t.root().exists(format!("{d}/stale.o")));
            Err(Error::invalid("make failed"))
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "make failed");
        assert!(!t.root().exists(&dir));
        assert!(c.journal.lock().unwrap().inputs.is_empty());
        let e = with_build_dir(&c, &loc(), &Source::Dir(format!("{name}/Makefile")), |_| {
            Ok(())
        })
        .unwrap_err();
        assert!(e.to_string().contains("is not a folder"), "{e}");
    }

    #[test]
    fn a_recording_fetcher_gives_an_empty_folder() {
        let t = Arc::new(FakeTarget::ubuntu());
        let c = Ctx::new(t.clone());
        let source = Source::Git {
            url: "https://github.com/wal-g/wal-g".into(),
            rev: REV.into(),
            keep_git: false,
        };
        with_build_dir(&c, &loc(), &source, |d| {
            assert_eq!(t.root().read_dir(d)?, Vec::<String>::new());
            Ok(())
        })
        .unwrap();
        assert_eq!(c.journal.lock().unwrap().inputs.len(), 1);
    }

    /// A checkout as `GitFetcher::checkout` leaves it (the parts that matter here).
    fn checkout() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join(".git/refs/tags")).unwrap();
        std::fs::write(d.path().join(".git/HEAD"), format!("{REV}\n")).unwrap();
        std::fs::write(d.path().join(".git/refs/tags/v3.0.0"), format!("{REV}\n")).unwrap();
        std::fs::write(d.path().join("Makefile"), "pg_build:\n").unwrap();
        d
    }

    fn keep_git(url: &str) -> Source {
        Source::Git {
            url: url.into(),
            rev: REV.into(),
            keep_git: true,
        }
    }

    #[test]
    fn keep_git_stages_the_checkout_with_its_git_dir_and_checks_head_in_the_image() {
        let src = checkout();
        let url = "https://github.com/wal-g/wal-g.git";
        let fixtures = BTreeMap::from([(url.to_string(), src.path().to_path_buf())]);
        let t = Arc::new(FakeTarget::with_fixtures(fixtures));
        let c = Ctx::new(t.clone());
        let staged = with_build_dir(&c, &loc(), &keep_git(url), |d| {
            Ok((
                t.root().read_string(format!("{d}/.git/HEAD"))?,
                t.root().read_string(format!("{d}/.git/refs/tags/v3.0.0"))?,
                t.root().exists(format!("{d}/Makefile")),
            ))
        })
        .unwrap();
        assert_eq!(staged, (format!("{REV}\n"), format!("{REV}\n"), true));
        let cmds: Vec<String> = t.commands().iter().map(ToString::to_string).collect();
        assert_eq!(
            cmds,
            ["cd /var/tmp/pgimg-build/wal-g-cf1ce0f5b690 && git rev-parse --verify HEAD"]
        );
        assert_eq!(t.commands()[0].label, "recipes/common/packages.rhai:32:5");
        assert_eq!(c.journal.lock().unwrap().inputs[0].kind, "git");

        // A plain tree where a checkout is asked for is refused, not built without git.
        let plain = tree();
        let fixtures = BTreeMap::from([(url.to_string(), plain.path().join("my_ext"))]);
        let t = Arc::new(FakeTarget::with_fixtures(fixtures));
        let c = Ctx::new(t.clone());
        let e = with_build_dir(&c, &loc(), &keep_git(url), |_| Ok(())).unwrap_err();
        assert!(e.to_string().contains("is not a git checkout"), "{e}");
        assert!(!t.root().exists("/var/tmp/pgimg-build/wal-g-cf1ce0f5b690"));
    }

    #[test]
    fn keep_git_fails_when_the_images_git_sees_another_head() {
        use crate::run::scripted::{stdout, Scripted};
        let src = checkout();
        let url = "https://github.com/wal-g/wal-g.git";
        // The image's git answers from the staged `.git/HEAD`, so the answer
        // is only right if the checkout landed in the build folder.
        let mut scripted = Scripted::new(|root, cmd| {
            let head = root.read_string(format!("{}/.git/HEAD", cmd.cwd.as_deref().unwrap()));
            Ok(stdout(&head.unwrap_or_default()))
        });
        let fixtures = BTreeMap::from([(url.to_string(), src.path().to_path_buf())]);
        scripted.fake = FakeTarget::with_fixtures(fixtures);
        let t = Arc::new(scripted);
        let c = Ctx::new(t.clone());
        with_build_dir(&c, &loc(), &keep_git(url), |_| Ok(())).unwrap();

        std::fs::write(src.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        let e = with_build_dir(&c, &loc(), &keep_git(url), |_| -> Result<()> {
            panic!("the build must not start")
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("/var/tmp/pgimg-build/wal-g-cf1ce0f5b690: the image's git sees HEAD at `ref: refs/heads/main`, not at {REV}")
        );
        assert!(!t.root().exists("/var/tmp/pgimg-build/wal-g-cf1ce0f5b690"));
    }
}
