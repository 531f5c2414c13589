//! `pgimg check`: compile recipes and run them on a fake root.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use super::FakeArgs;
use crate::engine::display_path;
use crate::error::{Reported, EXIT_USAGE};
use crate::host;

/// Arguments of `pgimg check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub fake: FakeArgs,
}

/// `pgimg check`: one line per recipe; exit 2 when any is broken.
pub fn check(args: &CheckArgs) -> Result<()> {
    let inputs = args.fake.recipe.inputs();
    let mut broken = false;
    for r in &args.recipes {
        match host::plan(r, &inputs, &args.fake.os()) {
            Ok(j) => println!("{}: ok ({} actions)", display_path(r), j.actions.len()),
            Err(e) => {
                eprintln!("{e}");
                broken = true;
            }
        }
    }
    if broken {
        return Err(Reported { code: EXIT_USAGE }.into());
    }
    Ok(())
}
