//! The CLI as a user runs it: recipe tests, check, plan, defs.

use std::path::Path;
use std::process::{Command, Output};

#[path = "support/recipes.rs"]
mod recipes;
use recipes::recipe_dir;

fn pgimg(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pgimg"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running pgimg")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts that `o` is a usage error (exit 2) whose output says `says`;
/// returns the output.
fn usage_error(o: &Output, says: &str) -> String {
    let out = text(o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(out.contains(says), "wanted {says:?} in: {out}");
    out
}

/// `pgimg test .` in `dir`: its output must say each of `says` and end with
/// "`passed` passed, `failed` failed" (exit 1 when a test failed).
fn recipe_tests(dir: &Path, passed: usize, failed: usize, says: &[&str]) {
    let o = pgimg(&["test", "."], dir);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(i32::from(failed > 0)), "{out}");
    for line in says {
        assert!(out.contains(line), "wanted {line:?} in: {out}");
    }
    let summary = format!("{passed} passed, {failed} failed");
    assert!(out.trim_end().ends_with(&summary), "{out}");
}

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Every recipe test in the repository passes (`pgimg test` with its defaults).
#[test]
fn repository_recipe_tests_pass() {
    let o = pgimg(&["test"], repo());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    let last = out.lines().last().unwrap_or_default().to_string();
    assert!(last.ends_with(" passed, 0 failed"), "{out}");
    assert!(!last.starts_with("0 passed"), "{out}");
}

#[test]
fn failing_recipe_test_fails_the_run_with_its_location() {
    let d = recipe_dir(&[
        ("r.rhai", "write_file(\"/etc/x\", \"1\");\n"),
        (
            "r.test.rhai",
            "fn test_good() {\n let t = fake_rootfs();\n t.run(\"r.rhai\");\n assert(t.file(\"/etc/x\") == \"1\", \"x written\");\n}\n\
             fn test_bad() {\n let t = fake_rootfs(#{ arch: \"arm64\" });\n t.run(\"r.rhai\");\n assert_eq(t.file(\"/etc/x\"), \"2\");\n}\n",
        ),
    ]);
    recipe_tests(
        d.path(),
        1,
        1,
        &[
            "ok   r.test.rhai::test_good",
            "FAIL r.test.rhai::test_bad",
            "r.test.rhai:9:2: assert_eq: left: \"1\", right: \"2\"",
        ],
    );
}

#[test]
fn check_exits_2_with_the_error() {
    let d = recipe_dir(&[
        ("ok.rhai", "mkdir(\"/opt/a\");\n"),
        ("bad.rhai", "mkdir(\"/opt/a\");\nmkdir(\"rel\");\n"),
    ]);
    let o = pgimg(&["check", "ok.rhai"], d.path());
    assert!(o.status.success(), "{}", text(&o));
    let o = pgimg(&["check", "ok.rhai", "bad.rhai"], d.path());
    let out = text(&o);
    assert_eq!(o.status.code(), Some(2), "{out}");
    assert!(
        out.contains("bad.rhai:2:1: mkdir: `rel` must be an absolute path"),
        "{out}"
    );
}

#[test]
fn plan_json_is_one_array_with_primitive_args_location() {
    let d = recipe_dir(&[(
        "p.rhai",
        "write_file(\"/etc/a\", \"x\", #{ mode: 0o600 });\nrun([\"true\"]);\n",
    )]);
    let o = pgimg(&["plan", "--json", "p.rhai"], d.path());
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let a = v.as_array().unwrap();
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["primitive"], "write_file");
    assert_eq!(a[0]["args"][0], "/etc/a");
    assert_eq!(a[0]["location"]["file"], "p.rhai");
    assert_eq!(a[0]["location"]["line"], 1);
    assert_eq!(a[1]["commands"][0], "true");
    let o = pgimg(&["plan", "p.rhai"], d.path());
    let out = text(&o);
    assert!(
        out.contains("write_file \"/etc/a\" \"x\" {\"mode\":\"0o600\"}"),
        "{out}"
    );
}

#[test]
fn defs_lists_every_primitive_with_docs() {
    let o = pgimg(&["defs"], repo());
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for f in [
        "arch",
        "image_arch",
        "os_release",
        "param",
        "log",
        "apt_repo",
        "apt_update",
        "apt_install",
        "apt_purge",
        "apt_download",
        "fetch_verify",
        "write_file",
        "append_file",
        "copy_asset",
        "mkdir",
        "symlink",
        "remove",
        "add_group",
        "add_user",
        "add_to_group",
        "systemd_unit",
        "systemd_dropin",
        "go_build",
        "pgxs_build",
        "run",
    ] {
        assert!(out.contains(&format!("fn {f}(")), "defs misses {f}:\n{out}");
    }
    assert!(out.contains("/// Writes `content` to `path`"), "{out}");
}

/// Commands that only report on stdout end quietly when their reader goes
/// away (`| head`), as Unix filters do: no "failed printing to stdout"
/// panic, no backtrace.
#[test]
fn a_reader_that_goes_away_ends_a_report_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    for args in [
        &["defs"][..],
        &["plan", "recipes/standard.rhai"][..],
        &["test"][..],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pgimg"))
            .args(args)
            .current_dir(repo())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Read one byte, then close the pipe as `head -c 1` does.
        let mut stdout = child.stdout.take().unwrap();
        let mut one = [0u8; 1];
        stdout.read_exact(&mut one).unwrap();
        drop(stdout);
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let status = child.wait().unwrap();
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert_ne!(status.code(), Some(101), "{args:?}: {stderr}");
    }
}

/// `--compress` only applies to qcow2: with a raw output it is a usage
/// error before anything is built, not silently ignored.
#[test]
fn compress_without_qcow2_is_a_usage_error() {
    let o = pgimg(
        &[
            "run",
            "recipes/examples/hello.rhai",
            "--compress",
            "--output",
            "/nonexistent/x.raw",
        ],
        repo(),
    );
    usage_error(&o, "--format qcow2");
}

/// A checkpoint interval that is not a number, from the flag or from
/// `PGIMG_CHECKPOINT_MIN_SECONDS`, is refused instead of silently replaced
/// by the default.
#[test]
fn a_checkpoint_interval_that_is_not_a_number_is_refused() {
    let args = [
        "run",
        "recipes/examples/hello.rhai",
        "--output",
        "/nonexistent/x.raw",
    ];
    let from_env = Command::new(env!("CARGO_BIN_EXE_pgimg"))
        .args(args)
        .env("PGIMG_CHECKPOINT_MIN_SECONDS", "abc")
        .current_dir(repo())
        .output()
        .unwrap();
    usage_error(&from_env, "PGIMG_CHECKPOINT_MIN_SECONDS");
    let mut with_flag = args.to_vec();
    with_flag.extend(["--checkpoint-min-seconds=-1"]);
    let o = pgimg(&with_flag, repo());
    usage_error(&o, "is not a number of seconds");
}

/// `pgimg check --set` with a name no `param()` reads: most likely a typo,
/// which would otherwise build with the default. Exit 2, naming it.
#[test]
fn a_set_the_recipe_never_reads_is_a_usage_error() {
    let d = recipe_dir(&[("r.rhai", "log(param(\"greeting\", \"hello\"));\n")]);
    let o = pgimg(&["check", "r.rhai", "--set", "greeting=hi"], d.path());
    assert!(o.status.success(), "{}", text(&o));
    let o = pgimg(&["check", "r.rhai", "--set", "greting=hi"], d.path());
    let out = usage_error(
        &o,
        "r.rhai: --set greting: the recipe never reads this parameter",
    );
    assert!(!out.contains("r.rhai: ok"), "{out}");
}

/// With several recipes, as with `lock`, a `--set` or `--mirror` is unused
/// only when no recipe asks for it: `check recipes/*.rhai --set p=…` passes
/// when one of them reads `p`.
#[test]
fn check_and_lock_of_several_recipes_refuse_a_name_none_of_them_asks_for() {
    let d = recipe_dir(&[
        ("a.rhai", "log(param(\"x\", \"1\"));\n"),
        ("b.rhai", "log(\"b\");\n"),
    ]);
    for cmd in ["check", "lock"] {
        let o = pgimg(&[cmd, "a.rhai", "b.rhai", "--set", "x=2"], d.path());
        assert!(o.status.success(), "{cmd}: {}", text(&o));
        let o = pgimg(&[cmd, "a.rhai", "b.rhai", "--set", "y=2"], d.path());
        usage_error(&o, "--set y: no recipe reads this parameter");
        let o = pgimg(&[cmd, "b.rhai", "--set", "x=2"], d.path());
        usage_error(&o, "--set x:");
    }
}

/// A recipe test that runs a recipe with a parameter it never reads fails,
/// as `--set` with that name fails a build: the typo is caught where it is
/// cheapest. Parameters an earlier run on the same root read do not count.
#[test]
fn a_recipe_test_passing_a_parameter_the_recipe_never_reads_fails() {
    let d = recipe_dir(&[
        ("r.rhai", "log(param(\"greeting\", \"hi\"));\n"),
        ("other.rhai", "log(\"other\");\n"),
        (
            "r.test.rhai",
            "fn test_read() {\n let t = fake_rootfs();\n t.run(\"r.rhai\", #{ greeting: \"yo\" });\n}\n\
             fn test_typo() {\n let t = fake_rootfs();\n t.run(\"r.rhai\", #{ greting: \"yo\" });\n}\n\
             fn test_earlier_read() {\n let t = fake_rootfs();\n t.run(\"r.rhai\", #{ greeting: \"yo\" });\n t.run(\"other.rhai\", #{ greeting: \"yo\" });\n}\n",
        ),
    ]);
    recipe_tests(
        d.path(),
        1,
        2,
        &[
            "ok   r.test.rhai::test_read",
            "FAIL r.test.rhai::test_typo",
            "--set greting: the recipe never reads",
            "FAIL r.test.rhai::test_earlier_read",
        ],
    );
}

/// A `--size` that is not whole 512-byte sectors, or too large to count, is
/// refused before the fixture is built or the base copied.
#[test]
fn a_size_that_is_not_whole_sectors_or_too_large_is_refused_up_front() {
    for (size, says) in [
        ("2.3G", "not a whole number of 512-byte sectors"),
        ("99999999999T", "is too large"),
    ] {
        let arg = format!("--size={size}");
        let o = pgimg(
            &[
                "run",
                "recipes/examples/hello.rhai",
                &arg,
                "--output",
                "/nonexistent/x.raw",
            ],
            repo(),
        );
        let out = usage_error(&o, says);
        assert!(!out.contains("stage acquire"), "{size}: {out}");
    }
}

/// `pgimg lock --base` with a URL that names no file (a server's root, a
/// folder listing) or holds whitespace is refused before any request and
/// before the lock file is touched.
#[test]
fn a_base_url_that_cannot_be_locked_is_refused_before_any_request() {
    let d = recipe_dir(&[("r.rhai", "log(\"x\");\n")]);
    for url in ["http://127.0.0.1:9/", "http://127.0.0.1:9/a b.img"] {
        let o = pgimg(
            &[
                "lock",
                "r.rhai",
                "--base",
                url,
                "--base-sha256",
                &"a".repeat(64),
            ],
            d.path(),
        );
        assert_eq!(o.status.code(), Some(2), "{url}: {}", text(&o));
        assert!(
            !d.path().join("pgimg.lock").exists(),
            "{url}: the lock was written"
        );
    }
}

/// `pgimg lock` resolves every architecture in turn, so it offers no
/// `--arch` to be silently ignored: its help does not list one, and one
/// given is refused before anything is resolved.
#[test]
fn lock_offers_no_arch_flag_since_it_resolves_every_architecture() {
    let help = text(&pgimg(&["lock", "--help"], repo()));
    assert!(help.contains("--os"), "{help}");
    assert!(!help.contains("--arch"), "{help}");
    let d = recipe_dir(&[("r.rhai", "log(\"x\");\n")]);
    let o = pgimg(&["lock", "r.rhai", "--arch", "arm64"], d.path());
    usage_error(&o, "resolves every architecture (amd64, arm64) in one run");
    assert!(
        !d.path().join("pgimg.lock").exists(),
        "the lock was written"
    );
}

/// `--base-sha256` takes either case, as `sha256sum` users paste it, and the
/// lock records it in lowercase like every other pin; what is not 64 hex
/// digits is refused before any request.
#[test]
fn a_base_sha256_in_uppercase_is_locked_in_lowercase() {
    let d = recipe_dir(&[("r.rhai", "log(\"x\");\n")]);
    let url = "http://127.0.0.1:9/base.img";
    let upper = "AB".repeat(32);
    let o = pgimg(
        &["lock", "r.rhai", "--base", url, "--base-sha256", &upper],
        d.path(),
    );
    assert!(o.status.success(), "{}", text(&o));
    let lock = std::fs::read_to_string(d.path().join("pgimg.lock")).unwrap();
    assert!(
        lock.contains(&format!("url {url} {}", upper.to_lowercase())),
        "{lock}"
    );
    let o = pgimg(
        &["lock", "r.rhai", "--base", url, "--base-sha256", "xyz"],
        d.path(),
    );
    usage_error(&o, "is not a sha256");
}

/// `--rootfs DIR` runs the recipe on a folder in place: there is no image to
/// size, name, format or compress, so those flags are refused with it rather
/// than ignored, before the recipe runs.
#[test]
fn image_flags_are_refused_with_rootfs() {
    let d = recipe_dir(&[("r.rhai", "log(\"the recipe ran\");\n")]);
    let hex = "a".repeat(64);
    let conflict = "cannot be used with";
    for (flag, says) in [
        (&["--size", "8G"][..], conflict),
        (&["--output", "x.raw"], conflict),
        (&["--format", "qcow2"], conflict),
        (&["--compress"], conflict),
        (&["--base-sha256", &hex], "which has no base"),
        (
            &["--base-sha256-from", "http://127.0.0.1:9/SUMS"],
            "which has no base",
        ),
    ] {
        let mut args = vec!["run", "r.rhai", "--rootfs", "root"];
        args.extend(flag);
        let o = pgimg(&args, d.path());
        usage_error(&o, says);
        assert!(!text(&o).contains("the recipe ran"), "{}", text(&o));
    }
}

/// A base meant as a URL but not written `http://` or `https://` (an
/// uppercase scheme, `ftp://`) is read as a path; the error says what a URL
/// base looks like instead of only "no such file".
#[test]
fn a_base_url_with_another_scheme_says_what_a_url_base_looks_like() {
    for base in ["HTTP://127.0.0.1:9/x.img", "ftp://127.0.0.1:9/x.img"] {
        let o = pgimg(
            &[
                "run",
                "recipes/examples/hello.rhai",
                "--base",
                base,
                "--output",
                "/nonexistent/x.raw",
            ],
            repo(),
        );
        let out = usage_error(&o, "starts with http:// or https://, in lowercase");
        assert!(out.contains(base), "{out}");
    }
}

/// A recipe file that does not exist is named the same way by every command
/// that runs recipes.
#[test]
fn a_missing_recipe_is_named_alike_by_every_command() {
    let d = recipe_dir(&[("r.rhai", "log(\"x\");\n")]);
    for args in [
        &["check", "nope.rhai"][..],
        &["plan", "nope.rhai"],
        &["lock", "nope.rhai"],
        &["run", "nope.rhai", "--output", "/nonexistent/x.raw"],
    ] {
        let o = pgimg(args, d.path());
        usage_error(&o, "nope.rhai: no such recipe");
    }
}

/// stderr is a pipe nobody reads (`pgimg … 2>&1 | head` after head exits):
/// every line pgimg writes there fails with EPIPE. A command that does the
/// work (`run`, `lock`, …) still exits with its own status, not 101 from a
/// panic in `eprintln!`; a filter (`check`, `plan`, `defs`, …) dies of
/// SIGPIPE, as `cat` would, which a shell reports as 141.
#[test]
fn a_closed_stderr_keeps_the_exit_status() {
    use std::os::unix::process::ExitStatusExt;
    let d = recipe_dir(&[("bad.rhai", "let x = ;\n")]);
    for (args, code, signal) in [
        (&["lock", "nope.rhai"][..], Some(2), None),
        (&["lock", "bad.rhai"][..], Some(2), None),
        (&["check", "nope.rhai"][..], None, Some(libc::SIGPIPE)),
    ] {
        let (reader, writer) = nix::unistd::pipe().unwrap();
        drop(reader);
        let status = Command::new(env!("CARGO_BIN_EXE_pgimg"))
            .args(args)
            .current_dir(d.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(writer))
            .status()
            .unwrap();
        assert_eq!(
            (status.code(), status.signal()),
            (code, signal),
            "pgimg {args:?}"
        );
    }
}
