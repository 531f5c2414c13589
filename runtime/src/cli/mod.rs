//! The command line: the top floor. One file per command, each a thin
//! function returning `anyhow::Result` over the library below; `main` maps
//! errors to exit statuses. Nothing outside `cli` and `main` imports it.

pub mod boot;
pub mod cache;
pub mod check;
pub mod defs;
pub mod inspect;
pub mod lock;
pub mod plan;
pub mod prune;
pub mod publish;
pub mod run;
pub mod shell;
pub mod test;
pub mod verify;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use pgimg_stdlib::FakeOs;

use crate::build::base_source::GivenPin;
use crate::host::RecipeInputs;

#[derive(Parser, Debug)]
#[command(
    name = "pgimg",
    version,
    about = "Build PostgreSQL virtual-machine images from Rhai recipes",
    long_about = "Build PostgreSQL virtual-machine images from Rhai recipes.\n\n\
        A recipe is a Rhai script calling primitives (apt_repo, apt_download, fetch_verify, \
        add_user, systemd_unit, go_build, pgxs_build, run, ...) that act inside the image root.\n\n\
        Try it without an image:\n  \
        pgimg plan recipes/examples/everything.rhai     # what the recipe would do\n  \
        pgimg test recipes                              # run the recipe tests\n\n\
        Exit status: 0 ok; 1 a build or test failed (including a recipe failing during `run`); \
        2 a usage error, or a recipe error found by `check` or `plan`; \
        130 interrupted by SIGINT or SIGTERM (after everything was torn down)."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Build an image: copy the base, grow it, mount it, run the recipe inside, finalize, write the output.
    ///
    /// Needs root (loop devices, mounts, namespaces). Without --base or --rootfs the built-in
    /// Debian bookworm fixture image is used (built once with debootstrap and cached), so
    /// `pgimg run recipes/examples/hello.rhai --output hello.raw` works anywhere.
    /// The base image is never modified; nothing appears under --output unless the build succeeds.
    Run(run::RunArgs),
    /// The step cache: `pgimg cache ls` lists its checkpoints, `pgimg cache prune` removes some.
    #[command(subcommand)]
    Cache(cache::CacheCmd),
    /// Open an interactive shell inside an image (mounted the same way as for a build).
    ///
    /// Changes made in the shell are written to IMAGE. Everything is torn down on exit.
    Shell(shell::ShellArgs),
    /// Publish an image: S3-compatible upload, AWS AMIs, or a GCE image.
    #[command(subcommand)]
    Publish(publish::PublishCmd),
    /// Delete old published releases (AMIs with snapshots, objects with sidecars); dry run by default.
    #[command(long_about = prune::ABOUT)]
    Prune(prune::PruneArgs),
    /// Show an image's partition table, root file system, sizes and embedded manifest.
    Inspect(inspect::InspectArgs),
    /// Compile recipes, resolve imports and run them on a fake root (no root, no network).
    Check(check::CheckArgs),
    /// Print the ordered actions a recipe would perform, without running anything.
    Plan(plan::PlanArgs),
    /// Resolve every pin of recipes (checksum lists, first-use files) into `pgimg.lock` beside them.
    ///
    /// Resolves for amd64 and arm64. `pgimg run --locked` then refuses any input that is not in
    /// the lock or does not match it.
    Lock(lock::LockArgs),
    /// Run recipe tests (`*.test.rhai`) against fake roots.
    Test(test::TestArgs),
    /// Write a `.d.rhai` definitions file of every primitive, for editor completion.
    Defs(defs::DefsArgs),
    // `about` and `long_about` (with examples) come from the Args structs.
    Boot(boot::BootArgs),
    Verify(verify::VerifyArgs),
}

impl Cmd {
    /// Runs the command.
    pub fn run(&self) -> anyhow::Result<()> {
        match self {
            Cmd::Run(a) => run::run(a),
            Cmd::Cache(c) => cache::cache(c),
            Cmd::Shell(a) => shell::shell(a),
            Cmd::Publish(a) => publish::publish(a),
            Cmd::Prune(a) => prune::prune(a),
            Cmd::Inspect(a) => inspect::inspect(a),
            Cmd::Check(a) => check::check(a),
            Cmd::Plan(a) => plan::plan(a),
            Cmd::Lock(a) => lock::lock(a),
            Cmd::Test(a) => test::test(a),
            Cmd::Defs(a) => defs::defs(a),
            Cmd::Boot(a) => boot::boot(a),
            Cmd::Verify(a) => verify::verify(a),
        }
    }

    /// Whether the command only reports on stdout, with no network or
    /// child processes of its own: it then ends quietly when its reader goes
    /// away (`pgimg inspect IMG | head`), as Unix filters do, instead of
    /// panicking on EPIPE.
    pub fn is_a_filter(&self) -> bool {
        matches!(
            self,
            Cmd::Inspect(_)
                | Cmd::Check(_)
                | Cmd::Plan(_)
                | Cmd::Test(_)
                | Cmd::Defs(_)
                | Cmd::Cache(_)
        )
    }

    /// Whether the command mounts: it must then enter a private mount
    /// namespace before any thread exists, and stop on SIGINT/SIGTERM.
    pub fn mounts(&self) -> bool {
        // boot and verify: the FUSE view of the disk they read is a mount.
        matches!(
            self,
            Cmd::Run(_) | Cmd::Shell(_) | Cmd::Boot(_) | Cmd::Verify(_)
        )
    }
}

/// How `--base` URLs are pinned on the command line (`run` and `lock`).
#[derive(Args, Debug, Clone)]
pub struct BasePinArgs {
    /// The sha256 of the --base URL's content (64 hex digits, either case);
    /// a download that differs is refused.
    #[arg(
        long,
        value_name = "HEX",
        requires = "base",
        conflicts_with = "base_sha256_from",
        value_parser = parse_sha256
    )]
    pub base_sha256: Option<String>,
    /// Pin each --base URL by the entry for its file name in this checksum
    /// list (`sha256sum` or BSD format), e.g.
    /// https://cloud-images.ubuntu.com/releases/jammy/release-20260705/SHA256SUMS.
    #[arg(long, value_name = "LIST_URL", requires = "base")]
    pub base_sha256_from: Option<String>,
}

impl BasePinArgs {
    /// The pin given, if any (clap lets at most one through).
    pub fn given(&self) -> Option<GivenPin> {
        match (&self.base_sha256, &self.base_sha256_from) {
            (Some(hex), _) => Some(GivenPin::Sha256(hex.clone())),
            (None, Some(list)) => Some(GivenPin::List(list.clone())),
            (None, None) => None,
        }
    }
}

/// What a recipe is run with: `--set`, `--mirror`, `--assets`.
#[derive(Args, Debug, Clone)]
pub struct RecipeArgs {
    /// Recipe parameter, as read by `param(name)`; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub set: Vec<(String, String)>,
    /// Redirect a named source (e.g. `ubuntu`, `pgdg`, `releases`; see `mirror()` in
    /// docs/recipes.md) to another URL; repeatable.
    #[arg(long = "mirror", value_name = "NAME=URL", value_parser = parse_kv)]
    pub mirror: Vec<(String, String)>,
    /// Extra asset folder searched after the recipe's own `assets/`; repeatable.
    #[arg(long = "assets", value_name = "DIR")]
    pub assets: Vec<PathBuf>,
}

impl RecipeArgs {
    /// The recipe inputs these flags give (no lock).
    pub fn inputs(&self) -> RecipeInputs {
        RecipeInputs {
            params: self.set.iter().cloned().collect(),
            mirrors: self.mirror.iter().cloned().collect(),
            assets: self.assets.clone(),
            lock: None,
        }
    }
}

/// The fake root `check` and `plan` run recipes on, and the recipe's flags.
#[derive(Args, Debug, Clone)]
pub struct FakeArgs {
    #[command(flatten)]
    pub recipe: RecipeArgs,
    /// Debian architecture of the pretend image.
    #[arg(long, default_value = "amd64", value_parser = ["amd64", "arm64"])]
    pub arch: String,
    #[command(flatten)]
    pub os: OsArgs,
}

impl FakeArgs {
    /// The pretend image.
    pub fn os(&self) -> FakeOs {
        self.os.on(&self.arch)
    }
}

/// The distribution of a fake root (`lock` pretends each architecture in
/// turn, so it has no `--arch`).
#[derive(Args, Debug, Clone)]
pub struct OsArgs {
    /// Pretend distribution as ID:VERSION_ID:CODENAME.
    #[arg(long, default_value = "ubuntu:22.04:jammy", value_parser = parse_os)]
    pub os: (String, String, String),
}

impl OsArgs {
    /// The pretend image of Debian architecture `arch`.
    pub fn on(&self, arch: &str) -> FakeOs {
        FakeOs {
            id: self.os.0.clone(),
            version_id: self.os.1.clone(),
            codename: self.os.2.clone(),
            arch: arch.to_string(),
        }
    }
}

/// A sha256 in lowercase, the form lock lines and manifests hold.
fn parse_sha256(s: &str) -> Result<String, String> {
    pgimg_stdlib::fetch::normalize_sha256(s).map_err(|e| e.to_string())
}

fn parse_kv(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{s}` is not KEY=VALUE")),
    }
}

fn parse_os(s: &str) -> Result<(String, String, String), String> {
    let parts: Vec<&str> = s.split(':').collect();
    match parts.as_slice() {
        [id, v, c] if !id.is_empty() && !v.is_empty() && !c.is_empty() => {
            Ok((id.to_string(), v.to_string(), c.to_string()))
        }
        _ => Err(format!(
            "`{s}` is not ID:VERSION_ID:CODENAME (e.g. ubuntu:22.04:jammy)"
        )),
    }
}

/// Parses sizes like `8G`, `512M`, `4096` (bytes), `1.5G`; binary units.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = t[i..].to_ascii_uppercase();
            let m: u64 = match unit.trim_end_matches("IB").trim_end_matches('B') {
                "" => 1,
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("`{s}`: unknown unit (use K, M, G or T)")),
            };
            (&t[..i], m)
        }
        None => (t, 1),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a size like 8G"))?;
    if v <= 0.0 {
        return Err(format!("`{s}`: size must be positive"));
    }
    let bytes = v * mult as f64;
    if bytes >= u64::MAX as f64 {
        return Err(format!("`{s}` is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for (s, want) in [
            ("8G", Ok(8u64 << 30)),
            ("512M", Ok(512 << 20)),
            ("4096", Ok(4096)),
            ("1.5G", Ok(3 << 29)),
            ("2GiB", Ok(2 << 30)),
            ("10X", Err(())),
            ("-1G", Err(())),
            ("G", Err(())),
        ] {
            assert_eq!(parse_size(s).map_err(|_| ()), want, "{s}");
        }
    }
}
