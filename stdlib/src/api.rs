//! The Rhai boundary: locations, the error every primitive raises, option maps.

use rhai::{Dynamic, EvalAltResult, NativeCallContext};
use serde::de::DeserializeOwned;

use crate::error::{Error, Result};
use crate::journal::Loc;

/// The error value a failing primitive raises. Its `message` already starts
/// with `file:line:col: primitive:`, so the CLI prints it as is. A recipe that
/// catches it (`try { … } catch (e) { … }`) reads the same text as `${e}` and
/// the parts as `e.file`, `e.line`, `e.col`, `e.primitive`, `e.cause`;
/// `type_of(e)` is `"PrimitiveFailure"` (see [`register_failure`]).
#[derive(Debug, Clone)]
pub struct PrimitiveFailure {
    /// `file:line:col: primitive: cause`
    pub message: String,
    pub file: String,
    /// 1-based; 0 when Rhai gave no position.
    pub line: usize,
    /// 1-based; 0 when Rhai gave no position.
    pub col: usize,
    pub primitive: String,
    pub cause: String,
}

/// Makes [`PrimitiveFailure`] readable from a recipe that catches it:
/// without this, `${e}` shows the Rust type's name.
pub fn register_failure(m: &mut rhai::Module) {
    m.set_custom_type::<PrimitiveFailure>("PrimitiveFailure");
    m.set_native_fn("to_string", |f: &mut PrimitiveFailure| {
        Ok(f.message.clone())
    });
    m.set_native_fn("to_debug", |f: &mut PrimitiveFailure| Ok(f.message.clone()));
    m.set_getter_fn("message", |f: &mut PrimitiveFailure| Ok(f.message.clone()));
    m.set_getter_fn("file", |f: &mut PrimitiveFailure| Ok(f.file.clone()));
    m.set_getter_fn("line", |f: &mut PrimitiveFailure| Ok(f.line as rhai::INT));
    m.set_getter_fn("col", |f: &mut PrimitiveFailure| Ok(f.col as rhai::INT));
    m.set_getter_fn("primitive", |f: &mut PrimitiveFailure| {
        Ok(f.primitive.clone())
    });
    m.set_getter_fn("cause", |f: &mut PrimitiveFailure| Ok(f.cause.clone()));
}

/// Where the primitive was called from.
pub fn location(nctx: &NativeCallContext) -> Loc {
    let pos = nctx.call_position();
    Loc::new(
        nctx.call_source().unwrap_or("<recipe>"),
        pos.line().unwrap_or(0),
        pos.position().unwrap_or(0),
    )
}

/// The error for `name` failing at `loc`.
pub fn failure(loc: &Loc, name: &str, err: impl std::fmt::Display) -> Box<EvalAltResult> {
    let line = loc.line;
    let pos = if line > 0 {
        rhai::Position::new(
            line.min(u16::MAX as usize) as u16,
            loc.col.min(u16::MAX as usize) as u16,
        )
    } else {
        rhai::Position::NONE
    };
    EvalAltResult::ErrorRuntime(
        Dynamic::from(PrimitiveFailure {
            message: format!("{loc}: {name}: {err}"),
            file: loc.file.clone(),
            line: loc.line,
            col: loc.col,
            primitive: name.to_string(),
            cause: err.to_string(),
        }),
        pos,
    )
    .into()
}

/// Decodes an options map into `T` (a `deny_unknown_fields` struct), so an
/// unknown key is an error naming it, and a value of the wrong type an error
/// naming its key, however deep (`options: env.LC_ALL: …`): rhai's own
/// message names only the types, and serde_path_to_error tracks the path.
pub fn options<T: DeserializeOwned>(map: rhai::Map) -> Result<T> {
    let value = Dynamic::from_map(map);
    serde_path_to_error::deserialize(rhai::serde::DynamicDeserializer::new(&value)).map_err(|e| {
        let msg = strip_position(&e.inner().to_string());
        let path = e.path().to_string();
        // An unknown key is named by the message; its path is where it stood.
        if path == "." || msg.starts_with("unknown field") {
            Error::invalid(format!("options: {msg}"))
        } else {
            Error::invalid(format!("options: {path}: {msg}"))
        }
    })
}

/// An options struct that flattens another (`#[serde(flatten)]`): serde
/// then refuses an unknown key without listing the valid ones, so the
/// struct lists them.
pub trait FlatOptions: DeserializeOwned {
    /// Every key the struct takes, its own and the flattened struct's
    /// ([`assert_keys_are_the_fields`] keeps the two lists equal).
    const KEYS: &'static [&'static str];
}

/// Panics unless `T::KEYS` are exactly the fields of `T` (its own and the
/// flattened ones): what its default serializes to. A field added
/// without its key would be refused in recipes, a key without a field would
/// be listed as valid.
#[cfg(test)]
pub fn assert_keys_are_the_fields<T: FlatOptions + Default + serde::Serialize>() {
    let fields = serde_json::to_value(T::default()).unwrap();
    let fields: Vec<&str> = fields
        .as_object()
        .expect("options serialize as a map")
        .keys()
        .map(String::as_str)
        .collect();
    let mut keys = T::KEYS.to_vec();
    let mut sorted = fields.clone();
    keys.sort_unstable();
    sorted.sort_unstable();
    assert_eq!(
        keys,
        sorted,
        "KEYS against the fields of {}",
        std::any::type_name::<T>()
    );
}

/// [`options`] for a [`FlatOptions`] struct: an unknown key is an error
/// listing [`FlatOptions::KEYS`], as serde lists the fields of a plain struct.
pub fn flat_options<T: FlatOptions>(map: rhai::Map) -> Result<T> {
    if let Some(key) = map.keys().find(|k| !T::KEYS.contains(&k.as_str())) {
        let keys: Vec<String> = T::KEYS.iter().map(|k| format!("`{k}`")).collect();
        return Err(Error::invalid(format!(
            "options: unknown field `{key}`, expected one of {}",
            keys.join(", ")
        )));
    }
    options(map.clone()).map_err(|e| name_the_key::<T>(e, &map))
}

/// serde's `flatten` decodes the flattened keys from a buffer that
/// serde_path_to_error cannot see into, so their type errors come without a
/// key: the key is the one whose value alone fails the same way (a struct
/// checks values as it reads them and missing fields only at the end).
fn name_the_key<T: FlatOptions>(e: Error, map: &rhai::Map) -> Error {
    let msg = e.to_string();
    let Some(why) = msg.strip_prefix("options: ") else {
        return e;
    };
    let named = |k: &str| {
        [":", ".", "["]
            .iter()
            .any(|c| why.starts_with(&format!("{k}{c}")))
    };
    if why.starts_with("missing field") || map.keys().any(|k| named(k)) {
        return e;
    }
    for (key, value) in map {
        let alone = rhai::Map::from([(key.clone(), value.clone())]);
        if let Err(e) = options::<T>(alone) {
            if e.to_string() == msg {
                return Error::invalid(format!("options: {key}: {why}"));
            }
        }
    }
    e
}

/// `from_dynamic` errors end with ` (line 0, position 0)` or similar noise,
/// and its type errors name Rust types (`Output type incorrect: string
/// (expecting alloc::vec::Vec<alloc::string::String>)`); the recipe writer
/// reads `expected an array of strings, found a string`.
fn strip_position(msg: &str) -> String {
    let msg = msg.trim_start_matches("Syntax error: ");
    let msg = match msg.find(" (line ") {
        Some(i) => &msg[..i],
        None => msg.trim_end_matches(" @ none"),
    };
    let type_error = msg
        .strip_prefix("Output type incorrect: ")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|rest| rest.split_once(" (expecting "));
    match type_error {
        Some((found, want)) => format!(
            "expected {}, found {}",
            recipe_type(want),
            recipe_type(found)
        ),
        None => msg.to_string(),
    }
}

/// A Rust or Rhai type name as a recipe writer knows the value.
fn recipe_type(t: &str) -> String {
    let t = t.trim();
    let inner = |prefix: &str| t.strip_prefix(prefix).and_then(|r| r.strip_suffix('>'));
    if let Some(item) = inner("alloc::vec::Vec<") {
        let item = recipe_type(item);
        let item = item.trim_start_matches("an ").trim_start_matches("a ");
        return format!("an array of {item}s");
    }
    if let Some(value) = inner("core::option::Option<") {
        return recipe_type(value);
    }
    if t.contains("Map<") {
        return "a map".into();
    }
    match t.rsplit("::").next().unwrap_or(t) {
        "i8" | "i16" | "i32" | "i64" | "u8" | "u16" | "u32" | "u64" | "usize" => "an integer",
        "f32" | "f64" => "a number",
        "bool" => "a bool (true or false)",
        "string" | "String" | "ImmutableString" | "char" | "&str" => "a string",
        "array" | "Array" => "an array",
        "map" => "a map",
        "()" => "nothing (unit)",
        other => return other.to_string(),
    }
    .into()
}

/// A Rhai value that is one string or an array of strings, as a Vec.
pub fn string_list(value: &Dynamic, what: &str) -> Result<Vec<String>> {
    if let Some(s) = value.clone().try_cast::<rhai::ImmutableString>() {
        return Ok(vec![s.to_string()]);
    }
    if let Some(arr) = value.clone().try_cast::<rhai::Array>() {
        return arr
            .into_iter()
            .map(|v| {
                v.into_immutable_string()
                    .map(|s| s.to_string())
                    .map_err(|t| Error::invalid(format!("{what}: expected strings, found {t}")))
            })
            .collect();
    }
    Err(Error::invalid(format!(
        "{what}: expected a string or an array of strings, found {}",
        value.type_name()
    )))
}

/// A string list as a Rhai array.
pub fn to_array(items: impl IntoIterator<Item = String>) -> rhai::Array {
    items.into_iter().map(Dynamic::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug, Default)]
    #[serde(deny_unknown_fields)]
    struct Opts {
        #[allow(dead_code)]
        mode: Option<i64>,
    }

    #[test]
    fn a_caught_primitive_failure_reads_as_its_message_and_parts() {
        use crate::fake::FakeOs;
        use crate::fetch::RecordingFetcher;
        use crate::FakeTarget;
        let t = FakeTarget::new(&FakeOs::default(), Box::new(RecordingFetcher::default())).unwrap();
        let ctx = crate::Ctx::new(std::sync::Arc::new(t));
        let mut engine = rhai::Engine::new();
        crate::register(&mut engine, &ctx);
        let got: rhai::Array = engine
            .eval(
                "let r = [];\n\
                 try { write_file(\"etc/relative\", \"x\"); }\n\
                 catch (e) { r = [`${e}`, type_of(e), e.file, e.line, e.col, e.primitive, e.cause]; }\n\
                 r",
            )
            .unwrap();
        let got: Vec<String> = got.into_iter().map(|v| v.to_string()).collect();
        assert!(
            got[0].starts_with("<recipe>:2:7: write_file: ") && got[0].ends_with(&got[6]),
            "{got:?}"
        );
        assert!(got[6].contains("etc/relative"), "{got:?}");
        assert_eq!(
            got[1..6],
            ["PrimitiveFailure", "<recipe>", "2", "7", "write_file"]
        );
    }

    #[test]
    fn unknown_option_is_named() {
        let mut m = rhai::Map::new();
        m.insert("mdoe".into(), Dynamic::from(0o644_i64));
        let err = options::<Opts>(m).unwrap_err().to_string();
        assert!(err.contains("unknown field `mdoe`"), "{err}");
        assert!(err.contains("`mode`"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_key_however_deep() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Nested {
            #[allow(dead_code)]
            env: Option<std::collections::BTreeMap<String, String>>,
        }
        let mut m = rhai::Map::new();
        m.insert("mode".into(), Dynamic::from("0644"));
        let err = options::<Opts>(m).unwrap_err().to_string();
        assert_eq!(err, "options: mode: expected an integer, found a string");
        let mut env = rhai::Map::new();
        env.insert("LC_ALL".into(), Dynamic::from(1_i64));
        let mut m = rhai::Map::new();
        m.insert("env".into(), Dynamic::from_map(env));
        let err = options::<Nested>(m).unwrap_err().to_string();
        assert_eq!(
            err,
            "options: env.LC_ALL: expected a string, found an integer"
        );
        assert_eq!(
            recipe_type("alloc::vec::Vec<alloc::string::String>"),
            "an array of strings"
        );
    }

    #[test]
    fn string_list_takes_one_or_many() {
        assert_eq!(string_list(&Dynamic::from("a"), "pkgs").unwrap(), vec!["a"]);
        let arr: rhai::Array = vec![Dynamic::from("a"), Dynamic::from("b")];
        assert_eq!(
            string_list(&Dynamic::from(arr), "pkgs").unwrap(),
            vec!["a", "b"]
        );
        assert!(string_list(&Dynamic::from(1_i64), "pkgs").is_err());
    }
}
