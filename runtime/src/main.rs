//! `pgimg`: parses arguments, dispatches, and maps errors to exit statuses
//! (0 ok, 1 failed, 2 usage or recipe error, 130 interrupted) in one place.

use clap::Parser;
use pgimg::cli::Cli;
use pgimg::error::{
    chain_text, Interrupted, RecipeError, Reported, UsageError, EXIT_FAILED, EXIT_INTERRUPTED,
    EXIT_USAGE,
};
use pgimg::sandbox::{interrupt, namespace};
use pgimg_stdlib::shared::escape_controls_keep_lines;

fn main() {
    let cli = Cli::parse();
    if cli.command.is_a_filter() {
        // Rust starts with SIGPIPE ignored, so a closed stdout is an EPIPE
        // that `println!` turns into a panic; the default action ends the
        // process quietly, as `head` expects.
        // SAFETY: no other thread exists yet; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if cli.command.mounts() {
        // Before any thread exists: every mount of the build then lives in a
        // namespace the kernel frees even if pgimg is SIGKILLed.
        if let Err(e) = namespace::enter_private_mount_namespace() {
            pgimg_stdlib::stderr_line!("pgimg: {e}");
            std::process::exit(EXIT_FAILED);
        }
        if let Err(e) = interrupt::install_handler() {
            pgimg_stdlib::stderr_line!("pgimg: installing the SIGINT/SIGTERM handler: {e}");
            std::process::exit(EXIT_FAILED);
        }
    }
    let status = match cli.command.run() {
        Ok(()) => 0,
        Err(e) => report(&e),
    };
    std::process::exit(status);
}

/// Prints `e` the way its kind calls for and returns the exit status.
fn report(e: &anyhow::Error) -> i32 {
    if let Some(r) = e.downcast_ref::<Reported>() {
        return r.code;
    }
    if let Some(r) = e.downcast_ref::<RecipeError>() {
        pgimg_stdlib::stderr_line!("{}", escape_controls_keep_lines(&r.to_string()));
        return EXIT_USAGE;
    }
    pgimg_stdlib::stderr_line!("pgimg: {}", escape_controls_keep_lines(&chain_text(e)));
    if let Some(sig) = interrupt::signal() {
        pgimg_stdlib::stderr_line!("pgimg: interrupted by {sig}; everything was torn down");
        return EXIT_INTERRUPTED;
    }
    if e.downcast_ref::<Interrupted>().is_some() {
        return EXIT_INTERRUPTED;
    }
    if e.downcast_ref::<UsageError>().is_some() {
        return EXIT_USAGE;
    }
    EXIT_FAILED
}
