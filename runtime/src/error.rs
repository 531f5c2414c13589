//! The errors that decide an exit status other than 1; `main` maps them.

/// A mistake in how pgimg was called or in a recipe found before anything
/// ran: exit status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// The command failed and has already told the user why (a test summary,
/// one line per broken recipe): exit status `code`, nothing more printed.
#[derive(Debug, thiserror::Error)]
#[error("failed (exit status {code})")]
pub struct Reported {
    pub code: i32,
}

/// Exit status: a build, a test or a publication failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit status: bad usage or a recipe error.
pub const EXIT_USAGE: i32 = 2;
/// Exit status after SIGINT/SIGTERM (everything was torn down first), as
/// shells report a command killed by SIGINT.
pub const EXIT_INTERRUPTED: i32 = 130;

/// A recipe error found before anything ran (`check`, `plan`): exit
/// status 2, printed as is — the message starts with `file:line:col`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RecipeError(pub String);

/// The command stopped because of SIGINT or SIGTERM, after tearing down
/// what it had set up: exit status 130. Shows as the error it wraps.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Interrupted(#[from] pub anyhow::Error);

/// `e` and its causes joined with `: `, each cause left out when the text
/// before it already says it. Many error types print their source in their
/// own message *and* expose it as `source()` (thiserror's `{source}` with
/// `#[source]`), so anyhow's `{:#}` would print that cause twice or more.
pub fn chain_text(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading the GPT: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::other("no GPT partition table found");
        let e = anyhow::Error::new(Outer(io)).context("acquire: base.raw");
        assert_eq!(
            chain_text(&e),
            "acquire: base.raw: reading the GPT: no GPT partition table found"
        );
        let plain = anyhow::anyhow!("inner").context("outer");
        assert_eq!(chain_text(&plain), "outer: inner");
    }
}
