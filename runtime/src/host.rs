//! The recipe host: the one place a recipe gets its `Ctx` and engine — used by
//! `run`, `plan`, `check`, `lock` and `test` alike — with the asset-folder
//! rule and the unused-`--mirror` check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use pgimg_stdlib::ctx::{Journal, LogFn};
use pgimg_stdlib::fetch::{Fetcher, RecordingFetcher};
use pgimg_stdlib::lock::Lock;
use pgimg_stdlib::{Ctx, FakeOs, FakeTarget, Target};

use crate::engine::{build_engine, compile, display_path, normalize, run_file, Limits};
use crate::error::{RecipeError, UsageError};

/// What a recipe is run with besides its target: `--set`, `--mirror`,
/// `--assets`, and with `--locked` the lock every input is checked against.
#[derive(Debug, Clone, Default)]
pub struct RecipeInputs {
    pub params: BTreeMap<String, String>,
    pub mirrors: BTreeMap<String, String>,
    /// Asset folders searched after the recipe's own (see [`asset_dirs`]).
    pub assets: Vec<PathBuf>,
    pub lock: Option<Lock>,
}

/// What one run of a recipe left: its result (the message already names
/// `file:line:col`), its journal (also when it failed), and the `--mirror`
/// and `--set` names it never asked for.
pub struct RecipeRun {
    /// The recipe file, as messages show it.
    pub recipe: String,
    pub result: Result<(), RecipeError>,
    pub journal: Journal,
    pub unused: Unused,
}

/// The `--mirror` and `--set` names a run never asked for: most likely
/// typos, which would leave the upstream source, or the parameter's default,
/// silently in place.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unused {
    pub mirrors: Vec<String>,
    pub params: Vec<String>,
}

impl Unused {
    /// The names `other` left unused too: over several recipes (or one
    /// recipe on several architectures), a name is unused only when no run
    /// asked for it.
    pub fn and(self, other: &Unused) -> Unused {
        let both = |mine: Vec<String>, theirs: &[String]| -> Vec<String> {
            mine.into_iter().filter(|n| theirs.contains(n)).collect()
        };
        Unused {
            mirrors: both(self.mirrors, &other.mirrors),
            params: both(self.params, &other.params),
        }
    }

    /// Ok when every name was asked for; else the error naming the others,
    /// said of one recipe, or of `several` (no recipe asked for them).
    pub fn error(&self, several: bool) -> Result<(), RecipeError> {
        let mut problems = Vec::new();
        if !self.mirrors.is_empty() {
            problems.push(if several {
                unused_mirrors(&self.mirrors, "no recipe asks for")
            } else {
                format!(
                    "{} (see `mirror()` calls in the recipe)",
                    unused_mirrors(&self.mirrors, "the recipe never asks for")
                )
            });
        }
        if !self.params.is_empty() {
            let what = if self.params.len() == 1 {
                "this parameter"
            } else {
                "these parameters"
            };
            let (nobody, see) = if several {
                ("no recipe reads", "check the name")
            } else {
                (
                    "the recipe never reads",
                    "see `param()` calls in the recipe; check the name",
                )
            };
            problems.push(format!(
                "--set {}: {nobody} {what} ({see})",
                self.params.join(", ")
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RecipeError(problems.join("; ")))
        }
    }
}

impl RecipeRun {
    /// The journal, or the recipe's error; an unused `--mirror` or `--set`
    /// is an error too (most likely a typo that would leave the upstream
    /// source, or the parameter's default, in place).
    pub fn into_journal(self) -> Result<Journal, RecipeError> {
        self.result?;
        self.unused
            .error(false)
            .map_err(|e| RecipeError(format!("{}: {}", self.recipe, e.0)))?;
        Ok(self.journal)
    }
}

/// The `Ctx` a recipe at `recipe` runs in on `target`, logging to `log` and
/// recording into `journal`.
pub fn recipe_ctx(
    recipe: &Path,
    inputs: &RecipeInputs,
    target: Arc<dyn Target>,
    journal: Arc<Mutex<Journal>>,
    log: LogFn,
) -> Ctx {
    let mut ctx = Ctx::new(target)
        .with_params(inputs.params.clone())
        .with_asset_dirs(asset_dirs(recipe, &inputs.assets))
        .with_mirrors(inputs.mirrors.clone())
        .with_log(log);
    if let Some(lock) = &inputs.lock {
        ctx = ctx.with_lock(lock.clone());
    }
    ctx.journal = journal;
    ctx
}

/// Runs the recipe file on `target` and collects what it did.
pub fn run_recipe(
    recipe: &Path,
    inputs: &RecipeInputs,
    target: Arc<dyn Target>,
    log: LogFn,
    limits: &Limits,
) -> RecipeRun {
    run_recipe_with(recipe, inputs, target, log, limits, None)
}

/// [`run_recipe`] with every primitive call going through `steps` (the
/// build's step cache).
pub fn run_recipe_with(
    recipe: &Path,
    inputs: &RecipeInputs,
    target: Arc<dyn Target>,
    log: LogFn,
    limits: &Limits,
    steps: Option<Arc<dyn pgimg_stdlib::ctx::Steps>>,
) -> RecipeRun {
    let journal = Arc::new(Mutex::new(Journal::default()));
    let mut ctx = recipe_ctx(recipe, inputs, target, journal.clone(), log);
    if let Some(steps) = steps {
        ctx = ctx.with_steps(steps);
    }
    let engine = build_engine(&ctx, limits);
    let result = run_file(&engine, recipe);
    let unused = Unused {
        mirrors: pgimg_stdlib::mirror::unused_mirrors(&ctx),
        params: pgimg_stdlib::facts::unused_params(&ctx),
    };
    // The engine and the Ctx hold the journal's other references.
    drop(engine);
    drop(ctx);
    let journal = std::mem::take(&mut *journal.lock().unwrap());
    RecipeRun {
        recipe: display_path(recipe),
        result,
        journal,
        unused,
    }
}

/// Compiles the recipe file with the engine it will run in, so that `pgimg
/// run` stops on a syntax error before it copies, downloads or builds
/// anything. Imported modules are compiled when the recipe runs.
pub fn check_syntax(recipe: &Path, inputs: &RecipeInputs) -> anyhow::Result<()> {
    use anyhow::Context;
    let target = FakeTarget::new(&FakeOs::default(), Box::new(RecordingFetcher::default()))
        .context("creating a fake root")?;
    let ctx = recipe_ctx(
        recipe,
        inputs,
        Arc::new(target),
        Arc::default(),
        Arc::new(|_, _| {}),
    );
    compile(&build_engine(&ctx, &Limits::default()), recipe)?;
    Ok(())
}

/// Runs `recipe` on a fake root of `os` whose fetches go to `fetcher`: the
/// one dry run behind `check`, `plan` and `lock`. Nothing is logged.
pub fn dry_run(
    recipe: &Path,
    inputs: &RecipeInputs,
    os: &FakeOs,
    fetcher: Box<dyn Fetcher>,
) -> anyhow::Result<RecipeRun> {
    use anyhow::Context;
    if !recipe.is_file() {
        return Err(UsageError(format!("{}: no such recipe", display_path(recipe))).into());
    }
    let target = FakeTarget::new(os, fetcher)
        .with_context(|| format!("{}: creating a fake root", display_path(recipe)))?;
    Ok(run_recipe(
        recipe,
        inputs,
        Arc::new(target),
        Arc::new(|_, _| {}),
        &Limits::default(),
    ))
}

/// [`dry_run`] with fetches recorded, not made: what `check` and `plan` see.
pub fn plan(recipe: &Path, inputs: &RecipeInputs, os: &FakeOs) -> anyhow::Result<Journal> {
    Ok(dry_run(recipe, inputs, os, Box::new(RecordingFetcher::default()))?.into_journal()?)
}

/// "--mirror a, b: `nobody_asks_for` these sources" (or "this source").
pub fn unused_mirrors(names: &[String], nobody_asks_for: &str) -> String {
    let what = if names.len() == 1 {
        "this source"
    } else {
        "these sources"
    };
    format!("--mirror {}: {nobody_asks_for} {what}", names.join(", "))
}

/// Asset folders of a recipe: its own `assets/`; for a flavor recipe
/// `recipes/<flavor>.rhai`, the flavor's `flavors/<flavor>/assets/` (found
/// beside the recipes folder, when it exists); then extra ones. The first
/// folder holding an asset wins, so a flavor adds assets but does not
/// silently replace the common ones.
pub fn asset_dirs(recipe: &Path, extra: &[PathBuf]) -> Vec<PathBuf> {
    let dir = recipe.parent().unwrap_or(Path::new("."));
    let mut dirs = vec![dir.join("assets")];
    if let Some(flavor) = recipe.file_stem() {
        let assets = normalize(&dir.join("..").join("flavors").join(flavor).join("assets"));
        if assets.is_dir() {
            dirs.push(assets);
        }
    }
    dirs.extend(extra.iter().cloned());
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_mirrors_names_them_in_both_errors() {
        let one = vec!["https://a".to_string()];
        let two = vec!["https://a".to_string(), "https://b".to_string()];
        assert_eq!(
            unused_mirrors(&one, "no recipe asks for"),
            "--mirror https://a: no recipe asks for this source"
        );
        let unused = Unused {
            mirrors: two,
            params: vec![],
        };
        assert_eq!(
            unused.error(false).unwrap_err().0,
            "--mirror https://a, https://b: the recipe never asks for these sources \
             (see `mirror()` calls in the recipe)"
        );
        assert_eq!(
            unused.error(true).unwrap_err().0,
            "--mirror https://a, https://b: no recipe asks for these sources"
        );
    }

    /// A `--set` no `param()` call reads is refused, whichever way the
    /// recipe reads its parameters (`param(name)`, `param(name, default)`,
    /// in a branch).
    #[test]
    fn a_set_the_recipe_never_reads_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let recipe = dir.path().join("r.rhai");
        std::fs::write(
            &recipe,
            "let a = param(\"a\", \"x\");\nif a == \"1\" { log(param(\"b\")); }\n",
        )
        .unwrap();
        let with = |pairs: &[(&str, &str)]| {
            let inputs = RecipeInputs {
                params: pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..RecipeInputs::default()
            };
            plan(&recipe, &inputs, &FakeOs::default()).map_err(|e| format!("{e:#}"))
        };
        with(&[]).unwrap();
        with(&[("a", "1"), ("b", "2")]).unwrap();
        let err = with(&[("a", "2"), ("b", "2"), ("typo", "3")]).unwrap_err();
        assert_eq!(
            err,
            format!(
                "{}: --set b, typo: the recipe never reads these parameters (see `param()` \
                 calls in the recipe; check the name)",
                recipe.display()
            )
        );
    }
}
