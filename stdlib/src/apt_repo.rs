//! `apt_repo`: a deb822 `.sources` file plus its pinned signing key, written natively.

use std::io::Cursor;
use std::path::Path;

use pgp::composed::{Deserializable, SignedPublicKey};
use pgp::types::KeyDetails;
use rhai::Map;
use serde::Deserialize;

use crate::api::options;
use crate::ctx::Ctx;
use crate::error::Result;
use crate::fetch::normalize_sha256;
use crate::register::Str;
use crate::rhai_fns;
use crate::root::Attrs;

const KEYRINGS: &str = "/etc/apt/keyrings";
const SOURCES: &str = "/etc/apt/sources.list.d";
const ARMOR_BEGIN: &str = "-----BEGIN PGP PUBLIC KEY BLOCK-----";

/// One string or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Strings {
    One(String),
    Many(Vec<String>),
}

impl Strings {
    fn into_vec(self) -> Vec<String> {
        match self {
            Strings::One(s) => s.split_whitespace().map(str::to_string).collect(),
            Strings::Many(v) => v,
        }
    }
}

/// Options of `apt_repo`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoOpts {
    /// Repository base URL.
    pub uri: Option<String>,
    /// Distribution (`jammy-pgdg`), or an exact path ending in `/` for a flat repository.
    pub suite: Option<String>,
    /// `main` or `["main", "contrib"]`; omitted for a flat repository.
    pub components: Option<Strings>,
    /// The signing key: an `http(s)://` URL or an asset path.
    pub key: Option<String>,
    /// sha256 of the key file; a URL needs it or `key_fingerprint`.
    pub key_sha256: Option<String>,
    /// OpenPGP fingerprint of the key's primary key (spaces allowed, any case).
    pub key_fingerprint: Option<String>,
    /// Restricts the source to these Debian architectures.
    pub arch: Option<Strings>,
}

/// A problem with an `apt_repo` call or its key.
#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("`{0}` is not a repository name (use lowercase letters, digits, `.`, `_`, `-`)")]
    BadName(String),
    #[error("option `{0}` is required")]
    Missing(&'static str),
    #[error("option `{option}`: {reason}")]
    BadOption {
        option: &'static str,
        reason: String,
    },
    #[error("key {key}: a URL key needs `key_sha256` or `key_fingerprint` (no pin, no download)")]
    UrlWithoutPin { key: String },
    #[error("key {key}: an asset key needs `key_sha256` or `key_fingerprint` (no pin, no key)")]
    AssetWithoutPin { key: String },
    #[error("key {key}: sha256 mismatch: expected {expected}, got {actual}")]
    ShaMismatch {
        key: String,
        expected: String,
        actual: String,
    },
    #[error("key {key}: fingerprint mismatch: expected {expected}, got {actual}")]
    FingerprintMismatch {
        key: String,
        expected: String,
        actual: String,
    },
    #[error("key {key}: {reason}")]
    BadKey { key: String, reason: String },
}

crate::error::invalid_from!(RepoError);

/// How a key file is encoded, which apt tells by its extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyFormat {
    /// ASCII-armored: `.asc`.
    Armored,
    /// Binary OpenPGP packets: `.gpg`.
    Binary,
}

impl KeyFormat {
    pub fn extension(self) -> &'static str {
        match self {
            KeyFormat::Armored => "asc",
            KeyFormat::Binary => "gpg",
        }
    }

    /// Tells the format from the content: binary data starts with an OpenPGP
    /// packet tag (its top bit is always set, which no text has); armored
    /// text holds the armor header line, possibly after some prose.
    pub fn detect(bytes: &[u8]) -> Option<KeyFormat> {
        if bytes.first().is_some_and(|b| b & 0x80 != 0) {
            Some(KeyFormat::Binary)
        } else if bytes
            .windows(ARMOR_BEGIN.len())
            .any(|w| w == ARMOR_BEGIN.as_bytes())
        {
            Some(KeyFormat::Armored)
        } else {
            None
        }
    }
}

/// Normalizes a fingerprint as people write it (`B97B 0AFC ...`, any case) to
/// uppercase hex: 40 digits (v4 keys) or 64 (v6).
pub fn normalize_fingerprint(fp: &str) -> Result<String, RepoError> {
    let s: String = fp
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_uppercase();
    if (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s)
    } else {
        Err(RepoError::BadOption {
            option: "key_fingerprint",
            reason: format!("`{fp}` is not an OpenPGP fingerprint (40 or 64 hex digits)"),
        })
    }
}

/// The primary-key fingerprint of the one public key in `bytes` (armored or
/// binary), uppercase hex. A file with several keys is refused: the pin
/// would cover only one of the keys apt would then trust.
pub fn primary_fingerprint(bytes: &[u8]) -> Result<String, String> {
    let keys: Vec<SignedPublicKey> = match KeyFormat::detect(bytes) {
        Some(KeyFormat::Armored) => {
            let blocks = bytes
                .windows(ARMOR_BEGIN.len())
                .filter(|w| *w == ARMOR_BEGIN.as_bytes())
                .count();
            if blocks > 1 {
                return Err(format!(
                    "holds {blocks} armored key blocks; a fingerprint pins exactly one key"
                ));
            }
            let (keys, _headers) =
                SignedPublicKey::from_armor_many(Cursor::new(bytes)).map_err(|e| e.to_string())?;
            keys.collect::<Result<_, _>>().map_err(|e| e.to_string())?
        }
        Some(KeyFormat::Binary) => SignedPublicKey::from_bytes_many(Cursor::new(bytes))
            .map_err(|e| e.to_string())?
            .collect::<Result<_, _>>()
            .map_err(|e| e.to_string())?,
        None => return Err("is not an OpenPGP public key".into()),
    };
    match keys.as_slice() {
        [key] => Ok(hex::encode_upper(key.primary_key.fingerprint().as_bytes())),
        [] => Err("holds no OpenPGP public key".into()),
        many => Err(format!(
            "holds {} public keys; a fingerprint pins exactly one key",
            many.len()
        )),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
}

/// A value for a deb822 field: one line, no field syntax.
fn field_value(option: &'static str, v: &str) -> Result<String, RepoError> {
    let v = v.trim();
    if v.is_empty() || v.contains(char::is_whitespace) || v.contains('#') {
        return Err(RepoError::BadOption {
            option,
            reason: format!("`{v}` must be one non-empty word"),
        });
    }
    Ok(v.to_string())
}

/// The `.sources` text for a repository (sources.list(5), deb822 style).
fn sources_text(
    uri: &str,
    suite: &str,
    components: &[String],
    arch: &[String],
    key_path: &str,
) -> String {
    let mut s = format!("Types: deb\nURIs: {uri}\nSuites: {suite}\n");
    if !components.is_empty() {
        s += &format!("Components: {}\n", components.join(" "));
    }
    if !arch.is_empty() {
        s += &format!("Architectures: {}\n", arch.join(" "));
    }
    s += &format!("Signed-By: {key_path}\n");
    s
}

fn is_url(key: &str) -> bool {
    key.starts_with("https://") || key.starts_with("http://")
}

/// The key file's path for `name` in `format`.
fn key_path(name: &str, format: KeyFormat) -> String {
    format!("{KEYRINGS}/{name}.{}", format.extension())
}

/// The format a URL key will have, told by its name: a recording target
/// has no bytes to look at, and the input is recorded before fetching.
fn format_by_name(key: &str) -> KeyFormat {
    if key.ends_with(".gpg") {
        KeyFormat::Binary
    } else {
        KeyFormat::Armored
    }
}

/// The key's bytes, or `None` when a recording fetcher only noted the URL.
///
/// A URL key is recorded as an input before it is fetched, so `--locked`
/// refuses an unlocked one without touching the network: pinned by
/// `key_sha256` it goes through the verified download cache; pinned by
/// `key_fingerprint` alone it is fetched as text (a keyserver's answer for
/// the same key changes as signatures are added, so no file hash could pin
/// it) and [`verify_key`] checks the fingerprint before anything is written.
fn load_key(
    ctx: &Ctx,
    name: &str,
    key: &str,
    sha256: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<Option<Vec<u8>>> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| RepoError::BadKey {
            key: key.to_string(),
            reason: format!("reading {}: {e}", p.display()),
        })
    };
    if is_url(key) {
        let dest = key_path(name, format_by_name(key));
        return match (sha256, fingerprint) {
            (Some(sha256), _) => {
                ctx.record_input("apt-key", key, sha256, &dest)?;
                Ok(match ctx.target.fetcher().fetch(key, sha256)? {
                    Some(path) => Some(read(&path)?),
                    None => None,
                })
            }
            (None, Some(fingerprint)) => {
                ctx.record_input("openpgp", key, fingerprint, &dest)?;
                Ok(ctx
                    .target
                    .fetcher()
                    .fetch_text(key)?
                    .map(String::into_bytes))
            }
            (None, None) => Err(RepoError::UrlWithoutPin {
                key: key.to_string(),
            }
            .into()),
        };
    }
    if sha256.is_none() && fingerprint.is_none() {
        return Err(RepoError::AssetWithoutPin {
            key: key.to_string(),
        }
        .into());
    }
    let path = ctx.asset(key)?;
    Ok(Some(read(&path)?))
}

/// Checks `bytes` against the pins given; returns their sha256.
fn verify_key(
    key: &str,
    bytes: &[u8],
    sha256: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<String, RepoError> {
    let actual = crate::shared::sha256_hex(bytes);
    if let Some(expected) = sha256 {
        if actual != expected {
            return Err(RepoError::ShaMismatch {
                key: key.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    if let Some(expected) = fingerprint {
        let got = primary_fingerprint(bytes).map_err(|reason| RepoError::BadKey {
            key: key.to_string(),
            reason,
        })?;
        if got != expected {
            return Err(RepoError::FingerprintMismatch {
                key: key.to_string(),
                expected: expected.to_string(),
                actual: got,
            });
        }
    }
    Ok(actual)
}

/// Adds an apt repository: installs its key under `/etc/apt/keyrings/` and
/// writes `/etc/apt/sources.list.d/<name>.sources` pointing at it with
/// `Signed-By`, so the key is trusted for this repository only.
///
/// The key is pinned: a URL by `key_sha256` (the fetcher verifies it before
/// anything is written) or by `key_fingerprint` alone (checked on the host
/// before anything is written), an asset by `key_sha256` and/or `key_fingerprint`.
/// Without a pin there is no key and no repository. The key file keeps the
/// format it came in (`.asc` armored, `.gpg` binary); on a recording target
/// the URL's `.gpg` suffix decides, as the key itself is not available.
/// Returns the path of the `.sources` file.
pub fn apt_repo(ctx: &Ctx, name: &str, opts: RepoOpts) -> Result<String> {
    if !valid_name(name) {
        return Err(RepoError::BadName(name.to_string()).into());
    }
    let uri = field_value("uri", &opts.uri.ok_or(RepoError::Missing("uri"))?)?;
    let suite = field_value("suite", &opts.suite.ok_or(RepoError::Missing("suite"))?)?;
    let components = opts.components.map(Strings::into_vec).unwrap_or_default();
    let components = components
        .iter()
        .map(|c| field_value("components", c))
        .collect::<Result<Vec<_>, _>>()?;
    // sources.list(5): a suite that is an exact path (ending in `/`) names a
    // flat repository, and then Components must be omitted.
    match (suite.ends_with('/'), components.is_empty()) {
        (true, false) => {
            return Err(RepoError::BadOption {
                option: "components",
                reason: format!("must be omitted for the flat repository suite `{suite}`"),
            }
            .into())
        }
        (false, true) => return Err(RepoError::Missing("components").into()),
        _ => {}
    }
    let arch = opts.arch.map(Strings::into_vec).unwrap_or_default();
    for a in &arch {
        if a.is_empty()
            || !a
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        {
            return Err(RepoError::BadOption {
                option: "arch",
                reason: format!("`{a}` is not a Debian architecture"),
            }
            .into());
        }
    }
    let key = opts.key.ok_or(RepoError::Missing("key"))?;
    let sha256 = opts
        .key_sha256
        .as_deref()
        .map(normalize_sha256)
        .transpose()?;
    let fingerprint = opts
        .key_fingerprint
        .as_deref()
        .map(normalize_fingerprint)
        .transpose()?;

    let bytes = load_key(ctx, name, &key, sha256.as_deref(), fingerprint.as_deref())?;
    let (format, pin) = match &bytes {
        Some(b) => {
            let pin = verify_key(&key, b, sha256.as_deref(), fingerprint.as_deref())?;
            let format = KeyFormat::detect(b).ok_or_else(|| RepoError::BadKey {
                key: key.clone(),
                reason: "is neither an armored nor a binary OpenPGP key".into(),
            })?;
            (format, pin)
        }
        None => (format_by_name(&key), String::new()),
    };

    let root = ctx.target.root();
    let key_path = key_path(name, format);
    root.mkdir_all(KEYRINGS, Attrs::mode(0o755))?;
    if let Some(b) = &bytes {
        root.write(&key_path, b, Attrs::mode(0o644))?;
    }
    // The same repository added again with a key in the other format.
    let other = match format {
        KeyFormat::Armored => KeyFormat::Binary,
        KeyFormat::Binary => KeyFormat::Armored,
    };
    root.remove(format!("{KEYRINGS}/{name}.{}", other.extension()))?;

    // A URL key was recorded before it was fetched.
    if !is_url(&key) {
        ctx.record_input("apt-key", &format!("asset:{key}"), &pin, &key_path)?;
    }

    let sources_path = format!("{SOURCES}/{name}.sources");
    let text = sources_text(&uri, &suite, &components, &arch, &key_path);
    root.write(&sources_path, text.as_bytes(), Attrs::mode(0o644))?;
    Ok(sources_path)
}

rhai_fns! { pub(crate) fn register;
    /// Adds an apt repository: `/etc/apt/sources.list.d/<name>.sources` (deb822) with
    /// `Signed-By` pointing at its key, installed under `/etc/apt/keyrings/`.
    /// Options: `uri`, `suite` (ending in `/` for a flat repository), `components`
    /// (string or array; not for a flat repository), `key` (URL or asset path), `key_sha256`,
    /// `key_fingerprint` (OpenPGP primary key fingerprint, verified before the key is
    /// installed), `arch` (string or array).
    /// A key needs `key_sha256` or `key_fingerprint` (or both). Returns the `.sources` path.
    action apt_repo(name: Str, opts: Map) |c, _| apt_repo(c, &name, options(opts)?);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{engine_on, host_tool, primitive_failure};
    use crate::{FakeTarget, Target};
    use std::collections::BTreeMap;
    use std::process::Command as Process;
    use std::sync::{Arc, OnceLock};

    /// Two real OpenPGP public keys, made by gpg in a throwaway home.
    struct Keys {
        armored: Vec<u8>,
        binary: Vec<u8>,
        fingerprint: String,
        other_fingerprint: String,
        both_binary: Vec<u8>,
    }

    fn gpg(home: &Path, args: &[&str]) -> Vec<u8> {
        let mut gpg = Process::new("gpg");
        gpg.env("GNUPGHOME", home)
            .args(["--batch", "--quiet", "--no-tty"])
            .args(args);
        host_tool(&mut gpg, "the apt_repo tests need it to make keys")
    }

    fn keys() -> &'static Keys {
        static KEYS: OnceLock<Keys> = OnceLock::new();
        KEYS.get_or_init(|| {
            let home = tempfile::Builder::new()
                .prefix("gnupg")
                .tempdir_in("/tmp")
                .unwrap();
            let h = home.path();
            std::fs::set_permissions(h, std::os::unix::fs::PermissionsExt::from_mode(0o700))
                .unwrap();
            for uid in ["Repo One <one@example.org>", "Repo Two <two@example.org>"] {
                gpg(
                    h,
                    &[
                        "--passphrase",
                        "",
                        "--pinentry-mode",
                        "loopback",
                        "--quick-gen-key",
                        uid,
                        "ed25519",
                        "cert",
                        "never",
                    ],
                );
            }
            let fpr = |uid: &str| {
                let listing =
                    String::from_utf8(gpg(h, &["--with-colons", "--list-keys", uid])).unwrap();
                listing
                    .lines()
                    .find(|l| l.starts_with("fpr:"))
                    .unwrap()
                    .split(':')
                    .nth(9)
                    .unwrap()
                    .to_string()
            };
            let keys = Keys {
                armored: gpg(h, &["--armor", "--export", "one@example.org"]),
                binary: gpg(h, &["--export", "one@example.org"]),
                fingerprint: fpr("one@example.org"),
                other_fingerprint: fpr("two@example.org"),
                both_binary: gpg(h, &["--export"]),
            };
            let _ = Process::new("gpgconf")
                .env("GNUPGHOME", h)
                .args(["--kill", "gpg-agent"])
                .status();
            keys
        })
    }

    fn sha(b: &[u8]) -> String {
        crate::shared::sha256_hex(b)
    }

    /// A fake root with an assets folder holding the test keys and a fetcher
    /// answering `https://keys.example/<file>` from it.
    fn setup() -> (Arc<FakeTarget>, Ctx, tempfile::TempDir) {
        let k = keys();
        let assets = tempfile::tempdir().unwrap();
        std::fs::write(assets.path().join("one.asc"), &k.armored).unwrap();
        std::fs::write(assets.path().join("one.gpg"), &k.binary).unwrap();
        std::fs::write(assets.path().join("both.gpg"), &k.both_binary).unwrap();
        let fixtures: BTreeMap<String, _> = ["one.asc", "one.gpg"]
            .iter()
            .map(|f| (format!("https://keys.example/{f}"), assets.path().join(f)))
            .collect();
        let t = Arc::new(FakeTarget::with_fixtures(fixtures));
        let c = Ctx::new(t.clone()).with_asset_dirs(vec![assets.path().to_path_buf()]);
        (t, c, assets)
    }

    fn opts(key: &str) -> RepoOpts {
        RepoOpts {
            uri: Some("https://apt.postgresql.org/pub/repos/apt".into()),
            suite: Some("jammy-pgdg".into()),
            components: Some(Strings::One("main".into())),
            key: Some(key.into()),
            ..RepoOpts::default()
        }
    }

    #[test]
    fn fingerprint_matches_what_gpg_says() {
        let k = keys();
        assert_eq!(primary_fingerprint(&k.armored).unwrap(), k.fingerprint);
        assert_eq!(primary_fingerprint(&k.binary).unwrap(), k.fingerprint);
        assert_ne!(k.fingerprint, k.other_fingerprint);
        let e = primary_fingerprint(&k.both_binary).unwrap_err();
        assert!(e.contains("holds 2 public keys"), "{e}");
        let twice = [k.armored.clone(), k.armored.clone()].concat();
        assert!(primary_fingerprint(&twice)
            .unwrap_err()
            .contains("2 armored key blocks"));
        assert!(primary_fingerprint(b"<html>")
            .unwrap_err()
            .contains("not an OpenPGP"));
    }

    #[test]
    fn fingerprints_are_normalized() {
        let spaced = "b97b 0afc aa1a 47f0 44f2  44a0 7fcc 7d46 accc 4cf8";
        assert_eq!(
            normalize_fingerprint(spaced).unwrap(),
            "B97B0AFCAA1A47F044F244A07FCC7D46ACCC4CF8"
        );
        assert!(normalize_fingerprint("B97B0AFC").is_err());
        assert!(normalize_fingerprint(&"Z".repeat(40)).is_err());
    }

    #[test]
    fn asset_key_pinned_by_fingerprint_and_the_exact_sources_file() {
        let (t, c, _a) = setup();
        let k = keys();
        let fp = k
            .fingerprint
            .to_lowercase()
            .as_bytes()
            .chunks(4)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(" ");
        let o = RepoOpts {
            key_fingerprint: Some(fp),
            arch: Some(Strings::Many(vec!["amd64".into(), "arm64".into()])),
            ..opts("one.asc")
        };
        assert_eq!(
            apt_repo(&c, "pgdg", o).unwrap(),
            "/etc/apt/sources.list.d/pgdg.sources"
        );
        assert_eq!(
            t.root()
                .read_string("/etc/apt/sources.list.d/pgdg.sources")
                .unwrap(),
            "Types: deb\n\
             URIs: https://apt.postgresql.org/pub/repos/apt\n\
             Suites: jammy-pgdg\n\
             Components: main\n\
             Architectures: amd64 arm64\n\
             Signed-By: /etc/apt/keyrings/pgdg.asc\n"
        );
        assert_eq!(
            t.root().read("/etc/apt/keyrings/pgdg.asc").unwrap(),
            k.armored
        );
        assert_eq!(
            t.root().stat("/etc/apt/keyrings/pgdg.asc").unwrap().mode,
            0o644
        );
        assert_eq!(
            t.root()
                .stat("/etc/apt/sources.list.d/pgdg.sources")
                .unwrap()
                .mode,
            0o644
        );
        let inputs = &c.journal.lock().unwrap().inputs;
        assert_eq!(inputs.len(), 1);
        assert_eq!(
            (inputs[0].kind.as_str(), inputs[0].url.as_str()),
            ("apt-key", "asset:one.asc")
        );
        assert_eq!(inputs[0].pin, sha(&k.armored));
        assert_eq!(inputs[0].dest, "/etc/apt/keyrings/pgdg.asc");
    }

    #[test]
    fn a_wrong_fingerprint_installs_nothing() {
        let (t, c, _a) = setup();
        let k = keys();
        let o = RepoOpts {
            key_fingerprint: Some(k.other_fingerprint.clone()),
            ..opts("one.gpg")
        };
        let e = apt_repo(&c, "pgdg", o).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "key one.gpg: fingerprint mismatch: expected {}, got {}",
                k.other_fingerprint, k.fingerprint
            )
        );
        assert!(!t.root().exists("/etc/apt/keyrings/pgdg.gpg"));
        assert!(!t.root().exists("/etc/apt/sources.list.d/pgdg.sources"));
        let o = RepoOpts {
            key_fingerprint: Some(k.fingerprint.clone()),
            ..opts("both.gpg")
        };
        let e = apt_repo(&c, "pgdg", o).unwrap_err().to_string();
        assert!(e.contains("holds 2 public keys"), "{e}");
    }

    #[test]
    fn binary_keys_keep_gpg_and_replace_an_older_asc() {
        let (t, c, _a) = setup();
        let k = keys();
        apt_repo(
            &c,
            "pgdg",
            RepoOpts {
                key_sha256: Some(sha(&k.armored)),
                ..opts("one.asc")
            },
        )
        .unwrap();
        assert!(t.root().exists("/etc/apt/keyrings/pgdg.asc"));
        apt_repo(
            &c,
            "pgdg",
            RepoOpts {
                key_sha256: Some(sha(&k.binary)),
                ..opts("one.gpg")
            },
        )
        .unwrap();
        assert_eq!(
            t.root().read("/etc/apt/keyrings/pgdg.gpg").unwrap(),
            k.binary
        );
        assert!(!t.root().exists("/etc/apt/keyrings/pgdg.asc"));
        let text = t
            .root()
            .read_string("/etc/apt/sources.list.d/pgdg.sources")
            .unwrap();
        assert!(
            text.ends_with("Signed-By: /etc/apt/keyrings/pgdg.gpg\n"),
            "{text}"
        );
    }

    #[test]
    fn url_keys_are_fetched_and_verified() {
        let (t, c, _a) = setup();
        let k = keys();
        let url = "https://keys.example/one.asc";
        let o = RepoOpts {
            key_sha256: Some(sha(&k.armored)),
            key_fingerprint: Some(k.fingerprint.clone()),
            ..opts(url)
        };
        apt_repo(&c, "pgdg", o).unwrap();
        assert_eq!(
            t.root().read("/etc/apt/keyrings/pgdg.asc").unwrap(),
            k.armored
        );
        assert_eq!(c.journal.lock().unwrap().inputs[0].url, url);

        let e = apt_repo(
            &c,
            "x",
            RepoOpts {
                key_sha256: Some(sha(b"other")),
                ..opts(url)
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("sha256 mismatch"), "{e}");
        let e = apt_repo(&c, "x", opts(url)).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("key {url}: a URL key needs `key_sha256` or `key_fingerprint` (no pin, no download)")
        );
        assert!(!t.root().exists("/etc/apt/sources.list.d/x.sources"));
    }

    #[test]
    fn url_keys_pinned_by_fingerprint_alone() {
        let (t, c, _a) = setup();
        let k = keys();
        let url = "https://keys.example/one.asc";
        let o = RepoOpts {
            key_fingerprint: Some(k.fingerprint.clone()),
            ..opts(url)
        };
        apt_repo(&c, "golang", o).unwrap();
        assert_eq!(
            t.root().read("/etc/apt/keyrings/golang.asc").unwrap(),
            k.armored
        );
        {
            let j = c.journal.lock().unwrap();
            assert_eq!(
                (
                    j.inputs[0].kind.as_str(),
                    j.inputs[0].pin.as_str(),
                    j.inputs[0].dest.as_str()
                ),
                (
                    "openpgp",
                    k.fingerprint.as_str(),
                    "/etc/apt/keyrings/golang.asc"
                )
            );
        }
        let o = RepoOpts {
            key_fingerprint: Some(k.other_fingerprint.clone()),
            ..opts(url)
        };
        let e = apt_repo(&c, "other", o).unwrap_err().to_string();
        assert!(e.contains("fingerprint mismatch"), "{e}");
        assert!(!t.root().exists("/etc/apt/keyrings/other.asc"));
        assert!(!t.root().exists("/etc/apt/sources.list.d/other.sources"));

        // No fixture: the recording fetcher has no text; the pin is still recorded.
        let unknown = "https://keyserver.example/pks/lookup?op=get&search=0x52B59B1571A79DBC054901C0F6BC817356A3D45E";
        let o = RepoOpts {
            key_fingerprint: Some("52B5 9B15 71A7 9DBC 0549  01C0 F6BC 8173 56A3 D45E".into()),
            ..opts(unknown)
        };
        apt_repo(&c, "ppa", o).unwrap();
        assert!(t
            .root()
            .read_string("/etc/apt/sources.list.d/ppa.sources")
            .unwrap()
            .ends_with("Signed-By: /etc/apt/keyrings/ppa.asc\n"));
        let j = c.journal.lock().unwrap();
        assert_eq!(
            j.inputs.last().unwrap().pin,
            "52B59B1571A79DBC054901C0F6BC817356A3D45E"
        );
        assert_eq!(j.inputs.last().unwrap().url, unknown);
    }

    #[test]
    fn locked_keys_are_refused_before_any_fetch() {
        let (t, c, _a) = setup();
        let k = keys();
        let url = "https://keys.example/one.asc";
        let lock = crate::lock::Lock::parse(
            &format!("openpgp https://keys.example/other.asc {}\n", k.fingerprint),
            "pgimg.lock",
        )
        .unwrap();
        let c = c.with_lock(lock);
        let o = RepoOpts {
            key_fingerprint: Some(k.fingerprint.clone()),
            ..opts(url)
        };
        let e = apt_repo(&c, "golang", o).unwrap_err().to_string();
        assert_eq!(
            e,
            format!("openpgp {url} is not in pgimg.lock; run `pgimg lock` and review the change")
        );
        assert!(!t.root().exists("/etc/apt/keyrings/golang.asc"));
        assert!(c.journal.lock().unwrap().inputs.is_empty());
    }

    #[test]
    fn a_recording_fetcher_still_writes_the_sources_and_records_the_pin() {
        let (t, c, _a) = setup();
        let pin = "ab".repeat(32);
        let url = "https://ppa.example/golang-backports.gpg";
        apt_repo(
            &c,
            "golang",
            RepoOpts {
                key_sha256: Some(pin.clone()),
                ..opts(url)
            },
        )
        .unwrap();
        assert!(!t.root().exists("/etc/apt/keyrings/golang.gpg"));
        let text = t
            .root()
            .read_string("/etc/apt/sources.list.d/golang.sources")
            .unwrap();
        assert!(
            text.ends_with("Signed-By: /etc/apt/keyrings/golang.gpg\n"),
            "{text}"
        );
        let j = c.journal.lock().unwrap();
        assert_eq!(
            (j.inputs[0].url.as_str(), j.inputs[0].pin.as_str()),
            (url, pin.as_str())
        );
    }

    #[test]
    fn flat_repositories_and_bad_options() {
        let (t, c, _a) = setup();
        let k = keys();
        let pinned = |o: RepoOpts| RepoOpts {
            key_sha256: Some(sha(&k.armored)),
            ..o
        };
        let flat = RepoOpts {
            suite: Some("./".into()),
            components: None,
            ..pinned(opts("one.asc"))
        };
        apt_repo(&c, "local", flat).unwrap();
        assert_eq!(
            t.root().read_string("/etc/apt/sources.list.d/local.sources").unwrap(),
            "Types: deb\nURIs: https://apt.postgresql.org/pub/repos/apt\nSuites: ./\nSigned-By: /etc/apt/keyrings/local.asc\n"
        );
        let cases: Vec<(&str, RepoOpts, &str)> = vec![
            (
                "Bad Name",
                pinned(opts("one.asc")),
                "is not a repository name",
            ),
            ("../x", pinned(opts("one.asc")), "is not a repository name"),
            (
                "ok",
                RepoOpts {
                    suite: Some("./".into()),
                    ..pinned(opts("one.asc"))
                },
                "must be omitted for the flat repository",
            ),
            (
                "ok",
                RepoOpts {
                    components: None,
                    ..pinned(opts("one.asc"))
                },
                "option `components` is required",
            ),
            (
                "ok",
                RepoOpts {
                    suite: Some(" ".into()),
                    ..pinned(opts("one.asc"))
                },
                "option `suite`: `` must be one non-empty word",
            ),
            (
                "ok",
                RepoOpts {
                    uri: None,
                    ..pinned(opts("one.asc"))
                },
                "option `uri` is required",
            ),
            (
                "ok",
                RepoOpts {
                    arch: Some(Strings::One("AMD64".into())),
                    ..pinned(opts("one.asc"))
                },
                "not a Debian architecture",
            ),
            (
                "ok",
                RepoOpts {
                    key: None,
                    ..opts("x")
                },
                "option `key` is required",
            ),
            (
                "ok",
                opts("one.asc"),
                "an asset key needs `key_sha256` or `key_fingerprint` (no pin, no key)",
            ),
            (
                "ok",
                RepoOpts {
                    key_sha256: Some("abc".into()),
                    ..opts("one.asc")
                },
                "is not a sha256",
            ),
            (
                "ok",
                RepoOpts {
                    key_sha256: Some(sha(b"x")),
                    ..opts("one.asc")
                },
                "key one.asc: sha256 mismatch",
            ),
            (
                "ok",
                RepoOpts {
                    key_fingerprint: Some("1234".into()),
                    ..opts("one.asc")
                },
                "is not an OpenPGP fingerprint",
            ),
        ];
        for (name, o, want) in cases {
            let e = apt_repo(&c, name, o).unwrap_err().to_string();
            assert!(e.contains(want), "{name}: {e}");
        }
        assert!(!t.root().exists("/etc/apt/sources.list.d/ok.sources"));
    }

    #[test]
    fn from_rhai_with_array_components_and_unknown_keys() {
        let (t, c, _a) = setup();
        let engine = engine_on(&c);
        let script = format!(
            r#"apt_repo("deb", #{{ uri: "http://deb.debian.org/debian", suite: "bookworm", components: ["main", "contrib"], key: "one.gpg", key_sha256: "{}" }})"#,
            sha(&keys().binary)
        );
        assert_eq!(
            engine.eval::<String>(&script).unwrap(),
            "/etc/apt/sources.list.d/deb.sources"
        );
        assert!(t
            .root()
            .read_string("/etc/apt/sources.list.d/deb.sources")
            .unwrap()
            .contains("Components: main contrib\n"));
        let msg = primitive_failure(
            engine
                .eval::<String>(r#"apt_repo("x", #{ uri: "u", suit: "s" })"#)
                .unwrap_err(),
        );
        assert!(
            msg.contains("apt_repo: options: unknown field `suit`"),
            "{msg}"
        );
    }
}
