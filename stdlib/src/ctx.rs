//! What every primitive is handed: the target, the journal, params, assets, the log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::error::Error;
pub use crate::journal::{Action, Input, Journal, Loc, Redirect};
use crate::lock::Lock;
use crate::target::{Command, Output, Target};

/// A sink for build log lines.
pub type LogFn = Arc<dyn Fn(&Loc, &str) + Send + Sync>;

/// The context every primitive runs in. Cheap to clone.
#[derive(Clone)]
pub struct Ctx {
    pub target: Arc<dyn Target>,
    pub journal: Arc<Mutex<Journal>>,
    pub params: Arc<BTreeMap<String, String>>,
    /// Folders searched in order by `copy_asset` and asset-path arguments.
    pub asset_dirs: Arc<Vec<PathBuf>>,
    /// Source redirections from `--mirror NAME=URL`.
    pub mirrors: Arc<BTreeMap<String, String>>,
    /// With `--locked`: every input must be in this lock, with the same pin.
    pub lock: Option<Arc<Lock>>,
    pub log: LogFn,
    /// The build's step cache, which may replay a call instead of running it.
    pub steps: Option<Arc<dyn Steps>>,
}

impl Ctx {
    pub fn new(target: Arc<dyn Target>) -> Self {
        Ctx {
            target,
            journal: Arc::default(),
            params: Arc::default(),
            asset_dirs: Arc::default(),
            mirrors: Arc::default(),
            lock: None,
            log: Arc::new(|loc, msg| crate::stderr_line!("{loc}: {msg}")),
            steps: None,
        }
    }

    pub fn with_params(mut self, params: BTreeMap<String, String>) -> Self {
        self.params = Arc::new(params);
        self
    }

    pub fn with_asset_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.asset_dirs = Arc::new(dirs);
        self
    }

    pub fn with_mirrors(mut self, mirrors: BTreeMap<String, String>) -> Self {
        self.mirrors = Arc::new(mirrors);
        self
    }

    /// Makes every input checked against `lock` (`pgimg run --locked`).
    pub fn with_lock(mut self, lock: Lock) -> Self {
        self.lock = Some(Arc::new(lock));
        self
    }

    /// Routes every primitive call through `steps` (the step cache).
    pub fn with_steps(mut self, steps: Arc<dyn Steps>) -> Self {
        self.steps = Some(steps);
        self
    }

    pub fn with_log(mut self, log: LogFn) -> Self {
        self.log = log;
        self
    }

    /// A recipe's log line, control characters escaped: one call, one line.
    pub fn log(&self, loc: &Loc, msg: &str) {
        (self.log)(loc, &crate::shared::escape_controls(msg))
    }

    /// Runs a command inside the target, labelled with the recipe location.
    pub fn run(&self, loc: &Loc, mut cmd: Command) -> Result<Output, Error> {
        cmd.label = loc.to_string();
        if let Some(a) = self.journal.lock().unwrap().actions.last_mut() {
            a.commands.push(cmd.to_string());
        }
        Ok(self.target.run(&cmd)?)
    }

    pub fn record_action(&self, action: Action) {
        self.journal.lock().unwrap().actions.push(action);
    }

    /// Records an input the recipe pulls in. With a lock (`--locked`) an
    /// input missing from it or pinned differently is refused here, before
    /// anything is fetched, which is why every primitive calls this first.
    pub fn record_input(&self, kind: &str, url: &str, pin: &str, dest: &str) -> Result<(), Error> {
        let upstream = self.upstream_url(url);
        self.record(Input {
            kind: kind.to_string(),
            url: url.to_string(),
            pin: pin.to_string(),
            dest: dest.to_string(),
            from: None,
            upstream: (upstream != url).then_some(upstream),
        })
    }

    /// [`record_input`](Self::record_input) for a fully built [`Input`].
    pub fn record(&self, input: Input) -> Result<(), Error> {
        if let Some(lock) = &self.lock {
            lock.check(&input)
                .map_err(|e| Error::Invalid(e.to_string()))?;
        }
        self.journal.lock().unwrap().inputs.push(input);
        Ok(())
    }

    /// `url` as the recipe would have named it without `--mirror`: a prefix
    /// a mirror redirected is put back to that mirror's default. Pins (and
    /// the lock) are about content, so a mirror must serve the same bytes.
    pub fn upstream_url(&self, url: &str) -> String {
        let journal = self.journal.lock().unwrap();
        journal
            .redirects
            .iter()
            .filter_map(|r| {
                let base = r.url.trim_end_matches('/');
                let rest = url.strip_prefix(base)?;
                (rest.is_empty() || rest.starts_with('/') || rest.starts_with('?')).then(|| {
                    (
                        base.len(),
                        format!("{}{rest}", r.default.trim_end_matches('/')),
                    )
                })
            })
            // The most specific redirect wins when two bases nest.
            .max_by_key(|(len, _)| *len)
            .map(|(_, u)| u)
            .unwrap_or_else(|| url.to_string())
    }

    /// Finds an asset by its relative path in the asset folders. The first
    /// folder holding it wins, and the asset must really be inside that
    /// folder: a symbolic link (the asset itself or a folder on its path)
    /// leading out of the folder is refused (see [`beneath`]).
    pub fn asset(&self, rel: &str) -> Result<PathBuf, Error> {
        let relp = Path::new(rel);
        if !stays_below(relp) {
            return Err(Error::Invalid(format!(
                "asset `{rel}` must be a relative path inside an assets folder"
            )));
        }
        match self.asset_dirs.iter().find(|d| d.join(relp).exists()) {
            Some(dir) => beneath(dir, rel, "asset"),
            None => {
                let searched: Vec<String> = self
                    .asset_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect();
                Err(Error::Invalid(format!(
                    "asset `{rel}` not found (searched: {})",
                    if searched.is_empty() {
                        "no asset folders".into()
                    } else {
                        searched.join(", ")
                    }
                )))
            }
        }
    }

    /// A parameter from `--set`, or `default`.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

/// Whether `rel` is relative and has no `..`, so that joined to a folder it
/// names something below it (links aside).
fn stays_below(rel: &Path) -> bool {
    !rel.is_absolute()
        && !rel
            .components()
            .any(|c| c == std::path::Component::ParentDir)
}

/// `dir/rel`, checked to resolve inside `dir`: `rel` must be relative
/// without `..`, and no symbolic link on the way (`rel` itself or a folder
/// in it) may lead out of `dir`; links that stay inside are fine. The path
/// returned is `dir/rel` as given, so a link inside a copied folder stays one.
/// `what` names the kind of path for the message ("asset", "fixture", …).
///
/// Equivalent to `openat2(RESOLVE_BENEATH)` on a folder nothing writes to
/// during the build (assets are the recipe's files on the host, which no
/// command in the image can reach).
pub fn beneath(dir: &Path, rel: &str, what: &str) -> Result<PathBuf, Error> {
    let relp = Path::new(rel);
    if !stays_below(relp) {
        return Err(Error::Invalid(format!(
            "{what} `{rel}` must be a relative path inside {}",
            dir.display()
        )));
    }
    let path = dir.join(relp);
    let base = std::fs::canonicalize(dir)
        .map_err(|e| Error::Invalid(format!("{what} `{rel}`: {}: {e}", dir.display())))?;
    // Every link on the way, the last component's too, is followed: what the
    // primitives finally open must be inside.
    let real = match std::fs::canonicalize(&path) {
        Ok(real) => real,
        // Nothing there, not even a dangling link: nothing can be read through
        // it, and the caller reports the missing file when it needs it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path.symlink_metadata().is_err() => {
            return Ok(path)
        }
        Err(e) => {
            return Err(Error::Invalid(format!(
                "{what} `{rel}`: {}: {e}",
                path.display()
            )))
        }
    };
    if !real.starts_with(&base) {
        return Err(Error::Invalid(format!(
            "{what} `{rel}` leads out of {} through a symbolic link; \
             pgimg reads only files inside that folder (copy the file in instead of linking to it)",
            dir.display()
        )));
    }
    Ok(path)
}

/// One primitive call, as the step hook sees it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub name: &'a str,
    /// A primitive with an effect, as the journal records it; else a query.
    pub action: bool,
    pub loc: &'a Loc,
    pub args: &'a [rhai::Dynamic],
}

/// The step hook: called around every primitive, actions and queries alike,
/// in call order, from the one place primitives are registered
/// (`register.rs`), so no primitive can be left out of a key. The build's
/// step cache implements it (runtime); recipes on a fake root run without one.
pub trait Steps: Send + Sync {
    /// Before the body of `call` runs: `Ok(Some(value))` means "replayed":
    /// the body does not run and the call returns `value`.
    fn before(&self, ctx: &Ctx, call: &Call) -> std::result::Result<Option<rhai::Dynamic>, String>;

    /// After the body ran and returned `value`. A body that failed gets no
    /// `after`.
    fn after(&self, ctx: &Ctx, value: &rhai::Dynamic);
}
