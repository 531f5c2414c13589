//! Helpers shared by pgimg's crates (stdlib, runtime, publish): hashes, output tails, sizes for people.

use std::borrow::Cow;
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// Sizes for people (`1.50 GiB`): every progress and log line uses this one.
pub use indicatif::HumanBytes;

/// Hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Hex sha256 of the file at `path`, streamed.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => return Ok(hex::encode(h.finalize())),
            n => h.update(&buf[..n]),
        }
    }
}

/// The last `max` bytes of a stream, from a line boundary where possible.
pub fn tail(bytes: &[u8], max: usize) -> String {
    let start = bytes.len().saturating_sub(max);
    let mut s = &bytes[start..];
    if start > 0 {
        if let Some(nl) = s.iter().position(|&b| b == b'\n') {
            s = &s[nl + 1..];
        }
    }
    String::from_utf8_lossy(s).into_owned()
}

/// The last `lines` lines of a stream, trailing blank space dropped.
pub fn tail_lines(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `text` with every control character written as its escape (`\n`, `\r`,
/// `\t`, `\0`, `\u{1b}`, as Rust's `escape_debug`), so a value from a
/// recipe cannot start a line of its own, rewrite one (`\r`) or drive the
/// terminal (ESC) in what pgimg prints.
pub fn escape_controls(text: &str) -> Cow<'_, str> {
    escape_controls_except(text, &[])
}

/// [`escape_controls`] keeping newlines and tabs, for messages whose lines
/// are meant (an error ending with a command's output).
pub fn escape_controls_keep_lines(text: &str) -> Cow<'_, str> {
    escape_controls_except(text, &['\n', '\t'])
}

fn escape_controls_except<'a>(text: &'a str, keep: &[char]) -> Cow<'a, str> {
    let escaped = |c: char| c.is_control() && !keep.contains(&c);
    if !text.chars().any(escaped) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if escaped(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `; <label>:\n<tail>` to end an error message with a command's output, or
/// nothing when the tail is blank.
pub fn tail_suffix(label: &str, tail: &str) -> String {
    if tail.trim().is_empty() {
        String::new()
    } else {
        format!("; {label}:\n{}", tail.trim_end())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_cannot_forge_or_rewrite_a_line() {
        let v = "a\npgimg: done\r\0\u{1b}[2Jz\tü";
        assert_eq!(escape_controls(v), "a\\npgimg: done\\r\\0\\u{1b}[2Jz\\tü");
        assert_eq!(
            escape_controls_keep_lines(v),
            "a\npgimg: done\\r\\0\\u{1b}[2Jz\tü"
        );
        assert!(matches!(escape_controls("plain ü"), Cow::Borrowed(_)));
    }

    #[test]
    fn tails_keep_the_end_on_line_boundaries() {
        assert_eq!(tail(b"one\ntwo\nthree\n", 8), "three\n");
        assert_eq!(tail(b"short", 80), "short");
        assert_eq!(tail_lines(b"a\nb\nc\n\n", 2), "b\nc");
        assert_eq!(tail_suffix("stderr", "  \n"), "");
        assert_eq!(tail_suffix("output", "boom\n"), "; output:\nboom");
    }

    #[test]
    fn sha256_of_a_file_equals_that_of_its_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let data = vec![7u8; 3 << 20];
        std::fs::write(&p, &data).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), sha256_hex(&data));
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(HumanBytes(1536).to_string(), "1.50 KiB");
    }
}
