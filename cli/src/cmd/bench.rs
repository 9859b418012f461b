//! Benchmarks against the reference tools, measured in the same run (not timed tests).

use crate::Outcome;
use anyhow::{Context, bail};
use compactor_ir::{Model, SaveOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(clap::Subcommand)]
enum What {
    /// Load + save of a model: Compactor vs Python `onnx.load` / `onnx.save`.
    Io(IoArgs),
    /// Latency of the bundled runtime against onnxruntime on one model (same inputs, same threads).
    Runtime(super::bench_runtime::Args),
    /// The quantize pass against onnxruntime's MatMulNBitsQuantizer: time, size, accuracy.
    Quantize(super::bench_quantize::Args),
}

#[derive(clap::Args)]
struct IoArgs {
    model: PathBuf,
    /// Repetitions; the median is reported.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Python with the onnx package (default: $COMPACTOR_PYTHON, the test venv in the cache, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    match args.what {
        What::Io(io) => bench_io(io),
        What::Runtime(rt) => super::bench_runtime::run(rt),
        What::Quantize(q) => super::bench_quantize::run(q),
    }
}

/// The Python the benchmarks run the references with: `$COMPACTOR_PYTHON`, else the test venv
/// (`$COMPACTOR_CACHE` or `.cache` in the current directory), else python3.
pub fn default_python() -> PathBuf {
    if let Some(p) = std::env::var_os("COMPACTOR_PYTHON") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("COMPACTOR_CACHE").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".cache"));
    let venv = cache.join("venv/bin/python");
    if venv.exists() { venv } else { PathBuf::from("python3") }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

const PYTHON_IO: &str = r#"
import sys, time, statistics, onnx
src, dst, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
times = []
for _ in range(runs):
    t = time.perf_counter()
    onnx.save(onnx.load(src), dst)
    times.append(time.perf_counter() - t)
print(statistics.median(times))
"#;

fn bench_io(args: IoArgs) -> anyhow::Result<Outcome> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let dir = tempfile::tempdir()?;
    let ours_out = dir.path().join("compactor.onnx");
    let python_out = dir.path().join("python.onnx");
    let options = SaveOptions::default();
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        let t = Instant::now();
        Model::load(&args.model)?.save_with(&ours_out, &options)?;
        times.push(t.elapsed());
    }
    let ours = median(times).as_secs_f64();
    let python = args.python.clone().unwrap_or_else(default_python);
    let reference = python_io_seconds(&python, &args.model, &python_out, args.runs)?;
    let identical = std::fs::read(&args.model)? == std::fs::read(&ours_out)?;
    let same_as_python = std::fs::read(&python_out)? == std::fs::read(&ours_out)?;
    println!("model: {} ({} bytes)", args.model.display(), std::fs::metadata(&args.model)?.len());
    println!("compactor load+save: {:.1} ms (median of {})", ours * 1e3, args.runs);
    println!("onnx.load+onnx.save: {:.1} ms (median of {}, {})", reference * 1e3, args.runs, python.display());
    println!("speedup: {:.1}x", reference / ours);
    println!("output byte-identical to input: {identical}; to onnx.save's output: {same_as_python}");
    Ok(Outcome::Success)
}

fn python_io_seconds(python: &Path, model: &Path, out: &Path, runs: usize) -> anyhow::Result<f64> {
    let output = std::process::Command::new(python).args(["-c", PYTHON_IO]).arg(model).arg(out).arg(runs.to_string()).output().with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!("{} failed: {}", python.display(), String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8(output.stdout)?;
    text.trim().parse::<f64>().with_context(|| format!("unexpected output from python: {text}"))
}
