//! Services: `systemd_unit` and `systemd_dropin` install parsed unit files and enable them the way `systemctl enable` does, without running systemd.
//!
//! Units are parsed with systemd's own syntax rules (systemd.syntax(7)):
//! `[Section]` headers, `Key=Value` assignments with whitespace around `=`
//! ignored, `#`/`;` comment lines, empty lines, and a trailing (unescaped)
//! backslash joining a line with the next, where comment lines inside such a
//! continuation are skipped. systemd itself only warns about an assignment
//! outside a section and skips a line without `=`; here both are errors, as
//! are an unterminated `[` header and a file without any section, because
//! they always mean a mistake in the recipe. Errors give the line the
//! logical line starts on.
//!
//! `content` is unit text, or the path of an asset when it contains no
//! newline and an asset of that name exists (`ctx.asset`); otherwise it is
//! parsed as text, and a parse error says that no such asset was found.
//!
//! `enable: true` creates, under `/etc/systemd/system`, the links
//! `systemctl enable` creates for a unit installed there: `<X>.wants/<unit>`
//! for `WantedBy=X`, `<X>.requires/` for `RequiredBy=`, `<X>.upholds/` for
//! `UpheldBy=`, `<alias>` for `Alias=`, each pointing at
//! `/etc/systemd/system/<unit>`. A template (`foo@.service`) is linked under
//! its `DefaultInstance=`. `Also=` units are enabled too when they are
//! installed in `/etc/systemd/system`, `/usr/local/lib/systemd/system`,
//! `/lib/systemd/system` or `/usr/lib/systemd/system` (first found, as
//! systemd's search path orders them; links point at that path), and are an
//! error otherwise. Specifiers `%n %N %p %i %%` are expanded in those
//! settings. A link already there pointing elsewhere is replaced (as
//! `systemctl enable --force` does); links are never removed, so
//! `enable: false` leaves an earlier enablement in place.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use crate::api::options;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::register::Str;
use crate::rhai_fns;
use crate::root::{Attrs, FileKind, ImageRoot};

const SYSTEM_DIR: &str = "/etc/systemd/system";
/// Where `Also=` units are looked for, in systemd's search order (minus /run,
/// which is empty in an image).
const UNIT_PATH: [&str; 4] = [
    SYSTEM_DIR,
    "/usr/local/lib/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
];
const UNIT_TYPES: [&str; 11] = [
    "service",
    "socket",
    "device",
    "mount",
    "automount",
    "swap",
    "target",
    "path",
    "timer",
    "slice",
    "scope",
];
/// systemd's UNIT_NAME_MAX.
const UNIT_NAME_MAX: usize = 255;
const UNIT_MODE: u32 = 0o644;

/// A unit or drop-in error; each names the file and, for syntax, the line.
#[derive(Debug, thiserror::Error)]
pub enum SystemdError {
    #[error("{file}: line {line}: {reason}{hint}")]
    Parse {
        file: String,
        line: usize,
        reason: String,
        hint: String,
    },
    #[error("`{name}` is not a valid unit name: {reason}")]
    BadName { name: String, reason: String },
    #[error("`{name}` is not a valid drop-in name: it must be a file name (no `/`, not starting with `.`)")]
    BadDropin { name: String },
    #[error("{unit}: line {line}: {key}={value}: {reason}")]
    BadInstall {
        unit: String,
        line: usize,
        key: String,
        value: String,
        reason: String,
    },
    #[error("{unit} has no installation config: its [Install] section has no WantedBy=, RequiredBy=, UpheldBy=, Alias= or Also= (systemctl enable refuses it too)")]
    NoInstall { unit: String },
    #[error("{unit} is a template: enabling it needs DefaultInstance= in [Install]")]
    Template { unit: String },
    #[error("{unit}: Also={also}: no such unit in {}", UNIT_PATH.join(", "))]
    AlsoMissing { unit: String, also: String },
    #[error("{unit}: Also={also}: the unit is masked ({path} links to /dev/null)")]
    Masked {
        unit: String,
        also: String,
        path: String,
    },
    #[error("{link} exists and is not a symlink; refusing to replace it with a link to {target}")]
    NotALink { link: String, target: String },
    #[error("asset `{asset}` for {file} is not UTF-8 text: {source}")]
    Asset {
        asset: String,
        file: String,
        #[source]
        source: std::io::Error,
    },
}

impl From<SystemdError> for Error {
    fn from(e: SystemdError) -> Self {
        Error::Invalid(e.to_string())
    }
}

/// Options of `systemd_unit`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitOpts {
    pub enable: Option<bool>,
}

/// One `Key=Value` assignment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    pub value: String,
    pub line: usize,
}

/// One `[Name]` section and its assignments, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub line: usize,
    pub entries: Vec<Assignment>,
}

/// A parsed unit file or drop-in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    pub sections: Vec<Section>,
}

impl UnitFile {
    /// Assignments of `key` in every section called `section` (systemd merges
    /// repeated sections), in file order.
    pub fn values<'a>(
        &'a self,
        section: &'a str,
        key: &'a str,
    ) -> impl Iterator<Item = &'a Assignment> {
        self.sections
            .iter()
            .filter(move |s| s.name == section)
            .flat_map(|s| s.entries.iter())
            .filter(move |a| a.key == key)
    }

    /// A list setting: values split on whitespace, an empty assignment
    /// resetting the list (as systemd's config_parse_strv does). Each word
    /// carries its line.
    fn list(&self, section: &str, key: &str) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for a in self.values(section, key) {
            if a.value.is_empty() {
                out.clear();
            }
            out.extend(a.value.split_whitespace().map(|w| (w.to_string(), a.line)));
        }
        out
    }
}

/// A syntax error: the 1-based line and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: usize,
    pub reason: String,
}

fn syntax(line: usize, reason: impl Into<String>) -> SyntaxError {
    SyntaxError {
        line,
        reason: reason.into(),
    }
}

fn is_comment(line: &str) -> bool {
    line.starts_with(['#', ';'])
}

/// True when `s` ends in a backslash that is not itself escaped.
fn continues(s: &str) -> bool {
    s.bytes().rev().take_while(|b| *b == b'\\').count() % 2 == 1
}

/// Parses unit-file text as systemd does (see the module docs for what is
/// stricter here).
pub fn parse_unit(text: &str) -> Result<UnitFile, SyntaxError> {
    let mut sections: Vec<Section> = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    let mut last = 0;
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        last = n;
        let (start, mut logical) = match pending.take() {
            Some((start, acc)) if is_comment(raw.trim_start()) => {
                pending = Some((start, acc));
                continue;
            }
            Some((start, acc)) => (start, acc + raw),
            None => (n, raw.to_string()),
        };
        if continues(&logical) {
            logical.pop();
            logical.push(' ');
            pending = Some((start, logical));
            continue;
        }
        parse_line(start, &logical, &mut sections)?;
    }
    // A continuation on the last line ends with the file, as in systemd.
    if let Some((start, logical)) = pending {
        parse_line(start, &logical, &mut sections)?;
    }
    if sections.is_empty() {
        return Err(syntax(
            last.max(1),
            "no section: a unit needs at least one `[Section]` header",
        ));
    }
    Ok(UnitFile { sections })
}

fn parse_line(n: usize, line: &str, sections: &mut Vec<Section>) -> Result<(), SyntaxError> {
    let l = line.trim_matches([' ', '\t', '\r', '\n']);
    if l.is_empty() || is_comment(l) {
        return Ok(());
    }
    if let Some(header) = l.strip_prefix('[') {
        let name = header.strip_suffix(']').ok_or_else(|| {
            syntax(
                n,
                format!("unterminated section header `{l}` (missing `]`)"),
            )
        })?;
        if name.is_empty() || name.contains(['[', ']']) || name.chars().any(char::is_control) {
            return Err(syntax(n, format!("invalid section header `{l}`")));
        }
        sections.push(Section {
            name: name.to_string(),
            line: n,
            entries: Vec::new(),
        });
        return Ok(());
    }
    let section = sections.last_mut().ok_or_else(|| {
        syntax(
            n,
            format!("`{l}` is outside any section (add a `[Unit]`-style header first)"),
        )
    })?;
    let (key, value) = l
        .split_once('=')
        .ok_or_else(|| syntax(n, format!("`{l}` is not `Key=Value` (missing `=`)")))?;
    let key = key.trim_end_matches([' ', '\t']);
    if key.is_empty() {
        return Err(syntax(n, format!("`{l}` has an empty key")));
    }
    section.entries.push(Assignment {
        key: key.to_string(),
        value: value.trim_matches([' ', '\t']).to_string(),
        line: n,
    });
    Ok(())
}

/// The parts of a unit name: `prefix[@instance].type`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct UnitName<'a> {
    prefix: &'a str,
    /// `None` for a plain unit, `Some("")` for a template.
    instance: Option<&'a str>,
    kind: &'a str,
}

impl UnitName<'_> {
    fn is_template(&self) -> bool {
        self.instance == Some("")
    }
}

/// Checks a unit name as systemd's unit_name_is_valid does.
fn unit_name(name: &str) -> Result<UnitName<'_>, SystemdError> {
    let bad = |reason: &str| SystemdError::BadName {
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if name.len() > UNIT_NAME_MAX {
        return Err(bad("longer than 255 characters"));
    }
    let (stem, kind) = name
        .rsplit_once('.')
        .ok_or_else(|| bad("it has no type suffix such as `.service`"))?;
    if !UNIT_TYPES.contains(&kind) {
        return Err(bad(&format!(
            "`.{kind}` is not a unit type (expected one of .{})",
            UNIT_TYPES.join(", .")
        )));
    }
    if let Some(c) = stem
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || ":-_.\\@".contains(*c)))
    {
        return Err(bad(&format!(
            "`{c}` is not allowed (letters, digits and `:-_.\\@` only)"
        )));
    }
    let (prefix, instance) = match stem.split_once('@') {
        Some((_, i)) if i.contains('@') => return Err(bad("more than one `@`")),
        Some((p, i)) => (p, Some(i)),
        None => (stem, None),
    };
    if prefix.is_empty() {
        return Err(bad("the name before the type (and `@`) is empty"));
    }
    Ok(UnitName {
        prefix,
        instance,
        kind,
    })
}

fn check_unit_name(name: &str) -> Result<(), SystemdError> {
    unit_name(name).map(|_| ())
}

/// Expands the install specifiers systemctl supports that make sense
/// without a running system.
fn expand(unit: &str, u: &UnitName, value: &str) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('n') => out.push_str(unit),
            Some('N') => out.push_str(unit.strip_suffix(&format!(".{}", u.kind)).unwrap_or(unit)),
            Some('p') => out.push_str(u.prefix),
            Some('i') => out.push_str(u.instance.unwrap_or("")),
            Some(other) => {
                return Err(format!(
                    "specifier `%{other}` is not supported here (only %n %N %p %i %%)"
                ))
            }
            None => return Err("a lone `%` at the end".into()),
        }
    }
    Ok(out)
}

/// Reads `content` as text, or as an asset (see the module docs). Returns
/// the text and, when it was not an asset but could have named one, why.
fn content_text(ctx: &Ctx, content: &str, file: &str) -> Result<(String, String)> {
    if content.contains('\n') {
        return Ok((content.to_string(), String::new()));
    }
    match ctx.asset(content) {
        Ok(path) if path.is_file() => {
            let text = std::fs::read_to_string(&path).map_err(|source| SystemdError::Asset {
                asset: content.to_string(),
                file: file.to_string(),
                source,
            })?;
            Ok((text, String::new()))
        }
        Ok(_) => Ok((
            content.to_string(),
            format!(" (asset `{content}` is a folder, not a unit file)"),
        )),
        Err(e) => Ok((
            content.to_string(),
            format!(
                " (read as unit text: one-line content names an asset only when it exists; {e})"
            ),
        )),
    }
}

fn parse_as(file: &str, text: &str, hint: &str) -> Result<UnitFile, SystemdError> {
    parse_unit(text).map_err(|e| SystemdError::Parse {
        file: file.to_string(),
        line: e.line,
        reason: e.reason,
        hint: hint.to_string(),
    })
}

/// Writes `text` to `path` with mode 0644 unless it is already exactly that.
fn install(root: &ImageRoot, path: &str, text: &str) -> Result<()> {
    let same = root
        .lstat(path)
        .is_ok_and(|s| s.kind == FileKind::File && s.mode == UNIT_MODE)
        && root.read(path).is_ok_and(|b| b == text.as_bytes());
    if !same {
        root.write(path, text.as_bytes(), Attrs::mode(UNIT_MODE))?;
    }
    Ok(())
}

/// A symlink `enable` will create: (link, target).
type Link = (String, String);

/// Refuses to plan a link over a file or folder (systemctl fails the same way).
fn check_link(root: &ImageRoot, link: &str, target: &str) -> Result<Link> {
    match root.kind(link) {
        None | Some(FileKind::Symlink) => Ok((link.to_string(), target.to_string())),
        Some(_) => Err(SystemdError::NotALink {
            link: link.to_string(),
            target: target.to_string(),
        }
        .into()),
    }
}

/// Makes `link` a symlink to `target`; one pointing elsewhere is replaced,
/// one already right is left untouched.
fn ensure_link(root: &ImageRoot, link: &str, target: &str) -> Result<()> {
    if root.kind(link) == Some(FileKind::Symlink) && root.readlink(link)? == Path::new(target) {
        return Ok(());
    }
    root.symlink(target, link)?;
    Ok(())
}

/// Finds an installed unit for `Also=`: its path, or `None`.
fn find_unit(root: &ImageRoot, unit: &str, also: &str) -> Result<Option<String>> {
    for dir in UNIT_PATH {
        let path = format!("{dir}/{also}");
        match root.kind(&path) {
            None => continue,
            Some(FileKind::Symlink) if root.readlink(&path)? == Path::new("/dev/null") => {
                return Err(SystemdError::Masked {
                    unit: unit.to_string(),
                    also: also.to_string(),
                    path,
                }
                .into())
            }
            Some(_) => return Ok(Some(path)),
        }
    }
    Ok(None)
}

/// Plans the links `systemctl enable` would create for `name`, whose file
/// is at `path` and parsed as `unit`; follows `Also=` (each unit once).
/// Everything is checked here, so a failing `enable` writes nothing.
fn plan_enable(
    root: &ImageRoot,
    name: &str,
    path: &str,
    unit: &UnitFile,
    seen: &mut BTreeSet<String>,
    top: bool,
) -> Result<Vec<Link>> {
    if !seen.insert(name.to_string()) {
        return Ok(Vec::new());
    }
    let u = unit_name(name)?;
    let settings = |key: &str| unit.list("Install", key);
    let bad = |key: &str, value: &str, line: usize, reason: String| SystemdError::BadInstall {
        unit: name.to_string(),
        line,
        key: key.to_string(),
        value: value.to_string(),
        reason,
    };
    let expanded = |key: &str| -> Result<Vec<(String, usize)>, SystemdError> {
        settings(key)
            .into_iter()
            .map(|(v, line)| {
                let x = expand(name, &u, &v).map_err(|r| bad(key, &v, line, r))?;
                check_unit_name(&x).map_err(|e| bad(key, &v, line, e.to_string()))?;
                Ok((x, line))
            })
            .collect()
    };
    let deps = [
        ("WantedBy", "wants"),
        ("RequiredBy", "requires"),
        ("UpheldBy", "upholds"),
    ];
    let mut dep_links = Vec::new();
    for (key, dir) in deps {
        for (t, line) in expanded(key)? {
            if unit_name(&t)?.is_template() {
                return Err(bad(
                    key,
                    &t,
                    line,
                    "a template cannot pull in units; name an instance".into(),
                )
                .into());
            }
            dep_links.push(format!("{SYSTEM_DIR}/{t}.{dir}"));
        }
    }
    let aliases = expanded("Alias")?;
    let also = expanded("Also")?;
    if dep_links.is_empty() && aliases.is_empty() && also.is_empty() {
        // systemctl warns and goes on for units it reached through Also=.
        return if top {
            Err(SystemdError::NoInstall {
                unit: name.to_string(),
            }
            .into())
        } else {
            Ok(Vec::new())
        };
    }

    let link_name = if u.is_template() && !dep_links.is_empty() {
        let Some(inst) = unit.values("Install", "DefaultInstance").last() else {
            return Err(SystemdError::Template {
                unit: name.to_string(),
            }
            .into());
        };
        let instance = format!("{}@{}.{}", u.prefix, inst.value, u.kind);
        check_unit_name(&instance)
            .map_err(|e| bad("DefaultInstance", &inst.value, inst.line, e.to_string()))?;
        instance
    } else {
        name.to_string()
    };
    let mut links = Vec::new();
    for dir in dep_links {
        links.push(check_link(root, &format!("{dir}/{link_name}"), path)?);
    }
    for (alias, line) in aliases {
        let a = unit_name(&alias)?;
        if a.kind != u.kind {
            return Err(bad(
                "Alias",
                &alias,
                line,
                format!("an alias must have the unit's own type `.{}`", u.kind),
            )
            .into());
        }
        if a.is_template() != u.is_template() {
            return Err(bad(
                "Alias",
                &alias,
                line,
                "a template and its alias must both be templates".into(),
            )
            .into());
        }
        if alias != name {
            links.push(check_link(root, &format!("{SYSTEM_DIR}/{alias}"), path)?);
        }
    }
    for (other, _) in also {
        if seen.contains(&other) {
            continue;
        }
        let other_path =
            find_unit(root, name, &other)?.ok_or_else(|| SystemdError::AlsoMissing {
                unit: name.to_string(),
                also: other.clone(),
            })?;
        let text = root.read_string(&other_path)?;
        let parsed = parse_as(&other_path, &text, "")?;
        links.extend(plan_enable(
            root,
            &other,
            &other_path,
            &parsed,
            seen,
            false,
        )?);
    }
    Ok(links)
}

/// Installs `/etc/systemd/system/<name>` from `content` (text or asset) after
/// parsing it; with `enable`, creates its install links. Returns the path.
pub fn systemd_unit(ctx: &Ctx, name: &str, content: &str, opts: &UnitOpts) -> Result<String> {
    check_unit_name(name)?;
    let path = format!("{SYSTEM_DIR}/{name}");
    let (text, hint) = content_text(ctx, content, name)?;
    let unit = parse_as(name, &text, &hint)?;
    let root = ctx.target.root();
    let links = match opts.enable {
        Some(true) => plan_enable(root, name, &path, &unit, &mut BTreeSet::new(), true)?,
        _ => Vec::new(),
    };
    install(root, &path, &text)?;
    for (link, target) in links {
        ensure_link(root, &link, &target)?;
    }
    Ok(path)
}

/// Writes the drop-in `/etc/systemd/system/<unit>.d/<name>.conf` (`.conf`
/// added unless present) after parsing it. Returns the path.
pub fn systemd_dropin(ctx: &Ctx, unit: &str, name: &str, content: &str) -> Result<String> {
    check_unit_name(unit)?;
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\n', '\0']) {
        return Err(SystemdError::BadDropin {
            name: name.to_string(),
        }
        .into());
    }
    let file = if name.ends_with(".conf") {
        name.to_string()
    } else {
        format!("{name}.conf")
    };
    let path = format!("{SYSTEM_DIR}/{unit}.d/{file}");
    let (text, hint) = content_text(ctx, content, &path)?;
    parse_as(&format!("{unit}.d/{file}"), &text, &hint)?;
    install(ctx.target.root(), &path, &text)?;
    Ok(path)
}

/// Options of `systemd_disable`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisableOpts {
    /// Also mask the unit: `/etc/systemd/system/<name>` → `/dev/null`.
    pub mask: Option<bool>,
}

/// Removes the links `systemctl disable` removes (every `*.wants/`,
/// `*.requires/`, `*.upholds/` entry for `name` and every alias in
/// `/etc/systemd/system` pointing at it); with `mask`, links the unit to
/// `/dev/null` as `systemctl mask` does. A unit installed nowhere is left
/// alone: returns false then, true when the unit exists.
pub fn systemd_disable(ctx: &Ctx, name: &str, opts: &DisableOpts) -> Result<bool> {
    check_unit_name(name)?;
    let root = ctx.target.root();
    let here = format!("{SYSTEM_DIR}/{name}");
    let installed = UNIT_PATH
        .iter()
        .any(|d| root.kind(format!("{d}/{name}")).is_some());
    if !installed {
        return Ok(false);
    }
    let entries = match root.read_dir(SYSTEM_DIR) {
        Ok(n) => n,
        Err(e) if e.is_not_found() => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let path = format!("{SYSTEM_DIR}/{entry}");
        if [".wants", ".requires", ".upholds"]
            .iter()
            .any(|s| entry.ends_with(s))
        {
            let link = format!("{path}/{name}");
            if root.kind(&link) == Some(FileKind::Symlink) {
                root.remove(&link)?;
            }
        } else if path != here && root.kind(&path) == Some(FileKind::Symlink) {
            let target = root.readlink(&path)?;
            if target.file_name() == Some(std::ffi::OsStr::new(name)) {
                root.remove(&path)?;
            }
        }
    }
    if opts.mask == Some(true) {
        match root.kind(&here) {
            None | Some(FileKind::Symlink) => root.symlink("/dev/null", &here)?,
            // systemctl mask refuses the same way: the unit's own file would be lost.
            Some(_) => {
                return Err(Error::invalid(format!(
                    "cannot mask {name}: {here} is the unit's file, not a link"
                )))
            }
        }
    }
    Ok(true)
}

/// True when some `/etc/systemd/system/*.wants/`, `*.requires/` or
/// `*.upholds/` folder has an entry for `unit`.
pub fn unit_enabled(root: &ImageRoot, unit: &str) -> Result<bool> {
    let names = match root.read_dir(SYSTEM_DIR) {
        Ok(n) => n,
        Err(e) if e.is_not_found() => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    Ok(names
        .iter()
        .filter(|d| {
            [".wants", ".requires", ".upholds"]
                .iter()
                .any(|s| d.ends_with(s))
        })
        .any(|d| root.exists(format!("{SYSTEM_DIR}/{d}/{unit}"))))
}

rhai_fns! { pub(crate) fn register;
    /// Installs `/etc/systemd/system/<name>` (mode 0644) from unit text, or from an asset when
    /// `content` is one line naming an existing asset. The unit is parsed; a malformed one is an error.
    /// Options: `enable` (create the WantedBy=/RequiredBy=/Alias= links as `systemctl enable` would).
    /// Returns the unit's path.
    action systemd_unit(name: Str, content: Str, [opts]) |c, _| systemd_unit(c, &name, &content, &options(opts)?);
    /// Writes the drop-in `/etc/systemd/system/<unit>.d/<name>.conf` (`.conf` added unless present)
    /// from text or an asset, after parsing it. Returns its path.
    action systemd_dropin(unit: Str, name: Str, content: Str) |c, _| systemd_dropin(c, &unit, &name, &content);
    /// Disables a unit natively, as `systemctl disable` would (its `.wants/`, `.requires/`,
    /// `.upholds/` links and aliases removed); `#{ mask: true }` also links it to /dev/null.
    /// Returns false, changing nothing, when the unit is installed nowhere.
    action systemd_disable(name: Str, [opts]) |c, _| systemd_disable(c, &name, &options(opts)?);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disable_removes_the_enable_links_and_mask_links_to_dev_null() {
        let t = Arc::new(crate::FakeTarget::ubuntu());
        let c = Ctx::new(t.clone());
        let root = t.root();
        let unit = "[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\nAlias=y.service\n";
        root.write(
            "/lib/systemd/system/x.service",
            unit.as_bytes(),
            Attrs::mode(0o644),
        )
        .unwrap();
        root.mkdir_all(
            "/etc/systemd/system/multi-user.target.wants",
            Attrs::default(),
        )
        .unwrap();
        root.symlink(
            "/lib/systemd/system/x.service",
            "/etc/systemd/system/multi-user.target.wants/x.service",
        )
        .unwrap();
        root.symlink(
            "/lib/systemd/system/x.service",
            "/etc/systemd/system/y.service",
        )
        .unwrap();
        root.symlink(
            "/lib/systemd/system/other.service",
            "/etc/systemd/system/multi-user.target.wants/other.service",
        )
        .unwrap();
        assert!(unit_enabled(root, "x.service").unwrap());
        assert!(systemd_disable(&c, "x.service", &DisableOpts::default()).unwrap());
        assert!(!unit_enabled(root, "x.service").unwrap());
        assert!(
            !root.exists("/etc/systemd/system/y.service"),
            "alias removed"
        );
        assert!(root.exists("/etc/systemd/system/multi-user.target.wants/other.service"));
        assert!(!root.exists("/etc/systemd/system/x.service"), "not masked");

        let mask = DisableOpts { mask: Some(true) };
        assert!(systemd_disable(&c, "x.service", &mask).unwrap());
        assert_eq!(
            root.readlink("/etc/systemd/system/x.service").unwrap(),
            Path::new("/dev/null")
        );
        // Masked again: still a link to /dev/null, no error.
        assert!(systemd_disable(&c, "x.service", &mask).unwrap());
    }

    #[test]
    fn disable_of_an_absent_unit_changes_nothing() {
        let t = Arc::new(crate::FakeTarget::ubuntu());
        let c = Ctx::new(t.clone());
        let before = t.root().read_dir("/etc/systemd/system").unwrap();
        let mask = DisableOpts { mask: Some(true) };
        assert!(!systemd_disable(&c, "hv-kvp-daemon.service", &mask).unwrap());
        assert_eq!(t.root().read_dir("/etc/systemd/system").unwrap(), before);
        assert!(systemd_disable(&c, "../x.service", &mask).is_err());
    }

    #[test]
    fn masking_refuses_to_replace_the_units_own_file() {
        let t = Arc::new(crate::FakeTarget::ubuntu());
        let c = Ctx::new(t.clone());
        t.root()
            .write(
                "/etc/systemd/system/z.service",
                b"[Service]\nExecStart=/bin/true\n",
                Attrs::mode(0o644),
            )
            .unwrap();
        let e = systemd_disable(&c, "z.service", &DisableOpts { mask: Some(true) }).unwrap_err();
        assert!(e.to_string().contains("is the unit's file"), "{e}");
        assert!(t.root().exists("/etc/systemd/system/z.service"));
    }
    use crate::{FakeTarget, Target};
    use std::sync::Arc;

    fn ctx() -> (Arc<FakeTarget>, Ctx) {
        let t = Arc::new(FakeTarget::ubuntu());
        (t.clone(), Ctx::new(t))
    }

    const ENABLE: UnitOpts = UnitOpts { enable: Some(true) };

    /// Every symlink under /etc/systemd/system, as (link, target), sorted.
    fn links(t: &FakeTarget) -> Vec<(String, String)> {
        fn walk(r: &ImageRoot, dir: &str, out: &mut Vec<(String, String)>) {
            for n in r.read_dir(dir).unwrap() {
                let p = format!("{dir}/{n}");
                match r.kind(&p) {
                    Some(FileKind::Symlink) => {
                        out.push((p.clone(), r.readlink(&p).unwrap().display().to_string()))
                    }
                    Some(FileKind::Dir) => walk(r, &p, out),
                    _ => {}
                }
            }
        }
        let mut out = Vec::new();
        walk(t.root(), SYSTEM_DIR, &mut out);
        out.sort();
        out
    }

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = v
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn parses_sections_continuations_and_comments() {
        let text = "# leading comment\n[Unit]\nDescription = a \\\n  long \\\n# skipped inside a continuation\n; this too\n  description\n\n[Service]\nExecStart=/bin/echo a\\\\\nEnvironment=\n[Install]\nWantedBy=multi-user.target\n";
        let u = parse_unit(text).unwrap();
        let names: Vec<(&str, usize)> = u
            .sections
            .iter()
            .map(|s| (s.name.as_str(), s.line))
            .collect();
        assert_eq!(names, [("Unit", 2), ("Service", 9), ("Install", 12)]);
        let d = &u.sections[0].entries[0];
        assert_eq!(
            (d.key.as_str(), d.value.as_str(), d.line),
            ("Description", "a    long    description", 3)
        );
        let s = &u.sections[1].entries;
        // An escaped backslash at the end is not a continuation.
        assert_eq!((s[0].value.as_str(), s[0].line), ("/bin/echo a\\\\", 10));
        assert_eq!(
            (s[1].key.as_str(), s[1].value.as_str()),
            ("Environment", "")
        );
        assert_eq!(u.values("Install", "WantedBy").next().unwrap().line, 13);
        // CRLF files parse too.
        assert_eq!(
            parse_unit("[Unit]\r\nA=b\r\n").unwrap().sections[0].entries[0].value,
            "b"
        );
    }

    #[test]
    fn malformed_units_name_the_line() {
        let cases: [(&str, &str, usize, &str); 9] = [
            (
                "key before any section",
                "# c\nDescription=x\n[Unit]\n",
                2,
                "outside any section",
            ),
            (
                "line without =",
                "[Unit]\nDescription=x\nbogus line\n",
                3,
                "missing `=`",
            ),
            (
                "unterminated header",
                "[Unit]\nA=b\n\n[Service\nExecStart=/x\n",
                4,
                "unterminated section header `[Service`",
            ),
            ("empty header", "[]\nA=b\n", 1, "invalid section header"),
            ("empty key", "[Unit]\n = x\n", 2, "empty key"),
            ("no section at all", "# only a comment\n\n", 2, "no section"),
            ("empty file", "", 1, "no section"),
            (
                "error after a continuation starts on its first line",
                "[Unit]\nA=1\nbroken \\\n still broken\nB=2\n",
                3,
                "missing `=`",
            ),
            (
                "a header swallowed by a continuation",
                "[Unit]\nA=1 \\\n[Install]\nfoo\n",
                4,
                "missing `=`",
            ),
        ];
        for (what, text, line, reason) in cases {
            match parse_unit(text) {
                Err(e) => {
                    assert_eq!(e.line, line, "{what}: {e:?}");
                    assert!(e.reason.contains(reason), "{what}: {}", e.reason);
                }
                Ok(u) => panic!("{what}: parsed as {u:?}"),
            }
        }
    }

    #[test]
    fn install_errors_carry_file_and_line() {
        let (t, c) = ctx();
        let e = systemd_unit(
            &c,
            "x.service",
            "[Service]\nExecStart=/x\n[Install\n",
            &UnitOpts::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            "x.service: line 3: unterminated section header `[Install` (missing `]`)"
        );
        assert!(
            !t.root().exists("/etc/systemd/system/x.service"),
            "nothing installed on a parse error"
        );
    }

    #[test]
    fn unit_names() {
        for good in [
            "a.service",
            "foo@.service",
            "getty@tty1.service",
            "dev-sda1.mount",
            "a:b_c\\x2d.timer",
            "x.target",
        ] {
            assert!(unit_name(good).is_ok(), "{good}");
        }
        let long = format!("{}.service", "a".repeat(250));
        for (bad, why) in [
            ("foo", "no type suffix"),
            ("foo.conf", "not a unit type"),
            (".service", "is empty"),
            ("@x.service", "is empty"),
            ("a@b@c.service", "more than one"),
            ("a b.service", "not allowed"),
            ("../x.service", "not allowed"),
            (long.as_str(), "longer than"),
        ] {
            let e = unit_name(bad).unwrap_err().to_string();
            assert!(e.contains(why), "{bad}: {e}");
        }
        let (_t, c) = ctx();
        let e = systemd_unit(&c, "foo", "[Unit]\n", &UnitOpts::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("`foo` is not a valid unit name"), "{e}");
    }

    #[test]
    fn enable_creates_exactly_systemctl_links() {
        let unit = |install: &str| {
            format!("[Unit]\nDescription=x\n[Service]\nExecStart=/bin/true\n[Install]\n{install}")
        };
        let e = "/etc/systemd/system";
        // (what, unit text, expected (link, target) pairs)
        type Case = (&'static str, String, Vec<(String, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                "several WantedBy targets, over two lines",
                unit("WantedBy=multi-user.target graphical.target\nWantedBy=cloud-init.target\n"),
                vec![
                    (
                        format!("{e}/multi-user.target.wants/a.service"),
                        "/etc/systemd/system/a.service",
                    ),
                    (
                        format!("{e}/graphical.target.wants/a.service"),
                        "/etc/systemd/system/a.service",
                    ),
                    (
                        format!("{e}/cloud-init.target.wants/a.service"),
                        "/etc/systemd/system/a.service",
                    ),
                ],
            ),
            (
                "an empty assignment resets the list",
                unit("WantedBy=graphical.target\nWantedBy=\nWantedBy=multi-user.target\n"),
                vec![(
                    format!("{e}/multi-user.target.wants/a.service"),
                    "/etc/systemd/system/a.service",
                )],
            ),
            (
                "RequiredBy and Alias",
                unit("RequiredBy=postgresql.service\nAlias=b.service a.service\n"),
                vec![
                    (
                        format!("{e}/postgresql.service.requires/a.service"),
                        "/etc/systemd/system/a.service",
                    ),
                    (format!("{e}/b.service"), "/etc/systemd/system/a.service"),
                ],
            ),
            (
                "specifiers",
                unit("Alias=%N-alias.service\nUpheldBy=%p.target\n"),
                vec![
                    (
                        format!("{e}/a-alias.service"),
                        "/etc/systemd/system/a.service",
                    ),
                    (
                        format!("{e}/a.target.upholds/a.service"),
                        "/etc/systemd/system/a.service",
                    ),
                ],
            ),
        ];
        for (what, text, want) in cases {
            let (t, c) = ctx();
            systemd_unit(&c, "a.service", &text, &ENABLE).unwrap_or_else(|e| panic!("{what}: {e}"));
            let want: Vec<(&str, &str)> = want.iter().map(|(a, b)| (a.as_str(), *b)).collect();
            assert_eq!(links(&t), pairs(&want), "{what}");
            let pulled_in = want.iter().any(|(l, _)| {
                [".wants/", ".requires/", ".upholds/"]
                    .iter()
                    .any(|d| l.contains(d))
            });
            assert_eq!(
                unit_enabled(t.root(), "a.service").unwrap(),
                pulled_in,
                "{what}"
            );
        }
    }

    #[test]
    fn templates_use_default_instance() {
        let (t, c) = ctx();
        let text = "[Service]\nExecStart=/bin/x %i\n[Install]\nWantedBy=multi-user.target\nDefaultInstance=main\n";
        systemd_unit(&c, "pg@.service", text, &ENABLE).unwrap();
        assert_eq!(
            links(&t),
            pairs(&[(
                "/etc/systemd/system/multi-user.target.wants/pg@main.service",
                "/etc/systemd/system/pg@.service"
            )])
        );
        assert!(unit_enabled(t.root(), "pg@main.service").unwrap());
        assert!(!unit_enabled(t.root(), "pg@.service").unwrap());

        let no_default = "[Service]\nExecStart=/bin/x %i\n[Install]\nWantedBy=multi-user.target\n";
        let e = systemd_unit(&c, "q@.service", no_default, &ENABLE)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("q@.service is a template") && e.contains("DefaultInstance"),
            "{e}"
        );
        // Installing without enabling is fine.
        systemd_unit(&c, "q@.service", no_default, &UnitOpts::default()).unwrap();
    }

    #[test]
    fn enable_errors() {
        let (t, c) = ctx();
        let cases = [
            (
                "no [Install]",
                "[Service]\nExecStart=/x\n",
                "has no installation config",
            ),
            (
                "[Install] without links",
                "[Service]\nExecStart=/x\n[Install]\nDefaultInstance=x\n",
                "has no installation config",
            ),
            (
                "bad target",
                "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user\n",
                "line 4: WantedBy=multi-user",
            ),
            (
                "alias of another type",
                "[Service]\nExecStart=/x\n[Install]\nAlias=a.socket\n",
                "line 4: Alias=a.socket",
            ),
            (
                "unknown specifier",
                "[Service]\nExecStart=/x\n[Install]\nWantedBy=%H.target\n",
                "specifier `%H`",
            ),
            (
                "Also of a missing unit",
                "[Service]\nExecStart=/x\n[Install]\nAlso=nope.socket\n",
                "Also=nope.socket: no such unit",
            ),
        ];
        for (what, text, needle) in cases {
            let e = systemd_unit(&c, "a.service", text, &ENABLE)
                .unwrap_err()
                .to_string();
            assert!(e.contains(needle), "{what}: {e}");
        }
        assert!(links(&t).is_empty(), "{:?}", links(&t));
        assert!(
            !t.root().exists("/etc/systemd/system/a.service"),
            "a failing enable installs nothing"
        );
        t.root()
            .write(
                "/etc/systemd/system/multi-user.target.wants/a.service",
                b"",
                Attrs::default(),
            )
            .unwrap();
        let e = systemd_unit(
            &c,
            "a.service",
            "[Install]\nWantedBy=multi-user.target\n",
            &ENABLE,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("exists and is not a symlink"), "{e}");
    }

    #[test]
    fn also_enables_installed_units_where_they_are() {
        let (t, c) = ctx();
        t.root()
            .write(
                "/lib/systemd/system/a.socket",
                b"[Socket]\nListenStream=1\n[Install]\nWantedBy=sockets.target\nAlso=a.service\n",
                Attrs::default(),
            )
            .unwrap();
        t.root()
            .write(
                "/usr/lib/systemd/system/helper.service",
                b"[Service]\nExecStart=/x\n",
                Attrs::default(),
            )
            .unwrap();
        let text = "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\nAlso=a.socket helper.service\n";
        systemd_unit(&c, "a.service", text, &ENABLE).unwrap();
        assert_eq!(
            links(&t),
            pairs(&[
                (
                    "/etc/systemd/system/multi-user.target.wants/a.service",
                    "/etc/systemd/system/a.service"
                ),
                (
                    "/etc/systemd/system/sockets.target.wants/a.socket",
                    "/lib/systemd/system/a.socket"
                ),
            ])
        );
        assert!(unit_enabled(t.root(), "a.socket").unwrap());

        t.root()
            .symlink("/dev/null", "/etc/systemd/system/m.socket")
            .unwrap();
        let e = systemd_unit(&c, "b.service", "[Install]\nAlso=m.socket\n", &ENABLE)
            .unwrap_err()
            .to_string();
        assert!(e.contains("masked"), "{e}");
    }

    #[test]
    fn idempotent_and_replaces_foreign_links() {
        let (t, c) = ctx();
        let text =
            "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\nAlias=b.service\n";
        t.root()
            .symlink(
                "/lib/systemd/system/a.service",
                "/etc/systemd/system/multi-user.target.wants/a.service",
            )
            .unwrap();
        let p = systemd_unit(&c, "a.service", text, &ENABLE).unwrap();
        assert_eq!(p, "/etc/systemd/system/a.service");
        let first = links(&t);
        assert_eq!(
            first[1].1, "/etc/systemd/system/a.service",
            "foreign link replaced"
        );
        let ino = |t: &FakeTarget| {
            std::fs::symlink_metadata(t.root().host_dir().join("etc/systemd/system/b.service"))
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap()
        };
        let before = ino(&t);
        systemd_unit(&c, "a.service", text, &ENABLE).unwrap();
        assert_eq!(links(&t), first);
        assert_eq!(ino(&t), before, "an existing correct link is left alone");
        assert_eq!(t.root().read_string(&p).unwrap(), text);
        assert_eq!(t.root().stat(&p).unwrap().mode, UNIT_MODE);
    }

    #[test]
    fn unit_enabled_looks_at_wants_and_requires() {
        let (t, c) = ctx();
        assert!(!unit_enabled(t.root(), "a.service").unwrap());
        systemd_unit(
            &c,
            "a.service",
            "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\n",
            &UnitOpts::default(),
        )
        .unwrap();
        assert!(
            !unit_enabled(t.root(), "a.service").unwrap(),
            "installed, not enabled"
        );
        systemd_unit(
            &c,
            "a.service",
            "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\n",
            &ENABLE,
        )
        .unwrap();
        assert!(unit_enabled(t.root(), "a.service").unwrap());
        systemd_unit(
            &c,
            "r.service",
            "[Service]\nExecStart=/x\n[Install]\nRequiredBy=a.service\n",
            &ENABLE,
        )
        .unwrap();
        assert!(unit_enabled(t.root(), "r.service").unwrap());
        assert!(!unit_enabled(t.root(), "b.service").unwrap());
    }

    #[test]
    fn dropins() {
        let (t, c) = ctx();
        let p = systemd_dropin(
            &c,
            "postgresql@.service",
            "limits",
            "[Service]\nLimitNOFILE=65536\n",
        )
        .unwrap();
        assert_eq!(p, "/etc/systemd/system/postgresql@.service.d/limits.conf");
        assert_eq!(
            t.root().read_string(&p).unwrap(),
            "[Service]\nLimitNOFILE=65536\n"
        );
        assert_eq!(t.root().stat(&p).unwrap().mode, UNIT_MODE);
        let p = systemd_dropin(
            &c,
            "a.service",
            "10-env.conf",
            "[Service]\nEnvironment=A=1\n",
        )
        .unwrap();
        assert_eq!(p, "/etc/systemd/system/a.service.d/10-env.conf");
        let e = systemd_dropin(&c, "a.service", "x", "[Service]\nnope\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("a.service.d/x.conf: line 2:"), "{e}");
        for bad in ["", "../x", "a/b", ".hidden"] {
            let e = systemd_dropin(&c, "a.service", bad, "[Service]\n")
                .unwrap_err()
                .to_string();
            assert!(e.contains("not a valid drop-in name"), "{bad}: {e}");
        }
        assert!(systemd_dropin(&c, "a", "x", "[Service]\n").is_err());
    }

    #[test]
    fn content_from_asset() {
        let (t, c) = ctx();
        let assets = tempfile::tempdir().unwrap();
        std::fs::create_dir(assets.path().join("units")).unwrap();
        let text = "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\n";
        std::fs::write(assets.path().join("units/imds.service"), text).unwrap();
        let c = c.with_asset_dirs(vec![assets.path().to_path_buf()]);
        systemd_unit(&c, "imds-protection.service", "units/imds.service", &ENABLE).unwrap();
        assert_eq!(
            t.root()
                .read_string("/etc/systemd/system/imds-protection.service")
                .unwrap(),
            text
        );
        assert!(unit_enabled(t.root(), "imds-protection.service").unwrap());
        let e = systemd_unit(&c, "x.service", "units/typo.service", &UnitOpts::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("asset `units/typo.service` not found"),
            "{e}"
        );
        let e = systemd_unit(&c, "x.service", "units", &UnitOpts::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("is a folder"), "{e}");
        assert!(!t.root().exists("/etc/systemd/system/x.service"));
    }

    #[test]
    fn rhai_overloads() {
        let (t, c) = ctx();
        let mut engine = rhai::Engine::new();
        crate::register(&mut engine, &c);
        let p: String = engine
            .eval(r#"systemd_unit("a.service", "[Service]\nExecStart=/x\n[Install]\nWantedBy=multi-user.target\n", #{ enable: true })"#)
            .unwrap();
        assert_eq!(p, "/etc/systemd/system/a.service");
        assert!(unit_enabled(t.root(), "a.service").unwrap());
        engine
            .eval::<String>(r#"systemd_unit("b.service", "[Service]\nExecStart=/x\n")"#)
            .unwrap();
        engine
            .eval::<String>(r#"systemd_dropin("b.service", "x", "[Service]\nUser=pg\n")"#)
            .unwrap();
        assert!(t.root().exists("/etc/systemd/system/b.service.d/x.conf"));
        let e = match *engine
            .eval::<String>(r#"systemd_unit("c.service", "[Unit]\n", #{ enabled: true })"#)
            .unwrap_err()
        {
            rhai::EvalAltResult::ErrorRuntime(d, _) => {
                d.cast::<crate::api::PrimitiveFailure>().message
            }
            other => panic!("{other}"),
        };
        assert!(
            e.contains("systemd_unit: options: unknown field `enabled`"),
            "{e}"
        );
    }
}
