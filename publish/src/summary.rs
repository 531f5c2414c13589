//! Markdown summaries for GitHub Actions' step summary (`$GITHUB_STEP_SUMMARY`).

use std::io::Write;
use std::path::Path;

use indicatif::HumanBytes;

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
    format!("{} ({size} bytes)", HumanBytes(size))
}

/// Escapes the characters that would break a table cell or inline code.
pub(crate) fn escape(s: &str) -> String {
    s.replace('|', "\\|").replace('`', "'").replace('\n', " ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_adds_to_an_existing_summary() {
        let file = tempfile::NamedTempFile::new().unwrap();
        append(file.path(), "first\n").unwrap();
        append(file.path(), "second").unwrap();
        assert_eq!(
            std::fs::read_to_string(file.path()).unwrap(),
            "first\nsecond\n"
        );
    }
}
