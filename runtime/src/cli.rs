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
        Exit status: 0 ok; 1 a build or test failed (including a recipe failing during `run`); \
        2 a usage error, or a recipe error found by `check` or `plan`."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build an image: copy the base, grow it, mount it, run the recipe inside, finalize, write the output.
    ///
    /// Needs root (loop devices, mounts, namespaces). Without --base or --rootfs the built-in
    /// Debian bookworm fixture image is used (built once with debootstrap and cached), so
    /// `pgimg run recipes/examples/hello.rhai --output hello.raw` works anywhere.
    /// The base image is never modified; nothing appears under --output unless the build succeeds.
    Run(RunArgs),
    /// Open an interactive shell inside an image (mounted the same way as for a build).
    ///
    /// Changes made in the shell are written to IMAGE. Everything is torn down on exit.
    Shell {
        image: PathBuf,
        /// Run this command instead of an interactive shell.
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Publish an image: S3-compatible upload, or AWS AMIs.
    #[command(subcommand)]
    Publish(crate::publish_cli::PublishCmd),
    /// Show an image's partition table, root file system, sizes and embedded manifest.
    Inspect {
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
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
    /// Resolve every pin of recipes (checksum lists, first-use files) into `pgimg.lock` beside them.
    ///
    /// Resolves for amd64 and arm64. `pgimg run --locked` then refuses any input that is not in
    /// the lock or does not match it.
    Lock {
        #[arg(required = true)]
        recipes: Vec<PathBuf>,
        #[command(flatten)]
        fake: FakeArgs,
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

/// Arguments of `pgimg run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The recipe to run.
    pub recipe: PathBuf,
    /// Base disk image (raw or qcow2, GPT with an ext4 root). Default: the built-in fixture.
    #[arg(long, conflicts_with = "rootfs")]
    pub base: Option<PathBuf>,
    /// Run on this directory in place instead of an image (no output file is written).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Final image size (e.g. 8G); the root partition and file system grow to fill it.
    #[arg(long, value_parser = crate::build::parse_size)]
    pub size: Option<u64>,
    /// Output image path. Default: <recipe name>-<x64|arm64>.<format> in the current folder.
    #[arg(long, short)]
    pub output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "raw")]
    pub format: crate::build::Format,
    /// Compress qcow2 output.
    #[arg(long)]
    pub compress: bool,
    /// Recipe parameter, as read by `param(name)`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub set: Vec<(String, String)>,
    /// Redirect a named source (see `mirror()` in docs/recipes.md); repeatable.
    #[arg(long = "mirror", value_name = "NAME=URL", value_parser = parse_kv)]
    pub mirror: Vec<(String, String)>,
    /// Extra asset folder searched after the recipe's own `assets/`; repeatable.
    #[arg(long = "assets", value_name = "DIR")]
    pub assets: Vec<PathBuf>,
    /// Refuse any input missing from `pgimg.lock` beside the recipe, or not matching it.
    #[arg(long)]
    pub locked: bool,
    /// Host cache for downloads, git sources, apt archives and Go caches.
    /// Default: $XDG_CACHE_HOME/pgimg (or ~/.cache/pgimg).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
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
        _ => Err(format!(
            "`{s}` is not ID:VERSION_ID:CODENAME (e.g. ubuntu:22.04:jammy)"
        )),
    }
}

/// What one run on a fake root left: the recipe's result, its journal
/// (also when it failed) and the `--mirror` names it never asked for.
pub struct Run {
    pub result: Result<(), String>,
    pub journal: Journal,
    pub unused_mirrors: Vec<String>,
}

/// Runs `recipe` on a fake `arch` root whose fetches go to `fetcher`: the
/// one dry run behind `check`, `plan` and `lock`.
pub fn run_on(
    recipe: &Path,
    fake: &FakeArgs,
    arch: &str,
    fetcher: Box<dyn pgimg_stdlib::fetch::Fetcher>,
) -> Result<Run, String> {
    let os = FakeOs {
        id: fake.os.0.clone(),
        version_id: fake.os.1.clone(),
        codename: fake.os.2.clone(),
        arch: arch.to_string(),
    };
    let target = FakeTarget::new(&os, fetcher).map_err(|e| format!("creating a fake root: {e}"))?;
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
    let result = run_file(&engine, recipe);
    let unused_mirrors = pgimg_stdlib::mirror::unused_mirrors(&ctx);
    drop(engine);
    drop(ctx);
    let journal = std::mem::take(&mut *journal.lock().unwrap());
    Ok(Run {
        result,
        journal,
        unused_mirrors,
    })
}

/// Runs a recipe on a fake root; returns the journal or the error message.
pub fn dry_run(recipe: &Path, fake: &FakeArgs) -> Result<Journal, String> {
    let run = run_on(
        recipe,
        fake,
        &fake.arch,
        Box::new(RecordingFetcher::default()),
    )?;
    run.result?;
    unused_mirrors_error(&run.unused_mirrors)?;
    Ok(run.journal)
}

/// A `--mirror` name the recipe never asked for is most likely a typo that
/// would silently leave the upstream source in place.
pub fn check_mirrors_used(ctx: &Ctx) -> Result<(), String> {
    unused_mirrors_error(&pgimg_stdlib::mirror::unused_mirrors(ctx))
}

fn unused_mirrors_error(unused: &[String]) -> Result<(), String> {
    if unused.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "--mirror {}: the recipe never asks for {} (see `mirror()` calls in the recipe)",
            unused.join(", "),
            if unused.len() == 1 {
                "this source"
            } else {
                "these sources"
            }
        ))
    }
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
        // The commands below say the rest; keep the call itself to one line.
        let limit = if commands.is_empty() { 240 } else { 100 };
        let mut summary = summarize_args(args);
        if summary.chars().count() > limit {
            summary = summary.chars().take(limit).collect::<String>() + " …";
        }
        out.push_str(&format!(
            "  {:>4}:{:<3} {} {}\n",
            location.line, location.col, primitive, summary
        ));
        for c in commands {
            out.push_str(&format!("             $ {c}\n"));
        }
    }
    if !journal.inputs.is_empty() {
        out.push_str("\ninputs (every one pinned)\n");
        for i in &journal.inputs {
            let pin = match (&i.from, i.pin.is_empty()) {
                (Some(from), true) => format!("sha256 from {from}"),
                _ => i.pin.clone(),
            };
            let dest = if i.dest.is_empty() {
                String::new()
            } else {
                format!(" -> {}", i.dest)
            };
            out.push_str(&format!("  {:<7} {} @ {pin}{dest}\n", i.kind, i.url));
        }
    }
    out.trim_start().to_string()
}

/// `pgimg plan`.
pub fn plan(recipe: &Path, fake: &FakeArgs, json: bool) -> i32 {
    match dry_run(recipe, fake) {
        Ok(j) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&j.actions).expect("actions serialize")
            );
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
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
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
                    println!(
                        "FAIL {} ({:.2}s)\n     {}",
                        r.name,
                        r.seconds,
                        e.replace('\n', "\n     ")
                    );
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
    let mut engine = build_engine(&ctx, &Limits::default());
    crate::testing::register_test_api(&mut engine);
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

/// `pgimg run`. Call inside the private mount namespace.
pub fn run(args: &RunArgs) -> i32 {
    use crate::build::{self, Base, RunOptions};
    let base = match (&args.base, &args.rootfs) {
        (_, Some(dir)) => Base::Rootfs(dir.clone()),
        (Some(img), None) => Base::Image(img.clone()),
        (None, None) => match crate::fixture::base_image() {
            Ok(img) => {
                eprintln!(
                    "pgimg: no --base given: using the built-in fixture {}",
                    img.display()
                );
                Base::Image(img)
            }
            Err(e) => {
                eprintln!("pgimg: building the built-in fixture image: {e}");
                return EXIT_FAILED;
            }
        },
    };
    if let Base::Image(img) = &base {
        if !img.is_file() {
            eprintln!("pgimg: --base {}: no such file", img.display());
            return EXIT_USAGE;
        }
    }
    if !args.recipe.is_file() {
        eprintln!("pgimg: {}: no such recipe", args.recipe.display());
        return EXIT_USAGE;
    }
    let arch = pgimg_stdlib::Facts {
        arch: pgimg_stdlib::target::host_arch()
            .unwrap_or("amd64")
            .to_string(),
    };
    let output = args.output.clone().unwrap_or_else(|| {
        let stem = args
            .recipe
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let ext = match args.format {
            build::Format::Raw => "raw",
            build::Format::Qcow2 => "qcow2",
        };
        PathBuf::from(format!("{stem}-{}.{ext}", arch.image_arch()))
    });
    let opts = RunOptions {
        recipe: args.recipe.clone(),
        base: base.clone(),
        size: args.size,
        output,
        format: args.format,
        compress: args.compress,
        params: args.set.iter().cloned().collect(),
        mirrors: args.mirror.iter().cloned().collect(),
        assets: args.assets.clone(),
        locked: args.locked,
        cache_dir: args
            .cache_dir
            .clone()
            .unwrap_or_else(pgimg_stdlib::fetch::default_cache_dir),
        limits: Limits::default(),
    };
    let result = match &base {
        Base::Rootfs(dir) => build::run_rootfs(&opts, dir),
        Base::Image(img) => build::run_image(&opts, img),
    };
    match result {
        Ok(_) => 0,
        Err(e) => {
            match e.downcast_ref::<build::RecipeFailed>() {
                Some(r) => eprintln!("pgimg: build failed: {r}"),
                None => eprintln!("pgimg: build failed: {e:#}"),
            }
            if let Some(sig) = crate::sandbox::interrupt::signal() {
                eprintln!("pgimg: interrupted by {sig}; everything was torn down");
            }
            EXIT_FAILED
        }
    }
}

/// `pgimg inspect`.
pub fn inspect(image: &Path, json: bool) -> i32 {
    match crate::image::inspect::inspect(image) {
        Ok(i) if json => {
            println!(
                "{}",
                serde_json::to_string_pretty(&i).expect("inspection serializes")
            );
            0
        }
        Ok(i) => {
            print!("{i}");
            0
        }
        Err(e) => {
            eprintln!("pgimg: inspecting {}: {e}", image.display());
            EXIT_FAILED
        }
    }
}

/// `pgimg shell`. Call inside the private mount namespace.
pub fn shell(image: &Path, command: &[String]) -> i32 {
    match crate::build::shell(image, command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pgimg: shell: {e:#}");
            EXIT_FAILED
        }
    }
}
