//! Unpacking `.tar.gz`/`.tar`/`.zip` archives into the image, refusing any member
//! that would land outside the destination directory.
//!
//! Every archive is read twice. The first pass reads only the headers (and zip
//! link targets) and checks the whole archive: names, `..`, absolute paths,
//! link targets, special files. Only an archive that passes as a whole is
//! written, in the second pass, and always through [`ImageRoot`]. If writing
//! fails half way, whatever this call created is removed again.
//!
//! Links are checked lexically, which is exact only while no path passes
//! through a symbolic link the archive itself creates (`s -> .` followed by
//! `s/s/s/l -> ../../..` escapes a lexical check), so such members are refused.
//! Symbolic links already in the image are the image's own and are followed,
//! inside the image, as `tar` would.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
use std::path::Path;

use crate::error::Error;
use crate::root::{Attrs, FsError, ImageRoot};

/// Longest symlink target read from a zip member (its content).
const MAX_ZIP_LINK: u64 = 4096;

/// An archive that could not be read or a member that was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("{archive}: member `{member}`: {reason}")]
    Refused {
        archive: String,
        member: String,
        reason: String,
    },
    #[error("{archive}: {reason}")]
    Archive { archive: String, reason: String },
    #[error(transparent)]
    Fs(#[from] FsError),
}

impl From<ExtractError> for Error {
    fn from(e: ExtractError) -> Self {
        match e {
            ExtractError::Fs(e) => Error::Fs(e),
            other => Error::Invalid(other.to_string()),
        }
    }
}

/// Archive formats `extract` understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveKind {
    TarGz,
    Tar,
    Zip,
}

impl ArchiveKind {
    /// The kind a file name says (`.tar.gz`, `.tgz`, `.tar`, `.zip`).
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".tar.gz") || lower.ends_with(".tgz") {
            Some(ArchiveKind::TarGz)
        } else if lower.ends_with(".tar") {
            Some(ArchiveKind::Tar)
        } else if lower.ends_with(".zip") {
            Some(ArchiveKind::Zip)
        } else {
            None
        }
    }

    /// The kind the first bytes say: gzip (taken as a tarball), zip, ustar.
    pub fn from_magic(head: &[u8]) -> Option<Self> {
        if head.starts_with(&[0x1f, 0x8b]) {
            Some(ArchiveKind::TarGz)
        } else if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
            Some(ArchiveKind::Zip)
        } else if head.get(257..262) == Some(b"ustar") {
            Some(ArchiveKind::Tar)
        } else {
            None
        }
    }

    /// The kind of `archive`: from `name` (the URL's file name) when it
    /// tells, else from the file's first bytes.
    pub fn detect(name: Option<&str>, archive: &Path) -> Result<Self, ExtractError> {
        if let Some(kind) = name.and_then(ArchiveKind::from_name) {
            return Ok(kind);
        }
        let mut head = Vec::with_capacity(512);
        File::open(archive)
            .and_then(|f| f.take(512).read_to_end(&mut head))
            .map_err(|e| archive_error(archive, format!("reading: {e}")))?;
        ArchiveKind::from_magic(&head).ok_or_else(|| {
            archive_error(
                archive,
                format!(
                    "`{}` is not a .tar.gz, .tar or .zip archive",
                    name.unwrap_or("the download")
                ),
            )
        })
    }
}

fn archive_error(archive: &Path, reason: impl Into<String>) -> ExtractError {
    ExtractError::Archive {
        archive: archive.display().to_string(),
        reason: reason.into(),
    }
}

/// What a member is, as the archive says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RawKind {
    File,
    Dir,
    Symlink(String),
    Hardlink(String),
    /// Device, fifo, socket or an unknown type: never extracted.
    Special(String),
    /// Metadata the format carries as an entry (a pax global header).
    Ignored,
}

#[derive(Debug, Clone)]
struct RawMember {
    name: String,
    kind: RawKind,
    mode: u32,
}

/// A member that passed the checks, with its path below `dest`.
#[derive(Debug, Clone)]
struct Member {
    name: String,
    rel: Vec<String>,
    kind: Kind,
    mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    Symlink(String),
    /// Materialised as a copy of this earlier member (relative to `dest`).
    Hardlink(Vec<String>),
}

/// Splits an archive name into components, refusing absolute paths and `..`.
fn components(name: &str) -> Result<Vec<String>, String> {
    if name.starts_with('/') {
        return Err("is an absolute path".into());
    }
    let mut out = Vec::new();
    for c in name.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err("has a `..` component".into()),
            c if c.contains('\0') => return Err("contains a NUL byte".into()),
            c => out.push(c.to_string()),
        }
    }
    Ok(out)
}

/// Checks every member of the archive and decides which are written where.
struct Planner<'a> {
    archive: &'a Path,
    dest: &'a [String],
    strip: usize,
    filter: Option<&'a glob::Pattern>,
}

impl Planner<'_> {
    fn refuse(&self, name: &str, reason: impl Into<String>) -> ExtractError {
        ExtractError::Refused {
            archive: self.archive.display().to_string(),
            member: name.to_string(),
            reason: reason.into(),
        }
    }

    fn wanted(&self, rel: &[String]) -> bool {
        let Some(pattern) = self.filter else {
            return true;
        };
        let opts = glob::MatchOptions {
            case_sensitive: true,
            require_literal_separator: true,
            require_literal_leading_dot: false,
        };
        // A matching directory brings everything below it along.
        (1..=rel.len()).any(|n| pattern.matches_with(&rel[..n].join("/"), opts))
    }

    /// For each archive member, in order, what is written from it: nothing,
    /// the member itself, and/or the selected hard links whose content it
    /// carries (written when its data streams by, so a link gets its
    /// target's content whether or not the target is selected, and whether
    /// it comes before or after the link).
    fn plan(&self, raw: Vec<RawMember>) -> Result<Vec<Vec<Member>>, ExtractError> {
        let mut planned: Vec<Option<Member>> = Vec::with_capacity(raw.len());
        // Every regular file of the archive by its stripped path: (index, mode).
        let mut files: Vec<(Vec<String>, usize, u32)> = Vec::new();
        for (index, m) in raw.into_iter().enumerate() {
            if m.kind == RawKind::Ignored {
                planned.push(None);
                continue;
            }
            let comps = components(&m.name).map_err(|r| self.refuse(&m.name, r))?;
            let kind = match &m.kind {
                RawKind::Special(what) => {
                    return Err(self.refuse(
                        &m.name,
                        format!("is a {what}; only files, directories and links are extracted"),
                    ))
                }
                RawKind::File => Kind::File,
                RawKind::Dir => Kind::Dir,
                RawKind::Symlink(t) => Kind::Symlink(t.clone()),
                RawKind::Hardlink(t) => {
                    let target = components(t)
                        .map_err(|r| self.refuse(&m.name, format!("hard link target `{t}` {r}")))?;
                    if target.len() <= self.strip {
                        return Err(self.refuse(
                            &m.name,
                            format!("hard link target `{t}` is outside the extracted tree"),
                        ));
                    }
                    Kind::Hardlink(target[self.strip..].to_vec())
                }
                RawKind::Ignored => unreachable!("skipped above"),
            };
            if comps.len() <= self.strip {
                planned.push(None);
                continue;
            }
            let rel = comps[self.strip..].to_vec();
            if kind == Kind::File {
                files.push((rel.clone(), index, m.mode));
            }
            if !self.wanted(&rel) {
                planned.push(None);
                continue;
            }
            planned.push(Some(Member {
                name: m.name,
                rel,
                kind,
                mode: m.mode,
            }));
        }
        self.check_links(&planned)?;
        self.attach_hard_links(planned, &files)
    }

    /// Moves each selected hard link to the member that carries its
    /// target's data. A link to a file selected before it stays a copy of
    /// that extracted file; otherwise the link is written from the target's
    /// data: the latest file of that name before the link, else the first
    /// after it (an archive may put a link first).
    fn attach_hard_links(
        &self,
        planned: Vec<Option<Member>>,
        files: &[(Vec<String>, usize, u32)],
    ) -> Result<Vec<Vec<Member>>, ExtractError> {
        let mut out: Vec<Vec<Member>> = planned
            .iter()
            .map(|m| match m {
                Some(m) if !matches!(m.kind, Kind::Hardlink(_)) => vec![m.clone()],
                _ => Vec::new(),
            })
            .collect();
        for (at, m) in planned.into_iter().enumerate() {
            let Some(m) = m else { continue };
            let Kind::Hardlink(target) = &m.kind else {
                continue;
            };
            let written_before = out[..at]
                .iter()
                .flatten()
                .any(|w| w.rel == *target && matches!(w.kind, Kind::File));
            if written_before {
                // A copy of the file already extracted, in archive order.
                out[at].push(m);
                continue;
            }
            let named = |f: &&(Vec<String>, usize, u32)| f.0 == *target;
            let carrier = files
                .iter()
                .filter(named)
                .rfind(|f| f.1 < at)
                .or_else(|| files.iter().filter(named).find(|f| f.1 > at))
                .ok_or_else(|| {
                    self.refuse(
                        &m.name,
                        format!(
                            "is a hard link to `{}`, which is not a file in the archive",
                            target.join("/")
                        ),
                    )
                })?;
            let (index, mode) = (carrier.1, carrier.2);
            let kind = match out[index].first() {
                // The target (or an earlier link) is written from the data:
                // this link is a copy of it.
                Some(first) => Kind::Hardlink(first.rel.clone()),
                None => Kind::File,
            };
            out[index].push(Member { kind, mode, ..m });
        }
        Ok(out)
    }

    fn check_links(&self, planned: &[Option<Member>]) -> Result<(), ExtractError> {
        let links: BTreeSet<&[String]> = planned
            .iter()
            .flatten()
            .filter(|m| matches!(m.kind, Kind::Symlink(_)))
            .map(|m| m.rel.as_slice())
            .collect();
        for m in planned.iter().flatten() {
            if let Some(n) = (1..m.rel.len()).find(|n| links.contains(&m.rel[..*n])) {
                return Err(self.refuse(
                    &m.name,
                    format!(
                        "lies below `{}`, a symbolic link in the same archive",
                        m.rel[..n].join("/")
                    ),
                ));
            }
            if let Kind::Symlink(target) = &m.kind {
                self.check_symlink(m, target, &links)?;
            }
        }
        Ok(())
    }

    /// A link's target, resolved from the link's own directory (or from `/`),
    /// must stay inside `dest` at every step and must not pass through
    /// another link of the archive.
    fn check_symlink(
        &self,
        m: &Member,
        target: &str,
        links: &BTreeSet<&[String]>,
    ) -> Result<(), ExtractError> {
        let escape = || {
            self.refuse(
                &m.name,
                format!("is a symbolic link to `{target}`, outside the destination"),
            )
        };
        if target.is_empty() || target.contains('\0') {
            return Err(self.refuse(
                &m.name,
                "is a symbolic link with an empty or invalid target",
            ));
        }
        let absolute = target.starts_with('/');
        let mut at: Vec<String> = if absolute {
            Vec::new()
        } else {
            let mut base = self.dest.to_vec();
            base.extend_from_slice(&m.rel[..m.rel.len() - 1]);
            base
        };
        let parts: Vec<&str> = target
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        for (i, part) in parts.iter().enumerate() {
            if *part == ".." {
                if absolute || (at.len() <= self.dest.len() && !self.dest.is_empty()) {
                    return Err(escape());
                }
                at.pop();
            } else {
                at.push(part.to_string());
            }
            let last = i + 1 == parts.len();
            let inside = at.len() >= self.dest.len() && at[..self.dest.len()] == *self.dest;
            if !last && inside && links.contains(&at[self.dest.len()..]) {
                return Err(self.refuse(
                    &m.name,
                    format!("is a symbolic link to `{target}`, which passes through another link of the archive"),
                ));
            }
        }
        let inside = at.len() >= self.dest.len() && at[..self.dest.len()] == *self.dest;
        if inside {
            Ok(())
        } else {
            Err(escape())
        }
    }
}

fn tar_reader(
    archive: &Path,
    kind: ArchiveKind,
) -> Result<tar::Archive<Box<dyn Read>>, ExtractError> {
    let file = File::open(archive).map_err(|e| archive_error(archive, format!("opening: {e}")))?;
    let reader: Box<dyn Read> = match kind {
        ArchiveKind::TarGz => Box::new(flate2::read::MultiGzDecoder::new(BufReader::new(file))),
        _ => Box::new(BufReader::new(file)),
    };
    Ok(tar::Archive::new(reader))
}

fn tar_raw(
    entry: &tar::Entry<'_, Box<dyn Read>>,
    archive: &Path,
) -> Result<RawMember, ExtractError> {
    let name = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| {
        archive_error(
            archive,
            format!(
                "member `{}`: name is not UTF-8",
                String::from_utf8_lossy(e.as_bytes())
            ),
        )
    })?;
    let header = entry.header();
    let mode = header.mode().unwrap_or(0o644);
    let link = || -> Result<String, ExtractError> {
        let bytes = entry.link_name_bytes().unwrap_or_default().into_owned();
        String::from_utf8(bytes).map_err(|_| {
            archive_error(
                archive,
                format!("member `{name}`: link target is not UTF-8"),
            )
        })
    };
    use tar::EntryType as T;
    let kind = match header.entry_type() {
        T::Regular | T::Continuous | T::GNUSparse => RawKind::File,
        T::Directory => RawKind::Dir,
        T::Symlink => RawKind::Symlink(link()?),
        T::Link => RawKind::Hardlink(link()?),
        T::XGlobalHeader => RawKind::Ignored,
        T::Char => RawKind::Special("character device".into()),
        T::Block => RawKind::Special("block device".into()),
        T::Fifo => RawKind::Special("fifo".into()),
        other => RawKind::Special(format!("tar entry of type {:?}", other.as_byte() as char)),
    };
    Ok(RawMember { name, kind, mode })
}

fn scan_tar(archive: &Path, kind: ArchiveKind) -> Result<Vec<RawMember>, ExtractError> {
    let mut ar = tar_reader(archive, kind)?;
    let bad = |e: std::io::Error| archive_error(archive, format!("reading: {e}"));
    let mut out = Vec::new();
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        out.push(tar_raw(&entry, archive)?);
    }
    Ok(out)
}

fn zip_reader(archive: &Path) -> Result<zip::ZipArchive<BufReader<File>>, ExtractError> {
    let file = File::open(archive).map_err(|e| archive_error(archive, format!("opening: {e}")))?;
    zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| archive_error(archive, format!("reading: {e}")))
}

fn zip_raw<R: Read + Seek>(
    zip: &mut zip::ZipArchive<R>,
    i: usize,
    archive: &Path,
) -> Result<RawMember, ExtractError> {
    let mut f = zip
        .by_index(i)
        .map_err(|e| archive_error(archive, format!("member {i}: {e}")))?;
    let name = f.name().to_string();
    let unix = f.unix_mode();
    let fmt = unix.map(|m| m & 0o170000).unwrap_or(0);
    let kind = if f.is_dir() || fmt == 0o040000 {
        RawKind::Dir
    } else if fmt == 0o120000 {
        let mut target = String::new();
        (&mut f)
            .take(MAX_ZIP_LINK)
            .read_to_string(&mut target)
            .map_err(|e| {
                archive_error(
                    archive,
                    format!("member `{name}`: reading its link target: {e}"),
                )
            })?;
        RawKind::Symlink(target)
    } else if fmt == 0 || fmt == 0o100000 {
        RawKind::File
    } else {
        let what = match fmt {
            0o020000 => "character device",
            0o060000 => "block device",
            0o010000 => "fifo",
            0o140000 => "socket",
            _ => "file of unknown type",
        };
        RawKind::Special(what.into())
    };
    let mode = match (unix, &kind) {
        (Some(m), _) => m & 0o7777,
        (None, RawKind::Dir) => 0o755,
        (None, _) => 0o644,
    };
    Ok(RawMember { name, kind, mode })
}

fn scan_zip(archive: &Path) -> Result<Vec<RawMember>, ExtractError> {
    let mut zip = zip_reader(archive)?;
    (0..zip.len())
        .map(|i| zip_raw(&mut zip, i, archive))
        .collect()
}

/// Writes planned members and remembers what it created, to undo it on failure.
struct Writer<'a> {
    root: &'a ImageRoot,
    dest: String,
    attrs: Attrs,
    /// Paths that did not exist before this call, in creation order.
    created: Vec<String>,
    written: Vec<String>,
    dir_modes: Vec<(String, u32)>,
}

impl Writer<'_> {
    fn path(&self, rel: &[String]) -> String {
        if self.dest == "/" {
            format!("/{}", rel.join("/"))
        } else {
            format!("{}/{}", self.dest, rel.join("/"))
        }
    }

    /// Notes the missing directories between `dest` and the member, which
    /// the write is about to create.
    fn note_parents(&mut self, rel: &[String]) {
        if !self.root.exists(&self.dest) {
            self.created.push(self.dest.clone());
        }
        for n in 1..rel.len() {
            let p = self.path(&rel[..n]);
            if !self.root.exists(&p) {
                self.created.push(p);
            }
        }
    }

    fn write(&mut self, m: &Member, data: &mut dyn Read) -> Result<(), ExtractError> {
        self.note_parents(&m.rel);
        let path = self.path(&m.rel);
        let existed = self.root.exists(&path);
        // Archives from the internet do not get to install setuid programs;
        // an explicit `mode` may.
        let file_mode = self.attrs.mode.unwrap_or(m.mode & 0o777);
        let attrs = Attrs {
            mode: Some(file_mode),
            ..self.attrs
        };
        match &m.kind {
            Kind::File => {
                self.root.write_from(&path, data, attrs)?;
            }
            Kind::Dir => {
                self.root.mkdir_all(
                    &path,
                    Attrs {
                        mode: None,
                        ..self.attrs
                    },
                )?;
                // Applied at the end, so a read-only directory in the
                // archive does not stop its own members from being written.
                let mode = if self.attrs.mode.is_some() {
                    0o755
                } else {
                    m.mode & 0o777
                };
                self.dir_modes.push((path.clone(), mode));
            }
            Kind::Symlink(target) => self.root.symlink(target, &path)?,
            Kind::Hardlink(target) => {
                let from = self.path(target);
                let mode = self.attrs.mode.unwrap_or(self.root.stat(&from)?.mode);
                let mut src = self.root.open_read(&from)?;
                self.root.write_from(
                    &path,
                    &mut src,
                    Attrs {
                        mode: Some(mode),
                        ..self.attrs
                    },
                )?;
            }
        }
        if !existed {
            self.created.push(path.clone());
        }
        self.written.push(path);
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ExtractError> {
        for (path, mode) in self.dir_modes.iter().rev() {
            self.root.set_attrs(path, Attrs::mode(*mode))?;
        }
        Ok(())
    }

    /// Removes what this call created, newest first. Files it replaced
    /// cannot be restored and stay replaced.
    fn undo(&self) {
        for p in self.created.iter().rev() {
            let _ = self.root.remove(p);
        }
    }
}

/// Extracts `archive` (of `kind`) into the image directory `dest`.
///
/// `strip` drops that many leading components of each member's name (members
/// with no more than that are skipped); `filter` is matched against the
/// stripped name, or any of its leading directories. Modes come from the
/// archive without setuid/setgid/sticky bits unless `attrs.mode` is set (then
/// files get it and directories 0755); `attrs` uid/gid apply to everything
/// but symbolic links. Returns the in-image paths written, in archive order.
pub fn extract(
    archive: &Path,
    kind: ArchiveKind,
    root: &ImageRoot,
    dest: &str,
    filter: Option<&glob::Pattern>,
    strip: usize,
    attrs: Attrs,
) -> Result<Vec<String>, ExtractError> {
    if !dest.starts_with('/') {
        return Err(FsError::Invalid {
            path: dest.to_string(),
            reason: "the extraction directory must be an absolute path inside the image".into(),
        }
        .into());
    }
    let dest_comps = components(dest.trim_start_matches('/')).map_err(|r| FsError::Invalid {
        path: dest.to_string(),
        reason: format!("the extraction directory {r}"),
    })?;
    let planner = Planner {
        archive,
        dest: &dest_comps,
        strip,
        filter,
    };
    let raw = match kind {
        ArchiveKind::Zip => scan_zip(archive)?,
        _ => scan_tar(archive, kind)?,
    };
    let plan = planner.plan(raw)?;
    let mut writer = Writer {
        root,
        dest: if dest_comps.is_empty() {
            "/".to_string()
        } else {
            format!("/{}", dest_comps.join("/"))
        },
        attrs,
        created: Vec::new(),
        written: Vec::new(),
        dir_modes: Vec::new(),
    };
    let result = match kind {
        ArchiveKind::Zip => write_zip(archive, &plan, &mut writer),
        _ => write_tar(archive, kind, &plan, &mut writer),
    }
    .and_then(|()| writer.finish());
    match result {
        Ok(()) => Ok(writer.written),
        Err(e) => {
            writer.undo();
            Err(e)
        }
    }
}

fn write_tar(
    archive: &Path,
    kind: ArchiveKind,
    plan: &[Vec<Member>],
    w: &mut Writer<'_>,
) -> Result<(), ExtractError> {
    let mut ar = tar_reader(archive, kind)?;
    let bad = |e: std::io::Error| archive_error(archive, format!("reading: {e}"));
    for (i, entry) in ar.entries().map_err(bad)?.enumerate() {
        let mut entry = entry.map_err(bad)?;
        // The first reads the member's data; hard links after it copy it.
        for m in plan.get(i).into_iter().flatten() {
            w.write(m, &mut entry)?;
        }
    }
    Ok(())
}

fn write_zip(archive: &Path, plan: &[Vec<Member>], w: &mut Writer<'_>) -> Result<(), ExtractError> {
    let mut zip = zip_reader(archive)?;
    for (i, members) in plan.iter().enumerate() {
        for m in members {
            let mut f = zip
                .by_index(i)
                .map_err(|e| archive_error(archive, format!("member `{}`: {e}", m.name)))?;
            w.write(m, &mut f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{gzip as gz, host_tree as tree, raw_tar, TarMember as M};
    use crate::root::FileKind;
    use std::io::Write;

    struct Env {
        _dirs: (tempfile::TempDir, tempfile::TempDir),
        root: ImageRoot,
        archive: std::path::PathBuf,
        root_dir: std::path::PathBuf,
    }

    fn env(bytes: &[u8]) -> Env {
        let host = tempfile::tempdir().unwrap();
        let image = tempfile::tempdir().unwrap();
        let archive = host.path().join("a");
        std::fs::write(&archive, bytes).unwrap();
        Env {
            root: ImageRoot::open(image.path()).unwrap(),
            root_dir: image.path().to_path_buf(),
            archive,
            _dirs: (host, image),
        }
    }

    fn run(
        e: &Env,
        kind: ArchiveKind,
        dest: &str,
        filter: Option<&str>,
        strip: usize,
    ) -> Result<Vec<String>, ExtractError> {
        let pattern = filter.map(|f| glob::Pattern::new(f).unwrap());
        extract(
            &e.archive,
            kind,
            &e.root,
            dest,
            pattern.as_ref(),
            strip,
            Attrs::default(),
        )
    }

    #[test]
    fn hostile_members_are_refused_and_nothing_is_written() {
        let ok = M::File("pkg/ok", b"ok", 0o644);
        let cases: Vec<(&str, Vec<M>, &str, &str)> = vec![
            (
                "dotdot",
                vec![M::File("pkg/../../evil", b"x", 0o644)],
                "pkg/../../evil",
                "`..`",
            ),
            (
                "absolute",
                vec![M::File("/etc/evil", b"x", 0o644)],
                "/etc/evil",
                "absolute",
            ),
            (
                "link up",
                vec![M::Symlink("pkg/l", "../../../etc")],
                "pkg/l",
                "outside the destination",
            ),
            (
                "link up from top",
                vec![M::Symlink("l", "..")],
                "l",
                "outside the destination",
            ),
            (
                "absolute link",
                vec![M::Symlink("pkg/l", "/etc/shadow")],
                "pkg/l",
                "outside the destination",
            ),
            (
                "absolute link with ..",
                vec![M::Symlink("pkg/l", "/opt/x/../../etc")],
                "pkg/l",
                "outside the destination",
            ),
            (
                "through own link",
                vec![M::Symlink("s", "."), M::File("s/s/f", b"x", 0o644)],
                "s/s/f",
                "a symbolic link in the same archive",
            ),
            (
                "link chain escape",
                vec![M::Symlink("s", "."), M::Symlink("l", "s/s/s/../../..")],
                "l",
                "passes through another link",
            ),
            (
                "hard link up",
                vec![M::Hard("pkg/h", "../etc/shadow")],
                "pkg/h",
                "`..`",
            ),
            (
                "hard link absolute",
                vec![M::Hard("pkg/h", "/etc/shadow")],
                "pkg/h",
                "absolute",
            ),
            (
                "hard link unknown",
                vec![M::Hard("pkg/h", "pkg/nothing")],
                "pkg/h",
                "not a file in the archive",
            ),
            ("fifo", vec![M::Fifo("pkg/fifo")], "pkg/fifo", "fifo"),
            (
                "device",
                vec![M::Char("pkg/null")],
                "pkg/null",
                "character device",
            ),
        ];
        for (what, mut members, member, reason) in cases {
            // A good member first: the refusal must come before it is written.
            members.insert(0, ok.clone());
            let e = env(&gz(&raw_tar(&members)));
            let err = run(&e, ArchiveKind::TarGz, "/opt/x", None, 0).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, ExtractError::Refused { .. }), "{what}: {msg}");
            assert!(
                msg.contains(&format!("member `{member}`")) && msg.contains(reason),
                "{what}: {msg}"
            );
            assert!(
                tree(&e.root_dir).is_empty(),
                "{what}: {:?}",
                tree(&e.root_dir)
            );
        }
    }

    impl Clone for M<'_> {
        fn clone(&self) -> Self {
            match self {
                M::File(a, b, c) => M::File(a, b, *c),
                M::Dir(a, b) => M::Dir(a, *b),
                M::Symlink(a, b) => M::Symlink(a, b),
                M::Hard(a, b) => M::Hard(a, b),
                M::Fifo(a) => M::Fifo(a),
                M::Char(a) => M::Char(a),
            }
        }
    }

    #[test]
    fn links_inside_the_destination_are_kept() {
        let e = env(&raw_tar(&[
            M::Dir("app-1/", 0o750),
            M::File("app-1/bin/tool", b"tool", 0o755),
            M::Symlink("app-1/current", "bin/tool"),
            M::Symlink("app-1/bin/up", "../current"),
            M::Symlink("app-1/abs", "/opt/app/bin/tool"),
            M::Hard("app-1/bin/tool2", "app-1/bin/tool"),
        ]));
        let got = run(&e, ArchiveKind::Tar, "/opt/app/", None, 1).unwrap();
        assert_eq!(
            got,
            [
                "/opt/app/bin/tool",
                "/opt/app/current",
                "/opt/app/bin/up",
                "/opt/app/abs",
                "/opt/app/bin/tool2"
            ]
        );
        let r = &e.root;
        assert_eq!(r.read("/opt/app/bin/up").unwrap(), b"tool");
        assert_eq!(r.read("/opt/app/abs").unwrap(), b"tool");
        assert_eq!(r.read("/opt/app/bin/tool2").unwrap(), b"tool");
        assert_eq!(r.stat("/opt/app/bin/tool2").unwrap().mode, 0o755);
        assert_eq!(r.kind("/opt/app/bin/tool2"), Some(FileKind::File));
    }

    #[test]
    fn a_selected_hard_link_gets_its_targets_content() {
        // As gzip's tarball: bin/gzip is a hard link to bin/gunzip.
        let members = [
            M::File("pkg-1.0/bin/gunzip", b"#!/bin/sh\ngzip -d\n", 0o755),
            M::Hard("pkg-1.0/bin/gzip", "pkg-1.0/bin/gunzip"),
            M::File("pkg-1.0/README", b"readme", 0o644),
        ];
        let e = env(&gz(&raw_tar(&members)));
        let got = run(&e, ArchiveKind::TarGz, "/usr/local", Some("bin/gzip"), 1).unwrap();
        assert_eq!(got, ["/usr/local/bin/gzip"]);
        assert_eq!(
            e.root.read("/usr/local/bin/gzip").unwrap(),
            b"#!/bin/sh\ngzip -d\n"
        );
        assert_eq!(e.root.stat("/usr/local/bin/gzip").unwrap().mode, 0o755);
        assert!(!e.root.exists("/usr/local/bin/gunzip"), "not selected");

        // A glob selecting the link and not its target.
        let e = env(&gz(&raw_tar(&members)));
        let got = run(&e, ArchiveKind::TarGz, "/opt", Some("*/bin/gz*"), 0).unwrap();
        assert_eq!(got, ["/opt/pkg-1.0/bin/gzip"]);
        assert_eq!(
            e.root.read("/opt/pkg-1.0/bin/gzip").unwrap(),
            b"#!/bin/sh\ngzip -d\n"
        );
    }

    #[test]
    fn a_hard_link_before_its_target_gets_the_targets_content() {
        let e = env(&raw_tar(&[
            M::Hard("pkg/bin/gzip", "pkg/bin/gunzip"),
            M::File("pkg/bin/gunzip", b"gunzip", 0o755),
        ]));
        let mut got = run(&e, ArchiveKind::Tar, "/opt", None, 1).unwrap();
        got.sort();
        assert_eq!(got, ["/opt/bin/gunzip", "/opt/bin/gzip"]);
        assert_eq!(e.root.read("/opt/bin/gzip").unwrap(), b"gunzip");
        assert_eq!(e.root.read("/opt/bin/gunzip").unwrap(), b"gunzip");

        // Only the link selected, its target later in the archive.
        let e = env(&raw_tar(&[
            M::Hard("pkg/bin/gzip", "pkg/bin/gunzip"),
            M::File("pkg/bin/gunzip", b"gunzip", 0o755),
        ]));
        let got = run(&e, ArchiveKind::Tar, "/opt", Some("bin/gzip"), 1).unwrap();
        assert_eq!(got, ["/opt/bin/gzip"]);
        assert_eq!(e.root.read("/opt/bin/gzip").unwrap(), b"gunzip");
        assert!(!e.root.exists("/opt/bin/gunzip"));
    }

    #[test]
    fn strip_filter_and_modes() {
        let bytes = gz(&raw_tar(&[
            M::Dir("prometheus-2.45/", 0o755),
            M::File("prometheus-2.45/prometheus", b"p", 0o4755),
            M::File("prometheus-2.45/promtool", b"t", 0o755),
            M::Dir("prometheus-2.45/consoles/", 0o555),
            M::File("prometheus-2.45/consoles/index.html", b"<html>", 0o644),
            M::File("top-level-file", b"skipped by strip", 0o644),
        ]));
        let e = env(&bytes);
        let got = run(
            &e,
            ArchiveKind::TarGz,
            "/usr/local/bin",
            Some("*/prometheus"),
            0,
        )
        .unwrap();
        assert_eq!(got, ["/usr/local/bin/prometheus-2.45/prometheus"]);
        assert_eq!(
            e.root
                .stat("/usr/local/bin/prometheus-2.45/prometheus")
                .unwrap()
                .mode,
            0o755
        );

        let e = env(&bytes);
        let got = run(
            &e,
            ArchiveKind::TarGz,
            "/etc/prometheus",
            Some("consoles"),
            1,
        )
        .unwrap();
        assert_eq!(
            got,
            [
                "/etc/prometheus/consoles",
                "/etc/prometheus/consoles/index.html"
            ]
        );
        // The read-only directory mode is applied after its members are in.
        assert_eq!(e.root.stat("/etc/prometheus/consoles").unwrap().mode, 0o555);

        let e = env(&bytes);
        let got = extract(
            &e.archive,
            ArchiveKind::TarGz,
            &e.root,
            "/opt/p",
            None,
            1,
            Attrs::mode(0o700),
        )
        .unwrap();
        assert_eq!(got.len(), 4);
        assert!(!e.root.exists("/opt/p/top-level-file"));
        assert_eq!(e.root.stat("/opt/p/promtool").unwrap().mode, 0o700);
        assert_eq!(e.root.stat("/opt/p/consoles").unwrap().mode, 0o755);
    }

    #[test]
    fn a_failed_write_removes_what_was_created() {
        let e = env(&raw_tar(&[
            M::File("a/one", b"1", 0o644),
            M::File("a/deep/two", b"2", 0o644),
            M::File("keep", b"new", 0o644),
            M::File("blocked", b"x", 0o644),
        ]));
        e.root
            .write("/opt/x/keep", b"old", Attrs::default())
            .unwrap();
        e.root
            .mkdir_all("/opt/x/blocked", Attrs::default())
            .unwrap();
        let err = run(&e, ArchiveKind::Tar, "/opt/x", None, 0).unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
        assert_eq!(
            tree(&e.root_dir),
            ["opt", "opt/x", "opt/x/blocked", "opt/x/keep"]
        );
    }

    type ZipW = zip::ZipWriter<std::io::Cursor<Vec<u8>>>;

    #[test]
    fn zip_members_links_and_refusals() {
        let zip_of = |f: &dyn Fn(&mut ZipW)| {
            let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
            f(&mut w);
            w.finish().unwrap().into_inner()
        };
        let opts = |mode: u32| zip::write::SimpleFileOptions::default().unix_permissions(mode);
        let good = zip_of(&|w| {
            w.add_directory("tool/", opts(0o755)).unwrap();
            w.start_file("tool/bin/run", opts(0o755)).unwrap();
            w.write_all(b"#!/bin/sh\n").unwrap();
            w.start_file("tool/README", opts(0o644)).unwrap();
            w.write_all(b"hi").unwrap();
            w.add_symlink("tool/run", "bin/run", opts(0o777)).unwrap();
        });
        let e = env(&good);
        let got = run(&e, ArchiveKind::Zip, "/opt/tool", None, 1).unwrap();
        assert_eq!(
            got,
            ["/opt/tool/bin/run", "/opt/tool/README", "/opt/tool/run"]
        );
        assert_eq!(e.root.stat("/opt/tool/bin/run").unwrap().mode, 0o755);
        assert_eq!(
            e.root.readlink("/opt/tool/run").unwrap(),
            Path::new("bin/run")
        );
        assert_eq!(e.root.read("/opt/tool/run").unwrap(), b"#!/bin/sh\n");

        for (member, bytes) in [
            (
                "../evil",
                zip_of(&|w| {
                    w.start_file("ok", opts(0o644)).unwrap();
                    w.start_file("../evil", opts(0o644)).unwrap();
                }),
            ),
            (
                "l",
                zip_of(&|w| {
                    w.start_file("ok", opts(0o644)).unwrap();
                    w.add_symlink("l", "../../etc/passwd", opts(0o777)).unwrap();
                }),
            ),
        ] {
            let e = env(&bytes);
            let msg = run(&e, ArchiveKind::Zip, "/opt/tool", None, 0)
                .unwrap_err()
                .to_string();
            assert!(msg.contains(&format!("member `{member}`")), "{msg}");
            assert!(tree(&e.root_dir).is_empty());
        }
    }

    #[test]
    fn kind_from_name_then_magic() {
        let cases = [
            ("x.tar.gz", Some(ArchiveKind::TarGz)),
            ("X.TGZ", Some(ArchiveKind::TarGz)),
            ("x.tar", Some(ArchiveKind::Tar)),
            ("x.zip", Some(ArchiveKind::Zip)),
            ("x.tar.xz", None),
            ("download", None),
        ];
        for (name, want) in cases {
            assert_eq!(ArchiveKind::from_name(name), want, "{name}");
        }
        let tar = raw_tar(&[M::File("f", b"x", 0o644)]);
        for (bytes, want) in [
            (gz(&tar), Some(ArchiveKind::TarGz)),
            (tar.clone(), Some(ArchiveKind::Tar)),
            (b"PK\x03\x04..".to_vec(), Some(ArchiveKind::Zip)),
            (b"\xfd7zXZ\0".to_vec(), None),
        ] {
            let e = env(&bytes);
            assert_eq!(ArchiveKind::detect(Some("download"), &e.archive).ok(), want);
        }
        let e = env(&tar);
        assert_eq!(
            ArchiveKind::detect(Some("a.zip"), &e.archive).unwrap(),
            ArchiveKind::Zip
        );
    }

    #[test]
    fn dest_must_be_absolute_and_plain() {
        let e = env(&raw_tar(&[M::File("f", b"x", 0o644)]));
        assert!(run(&e, ArchiveKind::Tar, "opt", None, 0).is_err());
        assert!(run(&e, ArchiveKind::Tar, "/opt/../etc", None, 0).is_err());
        assert_eq!(run(&e, ArchiveKind::Tar, "/", None, 0).unwrap(), ["/f"]);
    }
}
