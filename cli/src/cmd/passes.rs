use crate::Outcome;
use compactor_passes::registry::{PRESETS, passes};
use std::io::Write;

#[derive(clap::Args)]
pub struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let mut out = std::io::stdout().lock();
    let all = passes();
    if args.json {
        let value = serde_json::json!({
            "passes": all.iter().map(|p| serde_json::json!({
                "name": p.name, "kind": p.kind, "summary": p.summary, "options": p.options(),
            })).collect::<Vec<_>>(),
            "presets": PRESETS.iter().map(|p| serde_json::json!({ "name": p.name, "summary": p.summary, "passes": p.spec })).collect::<Vec<_>>(),
        });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
        return Ok(Outcome::Success);
    }
    writeln!(out, "passes:")?;
    for p in &all {
        let kind = match p.kind {
            compactor_passes::PassKind::Analysis => " (analysis)",
            compactor_passes::PassKind::Transform => "",
        };
        writeln!(out, "  {}{kind}\n      {}", p.name, p.summary)?;
        for o in p.options() {
            writeln!(out, "      {}: {} = {}  {}", o.name, o.ty, o.default, o.description)?;
        }
    }
    writeln!(out, "\npresets:")?;
    for p in PRESETS {
        writeln!(out, "  {}\n      {}\n      = {}", p.name, p.summary, p.spec)?;
    }
    writeln!(out, "\nspec syntax: name(option=value,...),name,...   e.g. 'cleanup,fold-constants(max_bytes=4096)'")?;
    Ok(Outcome::Success)
}
