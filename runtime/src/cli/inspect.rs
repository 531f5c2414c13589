//! `pgimg inspect`: an image's partition table, root file system, sizes and manifest.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

/// Arguments of `pgimg inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    pub image: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `pgimg inspect`.
pub fn inspect(args: &InspectArgs) -> Result<()> {
    let i = crate::image::inspect::inspect(&args.image)
        .with_context(|| format!("inspecting {}", args.image.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
    } else {
        print!("{i}");
    }
    Ok(())
}
