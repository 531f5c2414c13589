//! Facts and parameters: `arch`, `image_arch`, `os_release`, `param`, `log`.

use std::collections::BTreeMap;

use rhai::{Dynamic, Map};

use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::register::Str;
use crate::rhai_fns;

/// A malformed line in an os-release file.
#[derive(Debug, thiserror::Error)]
#[error("{path}:{line}: {reason}")]
pub struct OsReleaseError {
    pub path: String,
    pub line: usize,
    pub reason: String,
}

/// Reads the image's os-release: `/etc/os-release`, falling back to
/// `/usr/lib/os-release` as os-release(5) says. The `/etc` file is usually a
/// relative symlink into `/usr/lib`; [`ImageRoot`](crate::ImageRoot) resolves
/// it inside the image.
pub fn os_release(ctx: &Ctx) -> Result<BTreeMap<String, String>> {
    let root = ctx.target.root();
    for path in ["/etc/os-release", "/usr/lib/os-release"] {
        if let Some(text) = root.read_string_opt(path)? {
            return parse_os_release(path, &text).map_err(|e| Error::invalid(e.to_string()));
        }
    }
    Err(Error::invalid(
        "the image has neither /etc/os-release nor /usr/lib/os-release",
    ))
}

/// Parses os-release(5) text: `KEY=value` lines, `#` comments, blank lines;
/// values optionally in double quotes (where `\` escapes `"`, `\`, `$` and
/// `` ` ``) or single quotes (literal); unquoted values take `\` escapes
/// shell-style. Concatenating quoted pieces is not allowed by the format.
pub fn parse_os_release(
    path: &str,
    text: &str,
) -> Result<BTreeMap<String, String>, OsReleaseError> {
    let mut out = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |reason: String| OsReleaseError {
            path: path.to_string(),
            line: i + 1,
            reason,
        };
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| err(format!("expected KEY=value, found `{line}`")))?;
        let valid_key = key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid_key {
            return Err(err(format!("`{key}` is not a variable name")));
        }
        out.insert(key.to_string(), unquote(value).map_err(err)?);
    }
    Ok(out)
}

fn unquote(value: &str) -> Result<String, String> {
    let mut chars = value.chars();
    let mut out = String::new();
    match value.chars().next() {
        Some(q @ ('"' | '\'')) => {
            chars.next();
            let mut closed = false;
            while let Some(c) = chars.next() {
                match c {
                    c if c == q => {
                        closed = true;
                        break;
                    }
                    '\\' if q == '"' => match chars.next() {
                        Some(e @ ('"' | '\\' | '$' | '`')) => out.push(e),
                        // In shell double quotes a backslash before anything
                        // else stays a backslash.
                        Some(e) => {
                            out.push('\\');
                            out.push(e);
                        }
                        None => return Err("unterminated escape".into()),
                    },
                    c => out.push(c),
                }
            }
            if !closed {
                return Err(format!("unterminated {q} quote in `{value}`"));
            }
            let rest: String = chars.collect();
            if !rest.trim().is_empty() {
                return Err(format!(
                    "unexpected `{rest}` after the closing quote (os-release does not allow concatenation)"
                ));
            }
        }
        _ => {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.push(chars.next().ok_or("unterminated escape")?),
                    c if c.is_whitespace() || "\"'$`;".contains(c) => {
                        return Err(format!("`{value}` must be quoted: it contains `{c}`"))
                    }
                    c => out.push(c),
                }
            }
        }
    }
    Ok(out)
}

/// Records that the recipe read parameter `name` (see [`unused_params`]).
fn note_read(ctx: &Ctx, name: &str) {
    crate::journal::Asked::note(&mut ctx.journal.lock().unwrap().asked.params, name);
}

/// The `--set` names the recipe never read: most likely a typo, which would
/// otherwise build with the default silently.
pub fn unused_params(ctx: &Ctx) -> Vec<String> {
    crate::journal::not_in(ctx.params.keys(), &ctx.journal.lock().unwrap().asked.params)
}

/// `--set name=value`, or an error telling how to pass it.
pub fn param(ctx: &Ctx, name: &str) -> Result<String> {
    note_read(ctx, name);
    ctx.param(name).map(str::to_string).ok_or_else(|| {
        Error::invalid(format!(
            "parameter `{name}` is not set and has no default; pass `--set {name}=value`"
        ))
    })
}

/// `--set name=value` converted to the type of `default`, or `default`.
pub fn param_or(ctx: &Ctx, name: &str, default: Dynamic) -> Result<Dynamic> {
    note_read(ctx, name);
    let Some(value) = ctx.param(name) else {
        return Ok(default);
    };
    let bad = |what: &str| {
        Error::invalid(format!(
            "parameter `{name}`: `{value}` is not {what} (the type of its default)"
        ))
    };
    // `value` parsed as a T, or the error naming `what` a T is.
    fn parsed<T: std::str::FromStr + rhai::Variant + Clone>(
        value: &str,
        bad: impl Fn(&str) -> Error,
        what: &str,
    ) -> Result<Dynamic> {
        value
            .trim()
            .parse::<T>()
            .map(Dynamic::from)
            .map_err(|_| bad(what))
    }
    if default.is_int() {
        parsed::<rhai::INT>(value, bad, "an integer")
    } else if default.is_float() {
        parsed::<rhai::FLOAT>(value, bad, "a number")
    } else if default.is_bool() {
        match value.trim() {
            "true" | "yes" | "1" | "on" => Ok(Dynamic::TRUE),
            "false" | "no" | "0" | "off" => Ok(Dynamic::FALSE),
            _ => Err(bad("a boolean (true/false)")),
        }
    } else if default.is_string() {
        Ok(Dynamic::from(value.to_string()))
    } else {
        Err(Error::invalid(format!(
            "parameter `{name}`: a default must be a string, integer, float or bool, not {}",
            default.type_name()
        )))
    }
}

rhai_fns! { pub(crate) fn register;
    /// Debian architecture of the image: `"amd64"`, `"arm64"`.
    query arch() |c, _| Ok(c.target.facts().arch.clone());
    /// Image naming architecture: `"x64"` for amd64, `"arm64"`.
    query image_arch() |c, _| Ok(c.target.facts().image_arch().to_string());
    /// The image's `/etc/os-release` as a map (`ID`, `VERSION_ID`, `VERSION_CODENAME`, ...).
    query os_release() |c, _| Ok(os_release(c)?.into_iter().map(|(k, v)| (k.into(), v.into())).collect::<Map>());
    /// The value of `--set name=value`; an error when it is not set.
    query param(name: Str) |c, _| param(c, &name);
    /// The value of `--set name=value`, or `default` when it is not set.
    /// The value takes the type of `default` (string, integer, float or bool).
    query param(name: Str, default: Dynamic) |c, _| param_or(c, &name, default);
    /// Writes a line to the build log (and shows it in the plan).
    action log(msg: Str) |c, loc| { c.log(loc, &msg); Ok(()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{eval_on as eval, FakeOs};
    use crate::fetch::RecordingFetcher;
    use crate::root::Attrs;
    use crate::{FakeTarget, Target};
    use std::sync::{Arc, Mutex};

    fn ctx(arch: &str) -> (Arc<FakeTarget>, Ctx) {
        let os = FakeOs {
            arch: arch.into(),
            ..FakeOs::default()
        };
        let t = Arc::new(FakeTarget::new(&os, Box::new(RecordingFetcher::default())).unwrap());
        (t.clone(), Ctx::new(t))
    }

    #[test]
    fn os_release_quoting() {
        let cases: &[(&str, Option<&str>)] = &[
            ("A=plain", Some("plain")),
            ("A=\"two words\"", Some("two words")),
            ("A='single $quoted \\ `x`'", Some("single $quoted \\ `x`")),
            (r#"A="esc \" \\ \$ \` \n""#, Some(r#"esc " \ $ ` \n"#)),
            (r"A=back\ slash", Some("back slash")),
            ("A=\"\"", Some("")),
            ("A=", Some("")),
            ("A=\"unterminated", None),
            ("A=\"a\"\"b\"", None),
            ("A=two words", None),
            ("1A=x", None),
            ("no equals sign", None),
        ];
        for (line, want) in cases {
            let got = parse_os_release("/etc/os-release", &format!("# comment\n\n{line}\n"));
            match want {
                Some(v) => assert_eq!(got.unwrap()["A"], *v, "{line}"),
                None => {
                    let e = got.unwrap_err();
                    assert_eq!(e.line, 3, "{line}");
                    assert!(e.to_string().starts_with("/etc/os-release:3: "), "{e}");
                }
            }
        }
    }

    #[test]
    fn os_release_through_the_images_symlink() {
        let (t, c) = ctx("amd64");
        assert_eq!(
            t.root().readlink("/etc/os-release").unwrap().to_str(),
            Some("../usr/lib/os-release")
        );
        let m = os_release(&c).unwrap();
        assert_eq!(m["ID"], "ubuntu");
        assert_eq!(m["VERSION_ID"], "22.04");
        assert_eq!(m["VERSION_CODENAME"], "jammy");
        assert_eq!(m["PRETTY_NAME"], "Ubuntu 22.04 (jammy)");

        // Without /etc/os-release the /usr/lib one is the fallback.
        t.root().remove("/etc/os-release").unwrap();
        t.root()
            .write("/usr/lib/os-release", b"ID=debian\n", Attrs::default())
            .unwrap();
        assert_eq!(os_release(&c).unwrap()["ID"], "debian");
        t.root().remove("/usr/lib/os-release").unwrap();
        assert!(os_release(&c).unwrap_err().to_string().contains("neither"));
    }

    #[test]
    fn arch_and_os_release_from_rhai_are_not_recorded() {
        let (_t, c) = ctx("arm64");
        assert_eq!(eval::<String>(&c, "arch()").unwrap(), "arm64");
        assert_eq!(eval::<String>(&c, "image_arch()").unwrap(), "arm64");
        assert_eq!(
            eval::<String>(&c, "os_release().VERSION_CODENAME").unwrap(),
            "jammy"
        );
        let (_t, c2) = ctx("amd64");
        assert_eq!(eval::<String>(&c2, "image_arch()").unwrap(), "x64");
        assert!(c.journal.lock().unwrap().actions.is_empty());
    }

    #[test]
    fn params_with_and_without_defaults() {
        let (_t, c) = ctx("amd64");
        let params = [
            ("pg_versions", "16,17"),
            ("jobs", "8"),
            ("debug", "yes"),
            ("ratio", "x"),
        ];
        let c = c.with_params(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        assert_eq!(param(&c, "pg_versions").unwrap(), "16,17");
        let e = param(&c, "missing").unwrap_err().to_string();
        assert!(e.contains("--set missing=value"), "{e}");
        assert_eq!(
            param_or(&c, "missing", Dynamic::from(3_i64))
                .unwrap()
                .as_int()
                .unwrap(),
            3
        );
        assert_eq!(
            param_or(&c, "jobs", Dynamic::from(1_i64))
                .unwrap()
                .as_int()
                .unwrap(),
            8
        );
        assert!(param_or(&c, "debug", Dynamic::FALSE)
            .unwrap()
            .as_bool()
            .unwrap());
        let e = param_or(&c, "ratio", Dynamic::from(1.5_f64))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`x` is not a number"), "{e}");
        assert!(param_or(&c, "jobs", Dynamic::from(rhai::Array::new())).is_err());

        assert_eq!(
            eval::<String>(&c, r#"param("pg_versions")"#).unwrap(),
            "16,17"
        );
        assert_eq!(
            eval::<String>(&c, r#"param("flavor", "standard")"#).unwrap(),
            "standard"
        );
        assert_eq!(
            eval::<rhai::INT>(&c, r#"param("jobs", 2) * 2"#).unwrap(),
            16
        );
        let e = eval::<String>(&c, r#"param("nope")"#).unwrap_err();
        assert_eq!(e, "<recipe>:1:1: param: parameter `nope` is not set and has no default; pass `--set nope=value`");
    }

    #[test]
    fn log_writes_the_line_and_records_an_action() {
        let (_t, c) = ctx("amd64");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let c = c.with_log(Arc::new(move |loc, msg| {
            sink.lock().unwrap().push(format!("{}: {msg}", loc.line))
        }));
        eval::<()>(&c, "\nlog(\"installing PostgreSQL\")").unwrap();
        assert_eq!(*lines.lock().unwrap(), vec!["2: installing PostgreSQL"]);
        let j = c.journal.lock().unwrap();
        assert_eq!(j.actions.len(), 1);
        assert_eq!(j.actions[0].primitive, "log");
        assert_eq!(
            j.actions[0].args,
            serde_json::json!(["installing PostgreSQL"])
        );
    }
}
