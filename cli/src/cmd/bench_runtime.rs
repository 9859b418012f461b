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
    /// Inputs from every NAME.npy in DIR instead (repeatable): each round of runs goes through
    /// the sets in turn in one session, and each set's median is reported too (how a runtime
    /// copes when shapes change from run to run).
    #[arg(long = "input-set", value_name = "DIR", conflicts_with = "inputs")]
    input_sets: Vec<PathBuf>,
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
    median_ms_per_set: Vec<f64>,
    onnxruntime: String,
    outputs: Vec<OrtOutput>,
}

#[derive(serde::Deserialize)]
struct OrtOutput {
    name: String,
    file: PathBuf,
}

/// The inputs of one `--input-set` directory: every `NAME.npy` in it, by name.
fn input_set(dir: &std::path::Path) -> anyhow::Result<Vec<(String, compactor_runtime::TensorValue)>> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).with_context(|| format!("--input-set {}", dir.display()))?.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "npy")).collect();
    files.sort();
    if files.is_empty() {
        bail!("--input-set {}: no .npy files in it", dir.display());
    }
    files.iter().map(|f| Ok((f.file_stem().unwrap_or_default().to_string_lossy().into_owned(), read_npy(f)?))).collect()
}

/// Latency of Compactor's runtime against onnxruntime on one model, same inputs, same thread
/// count, measured in one invocation.
pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let model = Model::load(&args.model)?;
    let options = args.inputs.session_options()?;
    let sets = if args.input_sets.is_empty() { vec![args.inputs.load(&model)?] } else { args.input_sets.iter().map(|dir| input_set(dir)).collect::<anyhow::Result<Vec<_>>>()? };
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mut feeds = Vec::new();
    for (s, inputs) in sets.iter().enumerate() {
        for (i, (name, value)) in inputs.iter().enumerate() {
            let path = tmp.path().join(format!("input_{s}_{i}.npy"));
            write_npy(&path, value)?;
            feeds.push(format!("{s}:{name}={}", path.display()));
        }
    }
    let script = tmp.path().join("ort_bench.py");
    std::fs::write(&script, ORT_BENCH).context("cannot write the onnxruntime benchmark script")?;

    let session = Session::new(&model, &options)?;
    // The first run of each set (which plans for its shapes, if the session does) is timed
    // apart; then rounds through the sets.
    let mut ours = Vec::new();
    let mut first_ms = Vec::new();
    for round in 0..args.warmup.max(1) {
        for (s, inputs) in sets.iter().enumerate() {
            let start = Instant::now();
            let outputs = session.run(&named(inputs))?;
            if round == 0 {
                first_ms.push(start.elapsed().as_secs_f64() * 1e3);
            }
            if s == 0 {
                ours = outputs;
            }
        }
    }
    let mut times = vec![Vec::with_capacity(args.runs); sets.len()];
    for _ in 0..args.runs {
        for (inputs, t) in sets.iter().zip(&mut times) {
            let start = Instant::now();
            session.run(&named(inputs))?;
            t.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let per_set: Vec<f64> = times.iter_mut().map(|t| median(t)).collect();
    let ours_ms = median(&mut times.concat());

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
        let mut value = serde_json::json!({
            "model": args.model, "threads": options.threads, "runs": args.runs, "dims": options.dims,
            "compactor_median_ms": ours_ms, "onnxruntime_median_ms": ort.median_ms, "ratio": ratio,
            "onnxruntime_version": ort.onnxruntime, "max_abs_error_vs_onnxruntime": max_error,
        });
        if !args.input_sets.is_empty() {
            value["sets"] = args
                .input_sets
                .iter()
                .enumerate()
                .map(|(s, dir)| {
                    serde_json::json!({ "dir": dir, "compactor_first_ms": first_ms[s], "compactor_median_ms": per_set[s], "onnxruntime_median_ms": ort.median_ms_per_set[s], "ratio": per_set[s] / ort.median_ms_per_set[s] })
                })
                .collect();
        }
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{} ({} thread(s), {} runs, dims {:?})", args.model.display(), options.threads, args.runs, options.dims)?;
        writeln!(out, "  compactor runtime: median {ours_ms:.3} ms")?;
        writeln!(out, "  onnxruntime {}: median {:.3} ms", ort.onnxruntime, ort.median_ms)?;
        writeln!(out, "  ratio compactor/onnxruntime: {ratio:.3}  (max abs difference of outputs {max_error:.2e})")?;
        if !args.input_sets.is_empty() {
            for (s, dir) in args.input_sets.iter().enumerate() {
                let (ours, theirs) = (per_set[s], ort.median_ms_per_set[s]);
                writeln!(out, "  {}: compactor {ours:.3} ms (first run {:.3} ms), onnxruntime {theirs:.3} ms, ratio {:.3}", dir.display(), first_ms[s], ours / theirs)?;
            }
        }
    }
    out.flush()?;
    Ok(Outcome::Success)
}
