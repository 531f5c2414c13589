//! Recipe and build inputs that could name host files: base images that refer
//! to other files (backing file, external data file, VMDK extents), asset
//! symlinks leaving the assets folder, and imports resolved to the wrong file
//! or echoing a host file. Every test plants a host "secret" under a tempdir
//! and checks that it is refused and never copied or printed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use pgimg::engine::{build_engine, normalize, run_file, Limits};
use pgimg::image::{self, Format};
use pgimg_stdlib::fake::host_tool;
use pgimg_stdlib::{Ctx, FakeTarget, Target};

#[path = "support/recipes.rs"]
mod recipes;
use recipes::{link_in, recipe_dir, run_on_fake};

const SECRET: &[u8] = b"HOST-SECRET-a1b2c3 aws_secret_access_key=xyz\n";

/// A 1 MiB raw file that starts with [`SECRET`].
fn host_secret(dir: &Path) -> PathBuf {
    let p = dir.join("host-secret.raw");
    let mut data = SECRET.to_vec();
    data.resize(1 << 20, 0);
    std::fs::write(&p, data).unwrap();
    p
}

fn qemu_img(args: &[&str]) {
    let mut qemu_img = Command::new("qemu-img");
    qemu_img.args(args);
    host_tool(&mut qemu_img, "tests/setup.sh installs qemu-utils");
}

/// Copies `base` to a fresh work file and returns the error, checking that
/// no work file holding the secret was left behind.
fn refused_base(dir: &Path, base: &Path) -> String {
    let work = dir.join("work.raw");
    let err = image::copy_base(base, &work).expect_err("the base image must be refused");
    if let Ok(data) = std::fs::read(&work) {
        assert!(
            !data.windows(SECRET.len()).any(|w| w == SECRET),
            "the work copy holds the host file's content"
        );
    }
    let msg = err.to_string();
    assert!(
        !msg.contains("HOST-SECRET"),
        "the error echoes the host file: {msg}"
    );
    msg
}

#[test]
fn base_qcow2_with_backing_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = host_secret(dir.path());
    let base = dir.path().join("backed.qcow2");
    let secret_s = secret.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        secret_s,
        "-F",
        "raw",
        base.to_str().unwrap(),
    ]);
    let msg = refused_base(dir.path(), &base);
    assert!(
        msg.contains("has a backing file") && msg.contains(secret_s),
        "{msg}"
    );
}

#[test]
fn base_qcow2_with_external_data_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = host_secret(dir.path());
    let base = dir.path().join("b.qcow2");
    let secret_s = secret.to_str().unwrap();
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        &format!("data_file={secret_s},data_file_raw=on"),
        base.to_str().unwrap(),
        "1M",
    ]);
    let msg = refused_base(dir.path(), &base);
    assert!(
        msg.contains("keeps its data in another file") && msg.contains(secret_s),
        "{msg}"
    );
}

#[test]
fn base_vmdk_with_flat_extent_naming_a_host_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = host_secret(dir.path());
    // Named .img: the format is probed from the content, not the name.
    let base = dir.path().join("disk.img");
    std::fs::write(
        &base,
        format!(
            "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n\
             createType=\"monolithicFlat\"\n\nRW 2048 FLAT \"{}\" 0\n\n\
             ddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\n",
            secret.display()
        ),
    )
    .unwrap();
    let msg = refused_base(dir.path(), &base);
    assert!(
        msg.contains("is a vmdk image") && msg.contains("raw and qcow2 base images only"),
        "{msg}"
    );
}

#[test]
fn base_raw_and_self_contained_qcow2_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let raw = host_secret(dir.path());
    let work = dir.path().join("work.raw");
    let copied = image::copy_base(&raw, &work).unwrap();
    assert_eq!(copied.format, Format::Raw);
    assert_eq!(std::fs::read(&work).unwrap(), std::fs::read(&raw).unwrap());

    let qcow = dir.path().join("self.qcow2");
    qemu_img(&[
        "convert",
        "-q",
        "-f",
        "raw",
        "-O",
        "qcow2",
        raw.to_str().unwrap(),
        qcow.to_str().unwrap(),
    ]);
    let work2 = dir.path().join("work2.raw");
    let copied = image::copy_base(&qcow, &work2).unwrap();
    assert_eq!(copied.format, Format::Qcow2);
    assert_eq!(std::fs::read(&work2).unwrap(), std::fs::read(&raw).unwrap());
}

// ---- imports ----

/// Runs `recipe` on a fake root; returns the error and the fake target.
fn run_recipe(recipe: &Path) -> (Arc<FakeTarget>, Result<(), String>) {
    run_on_fake(recipe, &Limits::default())
}

/// `pgimg check RECIPE` run from `cwd`: (success, stdout + stderr).
fn pgimg_check(cwd: &Path, recipe: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pgimg"))
        .args(["check", recipe])
        .current_dir(cwd)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn leading_parent_dirs_are_not_cancelled_against_each_other() {
    assert_eq!(
        normalize(Path::new("../../m.rhai")),
        Path::new("../../m.rhai")
    );
    assert_eq!(normalize(Path::new("a/../../m")), Path::new("../m"));
    assert_eq!(normalize(Path::new("a/b/../../m")), Path::new("m"));
    assert_eq!(normalize(Path::new("/../etc")), Path::new("/etc"));
    assert_eq!(normalize(Path::new("./x/./y/..")), Path::new("x"));
}

#[test]
fn import_up_two_levels_from_a_relative_recipe_loads_that_file() {
    // Run from a/b as `pgimg check r.rhai`: `../../m` is <dir>/m.rhai, not a/b/m.rhai.
    let d = recipe_dir(&[
        ("m.rhai", "export const WHO = \"right\";\n"),
        ("a/b/m.rhai", "export const WHO = \"wrong\";\n"),
        (
            "a/b/r.rhai",
            "import \"../../m\" as m;\nif m::WHO != \"right\" { throw `loaded the ${m::WHO} module`; }\n",
        ),
    ]);
    let (ok, out) = pgimg_check(&d.path().join("a/b"), "r.rhai");
    assert!(ok, "{out}");
}

#[test]
fn import_inside_a_block_is_refused_with_its_location() {
    let d = recipe_dir(&[
        ("m.rhai", "write_file(\"/etc/from-module\", \"x\");\n"),
        (
            "main.rhai",
            "let x = 1;\nif x == 1 {\n    import \"m\" as m;\n}\n",
        ),
    ]);
    let (target, r) = run_recipe(&d.path().join("main.rhai"));
    let err = r.unwrap_err();
    let main = d.path().join("main.rhai").display().to_string();
    assert!(
        err.starts_with(&format!("{main}:3:5: `import` must be at the top level")),
        "{err}"
    );
    assert!(!target.root().exists("/etc/from-module"));
}

#[test]
fn import_inside_a_function_or_module_block_is_refused() {
    let d = recipe_dir(&[
        ("m.rhai", "fn f() {\n  import \"n\" as n;\n}\n"),
        ("n.rhai", "\n"),
        ("main.rhai", "import \"m\" as m;\n"),
    ]);
    let err = run_recipe(&d.path().join("main.rhai")).1.unwrap_err();
    let main = d.path().join("main.rhai").display().to_string();
    let m = d.path().join("m.rhai").display().to_string();
    assert!(
        err.starts_with(&format!("{main}:1:8: {m}:2:3: `import` must be")),
        "{err}"
    );
}

#[test]
fn top_level_import_is_evaluated_even_when_unused() {
    let d = recipe_dir(&[
        ("m.rhai", "write_file(\"/etc/from-module\", \"x\");\n"),
        ("main.rhai", "import \"m\" as m;\n"),
    ]);
    let (target, r) = run_recipe(&d.path().join("main.rhai"));
    r.unwrap();
    assert_eq!(target.root().read_string("/etc/from-module").unwrap(), "x");
}

#[test]
fn importing_a_host_file_names_the_import_and_echoes_nothing_from_it() {
    let d = recipe_dir(&[
        (
            "secret/credentials",
            "aws_secret_access_key = HOST-SECRET-a1b2c3\n",
        ),
        ("recipe/main.rhai", "let x = 1;\n\nimport \"creds\" as c;\n"),
    ]);
    link_in(d.path(), "secret/credentials", "recipe/creds.rhai");
    let main = d.path().join("recipe/main.rhai");
    let err = run_recipe(&main).1.unwrap_err();
    assert!(
        err.starts_with(&format!("{}:3:8: import `creds`: ", main.display())),
        "{err}"
    );
    assert!(err.contains("not a valid Rhai module"), "{err}");
    assert!(
        !err.contains("aws_secret_access_key") && !err.contains("HOST-SECRET"),
        "{err}"
    );

    // A file that is not a module by name is not read at all.
    std::fs::write(
        d.path().join("recipe/main.rhai"),
        "import \"../secret/credentials.txt\" as c;\n",
    )
    .unwrap();
    std::fs::copy(
        d.path().join("secret/credentials"),
        d.path().join("secret/credentials.txt"),
    )
    .unwrap();
    let err = run_recipe(&main).1.unwrap_err();
    assert!(
        err.starts_with(&format!(
            "{}:1:8: import `../secret/credentials.txt`: modules are .rhai files",
            main.display()
        )),
        "{err}"
    );
}

// ---- assets ----

/// A recipe folder with `assets/`, and a host folder outside it holding a
/// secret file and a secret unit.
struct AssetCase {
    dir: tempfile::TempDir,
}

impl AssetCase {
    fn new() -> AssetCase {
        let dir = recipe_dir(&[
            ("host/secret", "HOST-SECRET-a1b2c3\n"),
            ("host/dir/file", "HOST-SECRET-a1b2c3\n"),
            (
                "host/unit",
                "[Unit]\nDescription=HOST-SECRET-a1b2c3\n[Service]\nExecStart=/bin/true\n",
            ),
            ("recipe/assets/real.txt", "inside\n"),
        ]);
        AssetCase { dir }
    }

    fn link(&self, target: &str, link: &str) {
        std::os::unix::fs::symlink(
            self.dir.path().join(target),
            self.dir.path().join("recipe/assets").join(link),
        )
        .unwrap();
    }

    /// Runs `text` as recipe/main.rhai: (target, result, log lines).
    fn run(&self, text: &str) -> (Arc<FakeTarget>, Result<(), String>, String) {
        let main = self.dir.path().join("recipe/main.rhai");
        std::fs::write(&main, text).unwrap();
        let target = Arc::new(FakeTarget::ubuntu());
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let ctx = Ctx::new(target.clone())
            .with_asset_dirs(vec![self.dir.path().join("recipe/assets")])
            .with_log(Arc::new(move |_, msg| sink.lock().unwrap().push_str(msg)));
        let engine = build_engine(&ctx, &Limits::default());
        let r = run_file(&engine, &main).map_err(|e| e.0);
        let log = log.lock().unwrap().clone();
        (target, r, log)
    }
}

/// Links `name` in the assets folder to `target` outside it, runs `script`,
/// and checks the asset is refused without echoing the host file, and that
/// `absent` (an image path the script would write) was not written.
fn assert_escape_refused(target: &str, name: &str, script: &str, absent: Option<&str>) {
    let case = AssetCase::new();
    case.link(target, name);
    let (image, r, log) = case.run(script);
    let err = r.expect_err("the escaping asset must be refused");
    assert!(err.contains("leads out of"), "{err}");
    assert!(
        !err.contains("HOST-SECRET") && !log.contains("HOST-SECRET"),
        "{err}\n{log}"
    );
    if let Some(path) = absent {
        assert!(!image.root().exists(path), "{path} written");
    }
}

#[test]
fn read_asset_refuses_a_link_out_of_the_assets_folder() {
    assert_escape_refused("host/secret", "leak", "log(read_asset(\"leak\"));\n", None);
}

#[test]
fn copy_asset_refuses_a_file_under_a_linked_folder() {
    let script = "copy_asset(\"linked/file\", \"/etc/copied\");\n";
    assert_escape_refused("host/dir", "linked", script, Some("/etc/copied"));
}

#[test]
fn copy_asset_refuses_a_link_out_of_the_assets_folder() {
    let script = "copy_asset(\"linked\", \"/etc/copied\");\n";
    assert_escape_refused("host/dir", "linked", script, Some("/etc/copied"));
}

#[test]
fn systemd_unit_refuses_an_asset_link_out_of_the_assets_folder() {
    let script = "systemd_unit(\"x.service\", \"leakunit\");\n";
    let unit = Some("/etc/systemd/system/x.service");
    assert_escape_refused("host/unit", "leakunit", script, unit);
}

#[test]
fn asset_links_that_stay_inside_the_assets_folder_are_followed() {
    let case = AssetCase::new();
    std::os::unix::fs::symlink("real.txt", case.dir.path().join("recipe/assets/current")).unwrap();
    let (_, r, log) = case.run("log(read_asset(\"current\"));\n");
    r.unwrap();
    // The file's own newline is escaped in the log: a value cannot start a
    // log line of its own.
    assert_eq!(log, "inside\\n");
}

// ---- other recipe-supplied host paths: lock file, test API paths ----

#[test]
fn lock_file_linking_out_of_the_recipe_folder_is_refused() {
    let d = recipe_dir(&[
        (
            "host/credentials",
            "url https://x sha256:00 aws_secret=HOST-SECRET-a1b2c3\n",
        ),
        ("recipes/r.rhai", "\n"),
    ]);
    link_in(d.path(), "host/credentials", "recipes/pgimg.lock");
    let err = pgimg::lock::load_for(&d.path().join("recipes/r.rhai"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("leads out of"), "{err}");
    assert!(!err.contains("HOST-SECRET"), "{err}");
}

/// Runs a test file; returns its first failure.
fn test_file_error(dir: &Path, text: &str) -> String {
    let file = dir.join("recipes/x.test.rhai");
    std::fs::write(&file, text).unwrap();
    let results = pgimg::testing::run_test_file(&file);
    results
        .into_iter()
        .find_map(|r| r.error)
        .expect("the test file must fail")
}

#[test]
fn test_api_paths_stay_inside_the_test_files_folder() {
    let d = recipe_dir(&[
        ("host/secret", "HOST-SECRET-a1b2c3\n"),
        ("host/assets/leak.txt", "HOST-SECRET-a1b2c3\n"),
        ("host/r.rhai", "log(\"outside\");\n"),
        ("recipes/r.rhai", "log(read_asset(\"leak.txt\"));\n"),
    ]);
    link_in(d.path(), "host/secret", "recipes/fixture-link");
    let cases = [
        (
            "fake_rootfs(#{ fixtures: #{ \"http://127.0.0.1:1/f\": \"fixture-link\" } });",
            "fixture `fixture-link` leads out of",
        ),
        (
            "fake_rootfs(#{ fixtures: #{ \"http://127.0.0.1:1/f\": \"../host/secret\" } });",
            "fixture `../host/secret` must be a relative path inside",
        ),
        (
            "let t = fake_rootfs(#{ assets: [\"../host/assets\"] }); t.run(\"r.rhai\");",
            "asset folder `../host/assets` must be a relative path inside",
        ),
        (
            "let t = fake_rootfs(#{}); t.run(\"../host/r.rhai\");",
            "recipe `../host/r.rhai` must be a relative path inside",
        ),
    ];
    for (text, want) in cases {
        let err = test_file_error(d.path(), text);
        assert!(err.contains(want), "{text}: {err}");
        assert!(!err.contains("HOST-SECRET"), "{err}");
    }
}
