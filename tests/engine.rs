//! The Rhai host end to end: error locations, limits, imports, strictness.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pgimg::engine::Limits;
use pgimg_stdlib::{FakeTarget, Target};

#[path = "support/recipes.rs"]
mod recipes;
use recipes::{recipe_dir, run_on_fake};

fn run(dir: &Path, main: &str, limits: Limits) -> (Arc<FakeTarget>, Result<(), String>) {
    run_on_fake(&dir.join(main), &limits)
}

fn shown(dir: &Path, file: &str) -> String {
    PathBuf::from(dir).join(file).display().to_string()
}

#[test]
fn primitive_error_names_file_line_col_and_primitive() {
    let d = recipe_dir(&[(
        "main.rhai",
        "let x = 1;\n  write_file(\"relative\", \"x\");\n",
    )]);
    let err = run(d.path(), "main.rhai", Limits::default()).1.unwrap_err();
    let prefix = format!("{}:2:3: write_file: ", shown(d.path(), "main.rhai"));
    assert!(err.starts_with(&prefix), "{err}");
    assert!(
        err.ends_with("`relative` must be an absolute path inside the image"),
        "{err}"
    );
}

#[test]
fn error_inside_an_imported_module_names_the_module_file() {
    let d = recipe_dir(&[
        (
            "main.rhai",
            "import \"common/base\" as base;\nbase::setup();\n",
        ),
        (
            "common/base.rhai",
            "fn setup() {\n    mkdir(\"/opt/x\", #{ mdoe: 0o755 });\n}\n",
        ),
    ]);
    let err = run(d.path(), "main.rhai", Limits::default()).1.unwrap_err();
    let expected = format!(
        "{}:2:5: mkdir: options: unknown field `mdoe`, expected `mode` or `owner`",
        shown(d.path(), "common/base.rhai")
    );
    assert_eq!(err, expected);
}

#[test]
fn nested_imports_resolve_beside_the_importing_file_and_run_once() {
    let d = recipe_dir(&[
        (
            "main.rhai",
            "import \"common/a\" as a;\nimport \"common/b\" as b;\na::go2();\nb::go2();\n",
        ),
        ("common/a.rhai", "import \"c\" as c;\nfn go2() { }\n"),
        ("common/b.rhai", "import \"c\" as c;\nfn go2() { }\n"),
        ("common/c.rhai", "append_file(\"/count\", \"x\");\n"),
    ]);
    let (t, r) = run(d.path(), "main.rhai", Limits::default());
    r.unwrap();
    assert_eq!(t.root().read_string("/count").unwrap(), "x");
}

#[test]
fn missing_module_is_reported_with_its_path() {
    let d = recipe_dir(&[("main.rhai", "import \"nope\" as n;\n")]);
    let err = run(d.path(), "main.rhai", Limits::default()).1.unwrap_err();
    assert!(err.contains("cannot import `nope`"), "{err}");
    assert!(err.contains("nope.rhai"), "{err}");
    assert!(
        err.starts_with(&format!("{}:1:", shown(d.path(), "main.rhai"))),
        "{err}"
    );
}

#[test]
fn endless_loop_is_stopped_by_the_operation_limit() {
    let d = recipe_dir(&[("main.rhai", "let x = 0;\nloop { x += 1; }\n")]);
    let limits = Limits {
        max_operations: 100_000,
        ..Limits::default()
    };
    let err = run(d.path(), "main.rhai", limits).1.unwrap_err();
    assert!(err.contains("too many operations"), "{err}");
    assert!(err.contains("endless loop"), "{err}");
}

#[test]
fn endless_loop_is_stopped_by_the_wall_clock() {
    let d = recipe_dir(&[("main.rhai", "let x = 0;\nloop { x += 1; }\n")]);
    let limits = Limits {
        max_operations: 0,
        wall_clock: Duration::from_millis(200),
        ..Limits::default()
    };
    let err = run(d.path(), "main.rhai", limits).1.unwrap_err();
    assert!(err.contains("longer than its 0s budget"), "{err}");
}

#[test]
fn eval_is_disabled_and_variables_are_strict() {
    let d = recipe_dir(&[
        ("eval.rhai", "eval(\"1\");\n"),
        ("strict.rhai", "write_file(\"/a\", typo_var);\n"),
        ("deep.rhai", "fn f(n) { f(n + 1) }\nf(0);\n"),
        ("throw.rhai", "\n throw \"custom\";\n"),
    ]);
    let err = run(d.path(), "eval.rhai", Limits::default()).1.unwrap_err();
    assert!(err.contains("eval"), "{err}");
    let err = run(d.path(), "strict.rhai", Limits::default())
        .1
        .unwrap_err();
    assert!(err.contains("typo_var"), "{err}");
    assert!(
        err.starts_with(&format!("{}:1:", shown(d.path(), "strict.rhai"))),
        "{err}"
    );
    let err = run(d.path(), "deep.rhai", Limits::default()).1.unwrap_err();
    assert!(err.contains("runaway recursion"), "{err}");
    let err = run(d.path(), "throw.rhai", Limits::default())
        .1
        .unwrap_err();
    assert_eq!(
        err,
        format!("{}:2:2: custom", shown(d.path(), "throw.rhai"))
    );
}
