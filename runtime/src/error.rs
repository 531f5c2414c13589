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
