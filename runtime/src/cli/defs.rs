//! `pgimg defs`: the primitives' signatures and doc comments for editors.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use pgimg_stdlib::{Ctx, FakeTarget};

use crate::engine::{build_engine, Limits};

/// Arguments of `pgimg defs`.
#[derive(Args, Debug)]
pub struct DefsArgs {
    /// Output file (default: stdout).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// `pgimg defs`.
pub fn defs(args: &DefsArgs) -> Result<()> {
    let ctx = Ctx::new(Arc::new(FakeTarget::ubuntu()));
    let mut engine = build_engine(&ctx, &Limits::default());
    crate::testing::register_test_api(&mut engine, PathBuf::from("."));
    let text = engine
        .definitions()
        .include_standard_packages(false)
        .single_file();
    match &args.output {
        Some(p) => {
            std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))?;
            eprintln!("wrote {}", p.display());
        }
        None => print!("{text}"),
    }
    Ok(())
}
