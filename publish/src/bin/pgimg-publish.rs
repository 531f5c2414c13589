//! Stand-in for `pgimg publish` until the CLI is wired: drives the library the way the CLI will.
//! The tests run it as a separate process (signals, canary secrets) and the
//! benchmark times it; a binary target rather than an example because cargo
//! builds binaries, with the tests' own features, before integration tests.
//!
//! ```text
//! pgimg-publish s3  IMAGE --bucket B [--key K] [--endpoint URL] [--region R] [--path-style]
//!             [--part-size-mib N] [--concurrency N] [--attempts N] [--step-summary FILE] [--quiet]
//! pgimg-publish ami IMAGE --region R --name NAME --arch x86_64|arm64 [--via import|ebs-direct]
//!             [--bucket B] [--copy-to r1,r2] [--public] [--endpoint URL] [--path-style]
//!             [--concurrency N] [--block-concurrency N] [--poll-secs N] [--import-timeout-secs N] [--available-timeout-secs N]
//!             [--step-summary FILE] [--quiet]
//! ```
//!
//! Prints the outcome as JSON on stdout; exits 130 when interrupted, 1 on failure, 2 on usage errors.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use pgimg_publish::progress::{Bar, Progress, Quiet};
use pgimg_publish::s3::{self, S3Options};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, image, flags) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(msg) => {
            eprintln!("usage error: {msg}");
            return ExitCode::from(2);
        }
    };
    let progress: Box<dyn Progress> = if flags.contains_key("quiet") {
        Box::new(Quiet)
    } else {
        Box::new(Bar::new())
    };
    match command.as_str() {
        "s3" => run_s3(&image, &flags, progress.as_ref()),
        #[cfg(feature = "ami")]
        "ami" => run_ami(&image, &flags, progress.as_ref()),
        other => {
            eprintln!("usage error: unknown command {other}");
            ExitCode::from(2)
        }
    }
}

type Flags = HashMap<String, String>;

fn parse(args: &[String]) -> Result<(String, PathBuf, Flags), String> {
    let command = args.first().ok_or("missing command")?.clone();
    let image = PathBuf::from(args.get(1).ok_or("missing image")?);
    let mut flags = Flags::new();
    let mut rest = args[2..].iter();
    while let Some(arg) = rest.next() {
        let name = arg
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected {arg}"))?;
        let boolean = matches!(name, "path-style" | "public" | "quiet");
        let value = if boolean {
            String::new()
        } else {
            rest.next()
                .ok_or_else(|| format!("--{name} needs a value"))?
                .clone()
        };
        flags.insert(name.to_string(), value);
    }
    Ok((command, image, flags))
}

fn num<T: std::str::FromStr>(flags: &Flags, name: &str, default: T) -> T {
    flags
        .get(name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn conn(flags: &Flags) -> pgimg_publish::Connection {
    pgimg_publish::Connection {
        endpoint: flags.get("endpoint").cloned(),
        path_style: flags.contains_key("path-style"),
        profile: flags.get("profile").cloned(),
    }
}

fn run_s3(image: &std::path::Path, flags: &Flags, progress: &dyn Progress) -> ExitCode {
    let Some(bucket) = flags.get("bucket") else {
        eprintln!("usage error: --bucket is required");
        return ExitCode::from(2);
    };
    let mut opts = S3Options::new(bucket);
    opts.key = flags.get("key").cloned();
    opts.region = flags.get("region").cloned();
    opts.conn = conn(flags);
    opts.part_size = num(flags, "part-size-mib", s3::DEFAULT_PART_SIZE >> 20) << 20;
    opts.concurrency = num(flags, "concurrency", s3::DEFAULT_CONCURRENCY);
    opts.attempts = num(flags, "attempts", s3::DEFAULT_ATTEMPTS);
    opts.step_summary = flags.get("step-summary").map(PathBuf::from);
    match s3::publish(&opts, image, progress) {
        Ok(outcome) => {
            println!(
                "{}",
                serde_json::to_string(&outcome).expect("outcome serializes")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: publishing {}: {e}", image.display());
            ExitCode::from(if e.is_interrupted() { 130 } else { 1 })
        }
    }
}

#[cfg(feature = "ami")]
fn run_ami(image: &std::path::Path, flags: &Flags, progress: &dyn Progress) -> ExitCode {
    use pgimg_publish::ami::{self, AmiOptions};
    let (Some(region), Some(name), Some(arch)) =
        (flags.get("region"), flags.get("name"), flags.get("arch"))
    else {
        eprintln!("usage error: --region, --name and --arch are required");
        return ExitCode::from(2);
    };
    let arch = match arch.parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("usage error: {e}");
            return ExitCode::from(2);
        }
    };
    let mut opts = AmiOptions::new(region, name, arch);
    if let Some(via) = flags.get("via") {
        match via.parse() {
            Ok(v) => opts.via = v,
            Err(e) => {
                eprintln!("usage error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    opts.bucket = flags.get("bucket").cloned();
    opts.copy_to = flags
        .get("copy-to")
        .map(|s| {
            s.split(',')
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    opts.public = flags.contains_key("public");
    opts.conn = conn(flags);
    opts.concurrency = num(flags, "concurrency", opts.concurrency);
    opts.block_concurrency = num(flags, "block-concurrency", opts.block_concurrency);
    opts.poll_secs = num(flags, "poll-secs", opts.poll_secs);
    opts.import_timeout_secs = num(flags, "import-timeout-secs", opts.import_timeout_secs);
    opts.available_timeout_secs = num(flags, "available-timeout-secs", opts.available_timeout_secs);
    opts.step_summary = flags.get("step-summary").map(PathBuf::from);
    match ami::publish(&opts, image, progress) {
        Ok(outcome) => {
            println!(
                "{}",
                serde_json::to_string(&outcome).expect("outcome serializes")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: publishing {} as an AMI: {e}", image.display());
            ExitCode::from(if e.is_interrupted() { 130 } else { 1 })
        }
    }
}
