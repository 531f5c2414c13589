//! Command-line interface: argument definitions and the commands that need no image.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use clap::{Args, Parser, Subcommand};
use pgimg_stdlib::ctx::{Action, Journal};
use pgimg_stdlib::fetch::RecordingFetcher;
use pgimg_stdlib::{Ctx, FakeOs, FakeTarget};

use crate::engine::{build_engine, display_path, run_file, Limits};
use crate::testing;

/// Exit status: the build (or a test) failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: bad usage or a recipe error.
pub const EXIT_USAGE: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "pgimg",
    version,
    about = "Build PostgreSQL virtual-machine images from Rhai recipes",
    long_about = "Build PostgreSQL virtual-machine images from Rhai recipes.\n\n\
        A recipe is a Rhai script calling primitives (apt_repo, apt_download, fetch_verify, \
        add_user, systemd_unit, go_build, pgxs_build, run, ...) that act inside the image root.\n\n\
        Try it without an image:\n  \
        pgimg plan recipes/examples/everything.rhai     # what the recipe would do\n  \
        pgimg test recipes                              # run the recipe tests\n\n\
        Exit status: 0 ok, 1 build or test failed, 2 usage or recipe error."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Compile recipes, resolve imports and run them on a fake root (no root, no network).
    Check {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        fake: FakeArgs,
    },
    /// Print the ordered actions a recipe would perform, without running anything.
    Plan {
        recipe: PathBuf,
        #[command(flatten)]
        fake: FakeArgs,
        /// One JSON array of {primitive, args, location, commands}.
        #[arg(long)]
        json: bool,
    },
    /// Run recipe tests (`*.test.rhai`) against fake roots.
    Test {
        /// Files or folders to search (default: recipes/ and tests/).
        paths: Vec<PathBuf>,
    },
    /// Write a `.d.rhai` definitions file of every primitive, for editor completion.
    Defs {
        /// Output file (default: stdout).
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

/// The fake root `check` and `plan` run on, and recipe parameters.
#[derive(Args, Debug, Clone)]
pub struct FakeArgs {
    /// Recipe parameter, as read by `param(name)`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub set: Vec<(String, String)>,
    /// Debian architecture of the pretend image.
    #[arg(long, default_value = "amd64", value_parser = ["amd64", "arm64"])]
    pub arch: String,
    /// Pretend distribution as ID:VERSION_ID:CODENAME.
    #[arg(long, default_value = "ubuntu:22.04:jammy", value_parser = parse_os)]
    pub os: (String, String, String),
    /// Redirect a named source (e.g. `ubuntu`, `pgdg`, `releases`) to another URL; repeatable.
    #[arg(long = "mirror", value_name = "NAME=URL", value_parser = parse_kv)]
    pub mirror: Vec<(String, String)>,
    /// Extra asset folder searched after the recipe's own `assets/`; repeatable.
    #[arg(long = "assets", value_name = "DIR")]
    pub assets: Vec<PathBuf>,
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn parse_os(s: &str) -> Result<(String, String, String), String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [id, v, c] if !id.is_empty() && !v.is_empty() && !c.is_empty() => {
            Ok((id.to_string(), v.to_string(), c.to_string()))
        }
        _ => Err(format!("`{s}` is not ID:VERSION_ID:CODENAME (e.g. ubuntu:22.04:jammy)")),
    }
}

/// Runs a recipe on a fake root; returns the journal or the error message.
pub fn dry_run(recipe: &Path, fake: &FakeArgs) -> Result<Journal, String> {
    let os = FakeOs {
        id: fake.os.0.clone(),
        version_id: fake.os.1.clone(),
        codename: fake.os.2.clone(),
        arch: fake.arch.clone(),
    };
    let target = FakeTarget::new(&os, Box::new(RecordingFetcher::default()))
        .map_err(|e| format!("creating a fake root: {e}"))?;
    let journal = Arc::new(Mutex::new(Journal::default()));
    let ctx = Ctx::new(Arc::new(target))
        .with_params(fake.set.iter().cloned().collect::<BTreeMap<_, _>>())
        .with_asset_dirs(testing::asset_dirs(recipe, &fake.assets))
        .with_mirrors(fake.mirror.iter().cloned().collect())
        .with_log(Arc::new(|_, _| {}));
    let ctx = Ctx {
        journal: journal.clone(),
        ..ctx
    };
    let engine = build_engine(&ctx, &Limits::default());
    run_file(&engine, recipe)?;
    drop(engine);
    drop(ctx);
    let journal = std::mem::take(&mut *journal.lock().unwrap());
    Ok(journal)
}

/// `pgimg check`.
pub fn check(recipes: &[PathBuf], fake: &FakeArgs) -> i32 {
    let mut status = 0;
    for r in recipes {
        match dry_run(r, fake) {
            Ok(j) => println!("{}: ok ({} actions)", display_path(r), j.actions.len()),
            Err(e) => {
                eprintln!("{e}");
                status = EXIT_USAGE;
            }
        }
    }
    status
}

fn summarize_args(args: &serde_json::Value) -> String {
    let parts: Vec<String> = match args {
        serde_json::Value::Array(items) => items
            .iter()
            .filter(|v| !matches!(v, serde_json::Value::Object(m) if m.is_empty()))
            .map(|v| match v {
                serde_json::Value::String(s) if s.contains('\n') => {
                    format!("<{} lines>", s.lines().count())
                }
                serde_json::Value::Object(m) => {
                    let mut m = m.clone();
                    if let Some(mode) = m.get("mode").and_then(|v| v.as_i64()) {
                        m.insert("mode".into(), format!("0o{mode:o}").into());
                    }
                    serde_json::Value::Object(m).to_string()
                }
                other => other.to_string(),
            })
            .collect(),
        other => vec![other.to_string()],
    };
    parts.join(" ")
}

/// Renders the plan for people: grouped by recipe file, commands and pins under each call.
pub fn render_plan(journal: &Journal) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for Action {
        primitive,
        args,
        location,
        commands,
    } in &journal.actions
    {
        if current != Some(location.file.as_str()) {
            out.push_str(&format!("\n{}\n", location.file));
            current = Some(location.file.as_str());
        }
        out.push_str(&format!(
            "  {:>4}:{:<3} {} {}\n",
            location.line,
            location.col,
            primitive,
            summarize_args(args)
        ));
        for c in commands {
            out.push_str(&format!("             $ {c}\n"));
        }
    }
    if !journal.inputs.is_empty() {
        out.push_str("\ninputs (every one pinned)\n");
        for i in &journal.inputs {
            out.push_str(&format!("  {:<4} {} @ {} -> {}\n", i.kind, i.url, i.pin, i.dest));
        }
    }
    out.trim_start().to_string()
}

/// `pgimg plan`.
pub fn plan(recipe: &Path, fake: &FakeArgs, json: bool) -> i32 {
    match dry_run(recipe, fake) {
        Ok(j) if json => {
            println!("{}", serde_json::to_string_pretty(&j.actions).expect("actions serialize"));
            0
        }
        Ok(j) => {
            print!("{}", render_plan(&j));
            0
        }
        Err(e) => {
            eprintln!("{e}");
            EXIT_USAGE
        }
    }
}

/// `pgimg test`.
pub fn test(paths: &[PathBuf]) -> i32 {
    let paths = if paths.is_empty() {
        vec![PathBuf::from("recipes"), PathBuf::from("tests")]
    } else {
        paths.to_vec()
    };
    let files = testing::discover(&paths);
    if files.is_empty() {
        eprintln!(
            "no *.test.rhai files under {}",
            paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        return EXIT_USAGE;
    }
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        for r in testing::run_test_file(&f) {
            match r.error {
                None => {
                    passed += 1;
                    println!("ok   {} ({:.2}s)", r.name, r.seconds);
                }
                Some(e) => {
                    failed += 1;
                    println!("FAIL {} ({:.2}s)\n     {}", r.name, r.seconds, e.replace('\n', "\n     "));
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        EXIT_FAILED
    } else {
        0
    }
}

/// `pgimg defs`: the primitives' signatures and doc comments for editors.
pub fn defs(output: Option<&Path>) -> i32 {
    let ctx = Ctx::new(Arc::new(FakeTarget::ubuntu()));
    let engine = build_engine(&ctx, &Limits::default());
    let text = engine
        .definitions()
        .include_standard_packages(false)
        .single_file();
    match output {
        Some(p) => match std::fs::write(p, text) {
            Ok(()) => {
                eprintln!("wrote {}", p.display());
                0
            }
            Err(e) => {
                eprintln!("writing {}: {e}", p.display());
                EXIT_FAILED
            }
        },
        None => {
            print!("{text}");
            0
        }
    }
}
