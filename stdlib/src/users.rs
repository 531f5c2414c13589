//! Users and groups: `add_group`, `add_user`, `add_to_group`, done natively on the image's passwd, group, shadow and gshadow.
//!
//! The image's own `useradd`/`adduser` are never run: a minimal or foreign
//! base image may not have them, and their behaviour differs between
//! distributions. Instead the four databases are parsed here, edited in
//! memory, and written back atomically (each keeps its mode and owner).
//!
//! Rules, chosen to match Debian's `adduser`:
//! - ids: system accounts get the **lowest free id from 100 to 999**
//!   (`FIRST_SYSTEM_UID`..`LAST_SYSTEM_UID` in adduser.conf); normal accounts
//!   the lowest free id from 1000 to 59999. A new user's primary group (a group
//!   with the user's name; an existing one is reused) gets the same number as
//!   the uid when that gid is free.
//! - passwords: the shadow entry is `*` (no password can match). Not `!`:
//!   OpenSSH treats a `!`-prefixed hash as a locked account and refuses even
//!   key logins when `UsePAM` is off. `lastchg` is today (or
//!   `SOURCE_DATE_EPOCH`'s day, as shadow-utils does, for reproducible images).
//! - homes: `/home/<name>` for normal users, `/nonexistent` for system users;
//!   created (mode 0750, Ubuntu's default since 21.04) with the image's
//!   `/etc/skel` copied in, only for new users and only when it does not exist yet.
//!   Shells: `/bin/bash`, or `/usr/sbin/nologin` for system users.
//! - idempotence: an existing account is left as it is. A requested id, home
//!   or shell that differs from the existing entry is an error naming both;
//!   requested supplementary groups are added.
//!
//! Lines the parser does not understand (comments, NIS `+`/`-` entries,
//! malformed lines) are kept byte for byte and in order; new entries are
//! appended. Only files that changed are written.

use std::collections::BTreeSet;
use std::ops::RangeInclusive;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;

use crate::api::options;
use crate::ctx::Ctx;
use crate::error::{Error, Result};
use crate::register::Str;
use crate::rhai_fns;
use crate::root::{Attrs, FileKind, ImageRoot};
use crate::target::Target;

const PASSWD: &str = "/etc/passwd";
const GROUP: &str = "/etc/group";
const SHADOW: &str = "/etc/shadow";
const GSHADOW: &str = "/etc/gshadow";
const SKEL: &str = "/etc/skel";

/// Debian adduser.conf `FIRST_SYSTEM_UID`..`LAST_SYSTEM_UID`.
const SYSTEM_IDS: RangeInclusive<u32> = 100..=999;
/// Debian adduser.conf `FIRST_UID`..`LAST_UID`.
const NORMAL_IDS: RangeInclusive<u32> = 1000..=59999;
const HOME_MODE: u32 = 0o750;
const NAME_MAX: usize = 32;

/// A users-and-groups error; each names the account and the values involved.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("invalid {kind} name `{name}`: must match ^[a-z_][a-z0-9_-]*[$]?$ and be at most {NAME_MAX} characters")]
    InvalidName { kind: &'static str, name: String },
    #[error(
        "{kind} `{name}` already exists with {id_kind} {existing}, not the requested {requested}"
    )]
    IdConflict {
        kind: &'static str,
        name: String,
        id_kind: &'static str,
        existing: u32,
        requested: u32,
    },
    #[error("{id_kind} {id} requested for `{name}` is already used by `{owner}`")]
    IdTaken {
        id_kind: &'static str,
        id: u32,
        name: String,
        owner: String,
    },
    #[error("{id_kind} {id} is out of range (0 to 4294967294)")]
    IdRange { id_kind: &'static str, id: i64 },
    #[error("no free {id_kind} left in {}..={} for `{name}`", range.start(), range.end())]
    Exhausted {
        id_kind: &'static str,
        name: String,
        range: RangeInclusive<u32>,
    },
    #[error(
        "user `{name}` already exists with {field} `{existing}`, not the requested `{requested}`"
    )]
    Mismatch {
        name: String,
        field: &'static str,
        existing: String,
        requested: String,
    },
    #[error("{field} `{value}` for `{name}` must be an absolute path without `:` or a newline")]
    BadPath {
        name: String,
        field: &'static str,
        value: String,
    },
    #[error("no {kind} `{name}` in the image's {db}")]
    Missing {
        kind: &'static str,
        name: String,
        db: &'static str,
    },
    #[error("{db}:{line}: malformed entry for `{name}`; fix it before adding `{name}` again")]
    Malformed {
        db: &'static str,
        line: usize,
        name: String,
    },
    #[error("the image has no {db}")]
    NoDatabase { db: &'static str },
    #[error("{path} in {SKEL} is not a regular file, directory or symlink")]
    SkelSpecial { path: String },
}

impl From<UserError> for Error {
    fn from(e: UserError) -> Self {
        Error::Invalid(e.to_string())
    }
}

/// Options of `add_group`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupOpts {
    pub system: Option<bool>,
    pub gid: Option<i64>,
}

/// Options of `add_user`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserOpts {
    pub system: Option<bool>,
    pub uid: Option<i64>,
    pub home: Option<String>,
    pub shell: Option<String>,
    pub groups: Option<Vec<String>>,
    pub create_home: Option<bool>,
}

/// Debian's NAME_REGEX `^[a-z_][a-z0-9_-]*[$]?$`, at most 32 bytes (utmp's limit).
pub fn valid_name(name: &str) -> bool {
    let body = name.strip_suffix('$').unwrap_or(name);
    let mut chars = body.chars();
    name.len() <= NAME_MAX
        && matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
}

fn check_name(kind: &'static str, name: &str) -> Result<(), UserError> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(UserError::InvalidName {
            kind,
            name: name.to_string(),
        })
    }
}

fn check_id(id_kind: &'static str, id: Option<i64>) -> Result<Option<u32>, UserError> {
    // (uid_t)-1 and (uint16_t)-1 mean "no change" to chown(2), so they can
    // never be account ids.
    id.map(|n| {
        u32::try_from(n)
            .ok()
            .filter(|n| crate::owner::is_valid_id(*n))
            .ok_or(UserError::IdRange { id_kind, id: n })
    })
    .transpose()
}

fn check_path(name: &str, field: &'static str, value: &str) -> Result<(), UserError> {
    if value.starts_with('/') && !value.contains([':', '\n']) {
        Ok(())
    } else {
        Err(UserError::BadPath {
            name: name.to_string(),
            field,
            value: value.to_string(),
        })
    }
}

/// One line of a colon-separated account database.
trait Record: Sized {
    const FIELDS: usize;
    fn from_fields(f: &[&str]) -> Option<Self>;
    fn render(&self) -> String;
    fn name(&self) -> &str;
}

fn list(s: &str) -> Vec<String> {
    if s.is_empty() {
        Vec::new()
    } else {
        s.split(',').map(str::to_string).collect()
    }
}

/// An `/etc/passwd` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Passwd {
    name: String,
    password: String,
    uid: u32,
    gid: u32,
    gecos: String,
    home: String,
    shell: String,
}

impl Record for Passwd {
    const FIELDS: usize = 7;
    fn from_fields(f: &[&str]) -> Option<Self> {
        Some(Passwd {
            name: f[0].into(),
            password: f[1].into(),
            uid: f[2].parse().ok()?,
            gid: f[3].parse().ok()?,
            gecos: f[4].into(),
            home: f[5].into(),
            shell: f[6].into(),
        })
    }
    fn render(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}:{}",
            self.name, self.password, self.uid, self.gid, self.gecos, self.home, self.shell
        )
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// An `/etc/group` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Group {
    name: String,
    password: String,
    gid: u32,
    members: Vec<String>,
}

impl Record for Group {
    const FIELDS: usize = 4;
    fn from_fields(f: &[&str]) -> Option<Self> {
        Some(Group {
            name: f[0].into(),
            password: f[1].into(),
            gid: f[2].parse().ok()?,
            members: list(f[3]),
        })
    }
    fn render(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.name,
            self.password,
            self.gid,
            self.members.join(",")
        )
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// An `/etc/shadow` line; only the name matters here, the rest is kept as is.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Shadow {
    name: String,
    rest: Vec<String>,
}

impl Record for Shadow {
    const FIELDS: usize = 9;
    fn from_fields(f: &[&str]) -> Option<Self> {
        Some(Shadow {
            name: f[0].into(),
            rest: f[1..].iter().map(|s| s.to_string()).collect(),
        })
    }
    fn render(&self) -> String {
        format!("{}:{}", self.name, self.rest.join(":"))
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// An `/etc/gshadow` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Gshadow {
    name: String,
    password: String,
    admins: String,
    members: Vec<String>,
}

impl Record for Gshadow {
    const FIELDS: usize = 4;
    fn from_fields(f: &[&str]) -> Option<Self> {
        Some(Gshadow {
            name: f[0].into(),
            password: f[1].into(),
            admins: f[2].into(),
            members: list(f[3]),
        })
    }
    fn render(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.name,
            self.password,
            self.admins,
            self.members.join(",")
        )
    }
    fn name(&self) -> &str {
        &self.name
    }
}

#[derive(Debug)]
enum Line<R> {
    Entry(R),
    /// Kept byte for byte: comments, NIS entries, anything that does not
    /// parse back to exactly the same text.
    Other(String),
}

/// One database file: its lines in order, and whether it must be written.
#[derive(Debug)]
struct Table<R> {
    db: &'static str,
    lines: Vec<Line<R>>,
    exists: bool,
    dirty: bool,
}

impl<R: Record> Table<R> {
    fn load(root: &ImageRoot, db: &'static str, required: bool) -> Result<Self> {
        let text = match root.read_string_opt(db)? {
            Some(t) => t,
            None if required => return Err(UserError::NoDatabase { db }.into()),
            None => {
                return Ok(Table {
                    db,
                    lines: Vec::new(),
                    exists: false,
                    dirty: false,
                })
            }
        };
        Ok(Table {
            db,
            lines: Self::parse(&text),
            exists: true,
            dirty: false,
        })
    }

    fn parse(text: &str) -> Vec<Line<R>> {
        let body = text.strip_suffix('\n').unwrap_or(text);
        if body.is_empty() && text.len() <= 1 {
            return Vec::new();
        }
        body.split('\n')
            .map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                match (f.len() == R::FIELDS).then(|| R::from_fields(&f)).flatten() {
                    // A field like uid `007` would be rewritten as `7`; such a
                    // line is kept verbatim instead.
                    Some(r) if r.render() == l => Line::Entry(r),
                    _ => Line::Other(l.to_string()),
                }
            })
            .collect()
    }

    fn render(&self) -> String {
        let mut out = String::new();
        for line in &self.lines {
            match line {
                Line::Entry(r) => out.push_str(&r.render()),
                Line::Other(s) => out.push_str(s),
            }
            out.push('\n');
        }
        out
    }

    fn entries(&self) -> impl Iterator<Item = &R> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry(r) => Some(r),
            Line::Other(_) => None,
        })
    }

    /// The entry for `name`. A malformed line that looks like it is for
    /// `name` is an error: appending a second entry would shadow or be
    /// shadowed by it, depending on the reader.
    fn find(&self, name: &str) -> Result<Option<&R>, UserError> {
        for (i, line) in self.lines.iter().enumerate() {
            match line {
                Line::Entry(r) if r.name() == name => return Ok(Some(r)),
                Line::Other(s) if s.split(':').next() == Some(name) => {
                    return Err(UserError::Malformed {
                        db: self.db,
                        line: i + 1,
                        name: name.to_string(),
                    })
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn find_mut(&mut self, name: &str) -> Option<&mut R> {
        self.lines.iter_mut().find_map(|l| match l {
            Line::Entry(r) if r.name() == name => Some(r),
            _ => None,
        })
    }

    fn push(&mut self, r: R) {
        self.lines.push(Line::Entry(r));
        self.dirty = true;
    }

    /// Ids in column 3 of every line, malformed ones included where they
    /// have a number there, so an allocation never reuses them.
    fn ids(&self) -> BTreeSet<u32> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Entry(r) => r.render().split(':').nth(2)?.parse().ok(),
                Line::Other(s) => s.split(':').nth(2)?.parse().ok(),
            })
            .collect()
    }

    fn save(&self, target: &dyn Target, mode: u32, gid: u32) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let root = target.root();
        if self.exists {
            // An existing file keeps its own mode and owner.
            root.write(self.db, self.render().as_bytes(), Attrs::default())?;
        } else {
            root.write(self.db, self.render().as_bytes(), Attrs::mode(mode))?;
            target.chown(self.db, 0, gid)?;
        }
        Ok(())
    }
}

/// What to do about a home directory after the databases are edited.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HomePlan {
    path: String,
    uid: u32,
    gid: u32,
}

/// The four account databases of an image, loaded together so that every
/// change keeps them consistent.
#[derive(Debug)]
struct UserDb {
    passwd: Table<Passwd>,
    group: Table<Group>,
    shadow: Table<Shadow>,
    gshadow: Table<Gshadow>,
    /// Days since the epoch, for shadow's `lastchg`.
    today: u64,
}

/// Today as days since the epoch; `SOURCE_DATE_EPOCH` wins when set, as in shadow-utils.
fn days_since_epoch() -> u64 {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    secs / 86_400
}

fn lowest_free(range: RangeInclusive<u32>, used: &[&BTreeSet<u32>]) -> Option<u32> {
    range
        .into_iter()
        .find(|id| used.iter().all(|u| !u.contains(id)))
}

fn ids_range(system: bool) -> RangeInclusive<u32> {
    if system {
        SYSTEM_IDS
    } else {
        NORMAL_IDS
    }
}

impl UserDb {
    fn load(root: &ImageRoot, today: u64) -> Result<Self> {
        Ok(UserDb {
            passwd: Table::load(root, PASSWD, true)?,
            group: Table::load(root, GROUP, true)?,
            shadow: Table::load(root, SHADOW, false)?,
            gshadow: Table::load(root, GSHADOW, false)?,
            today,
        })
    }

    /// Writes the changed files: groups before users, and each shadow file
    /// before its public twin, so that an interruption never leaves a user
    /// whose group or shadow entry is missing.
    fn save(&self, target: &dyn Target) -> Result<()> {
        let shadow_gid = self
            .group
            .find("shadow")
            .ok()
            .flatten()
            .map_or(0, |g| g.gid);
        self.gshadow.save(target, 0o640, shadow_gid)?;
        self.group.save(target, 0o644, 0)?;
        self.shadow.save(target, 0o640, shadow_gid)?;
        self.passwd.save(target, 0o644, 0)
    }

    fn ensure_shadow(&mut self, name: &str) -> Result<(), UserError> {
        if self.shadow.find(name)?.is_none() {
            let lastchg = self.today.to_string();
            let rest = ["*", &lastchg, "0", "99999", "7", "", "", ""];
            self.shadow.push(Shadow {
                name: name.to_string(),
                rest: rest.iter().map(|s| s.to_string()).collect(),
            });
        }
        Ok(())
    }

    fn ensure_gshadow(&mut self, name: &str) -> Result<(), UserError> {
        if self.gshadow.find(name)?.is_none() {
            let members = self
                .group
                .find(name)?
                .map(|g| g.members.clone())
                .unwrap_or_default();
            self.gshadow.push(Gshadow {
                name: name.to_string(),
                password: "!".into(),
                admins: String::new(),
                members,
            });
        }
        Ok(())
    }

    fn group_with_gid(&self, gid: u32) -> Option<&Group> {
        self.group.entries().find(|g| g.gid == gid)
    }

    /// Creates group `name` unless it exists; returns its gid. `prefer` is
    /// used when free (a new user's uid for its primary group).
    fn add_group(
        &mut self,
        name: &str,
        gid: Option<u32>,
        system: bool,
        prefer: Option<u32>,
    ) -> Result<u32, UserError> {
        check_name("group", name)?;
        if let Some(g) = self.group.find(name)? {
            let existing = g.gid;
            if let Some(want) = gid.filter(|w| *w != existing) {
                return Err(UserError::IdConflict {
                    kind: "group",
                    name: name.to_string(),
                    id_kind: "gid",
                    existing,
                    requested: want,
                });
            }
            self.ensure_gshadow(name)?;
            return Ok(existing);
        }
        let used = self.group.ids();
        let gid = match gid {
            Some(want) => {
                if let Some(owner) = self.group_with_gid(want) {
                    return Err(UserError::IdTaken {
                        id_kind: "gid",
                        id: want,
                        name: name.to_string(),
                        owner: owner.name.clone(),
                    });
                }
                want
            }
            None => match prefer.filter(|p| !used.contains(p)) {
                Some(p) => p,
                None => lowest_free(ids_range(system), &[&used]).ok_or_else(|| {
                    UserError::Exhausted {
                        id_kind: "gid",
                        name: name.to_string(),
                        range: ids_range(system),
                    }
                })?,
            },
        };
        self.group.push(Group {
            name: name.to_string(),
            password: "x".into(),
            gid,
            members: Vec::new(),
        });
        self.ensure_gshadow(name)?;
        Ok(gid)
    }

    /// Makes `user` a member of `group` in group and gshadow. A user whose
    /// primary group it is already belongs to it, as adduser sees it.
    fn add_member(&mut self, user: &str, group: &str) -> Result<(), UserError> {
        let missing = |kind, name: &str, db| UserError::Missing {
            kind,
            name: name.to_string(),
            db,
        };
        let primary = self
            .passwd
            .find(user)?
            .ok_or_else(|| missing("user", user, PASSWD))?
            .gid;
        let gid = self
            .group
            .find(group)?
            .ok_or_else(|| missing("group", group, GROUP))?
            .gid;
        self.ensure_gshadow(group)?;
        if primary == gid {
            return Ok(());
        }
        let g = self.group.find_mut(group).expect("found above");
        if !g.members.iter().any(|m| m == user) {
            g.members.push(user.to_string());
            self.group.dirty = true;
        }
        let gs = self.gshadow.find_mut(group).expect("ensured above");
        if !gs.members.iter().any(|m| m == user) {
            gs.members.push(user.to_string());
            self.gshadow.dirty = true;
        }
        Ok(())
    }

    /// Adds (or checks) user `name`; returns its uid and the home directory
    /// to create, if any.
    fn add_user(
        &mut self,
        name: &str,
        opts: &UserOpts,
    ) -> Result<(u32, Option<HomePlan>), UserError> {
        check_name("user", name)?;
        let system = opts.system.unwrap_or(false);
        let uid = check_id("uid", opts.uid)?;
        for (field, value) in [("home", &opts.home), ("shell", &opts.shell)] {
            if let Some(v) = value {
                check_path(name, field, v)?;
            }
        }
        let groups = opts.groups.clone().unwrap_or_default();
        for g in &groups {
            check_name("group", g)?;
        }

        let (uid, gid, home, plan_home) = match self.passwd.find(name)?.cloned() {
            Some(existing) => {
                if let Some(want) = uid.filter(|w| *w != existing.uid) {
                    return Err(UserError::IdConflict {
                        kind: "user",
                        name: name.to_string(),
                        id_kind: "uid",
                        existing: existing.uid,
                        requested: want,
                    });
                }
                for (field, have, want) in [
                    ("home", &existing.home, &opts.home),
                    ("shell", &existing.shell, &opts.shell),
                ] {
                    if let Some(want) = want.as_ref().filter(|w| *w != have) {
                        return Err(UserError::Mismatch {
                            name: name.to_string(),
                            field,
                            existing: have.clone(),
                            requested: want.clone(),
                        });
                    }
                }
                self.ensure_shadow(name)?;
                // Default home creation applies to new users only: an account
                // a package created (www-data, home /var/www) must not grow a
                // home full of skel files because a recipe mentioned it.
                (
                    existing.uid,
                    existing.gid,
                    existing.home,
                    opts.create_home == Some(true),
                )
            }
            None => {
                let uids = self.passwd.ids();
                let gids = self.group.ids();
                let existing_group = self.group.find(name)?.map(|g| g.gid);
                let range = ids_range(system);
                let uid = match uid {
                    Some(want) => {
                        if let Some(owner) = self.passwd.entries().find(|p| p.uid == want) {
                            return Err(UserError::IdTaken {
                                id_kind: "uid",
                                id: want,
                                name: name.to_string(),
                                owner: owner.name.clone(),
                            });
                        }
                        want
                    }
                    None => {
                        let matching = match existing_group {
                            Some(g) if range.contains(&g) && !uids.contains(&g) => Some(g),
                            Some(_) => None,
                            None => lowest_free(range.clone(), &[&uids, &gids]),
                        };
                        matching
                            .or_else(|| lowest_free(range.clone(), &[&uids]))
                            .ok_or_else(|| UserError::Exhausted {
                                id_kind: "uid",
                                name: name.to_string(),
                                range: range.clone(),
                            })?
                    }
                };
                let gid = self.add_group(name, None, system, Some(uid))?;
                let home = opts.home.clone().unwrap_or_else(|| {
                    if system {
                        "/nonexistent".to_string()
                    } else {
                        format!("/home/{name}")
                    }
                });
                let shell = opts.shell.clone().unwrap_or_else(|| {
                    if system {
                        "/usr/sbin/nologin"
                    } else {
                        "/bin/bash"
                    }
                    .to_string()
                });
                self.ensure_shadow(name)?;
                self.passwd.push(Passwd {
                    name: name.to_string(),
                    password: "x".into(),
                    uid,
                    gid,
                    gecos: String::new(),
                    home: home.clone(),
                    shell,
                });
                (uid, gid, home, opts.create_home.unwrap_or(!system))
            }
        };

        // Missing groups of a system account are system groups; an existing
        // account's kind is read from its uid when the call does not say.
        let system_groups = opts.system.unwrap_or(uid < *NORMAL_IDS.start());
        for g in &groups {
            self.add_group(g, None, system_groups, None)?;
            self.add_member(name, g)?;
        }
        Ok((
            uid,
            plan_home.then_some(HomePlan {
                path: home,
                uid,
                gid,
            }),
        ))
    }
}

/// Creates a home directory from the image's `/etc/skel`, owned by the user.
/// An existing directory is left alone, as useradd does.
fn create_home(target: &dyn Target, plan: &HomePlan) -> Result<()> {
    let root = target.root();
    if root.exists(&plan.path) {
        return Ok(());
    }
    root.mkdir_all(&plan.path, Attrs::mode(HOME_MODE))?;
    target.chown(&plan.path, plan.uid, plan.gid)?;
    if root.kind(SKEL) == Some(FileKind::Dir) {
        copy_skel(target, SKEL, &plan.path, plan)?;
    }
    Ok(())
}

/// Copies a directory inside the image, keeping modes, owning everything to the user.
fn copy_skel(target: &dyn Target, src: &str, dest: &str, plan: &HomePlan) -> Result<()> {
    let root = target.root();
    for name in root.read_dir(src)? {
        let (from, to) = (format!("{src}/{name}"), format!("{dest}/{name}"));
        let st = root.lstat(&from)?;
        match st.kind {
            FileKind::Dir => {
                root.mkdir_all(&to, Attrs::mode(st.mode))?;
                target.chown(&to, plan.uid, plan.gid)?;
                copy_skel(target, &from, &to, plan)?;
            }
            FileKind::File => {
                root.write(&to, &root.read(&from)?, Attrs::mode(st.mode))?;
                target.chown(&to, plan.uid, plan.gid)?;
            }
            // Target::chown follows links, so a link is left owned by root
            // (the owner of a symlink has no effect on access anyway).
            FileKind::Symlink => root.symlink(root.readlink(&from)?, &to)?,
            FileKind::Other => return Err(UserError::SkelSpecial { path: from }.into()),
        }
    }
    Ok(())
}

/// Creates group `name` unless it exists; returns its gid.
pub fn add_group(ctx: &Ctx, name: &str, opts: &GroupOpts) -> Result<u32> {
    let gid = check_id("gid", opts.gid)?;
    let mut db = UserDb::load(ctx.target.root(), days_since_epoch())?;
    let gid = db.add_group(name, gid, opts.system.unwrap_or(false), None)?;
    db.save(ctx.target.as_ref())?;
    Ok(gid)
}

/// Creates user `name` (and its primary group) unless it exists, adds it to
/// its supplementary groups, creates its home; returns its uid.
pub fn add_user(ctx: &Ctx, name: &str, opts: &UserOpts) -> Result<u32> {
    let mut db = UserDb::load(ctx.target.root(), days_since_epoch())?;
    let (uid, home) = db.add_user(name, opts)?;
    // The home first: if it fails, the account does not exist yet and a
    // rerun starts over; the other way round a rerun would skip the home.
    if let Some(plan) = home {
        create_home(ctx.target.as_ref(), &plan)?;
    }
    db.save(ctx.target.as_ref())?;
    Ok(uid)
}

/// Makes `user` a member of `group`; both must exist.
pub fn add_to_group(ctx: &Ctx, user: &str, group: &str) -> Result<()> {
    let mut db = UserDb::load(ctx.target.root(), days_since_epoch())?;
    db.add_member(user, group)?;
    db.save(ctx.target.as_ref())
}

/// True when the image's `/etc/passwd` has user `name`.
pub fn user_exists(root: &ImageRoot, name: &str) -> Result<bool> {
    let passwd: Table<Passwd> = Table::load(root, PASSWD, true)?;
    let found = passwd.entries().any(|p| p.name == name);
    Ok(found)
}

/// True when `user` belongs to `group`, as its primary group or as a listed
/// member; false when either does not exist.
pub fn in_group(root: &ImageRoot, user: &str, group: &str) -> Result<bool> {
    let passwd: Table<Passwd> = Table::load(root, PASSWD, true)?;
    let groups: Table<Group> = Table::load(root, GROUP, true)?;
    let (Some(u), Some(g)) = (
        passwd.entries().find(|p| p.name == user),
        groups.entries().find(|g| g.name == group),
    ) else {
        return Ok(false);
    };
    Ok(u.gid == g.gid || g.members.iter().any(|m| m == user))
}

rhai_fns! { pub(crate) fn register;
    /// Creates a group unless it exists; returns its gid.
    /// Options: `system` (gid from 100..999), `gid`. An existing group with another gid is an error.
    action add_group(name: Str, [opts]) |c, _| add_group(c, &name, &options(opts)?).map(i64::from);
    /// Creates a user and its primary group unless it exists (by default a normal user: uid from 1000,
    /// home from /etc/skel); returns its uid. Options: `system`, `uid`, `home`, `shell`, `groups`
    /// (supplementary, created if missing), `create_home` (default true unless `system`).
    action add_user(name: Str, [opts]) |c, _| add_user(c, &name, &options(opts)?).map(i64::from);
    /// Adds an existing user to an existing group (no-op when already a member).
    action add_to_group(user: Str, group: Str) |c, _| add_to_group(c, &user, &group);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FakeTarget;
    use std::sync::Arc;

    fn ctx() -> (Arc<FakeTarget>, Ctx) {
        let t = Arc::new(FakeTarget::ubuntu());
        (t.clone(), Ctx::new(t))
    }

    fn dbs(t: &FakeTarget) -> [String; 4] {
        [PASSWD, GROUP, SHADOW, GSHADOW].map(|p| t.root().read_string(p).unwrap())
    }

    fn line<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines().find(|l| l.split(':').next() == Some(name))
    }

    fn system() -> UserOpts {
        UserOpts {
            system: Some(true),
            ..UserOpts::default()
        }
    }

    /// Every passwd entry has a shadow entry, every group a gshadow entry,
    /// member lists agree, and no name or id appears twice.
    fn assert_consistent(t: &FakeTarget) {
        let [passwd, group, shadow, gshadow] = dbs(t);
        let names = |s: &str| -> Vec<String> {
            s.lines()
                .map(|l| l.split(':').next().unwrap().to_string())
                .collect()
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        assert_eq!(sorted(names(&passwd)), sorted(names(&shadow)));
        assert_eq!(sorted(names(&group)), sorted(names(&gshadow)));
        for db in [&passwd, &group] {
            let ids: Vec<&str> = db.lines().map(|l| l.split(':').nth(2).unwrap()).collect();
            let unique: BTreeSet<&str> = ids.iter().copied().collect();
            assert_eq!(ids.len(), unique.len(), "duplicate id in\n{db}");
        }
        for g in group.lines() {
            let name = g.split(':').next().unwrap();
            let members = g.rsplit(':').next().unwrap();
            let gs = line(&gshadow, name).unwrap();
            assert_eq!(
                gs.rsplit(':').next().unwrap(),
                members,
                "gshadow members of {name}"
            );
        }
        // The seed's own `mail` has no group; only accounts made here are checked.
        for p in passwd
            .lines()
            .filter(|p| p.split(':').nth(2).unwrap().parse::<u32>().unwrap() >= 100)
        {
            let gid = p.split(':').nth(3).unwrap();
            assert!(
                group.lines().any(|g| g.split(':').nth(2) == Some(gid)),
                "primary group of {p}"
            );
        }
    }

    #[test]
    fn normal_user_gets_matching_ids_home_from_skel_and_shadow() {
        let (t, c) = ctx();
        let uid = add_user(&c, "alice", &UserOpts::default()).unwrap();
        assert_eq!(uid, 1000);
        let [passwd, group, shadow, gshadow] = dbs(&t);
        assert_eq!(
            line(&passwd, "alice"),
            Some("alice:x:1000:1000::/home/alice:/bin/bash")
        );
        assert_eq!(line(&group, "alice"), Some("alice:x:1000:"));
        assert_eq!(line(&gshadow, "alice"), Some("alice:!::"));
        let sh: Vec<&str> = line(&shadow, "alice").unwrap().split(':').collect();
        assert_eq!(sh.len(), 9);
        assert_eq!(sh[1], "*");
        assert!(sh[2].parse::<u64>().unwrap() > 19_000, "lastchg {}", sh[2]);
        assert_eq!(&sh[3..], ["0", "99999", "7", "", "", ""]);

        let r = t.root();
        assert_eq!(r.stat("/home/alice").unwrap().mode, HOME_MODE);
        assert_eq!(
            r.read_string("/home/alice/.bashrc").unwrap(),
            "# ~/.bashrc\n"
        );
        for p in ["/home/alice", "/home/alice/.bashrc", "/home/alice/.profile"] {
            assert_eq!(t.owner(p), Some((1000, 1000)), "{p}");
        }
        // Files keep their modes and owners (the fake seeds shadow as 0640).
        assert_eq!(r.stat(SHADOW).unwrap().mode, 0o640);
        assert_eq!(r.stat(PASSWD).unwrap().mode, 0o644);
        assert_consistent(&t);
    }

    #[test]
    fn system_user_defaults() {
        let (t, c) = ctx();
        // The fake's `users` group holds gid 100, so the first id free as both uid and gid is 101.
        assert_eq!(add_user(&c, "postgres", &system()).unwrap(), 101);
        let [passwd, group, ..] = dbs(&t);
        assert_eq!(
            line(&passwd, "postgres"),
            Some("postgres:x:101:101::/nonexistent:/usr/sbin/nologin")
        );
        assert_eq!(line(&group, "postgres"), Some("postgres:x:101:"));
        assert!(!t.root().exists("/nonexistent"));
        assert_consistent(&t);
    }

    #[test]
    fn id_allocation() {
        struct Case {
            what: &'static str,
            setup: &'static [(&'static str, &'static str)],
            user: UserOpts,
            want: (u32, u32),
        }
        let cases = [
            Case {
                what: "first normal",
                setup: &[],
                user: UserOpts::default(),
                want: (1000, 1000),
            },
            Case {
                what: "first system skips gid 100",
                setup: &[],
                user: system(),
                want: (101, 101),
            },
            Case {
                what: "uid 1000 taken: next matching pair",
                setup: &[
                    (PASSWD, "ubuntu:x:1000:1000::/home/ubuntu:/bin/bash\n"),
                    (GROUP, "ubuntu:x:1000:\n"),
                ],
                user: UserOpts::default(),
                want: (1001, 1001),
            },
            Case {
                what: "gid taken by a lone group: both move on",
                setup: &[(GROUP, "docker:x:1000:\n")],
                user: UserOpts::default(),
                want: (1001, 1001),
            },
            Case {
                what: "explicit uid, gid follows it",
                setup: &[],
                user: UserOpts {
                    uid: Some(2000),
                    ..UserOpts::default()
                },
                want: (2000, 2000),
            },
            Case {
                what: "explicit uid whose gid is taken: gid allocated",
                setup: &[(GROUP, "other:x:2000:\n")],
                user: UserOpts {
                    uid: Some(2000),
                    ..UserOpts::default()
                },
                want: (2000, 1000),
            },
            Case {
                what: "existing same-name group is the primary group, uid matches it",
                setup: &[(GROUP, "alice:x:150:\n")],
                user: system(),
                want: (150, 150),
            },
            Case {
                what: "existing same-name group outside the range: uid from the range",
                setup: &[(GROUP, "alice:x:60100:\n")],
                user: UserOpts::default(),
                want: (1000, 60100),
            },
        ];
        for case in cases {
            let (t, c) = ctx();
            for (db, text) in case.setup {
                t.root().append(db, text.as_bytes()).unwrap();
            }
            add_user(&c, "alice", &case.user).unwrap_or_else(|e| panic!("{}: {e}", case.what));
            let passwd = t.root().read_string(PASSWD).unwrap();
            let f: Vec<&str> = line(&passwd, "alice").unwrap().split(':').collect();
            assert_eq!(
                (f[2].parse().unwrap(), f[3].parse().unwrap()),
                case.want,
                "{}",
                case.what
            );
        }
    }

    #[test]
    fn groups_allocate_and_respect_explicit_gids() {
        let (t, c) = ctx();
        assert_eq!(
            add_group(
                &c,
                "cert_readers",
                &GroupOpts {
                    system: Some(true),
                    gid: None
                }
            )
            .unwrap(),
            101
        );
        assert_eq!(add_group(&c, "devs", &GroupOpts::default()).unwrap(), 1000);
        assert_eq!(
            add_group(
                &c,
                "fixed",
                &GroupOpts {
                    system: None,
                    gid: Some(4242)
                }
            )
            .unwrap(),
            4242
        );
        assert_eq!(
            add_group(
                &c,
                "fixed",
                &GroupOpts {
                    system: None,
                    gid: Some(4242)
                }
            )
            .unwrap(),
            4242
        );
        let group = t.root().read_string(GROUP).unwrap();
        assert_eq!(line(&group, "fixed"), Some("fixed:x:4242:"));
        assert!(
            group.starts_with(GROUP_SEED),
            "existing lines kept in order"
        );
        assert_consistent(&t);
    }

    const GROUP_SEED: &str = "root:x:0:\ndaemon:x:1:\n";

    #[test]
    fn conflicts_name_both_values() {
        let (_t, c) = ctx();
        let cases: Vec<(&str, Result<u32>, &[&str])> = vec![
            (
                "existing group, other gid",
                add_group(
                    &c,
                    "sudo",
                    &GroupOpts {
                        system: None,
                        gid: Some(99),
                    },
                ),
                &["group `sudo`", "gid 27", "requested 99"],
            ),
            (
                "gid used by another group",
                add_group(
                    &c,
                    "mine",
                    &GroupOpts {
                        system: None,
                        gid: Some(27),
                    },
                ),
                &["gid 27", "`mine`", "used by `sudo`"],
            ),
            (
                "existing user, other uid",
                add_user(
                    &c,
                    "www-data",
                    &UserOpts {
                        uid: Some(1500),
                        ..UserOpts::default()
                    },
                ),
                &["user `www-data`", "uid 33", "requested 1500"],
            ),
            (
                "uid used by another user",
                add_user(
                    &c,
                    "bob",
                    &UserOpts {
                        uid: Some(33),
                        ..UserOpts::default()
                    },
                ),
                &["uid 33", "`bob`", "used by `www-data`"],
            ),
            (
                "existing user, other shell",
                add_user(
                    &c,
                    "www-data",
                    &UserOpts {
                        shell: Some("/bin/bash".into()),
                        ..UserOpts::default()
                    },
                ),
                &["shell `/usr/sbin/nologin`", "`/bin/bash`"],
            ),
            (
                "existing user, other home",
                add_user(
                    &c,
                    "www-data",
                    &UserOpts {
                        home: Some("/srv".into()),
                        ..UserOpts::default()
                    },
                ),
                &["home `/var/www`", "`/srv`"],
            ),
            (
                "uid out of range",
                add_user(
                    &c,
                    "bob",
                    &UserOpts {
                        uid: Some(-1),
                        ..UserOpts::default()
                    },
                ),
                &["uid -1 is out of range"],
            ),
            (
                "relative home",
                add_user(
                    &c,
                    "bob",
                    &UserOpts {
                        home: Some("home/bob".into()),
                        ..UserOpts::default()
                    },
                ),
                &["home `home/bob`", "absolute"],
            ),
        ];
        for (what, result, needles) in cases {
            let e = result.expect_err(what).to_string();
            for n in needles {
                assert!(e.contains(n), "{what}: `{e}` lacks `{n}`");
            }
        }
    }

    #[test]
    fn second_call_changes_nothing() {
        let (t, c) = ctx();
        let opts = UserOpts {
            groups: Some(vec!["cert_readers".into(), "sudo".into()]),
            ..UserOpts::default()
        };
        let uid = add_user(&c, "alice", &opts).unwrap();
        add_user(&c, "svc", &system()).unwrap();
        add_group(&c, "extra", &GroupOpts::default()).unwrap();
        add_to_group(&c, "svc", "extra").unwrap();
        let before = dbs(&t);
        std::fs::write(t.root().host_dir().join("home/alice/.bashrc"), "edited").unwrap();

        assert_eq!(add_user(&c, "alice", &opts).unwrap(), uid);
        assert_eq!(
            add_user(
                &c,
                "alice",
                &UserOpts {
                    uid: Some(uid as i64),
                    ..UserOpts::default()
                }
            )
            .unwrap(),
            uid
        );
        add_user(&c, "svc", &system()).unwrap();
        add_group(&c, "extra", &GroupOpts::default()).unwrap();
        add_to_group(&c, "svc", "extra").unwrap();
        add_to_group(&c, "svc", "extra").unwrap();
        assert_eq!(dbs(&t), before);
        assert_eq!(
            t.root().read_string("/home/alice/.bashrc").unwrap(),
            "edited",
            "skel not copied again"
        );
    }

    #[test]
    fn supplementary_groups_are_created_and_joined() {
        let (t, c) = ctx();
        add_user(
            &c,
            "prometheus",
            &UserOpts {
                system: Some(true),
                groups: Some(vec![
                    "cert_readers".into(),
                    "adm".into(),
                    "prometheus".into(),
                ]),
                ..UserOpts::default()
            },
        )
        .unwrap();
        let [_, group, _, gshadow] = dbs(&t);
        // A system user's missing groups are system groups.
        let cr = line(&group, "cert_readers").unwrap();
        let gid: u32 = cr.split(':').nth(2).unwrap().parse().unwrap();
        assert!(SYSTEM_IDS.contains(&gid), "{cr}");
        assert!(cr.ends_with(":prometheus"), "{cr}");
        assert_eq!(line(&group, "adm"), Some("adm:x:4:prometheus"));
        assert_eq!(line(&gshadow, "adm"), Some("adm:*::prometheus"));
        // Its own primary group is not listed as a membership.
        assert!(line(&group, "prometheus").unwrap().ends_with(':'));
        for g in ["cert_readers", "adm", "prometheus"] {
            assert!(in_group(t.root(), "prometheus", g).unwrap(), "{g}");
        }
        assert!(!in_group(t.root(), "prometheus", "sudo").unwrap());
        // Calling again without `system` still makes new groups system groups.
        let more = UserOpts {
            groups: Some(vec!["metrics".into()]),
            ..UserOpts::default()
        };
        add_user(&c, "prometheus", &more).unwrap();
        let group = t.root().read_string(GROUP).unwrap();
        let gid: u32 = line(&group, "metrics")
            .unwrap()
            .split(':')
            .nth(2)
            .unwrap()
            .parse()
            .unwrap();
        assert!(SYSTEM_IDS.contains(&gid), "metrics gid {gid}");
        assert!(!in_group(t.root(), "nobody-here", "sudo").unwrap());
        assert!(!in_group(t.root(), "prometheus", "no-group").unwrap());
        assert_consistent(&t);
    }

    #[test]
    fn add_to_group_requires_both_and_never_duplicates() {
        let (t, c) = ctx();
        add_user(&c, "alice", &UserOpts::default()).unwrap();
        add_to_group(&c, "alice", "sudo").unwrap();
        add_to_group(&c, "www-data", "sudo").unwrap();
        add_to_group(&c, "alice", "sudo").unwrap();
        let [_, group, _, gshadow] = dbs(&t);
        assert_eq!(line(&group, "sudo"), Some("sudo:x:27:alice,www-data"));
        assert_eq!(line(&gshadow, "sudo"), Some("sudo:*::alice,www-data"));
        let e = add_to_group(&c, "ghost", "sudo").unwrap_err().to_string();
        assert!(e.contains("no user `ghost`"), "{e}");
        let e = add_to_group(&c, "alice", "ghosts").unwrap_err().to_string();
        assert!(e.contains("no group `ghosts`"), "{e}");
        assert!(user_exists(t.root(), "alice").unwrap());
        assert!(!user_exists(t.root(), "ghost").unwrap());
    }

    #[test]
    fn invalid_names_are_refused() {
        let (t, c) = ctx();
        let before = dbs(&t);
        let long = "a".repeat(33);
        for bad in [
            "",
            "Alice",
            "1abc",
            "-x",
            "a b",
            "a:b",
            "a$b",
            "é",
            "a\n",
            long.as_str(),
        ] {
            let e = add_user(&c, bad, &UserOpts::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("invalid user name"), "{bad:?}: {e}");
            let e = add_group(&c, bad, &GroupOpts::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains("invalid group name"), "{bad:?}: {e}");
        }
        let e = add_user(
            &c,
            "ok",
            &UserOpts {
                groups: Some(vec!["Bad".into()]),
                ..UserOpts::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("invalid group name `Bad`"), "{e}");
        assert_eq!(dbs(&t), before, "nothing written on a refused call");
        for good in ["_apt", "a", "machine$", "systemd-network", &"a".repeat(32)] {
            assert!(valid_name(good), "{good}");
        }
    }

    #[test]
    fn unknown_lines_kept_verbatim_and_malformed_names_refused() {
        let (t, c) = ctx();
        let odd = "# managed by hand\n+@netgroup::::::\nweird:x:007:7::/w:/bin/sh\n\n";
        t.root().append(PASSWD, odd.as_bytes()).unwrap();
        let before = t.root().read_string(PASSWD).unwrap();
        add_user(&c, "alice", &UserOpts::default()).unwrap();
        let after = t.root().read_string(PASSWD).unwrap();
        assert_eq!(
            after,
            format!("{before}alice:x:1000:1000::/home/alice:/bin/bash\n")
        );
        let e = add_user(&c, "weird", &UserOpts::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("/etc/passwd:12: malformed entry for `weird`"),
            "{e}"
        );
        // The malformed line's uid 7 still counts as used.
        let passwd: Table<Passwd> = Table::load(t.root(), PASSWD, true).unwrap();
        assert!(passwd.ids().contains(&7));
    }

    #[test]
    fn missing_shadow_files_are_created_private() {
        let (t, c) = ctx();
        t.root().remove(SHADOW).unwrap();
        t.root().remove(GSHADOW).unwrap();
        add_user(&c, "alice", &UserOpts::default()).unwrap();
        assert_eq!(t.root().stat(SHADOW).unwrap().mode, 0o640);
        assert_eq!(t.owner(SHADOW), Some((0, 42)));
        assert_eq!(t.owner(GSHADOW), Some((0, 42)));
        let shadow = t.root().read_string(SHADOW).unwrap();
        assert_eq!(shadow.lines().count(), 1, "only the touched user: {shadow}");
        assert!(line(&t.root().read_string(GSHADOW).unwrap(), "alice").is_some());
    }

    #[test]
    fn create_home_explicit_and_existing_home_kept() {
        let (t, c) = ctx();
        t.root().mkdir_all("/srv/app", Attrs::mode(0o700)).unwrap();
        t.root()
            .write("/srv/app/data", b"keep", Attrs::default())
            .unwrap();
        let opts = UserOpts {
            system: Some(true),
            home: Some("/srv/app".into()),
            create_home: Some(true),
            ..UserOpts::default()
        };
        add_user(&c, "app", &opts).unwrap();
        assert!(
            !t.root().exists("/srv/app/.bashrc"),
            "existing home untouched"
        );
        assert_eq!(t.owner("/srv/app"), None);

        let opts = UserOpts {
            system: Some(true),
            home: Some("/var/lib/svc".into()),
            create_home: Some(true),
            ..UserOpts::default()
        };
        let uid = add_user(&c, "svc", &opts).unwrap();
        assert_eq!(t.owner("/var/lib/svc/.profile"), Some((uid, uid)));
        let normal = UserOpts {
            create_home: Some(false),
            ..UserOpts::default()
        };
        add_user(&c, "nohome", &normal).unwrap();
        assert!(!t.root().exists("/home/nohome"));
    }

    #[test]
    fn skel_subdirectories_and_links_are_copied() {
        let (t, c) = ctx();
        t.root()
            .write("/etc/skel/.config/app/rc", b"x", Attrs::mode(0o600))
            .unwrap();
        t.root().symlink(".profile", "/etc/skel/.link").unwrap();
        add_user(&c, "alice", &UserOpts::default()).unwrap();
        let r = t.root();
        assert_eq!(r.stat("/home/alice/.config/app/rc").unwrap().mode, 0o600);
        assert_eq!(t.owner("/home/alice/.config/app"), Some((1000, 1000)));
        assert_eq!(
            r.readlink("/home/alice/.link").unwrap(),
            std::path::PathBuf::from(".profile")
        );
    }

    #[test]
    fn rhai_calls_return_ids_and_reject_unknown_options() {
        let (t, c) = ctx();
        let mut engine = rhai::Engine::new();
        crate::register(&mut engine, &c);
        let uid: i64 = engine
            .eval(r#"add_group("cert_readers", #{ system: true }); add_user("postgres", #{ system: true, groups: ["cert_readers"] })"#)
            .unwrap();
        assert_eq!(uid, 102);
        assert!(in_group(t.root(), "postgres", "cert_readers").unwrap());
        assert_eq!(engine.eval::<i64>(r#"add_user("alice")"#).unwrap(), 1000);
        assert_eq!(engine.eval::<i64>(r#"add_group("alice")"#).unwrap(), 1000);
        engine
            .eval::<()>(r#"add_to_group("alice", "sudo")"#)
            .unwrap();
        let e = match *engine
            .eval::<i64>(r#"add_user("bob", #{ sytem: true })"#)
            .unwrap_err()
        {
            rhai::EvalAltResult::ErrorRuntime(d, _) => {
                d.cast::<crate::api::PrimitiveFailure>().message
            }
            other => panic!("{other}"),
        };
        assert!(
            e.contains(": add_user: options: unknown field `sytem`"),
            "{e}"
        );
    }
}
