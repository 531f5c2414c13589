//! Boot tests: `pgimg verify` on images built from the bootable fixture, in
//! real QEMU (TCG when KVM does not work). Each image is built once and
//! shared; boots run one at a time (two cores, and TCG is CPU-bound).
//!
//! Needs root and QEMU (`tests/setup-boot.sh`); run with
//! `cargo test --test boot -- --nocapture`. Images live in
//! `$PGIMG_FIXTURE_DIR/boot-tests` (emptied when the first one is built).

#[path = "support/fixture.rs"]
mod fixture;
#[path = "support/pgimg.rs"]
mod pgimg_bin;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use fixture::{checked_base_image, loud, sha256sum};
use pgimg_bin::{assert_has_any, os, pgimg, Finished};

/// Boots take turns.
static BOOTS: Mutex<()> = Mutex::new(());

fn work_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = fixture::fixture_dir().join("boot-tests");
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fn cache_dir() -> PathBuf {
    fixture::fixture_dir().join("boot-tests-cache")
}

/// `pgimg run RECIPE --base FIXTURE --output DIR/NAME.raw EXTRA...`; asserts success.
fn build(name: &str, recipe: &Path, extra: &[&str]) -> PathBuf {
    let out = work_dir().join(format!("{name}.raw"));
    let mut a: Vec<OsString> = vec!["run".into(), recipe.into()];
    a.extend(["--base".into(), checked_base_image().into()]);
    a.extend(["--output".into(), out.clone().into()]);
    a.extend(["--cache-dir".into(), cache_dir().into()]);
    a.extend(os(extra));
    let f = pgimg(&a, None, Duration::from_secs(1200));
    assert_eq!(f.code(), Some(0), "building {name} failed:\n{}", f.stderr);
    out
}

fn write(name: &str, text: &str) -> PathBuf {
    let p = work_dir().join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `pgimg verify IMAGE ARGS...`, one boot at a time.
fn verify(image: &Path, args: &[&str], limit: Duration) -> Finished {
    let _turn = BOOTS.lock().unwrap_or_else(|e| e.into_inner());
    let mut a: Vec<OsString> = vec!["verify".into(), image.into()];
    a.extend(os(args));
    let f = pgimg(&a, None, limit);
    loud(&format!(
        "--- pgimg verify {} ({:.0} s):\n{}",
        image.display(),
        f.seconds,
        f.stdout
    ));
    f
}

/// The value of the first `note NAME VALUE` line.
fn note<'a>(f: &'a Finished, name: &str) -> &'a str {
    let prefix = format!("note {name} ");
    f.stdout
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no note {name} in:\n{}", f.stdout))
        .trim()
}

// ------------------------------------------------------------- hello ---

struct Hello {
    image: PathBuf,
    sha256_before: String,
    bios: Finished,
    uefi: Finished,
}

/// `recipes/examples/hello.rhai` on the fixture grown to 3 GiB (the GPT's
/// backup header moved to the new end), verified twice with the checks
/// `pgimg verify` finds beside the recipe (`hello.verify.rhai`): BIOS (GRUB
/// from the MBR and p14) and UEFI (OVMF, GRUB from the ESP).
fn hello() -> &'static Hello {
    static HELLO: OnceLock<Hello> = OnceLock::new();
    HELLO.get_or_init(|| {
        let image = build(
            "hello",
            Path::new("recipes/examples/hello.rhai"),
            &["--size", "3G"],
        );
        let sha256_before = sha256sum(&image);
        // TCG on a loaded two-core host has taken 220 s to multi-user.
        let limit = Duration::from_secs(1000);
        let bios = verify(&image, &["--timeout", "900"], limit);
        let uefi = verify(&image, &["--firmware", "uefi", "--timeout", "900"], limit);
        Hello {
            image,
            sha256_before,
            bios,
            uefi,
        }
    })
}

fn assert_passed(f: &Finished, what: &str) {
    assert_eq!(
        f.code(),
        Some(0),
        "{what}: verify failed:\n{}\n{}",
        f.stdout,
        f.stderr
    );
    assert!(f
        .stdout
        .lines()
        .any(|l| l.starts_with("ok   multi-user.target reached (")));
    assert!(f.stdout.contains("ok   no failed units"));
    assert_tally(f, " passed, 0 failed");
}

/// [`assert_passed`], and the boot went through `firmware` (`BIOS`, `UEFI`).
fn assert_booted_by(f: &Finished, firmware: &str) {
    assert_passed(f, firmware);
    let said = format!("{firmware} firmware runs the image's boot loader");
    assert!(f.stderr.contains(&said), "{}", f.stderr);
}

/// Asserts the last line of `verify`'s report ends with `tally`.
fn assert_tally(f: &Finished, tally: &str) {
    assert!(f.stdout.trim_end().ends_with(tally), "{}", f.stdout);
}

#[test]
fn verify_passes_on_the_hello_example_and_leaves_the_image_unchanged() {
    fixture::skip_unless_root!();
    let h = hello();
    assert_booted_by(&h.bios, "BIOS");
    assert_eq!(
        sha256sum(&h.image),
        h.sha256_before,
        "verify changed the image"
    );
}

#[test]
fn uefi_boot_through_ovmf_and_the_esp_passes() {
    fixture::skip_unless_root!();
    let h = hello();
    assert_booted_by(&h.uefi, "UEFI");
}

#[test]
fn two_boots_of_one_image_get_two_machine_ids() {
    fixture::skip_unless_root!();
    let h = hello();
    let (a, b) = (note(&h.bios, "machine-id"), note(&h.uefi, "machine-id"));
    assert_eq!(a.len(), 32, "{a:?}");
    assert_ne!(a, b, "both boots came up with the same machine id");
}

#[test]
fn sshd_is_active_with_host_keys_generated_at_first_boot() {
    fixture::skip_unless_root!();
    let h = hello();
    assert!(h
        .bios
        .stdout
        .contains("ok   expect_active(\"ssh.service\")"));
    let (a, b) = (note(&h.bios, "host-key"), note(&h.uefi, "host-key"));
    assert!(a.starts_with("SHA256:"), "{a:?}");
    assert_ne!(
        a, b,
        "two boots share an SSH host key: it came from the image"
    );
}

#[test]
fn a_grown_gpt_with_its_backup_header_moved_boots() {
    fixture::skip_unless_root!();
    let h = hello();
    let mut disk = std::fs::File::open(&h.image).unwrap();
    let table = pgimg::image::gpt::read(&mut disk).unwrap();
    let size = std::fs::metadata(&h.image).unwrap().len();
    assert_eq!(size, 3 << 30);
    assert_eq!(
        table.backup_lba(),
        size / 512 - 1,
        "backup GPT header not at the end"
    );
    assert_passed(&h.bios, "BIOS on the grown disk");
    let root_bytes: u64 = note(&h.bios, "root-bytes").parse().unwrap();
    assert!(
        root_bytes > (5 << 29),
        "the booted root file system is {root_bytes} bytes: not grown"
    );
}

// ---------------------------------------------------------- failures ---

#[test]
fn verify_fails_naming_a_unit_whose_exec_start_is_bin_false() {
    fixture::skip_unless_root!();
    let recipe = write(
        "broken-unit.rhai",
        r#"
systemd_unit("broken.service", `
[Unit]
Description=A unit that always fails

[Service]
Type=oneshot
ExecStart=/bin/false

[Install]
WantedBy=multi-user.target
`, #{ enable: true });
"#,
    );
    let image = build("broken-unit", &recipe, &[]);
    let f = verify(
        &image,
        &["--no-recipe-checks", "--timeout", "900"],
        Duration::from_secs(1000),
    );
    assert_eq!(f.code(), Some(1), "{}\n{}", f.stdout, f.stderr);
    for said in [
        "FAIL no failed units: failed: broken.service",
        "--- broken.service: journal tail",
        "ok   multi-user.target reached (",
    ] {
        assert_has_any(&f.stdout, &[said], "the report misses a line");
    }
    assert_tally(&f, "1 passed, 1 failed");
}

#[test]
fn verify_of_an_image_that_cannot_boot_fails_within_its_timeout_with_the_console_tail() {
    fixture::skip_unless_root!();
    let recipe = write(
        "bad-fstab.rhai",
        "write_file(\"/etc/fstab\", \"LABEL=matches-nothing / ext4 defaults 0 1\\n\");\n",
    );
    let image = build("bad-fstab", &recipe, &[]);
    // A direct kernel boot takes root= from the fstab, as a cloud's
    // generated boot entry would.
    let f = verify(
        &image,
        &["--kernel", "direct", "--timeout", "60"],
        Duration::from_secs(240),
    );
    assert_eq!(f.code(), Some(1), "{}\n{}", f.stdout, f.stderr);
    assert!(
        f.stdout.contains("FAIL boot reaches multi-user.target"),
        "{}",
        f.stdout
    );
    // Either the limit passed, or the initramfs gave up first and rebooted.
    assert_has_any(
        &f.stdout,
        &["within 60 s", "(limit 60 s)"],
        "no limit named",
    );
    assert!(f.stdout.contains("console (last lines):"), "{}", f.stdout);
    assert_has_any(
        &f.stdout,
        &["root file system", "matches-nothing"],
        "the console tail does not show the initramfs looking for the root",
    );
    assert!(f.seconds < 180.0, "took {:.0} s", f.seconds);
}
