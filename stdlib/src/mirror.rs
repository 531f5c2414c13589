//! `mirror(name, default)`: a source base URL that `--mirror NAME=URL` can redirect without editing recipes.

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::fetch::check_url;
use crate::journal::Redirect;
use crate::register::Str;
use crate::rhai_fns;

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

/// The base URL for the source `name`: the `--mirror` value when one was
/// given, else `default`. A redirect keeps the default's trailing-slash
/// style, so `${base}/path` composes the same either way, and is recorded
/// so pins and the lock still name the upstream URL.
pub fn mirror(ctx: &Ctx, name: &str, default: &str) -> Result<String> {
    if !valid_name(name) {
        return Err(Error::invalid(format!(
            "`{name}` is not a mirror name (lowercase letters, digits, `-`, `_`)"
        )));
    }
    check_url(default)?;
    crate::journal::Asked::note(&mut ctx.journal.lock().unwrap().asked.mirrors, name);
    let Some(given) = ctx.mirrors.get(name) else {
        return Ok(default.to_string());
    };
    check_url(given).map_err(|e| Error::invalid(format!("--mirror {name}={given}: {e}")))?;
    let url = if default.ends_with('/') {
        format!("{}/", given.trim_end_matches('/'))
    } else {
        given.trim_end_matches('/').to_string()
    };
    let mut j = ctx.journal.lock().unwrap();
    // The plan shows where the call was redirected, beside its arguments.
    if let Some(call) = j.actions.last_mut().filter(|a| a.primitive == "mirror") {
        if let serde_json::Value::Array(args) = &mut call.args {
            args.push(serde_json::json!({ "redirected": given }));
        }
    }
    let redirect = Redirect {
        name: name.to_string(),
        default: default.to_string(),
        url: url.clone(),
    };
    if !j.redirects.contains(&redirect) {
        j.redirects.push(redirect);
    }
    Ok(url)
}

/// `--mirror` names the recipe never asked for: most likely a typo, which
/// would otherwise silently leave the upstream source in place.
pub fn unused_mirrors(ctx: &Ctx) -> Vec<String> {
    crate::journal::not_in(
        ctx.mirrors.keys(),
        &ctx.journal.lock().unwrap().asked.mirrors,
    )
}

rhai_fns! { pub(crate) fn register;
    /// The base URL of the source `name`: the value of `--mirror name=URL` when given, else
    /// `default`. Pins stay those of the upstream files, so a mirror must serve the same bytes;
    /// the lock file names the upstream URL.
    action mirror(name: Str, default: Str) |c, _| mirror(c, &name, &default);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeTarget;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn ctx(mirrors: &[(&str, &str)]) -> Ctx {
        Ctx::new(Arc::new(FakeTarget::ubuntu())).with_mirrors(
            mirrors
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn default_or_redirect_with_the_defaults_slash_style() {
        let c = ctx(&[
            ("releases", "http://127.0.0.1:8781/gh/"),
            ("ubuntu", "http://127.0.0.1:8780/ubuntu"),
        ]);
        let cases = [
            ("releases", "https://github.com", "http://127.0.0.1:8781/gh"),
            (
                "ubuntu",
                "http://archive.ubuntu.com/ubuntu/",
                "http://127.0.0.1:8780/ubuntu/",
            ),
            (
                "pgdg",
                "https://apt.postgresql.org/pub/repos/apt",
                "https://apt.postgresql.org/pub/repos/apt",
            ),
        ];
        for (name, default, want) in cases {
            assert_eq!(mirror(&c, name, default).unwrap(), want, "{name}");
        }
        let j = c.journal.lock().unwrap();
        assert_eq!(j.asked.mirrors, ["releases", "ubuntu", "pgdg"]);
        assert_eq!(j.redirects.len(), 2);
    }

    #[test]
    fn upstream_urls_undo_the_redirect() {
        let c = ctx(&[
            ("releases", "http://127.0.0.1:8781/gh"),
            ("github", "http://127.0.0.1:8781/gh/git"),
        ]);
        let rel = mirror(&c, "releases", "https://github.com").unwrap();
        let git = mirror(&c, "github", "https://github.com").unwrap();
        let cases = [
            (
                format!("{rel}/prometheus/prometheus/releases/x.tar.gz"),
                "https://github.com/prometheus/prometheus/releases/x.tar.gz",
            ),
            (
                format!("{git}/wal-g/wal-g.git"),
                "https://github.com/wal-g/wal-g.git",
            ),
            (
                "http://127.0.0.1:8781/ghost/x".to_string(),
                "http://127.0.0.1:8781/ghost/x",
            ),
            ("https://example.org/x".to_string(), "https://example.org/x"),
        ];
        for (url, want) in cases {
            assert_eq!(c.upstream_url(&url), want, "{url}");
        }
    }

    #[test]
    fn bad_names_urls_and_unused_mirrors() {
        let c = ctx(&[("releases", "ftp://x"), ("ubunut", "http://127.0.0.1/u")]);
        assert!(mirror(&c, "Bad Name", "https://x")
            .unwrap_err()
            .to_string()
            .contains("not a mirror name"));
        assert!(mirror(&c, "pgdg", "apt.postgresql.org")
            .unwrap_err()
            .to_string()
            .contains("not a URL"));
        let e = mirror(&c, "releases", "https://github.com")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("--mirror releases=ftp://x: "), "{e}");
        assert_eq!(unused_mirrors(&c), ["ubunut"]);
    }

    #[test]
    fn from_rhai_the_plan_shows_the_redirect() {
        let c = ctx(&[("pgdg", "http://127.0.0.1:9/pgdg")]);
        let got: String = crate::fake::engine_on(&c)
            .eval(r#"mirror("pgdg", "https://apt.postgresql.org/pub/repos/apt") + "|" + mirror("releases", "https://github.com")"#)
            .unwrap();
        assert_eq!(got, "http://127.0.0.1:9/pgdg|https://github.com");
        let j = c.journal.lock().unwrap();
        assert_eq!(j.actions.len(), 2);
        assert_eq!(
            j.actions[0].args,
            serde_json::json!(["pgdg", "https://apt.postgresql.org/pub/repos/apt", { "redirected": "http://127.0.0.1:9/pgdg" }])
        );
        assert_eq!(
            j.actions[1].args,
            serde_json::json!(["releases", "https://github.com"])
        );
    }
}
