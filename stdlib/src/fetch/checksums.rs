//! Reading a file's pin out of an upstream checksum list (`sha256sums.txt`, `SHA256SUMS`).
//!
//! Two formats are in use: GNU coreutils' `sha256sum` output (`<hex>  <name>`,
//! or `<hex> *<name>` for binary mode) and the BSD/`shasum --tag` form
//! (`SHA256 (<name>) = <hex>`). Names may carry a folder (`./dist/x.tar.gz`);
//! the file is matched by its last component.

/// Why a checksum list gave no pin for a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChecksumError {
    #[error("no entry for `{name}` in the checksum list")]
    NotListed { name: String },
    #[error("the checksum list has {count} different sha256 entries for `{name}`")]
    Ambiguous { name: String, count: usize },
    /// The list names the file with another algorithm's digest: most likely
    /// the release's `SHA512SUMS` or `MD5SUMS` was given for its `SHA256SUMS`.
    #[error(
        "the checksum list gives `{name}` a {algorithm} digest, not a sha256: give the \
         release's list of sha256 sums (e.g. SHA256SUMS)"
    )]
    OtherAlgorithm {
        name: String,
        algorithm: &'static str,
    },
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One line as (name, sha256), if it is an entry.
fn parse_line(line: &str) -> Option<(&str, &str)> {
    let line = line.trim_end_matches('\r');
    if let Some(rest) = line.strip_prefix("SHA256 (") {
        let (name, hex) = rest.rsplit_once(") = ")?;
        return is_sha256(hex.trim()).then(|| (name, hex.trim()));
    }
    let (hex, name) = line.split_once(char::is_whitespace)?;
    if !is_sha256(hex) {
        return None;
    }
    // `sha256sum` separates with two spaces, or with ` *` in binary mode.
    let name = name.strip_prefix(' ').unwrap_or(name);
    let name = name.strip_prefix('*').unwrap_or(name);
    (!name.is_empty()).then_some((name, hex))
}

/// The algorithm of a hex digest by its length, for a digest that is not a
/// sha256 (the lengths `md5sum`, `sha1sum` and `sha512sum` etc. print).
fn other_algorithm(hex: &str) -> Option<&'static str> {
    if !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    match hex.len() {
        32 => Some("md5"),
        40 => Some("sha1"),
        56 => Some("sha224"),
        96 => Some("sha384"),
        128 => Some("sha512"),
        _ => None,
    }
}

/// The algorithm of an entry for `name` with another digest than sha256, in
/// either format.
fn other_entry(list: &str, name: &str) -> Option<&'static str> {
    let named = |n: &str| n == name || n.rsplit('/').next() == Some(name);
    list.lines().find_map(|line| {
        let line = line.trim_end_matches('\r');
        let (n, hex) = match line.split_once(" (") {
            // BSD form: `SHA512 (name) = hex`.
            Some((_, rest)) if rest.contains(") = ") => rest.rsplit_once(") = ")?,
            _ => {
                let (hex, n) = line.split_once(char::is_whitespace)?;
                let n = n.strip_prefix(' ').unwrap_or(n);
                (n.strip_prefix('*').unwrap_or(n), hex)
            }
        };
        named(n).then(|| other_algorithm(hex.trim())).flatten()
    })
}

/// The sha256 (lowercase) that `list` gives for the file `name`.
pub fn sha256_for(list: &str, name: &str) -> Result<String, ChecksumError> {
    let mut found: Vec<String> = list
        .lines()
        .filter_map(parse_line)
        .filter(|(n, _)| *n == name || n.rsplit('/').next() == Some(name))
        .map(|(_, hex)| hex.to_ascii_lowercase())
        .collect();
    found.sort();
    found.dedup();
    match found.len() {
        0 => Err(match other_entry(list, name) {
            Some(algorithm) => ChecksumError::OtherAlgorithm {
                name: name.to_string(),
                algorithm,
            },
            None => ChecksumError::NotListed {
                name: name.to_string(),
            },
        }),
        1 => Ok(found.remove(0)),
        count => Err(ChecksumError::Ambiguous {
            name: name.to_string(),
            count,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";

    #[test]
    fn formats_and_names() {
        let list = format!(
            "{A}  tool-1.0.linux-amd64.tar.gz\r\n\
             {B} *tool-1.0.linux-arm64.tar.gz\n\
             SHA256 (tool-1.0.darwin-amd64.tar.gz) = {A}\n\
             {B}  ./dist/tool-1.0.windows-amd64.zip\n\
             # a comment\n\
             not-a-hash  tool-1.0.linux-386.tar.gz\n"
        );
        let cases = [
            ("tool-1.0.linux-amd64.tar.gz", Ok(A.to_string())),
            ("tool-1.0.linux-arm64.tar.gz", Ok(B.to_lowercase())),
            ("tool-1.0.darwin-amd64.tar.gz", Ok(A.to_string())),
            ("tool-1.0.windows-amd64.zip", Ok(B.to_lowercase())),
            (
                "tool-1.0.linux-386.tar.gz",
                Err(ChecksumError::NotListed {
                    name: "tool-1.0.linux-386.tar.gz".into(),
                }),
            ),
            (
                "linux-amd64.tar.gz",
                Err(ChecksumError::NotListed {
                    name: "linux-amd64.tar.gz".into(),
                }),
            ),
        ];
        for (name, want) in cases {
            assert_eq!(sha256_for(&list, name), want, "{name}");
        }
    }

    #[test]
    fn the_same_entry_twice_is_fine_two_different_ones_are_not() {
        let same = format!("{A}  x.tar.gz\n{A}  dist/x.tar.gz\n");
        assert_eq!(sha256_for(&same, "x.tar.gz").unwrap(), A);
        let two = format!("{A}  x.tar.gz\n{B}  other/x.tar.gz\n");
        let e = sha256_for(&two, "x.tar.gz").unwrap_err();
        assert_eq!(
            e.to_string(),
            "the checksum list has 2 different sha256 entries for `x.tar.gz`"
        );
    }

    #[test]
    fn a_list_of_another_algorithm_says_so() {
        let sha512 = "c".repeat(128);
        let md5 = "d".repeat(32);
        let list = format!("{sha512}  x.img\nSHA512 (y.img) = {sha512}\n{md5} *z.img\n");
        for (name, algorithm) in [("x.img", "sha512"), ("y.img", "sha512"), ("z.img", "md5")] {
            let e = sha256_for(&list, name).unwrap_err();
            assert_eq!(
                e,
                ChecksumError::OtherAlgorithm {
                    name: name.into(),
                    algorithm
                },
                "{name}"
            );
            assert!(e.to_string().contains("SHA256SUMS"), "{e}");
        }
        // A name the list does not hold at all is still just not listed.
        assert_eq!(
            sha256_for(&list, "w.img"),
            Err(ChecksumError::NotListed {
                name: "w.img".into()
            })
        );
    }
}
