//! `pgimg run`: build an image (or a root folder) from a recipe.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use pgimg_stdlib::fetch::HttpFetcher;

use super::{parse_size, BasePinArgs, RecipeArgs};
use crate::build::{self, Format, RunOptions};
use crate::engine::Limits;
use crate::error::UsageError;

/// Arguments of `pgimg run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// The recipe to run.
    pub recipe: PathBuf,
    /// Base disk image (raw or qcow2, GPT with an ext4 root): a file, or an
    /// http(s) URL (downloaded into the cache once, converted to raw once).
    /// A URL's pin is --base-sha256, --base-sha256-from, or a `url URL HEX`
    /// line in pgimg.lock beside the recipe (`pgimg lock RECIPE --base URL`
    /// writes it); a pin given here must agree with that line. Under
    /// --locked the line must exist and no checksum list is read.
    /// Default: the built-in fixture.
    #[arg(long, conflicts_with = "rootfs", value_name = "FILE|URL")]
    pub base: Option<PathBuf>,
    #[command(flatten)]
    pub base_pin: BasePinArgs,
    /// Run on this directory in place instead of an image (no output file is written).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Final image size (e.g. 8G); the root partition and file system grow to fill it.
    #[arg(long, value_parser = parse_size, conflicts_with = "rootfs")]
    pub size: Option<u64>,
    /// Output image path. Default: <recipe name>-<x64|arm64>.<format> in the current folder.
    #[arg(long, short, conflicts_with = "rootfs")]
    pub output: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "raw", conflicts_with = "rootfs")]
    pub format: Format,
    /// Compress qcow2 output.
    #[arg(long, conflicts_with = "rootfs")]
    pub compress: bool,
    #[command(flatten)]
    pub recipe_args: RecipeArgs,
    /// Refuse any input missing from `pgimg.lock` beside the recipe, or not matching it.
    #[arg(long)]
    pub locked: bool,
    /// Host cache for downloads, git sources, apt archives and Go caches.
    /// Default: $XDG_CACHE_HOME/pgimg (or ~/.cache/pgimg).
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Run every step: neither resume from a checkpoint of the step cache nor write one.
    /// `PGIMG_NO_CACHE=1` does the same (`0` or empty: use the cache). Downloads
    /// stay cached (they are verified by their pins), and so does the base's
    /// sha256 while its file is unchanged (same inode, size, mtime and ctime).
    #[arg(long, env = "PGIMG_NO_CACHE", value_parser = clap::builder::FalseyValueParser::new())]
    pub no_cache: bool,
    /// Bound on the step cache's checkpoints (least recently used evicted first).
    #[arg(long, value_parser = parse_size, default_value = "10G", value_name = "SIZE")]
    pub cache_max_size: u64,
    /// A checkpoint is taken before the next primitive call once the calls
    /// run since the last one took this long (see "Where checkpoints are
    /// taken" in docs/recipes.md).
    #[arg(
        long,
        env = "PGIMG_CHECKPOINT_MIN_SECONDS",
        value_parser = parse_seconds,
        default_value = "10",
        value_name = "SECONDS"
    )]
    pub checkpoint_min_seconds: f64,
}

/// A number of seconds, zero or more (fractions allowed); empty (a CI
/// variable set to nothing) is the default.
fn parse_seconds(s: &str) -> Result<f64, String> {
    if s.trim().is_empty() {
        return Ok(build::cache::DEFAULT_MIN_SECONDS);
    }
    match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "`{s}` is not a number of seconds like 10 or 0.5 (the value may come from \
             PGIMG_CHECKPOINT_MIN_SECONDS)"
        )),
    }
}

/// `pgimg run`. Call inside the private mount namespace.
pub fn run(args: &RunArgs) -> Result<()> {
    if args.compress && args.format != Format::Qcow2 {
        return Err(UsageError(
            "--compress compresses a qcow2 output: add --format qcow2 (a raw image is never compressed)"
                .into(),
        )
        .into());
    }
    if args.rootfs.is_some() && args.base_pin.given().is_some() {
        return Err(UsageError(
            "--base-sha256 and --base-sha256-from pin a --base URL; --rootfs runs on a folder, \
             which has no base"
                .into(),
        )
        .into());
    }
    if !args.recipe.is_file() {
        return Err(UsageError(format!("{}: no such recipe", args.recipe.display())).into());
    }
    if let Some(size) = args.size.filter(|s| s % 512 != 0) {
        return Err(UsageError(format!(
            "--size {size}: not a whole number of 512-byte sectors (e.g. 8G, or {} bytes)",
            size / 512 * 512
        ))
        .into());
    }
    crate::host::check_syntax(&args.recipe, &args.recipe_args.inputs())?;
    let base = match (&args.base, &args.rootfs) {
        (_, Some(_)) => None,
        (Some(img), None) => Some(img.clone()),
        (None, None) => {
            let img =
                crate::fixture::base_image().context("building the built-in fixture image")?;
            pgimg_stdlib::stderr_line!(
                "pgimg: no --base given: using the built-in fixture {}",
                img.display()
            );
            Some(img)
        }
    };
    let given_pin = args.base_pin.given();
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(pgimg_stdlib::fetch::default_cache_dir);
    let base_download = match (&base, &given_pin) {
        (Some(url), given) if build::base_source::is_url(url.as_os_str()) => {
            let url = url.display().to_string();
            let lock_path = crate::lock::lock_path(&args.recipe);
            let locked = if lock_path.exists() {
                crate::lock::load_for(&args.recipe)?
                    .get("url", &url)
                    .cloned()
            } else {
                None
            };
            let lookup = |list: &str| {
                let fetcher = HttpFetcher::new(cache_dir.join("downloads"))
                    .context("setting up the downloader")?;
                build::base_source::sha256_in_list(&fetcher, &url, list)
            };
            Some(build::base_source::pin_for(
                &url,
                given.as_ref(),
                locked.as_ref(),
                args.locked,
                &crate::engine::display_path(&lock_path),
                &lookup,
            )?)
        }
        (Some(img), Some(_)) => {
            return Err(UsageError(format!(
                "--base-sha256 and --base-sha256-from pin a --base URL; {} is a file, which is \
                 hashed as it is",
                img.display()
            ))
            .into())
        }
        (Some(img), None) => {
            not_a_file(img)
                .map_err(|why| UsageError(format!("--base {}: {why}", img.display())))?;
            if let Some(size) = args.size {
                refuse_shrink(img, size)?;
            }
            None
        }
        (None, _) => None,
    };
    let mut inputs = args.recipe_args.inputs();
    if args.locked {
        inputs.lock = Some(crate::lock::load_for(&args.recipe)?);
    }
    let opts = RunOptions {
        recipe: args.recipe.clone(),
        size: args.size,
        output: args.output.clone().unwrap_or_else(|| default_output(args)),
        format: args.format,
        compress: args.compress,
        inputs,
        cache_dir,
        limits: Limits::default(),
        step_cache: (!args.no_cache).then_some(build::StepCacheOptions {
            max_size: args.cache_max_size,
            min_seconds: args.checkpoint_min_seconds,
        }),
        base_download,
    };
    let base = match &opts.base_download {
        Some(download) => Some(build::base_source::resolve(download, &opts.cache_dir)?),
        None => base,
    };
    match (&base, &args.rootfs) {
        (_, Some(dir)) => build::build_rootfs(&opts, dir),
        (Some(img), None) => build::build_image(&opts, img),
        (None, None) => unreachable!("a base image or a root folder was chosen above"),
    }
    .context("build failed")?;
    Ok(())
}

/// `<recipe name>-<x64|arm64>.<format>` in the current folder.
fn default_output(args: &RunArgs) -> PathBuf {
    let arch = pgimg_stdlib::Facts {
        arch: pgimg_stdlib::target::host_arch()
            .unwrap_or("amd64")
            .to_string(),
    };
    let stem = args
        .recipe
        .file_stem()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned();
    PathBuf::from(format!(
        "{stem}-{}.{}",
        arch.image_arch(),
        args.format.as_str()
    ))
}

/// Refuses a `--size` below the base's disk size before the base is copied
/// (the grow would refuse it then, naming the work copy). The disk size of a
/// raw base is its length; of a qcow2 base, the header's `size` field (bytes
/// 24-31, big-endian: QEMU's docs/interop/qcow2.txt).
fn refuse_shrink(base: &std::path::Path, size: u64) -> Result<()> {
    use std::io::Read;
    let mut header = [0u8; 32];
    let mut file =
        std::fs::File::open(base).with_context(|| format!("--base {}", base.display()))?;
    let is_qcow2 = file.read_exact(&mut header).is_ok() && &header[..4] == b"QFI\xfb";
    let len = if is_qcow2 {
        u64::from_be_bytes(header[24..32].try_into().expect("8 bytes"))
    } else {
        file.metadata()
            .with_context(|| format!("--base {}", base.display()))?
            .len()
    };
    if size < len {
        return Err(UsageError(format!(
            "--size {size} ({}): the base {} is already {len} bytes ({}); --size is the final \
             size of the image, which can only grow",
            indicatif::HumanBytes(size),
            base.display(),
            indicatif::HumanBytes(len)
        ))
        .into());
    }
    Ok(())
}

/// Ok for a regular file (or a link to one); otherwise what the path is.
fn not_a_file(path: &std::path::Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let t = match std::fs::metadata(path) {
        Ok(m) => m.file_type(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // `HTTP://…`, `ftp://…`, `file://…`: meant as a URL, read as a path.
            return Err(if path.to_string_lossy().contains("://") {
                "no such file (a URL base starts with http:// or https://, in lowercase)".into()
            } else {
                "no such file".into()
            });
        }
        Err(e) => return Err(e.to_string()),
    };
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "is a directory (for a root folder use --rootfs)"
    } else if t.is_fifo() {
        "is a FIFO"
    } else if t.is_block_device() {
        "is a block device"
    } else if t.is_char_device() {
        "is a character device"
    } else if t.is_socket() {
        "is a socket"
    } else {
        "is not a regular file"
    };
    Err(format!(
        "{what}; pgimg takes a disk image file (raw or qcow2)"
    ))
}
