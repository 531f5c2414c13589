//! `pgimg plan`: the ordered actions a recipe would perform, without running anything.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use pgimg_stdlib::ctx::{Action, Journal};

use super::FakeArgs;
use crate::host;

/// Arguments of `pgimg plan`.
#[derive(Args, Debug)]
pub struct PlanArgs {
    /// The recipe whose actions to list.
    pub recipe: PathBuf,
    #[command(flatten)]
    pub fake: FakeArgs,
    /// One JSON array of {primitive, args, location, commands}.
    #[arg(long)]
    pub json: bool,
}

/// `pgimg plan`.
pub fn plan(args: &PlanArgs) -> Result<()> {
    let journal = host::plan(&args.recipe, &args.fake.recipe.inputs(), &args.fake.os())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&journal.actions)?);
    } else {
        print!("{}", render_plan(&journal));
    }
    Ok(())
}

fn summarize_args(args: &serde_json::Value) -> String {
    let parts: Vec<String> = match args {
        serde_json::Value::Array(items) => items
            .iter()
            .filter(|v| !matches!(v, serde_json::Value::Object(m) if m.is_empty()))
            .map(|v| match v {
                serde_json::Value::String(s) if s.contains('\n') => {
                    format!("<{} lines>", s.lines().count())
                }
                serde_json::Value::Object(m) => {
                    let mut m = m.clone();
                    if let Some(mode) = m.get("mode").and_then(|v| v.as_i64()) {
                        m.insert("mode".into(), format!("0o{mode:o}").into());
                    }
                    serde_json::Value::Object(m).to_string()
                }
                other => other.to_string(),
            })
            .collect(),
        other => vec![other.to_string()],
    };
    parts.join(" ")
}

/// Renders the plan for people: grouped by recipe file, commands and pins under each call.
pub fn render_plan(journal: &Journal) -> String {
    let mut out = String::new();
    let mut current: Option<&str> = None;
    for Action {
        primitive,
        args,
        location,
        commands,
    } in &journal.actions
    {
        if current != Some(location.file.as_str()) {
            out.push_str(&format!("\n{}\n", location.file));
            current = Some(location.file.as_str());
        }
        // The commands below say the rest; keep the call itself to one line.
        let limit = if commands.is_empty() { 240 } else { 100 };
        let mut summary = summarize_args(args);
        if summary.chars().count() > limit {
            summary = summary.chars().take(limit).collect::<String>() + " …";
        }
        out.push_str(&format!(
            "  {:>4}:{:<3} {} {}\n",
            location.line, location.col, primitive, summary
        ));
        for c in commands {
            out.push_str(&format!("             $ {c}\n"));
        }
    }
    if !journal.inputs.is_empty() {
        out.push_str("\ninputs (every one pinned)\n");
        for i in &journal.inputs {
            let pin = match (&i.from, i.pin.is_empty()) {
                (Some(from), true) => format!("sha256 from {from}"),
                _ => i.pin.clone(),
            };
            let dest = if i.dest.is_empty() {
                String::new()
            } else {
                format!(" -> {}", i.dest)
            };
            out.push_str(&format!("  {:<7} {} @ {pin}{dest}\n", i.kind, i.url));
        }
    }
    out.trim_start().to_string()
}
