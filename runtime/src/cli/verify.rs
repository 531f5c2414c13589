//! `pgimg verify`: boot an image unattended and check it from inside.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::boot::{classify, BootArgs};
use crate::error::{Reported, UsageError, EXIT_FAILED};
use crate::vm::{self, VerifyOptions};

/// Arguments of `pgimg verify`.
#[derive(Args, Debug, Clone)]
#[command(
    about = "Boot an image unattended, run checks inside it, power off",
    long_about = "Boot an image with no one at the console, check it from inside, power it off.\n\n\
    The image boots behind a throw-away qcow2 overlay (its sha256 does not change). A small agent \
    and its systemd unit are written into the overlay only; they serve a virtio-serial port, over \
    which each check's commands run in the guest. Nothing is needed from the image beyond systemd \
    and /bin/sh, and no network or SSH.\n\n\
    Always checked: the system reaches multi-user.target (the time from power-on is printed), and \
    `systemctl --failed` is empty (a failure names the units and shows their journal tail). An \
    image that does not come up within --timeout fails with the console's last lines.\n\n\
    Then the checks file: --checks FILE, or else the one beside the recipe that built the image \
    (IMAGE.manifest.json names the recipe; recipes/standard.rhai has recipes/standard.verify.rhai). \
    A checks file is Rhai, run on the host:\n\n  \
    expect_active(\"ssh.service\");                 // systemctl is-active\n  \
    expect_ok(\"pg_isready\");                      // exit status 0\n  \
    let r = sh(\"id -nG postgres\");               // r.out, r.status, r.ok\n  \
    expect_eq(sh(\"cat /etc/hostname\"), \"db1\");    // output, blanks trimmed\n  \
    expect_contains(r, \"ssl-cert\");\n  \
    expect(r.ok, \"postgres exists\");\n  \
    note(sh(\"cat /etc/machine-id\"));             // printed, not a check\n\n\
    Prints one line per check and `N passed, N failed`. Exit status: 0 all passed; 1 a check \
    failed or the image did not boot; 2 a bad checks file.\n\n\
    Examples:\n  \
    pgimg verify hello.raw\n  \
    pgimg verify standard.raw --checks recipes/standard.verify.rhai --timeout 600\n  \
    pgimg verify hello.raw --firmware uefi"
)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub boot: BootArgs,
    /// The checks file (default: the recipe's `<name>.verify.rhai`, found through the manifest).
    #[arg(long, value_name = "FILE")]
    pub checks: Option<PathBuf>,
    /// Only the built-in checks, even when the recipe has a checks file.
    #[arg(long, conflicts_with = "checks")]
    pub no_recipe_checks: bool,
    /// Seconds from power-on until every check is done (TCG boots take tens of seconds).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// `pgimg verify`: exit status 0 when every check passed, 1 when one failed
/// (after printing them). Call inside the private mount namespace.
pub fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    if args.boot.persist {
        return Err(UsageError(
            "--persist does not apply to verify: it always boots through an overlay".into(),
        )
        .into());
    }
    let opts = VerifyOptions {
        boot: args.boot.options(),
        checks: args.checks.clone(),
        no_recipe_checks: args.no_recipe_checks,
        timeout: Duration::from_secs(args.timeout),
    };
    let image = &args.boot.image;
    // Each check is printed as it completes: a flavor's checks can take
    // minutes under TCG.
    let print: vm::checks::OnCheck = std::sync::Arc::new(|check: &vm::checks::CheckResult| {
        println!("{} {}", if check.ok { "ok  " } else { "FAIL" }, check.name);
        for line in check.detail.lines() {
            println!("       {line}");
        }
    });
    let report = vm::verify(
        image,
        &opts,
        &|line| pgimg_stdlib::stderr_line!("pgimg verify: {line}"),
        print,
    )
    .map_err(classify)
    .with_context(|| format!("verifying {}", image.display()))?;
    for note in &report.notes {
        println!("note {note}");
    }
    if let Some(tail) = &report.console_tail {
        println!("console (last lines):");
        for line in tail.lines() {
            println!("  | {line}");
        }
    }
    println!("{} passed, {} failed", report.passed(), report.failed());
    if report.failed() == 0 {
        Ok(())
    } else {
        Err(Reported { code: EXIT_FAILED }.into())
    }
}
