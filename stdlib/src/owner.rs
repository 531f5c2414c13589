//! Resolving `owner` options (`"user"`, `"user:group"`, `"0:0"`) against the image's own databases.

use crate::error::{Error, Result};
use crate::root::ImageRoot;

fn lookup(root: &ImageRoot, db: &str, name: &str) -> Result<Option<(u32, Option<u32>)>> {
    let text = root.read_string_opt(db)?.unwrap_or_default();
    for line in text.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && f[0] == name {
            let id = f[2]
                .parse()
                .map_err(|_| Error::invalid(format!("{db}: bad id in line `{line}`")))?;
            let primary = f
                .get(3)
                .and_then(|g| g.parse().ok())
                .filter(|_| db == "/etc/passwd");
            return Ok(Some((id, primary)));
        }
    }
    Ok(None)
}

/// Whether `id` can be a user or group id (see [`check_id`]).
pub fn is_valid_id(id: u32) -> bool {
    id != u32::MAX && id != u32::from(u16::MAX)
}

/// Refuses ids that are not real ids: `4294967295` is `(uid_t)-1`, which
/// chown(2) takes as "leave unchanged", and `65535` is `(uint16_t)-1`, the
/// same in the 16-bit calls; systemd refuses both (`uid_is_valid()` in
/// systemd's src/basic/user-util.h).
pub fn check_id(what: &str, id: u32) -> Result<u32> {
    if !is_valid_id(id) {
        return Err(Error::invalid(format!(
            "{what} {id} is not a valid id (it means \"unchanged\" to chown and the kernel)"
        )));
    }
    Ok(id)
}

/// Resolves an owner spec to (uid, gid) using the image's `/etc/passwd` and
/// `/etc/group` (never the host's). A bare user takes its primary group.
/// Ids that are not real ids ([`check_id`]) are refused.
pub fn resolve_owner(root: &ImageRoot, spec: &str) -> Result<(u32, u32)> {
    let (uid, gid) = resolve_ids(root, spec)?;
    let what = |kind: &str| format!("owner `{spec}`: {kind}");
    Ok((
        check_id(&what("user id"), uid)?,
        check_id(&what("group id"), gid)?,
    ))
}

fn resolve_ids(root: &ImageRoot, spec: &str) -> Result<(u32, u32)> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = match user.parse::<u32>() {
        Ok(n) => (n, None),
        Err(_) => lookup(root, "/etc/passwd", user)?.ok_or_else(|| {
            Error::invalid(format!(
                "owner `{spec}`: no user `{user}` in the image's /etc/passwd"
            ))
        })?,
    };
    let gid = match group {
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => {
                lookup(root, "/etc/group", g)?
                    .ok_or_else(|| {
                        Error::invalid(format!(
                            "owner `{spec}`: no group `{g}` in the image's /etc/group"
                        ))
                    })?
                    .0
            }
        },
        None => primary.unwrap_or(uid),
    };
    Ok((uid, gid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{FakeTarget, Target};

    #[test]
    fn resolves_names_and_numbers() {
        let t = FakeTarget::ubuntu();
        let r = t.root();
        assert_eq!(resolve_owner(r, "root").unwrap(), (0, 0));
        assert_eq!(resolve_owner(r, "www-data:shadow").unwrap(), (33, 42));
        assert_eq!(resolve_owner(r, "1000:1001").unwrap(), (1000, 1001));
        let e = resolve_owner(r, "nobody-here").unwrap_err().to_string();
        assert!(e.contains("no user `nobody-here`"), "{e}");
    }

    #[test]
    fn owner_ids_that_mean_unchanged_to_chown_are_refused() {
        let t = FakeTarget::ubuntu();
        let r = t.root();
        for spec in ["4294967295", "0:4294967295", "65535:0", "root:65535"] {
            let e = resolve_owner(r, spec).unwrap_err().to_string();
            assert!(e.contains("is not a valid id"), "{spec}: {e}");
        }
        // The same id reached through the image's own database.
        r.append("/etc/passwd", b"ghost:x:4294967295:0::/:/bin/false\n")
            .unwrap();
        let e = resolve_owner(r, "ghost").unwrap_err().to_string();
        assert!(e.contains("user id 4294967295 is not a valid id"), "{e}");
        assert_eq!(resolve_owner(r, "65534:65534").unwrap(), (65534, 65534));
    }
}
