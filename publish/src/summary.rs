//! Markdown summaries for GitHub Actions' step summary (`$GITHUB_STEP_SUMMARY`).

use std::io::Write;
use std::path::Path;

use crate::progress::human_bytes;
use crate::s3::S3Outcome;

/// Appends `markdown` to the summary file, creating it if needed.
pub fn append(path: &Path, markdown: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(markdown.as_bytes())?;
    if !markdown.ends_with('\n') {
        f.write_all(b"\n")?;
    }
    Ok(())
}

/// Heading line naming the image.
pub(crate) fn heading(what: &str, image: &Path) -> String {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    format!("### {what} `{}`\n\n", escape(&name))
}

/// Size as "8.0 GiB (8589934592 bytes)".
pub(crate) fn size_cell(size: u64) -> String {
    format!("{} ({size} bytes)", human_bytes(size))
}

/// Escapes the characters that would break a table cell or inline code.
pub(crate) fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'").replace('\n', " ")
}

/// The summary of an S3 publish: object, size, sha256, whether it was uploaded.
pub fn s3_markdown(image: &Path, o: &S3Outcome) -> String {
    let mut md = heading("Published", image);
    md.push_str("| | |\n|---|---|\n");
    md.push_str(&format!("| object | `{}` |\n", escape(&o.url)));
    md.push_str(&format!(
        "| sidecar | `s3://{}/{}` |\n",
        escape(&o.bucket),
        escape(&o.sidecar_key)
    ));
    md.push_str(&format!("| size | {} |\n", size_cell(o.size)));
    md.push_str(&format!("| sha256 | `{}` |\n", o.sha256));
    let upload = if o.uploaded {
        let rate = if o.seconds > 0.0 {
            format!(", {:.1} MiB/s", o.size as f64 / 1_048_576.0 / o.seconds)
        } else {
            String::new()
        };
        format!("{} part(s) in {:.1} s{rate}", o.parts, o.seconds)
    } else {
        "already there with the same sha256; nothing uploaded".to_string()
    };
    md.push_str(&format!("| upload | {upload} |\n\n"));
    md
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(uploaded: bool) -> S3Outcome {
        S3Outcome {
            url: "s3://images/a|b.raw".into(),
            bucket: "images".into(),
            key: "a|b.raw".into(),
            sidecar_key: "a|b.raw.sha256".into(),
            size: 3 << 30,
            sha256: "ab".repeat(32),
            uploaded,
            sidecar_uploaded: uploaded,
            parts: 192,
            seconds: 12.0,
        }
    }

    #[test]
    fn s3_summary_lists_size_sha256_and_what_happened() {
        let md = s3_markdown(Path::new("/x/a|b.raw"), &outcome(true));
        assert!(md.starts_with("### Published `a\\|b.raw`\n"), "{md}");
        assert!(md.contains("| object | `s3://images/a\\|b.raw` |"), "{md}");
        assert!(md.contains("| size | 3.0 GiB (3221225472 bytes) |"), "{md}");
        assert!(
            md.contains(&format!("| sha256 | `{}` |", "ab".repeat(32))),
            "{md}"
        );
        assert!(md.contains("192 part(s) in 12.0 s, 256.0 MiB/s"), "{md}");
        let skipped = s3_markdown(Path::new("a.raw"), &outcome(false));
        assert!(skipped.contains("nothing uploaded"), "{skipped}");
    }

    #[test]
    fn append_adds_to_an_existing_summary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("summary.md");
        append(&path, "first\n").unwrap();
        append(&path, "second").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "first\nsecond\n");
    }
}
