//! `compactor bench quantize`: Compactor's quantize pass against onnxruntime's
//! MatMulNBitsQuantizer on one model, in one invocation: wall time, size, accuracy.

use super::bench::default_python;
use super::compare::median;
use super::run::{InputArgs, named};
use crate::Outcome;
use anyhow::{Context, bail};
use compactor::{Pipeline, RuntimeCalibrator};
use compactor_ir::Model;
use compactor_runtime::Session;
use compactor_runtime::metrics::compare;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// onnxruntime's side, run by the Python given with --python.
const ORT_QUANTIZE: &str = include_str!("../../bench/ort_quantize.py");

#[derive(clap::Args, Clone)]
pub struct Args {
    /// The f32 model.
    model: PathBuf,
    #[arg(long, default_value_t = 4)]
    bits: u8,
    #[arg(long, default_value_t = 32)]
    block: usize,
    /// Symmetric quantization (no zero points).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    symmetric: bool,
    /// Timed runs of each quantizer (medians are compared).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Also time Compactor's GPTQ with this many batches of random calibration inputs (0: skip).
    #[arg(long, default_value_t = 32)]
    gptq_batches: usize,
    /// Delete each tool's previous output before every timed run (outside the timer), so that
    /// every run writes a new file. Without it every run after the first replaces the file
    /// the last one wrote, and both tools also pay for the file system dropping the old one.
    #[arg(long)]
    new_output: bool,
    /// Inputs and symbolic dims for the accuracy runs (and GPTQ's calibration).
    #[command(flatten)]
    inputs: InputArgs,
    /// A Python with onnx and onnxruntime (default: $COMPACTOR_PYTHON, the test venv, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
}

struct Row {
    name: String,
    /// Load + quantize + save, in process (median).
    seconds: Option<f64>,
    /// The whole command as a user runs it: process start to output written (median).
    command_seconds: Option<f64>,
    file: PathBuf,
}

fn remove_if_present(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(anyhow::Error::new(e).context(format!("cannot remove {}", path.display()))),
        _ => Ok(()),
    }
}

/// Median wall time of a command, run `runs` times; `fresh` (if any) is deleted before each.
fn time_command(runs: usize, fresh: Option<&Path>, mut make: impl FnMut() -> std::process::Command) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        if let Some(path) = fresh {
            remove_if_present(path)?;
        }
        let mut command = make();
        let start = Instant::now();
        let output = command.output().with_context(|| format!("cannot run {command:?}"))?;
        times.push(start.elapsed().as_secs_f64());
        if !output.status.success() {
            bail!("{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        }
    }
    Ok(median(&mut times))
}

#[derive(serde::Deserialize)]
struct OrtFormat {
    median_seconds: f64,
    file: PathBuf,
}

#[derive(serde::Deserialize)]
struct OrtReport {
    import_seconds: f64,
    formats: std::collections::BTreeMap<String, OrtFormat>,
}

/// Makes a model's calibration data (for GPTQ).
type MakeCalibration<'a> = &'a dyn Fn(&Model) -> anyhow::Result<RuntimeCalibrator>;

fn time_ours(args: &Args, spec: &str, out: &Path, calibration: Option<MakeCalibration<'_>>) -> anyhow::Result<f64> {
    let mut times = Vec::with_capacity(args.runs);
    for _ in 0..args.runs {
        if args.new_output {
            remove_if_present(out)?;
        }
        let start = Instant::now();
        let mut model = Model::load(&args.model)?;
        let mut pipeline = Pipeline::parse(spec)?;
        if let Some(make) = calibration {
            pipeline = pipeline.with_calibration(make(&model)?);
        }
        pipeline.run(&mut model)?;
        model.save(out)?;
        times.push(start.elapsed().as_secs_f64());
    }
    Ok(median(&mut times))
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let tmp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let options = args.inputs.session_options()?;
    // onnxruntime's quantizer handles MatMul weights: quantize the same set.
    let base = format!("bits={},block={},symmetric={},ops=[MatMul]", args.bits, args.block, args.symmetric);
    let mut rows = Vec::new();
    let python = args.python.clone().unwrap_or_else(default_python);
    let exe = std::env::current_exe().context("cannot find the compactor executable")?;
    for format in ["matmulnbits", "qdq"] {
        let out = tmp.path().join(format!("compactor_{format}.onnx"));
        let spec = format!("quantize({base},method=rtn,format={format})");
        let seconds = time_ours(&args, &spec, &out, None)?;
        let command_seconds = time_command(args.runs, args.new_output.then_some(out.as_path()), || {
            let mut c = std::process::Command::new(&exe);
            c.arg("optimize").arg(&args.model).arg("-o").arg(&out).args(["--passes", &spec]);
            c
        })?;
        rows.push(Row { name: format!("compactor rtn {format}"), seconds: Some(seconds), command_seconds: Some(command_seconds), file: out });
    }
    let output = std::process::Command::new(&python)
        .args(["-c", ORT_QUANTIZE])
        .arg(&args.model)
        .arg(tmp.path())
        .args([args.bits.to_string(), args.block.to_string(), args.symmetric.to_string(), args.runs.to_string()])
        .env("COMPACTOR_BENCH_NEW_OUTPUT", if args.new_output { "1" } else { "0" })
        .output()
        .with_context(|| format!("cannot run {}", python.display()))?;
    if !output.status.success() {
        bail!("onnxruntime's quantizer failed ({}): {}", python.display(), String::from_utf8_lossy(&output.stderr));
    }
    let ort: OrtReport = serde_json::from_slice(&output.stdout).context("unexpected output from the onnxruntime script")?;
    for format in ["matmulnbits", "qdq"] {
        let f = &ort.formats[format];
        let command_seconds = time_command(args.runs, args.new_output.then_some(f.file.as_path()), || {
            let mut c = std::process::Command::new(&python);
            c.args(["-c", ORT_QUANTIZE]).arg(&args.model).arg(tmp.path()).args([args.bits.to_string(), args.block.to_string(), args.symmetric.to_string(), "1".into(), format.into()]);
            c
        })?;
        rows.push(Row { name: format!("onnxruntime rtn {format}"), seconds: Some(f.median_seconds), command_seconds: Some(command_seconds), file: f.file.clone() });
    }
    if args.gptq_batches > 0 {
        let out = tmp.path().join("compactor_gptq.onnx");
        let make = |model: &Model| -> anyhow::Result<RuntimeCalibrator> { Ok(RuntimeCalibrator::random(model, args.gptq_batches, 0, options.clone())?) };
        let seconds = time_ours(&Args { runs: 1, ..args.clone() }, &format!("quantize({base},method=gptq,format=matmulnbits)"), &out, Some(&make))?;
        rows.push(Row { name: format!("compactor gptq matmulnbits ({} calibration batches)", args.gptq_batches), seconds: Some(seconds), command_seconds: None, file: out });
    }

    // Accuracy: every result against the f32 model on the same inputs, on one runtime.
    let reference = Model::load(&args.model)?;
    let inputs = args.inputs.load(&reference)?;
    let expected = Session::new(&reference, &options)?.run(&named(&inputs))?;
    let mut out = std::io::stdout().lock();
    let f32_bytes = std::fs::metadata(&args.model)?.len();
    writeln!(
        out,
        "{} ({:.1} MiB f32), {} bits, block {}, {}; accuracy vs f32 on Compactor's runtime ({} thread(s))",
        args.model.display(),
        f32_bytes as f64 / 1048576.0,
        args.bits,
        args.block,
        if args.symmetric { "symmetric" } else { "asymmetric" },
        options.threads
    )?;
    if args.new_output {
        writeln!(out, "every timed run writes a new file (--new-output)")?;
    }
    writeln!(out, "{:<50} {:>10} {:>10} {:>9} {:>9} {:>10}", "quantizer", "in-process", "command", "MiB", "cosine", "max abs")?;
    for row in &rows {
        let model = Model::load(&row.file)?;
        let got = Session::new(&model, &options)?.run(&named(&inputs))?;
        let (mut cosine, mut max_abs) = (f64::INFINITY, 0.0f64);
        for ((name, a), (_, b)) in expected.iter().zip(&got) {
            let c = compare(name, a, b).map_err(anyhow::Error::msg)?;
            cosine = cosine.min(c.cosine_similarity);
            max_abs = max_abs.max(c.max_abs_error);
        }
        let mib = std::fs::metadata(&row.file)?.len() as f64 / 1048576.0;
        let secs = |s: Option<f64>| s.map(|s| format!("{s:.3} s")).unwrap_or_else(|| "-".into());
        writeln!(out, "{:<50} {:>10} {:>10} {:>9.2} {:>9.5} {:>10.4}", row.name, secs(row.seconds), secs(row.command_seconds), mib, cosine, max_abs)?;
    }
    for format in ["matmulnbits", "qdq"] {
        let find = |who: &str| rows.iter().find(|r| r.name == format!("{who} rtn {format}")).expect("both rows exist");
        let (ours, theirs) = (find("compactor"), find("onnxruntime"));
        let ratio = |a: Option<f64>, b: Option<f64>| a.zip(b).map(|(a, b)| a / b).unwrap_or(f64::NAN);
        writeln!(
            out,
            "speedup {format}: {:.1}x in process, {:.1}x as commands (onnxruntime's imports alone take {:.2} s)",
            ratio(theirs.seconds, ours.seconds),
            ratio(theirs.command_seconds, ours.command_seconds),
            ort.import_seconds
        )?;
    }
    Ok(Outcome::Success)
}
