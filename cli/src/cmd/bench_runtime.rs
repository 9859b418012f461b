use super::compare::median;
use super::run::{InputArgs, named};
use crate::Outcome;
use anyhow::{Context, bail};
use compactor_ir::Model;
use compactor_runtime::Session;
use compactor_runtime::metrics::compare;
use compactor_runtime::npy::{read_npy, write_npy};
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// onnxruntime's side of the benchmark, run by the Python given with --python.
const ORT_BENCH: &str = include_str!("../../bench/ort_runtime.py");

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx file.
    model: PathBuf,
    #[command(flatten)]
    inputs: InputArgs,
    /// Timed runs of each runtime (medians are compared).
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Untimed runs first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// A Python with onnxruntime and numpy (default: $COMPACTOR_PYTHON, the test venv, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Deserialize)]
struct OrtReport {
    median_ms: f64,
    onnxruntime: String,
    outputs: Vec<OrtOutput>,
}

#[derive(serde::Deserialize)]
struct OrtOutput {
    name: String,
    file: PathBuf,
}

/// Latency of Compactor's runtime against onnxruntime on one model, same inputs, same thread
/// count, measured in one invocation.
pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let model = Model::load(&args.model)?;
    let options = args.inputs.session_options()?;
    let inputs = args.inputs.load(&model)?;
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut feeds = Vec::new();
    for (i, (name, value)) in inputs.iter().enumerate() {
        let path = tmp.path().join(format!("input_{i}.npy"));
        write_npy(&path, value)?;
        feeds.push(format!("{name}={}", path.display()));
    }
    let script = tmp.path().join("ort_bench.py");
    std::fs::write(&script, ORT_BENCH).context("cannot write the onnxruntime benchmark script")?;

    let session = Session::new(&model, &options)?;
    let mut ours = Vec::new();
    for _ in 0..args.warmup.max(1) {
        ours = session.run(&named(&inputs))?;
    }
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let start = Instant::now();
        session.run(&named(&inputs))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let ours_ms = median(&mut times);

    let python = args.python.clone().unwrap_or_else(super::bench::default_python);
    let output = Command::new(&python)
        .arg(&script)
        .arg(&args.model)
        .args([options.threads.to_string(), args.runs.to_string(), args.warmup.max(1).to_string()])
        .arg(tmp.path())
        .args(&feeds)
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!("the onnxruntime benchmark failed ({}):\n{}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    let ort: OrtReport = serde_json::from_slice(&output.stdout).context("the onnxruntime benchmark printed no report")?;
    let mut max_error = 0f64;
    for o in &ort.outputs {
        let theirs = read_npy(&o.file)?;
        if let Some((_, mine)) = ours.iter().find(|(n, _)| *n == o.name) {
            max_error = max_error.max(compare(&o.name, &theirs, mine).map_err(anyhow::Error::msg)?.max_abs_error);
        }
    }
    let ratio = ours_ms / ort.median_ms;
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({
            "model": args.model, "threads": options.threads, "runs": args.runs, "dims": options.dims,
            "compactor_median_ms": ours_ms, "onnxruntime_median_ms": ort.median_ms, "ratio": ratio,
            "onnxruntime_version": ort.onnxruntime, "max_abs_error_vs_onnxruntime": max_error,
        });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{} ({} thread(s), {} runs, dims {:?})", args.model.display(), options.threads, args.runs, options.dims)?;
        writeln!(out, "  compactor runtime: median {ours_ms:.3} ms")?;
        writeln!(out, "  onnxruntime {}: median {:.3} ms", ort.onnxruntime, ort.median_ms)?;
        writeln!(out, "  ratio compactor/onnxruntime: {ratio:.3}  (max abs difference of outputs {max_error:.2e})")?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}
