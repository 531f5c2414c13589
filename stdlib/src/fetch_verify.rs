//! The `fetch_verify` primitive: a pinned download, verified on the host, then
//! installed into the image as a file or unpacked as an archive.
//!
//! The pin is a `sha256` the recipe states, or one it points at with
//! `sha256_from`: upstream's checksum list (the entry for the file's name), or
//! `"lock"` for files upstream publishes no checksum for, whose sha256 only
//! `pgimg lock` records. With `--locked` both come from the lock file and the
//! network is not asked.

use rhai::{Dynamic, Map};
use serde::Deserialize;

use crate::api::{options, to_array};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::extract::{extract, ArchiveKind, ExtractError};
use crate::fetch::{check_url, normalize_sha256, sha256_for, url_file_name, FetchError};
use crate::files::{apply, image_path};
use crate::journal::Input;
use crate::lock::FROM_LOCK;
use crate::rhai_fns;
use crate::root::{Attrs, FileKind};

/// `extract: true` unpacks everything, `extract: "glob"` only matching members.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Extract {
    All(bool),
    Matching(String),
}

/// The options map of `fetch_verify`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FetchVerify {
    pub url: String,
    /// The file's sha256; or give `sha256_from`.
    pub sha256: Option<String>,
    /// An upstream checksum list URL, or `"lock"`.
    pub sha256_from: Option<String>,
    pub dest: String,
    pub extract: Option<Extract>,
    pub strip: Option<i64>,
    pub mode: Option<i64>,
    pub owner: Option<String>,
}

impl FetchVerify {
    /// A download pinned by its sha256 and installed as is at `dest`: the
    /// plainest call, which the other options refine.
    pub fn pinned(url: &str, sha256: &str, dest: &str) -> Self {
        FetchVerify {
            url: url.into(),
            sha256: Some(sha256.into()),
            sha256_from: None,
            dest: dest.into(),
            extract: None,
            strip: None,
            mode: None,
            owner: None,
        }
    }
}

/// What `fetch_verify` installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Installed {
    File(String),
    Extracted(Vec<String>),
}

impl Installed {
    fn into_dynamic(self) -> Dynamic {
        match self {
            Installed::File(p) => Dynamic::from(p),
            Installed::Extracted(ps) => Dynamic::from_array(to_array(ps)),
        }
    }
}

/// Where the pin comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pin {
    Sha256(String),
    /// The entry for the file's name in this checksum list.
    List(String),
    /// Only the lock file has it.
    Lock,
}

/// The checked form of the options, before anything is fetched.
struct Plan {
    pin: Pin,
    /// The file path, or the directory to extract into.
    dest: String,
    extract: Option<Option<glob::Pattern>>,
    strip: usize,
    mode: Option<u32>,
}

fn check(opts: &FetchVerify) -> Result<Plan> {
    check_url(&opts.url)?;
    let pin = match (&opts.sha256, &opts.sha256_from) {
        (Some(sha256), None) => Pin::Sha256(normalize_sha256(sha256)?),
        (None, Some(from)) if from == FROM_LOCK => Pin::Lock,
        (None, Some(list)) => {
            check_url(list)
                .map_err(|e| Error::invalid(format!("sha256_from: {e} (or \"{FROM_LOCK}\")")))?;
            if url_file_name(&opts.url).is_none() {
                return Err(Error::invalid(format!(
                    "sha256_from: `{}` has no file name to look up in the checksum list",
                    opts.url
                )));
            }
            Pin::List(list.clone())
        }
        (Some(_), Some(_)) => {
            return Err(Error::invalid(
                "give either `sha256` or `sha256_from`, not both",
            ))
        }
        (None, None) => return Err(Error::invalid(
            "no pin: give `sha256`, or `sha256_from` (upstream's checksum list URL, or \"lock\")",
        )),
    };
    let dest = image_path(&opts.dest)?;
    let mode = crate::files::FileOpts {
        mode: opts.mode,
        owner: None,
    }
    .mode()?;
    let extract = match &opts.extract {
        None | Some(Extract::All(false)) => None,
        Some(Extract::All(true)) => Some(None),
        Some(Extract::Matching(glob)) => {
            Some(Some(glob::Pattern::new(glob).map_err(|e| {
                Error::invalid(format!("extract: `{glob}` is not a glob: {e}"))
            })?))
        }
    };
    let strip = match opts.strip {
        None => 0,
        Some(_) if extract.is_none() => {
            return Err(Error::invalid("strip: only applies with `extract`"));
        }
        Some(n) => {
            usize::try_from(n).map_err(|_| Error::invalid(format!("strip: {n} is negative")))?
        }
    };
    let dest = if extract.is_some() {
        dest.trim_end_matches('/').to_string()
    } else if dest.ends_with('/') {
        let name = url_file_name(&opts.url).ok_or_else(|| {
            Error::invalid(format!(
                "dest `{dest}` is a directory but `{}` has no file name to use; give dest as a file path",
                opts.url
            ))
        })?;
        format!("{dest}{name}")
    } else {
        dest.to_string()
    };
    let dest = if dest.is_empty() {
        "/".to_string()
    } else {
        dest
    };
    Ok(Plan {
        pin,
        dest,
        extract,
        strip,
        mode,
    })
}

/// The sha256 the plan's pin stands for, or `None` when a recording
/// fetcher cannot tell (no fixture, no lock); and where it came from.
fn resolve(ctx: &Ctx, opts: &FetchVerify, pin: &Pin) -> Result<(Option<String>, Option<String>)> {
    let url = opts.url.as_str();
    let upstream = ctx.upstream_url(url);
    let fetcher = ctx.target.fetcher();
    let lock_error = |e: crate::lock::LockError| Error::invalid(e.to_string());
    Ok(match pin {
        Pin::Sha256(h) => (Some(h.clone()), None),
        Pin::List(list) => {
            let from = ctx.upstream_url(list);
            let sha = match &ctx.lock {
                Some(lock) => Some(
                    lock.sha256_from(&upstream, &from)
                        .map_err(lock_error)?
                        .to_string(),
                ),
                None => match fetcher.fetch_text(list)? {
                    Some(text) => {
                        let name = url_file_name(url).unwrap_or_default();
                        let sha = sha256_for(&text, &name).map_err(|e| FetchError::Checksums {
                            url: list.clone(),
                            reason: e.to_string(),
                        })?;
                        Some(sha)
                    }
                    None => None,
                },
            };
            (sha, Some(from))
        }
        Pin::Lock => {
            let sha = match &ctx.lock {
                Some(lock) => Some(
                    lock.sha256_from(&upstream, FROM_LOCK)
                        .map_err(lock_error)?
                        .to_string(),
                ),
                None => fetcher.first_use_sha256(url)?,
            };
            (sha, Some(FROM_LOCK.to_string()))
        }
    })
}

/// Downloads `opts.url` through the target's fetcher (verified against its
/// pin before anything reaches the image) and installs it.
///
/// With a recording fetcher (plan, test) nothing is written; the input is
/// still recorded and the predicted result returned: the file path, or an
/// empty list for an extraction.
pub fn fetch_verify(ctx: &Ctx, opts: &FetchVerify) -> Result<Installed> {
    let plan = check(opts)?;
    let url = opts.url.as_str();
    let (sha256, from) = resolve(ctx, opts, &plan.pin)?;
    let upstream = ctx.upstream_url(url);
    ctx.record(Input {
        kind: "url".into(),
        url: url.to_string(),
        pin: sha256.clone().unwrap_or_default(),
        dest: plan.dest.clone(),
        from,
        upstream: (upstream != url).then_some(upstream),
    })?;
    let fetched = match &sha256 {
        Some(sha) => ctx.target.fetcher().fetch(url, sha)?,
        None => None,
    };
    let Some(host) = fetched else {
        return Ok(match plan.extract {
            Some(_) => Installed::Extracted(Vec::new()),
            None => Installed::File(plan.dest),
        });
    };
    let root = ctx.target.root();
    let attrs = Attrs {
        mode: plan.mode,
        ..Attrs::default()
    };
    let installed = match &plan.extract {
        None => {
            let mut file =
                std::fs::File::open(&host).map_err(|e| crate::fetch::FetchError::Io {
                    url: url.to_string(),
                    reason: format!("opening the cached download {}: {e}", host.display()),
                })?;
            root.write_from(&plan.dest, &mut file, attrs)?;
            vec![plan.dest.clone()]
        }
        Some(filter) => {
            let name = url_file_name(url);
            let kind = ArchiveKind::detect(name.as_deref(), &host).map_err(|e| for_url(url, e))?;
            extract(
                &host,
                kind,
                root,
                &plan.dest,
                filter.as_ref(),
                plan.strip,
                attrs,
            )
            .map_err(|e| for_url(url, e))?
        }
    };
    if let Some(owner) = &opts.owner {
        for p in &installed {
            // Ownership of a link itself does not matter, and following it
            // would change (or fail on) what it points at.
            if root.kind(p) != Some(FileKind::Symlink) {
                apply(ctx, p, None, Some(owner))?;
            }
        }
    }
    Ok(match plan.extract {
        Some(_) => Installed::Extracted(installed),
        None => Installed::File(plan.dest),
    })
}

/// Names the URL rather than the cache file in archive errors.
fn for_url(url: &str, e: ExtractError) -> Error {
    match e {
        ExtractError::Refused { member, reason, .. } => {
            Error::invalid(format!("{url}: member `{member}`: {reason}"))
        }
        ExtractError::Archive { reason, .. } => Error::invalid(format!("{url}: {reason}")),
        other => other.into(),
    }
}

rhai_fns! { pub(crate) fn register;
    /// Downloads `url` on the host through the cache, verifies `sha256` before anything is
    /// written into the image, and installs it.
    /// Options: `url`, `dest` and a pin (required): `sha256`, or `sha256_from` (the URL of
    /// upstream's checksum list, whose entry for the file's name is the pin; or `"lock"` when
    /// upstream publishes none and `pgimg lock` records it); `extract` (`true` or a glob of members),
    /// `strip` (leading path components dropped when extracting), `mode`, `owner`.
    /// Without `extract`, `dest` is a file path (ending in `/`: a directory, the URL's file
    /// name is used) and the path is returned; with it, `dest` is a directory and the
    /// extracted paths are returned.
    action fetch_verify(opts: Map) |c, _| fetch_verify(c, &options(opts)?).map(Installed::into_dynamic);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{engine_on as engine, primitive_failure as failure};
    use crate::{FakeOs, FakeTarget, Target};
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::Arc;

    const URL: &str = "https://example.org/dl/tool-1.0.linux-amd64.tar.gz";
    const BIN_URL: &str = "https://example.org/dl/tool";

    fn sha(bytes: &[u8]) -> String {
        crate::shared::sha256_hex(bytes)
    }

    fn tarball() -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let entries: [(&str, &[u8], u32, tar::EntryType); 4] = [
            ("tool-1.0/", b"", 0o755, tar::EntryType::Directory),
            (
                "tool-1.0/tool",
                b"#!/bin/sh\necho tool\n",
                0o4755,
                tar::EntryType::Regular,
            ),
            ("tool-1.0/LICENSE", b"MIT\n", 0o644, tar::EntryType::Regular),
            (
                "tool-1.0/conf/a.yml",
                b"a: 1\n",
                0o640,
                tar::EntryType::Regular,
            ),
        ];
        for (path, data, mode, kind) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "tool-1.0/current", "tool").unwrap();
        b.into_inner().unwrap().finish().unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        target: Arc<FakeTarget>,
        ctx: Ctx,
        tar_sha: String,
        bin_sha: String,
    }

    fn fixture(with_files: bool) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let tar = tarball();
        let bin = b"\x7fELF binary".to_vec();
        let mut fixtures = BTreeMap::new();
        for (url, bytes, name) in [(URL, &tar, "t.tgz"), (BIN_URL, &bin, "bin")] {
            let p: PathBuf = dir.path().join(name);
            std::fs::File::create(&p).unwrap().write_all(bytes).unwrap();
            if with_files {
                fixtures.insert(url.to_string(), p);
            }
        }
        let target = Arc::new(FakeTarget::with_fixtures(fixtures));
        Fixture {
            _dir: dir,
            ctx: Ctx::new(target.clone()),
            target,
            tar_sha: sha(&tar),
            bin_sha: sha(&bin),
        }
    }

    fn opts(url: &str, sha256: &str, dest: &str) -> FetchVerify {
        FetchVerify::pinned(url, sha256, dest)
    }

    #[test]
    fn installs_a_file_with_mode_and_owner() {
        let f = fixture(true);
        let o = FetchVerify {
            mode: Some(0o755),
            owner: Some("www-data".into()),
            ..opts(BIN_URL, &f.bin_sha.to_uppercase(), "/usr/local/bin/tool")
        };
        assert_eq!(
            fetch_verify(&f.ctx, &o).unwrap(),
            Installed::File("/usr/local/bin/tool".into())
        );
        let root = f.target.root();
        assert_eq!(root.read("/usr/local/bin/tool").unwrap(), b"\x7fELF binary");
        assert_eq!(root.stat("/usr/local/bin/tool").unwrap().mode, 0o755);
        assert_eq!(f.target.owner("/usr/local/bin/tool"), Some((33, 33)));
        let inputs = f.ctx.journal.lock().unwrap().inputs.clone();
        assert_eq!(inputs.len(), 1);
        assert_eq!(
            (inputs[0].url.as_str(), inputs[0].pin.as_str()),
            (BIN_URL, f.bin_sha.as_str())
        );
        assert_eq!(inputs[0].dest, "/usr/local/bin/tool");
    }

    #[test]
    fn dest_ending_in_slash_takes_the_url_file_name() {
        let f = fixture(true);
        let got = fetch_verify(&f.ctx, &opts(URL, &f.tar_sha, "/opt/dl/")).unwrap();
        assert_eq!(
            got,
            Installed::File("/opt/dl/tool-1.0.linux-amd64.tar.gz".into())
        );
        assert_eq!(
            f.target
                .root()
                .stat("/opt/dl/tool-1.0.linux-amd64.tar.gz")
                .unwrap()
                .mode,
            0o644
        );
    }

    #[test]
    fn extracts_with_strip_filter_and_owner() {
        let f = fixture(true);
        let o = FetchVerify {
            extract: Some(Extract::All(true)),
            strip: Some(1),
            owner: Some("www-data:shadow".into()),
            ..opts(URL, &f.tar_sha, "/opt/tool/")
        };
        let got = fetch_verify(&f.ctx, &o).unwrap();
        let want = [
            "/opt/tool/tool",
            "/opt/tool/LICENSE",
            "/opt/tool/conf/a.yml",
            "/opt/tool/current",
        ];
        assert_eq!(
            got,
            Installed::Extracted(want.iter().map(|s| s.to_string()).collect())
        );
        let root = f.target.root();
        // setuid from the archive is dropped; other bits kept.
        assert_eq!(root.stat("/opt/tool/tool").unwrap().mode, 0o755);
        assert_eq!(root.stat("/opt/tool/conf/a.yml").unwrap().mode, 0o640);
        assert_eq!(
            root.readlink("/opt/tool/current").unwrap(),
            PathBuf::from("tool")
        );
        assert_eq!(f.target.owner("/opt/tool/tool"), Some((33, 42)));
        assert_eq!(f.target.owner("/opt/tool/current"), None);
        assert_eq!(f.ctx.journal.lock().unwrap().inputs[0].dest, "/opt/tool");

        let f = fixture(true);
        let o = FetchVerify {
            extract: Some(Extract::Matching("*/tool".into())),
            mode: Some(0o700),
            ..opts(URL, &f.tar_sha, "/usr/local/bin")
        };
        let got = fetch_verify(&f.ctx, &o).unwrap();
        assert_eq!(
            got,
            Installed::Extracted(vec!["/usr/local/bin/tool-1.0/tool".into()])
        );
        assert_eq!(
            f.target
                .root()
                .stat("/usr/local/bin/tool-1.0/tool")
                .unwrap()
                .mode,
            0o700
        );
        assert!(!f.target.root().exists("/usr/local/bin/tool-1.0/LICENSE"));
    }

    #[test]
    fn recording_fetcher_writes_nothing_but_records() {
        let f = fixture(false);
        let got = fetch_verify(&f.ctx, &opts(BIN_URL, &f.bin_sha, "/usr/local/bin/tool")).unwrap();
        assert_eq!(got, Installed::File("/usr/local/bin/tool".into()));
        let o = FetchVerify {
            extract: Some(Extract::All(true)),
            ..opts(URL, &f.tar_sha, "/opt/tool")
        };
        assert_eq!(
            fetch_verify(&f.ctx, &o).unwrap(),
            Installed::Extracted(vec![])
        );
        assert!(!f.target.root().exists("/usr/local/bin/tool"));
        assert!(!f.target.root().exists("/opt/tool"));
        let dests: Vec<String> = f
            .ctx
            .journal
            .lock()
            .unwrap()
            .inputs
            .iter()
            .map(|i| i.dest.clone())
            .collect();
        assert_eq!(dests, ["/usr/local/bin/tool", "/opt/tool"]);
    }

    #[test]
    fn bad_options_fail_before_fetching() {
        let f = fixture(true);
        let cases: Vec<(FetchVerify, &str)> = vec![
            (opts(BIN_URL, "", "/x"), "not a sha256"),
            (opts(BIN_URL, &f.bin_sha[..63], "/x"), "not a sha256"),
            (
                opts("ftp://example.org/tool", &f.bin_sha, "/x"),
                "only http",
            ),
            (opts(BIN_URL, &f.bin_sha, "relative/x"), "absolute path"),
            (
                opts("https://example.org/", &f.bin_sha, "/opt/"),
                "no file name",
            ),
            (
                FetchVerify {
                    strip: Some(1),
                    ..opts(URL, &f.tar_sha, "/x")
                },
                "only applies with `extract`",
            ),
            (
                FetchVerify {
                    extract: Some(Extract::All(true)),
                    strip: Some(-1),
                    ..opts(URL, &f.tar_sha, "/x")
                },
                "negative",
            ),
            (
                FetchVerify {
                    extract: Some(Extract::Matching("a[".into())),
                    ..opts(URL, &f.tar_sha, "/x")
                },
                "not a glob",
            ),
            (
                FetchVerify {
                    mode: Some(0o20000),
                    ..opts(BIN_URL, &f.bin_sha, "/x")
                },
                "not a file mode",
            ),
        ];
        for (o, want) in cases {
            let e = fetch_verify(&f.ctx, &o).unwrap_err().to_string();
            assert!(e.contains(want), "{o:?}: {e}");
        }
        assert!(f.ctx.journal.lock().unwrap().inputs.is_empty());
        assert!(!f.target.root().exists("/x"));
    }

    #[test]
    fn wrong_pin_writes_nothing() {
        let f = fixture(true);
        let e =
            fetch_verify(&f.ctx, &opts(BIN_URL, &f.tar_sha, "/usr/local/bin/tool")).unwrap_err();
        assert!(
            matches!(
                e,
                Error::Fetch(crate::fetch::FetchError::ShaMismatch { .. })
            ),
            "{e}"
        );
        assert!(!f.target.root().exists("/usr/local/bin"));
    }

    #[test]
    fn a_download_that_is_not_an_archive_is_named() {
        let f = fixture(true);
        let o = FetchVerify {
            extract: Some(Extract::All(true)),
            ..opts(BIN_URL, &f.bin_sha, "/opt/tool")
        };
        let e = fetch_verify(&f.ctx, &o).unwrap_err().to_string();
        assert!(
            e.starts_with(BIN_URL) && e.contains("not a .tar.gz, .tar or .zip"),
            "{e}"
        );
    }

    const LIST_URL: &str = "https://example.org/dl/sha256sums.txt";

    /// A fixture where `LIST_URL` lists the tarball (and a decoy), written
    /// into the fixtures folder so the recording fetcher answers with it.
    fn listed(with_tarball: bool) -> Fixture {
        let f = fixture(with_tarball);
        let list = format!(
            "{}  tool-1.0.linux-arm64.tar.gz\n{}  tool-1.0.linux-amd64.tar.gz\n",
            "0".repeat(64),
            f.tar_sha
        );
        let path = f._dir.path().join("sums.txt");
        std::fs::write(&path, list).unwrap();
        let mut fixtures = BTreeMap::from([(LIST_URL.to_string(), path)]);
        if with_tarball {
            fixtures.insert(URL.to_string(), f._dir.path().join("t.tgz"));
        }
        let target = Arc::new(FakeTarget::with_fixtures(fixtures));
        Fixture {
            ctx: Ctx::new(target.clone()),
            target,
            ..f
        }
    }

    fn from_list(url: &str, list: &str, dest: &str) -> FetchVerify {
        FetchVerify {
            sha256: None,
            sha256_from: Some(list.into()),
            extract: Some(Extract::All(true)),
            strip: Some(1),
            ..opts(url, "", dest)
        }
    }

    #[test]
    fn sha256_from_a_checksum_list() {
        let f = listed(true);
        let got = fetch_verify(&f.ctx, &from_list(URL, LIST_URL, "/opt/tool")).unwrap();
        assert_eq!(
            got,
            Installed::Extracted(vec![
                "/opt/tool/tool".into(),
                "/opt/tool/LICENSE".into(),
                "/opt/tool/conf/a.yml".into(),
                "/opt/tool/current".into(),
            ])
        );
        let i = f.ctx.journal.lock().unwrap().inputs[0].clone();
        assert_eq!(
            (i.pin.as_str(), i.from.as_deref()),
            (f.tar_sha.as_str(), Some(LIST_URL))
        );

        // Not listed: the error names the list and the file.
        let e = fetch_verify(
            &f.ctx,
            &from_list(
                "https://example.org/dl/tool-1.0.linux-386.tar.gz",
                LIST_URL,
                "/x",
            ),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!("{LIST_URL}: no entry for `tool-1.0.linux-386.tar.gz` in the checksum list")
        );
        assert!(!f.target.root().exists("/x"));
    }

    #[test]
    fn sha256_from_without_the_list_records_the_source() {
        let f = fixture(false);
        let got = fetch_verify(&f.ctx, &from_list(URL, LIST_URL, "/opt/tool")).unwrap();
        assert_eq!(got, Installed::Extracted(vec![]));
        let o = FetchVerify {
            sha256_from: Some("lock".into()),
            extract: None,
            strip: None,
            ..from_list(BIN_URL, "", "/usr/bin/tool")
        };
        assert_eq!(
            fetch_verify(&f.ctx, &o).unwrap(),
            Installed::File("/usr/bin/tool".into())
        );
        let j = f.ctx.journal.lock().unwrap();
        let got: Vec<(&str, Option<&str>)> = j
            .inputs
            .iter()
            .map(|i| (i.pin.as_str(), i.from.as_deref()))
            .collect();
        assert_eq!(got, [("", Some(LIST_URL)), ("", Some("lock"))]);
    }

    #[test]
    fn pin_options_are_checked() {
        let f = fixture(false);
        let cases = [
            (
                FetchVerify {
                    sha256_from: Some(LIST_URL.into()),
                    ..opts(BIN_URL, &f.bin_sha, "/x")
                },
                "either `sha256` or `sha256_from`, not both",
            ),
            (
                from_list(URL, "sha256sums.txt", "/x"),
                "sha256_from: `sha256sums.txt` is not a URL",
            ),
            (
                from_list("https://example.org/", LIST_URL, "/x"),
                "has no file name to look up",
            ),
        ];
        for (o, want) in cases {
            let e = fetch_verify(&f.ctx, &o).unwrap_err().to_string();
            assert!(e.contains(want), "{o:?}: {e}");
        }
    }

    #[test]
    fn a_real_fetcher_never_trusts_an_unpinned_download() {
        struct Network;
        impl crate::fetch::Fetcher for Network {
            fn fetch(&self, url: &str, _: &str) -> Result<Option<PathBuf>, FetchError> {
                panic!("{url} must not be fetched")
            }
            fn git(&self, url: &str, _: &str) -> Result<Option<PathBuf>, FetchError> {
                panic!("{url} must not be fetched")
            }
            fn fetch_text(&self, url: &str) -> Result<Option<String>, FetchError> {
                panic!("{url} must not be fetched")
            }
        }
        let t = Arc::new(FakeTarget::new(&FakeOs::default(), Box::new(Network)).unwrap());
        let c = Ctx::new(t);
        let o = FetchVerify {
            sha256_from: Some("lock".into()),
            extract: None,
            strip: None,
            ..from_list(BIN_URL, "", "/usr/bin/tool")
        };
        let e = fetch_verify(&c, &o).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("{BIN_URL}: upstream publishes no checksum")),
            "{e}"
        );
        assert!(c.journal.lock().unwrap().inputs.is_empty());
    }

    #[test]
    fn locked_pins_come_from_the_lock_and_unlocked_inputs_are_refused() {
        let f = listed(true);
        let lock = crate::lock::Lock::parse(
            &format!(
                "url {URL} {} from={LIST_URL}\nurl {BIN_URL} {} from=lock\n",
                f.tar_sha, f.bin_sha
            ),
            "pgimg.lock",
        )
        .unwrap();
        // The tarball is pinned by the lock: the list (a fixture here) is not read.
        let c = f.ctx.clone().with_lock(lock);
        fetch_verify(&c, &from_list(URL, LIST_URL, "/opt/tool")).unwrap();
        assert!(f.target.root().exists("/opt/tool/tool"));
        let cases = [
            (
                from_list(URL, "https://example.org/other/SHA256SUMS", "/y"),
                "its pin comes from https://example.org/other/SHA256SUMS but in pgimg.lock from",
            ),
            (
                opts(URL, &f.tar_sha, "/y"),
                "its pin comes from the recipe but in pgimg.lock from",
            ),
            (
                opts(BIN_URL, &f.tar_sha, "/y"),
                "its pin comes from the recipe",
            ),
            (
                from_list("https://example.org/dl/new.tar.gz", LIST_URL, "/y"),
                "url https://example.org/dl/new.tar.gz is not in pgimg.lock",
            ),
        ];
        for (o, want) in cases {
            let e = fetch_verify(&c, &o).unwrap_err().to_string();
            assert!(e.contains(want), "{o:?}: {e}");
        }
        assert!(!f.target.root().exists("/y"));
        assert_eq!(c.journal.lock().unwrap().inputs.len(), 1);
    }

    #[test]
    fn mirrored_urls_are_recorded_with_their_upstream() {
        let f = fixture(false);
        let c = f.ctx.clone().with_mirrors(BTreeMap::from([(
            "dl".to_string(),
            "http://127.0.0.1:9/m".to_string(),
        )]));
        let base = crate::mirror::mirror(&c, "dl", "https://example.org").unwrap();
        fetch_verify(
            &c,
            &from_list(
                &format!("{base}/dl/tool-1.0.linux-amd64.tar.gz"),
                &format!("{base}/dl/sha256sums.txt"),
                "/opt/t",
            ),
        )
        .unwrap();
        let i = c.journal.lock().unwrap().inputs[0].clone();
        assert_eq!(i.url, "http://127.0.0.1:9/m/dl/tool-1.0.linux-amd64.tar.gz");
        assert_eq!(i.upstream.as_deref(), Some(URL));
        assert_eq!(i.from.as_deref(), Some(LIST_URL));
    }

    #[test]
    fn from_rhai_returns_string_or_array_and_rejects_unknown_keys() {
        let f = fixture(true);
        let e = engine(&f.ctx);
        let script = format!(
            r#"fetch_verify(#{{ url: "{BIN_URL}", sha256: "{}", dest: "/usr/local/bin/tool", mode: 0o755 }})"#,
            f.bin_sha
        );
        assert_eq!(e.eval::<String>(&script).unwrap(), "/usr/local/bin/tool");
        let script = format!(
            r#"fetch_verify(#{{ url: "{URL}", sha256: "{}", dest: "/opt/t", extract: "LICENSE", strip: 1 }})"#,
            f.tar_sha
        );
        let got: rhai::Array = e.eval(&script).unwrap();
        assert_eq!(
            got.into_iter().map(|d| d.to_string()).collect::<Vec<_>>(),
            ["/opt/t/LICENSE"]
        );
        let script = format!(
            r#"fetch_verify(#{{ url: "{URL}", sha256: "{}", dest: "/opt/t", extarct: true }})"#,
            f.tar_sha
        );
        let err = failure(e.eval::<Dynamic>(&script).unwrap_err());
        assert!(
            err.contains("fetch_verify: options: unknown field `extarct`"),
            "{err}"
        );
        let err = failure(
            e.eval::<Dynamic>(r#"fetch_verify(#{ url: "https://h/x", dest: "/x" })"#)
                .unwrap_err(),
        );
        assert!(
            err.contains("fetch_verify: no pin: give `sha256`, or `sha256_from`"),
            "{err}"
        );
        let script = format!(
            r#"fetch_verify(#{{ url: "{URL}", sha256: "{}", dest: "/srv", extract: true, strip: 1 }})"#,
            f.tar_sha
        );
        let got: rhai::Array = e.eval(&script).unwrap();
        assert_eq!(got.len(), 4);
        let actions = f.ctx.journal.lock().unwrap().actions.len();
        assert_eq!(actions, 5);
    }
}
