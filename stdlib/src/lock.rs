//! The lock file: every input the recipes pull in, with its pin, for review and `--locked` builds.
//!
//! One input per line, sorted, so a change reads as a one-line diff:
//!
//! ```text
//! <kind> <url> <pin> [from=<where the pin came from>]
//! ```
//!
//! `url` is the upstream URL (before `--mirror`). A pin a recipe states
//! (`sha256`, `rev`, a key's fingerprint) is copied; one it only points at is
//! resolved by `pgimg lock`: `from=<checksum list URL>` is the entry for the
//! file's name in that list, `from=lock` the sha256 of the file as `pgimg lock`
//! downloaded it, for files upstream publishes no checksum for.

use std::collections::BTreeMap;
use std::path::Path;

use crate::journal::Input;

/// The name `pgimg lock` writes beside the recipes.
pub const LOCK_FILE: &str = "pgimg.lock";

/// `from=` value for a pin recorded at lock time (no upstream checksum).
pub const FROM_LOCK: &str = "lock";

const HEADER: &str = "\
# pgimg.lock: the pin of every input the recipes pull in. Written by `pgimg lock`;
# `pgimg run --locked` refuses an input that is missing here or pinned differently.
#   <kind> <url> <pin> [from=<source of the pin>]
# kinds: url (sha256), git (commit), apt-key (sha256 of the key file),
#        openpgp (fingerprint of a key fetched by URL).
# from=<URL>: the entry for the file's name in that upstream checksum list.
# from=lock: upstream publishes no checksum; the sha256 of the file as `pgimg lock`
#            downloaded it (trust on first use: review such lines when they change).
";

/// A problem with the lock file or an input checked against it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("{file}:{line}: {reason}")]
    Syntax {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}: {reason}")]
    Io { file: String, reason: String },
    /// `lock` names the lock file ([`Lock::name`]), in this variant and the next
    /// two (a `Box<str>` keeps the error within clippy's `result_large_err`).
    #[error("{kind} {url} is not in {lock}; run `pgimg lock` and review the change")]
    Missing {
        kind: String,
        url: String,
        lock: Box<str>,
    },
    #[error("{kind} {url}: pinned to {got} but {lock} says {locked}; run `pgimg lock` and review the change")]
    Mismatch {
        kind: String,
        url: String,
        locked: String,
        got: String,
        lock: Box<str>,
    },
    #[error("{kind} {url}: its pin comes from {got} but in {lock} from {locked}; run `pgimg lock` and review the change")]
    FromMismatch {
        kind: String,
        url: String,
        locked: String,
        got: String,
        lock: Box<str>,
    },
    #[error("{kind} {url}: no pin was resolved (a recording run cannot write a lock)")]
    Unresolved { kind: String, url: String },
    #[error("{kind} {url} resolves to two pins, {first} and {second}")]
    Conflict {
        kind: String,
        url: String,
        first: String,
        second: String,
    },
}

/// One locked input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockEntry {
    pub kind: String,
    pub url: String,
    pub pin: String,
    pub from: Option<String>,
}

impl LockEntry {
    /// The entry for a recorded input, keyed by its upstream URL.
    pub fn from_input(input: &Input) -> Result<LockEntry, LockError> {
        if input.pin.is_empty() {
            return Err(LockError::Unresolved {
                kind: input.kind.clone(),
                url: input.lock_url().to_string(),
            });
        }
        Ok(LockEntry {
            kind: input.kind.clone(),
            url: input.lock_url().to_string(),
            pin: input.pin.clone(),
            from: input.from.clone(),
        })
    }

    fn render(&self) -> String {
        match &self.from {
            Some(from) => format!("{} {} {} from={from}", self.kind, self.url, self.pin),
            None => format!("{} {} {}", self.kind, self.url, self.pin),
        }
    }
}

fn hex_of(pin: &str, lens: &[usize]) -> bool {
    lens.contains(&pin.len()) && pin.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Checks that `pin` has the shape `kind` pins with.
fn check_pin(kind: &str, pin: &str) -> Result<(), String> {
    let ok = match kind {
        "url" | "apt-key" => hex_of(pin, &[64]) && pin == pin.to_ascii_lowercase(),
        "git" => hex_of(pin, &[40]) && pin == pin.to_ascii_lowercase(),
        "openpgp" => hex_of(pin, &[40, 64]) && pin == pin.to_ascii_uppercase(),
        other => return Err(format!("unknown kind `{other}`")),
    };
    if ok {
        Ok(())
    } else {
        Err(format!("`{pin}` is not a {kind} pin"))
    }
}

/// The pins of every input, keyed by (kind, upstream URL).
#[derive(Debug, Clone, Default)]
pub struct Lock {
    entries: BTreeMap<(String, String), LockEntry>,
    /// The file [`Lock::parse`] read, as errors name it; empty for a lock
    /// made in memory.
    file: String,
}

/// Two locks are equal when they pin the same inputs the same way, wherever
/// they were read from.
impl PartialEq for Lock {
    fn eq(&self, other: &Lock) -> bool {
        self.entries == other.entries
    }
}

impl Eq for Lock {}

impl Lock {
    /// Parses lock file text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Lock, LockError> {
        let mut lock = Lock {
            file: file.to_string(),
            ..Lock::default()
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let syntax = |reason: String| LockError::Syntax {
                file: file.to_string(),
                line: n + 1,
                reason,
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (kind, url, pin, from) = match fields.as_slice() {
                [k, u, p] => (*k, *u, *p, None),
                [k, u, p, f] => {
                    let from = f
                        .strip_prefix("from=")
                        .filter(|f| !f.is_empty())
                        .ok_or_else(|| syntax(format!("`{f}` should be from=<source>")))?;
                    (*k, *u, *p, Some(from.to_string()))
                }
                _ => {
                    return Err(syntax(
                        "expected `<kind> <url> <pin> [from=<source>]`".into(),
                    ))
                }
            };
            check_pin(kind, pin).map_err(syntax)?;
            let entry = LockEntry {
                kind: kind.into(),
                url: url.into(),
                pin: pin.into(),
                from,
            };
            if lock
                .entries
                .insert((kind.into(), url.into()), entry)
                .is_some()
            {
                return Err(syntax(format!("{kind} {url} is listed twice")));
            }
        }
        Ok(lock)
    }

    /// Reads the lock file at `path`.
    pub fn load(path: &Path) -> Result<Lock, LockError> {
        let text = std::fs::read_to_string(path).map_err(|e| LockError::Io {
            file: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Lock::parse(&text, &path.display().to_string())
    }

    /// The lock file text: the header, then one sorted line per input.
    pub fn render(&self) -> String {
        let mut out = HEADER.to_string();
        let mut lines: Vec<String> = self.entries.values().map(LockEntry::render).collect();
        lines.sort();
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    pub fn entries(&self) -> impl Iterator<Item = &LockEntry> {
        self.entries.values()
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, kind: &str, url: &str) -> Option<&LockEntry> {
        self.entries.get(&(kind.to_string(), url.to_string()))
    }

    /// Adds an entry; the same input resolved to another pin (two
    /// architectures disagreeing, say) is an error.
    pub fn insert(&mut self, entry: LockEntry) -> Result<(), LockError> {
        let resolved = |reason| LockError::Syntax {
            file: "<resolved>".into(),
            line: 0,
            reason,
        };
        check_pin(&entry.kind, &entry.pin).map_err(resolved)?;
        // A line is whitespace-separated fields: a URL holding whitespace or
        // a line break would write a line that reads back as something else.
        for field in std::iter::once(entry.url.as_str()).chain(entry.from.as_deref()) {
            if field.is_empty() || field.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(resolved(format!(
                    "`{}` cannot be locked: empty, or holds whitespace or control characters",
                    field.escape_debug()
                )));
            }
        }
        let key = (entry.kind.clone(), entry.url.clone());
        if let Some(old) = self.entries.get(&key) {
            if old.pin != entry.pin {
                return Err(LockError::Conflict {
                    kind: entry.kind,
                    url: entry.url,
                    first: old.pin.clone(),
                    second: entry.pin,
                });
            }
        }
        self.entries.insert(key, entry);
        Ok(())
    }

    /// Takes every entry of `newer`, replacing this lock's entry for the same input.
    pub fn update(&mut self, newer: Lock) {
        self.entries.extend(newer.entries);
    }

    /// How errors name this lock: the file it was read from, or "the lock
    /// file" for one made in memory.
    pub fn name(&self) -> String {
        if self.file.is_empty() {
            "the lock file".into()
        } else {
            self.file.clone()
        }
    }

    /// The locked sha256 of the `url` input whose pin comes from `from` (a
    /// checksum list URL or [`FROM_LOCK`]).
    pub fn sha256_from(&self, url: &str, from: &str) -> Result<&str, LockError> {
        let e = self.get("url", url).ok_or_else(|| LockError::Missing {
            kind: "url".into(),
            url: url.into(),
            lock: self.name().into(),
        })?;
        if e.from.as_deref() != Some(from) {
            return Err(LockError::FromMismatch {
                kind: "url".into(),
                url: url.into(),
                locked: e.from.clone().unwrap_or_else(|| "the recipe".into()),
                got: from.into(),
                lock: self.name().into(),
            });
        }
        Ok(&e.pin)
    }

    /// Refuses an input that is not locked, or locked with another pin or
    /// from another source.
    pub fn check(&self, input: &Input) -> Result<(), LockError> {
        let url = input.lock_url();
        let e = self
            .get(&input.kind, url)
            .ok_or_else(|| LockError::Missing {
                kind: input.kind.clone(),
                url: url.into(),
                lock: self.name().into(),
            })?;
        if e.from != input.from {
            let show = |f: &Option<String>| f.clone().unwrap_or_else(|| "the recipe".into());
            return Err(LockError::FromMismatch {
                kind: input.kind.clone(),
                url: url.into(),
                locked: show(&e.from),
                got: show(&input.from),
                lock: self.name().into(),
            });
        }
        if e.pin != input.pin {
            return Err(LockError::Mismatch {
                kind: input.kind.clone(),
                url: url.into(),
                locked: e.pin.clone(),
                got: if input.pin.is_empty() {
                    "nothing".into()
                } else {
                    input.pin.clone()
                },
                lock: self.name().into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0144068502a1eddd2a0280ede10ef607d1ec592ce819940991203941564e8e76";
    const REV: &str = "4bd044aa80bccba7c6021ddef266ef75a45a27a2";
    const FPR: &str = "52B59B1571A79DBC054901C0F6BC817356A3D45E";
    const LIST: &str = "https://example.org/v1/sha256sums.txt";

    fn input(kind: &str, url: &str, pin: &str, from: Option<&str>) -> Input {
        Input {
            kind: kind.into(),
            url: url.into(),
            pin: pin.into(),
            dest: "/x".into(),
            from: from.map(str::to_string),
            upstream: None,
        }
    }

    fn sample() -> Lock {
        let mut l = Lock::default();
        for i in [
            input("url", "https://example.org/v1/tool.tar.gz", SHA, Some(LIST)),
            input("git", "https://example.org/src.git", REV, None),
            input("openpgp", "https://keys.example/k", FPR, None),
            input("url", "https://example.org/x.deb", SHA, Some(FROM_LOCK)),
        ] {
            l.insert(LockEntry::from_input(&i).unwrap()).unwrap();
        }
        l
    }

    #[test]
    fn renders_sorted_and_parses_back() {
        let l = sample();
        let text = l.render();
        let body: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(
            body,
            [
                format!("git https://example.org/src.git {REV}"),
                format!("openpgp https://keys.example/k {FPR}"),
                format!("url https://example.org/v1/tool.tar.gz {SHA} from={LIST}"),
                format!("url https://example.org/x.deb {SHA} from=lock"),
            ]
        );
        assert_eq!(Lock::parse(&text, "pgimg.lock").unwrap(), l);
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let cases = [
            (
                "url https://h/x\n",
                "pgimg.lock:1: expected `<kind> <url> <pin> [from=<source>]`",
            ),
            (
                "\n# c\nurl https://h/x abc\n",
                "pgimg.lock:3: `abc` is not a url pin",
            ),
            (&format!("git https://h/x {SHA}\n"), "is not a git pin"),
            (
                &format!("url https://h/x {}\n", SHA.to_uppercase()),
                "is not a url pin",
            ),
            (
                &format!("openpgp https://h/k {}\n", FPR.to_lowercase()),
                "is not a openpgp pin",
            ),
            (
                &format!("tarball https://h/x {SHA}\n"),
                "unknown kind `tarball`",
            ),
            (
                &format!("url https://h/x {SHA} list=y\n"),
                "`list=y` should be from=<source>",
            ),
            (
                &format!("url https://h/x {SHA}\nurl https://h/x {SHA}\n"),
                "pgimg.lock:2: url https://h/x is listed twice",
            ),
        ];
        for (text, want) in cases {
            let e = Lock::parse(text, "pgimg.lock").unwrap_err().to_string();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn check_refuses_missing_changed_and_unresolved_inputs() {
        let l = sample();
        let ok = input("url", "https://example.org/v1/tool.tar.gz", SHA, Some(LIST));
        l.check(&ok).unwrap();
        // A mirror's URL is checked as the upstream one.
        let mirrored = Input {
            url: "http://127.0.0.1:1/v1/tool.tar.gz".into(),
            upstream: Some(ok.url.clone()),
            ..ok.clone()
        };
        l.check(&mirrored).unwrap();
        let cases: Vec<(Input, LockError)> = vec![
            (
                input("url", "https://example.org/v2/tool.tar.gz", SHA, Some(LIST)),
                LockError::Missing {
                    kind: "url".into(),
                    url: "https://example.org/v2/tool.tar.gz".into(),
                    lock: "the lock file".into(),
                },
            ),
            (
                input("git", "https://example.org/src.git", &"1".repeat(40), None),
                LockError::Mismatch {
                    kind: "git".into(),
                    url: "https://example.org/src.git".into(),
                    locked: REV.into(),
                    got: "1".repeat(40),
                    lock: "the lock file".into(),
                },
            ),
            (
                input("url", "https://example.org/v1/tool.tar.gz", SHA, None),
                LockError::FromMismatch {
                    kind: "url".into(),
                    url: "https://example.org/v1/tool.tar.gz".into(),
                    locked: LIST.into(),
                    got: "the recipe".into(),
                    lock: "the lock file".into(),
                },
            ),
            (
                input("url", "https://example.org/x.deb", "", Some(FROM_LOCK)),
                LockError::Mismatch {
                    kind: "url".into(),
                    url: "https://example.org/x.deb".into(),
                    locked: SHA.into(),
                    got: "nothing".into(),
                    lock: "the lock file".into(),
                },
            ),
        ];
        for (i, want) in cases {
            assert_eq!(l.check(&i).unwrap_err(), want);
        }
        assert!(LockEntry::from_input(&input("url", "https://h/x", "", Some(LIST))).is_err());
    }

    #[test]
    fn a_url_that_would_break_the_line_format_is_not_locked() {
        let entry = |url: &str, from: Option<&str>| LockEntry {
            kind: "url".into(),
            url: url.into(),
            pin: "a".repeat(64),
            from: from.map(String::from),
        };
        let mut lock = Lock::default();
        for (url, from) in [
            ("https://example.org/a b.img", None),
            (
                "https://example.org/n.img\nurl https://evil/x.img 1111",
                None,
            ),
            ("", None),
            (
                "https://example.org/ok.img",
                Some("https://example.org/SUMS x"),
            ),
        ] {
            let e = lock.insert(entry(url, from)).unwrap_err().to_string();
            assert!(e.contains("cannot be locked"), "{url:?}: {e}");
        }
        assert!(lock.entries().next().is_none());
        lock.insert(entry(
            "https://example.org/ok.img",
            Some("https://example.org/SUMS"),
        ))
        .unwrap();
    }

    #[test]
    fn sha256_from_needs_the_same_source() {
        let l = sample();
        assert_eq!(
            l.sha256_from("https://example.org/v1/tool.tar.gz", LIST)
                .unwrap(),
            SHA
        );
        assert_eq!(
            l.sha256_from("https://example.org/x.deb", FROM_LOCK)
                .unwrap(),
            SHA
        );
        let e = l
            .sha256_from("https://example.org/x.deb", LIST)
            .unwrap_err();
        assert!(matches!(e, LockError::FromMismatch { .. }), "{e}");
        let e = l
            .sha256_from("https://example.org/y.deb", FROM_LOCK)
            .unwrap_err();
        assert_eq!(e.to_string(), "url https://example.org/y.deb is not in the lock file; run `pgimg lock` and review the change");
    }

    #[test]
    fn an_input_checked_against_a_lock_read_from_a_file_names_that_file() {
        let text = sample().render();
        let l = Lock::parse(&text, "recipes/pgimg.lock").unwrap();
        assert_eq!(l, sample(), "where a lock was read does not make it differ");
        let e = l
            .sha256_from("https://example.org/y.deb", FROM_LOCK)
            .unwrap_err();
        assert_eq!(e.to_string(), "url https://example.org/y.deb is not in recipes/pgimg.lock; run `pgimg lock` and review the change");
        let changed = input("git", "https://example.org/src.git", &"1".repeat(40), None);
        let e = l.check(&changed).unwrap_err().to_string();
        assert!(e.contains("but recipes/pgimg.lock says"), "{e}");
        let unlisted = input("url", "https://example.org/v1/tool.tar.gz", SHA, None);
        let e = l.check(&unlisted).unwrap_err().to_string();
        assert!(
            e.contains(&format!("but in recipes/pgimg.lock from {LIST}")),
            "{e}"
        );
    }

    #[test]
    fn two_pins_for_one_input_conflict_and_update_replaces() {
        let mut l = sample();
        let e = l
            .insert(LockEntry {
                kind: "git".into(),
                url: "https://example.org/src.git".into(),
                pin: "2".repeat(40),
                from: None,
            })
            .unwrap_err();
        assert!(matches!(e, LockError::Conflict { .. }), "{e}");
        let mut newer = Lock::default();
        newer
            .insert(LockEntry {
                kind: "git".into(),
                url: "https://example.org/src.git".into(),
                pin: "2".repeat(40),
                from: None,
            })
            .unwrap();
        l.update(newer);
        assert_eq!(
            l.get("git", "https://example.org/src.git").unwrap().pin,
            "2".repeat(40)
        );
        assert_eq!(l.len(), 4);
    }
}
