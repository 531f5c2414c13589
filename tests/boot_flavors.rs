//! The standard flavor, booted: `recipes/standard.rhai` built on the
//! bootable fixture in the offline configuration `tests/recipes_real.rs`
//! uses, then `pgimg verify` with the flavor's own checks
//! (`recipes/standard.verify.rhai`, found through the image's manifest):
//! PostgreSQL 15 installed offline at first boot, a cluster with data
//! checksums running as a service, an extension answering, users, groups,
//! units, sshd with fresh host keys.
//!
//! Needs root, QEMU (`tests/setup-boot.sh`) and the Debian mirror; run with
//! `cargo test --test boot_flavors -- --nocapture`. Slow: a full flavor
//! build, then a TCG boot that installs PostgreSQL.

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/pgimg.rs"]
mod pgimg_bin;
#[path = "support/served.rs"]
mod served;

use std::ffi::OsString;
use std::time::Duration;

use fixture::{checked_base_image, loud, sha256sum};
use pgimg_bin::{assert_has_any, os, pgimg, scratch, DEBIAN_PARAMS};
use served::Served;

#[test]
fn standard_flavor_boots_and_passes_its_verify_checks() {
    fixture::skip_unless_root!();
    let tmp = scratch();
    let dir = tmp.path();
    let server = Served::fixture_releases(dir);
    let out = dir.join("standard.raw");
    let mut a: Vec<OsString> = vec!["run".into(), "recipes/standard.rhai".into()];
    a.extend(["--base".into(), checked_base_image().into()]);
    a.extend(os(&["--size", "4G"]));
    a.extend(["--output".into(), out.clone().into()]);
    a.extend([
        "--cache-dir".into(),
        fixture::fixture_dir().join("boot-flavors-cache").into(),
    ]);
    a.extend(os(DEBIAN_PARAMS));
    a.extend([
        "--mirror".into(),
        format!("releases={}", server.url()).into(),
    ]);
    let built = pgimg(&a, None, Duration::from_secs(2400));
    assert_eq!(
        built.code(),
        Some(0),
        "the standard build failed:\n{}",
        built.stderr
    );

    let before = sha256sum(&out);
    let mut v: Vec<OsString> = vec!["verify".into(), out.clone().into()];
    v.extend(os(&["--timeout", "1500", "--memory", "2048"]));
    let f = pgimg(&v, None, Duration::from_secs(1700));
    loud(&format!(
        "--- pgimg verify standard.raw ({:.0} s):\n{}",
        f.seconds, f.stdout
    ));
    assert!(
        f.stderr.contains("checks: recipes/standard.verify.rhai"),
        "the flavor's checks were not found:\n{}",
        f.stderr
    );
    assert_eq!(f.code(), Some(0), "{}\n{}", f.stdout, f.stderr);
    for line in [
        "ok   no failed units",
        "ok   expect_active(\"ssh.service\")",
        "ok   expect_ok(\"install-postgresql-packages 15\")",
        "ok   expect_active(\"postgresql@15-main.service\")",
        "ok   expect_eq(\"on\", \"on\")",
    ] {
        assert_has_any(&f.stdout, &[line], "a check did not pass");
    }
    assert_has_any(
        &f.stdout,
        &["CREATE EXTENSION", "expect_eq(\"0\", \"0\")"],
        "no extension answered",
    );
    assert_eq!(sha256sum(&out), before, "verify changed the image");
}
