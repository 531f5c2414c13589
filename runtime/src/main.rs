//! `pgimg`: parses arguments and dispatches; the work lives in the library.

use clap::Parser;
use pgimg::cli::{self, Cli, Cmd};

fn main() {
    let cli = Cli::parse();
    let status = match &cli.command {
        Cmd::Check { recipes, fake } => cli::check(recipes, fake),
        Cmd::Plan { recipe, fake, json } => cli::plan(recipe, fake, *json),
        Cmd::Test { paths } => cli::test(paths),
        Cmd::Defs { output } => cli::defs(output.as_deref()),
    };
    std::process::exit(status);
}
