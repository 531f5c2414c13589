//! Lines for the operator on standard error that never panic.
//!
//! `eprintln!` panics when the write fails. Rust starts every program with
//! SIGPIPE ignored, so a stderr whose reader has gone (`pgimg run … 2>&1 |
//! head`, a closed terminal, a log shipper that died) turns the next line into
//! an EPIPE and the panic into exit status 101, hiding the build's own status
//! (0, 1, 2 or 130) from the script that ran it. A lost log line is the
//! lesser harm: [`line`] drops it.

use std::io::Write;

/// Writes `args` and a newline to stderr in one locked write; a failed write
/// is dropped (see the module docs). Use it through [`stderr_line!`](crate::stderr_line).
pub fn line(args: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `eprintln!` that drops the line instead of panicking when stderr is gone.
#[macro_export]
macro_rules! stderr_line {
    ($($arg:tt)*) => { $crate::stderr::line(format_args!($($arg)*)) };
}
