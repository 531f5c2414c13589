//! Recipes written into a temporary folder and run on a fake root, for
//! tests of the Rhai host that need no privileges.
//!
//! Use it from a test file with `#[path = "support/recipes.rs"] mod recipes;`.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;

use pgimg::engine::{build_engine, run_file, Limits};
use pgimg_stdlib::{Ctx, FakeTarget};

/// A temporary folder holding `files` (relative path → text), with any
/// folders they need.
pub fn recipe_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
    pgimg_stdlib::fake::host_dir(files)
}

/// A symbolic link `dir/link` to `dir/target` (both relative to `dir`).
pub fn link_in(dir: &Path, target: &str, link: &str) {
    std::os::unix::fs::symlink(dir.join(target), dir.join(link)).unwrap();
}

/// Runs `recipe` on a fresh fake root under `limits`, its log discarded;
/// returns the fake target and the error, if any.
pub fn run_on_fake(recipe: &Path, limits: &Limits) -> (Arc<FakeTarget>, Result<(), String>) {
    let target = Arc::new(FakeTarget::ubuntu());
    let ctx = Ctx::new(target.clone()).with_log(Arc::new(|_, _| {}));
    let engine = build_engine(&ctx, limits);
    let r = run_file(&engine, recipe).map_err(|e| e.0);
    (target, r)
}
