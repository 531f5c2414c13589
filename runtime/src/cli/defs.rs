//! `pgimg defs`: the primitives' signatures and doc comments for editors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `pgimg defs`.
#[derive(Args, Debug)]
pub struct DefsArgs {
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// `pgimg defs`.
pub fn defs(args: &DefsArgs) -> Result<()> {
    // The engine recipe tests run in: every primitive and the test API.
    let engine = crate::testing::test_engine(Path::new("."));
    let text = engine
        .definitions()
        .include_standard_packages(false)
        .single_file();
    match &args.output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            pgimg_stdlib::stderr_line!("wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
