use crate::Outcome;
use crate::output::{bytes, count};
use anyhow::Context;
use compactor_ir::summary::{Summary, summarize};
use std::io::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx file (or a model in the text form, *.ctir).
    model: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// How many of the largest tensors to list.
    #[arg(long, default_value_t = 10)]
    largest: usize,
    /// Also print the whole graph in Compactor's text form.
    #[arg(long)]
    graph: bool,
    /// Infer the types and shapes of every value first (shown by --graph; conflicts with declared types are listed).
    #[arg(long)]
    infer_shapes: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let mut model = crate::model_file::load(&args.model)?;
    let inference = args.infer_shapes.then(|| compactor_ir::infer_shapes(&mut model, &Default::default()));
    let file_bytes = std::fs::metadata(&args.model).with_context(|| format!("{}: cannot stat", args.model.display()))?.len();
    let summary = summarize(&model, args.largest);
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut value = serde_json::to_value(&summary)?;
        value["file"] = serde_json::json!({ "path": args.model, "bytes": file_bytes });
        if let Some(report) = &inference {
            value["shape_inference"] = serde_json::json!({
                "typed": report.typed.len(),
                "refined": report.refined.len(),
                "conflicts": report.conflicts.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
                "failures": report.failures.iter().map(|f| f.to_string()).collect::<Vec<_>>(),
                "ops_without_rule": report.unsupported_ops,
            });
        }
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        print_text(&mut out, &args, file_bytes, &summary)?;
        if let Some(report) = &inference {
            write!(out, "\nshape inference: {report}")?;
        }
        if args.graph {
            write!(out, "\n{}", compactor_ir::model_to_text(&model))?;
        }
    }
    out.flush()?;
    Ok(if summary.problems.is_empty() { Outcome::Success } else { Outcome::CheckFailed })
}

fn print_text(out: &mut impl Write, args: &Args, file_bytes: u64, s: &Summary) -> std::io::Result<()> {
    writeln!(out, "{} ({})", args.model.display(), bytes(file_bytes))?;
    let opsets: Vec<String> = s.opsets.iter().map(|o| format!("{} {}", o.domain, o.version)).collect();
    writeln!(out, "  IR version {}, opsets: {}", s.ir_version.unwrap_or(0), opsets.join(", "))?;
    if let Some(p) = &s.producer {
        writeln!(out, "  producer: {p} {}", s.producer_version.as_deref().unwrap_or(""))?;
    }
    writeln!(out, "  graph '{}': {} nodes, {} subgraphs", s.graph_name.as_deref().unwrap_or(""), s.nodes, s.subgraphs)?;
    writeln!(out, "\ninputs:")?;
    for io in &s.inputs {
        writeln!(out, "  {}: {}", io.name, io.ty)?;
    }
    writeln!(out, "outputs:")?;
    for io in &s.outputs {
        writeln!(out, "  {}: {}", io.name, io.ty)?;
    }
    writeln!(out, "\nops ({} kinds):", s.ops.len())?;
    for op in &s.ops {
        writeln!(out, "  {:>6}  {}", op.count, op.op)?;
    }
    let w = &s.weights;
    writeln!(out, "\nweights: {} parameters in {} tensors, {}", count(w.elements), w.tensors, bytes(w.bytes))?;
    for d in &w.by_dtype {
        writeln!(out, "  {:>10}  {:>8} params  {:>5} tensors  {}", d.dtype.short_name(), count(d.elements), d.tensors, bytes(d.bytes))?;
    }
    if !s.largest_tensors.is_empty() {
        writeln!(out, "\nlargest tensors:")?;
        for t in &s.largest_tensors {
            let ext = t.external.as_ref().map(|l| format!("  (external: {l})")).unwrap_or_default();
            writeln!(out, "  {:>10}  {}{:?}  {}{ext}", bytes(t.bytes), t.dtype.short_name(), t.dims, t.name)?;
        }
    }
    if !s.external_files.is_empty() {
        writeln!(out, "\nexternal data:")?;
        for f in &s.external_files {
            writeln!(out, "  {}: {} tensors, {}", f.location, f.tensors, bytes(f.bytes))?;
        }
    }
    if !s.functions.is_empty() {
        writeln!(out, "\nfunctions: {}", s.functions.join(", "))?;
    }
    if !s.metadata.is_empty() {
        writeln!(out, "\nmetadata:")?;
        for (k, v) in &s.metadata {
            writeln!(out, "  {k}: {v}")?;
        }
    }
    if !s.problems.is_empty() {
        writeln!(out, "\nverifier: {} problem(s):", s.problems.len())?;
        for p in &s.problems {
            writeln!(out, "  - {p}")?;
        }
    }
    Ok(())
}
