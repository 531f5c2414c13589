//! `go_build`: builds a pinned Go source inside the image with host-side module and build caches.

use std::collections::BTreeMap;

use rhai::{Dynamic, Map};
use serde::{Deserialize, Serialize};

use crate::api::{flat_options, string_list, to_array, FlatOptions};
use crate::ctx::{Ctx, Loc};
use crate::error::{Error, Result};
use crate::files::image_path;
use crate::rhai_fns;
use crate::run::command;
use crate::source::{with_build_dir, Source, SourceOpts};
use crate::target::Command;

/// Go's build cache inside the image; bound to the host cache `go-build`.
pub const GOCACHE: &str = "/root/.cache/go-build";
/// Go's module cache inside the image; bound to the host cache `go-mod`.
pub const GOMODCACHE: &str = "/root/go/pkg/mod";

/// Options of `go_build`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GoOpts {
    /// `git` + `rev`, or `dir`; `keep_git`.
    #[serde(flatten)]
    pub source: SourceOpts,
    /// `make` invocations, in order; each entry is split on whitespace
    /// (`"pg_build USE_BROTLI=1"` runs `make pg_build USE_BROTLI=1`).
    pub make: Option<Dynamic>,
    /// Output file (relative to the source) → Go package: `#{ "bin/tool": "./cmd/tool" }`
    /// runs `go build -trimpath -o bin/tool ./cmd/tool`.
    pub build: Option<BTreeMap<String, String>>,
    /// Extra environment; overrides the defaults (`GOPROXY=off`, `GOTOOLCHAIN=local`).
    pub env: Option<BTreeMap<String, String>>,
    /// Built file (relative to the source) → absolute destination in the image.
    pub install: Option<BTreeMap<String, String>>,
}

impl FlatOptions for GoOpts {
    const KEYS: &'static [&'static str] = &[
        "git", "rev", "dir", "keep_git", "make", "build", "env", "install",
    ];
}

/// A relative path inside the build folder.
fn build_relative(what: &str, p: &str) -> Result<String> {
    let bad = p.is_empty() || p.starts_with('/') || p.split('/').any(|c| c == "..");
    if bad {
        return Err(Error::invalid(format!(
            "{what}: `{p}` must be a path relative to the source folder, without `..`"
        )));
    }
    Ok(p.to_string())
}

/// The environment every Go command gets: the caches where the target binds
/// the host's, no network unless the recipe opts in (`GOPROXY`), and the
/// image's Go toolchain only (a `go.mod` `toolchain` line must not download another).
fn go_env(user: BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::from([
        ("GOCACHE".to_string(), GOCACHE.to_string()),
        ("GOMODCACHE".to_string(), GOMODCACHE.to_string()),
        ("GOPATH".to_string(), "/root/go".to_string()),
        ("GOTOOLCHAIN".to_string(), "local".to_string()),
        ("GOPROXY".to_string(), "off".to_string()),
    ]);
    for (k, v) in user {
        if ["GOCACHE", "GOMODCACHE", "GOPATH"].contains(&k.as_str()) {
            return Err(Error::invalid(format!(
                "env: `{k}` is fixed so the host's Go caches are used"
            )));
        }
        if k.is_empty() || k.contains('=') {
            return Err(Error::invalid(format!("env: `{k}` is not a variable name")));
        }
        env.insert(k, v);
    }
    Ok(env)
}

/// Builds a Go source inside the image and installs the results; returns
/// the installed paths.
///
/// The source (`git` at commit `rev`, or the asset folder `dir`) is copied to
/// `/var/tmp/pgimg-build/` (with `keep_git`, as a git checkout with `.git`),
/// then the `make` entries run in order, then the
/// `build` packages are compiled, all in that folder with the host's Go
/// caches bound in. `install` copies built files to their destinations (mode
/// 0755) and the folder is removed, also when the build failed.
///
/// GOFLAGS is left to Go's default, `-mod=readonly`: go.sum verifies every
/// module. On a recording target nothing is built, so each destination gets
/// an empty placeholder with the final mode and recipe tests can check what
/// would be installed.
pub fn go_build(ctx: &Ctx, loc: &Loc, opts: GoOpts) -> Result<Vec<String>> {
    let source = Source::from_options(opts.source)?;
    let make: Vec<Vec<String>> = match &opts.make {
        Some(m) => string_list(m, "make")?
            .iter()
            .map(|e| {
                let argv: Vec<String> = e.split_whitespace().map(str::to_string).collect();
                if argv.is_empty() {
                    Err(Error::invalid("make: an entry is empty"))
                } else {
                    Ok(argv)
                }
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };
    let build = opts.build.unwrap_or_default();
    if make.is_empty() && build.is_empty() {
        return Err(Error::invalid(
            "nothing to do: give `make` targets and/or `build` packages",
        ));
    }
    for (out, pkg) in &build {
        build_relative("build", out)?;
        if pkg.is_empty() || pkg.starts_with('-') {
            return Err(Error::invalid(format!(
                "build: `{pkg}` is not a Go package"
            )));
        }
    }
    let install = opts.install.unwrap_or_default();
    for (built, dest) in &install {
        build_relative("install", built)?;
        image_path(dest)?;
    }
    let env = go_env(opts.env.unwrap_or_default())?;

    with_build_dir(ctx, loc, &source, |dir| {
        let go = |argv: Vec<String>| -> Command {
            let mut c = command(argv)
                .cwd(dir)
                .cache("go-build", GOCACHE)
                .cache("go-mod", GOMODCACHE);
            c.env = env.clone();
            c
        };
        for argv in &make {
            ctx.run(
                loc,
                go(std::iter::once("make".to_string())
                    .chain(argv.iter().cloned())
                    .collect()),
            )?;
        }
        for (out, pkg) in &build {
            let argv = ["go", "build", "-trimpath", "-o", out, pkg];
            ctx.run(loc, go(argv.iter().map(|s| s.to_string()).collect()))?;
        }
        let mut installed = Vec::new();
        for (built, dest) in &install {
            let src = format!("{dir}/{built}");
            // The image's own install(1): one code path, which the fake root answers too.
            ctx.run(loc, command(["install", "-D", "-m", "0755", &src, dest]))
                .map_err(|e| {
                    Error::invalid(format!("install: the build did not produce `{built}`? {e}"))
                })?;
            installed.push(dest.clone());
        }
        Ok(installed)
    })
}

rhai_fns! { pub(crate) fn register;
    /// Builds a Go source inside the image with the host's Go module and build caches.
    /// Options: `git` + `rev` (full commit id) or `dir` (asset folder); `keep_git` (stage
    /// `git` as a checkout with `.git`, for Makefiles that run git); `make` (array of
    /// `make` invocations, e.g. `["deps", "pg_build"]`); `build` (map output → package,
    /// e.g. `#{ "bin/tool": "./cmd/tool" }`); `env` (map; `GOPROXY` is `off` unless set here);
    /// `install` (map built file → destination, installed with mode 0755).
    /// Returns the installed paths. The build folder is removed afterwards.
    action go_build(opts: Map) |c, loc| go_build(c, loc, flat_options(opts)?).map(to_array);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::recorded_inputs;
    use crate::run::scripted::Scripted;
    use crate::target::{CommandError, Output, Target};
    use crate::FakeTarget;
    use std::sync::{Arc, Mutex};

    /// A target whose fetcher hands over `src` for `URL`, where `install` runs
    /// as coreutils' would and every other command goes to `build` with its
    /// working folder: the source is staged there while the build runs.
    fn staged_source(
        src: &std::path::Path,
        build: impl Fn(&crate::root::ImageRoot, &Command, &str) -> Result<Output, CommandError>
            + Send
            + Sync
            + 'static,
    ) -> Arc<Scripted> {
        let mut scripted = Scripted::new(move |root, cmd| {
            if cmd.argv[0] == "install" {
                return crate::run::scripted::install(root, cmd);
            }
            build(root, cmd, cmd.cwd.as_deref().unwrap())
        });
        let fixtures = BTreeMap::from([(URL.to_string(), src.to_path_buf())]);
        scripted.fake = FakeTarget::with_fixtures(fixtures);
        Arc::new(scripted)
    }

    const REV: &str = "cf1ce0f5b69048e31d740b508a79d8294707e339";
    const URL: &str = "https://github.com/wal-g/wal-g.git";
    const DIR: &str = "/var/tmp/pgimg-build/wal-g-cf1ce0f5b690";

    fn pinned() -> SourceOpts {
        SourceOpts {
            git: Some(URL.into()),
            rev: Some(REV.into()),
            ..SourceOpts::default()
        }
    }

    fn walg() -> GoOpts {
        GoOpts {
            source: pinned(),
            make: Some(Dynamic::from(to_array([
                "deps".to_string(),
                "pg_build".into(),
                "build_client".into(),
            ]))),
            install: Some(BTreeMap::from([
                ("main/pg/wal-g".to_string(), "/usr/bin/wal-g".to_string()),
                (
                    "cmd/daemonclient/walg-daemon-client".into(),
                    "/usr/bin/walg-daemon-client".into(),
                ),
            ])),
            ..GoOpts::default()
        }
    }

    fn loc() -> Loc {
        Loc::new("recipes/common/packages.rhai", 40, 5)
    }

    #[test]
    fn plans_make_targets_with_caches_and_placeholders_on_the_fake() {
        let t = Arc::new(FakeTarget::ubuntu());
        let c = Ctx::new(t.clone());
        let got = go_build(&c, &loc(), walg()).unwrap();
        assert_eq!(got, ["/usr/bin/walg-daemon-client", "/usr/bin/wal-g"]);
        let cmds = t.commands();
        let shown: Vec<String> = cmds.iter().map(ToString::to_string).collect();
        let env = "GOCACHE=/root/.cache/go-build GOMODCACHE=/root/go/pkg/mod GOPATH=/root/go GOPROXY=off GOTOOLCHAIN=local";
        let makes =
            ["deps", "pg_build", "build_client"].map(|m| format!("cd {DIR} && {env} make {m}"));
        assert_eq!(shown[..3], makes);
        assert_eq!(
            shown[3..],
            [
                format!("install -D -m 0755 {DIR}/cmd/daemonclient/walg-daemon-client /usr/bin/walg-daemon-client"),
                format!("install -D -m 0755 {DIR}/main/pg/wal-g /usr/bin/wal-g"),
            ]
        );
        for c in &cmds[..3] {
            assert_eq!(
                c.caches,
                BTreeMap::from([
                    ("go-build".into(), GOCACHE.into()),
                    ("go-mod".into(), GOMODCACHE.into())
                ])
            );
            assert_eq!(c.label, "recipes/common/packages.rhai:40:5");
            assert!(c.timeout.is_some());
        }
        assert_eq!(t.root().stat("/usr/bin/wal-g").unwrap().mode, 0o755);
        assert_eq!(t.root().read("/usr/bin/wal-g").unwrap(), b"");
        assert!(!t.root().exists(DIR));
        assert_eq!(
            recorded_inputs(&c)[0],
            ("git".into(), URL.into(), REV.into())
        );
    }

    #[test]
    fn builds_from_fixture_source_and_installs_the_real_output() {
        // The source tree as the fetcher hands it over.
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("go.mod"), "module example.org/tool\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let t = staged_source(src.path(), move |root, cmd, cwd| {
            // The source is in place while the build runs.
            s2.lock()
                .unwrap()
                .push(root.read_string(format!("{cwd}/go.mod")).unwrap());
            if cmd.argv[..2] == ["go", "build"] {
                root.write(
                    format!("{cwd}/{}", cmd.argv[4]),
                    b"\x7fELF",
                    crate::root::Attrs::mode(0o644),
                )
                .unwrap();
            }
            Ok(Output::default())
        });
        let c = Ctx::new(t.clone());
        let opts = GoOpts {
            source: pinned(),
            build: Some(BTreeMap::from([(
                "bin/tool".to_string(),
                "./cmd/tool".to_string(),
            )])),
            env: Some(BTreeMap::from([(
                "GOPROXY".to_string(),
                "http://127.0.0.1:3000".to_string(),
            )])),
            install: Some(BTreeMap::from([(
                "bin/tool".to_string(),
                "/usr/local/bin/tool".to_string(),
            )])),
            ..GoOpts::default()
        };
        assert_eq!(go_build(&c, &loc(), opts).unwrap(), ["/usr/local/bin/tool"]);
        assert_eq!(t.root().read("/usr/local/bin/tool").unwrap(), b"\x7fELF");
        assert_eq!(t.root().stat("/usr/local/bin/tool").unwrap().mode, 0o755);
        let cmd = &t.commands()[0];
        assert_eq!(t.commands().len(), 2, "go build, install");
        assert_eq!(
            cmd.argv,
            ["go", "build", "-trimpath", "-o", "bin/tool", "./cmd/tool"]
        );
        assert_eq!(cmd.env["GOPROXY"], "http://127.0.0.1:3000");
        assert_eq!(*seen.lock().unwrap(), ["module example.org/tool\n"]);
        assert!(!t.root().exists(DIR));
    }

    #[test]
    fn keep_git_puts_the_checkout_with_its_git_dir_where_make_runs() {
        // The checkout as the fetcher hands it over (what WAL-G's Makefile reads).
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(src.path().join(".git/refs/tags")).unwrap();
        std::fs::write(src.path().join(".git/HEAD"), format!("{REV}\n")).unwrap();
        std::fs::write(src.path().join(".git/refs/tags/v3.0.3"), format!("{REV}\n")).unwrap();
        std::fs::write(src.path().join("Makefile"), "deps:\n").unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let t = staged_source(src.path(), move |root, cmd, cwd| {
            let head = root.read_string(format!("{cwd}/.git/HEAD")).unwrap();
            let tag = root.exists(format!("{cwd}/.git/refs/tags/v3.0.3"));
            s2.lock()
                .unwrap()
                .push(format!("{}: {} {tag}", cmd.argv.join(" "), head.trim()));
            Ok(crate::run::scripted::stdout(&head))
        });
        let c = Ctx::new(t.clone());
        let opts = GoOpts {
            source: SourceOpts {
                keep_git: Some(true),
                ..pinned()
            },
            make: Some(Dynamic::from("deps")),
            install: None,
            ..walg()
        };
        go_build(&c, &loc(), opts).unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            [
                format!("git rev-parse --verify HEAD: {REV} true"),
                format!("make deps: {REV} true"),
            ]
        );
        assert!(t.commands().iter().all(|c| c.cwd.as_deref() == Some(DIR)));
        assert!(!t.root().exists(DIR));

        // Without `keep_git` the same fixture is a plain source: no check runs.
        let opts = GoOpts {
            make: Some(Dynamic::from("deps")),
            install: None,
            ..walg()
        };
        go_build(&c, &loc(), opts).unwrap();
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn a_failed_make_or_a_missing_output_is_an_error_and_cleans_up() {
        let t = Arc::new(Scripted::new(|root, cmd| {
            if cmd.argv.get(1).map(String::as_str) == Some("pg_build") {
                return Err(CommandError::Failed {
                    command: cmd.to_string(),
                    status: "exit status: 2".into(),
                    stderr_tail: "undefined: foo".into(),
                });
            }
            if cmd.argv[0] == "install" {
                return crate::run::scripted::install(root, cmd);
            }
            Ok(Output::default())
        }));
        let c = Ctx::new(t.clone());
        let e = go_build(&c, &loc(), walg()).unwrap_err().to_string();
        assert!(
            e.contains("make pg_build` exited with exit status: 2; stderr:\nundefined: foo"),
            "{e}"
        );
        assert!(!t.root().exists(DIR));
        assert_eq!(t.commands().len(), 2);

        let opts = GoOpts {
            make: Some(Dynamic::from("deps")),
            ..walg()
        };
        let e = go_build(&c, &loc(), opts).unwrap_err().to_string();
        assert!(
            e.contains("the build did not produce `cmd/daemonclient/walg-daemon-client`"),
            "{e}"
        );
        assert!(!t.root().exists("/usr/bin/walg-daemon-client"));
        assert!(!t.root().exists(DIR));
    }

    #[test]
    fn bad_options() {
        let c = Ctx::new(Arc::new(FakeTarget::ubuntu()));
        let cases = [
            (
                GoOpts {
                    make: None,
                    ..walg()
                },
                "nothing to do",
            ),
            (
                GoOpts {
                    source: SourceOpts {
                        rev: Some("main".into()),
                        ..pinned()
                    },
                    ..walg()
                },
                "not a full git commit id",
            ),
            (
                GoOpts {
                    make: Some(Dynamic::from(to_array(["  ".to_string()]))),
                    ..walg()
                },
                "make: an entry is empty",
            ),
            (
                GoOpts {
                    install: Some(BTreeMap::from([(
                        "../x".to_string(),
                        "/usr/bin/x".to_string(),
                    )])),
                    ..walg()
                },
                "without `..`",
            ),
            (
                GoOpts {
                    install: Some(BTreeMap::from([("x".to_string(), "usr/bin/x".to_string())])),
                    ..walg()
                },
                "must be an absolute path",
            ),
            (
                GoOpts {
                    env: Some(BTreeMap::from([(
                        "GOCACHE".to_string(),
                        "/tmp".to_string(),
                    )])),
                    ..walg()
                },
                "is fixed",
            ),
            (
                GoOpts {
                    build: Some(BTreeMap::from([("/abs".to_string(), "./x".to_string())])),
                    ..walg()
                },
                "relative to the source",
            ),
        ];
        for (o, want) in cases {
            let e = go_build(&c, &loc(), o).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    /// The listed keys are the fields, and an unknown one is refused with
    /// the list.
    #[test]
    fn the_listed_keys_are_the_fields() {
        crate::api::assert_keys_are_the_fields::<GoOpts>();
        let mut map: rhai::Map = GoOpts::KEYS
            .iter()
            .map(|k| ((*k).into(), Dynamic::UNIT))
            .collect();
        map.insert("instal".into(), Dynamic::UNIT);
        let e = flat_options::<GoOpts>(map).unwrap_err().to_string();
        assert!(
            e.contains("unknown field `instal`, expected one of `git`, `rev`"),
            "{e}"
        );
    }
}
