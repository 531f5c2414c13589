//! `pgimg shell`: a shell (or one command) inside an image.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::error::Reported;

/// Arguments of `pgimg shell`.
#[derive(Args, Debug)]
pub struct ShellArgs {
    pub image: PathBuf,
    /// Run this command instead of an interactive shell.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `pgimg shell`: exits with the shell's status. Call inside the private mount namespace.
pub fn shell(args: &ShellArgs) -> Result<()> {
    match crate::shell::shell(&args.image, &args.command).context("shell")? {
        0 => Ok(()),
        code => Err(Reported { code }.into()),
    }
}
