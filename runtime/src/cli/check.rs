//! `pgimg check`: compile recipes and run them on a fake root.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pgimg_stdlib::fetch::RecordingFetcher;

use super::FakeArgs;
use crate::engine::display_path;
use crate::error::{Reported, EXIT_USAGE};
use crate::host::{self, Unused};

/// Arguments of `pgimg check`.
#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Recipe files to compile and run on a fake root, each on its own.
    #[arg(required = true)]
    pub recipes: Vec<PathBuf>,
    #[command(flatten)]
    pub fake: FakeArgs,
}

/// `pgimg check`: one line per recipe; exit 2 when any is broken, or when
/// a `--set` or `--mirror` name is asked for by none of them (by the one
/// recipe, when only one is given).
pub fn check(args: &CheckArgs) -> Result<()> {
    let inputs = args.fake.recipe.inputs();
    let mut broken = false;
    let mut unused: Option<Unused> = None;
    let several = args.recipes.len() > 1;
    for r in &args.recipes {
        let fetcher = Box::new(RecordingFetcher::default());
        let run = match host::dry_run(r, &inputs, &args.fake.os(), fetcher) {
            Ok(run) => run,
            Err(e) => {
                pgimg_stdlib::stderr_line!("{e:#}");
                broken = true;
                continue;
            }
        };
        match run.result {
            // One recipe with an unused name is not ok; it is reported below.
            Ok(()) if !several && run.unused.error(false).is_err() => {}
            Ok(()) => {
                let n = run.journal.actions.len();
                let s = if n == 1 { "" } else { "s" };
                println!("{}: ok ({n} action{s})", display_path(r));
            }
            Err(e) => {
                pgimg_stdlib::stderr_line!("{e}");
                broken = true;
            }
        }
        unused = Some(match unused {
            None => run.unused,
            Some(u) => u.and(&run.unused),
        });
    }
    if let Some(Err(e)) = unused.map(|u| u.error(several)) {
        if several {
            pgimg_stdlib::stderr_line!("{e}");
        } else {
            pgimg_stdlib::stderr_line!("{}: {e}", display_path(&args.recipes[0]));
        }
        broken = true;
    }
    if broken {
        return Err(Reported { code: EXIT_USAGE }.into());
    }
    Ok(())
}
