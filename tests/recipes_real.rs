//! The real recipes, `recipes/standard.rhai` and `recipes/paradedb.rhai`, run
//! for real on the Debian bookworm fixture image (grown to 4 GiB) as far as
//! this machine allows offline, in the configuration `recipes/debian.test.rhai`
//! checks on a fake root: Debian's mirror for apt, PostgreSQL 15 from it, and
//! 127.0.0.1 for the release downloads. Each output is then checked with its
//! root mounted read-only, and `install-postgresql-packages 15` runs in a
//! chroot of a copy with no network at all, after which PostgreSQL starts
//! from a cluster `pg_createcluster` made with the image's settings.
//!
//! Needs root; run with `cargo test --test recipes_real -- --nocapture`. The
//! two builds run in parallel (each has its own host cache in
//! `$PGIMG_FIXTURE_DIR/recipes-real-cache/<flavor>`, since apt's archive lock
//! is per cache). Each test prints which steps of BEHAVIOUR.md could not run
//! here and why ([`NOT_RUN`]), and its stage durations.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/output.rs"]
mod output;
#[path = "support/pgimg.rs"]
mod pgimg_bin;
#[path = "support/served.rs"]
mod served;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fixture::{assert_base_unchanged, checked_base_image, loud};
use output::{check_finalized, e2fsck_clean, field, group_members, names_in, with_root_read_only};
use pgimg_bin::{
    pgimg, print_stages, read_json, repo_dir, scratch, sidecar, Finished, Pgimg, DEBIAN_PARAMS,
};
use served::Served;

/// The steps of BEHAVIOUR.md's "Inside the image" these builds cannot run
/// here, and why. Everything else in that section runs for real.
const NOT_RUN: &[(&str, &str)] = &[
    (
        "setup_base: the PGDG repository (apt.postgresql.org, key pinned by fingerprint)",
        "apt.postgresql.org is not reachable from this machine: --set skip=pgdg \
         (checked on a fake root in recipes/standard.test.rhai)",
    ),
    (
        "setup_base: the golang-backports PPA, its key fetched from keyserver.ubuntu.com by fingerprint",
        "Launchpad and the Ubuntu keyserver are not reachable (and the PPA is built for Ubuntu): \
         --set skip=golang-backports (fake root: recipes/standard.test.rhai)",
    ),
    (
        "setup_base: PostgreSQL 16, 17, 18 and their extensions (recipes/assets/packages/*.txt, with -dbgsym) downloaded",
        "they come from PGDG: Debian bookworm's PostgreSQL 15 stands in (--set pg_versions=15 --set \
         package_lists=debian-bookworm, lists in recipes/fixtures/debian-bookworm/). Downloading them \
         with their dependencies, the package lists, the helper and the offline install run for real",
    ),
    (
        "setup_packages: postgresql-server-dev-16/17/18",
        "postgresql-server-dev-15 from Debian instead (the same step with pg_versions=15)",
    ),
    (
        "setup_packages: WAL-G at cf1ce0f5 (make deps, pg_build, build_client; wal-g, walg-daemon-client)",
        "needs github.com and proxy.golang.org (and the PPA's newer Go): --set skip=walg \
         (fake root: recipes/standard.test.rhai; go_build itself runs for real in tests/run.rs)",
    ),
    (
        "setup_packages: pguint at 4bd044aa, built for every version",
        "needs github.com: --set skip=pguint (fake root: recipes/standard.test.rhai; pgxs_build \
         itself runs for real in tests/run.rs)",
    ),
    (
        "setup_monitoring: the real Prometheus 2.53.0, node_exporter 1.8.1 and postgres_exporter 0.15.0 binaries",
        "github.com is not reachable: stand-in tarballs and sha256sums.txt at GitHub's paths \
         (recipes/fixtures/releases/, made by make-fixtures.sh) served on 127.0.0.1 with --mirror \
         releases=. Download, pin from the checksum list, extraction, owners and modes run for real; \
         the stand-ins are shell scripts, which mode 0100 lets only root run, so they are not started",
    ),
    (
        "setup_cleanup: hv-kvp-daemon, walinuxagent, /var/lib/waagent",
        "the Debian fixture has no Azure agent: --set skip=azure",
    ),
    (
        "setup_cleanup: cloud-init clean --logs --seed, the Azure configs, 90_dpkg.cfg",
        "the fixture has no cloud-init: --set skip=cloud-init",
    ),
    (
        "setup_cleanup: GRUB settings and update-grub",
        "the fixture has no GRUB (it is never booted): --set skip=grub",
    ),
    (
        "the Ubuntu 22.04 base, and the build's apt sources from --mirror ubuntu=",
        "the Ubuntu cloud image cannot be downloaded here: the Debian bookworm fixture instead, with its \
         own mirror (deb.debian.org, also this machine's, so --mirror debian= would change nothing; \
         the sources.list swap is checked on a fake root in recipes/debian.test.rhai)",
    ),
];

/// What [`NOT_RUN`] adds for the paradedb flavor.
const PARADEDB_NOT_RUN: (&str, &str) = (
    "paradedb: pg_search 0.17.10 and pg_analytics 0.3.7 .debs for PostgreSQL 16 and 17 (jammy) from GitHub",
    "github.com is not reachable, and there are no PostgreSQL 15 bookworm builds: this test builds \
     stand-in .debs under the upstream names for 15 and bookworm (depending on postgresql-15, with \
     an installable extension), serves them at GitHub's paths, pins them with `pgimg lock` \
     (from=lock) in a copy of recipes/, and builds with --locked",
);

fn print_not_run(title: &str, extra: &[(&str, &str)]) {
    let mut text =
        format!("\n===== {title}: steps of BEHAVIOUR.md that could not run here =====\n");
    for (step, why) in NOT_RUN.iter().chain(extra) {
        text.push_str(&format!("  - {step}\n      {why}\n"));
    }
    loud(&text);
}

/// `e2fsck` of the output, then `check` on its root mounted read-only;
/// returns the seconds both took.
fn checked_read_only(out: &Path, check: impl FnOnce(&Path) + Send) -> f64 {
    let started = Instant::now();
    loud(&e2fsck_clean(out));
    with_root_read_only(out, check);
    started.elapsed().as_secs_f64()
}

/// Where every flavor build here starts: the host's Debian architecture,
/// the checked fixture, and a scratch folder.
fn flavor_start() -> (String, PathBuf, tempfile::TempDir) {
    (arch(), checked_base_image(), scratch())
}

/// The host's (and so the fixture's) Debian architecture.
fn arch() -> String {
    served::host(&["dpkg", "--print-architecture"], None, &[])
        .trim()
        .to_string()
}

/// A host cache of its own per flavor: the builds run in parallel, and apt
/// holds the lock of its archive folder (the bound cache) for a whole install.
fn cache_dir(flavor: &str) -> PathBuf {
    fixture::fixture_dir()
        .join("recipes-real-cache")
        .join(flavor)
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

/// `pgimg run RECIPE` in [`DEBIAN_PARAMS`] on the fixture grown to 4 GiB,
/// release downloads from `releases`; asserts it succeeded.
fn build(
    recipe: &Path,
    base: &Path,
    out: &Path,
    releases: &str,
    flavor: &str,
    extra: &[&str],
) -> Finished {
    // Downloads must come from the server, not from a previous run's cache.
    let _ = std::fs::remove_dir_all(cache_dir(flavor).join("downloads"));
    let mut a: Vec<OsString> = vec!["run".into(), recipe.into()];
    a.extend(["--base".into(), base.into(), "--size".into(), "4G".into()]);
    a.extend(["--output".into(), out.into()]);
    a.extend(["--cache-dir".into(), cache_dir(flavor).into()]);
    a.extend(args(DEBIAN_PARAMS));
    a.extend(["--mirror".into(), format!("releases={releases}").into()]);
    a.extend(args(extra));
    let f = Pgimg::spawn(&a, None).finish(Duration::from_secs(1500));
    assert_eq!(
        f.code(),
        Some(0),
        "the {flavor} build failed:\n{}",
        f.stderr
    );
    for step in [
        "pgdg",
        "golang-backports",
        "walg",
        "pguint",
        "azure",
        "cloud-init",
        "grub",
    ] {
        assert!(
            f.stderr.contains(&format!("skipping {step} (--set skip)")),
            "{step} logged as skipped"
        );
    }
    f
}

// ------------------------------------------------ reading the image ---

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn ids(p: &Path) -> (u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap();
    (m.uid(), m.gid())
}

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn text(p: &Path) -> String {
    String::from_utf8(read(p)).unwrap()
}

/// A user's `/etc/passwd` line as (uid, gid, home, shell).
fn user(root: &Path, name: &str) -> (u32, u32, String, String) {
    let passwd = text(&root.join("etc/passwd"));
    let l = passwd
        .lines()
        .find(|l| field(l, 0) == name)
        .unwrap_or_else(|| panic!("no user {name}"));
    (
        field(l, 2).parse().unwrap(),
        field(l, 3).parse().unwrap(),
        field(l, 5).to_string(),
        field(l, 6).to_string(),
    )
}

/// `Package` → `Status` of the image's dpkg database.
fn dpkg_status(root: &Path) -> BTreeMap<String, String> {
    text(&root.join("var/lib/dpkg/status"))
        .split("\n\n")
        .filter_map(|para| {
            let get = |k: &str| {
                para.lines()
                    .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                    .map(str::to_string)
            };
            Some((get("Package")?, get("Status")?))
        })
        .collect()
}

fn installed(status: &BTreeMap<String, String>, pkg: &str) -> bool {
    status.get(pkg).map(String::as_str) == Some("install ok installed")
}

/// The package names of a list (one per line, `#` comments).
fn package_list(path: &Path) -> Vec<String> {
    text(path)
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

/// Every symbolic link under `dir`, as (path, target).
fn symlinks_under(dir: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.file_type().is_symlink() {
                let t = std::fs::read_link(&p).unwrap();
                out.push((p, t));
            } else if m.is_dir() {
                todo.push(p);
            }
        }
    }
    out
}

/// The pin `sha256sums.txt` in `release_dir` lists for `file`.
fn listed_sha256(release_dir: &Path, file: &str) -> String {
    text(&release_dir.join("sha256sums.txt"))
        .lines()
        .find_map(|l| {
            let (sum, name) = l.split_once("  ")?;
            (name == file).then(|| sum.to_string())
        })
        .unwrap_or_else(|| panic!("{file} not in {}/sha256sums.txt", release_dir.display()))
}

/// (GitHub repository, binary, version, owner) of the three exporters.
const EXPORTERS: [(&str, &str, &str, &str); 3] = [
    (
        "prometheus/prometheus",
        "prometheus",
        "2.53.0",
        "prometheus",
    ),
    (
        "prometheus/node_exporter",
        "node_exporter",
        "1.8.1",
        "prometheus",
    ),
    (
        "prometheus-community/postgres_exporter",
        "postgres_exporter",
        "0.15.0",
        "ubi_monitoring",
    ),
];

const UNITS: [&str; 4] = [
    "prometheus.service",
    "node_exporter.service",
    "postgres_exporter.service",
    "wal-g.service",
];

/// The stand-in release folder of an exporter under `releases`.
fn release_dir(releases: &Path, repo: &str, version: &str) -> PathBuf {
    releases.join(format!("{repo}/releases/download/v{version}"))
}

/// Checks the manifest's inputs: the three exporters fetched from the local
/// server and pinned by the entries of their stand-in checksum lists.
fn check_exporter_inputs(manifest: &serde_json::Value, server: &str, arch: &str) {
    let releases = repo_dir().join("recipes/fixtures/releases");
    let inputs = manifest["inputs"].as_array().expect("inputs");
    for (repo, name, version, _) in EXPORTERS {
        let file = format!("{name}-{version}.linux-{arch}.tar.gz");
        let upstream = format!("https://github.com/{repo}/releases/download/v{version}");
        let i = inputs
            .iter()
            .find(|i| i["upstream"] == format!("{upstream}/{file}").as_str())
            .unwrap_or_else(|| panic!("no input for {file}: {inputs:?}"));
        assert_eq!(
            i["url"],
            format!("{server}/{repo}/releases/download/v{version}/{file}").as_str()
        );
        assert_eq!(i["from"], format!("{upstream}/sha256sums.txt").as_str());
        assert_eq!(
            i["pin"],
            listed_sha256(&release_dir(&releases, repo, version), &file).as_str()
        );
    }
}

/// Everything BEHAVIOUR.md's "Inside the image" asks of both flavors, in
/// the configuration of [`DEBIAN_PARAMS`], checked on the output's root.
fn check_image(root: &Path, flavor: &str, arch: &str) {
    let repo = repo_dir();

    // The finalize stage, and the manifest it embeds.
    check_finalized(root);
    assert!(root.join("usr/share/pgimg/manifest.json").is_file());

    // createcluster.conf: no cluster on install, data checksums, the include dir.
    let conf = text(&root.join("etc/postgresql-common/createcluster.conf"));
    let lines: Vec<&str> = conf.lines().collect();
    for want in [
        "initdb_options = '--data-checksums'",
        "create_main_cluster = 'off'",
        "include_dir = '/etc/postgresql-common/createcluster.d'",
    ] {
        assert!(
            lines.contains(&want),
            "{want:?} in createcluster.conf:\n{conf}"
        );
    }
    let d = root.join("etc/postgresql-common/createcluster.d");
    assert!(d.is_dir());
    assert_eq!(mode(&d), 0o755);

    // Package lists.
    let lists = root.join("usr/local/share/postgresql/packages");
    assert_eq!(mode(&lists), 0o755);
    assert_eq!(ids(&lists), (0, 0));
    assert_eq!(names_in(&lists), ["15.txt", "common.txt"]);
    for set in ["15", "common"] {
        let p = lists.join(format!("{set}.txt"));
        let asset = repo.join(format!("recipes/fixtures/debian-bookworm/{set}.txt"));
        assert_eq!(read(&p), read(&asset), "{set}.txt is the asset");
        assert_eq!(mode(&p), 0o644);
        assert_eq!(ids(&p), (0, 0));
    }

    // The downloaded packages, kept through finalize; not installed.
    let cache = root.join("var/cache/postgresql-packages");
    assert_eq!(names_in(&cache), ["15", "common"]);
    let status = dpkg_status(root);
    for set in ["15", "common"] {
        let dir = cache.join(set);
        assert_eq!(mode(&dir), 0o755);
        let files = names_in(&dir);
        assert!(
            files.iter().all(|f| f.ends_with(".deb")),
            "only .deb files (no partial/, no lock) in {set}/: {files:?}"
        );
        let listed =
            package_list(&repo.join(format!("recipes/fixtures/debian-bookworm/{set}.txt")));
        for pkg in &listed {
            let deb = files
                .iter()
                .find(|f| f.starts_with(&format!("{pkg}_")))
                .unwrap_or_else(|| panic!("no {pkg}_*.deb in {set}/: {files:?}"));
            let got = served::host(
                &[
                    "dpkg-deb",
                    "--field",
                    dir.join(deb).to_str().unwrap(),
                    "Package",
                ],
                None,
                &[],
            );
            assert_eq!(got.trim(), pkg, "{deb} is {pkg}");
            assert!(!installed(&status, pkg), "{pkg} downloaded, not installed");
        }
        loud(&format!(
            "/var/cache/postgresql-packages/{set}/: {} .deb files for {} listed packages",
            files.len(),
            listed.len()
        ));
    }
    // With the dependencies the image lacked.
    assert!(
        names_in(&cache.join("15"))
            .iter()
            .any(|f| f.starts_with("postgresql-client-15_")),
        "postgresql-15's dependencies downloaded with it"
    );

    // The first-boot helper.
    let helper = root.join("usr/local/bin/install-postgresql-packages");
    assert_eq!(mode(&helper), 0o755);
    assert_eq!(ids(&helper), (0, 0));
    assert_eq!(
        read(&helper),
        read(&repo.join("recipes/assets/bin/install-postgresql-packages"))
    );

    // Build tools, with recommended packages; the python link.
    for pkg in [
        "golang-go",
        "cmake",
        "python3",
        "python3-pip",
        "git",
        "make",
        "postgresql-server-dev-15",
    ] {
        assert!(installed(&status, pkg), "{pkg} installed");
    }
    for pkg in ["gcc", "python3-dev"] {
        assert!(
            installed(&status, pkg),
            "{pkg} installed as a recommended package"
        );
    }
    assert_eq!(
        std::fs::read_link(root.join("usr/bin/python")).unwrap(),
        Path::new("/usr/bin/python3")
    );
    assert!(root.join("usr/bin/cmake").is_file());
    assert!(root.join("usr/lib/postgresql/15/bin/pg_config").is_file());

    // Users and groups.
    for name in ["prometheus", "ubi_monitoring"] {
        let (uid, gid, home, _) = user(root, name);
        assert!(uid >= 1000, "{name} is a normal user (uid {uid})");
        assert_eq!(home, format!("/home/{name}"));
        let h = root.join(home.trim_start_matches('/'));
        assert!(h.is_dir(), "{name}'s home");
        assert_eq!(ids(&h), (uid, gid));
        let shadow = text(&root.join("etc/shadow"));
        let l = shadow.lines().find(|l| field(l, 0) == name).unwrap();
        assert!(
            matches!(field(l, 1), "*" | "!" | "!*"),
            "{name} has no password: {l}"
        );
    }
    let mut readers = group_members(root, "cert_readers");
    readers.sort();
    assert_eq!(readers, ["postgres", "prometheus"]);

    // Exporters: the binaries of the (stand-in) tarballs, owners, mode 0100.
    let releases = repo.join("recipes/fixtures/releases");
    for (repo_name, name, version, owner) in EXPORTERS {
        let bin = root.join("usr/bin").join(name);
        let m = std::fs::symlink_metadata(&bin).unwrap();
        assert!(m.file_type().is_file(), "{name} is a file");
        assert_eq!(mode(&bin), 0o100, "{name}'s mode");
        let (uid, gid, _, _) = user(root, owner);
        assert_eq!(ids(&bin), (uid, gid), "{name} owned by {owner}");
        let tarball = release_dir(&releases, repo_name, version)
            .join(format!("{name}-{version}.linux-{arch}.tar.gz"));
        let member = format!("{name}-{version}.linux-{arch}/{name}");
        let want = served::host(
            &["tar", "-xzOf", tarball.to_str().unwrap(), &member],
            None,
            &[],
        );
        assert_eq!(text(&bin), want, "{name} is the tarball's binary");
    }

    // Units installed, not enabled; the exporter queries.
    let system = root.join("etc/systemd/system");
    for unit in UNITS {
        let p = system.join(unit);
        assert_eq!(
            read(&p),
            read(&repo.join("recipes/assets/units").join(unit)),
            "{unit}"
        );
        assert_eq!(mode(&p), 0o644);
    }
    for (link, target) in symlinks_under(&system) {
        for unit in UNITS {
            assert!(
                link.file_name().unwrap() != unit && !target.ends_with(unit),
                "{unit} is enabled: {} -> {}",
                link.display(),
                target.display()
            );
        }
    }
    let q = root.join("usr/local/share/postgresql/postgres_exporter_queries.yaml");
    assert_eq!(
        read(&q),
        read(&repo.join("recipes/assets/postgres_exporter_queries.yaml"))
    );
    assert_eq!(mode(&q), 0o644);

    // The flavor's post-installation script.
    let script = root.join("etc/postgresql-partners/post-installation-script");
    assert_eq!(
        read(&script),
        read(&repo.join(format!("flavors/{flavor}/assets/post-installation-script")))
    );
    assert_eq!(mode(&script), 0o755);
    assert_eq!(mode(&root.join("etc/postgresql-partners")), 0o755);

    // The skipped steps left nothing; the image's apt sources are its own.
    for absent in [
        "etc/apt/sources.list.d/pgdg.sources",
        "etc/apt/sources.list.d/golang-backports.sources",
        "etc/apt/sources.list.pgimg-saved",
        "usr/bin/wal-g",
        "usr/bin/walg-daemon-client",
    ] {
        assert!(!root.join(absent).exists(), "/{absent}");
    }
}

// ------------------------------------------- first boot, in a chroot ---

/// In a chroot of a copy of the output: installs PostgreSQL 15 with the
/// image's helper with no network at all (`unshare --net`), lists the
/// packages' states, makes a cluster with `pg_createcluster` (the image's
/// createcluster.conf) and starts it, then asks it about checksums and
/// creates extensions.
const FIRST_BOOT: &str = r#"set -eu
echo "clusters before: $(pg_lsclusters --no-header 2>/dev/null | wc -l)"
install-postgresql-packages 15
dpkg-query -W -f 'status: ${Package} ${db:Status-Status}\n' @PACKAGES@
test -x /usr/lib/postgresql/15/bin/postgres && echo "postgres binary: yes"
echo "clusters after install: $(pg_lsclusters --no-header | wc -l)"
pg_createcluster 15 main >/dev/null
# The host's network is the chroot's: a socket only, no port to clash on.
pg_conftool 15 main set listen_addresses ''
pg_ctlcluster --skip-systemctl-redirect 15 main start
runuser -u postgres -- psql -qAt -c "SELECT 'checksums: ' || current_setting('data_checksums')" @SQL@
pg_ctlcluster --skip-systemctl-redirect 15 main stop
"#;

/// Copies the output (`pgimg shell` writes to the image it opens), checks
/// that the helper refuses a version it has no packages for, then runs
/// [`FIRST_BOOT`] and checks what it said; returns the seconds it all took.
fn first_boot(out: &Path, dir: &Path, packages: &[&str], extensions: &[&str]) -> f64 {
    let copy = dir.join("first-boot.raw");
    served::host_on(&["cp", "--sparse=always"], &[out, &copy]);
    let started = Instant::now();
    let bad = pgimg(
        &args(&[
            "shell",
            copy.to_str().unwrap(),
            "--",
            "install-postgresql-packages",
            "19",
        ]),
        None,
        Duration::from_secs(120),
    );
    assert_eq!(
        bad.code(),
        Some(2),
        "usage error for a version with no packages:\n{}",
        bad.stderr
    );
    let msg = "install-postgresql-packages: no packages for PostgreSQL 19 in /var/cache/postgresql-packages; available: 15";
    assert!(
        bad.stderr.lines().any(|l| l == msg),
        "{msg:?} in:\n{}",
        bad.stderr
    );

    let sql: String = extensions
        .iter()
        .map(|e| format!(" -c \"CREATE EXTENSION {e}\" -c \"SELECT 'extension: ' || extname || ' ' || extversion FROM pg_extension WHERE extname = '{e}'\""))
        .collect();
    let script = FIRST_BOOT
        .replace("@PACKAGES@", &packages.join(" "))
        .replace(" @SQL@", &sql);
    // With no network at all, as the first boot of a machine that has none.
    let f = Pgimg::spawn_offline(
        &args(&["shell", copy.to_str().unwrap(), "--", "sh", "-c", &script]),
        None,
    )
    .finish(Duration::from_secs(600));
    assert_eq!(
        f.code(),
        Some(0),
        "first boot failed:\n{}\n{}",
        f.stdout,
        f.stderr
    );
    assert!(
        f.stderr
            .contains("install-postgresql-packages: PostgreSQL 15 installed"),
        "{}",
        f.stderr
    );
    let said: Vec<&str> = f.stdout.lines().collect();
    for want in [
        "clusters before: 0",
        "postgres binary: yes",
        "clusters after install: 0",
        "checksums: on",
    ] {
        assert!(said.contains(&want), "{want:?} in:\n{}", f.stdout);
    }
    for p in packages {
        let want = format!("status: {p} installed");
        assert!(said.contains(&want.as_str()), "{want:?} in:\n{}", f.stdout);
    }
    for e in extensions {
        assert!(
            said.iter()
                .any(|l| l.starts_with(&format!("extension: {e} "))),
            "extension {e} created:\n{}",
            f.stdout
        );
    }
    let secs = started.elapsed().as_secs_f64();
    let summary: Vec<&str> = said
        .iter()
        .filter(|l| {
            [
                "clusters ",
                "postgres binary",
                "status: ",
                "checksums: ",
                "extension: ",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .copied()
        .collect();
    loud(&format!(
        "----- first boot, offline, in a chroot of a copy -----\n{}",
        summary.join("\n")
    ));
    std::fs::remove_file(&copy).unwrap();
    secs
}

/// Every request to `server` was answered 200, and each path of `want` was served.
fn assert_all_served(server: &Served, want: &[String]) {
    let log = server.log();
    for l in log.lines().filter(|l| l.contains("\"GET ")) {
        assert!(l.contains("\" 200 "), "a request failed: {l}");
    }
    for path in want {
        assert!(server.served(path), "{path} served:\n{log}");
    }
}

/// The paths of the exporters' downloads at GitHub's layout.
fn exporter_paths(arch: &str) -> Vec<String> {
    EXPORTERS
        .iter()
        .flat_map(|(repo, name, version, _)| {
            let base = format!("/{repo}/releases/download/v{version}");
            [
                format!("{base}/sha256sums.txt"),
                format!("{base}/{name}-{version}.linux-{arch}.tar.gz"),
            ]
        })
        .collect()
}

// --------------------------------------------------------------- tests ---

#[test]
fn standard_recipe_on_the_debian_fixture() {
    fixture::skip_unless_root!();
    let _heavy = fixture::disk_heavy();
    let (arch, base, tmp) = flavor_start();
    let dir = tmp.path();
    let server = Served::fixture_releases(dir);
    let out = dir.join("standard.raw");

    let run = build(
        Path::new("recipes/standard.rhai"),
        &base,
        &out,
        &server.url(),
        "standard",
        &[],
    );
    let manifest = read_json(&sidecar(&out, "manifest.json"));
    print_stages(
        "recipes/standard.rhai on the Debian fixture, 4 GiB",
        &manifest,
    );
    assert_eq!(manifest["recipe"], "recipes/standard.rhai");
    assert_eq!(manifest["params"]["pg_versions"], "15");
    check_exporter_inputs(&manifest, &server.url(), &arch);
    assert_eq!(
        manifest["inputs"].as_array().unwrap().len(),
        3,
        "nothing else fetched"
    );
    assert_all_served(&server, &exporter_paths(&arch));
    assert_base_unchanged(&base);

    let checks = checked_read_only(&out, |root| check_image(root, "standard", &arch));

    let packages = [
        "postgresql-15",
        "postgresql-15-cron",
        "postgresql-15-hypopg",
        "postgresql-15-repack",
        "postgresql-plpython3-15",
        "pgbouncer",
    ];
    let boot = first_boot(&out, dir, &packages, &["hypopg", "plpython3u"]);
    loud(&format!(
        "\n===== recipes/standard.rhai: build {:.1} s, read-only checks {checks:.1} s, \
         install-postgresql-packages 15 + PostgreSQL in a chroot {boot:.1} s =====",
        run.seconds
    ));
    print_not_run("recipes/standard.rhai", &[]);
}

/// A stand-in ParadeDB package for PostgreSQL 15: the upstream file name,
/// depending on postgresql-15, holding an extension CREATE EXTENSION accepts.
fn paradedb_standin(
    out_dir: &Path,
    work: &Path,
    deb_name: &str,
    ext: &str,
    version: &str,
    arch: &str,
) -> PathBuf {
    let tree = work.join(format!("tree-{ext}"));
    let extdir = tree.join("usr/share/postgresql/15/extension");
    std::fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    std::fs::create_dir_all(&extdir).unwrap();
    for d in [
        tree.clone(),
        tree.join("DEBIAN"),
        tree.join("usr"),
        tree.join("usr/share"),
        tree.join("usr/share/postgresql"),
        tree.join("usr/share/postgresql/15"),
        extdir.clone(),
    ] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let deb_version = format!("{version}-1PARADEDB-bookworm");
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: postgresql-15-{deb_name}\nVersion: {deb_version}\nArchitecture: {arch}\n\
             Maintainer: pgimg tests <tests@pgimg.invalid>\nDepends: postgresql-15\n\
             Description: {ext} {version} (test stand-in)\n"
        ),
    )
    .unwrap();
    std::fs::write(
        extdir.join(format!("{ext}.control")),
        format!("comment = '{ext} (test stand-in)'\ndefault_version = '{version}'\nrelocatable = true\n"),
    )
    .unwrap();
    std::fs::write(
        extdir.join(format!("{ext}--{version}.sql")),
        format!("CREATE FUNCTION {ext}_standin() RETURNS text LANGUAGE sql AS $$ SELECT '{ext} {version} (test stand-in)' $$;\n"),
    )
    .unwrap();
    std::fs::create_dir_all(out_dir).unwrap();
    let deb = out_dir.join(format!("postgresql-15-{deb_name}_{deb_version}_{arch}.deb"));
    served::host_on(&["dpkg-deb", "--root-owner-group", "-b"], &[&tree, &deb]);
    deb
}

#[test]
fn paradedb_recipe_on_the_debian_fixture() {
    fixture::skip_unless_root!();
    let _heavy = fixture::disk_heavy();
    let (arch, base, tmp) = flavor_start();
    let dir = tmp.path();
    let repo = repo_dir();

    // A copy of recipes/ and flavors/ (the lock is written beside the recipe).
    for sub in ["recipes", "flavors"] {
        served::host_on(&["cp", "-r"], &[&repo.join(sub), dir]);
    }
    let recipe = dir.join("recipes/paradedb.rhai");

    // The release downloads: the exporters' stand-ins and ParadeDB's.
    let releases = dir.join("releases");
    served::host_on(
        &["cp", "-r"],
        &[&repo.join("recipes/fixtures/releases"), &releases],
    );
    let debs: Vec<(String, PathBuf)> = [
        (
            "pg-analytics",
            "pg_analytics",
            "0.3.7",
            "paradedb/pg_analytics",
        ),
        ("pg-search", "pg_search", "0.17.10", "paradedb/paradedb"),
    ]
    .iter()
    .map(|(deb_name, ext, version, gh)| {
        let d = releases.join(format!("{gh}/releases/download/v{version}"));
        let deb = paradedb_standin(&d, dir, deb_name, ext, version, &arch);
        let rel = deb
            .strip_prefix(&releases)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        (rel, deb)
    })
    .collect();
    let server = Served::folder(&releases, &dir.join("releases.log"));
    let mirror = format!("releases={}", server.url());

    // `pgimg lock` in the copy, against the local server.
    let lock_started = Instant::now();
    let mut a = args(&[
        "lock",
        recipe.to_str().unwrap(),
        "--os",
        "debian:12:bookworm",
    ]);
    a.extend(args(DEBIAN_PARAMS));
    a.extend(args(&["--mirror", &mirror]));
    let xdg = dir.join("xdg-cache");
    let lock = Pgimg::spawn_with_env(&a, None, &[("XDG_CACHE_HOME", &xdg)])
        .finish(Duration::from_secs(300));
    let lock_secs = lock_started.elapsed().as_secs_f64();
    assert_eq!(
        lock.code(),
        Some(0),
        "pgimg lock:\n{}\n{}",
        lock.stdout,
        lock.stderr
    );
    assert!(
        lock.stderr.contains("arm64 skipped") && lock.stderr.contains("amd64 only"),
        "{}",
        lock.stderr
    );
    let lock_text = text(&dir.join("recipes/pgimg.lock"));
    for (rel, deb) in &debs {
        let sha = fixture::current_sha256(deb);
        let line = format!("url https://github.com/{rel} {sha} from=lock");
        assert!(
            lock_text.lines().any(|l| l == line),
            "{line:?} in:\n{lock_text}"
        );
    }
    for (gh, name, version, _) in EXPORTERS {
        let file = format!("{name}-{version}.linux-amd64.tar.gz");
        let upstream = format!("https://github.com/{gh}/releases/download/v{version}");
        let sha = listed_sha256(&release_dir(&releases, gh, version), &file);
        let line = format!("url {upstream}/{file} {sha} from={upstream}/sha256sums.txt");
        assert!(
            lock_text.lines().any(|l| l == line),
            "{line:?} in:\n{lock_text}"
        );
    }

    let out = dir.join("paradedb.raw");
    if arch != "amd64" {
        let mut a = args(&[
            "run",
            recipe.to_str().unwrap(),
            "--locked",
            "--output",
            out.to_str().unwrap(),
        ]);
        a.extend(args(DEBIAN_PARAMS));
        let f = pgimg(&a, None, Duration::from_secs(300));
        assert_eq!(f.code(), Some(1), "{}", f.stderr);
        assert!(
            f.stderr
                .contains("ParadeDB publishes pg_search and pg_analytics packages for amd64 only"),
            "{}",
            f.stderr
        );
        loud(&format!(
            "paradedb refuses {arch} as it should; no build on this machine"
        ));
        return;
    }
    let run = build(
        &recipe,
        &base,
        &out,
        &server.url(),
        "paradedb",
        &["--locked"],
    );
    let manifest = read_json(&sidecar(&out, "manifest.json"));
    print_stages(
        "recipes/paradedb.rhai --locked on the Debian fixture, 4 GiB",
        &manifest,
    );
    check_exporter_inputs(&manifest, &server.url(), &arch);
    let inputs = manifest["inputs"].as_array().unwrap();
    assert_eq!(
        inputs.len(),
        5,
        "the exporters and the two packages: {inputs:?}"
    );
    for (rel, deb) in &debs {
        let i = inputs
            .iter()
            .find(|i| i["upstream"] == format!("https://github.com/{rel}").as_str())
            .unwrap_or_else(|| panic!("no input for {rel}: {inputs:?}"));
        assert_eq!(i["url"], format!("{}/{rel}", server.url()).as_str());
        assert_eq!(i["from"], "lock");
        assert_eq!(i["pin"], fixture::current_sha256(deb).as_str());
    }
    let mut want = exporter_paths(&arch);
    want.extend(debs.iter().map(|(rel, _)| format!("/{rel}")));
    assert_all_served(&server, &want);
    assert_base_unchanged(&base);

    let checks = checked_read_only(&out, |root| {
        check_image(root, "paradedb", &arch);
        // Beside PostgreSQL 15's packages, so the helper installs them with it.
        for (_, deb) in &debs {
            let p = root
                .join("var/cache/postgresql-packages/15")
                .join(deb.file_name().unwrap());
            assert_eq!(read(&p), read(deb), "{}", p.display());
            assert_eq!(mode(&p), 0o644);
            assert_eq!(ids(&p), (0, 0));
        }
    });

    let packages = [
        "postgresql-15",
        "pgbouncer",
        "postgresql-15-pg-search",
        "postgresql-15-pg-analytics",
    ];
    let boot = first_boot(&out, dir, &packages, &["pg_search", "pg_analytics"]);
    loud(&format!(
        "\n===== recipes/paradedb.rhai: pgimg lock {lock_secs:.1} s, build {:.1} s, read-only checks \
         {checks:.1} s, install-postgresql-packages 15 + PostgreSQL in a chroot {boot:.1} s =====",
        run.seconds
    ));
    print_not_run("recipes/paradedb.rhai", &[PARADEDB_NOT_RUN]);
}
