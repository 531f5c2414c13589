//! The `fetch_verify` primitive: a pinned download, verified on the host, then
//! installed into the image as a file or unpacked as an archive.

use rhai::{Dynamic, Engine, FuncRegistration, Map, NativeCallContext};
use serde::Deserialize;

use crate::api::{options, primitive, to_array};
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::extract::{extract, ArchiveKind, ExtractError};
use crate::fetch::{check_url, normalize_sha256, url_file_name};
use crate::files::{apply, image_path};
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
    pub sha256: String,
    pub dest: String,
    pub extract: Option<Extract>,
    pub strip: Option<i64>,
    pub mode: Option<i64>,
    pub owner: Option<String>,
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

/// The checked form of the options, before anything is fetched.
struct Plan {
    sha256: String,
    /// The file path, or the directory to extract into.
    dest: String,
    extract: Option<Option<glob::Pattern>>,
    strip: usize,
    mode: Option<u32>,
}

fn check(opts: &FetchVerify) -> Result<Plan> {
    check_url(&opts.url)?;
    let sha256 = normalize_sha256(&opts.sha256)?;
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
        sha256,
        dest,
        extract,
        strip,
        mode,
    })
}

/// Downloads `opts.url` through the target's fetcher (verified against
/// `opts.sha256` before anything reaches the image) and installs it.
///
/// With a recording fetcher (plan, test) nothing is written; the input is
/// still recorded and the predicted result returned: the file path, or an
/// empty list for an extraction.
pub fn fetch_verify(ctx: &Ctx, opts: &FetchVerify) -> Result<Installed> {
    let plan = check(opts)?;
    let url = opts.url.as_str();
    ctx.record_input("url", url, &plan.sha256, &plan.dest);
    let Some(host) = ctx.target.fetcher().fetch(url, &plan.sha256)? else {
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

pub(crate) fn register(engine: &mut Engine, ctx: &Ctx) {
    let c = ctx.clone();
    FuncRegistration::new("fetch_verify")
        .with_comments([
            "/// Downloads `url` on the host through the cache, verifies `sha256` before anything is\n\
             /// written into the image, and installs it.\n\
             /// Options: `url`, `sha256`, `dest` (required); `extract` (`true` or a glob of members),\n\
             /// `strip` (leading path components dropped when extracting), `mode`, `owner`.\n\
             /// Without `extract`, `dest` is a file path (ending in `/`: a directory, the URL's file\n\
             /// name is used) and the path is returned; with it, `dest` is a directory and the\n\
             /// extracted paths are returned.",
        ])
        .with_params_info(["opts: Map", "Dynamic"])
        .register_into_engine(engine, move |nctx: NativeCallContext, opts: Map| {
            primitive(&c, &nctx, "fetch_verify", &[opts.clone().into()], |_| {
                fetch_verify(&c, &options(opts)?).map(Installed::into_dynamic)
            })
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fetch::RecordingFetcher;
    use crate::{FakeOs, FakeTarget, Target};
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::io::Write;
    use std::path::PathBuf;
    use std::sync::Arc;

    const URL: &str = "https://example.org/dl/tool-1.0.linux-amd64.tar.gz";
    const BIN_URL: &str = "https://example.org/dl/tool";

    fn sha(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    fn tarball() -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(
            Vec::new(),
            flate2::Compression::fast(),
        ));
        let mut add = |path: &str, data: &[u8], mode: u32, kind: tar::EntryType| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, path, data).unwrap();
        };
        add("tool-1.0/", b"", 0o755, tar::EntryType::Directory);
        add(
            "tool-1.0/tool",
            b"#!/bin/sh\necho tool\n",
            0o4755,
            tar::EntryType::Regular,
        );
        add("tool-1.0/LICENSE", b"MIT\n", 0o644, tar::EntryType::Regular);
        add(
            "tool-1.0/conf/a.yml",
            b"a: 1\n",
            0o640,
            tar::EntryType::Regular,
        );
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
        let target = Arc::new(
            FakeTarget::new(
                &FakeOs::default(),
                Box::new(RecordingFetcher::new(fixtures)),
            )
            .unwrap(),
        );
        Fixture {
            _dir: dir,
            ctx: Ctx::new(target.clone()),
            target,
            tar_sha: sha(&tar),
            bin_sha: sha(&bin),
        }
    }

    fn opts(url: &str, sha256: &str, dest: &str) -> FetchVerify {
        FetchVerify {
            url: url.into(),
            sha256: sha256.into(),
            dest: dest.into(),
            extract: None,
            strip: None,
            mode: None,
            owner: None,
        }
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

    /// The message a failing primitive raised.
    fn failure(err: rhai::EvalAltResult) -> String {
        match err {
            rhai::EvalAltResult::ErrorRuntime(d, _) => {
                d.try_cast::<crate::api::PrimitiveFailure>().map(|f| f.0)
            }
            _ => None,
        }
        .unwrap_or_else(|| panic!("not a primitive failure"))
    }

    fn engine(ctx: &Ctx) -> Engine {
        let mut engine = Engine::new();
        register(&mut engine, ctx);
        engine
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
        let err = failure(*e.eval::<Dynamic>(&script).unwrap_err());
        assert!(
            err.contains("fetch_verify: options: unknown field `extarct`"),
            "{err}"
        );
        let err = failure(
            *e.eval::<Dynamic>(r#"fetch_verify(#{ url: "https://h/x", dest: "/x" })"#)
                .unwrap_err(),
        );
        assert!(err.contains("missing field `sha256`"), "{err}");
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
