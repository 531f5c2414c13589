//! `pgimg`: parses arguments and dispatches; the work lives in the library.

use clap::Parser;
use pgimg::cli::{self, Cli, Cmd};
use pgimg::sandbox::{interrupt, namespace};

fn main() {
    let cli = Cli::parse();
    if matches!(
        cli.command,
        Cmd::Run(_) | Cmd::Shell { .. } | Cmd::Boot(_) | Cmd::Verify(_)
    ) {
        // Before any thread exists: every mount of the build then lives in a
        // namespace the kernel frees even if pgimg is SIGKILLed.
        if let Err(e) = namespace::enter_private_mount_namespace() {
            eprintln!("pgimg: {e}");
            std::process::exit(cli::EXIT_FAILED);
        }
        if let Err(e) = interrupt::install_handler() {
            eprintln!("pgimg: installing the SIGINT/SIGTERM handler: {e}");
            std::process::exit(cli::EXIT_FAILED);
        }
    }
    let status = match &cli.command {
        Cmd::Run(args) => cli::run(args),
        Cmd::Shell { image, command } => cli::shell(image, command),
        Cmd::Boot(args) => cli::verify::exit_status(cli::boot::boot(args)),
        Cmd::Verify(args) => cli::verify::exit_status(cli::verify::verify(args)),
        Cmd::Inspect { image, json } => cli::inspect(image, *json),
        Cmd::Publish(cmd) => pgimg::publish_cli::publish(cmd),
        Cmd::Check { recipes, fake } => cli::check(recipes, fake),
        Cmd::Plan { recipe, fake, json } => cli::plan(recipe, fake, *json),
        Cmd::Lock { recipes, fake } => pgimg::lock::lock(recipes, fake),
        Cmd::Test { paths } => cli::test(paths),
        Cmd::Defs { output } => cli::defs(output.as_deref()),
    };
    std::process::exit(status);
}
