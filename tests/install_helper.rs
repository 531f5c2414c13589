//! `install-postgresql-packages` (recipes/assets/bin/), the first-boot helper
//! the recipes install: run with `sh` against a temporary package cache, with
//! stand-ins for `apt-get` (records its arguments) and `id` on `PATH`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("recipes/assets/bin/install-postgresql-packages")
}

/// A package cache with PostgreSQL 16 and 17 sets, an empty 18 folder, a
/// common set sharing one file with 16, and stub commands.
struct Cache {
    dir: tempfile::TempDir,
}

impl Cache {
    fn new() -> Cache {
        let dir = tempfile::tempdir().unwrap();
        let b = Cache { dir };
        for (set, debs) in [
            (
                "16",
                &[
                    "postgresql-16_16.4-1.pgdg22.04+1_amd64.deb",
                    "libpq5_17.0-1_amd64.deb",
                ][..],
            ),
            ("17", &["postgresql-17_17.0-1.pgdg22.04+1_amd64.deb"][..]),
            ("18", &[][..]),
            (
                "common",
                &["pgbouncer_1.23.1-1_amd64.deb", "libpq5_17.0-1_amd64.deb"][..],
            ),
        ] {
            std::fs::create_dir_all(b.cache().join(set)).unwrap();
            for d in debs {
                std::fs::write(b.cache().join(set).join(d), d).unwrap();
            }
        }
        std::fs::create_dir(b.cache().join("partial")).unwrap();
        b.stub("apt-get", "printf '%s\\n' \"DEBIAN_FRONTEND=$DEBIAN_FRONTEND\" \"$@\" >\"$STUB_LOG\"; exit ${APT_STATUS:-0}");
        b.stub("id", "echo ${STUB_UID:-0}");
        b
    }

    fn cache(&self) -> PathBuf {
        self.dir.path().join("cache")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("apt-get.log")
    }

    fn stub(&self, name: &str, body: &str) {
        let bin = self.dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn run(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let path = format!("{}:/usr/bin:/bin", self.dir.path().join("bin").display());
        let mut c = Command::new("sh");
        c.arg(script())
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("POSTGRESQL_PACKAGES_DIR", self.cache())
            .env("STUB_LOG", self.log());
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    }

    fn apt_args(&self) -> Option<Vec<String>> {
        std::fs::read_to_string(self.log())
            .ok()
            .map(|s| s.lines().map(str::to_string).collect())
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts the helper exited with `code` and said `said` on stderr.
fn assert_exit(o: &Output, code: i32, said: &str) {
    assert_eq!(o.status.code(), Some(code), "{}", stderr(o));
    assert!(stderr(o).contains(said), "{}", stderr(o));
}

#[test]
fn the_script_is_executable_posix_sh() {
    let mode = std::fs::metadata(script()).unwrap().permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "{mode:o}");
    let text = std::fs::read_to_string(script()).unwrap();
    assert!(text.starts_with("#!/bin/sh\n"));
    let check = Command::new("sh").arg("-n").arg(script()).output().unwrap();
    assert!(check.status.success(), "{}", stderr(&check));
}

#[test]
fn installs_one_version_and_the_common_set_offline() {
    let b = Cache::new();
    let o = b.run(&["16"], &[]);
    assert_exit(&o, 0, "PostgreSQL 16 installed");
    let c = b.cache().display().to_string();
    assert_eq!(
        b.apt_args().unwrap(),
        [
            "DEBIAN_FRONTEND=noninteractive".to_string(),
            "install".into(),
            "--yes".into(),
            "--no-install-recommends".into(),
            "-o".into(),
            "Dir::Etc::SourceList=/dev/null".into(),
            "-o".into(),
            "Dir::Etc::SourceParts=/dev/null".into(),
            "-o".into(),
            "Dpkg::Options::=--force-confdef".into(),
            "-o".into(),
            "Dpkg::Options::=--force-confold".into(),
            // The version's files first; common's copy of libpq5 is left out.
            format!("{c}/16/libpq5_17.0-1_amd64.deb"),
            format!("{c}/16/postgresql-16_16.4-1.pgdg22.04+1_amd64.deb"),
            format!("{c}/common/pgbouncer_1.23.1-1_amd64.deb"),
        ]
    );
}

#[test]
fn usage_errors_exit_2_and_list_the_versions_there() {
    let b = Cache::new();
    let c = b.cache().display().to_string();
    let cases: Vec<(Vec<&str>, String)> = vec![
        (vec![], "usage: install-postgresql-packages VERSION".into()),
        (vec!["16", "17"], "usage: install-postgresql-packages VERSION".into()),
        (
            vec!["16; rm -rf /"],
            "'16; rm -rf /' is not a PostgreSQL major version (a number such as 16); available: 16 17".into(),
        ),
        (vec!["016"], "'016' is not a PostgreSQL major version".into()),
        (vec![""], "'' is not a PostgreSQL major version".into()),
        (vec!["../16"], "'../16' is not a PostgreSQL major version".into()),
        (vec!["15"], format!("no packages for PostgreSQL 15 in {c}; available: 16 17")),
    ];
    for (args, want) in cases {
        let o = b.run(&args, &[]);
        assert_exit(&o, 2, &want);
        assert!(b.apt_args().is_none(), "{args:?}: apt-get ran");
    }
    let o = b.run(&["--help"], &[]);
    assert_exit(&o, 0, "Available versions: 16 17");
}

#[test]
fn failures_exit_1_with_the_reason() {
    let b = Cache::new();
    let o = b.run(&["18"], &[]);
    assert_exit(&o, 1, "/18 holds no .deb files");
    let o = b.run(&["16"], &[("STUB_UID", "1000")]);
    assert_exit(&o, 1, "must run as root");
    assert!(b.apt_args().is_none(), "apt-get ran as non-root");
    let o = b.run(&["17"], &[("APT_STATUS", "100")]);
    assert_exit(
        &o,
        1,
        "installing PostgreSQL 17 failed (see apt-get's message above)",
    );
}

#[test]
fn an_empty_cache_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new("sh")
        .arg(script())
        .arg("16")
        .env("POSTGRESQL_PACKAGES_DIR", dir.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).ends_with("; available: none\n"),
        "{}",
        stderr(&o)
    );
}
