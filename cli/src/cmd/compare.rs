use super::run::{InputArgs, named};
use crate::Outcome;
use crate::output::bytes;
use anyhow::{Context, bail};
use compactor_ir::Model;
use compactor_runtime::metrics::{OutputComparison, compare};
use compactor_runtime::{Session, TensorValue};
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The reference model.
    a: PathBuf,
    /// The model checked against it (e.g. the compacted one).
    b: PathBuf,
    #[command(flatten)]
    inputs: InputArgs,
    /// Timed runs of each model, alternating between them (the median is reported).
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Fail (exit 1) when any output's max abs error exceeds this.
    #[arg(long)]
    max_error: Option<f64>,
    /// Fail (exit 1) when any output's cosine similarity is below this.
    #[arg(long)]
    min_cosine: Option<f64>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct ModelReport {
    path: PathBuf,
    bytes: u64,
    median_ms: f64,
}

/// The model file plus every external data file it reads.
fn model_bytes(path: &Path, model: &Model) -> anyhow::Result<u64> {
    let mut total = std::fs::metadata(path).with_context(|| format!("{}: cannot stat", path.display()))?.len();
    let mut files = BTreeSet::new();
    for v in model.graph.value_ids() {
        if let Some(ext) = model.graph.value(v).initializer.as_ref().and_then(|t| t.external()) {
            files.insert(ext.path().to_path_buf());
        }
    }
    for f in files {
        total += std::fs::metadata(&f).with_context(|| format!("{}: cannot stat", f.display()))?.len();
    }
    Ok(total)
}

/// Both models' outputs and median run times. Runs alternate between the two models, so a
/// change in the machine's speed while measuring weighs on both alike.
type Timed = (Vec<(String, TensorValue)>, f64);
fn timed_pair(a: (&Session, &[(String, TensorValue)]), b: (&Session, &[(String, TensorValue)]), runs: usize) -> anyhow::Result<(Timed, Timed)> {
    // The first runs are also the warm-up.
    let outputs_a = a.0.run(&named(a.1))?;
    let outputs_b = b.0.run(&named(b.1))?;
    let (mut times_a, mut times_b) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for _ in 0..runs {
        for ((session, inputs), times) in [(a, &mut times_a), (b, &mut times_b)] {
            let start = Instant::now();
            session.run(&named(inputs))?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    Ok(((outputs_a, median(&mut times_a)), (outputs_b, median(&mut times_b))))
}

pub fn median(times: &mut [f64]) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_by(f64::total_cmp);
    let mid = times.len() / 2;
    if times.len() % 2 == 1 { times[mid] } else { (times[mid - 1] + times[mid]) / 2.0 }
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let model_a = Model::load(&args.a)?;
    let model_b = Model::load(&args.b)?;
    let options = args.inputs.session_options()?;
    let inputs = args.inputs.load(&model_a)?;
    let session_a = Session::new(&model_a, &options)?;
    let session_b = Session::new(&model_b, &options)?;
    for spec in session_b.inputs() {
        if !inputs.iter().any(|(n, _)| *n == spec.name) {
            bail!("{}: input '{}' is not an input of {}; the models must take the same inputs", args.b.display(), spec.name, args.a.display());
        }
    }
    let inputs_b: Vec<(String, TensorValue)> = inputs.iter().filter(|(n, _)| session_b.inputs().iter().any(|s| s.name == *n)).cloned().collect();
    let ((outputs_a, ms_a), (outputs_b, ms_b)) = timed_pair((&session_a, &inputs), (&session_b, &inputs_b), args.runs)?;
    // Outputs pair by name when every name of A is in B, else by position.
    let by_name = outputs_a.iter().all(|(n, _)| outputs_b.iter().any(|(m, _)| m == n));
    let mut comparisons: Vec<OutputComparison> = Vec::new();
    for (i, (name, a)) in outputs_a.iter().enumerate() {
        let b = if by_name { outputs_b.iter().find(|(m, _)| m == name).map(|(_, v)| v) } else { outputs_b.get(i).map(|(_, v)| v) };
        let b = b.with_context(|| format!("{} has no output to compare with '{name}'", args.b.display()))?;
        comparisons.push(compare(name, a, b).map_err(anyhow::Error::msg)?);
    }
    let report_a = ModelReport { path: args.a.clone(), bytes: model_bytes(&args.a, &model_a)?, median_ms: ms_a };
    let report_b = ModelReport { path: args.b.clone(), bytes: model_bytes(&args.b, &model_b)?, median_ms: ms_b };
    let size_ratio = report_b.bytes as f64 / report_a.bytes.max(1) as f64;
    let mut broken = Vec::new();
    for c in &comparisons {
        if let Some(max) = args.max_error
            && (c.max_abs_error.is_nan() || c.max_abs_error > max)
        {
            broken.push(format!("output '{}': max abs error {:.3e} > --max-error {max:e}", c.name, c.max_abs_error));
        }
        if let Some(min) = args.min_cosine
            && (c.cosine_similarity.is_nan() || c.cosine_similarity < min)
        {
            broken.push(format!("output '{}': cosine similarity {:.6} < --min-cosine {min}", c.name, c.cosine_similarity));
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({
            "a": report_a, "b": report_b, "size_ratio": size_ratio, "latency_ratio": ms_b / ms_a,
            "runs": args.runs, "threads": options.threads, "outputs": comparisons, "bounds_broken": broken,
        });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        writeln!(out, "A: {} ({}), median {:.3} ms", args.a.display(), bytes(report_a.bytes), ms_a)?;
        writeln!(out, "B: {} ({}), median {:.3} ms", args.b.display(), bytes(report_b.bytes), ms_b)?;
        writeln!(out, "size B/A {size_ratio:.3}, latency B/A {:.3} ({} runs, {} thread(s))", ms_b / ms_a, args.runs, options.threads)?;
        for c in &comparisons {
            let top1 = c.top1_agreement.map(|t| format!("  top-1 agreement {:.2}%", t * 100.0)).unwrap_or_default();
            let kl = c.mean_kl_divergence.map(|k| format!("  mean KL(A||B) {k:.3e}")).unwrap_or_default();
            writeln!(out, "  {}{:?}: max abs {:.3e}  mean abs {:.3e}  cosine {:.6}{top1}{kl}", c.name, c.shape, c.max_abs_error, c.mean_abs_error, c.cosine_similarity)?;
        }
        for b in &broken {
            writeln!(out, "FAILED: {b}")?;
        }
    }
    out.flush()?;
    Ok(if broken.is_empty() { Outcome::Success } else { Outcome::CheckFailed })
}
