//! Package primitives running the image's own apt: `apt_update`, `apt_install`, `apt_purge`, `apt_download`.

use std::collections::{BTreeMap, BTreeSet};

use rhai::Dynamic;
use serde::Deserialize;

use crate::api::{options, string_list, to_array};
use crate::ctx::{Ctx, Loc};
use crate::error::Result;
use crate::files::image_path;
use crate::register::Str;
use crate::rhai_fns;
use crate::root::Attrs;
use crate::run::command;
use crate::target::Command;

/// The name of the host cache bound at apt's archives folder while `apt_install` runs.
pub const APT_ARCHIVES_CACHE: &str = "apt-archives";
/// apt's archives folder in the image.
pub const APT_ARCHIVES: &str = "/var/cache/apt/archives";

/// Transient mirror hiccups are common enough on CI to retry every download.
const RETRIES: &str = "Acquire::Retries=3";

/// An apt command: non-interactive, and in the C locale because
/// `apt-cache policy` output (`Candidate:`) is parsed and apt translates it.
fn apt(argv: &[&str]) -> Command {
    command(argv.iter().copied())
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C.UTF-8")
}

/// A problem with the package names a recipe passed.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("`{0}` is not a package name (a `.deb` must be an absolute path inside the image)")]
    BadName(String),
    #[error("{path}: no such .deb in the image")]
    MissingDeb { path: String },
    #[error("no package given")]
    Empty,
    #[error(
        "{} not found in the image's apt sources: {} (check the name, add its repository with `apt_repo`, then run `apt_update()`)",
        if .0.len() == 1 { "package" } else { "packages" },
        .0.join(", ")
    )]
    NotFound(Vec<String>),
}

crate::error::invalid_from!(AptError);

/// A package as apt takes it: `name`, `name:arch`, `name=version`, `name/release`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Spec {
    /// `name` or `name:arch`, as `apt-cache policy` takes it.
    query: String,
    version: Option<String>,
}

fn parse_spec(s: &str) -> Result<Spec, AptError> {
    let ok_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "+-.:=/~_".contains(c));
    // A leading `-` would be read as an option by apt-get.
    if s.is_empty() || !ok_chars || !s.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(AptError::BadName(s.to_string()));
    }
    let (rest, version) = match s.split_once('=') {
        Some((n, v)) if !v.is_empty() => (n, Some(v.to_string())),
        Some(_) => return Err(AptError::BadName(s.to_string())),
        None => (s, None),
    };
    let query = rest.split_once('/').map_or(rest, |(n, _)| n).to_string();
    if query.is_empty() || query.contains('/') {
        return Err(AptError::BadName(s.to_string()));
    }
    Ok(Spec { query, version })
}

/// Package names, or in-image `.deb` paths when `debs` is allowed.
fn package_args(ctx: &Ctx, pkgs: &[String], debs: bool) -> Result<Vec<String>> {
    if pkgs.is_empty() {
        return Err(AptError::Empty.into());
    }
    for p in pkgs {
        if debs && p.ends_with(".deb") {
            let path = image_path(p).map_err(|_| AptError::BadName(p.clone()))?;
            if !ctx.target.root().exists(path) {
                return Err(AptError::MissingDeb { path: p.clone() }.into());
            }
        } else {
            parse_spec(p)?;
        }
    }
    Ok(pkgs.to_vec())
}

/// `apt-get update`, failing on any repository error: with `--error-on=any` a
/// bad signature or an unreachable source is an error, not a warning.
pub fn apt_update(ctx: &Ctx, loc: &Loc) -> Result<()> {
    ctx.run(
        loc,
        apt(&["apt-get", "update", "--error-on=any", "-o", RETRIES]),
    )?;
    Ok(())
}

/// Options of `apt_install`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstallOpts {
    /// Also install recommended packages.
    pub recommends: Option<bool>,
}

/// `apt-get install -y`; packages by name or in-image `.deb` path.
pub fn apt_install(ctx: &Ctx, loc: &Loc, pkgs: &[String], opts: &InstallOpts) -> Result<()> {
    let pkgs = package_args(ctx, pkgs, true)?;
    let mut argv = vec!["apt-get", "install", "-y"];
    if !opts.recommends.unwrap_or(false) {
        argv.push("--no-install-recommends");
    }
    // A configuration file the recipe wrote before installing its package
    // (createcluster.conf before postgresql-common) would make dpkg stop and
    // ask; keep the recipe's version without asking.
    argv.extend([
        "-o",
        RETRIES,
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
    ]);
    argv.extend(pkgs.iter().map(String::as_str));
    let cmd = apt(&argv).cache(APT_ARCHIVES_CACHE, APT_ARCHIVES);
    ctx.run(loc, cmd)?;
    Ok(())
}

/// `apt-get purge -y`.
pub fn apt_purge(ctx: &Ctx, loc: &Loc, pkgs: &[String]) -> Result<()> {
    let pkgs = package_args(ctx, pkgs, false)?;
    let mut argv = vec!["apt-get", "purge", "-y"];
    argv.extend(pkgs.iter().map(String::as_str));
    ctx.run(loc, apt(&argv))?;
    Ok(())
}

/// One package's entry in `apt-cache policy` output.
#[derive(Debug, Default, PartialEq, Eq)]
struct Policy {
    candidate: Option<String>,
    versions: Vec<String>,
}

/// Parses `apt-cache policy` output into package → policy. A package apt
/// cannot locate has no entry at all (apt only says so on stderr).
fn parse_policy(out: &str) -> BTreeMap<String, Policy> {
    let mut map: BTreeMap<String, Policy> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in out.lines() {
        if !line.starts_with(char::is_whitespace) {
            current = line.strip_suffix(':').map(str::to_string);
            if let Some(name) = &current {
                map.entry(name.clone()).or_default();
            }
            continue;
        }
        let Some(entry) = current.as_ref().and_then(|n| map.get_mut(n)) else {
            continue;
        };
        let t = line.trim();
        if let Some(c) = t.strip_prefix("Candidate:") {
            let c = c.trim();
            entry.candidate = (c != "(none)" && !c.is_empty()).then(|| c.to_string());
            continue;
        }
        // Version table rows are ` *** <version> <priority>` or `     <version> <priority>`;
        // the rows under them are `<priority> <origin...>`.
        let tokens: Vec<&str> = t.trim_start_matches("***").split_whitespace().collect();
        if tokens.len() == 2 && tokens[1].parse::<i32>().is_ok() && !t.ends_with(':') {
            entry.versions.push(tokens[0].to_string());
        }
    }
    map
}

/// The packages among `specs` that apt could not download, judged from
/// `apt-cache policy` output: a package must be listed with a candidate (and
/// the pinned version, if any, in its version table).
fn missing(
    policy: &BTreeMap<String, Policy>,
    specs: &[(String, Spec)],
    native_arch: &str,
) -> Vec<String> {
    specs
        .iter()
        .filter(|(_, spec)| {
            let entry = policy.get(&spec.query).or_else(|| {
                // apt prints a native-architecture package without its `:arch`.
                spec.query
                    .split_once(':')
                    .filter(|(_, a)| *a == native_arch)
                    .and_then(|(n, _)| policy.get(n))
            });
            match (entry, &spec.version) {
                (Some(p), None) => p.candidate.is_none(),
                (Some(p), Some(v)) => !p.versions.contains(v),
                (None, _) => true,
            }
        })
        .map(|(raw, _)| raw.clone())
        .collect()
}

fn debs_in(ctx: &Ctx, dir: &str) -> Result<BTreeSet<String>> {
    Ok(ctx
        .target
        .root()
        .read_dir(dir)?
        .into_iter()
        .filter(|n| n.ends_with(".deb"))
        .collect())
}

/// Options of `apt_download`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadOpts {
    /// Also the dependencies the image lacks, resolved by apt against the
    /// image's sources and installed packages (what `apt-get install` would fetch).
    pub dependencies: Option<bool>,
}

/// Downloads the `.deb` files of `pkgs` into `dest` inside the image without
/// installing them; returns the names of the files that appeared there.
///
/// All packages are first looked up with one `apt-cache policy`, so a typo
/// fails naming every package that cannot be found rather than the first.
/// With `dependencies`, apt's own resolver picks what is missing from the
/// image (`apt-get install --download-only` into `dest`); apt's bookkeeping
/// there (`partial/`, `lock`) is removed unless it was there before.
pub fn apt_download(
    ctx: &Ctx,
    loc: &Loc,
    pkgs: &[String],
    dest: &str,
    opts: &DownloadOpts,
) -> Result<Vec<String>> {
    let dest = image_path(dest)?;
    if pkgs.is_empty() {
        return Err(AptError::Empty.into());
    }
    let specs = pkgs
        .iter()
        .map(|p| Ok((p.clone(), parse_spec(p)?)))
        .collect::<Result<Vec<_>, AptError>>()?;
    ctx.target.root().mkdir_all(dest, Attrs::default())?;

    let mut argv = vec!["apt-cache", "policy"];
    let queries: BTreeSet<&str> = specs.iter().map(|(_, s)| s.query.as_str()).collect();
    argv.extend(queries);
    let out = ctx.run(loc, apt(&argv))?;
    let policy = parse_policy(&String::from_utf8_lossy(&out.stdout));
    let not_found = missing(&policy, &specs, &ctx.target.facts().arch);
    if !not_found.is_empty() {
        return Err(AptError::NotFound(not_found).into());
    }

    let root = ctx.target.root();
    let before = debs_in(ctx, dest)?;
    if opts.dependencies == Some(true) {
        let bookkeeping = [format!("{dest}/partial"), format!("{dest}/lock")];
        let had: Vec<bool> = bookkeeping.iter().map(|p| root.kind(p).is_some()).collect();
        let archives = format!("Dir::Cache::archives={dest}");
        let mut argv = vec!["apt-get", "install", "--download-only", "--yes"];
        argv.extend(["--no-install-recommends", "-o", RETRIES, "-o", &archives]);
        argv.extend(pkgs.iter().map(String::as_str));
        ctx.run(loc, apt(&argv))?;
        for (path, had) in bookkeeping.iter().zip(had) {
            if !had {
                root.remove(path)?;
            }
        }
        let after = debs_in(ctx, dest)?;
        return Ok(after.difference(&before).cloned().collect());
    }
    // `apt-get download` writes into its working directory; the unprivileged
    // `_apt` sandbox user it would fetch as cannot write there.
    let mut argv = vec![
        "apt-get",
        "download",
        "-o",
        "APT::Sandbox::User=root",
        "-o",
        RETRIES,
    ];
    argv.extend(pkgs.iter().map(String::as_str));
    ctx.run(loc, apt(&argv).cwd(dest))?;
    let after = debs_in(ctx, dest)?;
    Ok(after.difference(&before).cloned().collect())
}

rhai_fns! { pub(crate) fn register;
    /// Runs `apt-get update` inside the image; any repository error (a bad signature,
    /// an unreachable source) fails the build.
    action apt_update() |c, loc| apt_update(c, loc);
    /// Installs packages (a name or an array; an absolute in-image path to a `.deb` is allowed),
    /// non-interactively, without recommended packages unless `#{ recommends: true }`.
    /// Configuration files already in the image are kept.
    action apt_install(pkgs: Dynamic, [opts]) |c, loc| apt_install(c, loc, &string_list(&pkgs, "pkgs")?, &options(opts)?);
    /// Purges packages (a name or an array) and their configuration files.
    action apt_purge(pkgs: Dynamic) |c, loc| apt_purge(c, loc, &string_list(&pkgs, "pkgs")?);
    /// Downloads the `.deb` files of `pkgs` (a name or an array; `name=version` pins a version)
    /// into the in-image directory `dest` without installing them. Fails naming every package
    /// that cannot be found. Returns the names of the `.deb` files added to `dest`. Options:
    /// `dependencies` (also those the image lacks, as `apt-get install` would fetch them).
    action apt_download(pkgs: Dynamic, dest: Str, [opts]) |c, loc| apt_download(c, loc, &string_list(&pkgs, "pkgs")?, &dest, &options(opts)?).map(to_array);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::fake_ctx;
    use crate::run::scripted::{stdout, Scripted};
    use crate::target::{Output, Target};
    use std::sync::Arc;

    fn loc() -> Loc {
        Loc::new("r.rhai", 3, 1)
    }

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// `apt_download(pkgs, dest)` without options.
    fn download(c: &Ctx, pkgs: &[&str], dest: &str) -> Result<Vec<String>> {
        apt_download(c, &loc(), &names(pkgs), dest, &DownloadOpts::default())
    }

    #[test]
    fn update_install_purge_commands() {
        let (t, c) = fake_ctx();
        let deb = "/var/cache/x/pg_search.deb";
        t.root().write(deb, b"deb", Attrs::default()).unwrap();
        apt_update(&c, &loc()).unwrap();
        apt_install(
            &c,
            &loc(),
            &names(&["postgresql-common", "/var/cache/x/pg_search.deb"]),
            &InstallOpts::default(),
        )
        .unwrap();
        apt_install(
            &c,
            &loc(),
            &names(&["curl"]),
            &InstallOpts {
                recommends: Some(true),
            },
        )
        .unwrap();
        apt_purge(&c, &loc(), &names(&["unattended-upgrades", "snapd"])).unwrap();
        let cmds: Vec<String> = t.commands().iter().map(ToString::to_string).collect();
        let env = "DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8";
        let keep = "-o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold";
        assert_eq!(
            cmds,
            [
                format!("{env} apt-get update --error-on=any -o Acquire::Retries=3"),
                format!("{env} apt-get install -y --no-install-recommends -o Acquire::Retries=3 {keep} postgresql-common /var/cache/x/pg_search.deb"),
                format!("{env} apt-get install -y -o Acquire::Retries=3 {keep} curl"),
                format!("{env} apt-get purge -y unattended-upgrades snapd"),
            ]
        );
        let install = &t.commands()[1];
        assert_eq!(
            install.caches.get("apt-archives").map(String::as_str),
            Some("/var/cache/apt/archives")
        );
        assert_eq!(install.label, "r.rhai:3:1");
        assert!(install.timeout.is_some());
    }

    #[test]
    fn bad_names_are_refused_before_anything_runs() {
        let (t, c) = fake_ctx();
        for bad in [
            "-y",
            "--allow-unauthenticated",
            "two words",
            "pkg.deb",
            "",
            "a;b",
            "x=",
        ] {
            let e = apt_install(&c, &loc(), &names(&[bad]), &InstallOpts::default()).unwrap_err();
            assert!(
                e.to_string().contains("is not a package name"),
                "{bad}: {e}"
            );
        }
        assert!(apt_install(&c, &loc(), &[], &InstallOpts::default())
            .unwrap_err()
            .to_string()
            .contains("no package"));
        assert!(apt_purge(&c, &loc(), &names(&["/x/a.deb"])).is_err());
        assert!(download(&c, &["-o"], "/var/cache/d").is_err());
        assert!(t.commands().is_empty());
    }

    #[test]
    fn a_missing_deb_is_an_error_on_a_real_target() {
        let t = Arc::new(Scripted::new(|_, _| Ok(Output::default())));
        let c = Ctx::new(t.clone());
        let e = apt_install(
            &c,
            &loc(),
            &names(&["/var/cache/p.deb"]),
            &InstallOpts::default(),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "/var/cache/p.deb: no such .deb in the image");
        t.root()
            .write("/var/cache/p.deb", b"!<arch>", Attrs::default())
            .unwrap();
        apt_install(
            &c,
            &loc(),
            &names(&["/var/cache/p.deb"]),
            &InstallOpts::default(),
        )
        .unwrap();
    }

    const POLICY: &str = "\
postgresql-16:
  Installed: (none)
  Candidate: 16.4-1.pgdg22.04+1
  Version table:
     16.4-1.pgdg22.04+1 500
        500 http://apt.postgresql.org/pub/repos/apt jammy-pgdg/main amd64 Packages
     16.3-1.pgdg22.04+1 500
        500 http://apt.postgresql.org/pub/repos/apt jammy-pgdg/main amd64 Packages
bash:
  Installed: 5.1-6ubuntu1
  Candidate: 5.1-6ubuntu1
  Version table:
 *** 5.1-6ubuntu1 500
        500 http://archive.ubuntu.com/ubuntu jammy/main amd64 Packages
        100 /var/lib/dpkg/status
mail-transport-agent:
  Installed: (none)
  Candidate: (none)
  Version table:
libfoo:arm64:
  Installed: (none)
  Candidate: 1.0
  Version table:
     1.0 500
        500 http://ports.ubuntu.com/ubuntu-ports jammy/main arm64 Packages
";

    #[test]
    fn policy_output_decides_what_is_missing() {
        let policy = parse_policy(POLICY);
        assert_eq!(
            policy["postgresql-16"].candidate.as_deref(),
            Some("16.4-1.pgdg22.04+1")
        );
        assert_eq!(
            policy["postgresql-16"].versions,
            ["16.4-1.pgdg22.04+1", "16.3-1.pgdg22.04+1"]
        );
        assert_eq!(policy["bash"].versions, ["5.1-6ubuntu1"]);
        assert_eq!(policy["mail-transport-agent"].candidate, None);
        let cases: &[(&str, bool)] = &[
            ("postgresql-16", true),
            ("postgresql-16=16.3-1.pgdg22.04+1", true),
            ("postgresql-16=16.0-1", false),
            ("postgresql-16/jammy-pgdg", true),
            ("bash:amd64", true),
            ("libfoo:arm64", true),
            ("libfoo", false),
            ("mail-transport-agent", false),
            ("postgresql-99", false),
        ];
        for (raw, found) in cases {
            let spec = (raw.to_string(), parse_spec(raw).unwrap());
            assert_eq!(
                missing(&policy, &[spec], "amd64").is_empty(),
                *found,
                "{raw}"
            );
        }
        // Empty output is no evidence of anything: every package is missing.
        let empty = parse_policy("");
        let specs: Vec<_> = ["a", "b"]
            .iter()
            .map(|s| (s.to_string(), parse_spec(s).unwrap()))
            .collect();
        assert_eq!(missing(&empty, &specs, "amd64"), ["a", "b"]);
    }

    #[test]
    fn download_names_every_missing_package_and_runs_nothing_else() {
        let t = Arc::new(Scripted::new(|_, cmd| {
            assert_eq!(cmd.argv[..2], ["apt-cache", "policy"]);
            Ok(stdout(POLICY))
        }));
        let c = Ctx::new(t.clone());
        let pkgs = names(&[
            "postgresql-16",
            "postgresql-99",
            "mail-transport-agent",
            "postgresql-16=16.0-1",
        ]);
        let e = apt_download(
            &c,
            &loc(),
            &pkgs,
            "/var/cache/postgresql-packages/16",
            &DownloadOpts::default(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "packages not found in the image's apt sources: postgresql-99, mail-transport-agent, postgresql-16=16.0-1 \
             (check the name, add its repository with `apt_repo`, then run `apt_update()`)"
        );
        assert_eq!(t.commands().len(), 1);
        assert_eq!(
            t.commands()[0].argv,
            [
                "apt-cache",
                "policy",
                "mail-transport-agent",
                "postgresql-16",
                "postgresql-99"
            ]
        );
    }

    #[test]
    fn download_returns_the_new_debs() {
        let t = Arc::new(Scripted::new(|root, cmd| {
            if cmd.argv[0] == "apt-cache" {
                return Ok(stdout(POLICY));
            }
            // What apt-get download does: files appear in its working directory.
            let cwd = cmd.cwd.as_deref().unwrap();
            root.write(
                format!("{cwd}/postgresql-16_16.4-1.pgdg22.04+1_amd64.deb"),
                b"deb",
                Attrs::default(),
            )
            .unwrap();
            root.write(
                format!("{cwd}/bash_5.1-6ubuntu1_amd64.deb"),
                b"deb",
                Attrs::default(),
            )
            .unwrap();
            Ok(Output::default())
        }));
        let c = Ctx::new(t.clone());
        t.root()
            .write(
                "/var/cache/pg/16/old_1.0_amd64.deb",
                b"old",
                Attrs::default(),
            )
            .unwrap();
        let got = download(&c, &["postgresql-16", "bash"], "/var/cache/pg/16").unwrap();
        assert_eq!(
            got,
            [
                "bash_5.1-6ubuntu1_amd64.deb",
                "postgresql-16_16.4-1.pgdg22.04+1_amd64.deb"
            ]
        );
        let dl = &t.commands()[1];
        assert_eq!(
            dl.to_string(),
            "cd /var/cache/pg/16 && DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 apt-get download \
             -o APT::Sandbox::User=root -o Acquire::Retries=3 postgresql-16 bash"
        );
    }

    #[test]
    fn download_on_the_fake_answers_like_apt() {
        let (t, c) = fake_ctx();
        let got = download(
            &c,
            &["postgresql-16", "postgresql-client-16"],
            "/var/cache/postgresql-packages/16",
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "postgresql-16_1.0_amd64.deb",
                "postgresql-client-16_1.0_amd64.deb"
            ]
        );
        let cmds: Vec<String> = t.commands().iter().map(|c| c.argv.join(" ")).collect();
        assert_eq!(
            cmds,
            [
                "apt-cache policy postgresql-16 postgresql-client-16",
                "apt-get download -o APT::Sandbox::User=root -o Acquire::Retries=3 postgresql-16 postgresql-client-16"
            ]
        );
    }

    #[test]
    fn download_with_dependencies_leaves_out_apts_bookkeeping() {
        let (t, c) = fake_ctx();
        let dest = "/var/cache/postgresql-packages/common";
        let opts = DownloadOpts {
            dependencies: Some(true),
        };
        let got = apt_download(&c, &loc(), &names(&["pgbouncer"]), dest, &opts).unwrap();
        assert_eq!(got, ["pgbouncer_1.0_amd64.deb"]);
        assert_eq!(
            t.root().read_dir(dest).unwrap(),
            ["pgbouncer_1.0_amd64.deb"],
            "no partial/, no lock"
        );
        let dl = t.commands()[1].to_string();
        assert!(
            dl.ends_with("apt-get install --download-only --yes --no-install-recommends -o Acquire::Retries=3 \
                          -o Dir::Cache::archives=/var/cache/postgresql-packages/common pgbouncer"),
            "{dl}"
        );
        // A `lock` that was there before is not apt's to drop here.
        t.root()
            .write(format!("{dest}/lock"), b"", Attrs::default())
            .unwrap();
        apt_download(&c, &loc(), &names(&["pgbouncer"]), dest, &opts).unwrap();
        assert!(t.root().exists(format!("{dest}/lock")));
        assert!(!t.root().exists(format!("{dest}/partial")));
    }

    #[test]
    fn a_typo_fails_naming_the_package_on_the_fake_too() {
        let (_, c) = fake_ctx();
        let e = download(&c, &["postgresql-16=9.9"], "/d");
        assert!(e.unwrap_err().to_string().contains("postgresql-16=9.9"));
    }
}
