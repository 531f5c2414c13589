//! `pgxs_build`: builds and installs a PostgreSQL extension with PGXS for each PostgreSQL major version.

use rhai::{Dynamic, Map};
use serde::{Deserialize, Serialize};

use crate::api::{flat_options, string_list, FlatOptions};
use crate::ctx::{Ctx, Loc};
use crate::error::{Error, Result};
use crate::rhai_fns;
use crate::run::command;
use crate::source::{with_build_dir, Source, SourceOpts};

/// Options of `pgxs_build`.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PgxsOpts {
    /// `git` + `rev`, or `dir`; `keep_git`.
    #[serde(flatten)]
    pub source: SourceOpts,
    /// PostgreSQL majors: `[16, 17]`, `["16", "17"]` or `"16,17"`.
    pub pg_versions: Option<Dynamic>,
    /// Extra `make` arguments: an array, or a string split on whitespace.
    pub make_args: Option<Dynamic>,
}

impl FlatOptions for PgxsOpts {
    const KEYS: &'static [&'static str] =
        &["git", "rev", "dir", "keep_git", "pg_versions", "make_args"];
}

/// PostgreSQL major versions from an int, a string (`"16,17"`) or an array of either.
pub fn pg_versions(value: &Dynamic) -> Result<Vec<String>> {
    let items: Vec<Dynamic> = match value.clone().try_cast::<rhai::Array>() {
        Some(a) => a,
        None => vec![value.clone()],
    };
    let mut out: Vec<String> = Vec::new();
    for item in items {
        let parts: Vec<String> = if let Ok(n) = item.as_int() {
            vec![n.to_string()]
        } else if let Some(s) = item.clone().try_cast::<rhai::ImmutableString>() {
            s.split(',').map(|p| p.trim().to_string()).collect()
        } else {
            return Err(Error::invalid(format!(
                "pg_versions: expected versions like 16 or \"16,17\", found {}",
                item.type_name()
            )));
        };
        for v in parts {
            let ok = !v.is_empty()
                && v.len() <= 3
                && v.bytes().all(|b| b.is_ascii_digit())
                && !v.starts_with('0');
            if !ok {
                return Err(Error::invalid(format!(
                    "pg_versions: `{v}` is not a PostgreSQL major version"
                )));
            }
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    if out.is_empty() {
        return Err(Error::invalid("pg_versions: no version given"));
    }
    Ok(out)
}

/// The `pg_config` of PostgreSQL `version` as the postgresql-server-dev packages install it.
pub fn pg_config(version: &str) -> String {
    format!("/usr/lib/postgresql/{version}/bin/pg_config")
}

/// Builds the extension in `git`/`dir` once per PostgreSQL major: `make`,
/// `make install`, `make clean`, each with `USE_PGXS=1` and that version's
/// `PG_CONFIG`. A failure names the version. The build folder is removed
/// afterwards, also on failure.
pub fn pgxs_build(ctx: &Ctx, loc: &Loc, opts: PgxsOpts) -> Result<()> {
    let source = Source::from_options(opts.source)?;
    let versions = pg_versions(
        &opts
            .pg_versions
            .ok_or_else(|| Error::invalid("option `pg_versions` is required"))?,
    )?;
    let make_args: Vec<String> = match &opts.make_args {
        Some(a) if a.is_string() => a
            .clone()
            .cast::<rhai::ImmutableString>()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        Some(a) => string_list(a, "make_args")?,
        None => Vec::new(),
    };
    if let Some(a) = make_args
        .iter()
        .find(|a| a.starts_with("PG_CONFIG=") || a.starts_with("USE_PGXS="))
    {
        return Err(Error::invalid(format!(
            "make_args: `{a}` is set by pgxs_build for each version"
        )));
    }

    with_build_dir(ctx, loc, &source, |dir| {
        for v in &versions {
            let per_version = |e: Error| Error::invalid(format!("PostgreSQL {v}: {e}"));
            let config = pg_config(v);
            if !ctx.target.root().exists(&config) {
                return Err(per_version(Error::invalid(format!(
                    "{config} is not in the image; install postgresql-server-dev-{v} first"
                ))));
            }
            let base: Vec<String> = [
                "make".to_string(),
                "USE_PGXS=1".into(),
                format!("PG_CONFIG={config}"),
            ]
            .into_iter()
            .chain(make_args.iter().cloned())
            .collect();
            for step in [None, Some("install"), Some("clean")] {
                let argv = base.iter().cloned().chain(step.map(str::to_string));
                ctx.run(loc, command(argv).cwd(dir)).map_err(per_version)?;
            }
        }
        Ok(())
    })
}

rhai_fns! { pub(crate) fn register;
    /// Builds and installs a PostgreSQL extension for each major in `pg_versions`:
    /// `make`, `make install`, `make clean` with `USE_PGXS=1 PG_CONFIG=/usr/lib/postgresql/<v>/bin/pg_config`.
    /// Options: `git` + `rev` (full commit id) or `dir` (asset folder); `keep_git` (stage
    /// `git` as a checkout with `.git`, for Makefiles that run git); `pg_versions`
    /// (`[16, 17]` or `"16,17"`); `make_args` (array or string). A failure names the version.
    action pgxs_build(opts: Map) |c, loc| pgxs_build(c, loc, flat_options(opts)?);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::root::Attrs;
    use crate::run::scripted::Scripted;
    use crate::target::{CommandError, Output, Target};
    use crate::FakeTarget;
    use std::sync::Arc;

    const REV: &str = "4bd044aa80bccba7c6021ddef266ef75a45a27a2";
    const DIR: &str = "/var/tmp/pgimg-build/pguint-4bd044aa80bc";

    fn pguint(versions: Dynamic) -> PgxsOpts {
        PgxsOpts {
            source: SourceOpts {
                git: Some("https://github.com/petere/pguint.git".into()),
                rev: Some(REV.into()),
                ..SourceOpts::default()
            },
            pg_versions: Some(versions),
            ..PgxsOpts::default()
        }
    }

    fn loc() -> Loc {
        Loc::new("r.rhai", 7, 1)
    }

    #[test]
    fn versions_in_every_shape() {
        let arr = |v: Vec<Dynamic>| Dynamic::from(v);
        let cases: Vec<(Dynamic, Result<Vec<&str>, &str>)> = vec![
            (Dynamic::from("16,17, 18"), Ok(vec!["16", "17", "18"])),
            (Dynamic::from(16_i64), Ok(vec!["16"])),
            (
                arr(vec![
                    Dynamic::from(16_i64),
                    Dynamic::from("17"),
                    Dynamic::from(16_i64),
                ]),
                Ok(vec!["16", "17"]),
            ),
            (Dynamic::from("16,,17"), Err("`` is not a PostgreSQL major")),
            (
                Dynamic::from("16.2"),
                Err("`16.2` is not a PostgreSQL major"),
            ),
            (Dynamic::from("../16"), Err("is not a PostgreSQL major")),
            (arr(vec![]), Err("no version given")),
            (Dynamic::from(1.5_f64), Err("found f64")),
        ];
        for (value, want) in cases {
            match (pg_versions(&value), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, want),
                (Err(e), Err(want)) => assert!(e.to_string().contains(want), "{e}"),
                (got, want) => panic!("{value:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn builds_installs_and_cleans_per_version() {
        let t = Arc::new(FakeTarget::ubuntu());
        let c = Ctx::new(t.clone());
        // The fake answers apt as the image would: the dev package brings pg_config.
        crate::apt::apt_install(
            &c,
            &loc(),
            &[
                "postgresql-server-dev-16".into(),
                "postgresql-server-dev-17".into(),
            ],
            &Default::default(),
        )
        .unwrap();
        let skip = t.commands().len();
        let opts = PgxsOpts {
            make_args: Some(Dynamic::from("with_llvm=no")),
            ..pguint(Dynamic::from("16,17"))
        };
        pgxs_build(&c, &loc(), opts).unwrap();
        let shown: Vec<String> = t.commands()[skip..]
            .iter()
            .map(ToString::to_string)
            .collect();
        let mut want = Vec::new();
        for v in ["16", "17"] {
            for step in ["", " install", " clean"] {
                want.push(format!(
                    "cd {DIR} && make USE_PGXS=1 PG_CONFIG=/usr/lib/postgresql/{v}/bin/pg_config with_llvm=no{step}"
                ));
            }
        }
        assert_eq!(shown, want);
        assert!(t.commands()[skip..]
            .iter()
            .all(|c| c.label == "r.rhai:7:1" && c.timeout.is_some()));
        assert!(!t.root().exists(DIR));
        assert_eq!(c.journal.lock().unwrap().inputs[0].pin, REV);
    }

    #[test]
    fn keep_git_checks_the_checkout_before_the_first_make() {
        let src = tempfile::tempdir().unwrap();
        std::fs::create_dir(src.path().join(".git")).unwrap();
        std::fs::write(src.path().join(".git/HEAD"), format!("{REV}\n")).unwrap();
        let url = "https://github.com/petere/pguint.git";
        let fixtures =
            std::collections::BTreeMap::from([(url.to_string(), src.path().to_path_buf())]);
        let t = Arc::new(
            FakeTarget::new(
                &crate::FakeOs::default(),
                Box::new(crate::fetch::RecordingFetcher::new(fixtures)),
            )
            .unwrap(),
        );
        let c = Ctx::new(t.clone());
        t.root()
            .write(
                "/usr/lib/postgresql/16/bin/pg_config",
                b"",
                crate::root::Attrs::mode(0o755),
            )
            .unwrap();
        let mut opts = pguint(Dynamic::from(16_i64));
        opts.source.keep_git = Some(true);
        pgxs_build(&c, &loc(), opts).unwrap();
        let shown: Vec<String> = t.commands().iter().map(ToString::to_string).collect();
        assert_eq!(shown[0], format!("cd {DIR} && git rev-parse --verify HEAD"));
        assert_eq!(shown.len(), 4);
        assert!(shown[1].starts_with(&format!("cd {DIR} && make USE_PGXS=1")));

        let o = PgxsOpts {
            source: SourceOpts {
                dir: Some("pguint".into()),
                keep_git: Some(true),
                ..SourceOpts::default()
            },
            ..pguint(Dynamic::from(16_i64))
        };
        let e = pgxs_build(&c, &loc(), o).unwrap_err();
        assert_eq!(e.to_string(), "`keep_git` only applies to `git`");
    }

    #[test]
    fn a_failure_names_the_version_and_cleans_up() {
        let t = Arc::new(Scripted::new(|_, cmd| {
            if cmd.argv[2].contains("/17/") && cmd.argv.len() == 3 {
                return Err(CommandError::Failed {
                    command: cmd.to_string(),
                    status: "exit status: 2".into(),
                    stderr_tail: "uint.c:1: error".into(),
                });
            }
            Ok(Output::default())
        }));
        for v in ["16", "17"] {
            t.root()
                .write(pg_config(v), b"#!/bin/sh\n", Attrs::mode(0o755))
                .unwrap();
        }
        let c = Ctx::new(t.clone());
        let e = pgxs_build(&c, &loc(), pguint(Dynamic::from("16,17,18")))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(
                "PostgreSQL 17: `cd /var/tmp/pgimg-build/pguint-4bd044aa80bc && make USE_PGXS=1"
            ),
            "{e}"
        );
        assert!(
            e.ends_with("exited with exit status: 2; stderr:\nuint.c:1: error"),
            "{e}"
        );
        assert_eq!(t.commands().len(), 4);
        assert!(!t.root().exists(DIR));
    }

    #[test]
    fn a_missing_pg_config_names_the_version_and_the_package() {
        let t = Arc::new(Scripted::new(|_, _| Ok(Output::default())));
        let c = Ctx::new(t.clone());
        let e = pgxs_build(&c, &loc(), pguint(Dynamic::from(18_i64)))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "PostgreSQL 18: /usr/lib/postgresql/18/bin/pg_config is not in the image; install postgresql-server-dev-18 first"
        );
        assert!(t.commands().is_empty());
    }

    #[test]
    fn bad_options() {
        let c = Ctx::new(Arc::new(FakeTarget::ubuntu()));
        let e = pgxs_build(
            &c,
            &loc(),
            PgxsOpts {
                pg_versions: None,
                ..pguint(Dynamic::UNIT)
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("`pg_versions` is required"), "{e}");
        let o = PgxsOpts {
            make_args: Some(Dynamic::from("PG_CONFIG=/x")),
            ..pguint(Dynamic::from(16_i64))
        };
        assert!(pgxs_build(&c, &loc(), o)
            .unwrap_err()
            .to_string()
            .contains("is set by pgxs_build"));
        let o = PgxsOpts {
            source: SourceOpts::default(),
            ..pguint(Dynamic::from(16_i64))
        };
        assert!(pgxs_build(&c, &loc(), o)
            .unwrap_err()
            .to_string()
            .contains("give the source"));
    }

    /// The shared source options are flattened into the map, and a key
    /// neither struct knows is still refused, naming it.
    #[test]
    fn source_options_flatten_and_unknown_keys_are_still_refused() {
        let mut map = rhai::Map::new();
        map.insert("git".into(), Dynamic::from("https://h/x.git"));
        map.insert("keep_git".into(), Dynamic::from(true));
        map.insert("pg_versions".into(), Dynamic::from(16_i64));
        let o: PgxsOpts = crate::api::options(map.clone()).unwrap();
        assert_eq!(o.source.git.as_deref(), Some("https://h/x.git"));
        assert_eq!(o.source.keep_git, Some(true));
        assert!(o.pg_versions.is_some());
        map.insert("gti".into(), Dynamic::from("x"));
        let e = crate::api::options::<PgxsOpts>(map.clone())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `gti`"), "{e}");
        // What recipes go through lists the valid keys, as for other options.
        let e = crate::api::flat_options::<PgxsOpts>(map)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown field `gti`, expected one of `git`, `rev`, `dir`, `keep_git`, `pg_versions`, `make_args`"),
            "{e}"
        );
    }

    /// serde decodes flattened keys from a buffer where their path is lost;
    /// the error still names the key.
    #[test]
    fn a_value_of_the_wrong_type_names_its_key_also_when_flattened() {
        for (key, value, want) in [
            (
                "rev",
                Dynamic::from(5_i64),
                "options: rev: invalid type: integer `5`, expected a string",
            ),
            (
                "keep_git",
                Dynamic::from("yes"),
                "options: keep_git: invalid type: string \"yes\", expected a boolean",
            ),
            (
                "dir",
                Dynamic::from(1_i64),
                "options: dir: invalid type: integer `1`, expected a string",
            ),
        ] {
            let mut map = rhai::Map::new();
            map.insert("git".into(), Dynamic::from("https://h/x.git"));
            map.insert(key.into(), value);
            let e = crate::api::flat_options::<PgxsOpts>(map)
                .unwrap_err()
                .to_string();
            assert_eq!(e, want);
        }
    }

    #[test]
    fn the_listed_keys_are_the_fields() {
        crate::api::assert_keys_are_the_fields::<PgxsOpts>();
    }
}
