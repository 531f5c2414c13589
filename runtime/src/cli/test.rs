//! `pgimg test`: run recipe tests (`*.test.rhai`) against fake roots.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::error::{Reported, UsageError, EXIT_FAILED};
use crate::testing;

/// Arguments of `pgimg test`.
#[derive(Args, Debug)]
pub struct TestArgs {
    /// Files or folders to search (default: recipes/ and tests/).
    pub paths: Vec<PathBuf>,
}

/// `pgimg test`: one line per test, then `N passed, N failed`.
pub fn test(args: &TestArgs) -> Result<()> {
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from("recipes"), PathBuf::from("tests")]
    } else {
        args.paths.clone()
    };
    let files = testing::discover(&paths);
    if files.is_empty() {
        let searched: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
        return Err(UsageError(format!(
            "no *.test.rhai files under {}",
            searched.join(", ")
        ))
        .into());
    }
    let (mut passed, mut failed) = (0, 0);
    for f in files {
        for r in testing::run_test_file(&f) {
            match r.error {
                None => {
                    passed += 1;
                    println!("ok   {} ({:.2}s)", r.name, r.seconds);
                }
                Some(e) => {
                    failed += 1;
                    println!(
                        "FAIL {} ({:.2}s)\n     {}",
                        r.name,
                        r.seconds,
                        e.replace('\n', "\n     ")
                    );
                }
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 {
        return Err(Reported { code: EXIT_FAILED }.into());
    }
    Ok(())
}
