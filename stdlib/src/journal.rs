//! The journal: every primitive call, pinned input and mirror redirect of a recipe run, in order.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// A place in a recipe: `file:line:col`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Loc {
    pub file: String,
    pub line: usize,
    pub col: usize,
}

impl Loc {
    /// `file:line:col`; lines and columns count from 1 (0: unknown).
    pub fn new(file: impl Into<String>, line: usize, col: usize) -> Loc {
        Loc {
            file: file.into(),
            line,
            col,
        }
    }
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            // print() from a script: Rhai gives no position.
            return f.write_str(if self.file.is_empty() {
                "recipe"
            } else {
                &self.file
            });
        }
        write!(f, "{}:{}:{}", self.file, self.line, self.col)
    }
}

/// One primitive call, in order, for `plan` and the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct Action {
    pub primitive: String,
    pub args: serde_json::Value,
    pub location: Loc,
    /// The commands this call ran (or, on a fake target, would have run).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<String>,
}

impl Action {
    /// The call of `primitive` at `loc` with `args` (as the recipe passed them).
    pub fn new(primitive: &str, loc: &Loc, args: &[rhai::Dynamic]) -> Action {
        let json =
            |a: &rhai::Dynamic| serde_json::to_value(a).unwrap_or_else(|_| a.to_string().into());
        Action {
            primitive: primitive.to_string(),
            args: args.iter().map(json).collect(),
            location: loc.clone(),
            commands: Vec::new(),
        }
    }
}

/// A pinned input the recipe pulled in (URL by sha256, git by commit).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Input {
    /// `url` (pin: sha256), `git` (commit), `apt-key` (sha256 of the key
    /// file), `openpgp` (fingerprint of a key fetched by URL).
    pub kind: String,
    pub url: String,
    /// Empty only on a recording target, when the pin comes from a
    /// checksum list or the lock that was not available (see `from`).
    pub pin: String,
    pub dest: String,
    /// Where the pin came from: the checksum list's URL (`sha256_from`), or
    /// `lock` for a file upstream publishes no checksum for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The URL before `--mirror` redirected it; the lock is keyed by it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upstream: Option<String>,
}

impl Input {
    /// The URL the lock knows this input by.
    pub fn lock_url(&self) -> &str {
        self.upstream.as_deref().unwrap_or(&self.url)
    }
}

/// A `mirror(name, default)` call that `--mirror` redirected.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Redirect {
    pub name: String,
    pub default: String,
    pub url: String,
}

/// The `given` names (of `--set`, `--mirror`) that are not among the
/// `used` ones a run recorded, in the order given.
pub fn not_in<'a>(given: impl Iterator<Item = &'a String>, used: &[String]) -> Vec<String> {
    given.filter(|k| !used.contains(k)).cloned().collect()
}

/// The names a recipe asked for, each once, in the order first asked: of
/// mirrors with `mirror` (redirected or not), of parameters with `param`
/// (set or not). A `--mirror` or `--set` name missing here went unused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Asked {
    pub mirrors: Vec<String>,
    pub params: Vec<String>,
}

impl Asked {
    /// Adds `name` to `names` (one of this struct's lists) unless it is there.
    pub fn note(names: &mut Vec<String>, name: &str) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
}

/// Everything the recipe did, in order.
#[derive(Debug, Default)]
pub struct Journal {
    pub actions: Vec<Action>,
    pub inputs: Vec<Input>,
    pub asked: Asked,
    /// The `mirror()` calls `--mirror` redirected.
    pub redirects: Vec<Redirect>,
    /// Build settings a recipe chose (e.g. `finalize` items), by name.
    pub settings: BTreeMap<String, serde_json::Value>,
}
