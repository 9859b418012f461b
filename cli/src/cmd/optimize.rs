use super::run::{InputArgs, named};
use crate::Outcome;
use crate::model_file;
use crate::output::{bytes, duration};
use crate::progress::Bars;
use anyhow::{Context, bail};
use compactor::{Pipeline, RuntimeCalibrator};
use compactor_ir::{ExternalDataPolicy, Model, SaveOptions};
use compactor_passes::{PassError, RunOptions};
use compactor_runtime::Session;
use compactor_runtime::metrics::compare;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The model to optimize (ONNX, or the text form when named *.ctir).
    input: PathBuf,
    /// Where to write the result (the text form when named *.ctir).
    #[arg(short, long)]
    output: PathBuf,
    /// The passes, e.g. 'cleanup,fold-constants(max_bytes=4096)' (see `compactor passes`).
    #[arg(long, conflicts_with = "pipeline", required_unless_present = "pipeline")]
    passes: Option<String>,
    /// A TOML pipeline file ([[pass]] tables with `name` and options).
    #[arg(long)]
    pipeline: Option<PathBuf>,
    /// Write a JSON report of every pass (sizes, timings, details) here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Verify the graph after every pass (it is always verified before writing).
    #[arg(long)]
    verify_each: bool,
    /// Write the text form of the model after this pass (repeatable); see --dump-dir.
    #[arg(long)]
    dump_after: Vec<String>,
    /// Directory for --dump-after files (default: the output's directory).
    #[arg(long)]
    dump_dir: Option<PathBuf>,
    /// Stop after this pass (and write what there is).
    #[arg(long)]
    stop_after: Option<String>,
    /// Put tensors of at least this many bytes in an external data file next to the output.
    #[arg(long)]
    external_data_threshold: Option<u64>,
    /// Calibration data for passes that need activations (GPTQ, mixed precision): a directory
    /// of <input>.npy files (or one subdirectory of them per batch), or random:N for N batches
    /// of deterministic random inputs (symbolic dims from --dim).
    #[arg(long, value_name = "DIR|random:N")]
    calibration: Option<String>,
    /// Run the original and the result on the runtime on the same inputs (--input, or random
    /// ones) before writing; fail (exit 1, nothing written) if outputs differ beyond the bounds.
    #[arg(long)]
    check: bool,
    /// With --check: the largest allowed max abs error of any output.
    #[arg(long, requires = "check")]
    max_error: Option<f64>,
    /// With --check: the smallest allowed cosine similarity of any output (default 0.99 when
    /// no bound is given).
    #[arg(long, requires = "check")]
    min_cosine: Option<f64>,
    #[command(flatten)]
    inputs: InputArgs,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let mut pipeline = match (&args.passes, &args.pipeline) {
        (Some(spec), _) => Pipeline::parse(spec)?,
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
            Pipeline::from_toml(&text).with_context(|| format!("{}", file.display()))?
        }
        (None, None) => bail!("give --passes or --pipeline"),
    };
    if args.output == args.input {
        bail!("the output would overwrite the input {}; write to another file", args.input.display());
    }
    let mut model = model_file::load(&args.input)?;
    let original = args.check.then(|| model.clone());
    let session_options = args.inputs.session_options()?;
    if let Some(spec) = &args.calibration {
        let calibrator = match spec.strip_prefix("random:") {
            Some(n) => {
                let n: usize = n.parse().with_context(|| format!("--calibration {spec}: '{n}' is not a number of batches"))?;
                RuntimeCalibrator::random(&model, n, args.inputs.seed, session_options.clone())?
            }
            None => RuntimeCalibrator::from_dir(Path::new(spec), session_options.clone())?,
        };
        pipeline = pipeline.with_calibration(calibrator);
    }
    let progress = Bars::new();
    let mut on_pass_start = |i: usize, n: usize, name: &str| eprintln!("[{}/{n}] {name}", i + 1);
    let dump_dir = args.dump_dir.clone().unwrap_or_else(|| args.output.parent().map(Path::to_path_buf).unwrap_or_default());
    let stem = args.output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    // Before any pass runs: a missing directory is made, an unusable one stops the run now.
    if !args.dump_after.is_empty() && !dump_dir.as_os_str().is_empty() {
        std::fs::create_dir_all(&dump_dir).with_context(|| format!("cannot create the dump directory {}", dump_dir.display()))?;
    }
    let mut dump_error = None;
    let mut on_dump = |pass: &str, index: usize, text: &str| {
        let path = dump_dir.join(format!("{stem}.{:02}-{pass}.txt", index + 1));
        match compactor_ir::write_atomically(&path, |f| std::io::Write::write_all(f, text.as_bytes())) {
            Ok(()) => eprintln!("      wrote {}", path.display()),
            Err(e) => dump_error = Some(format!("{}: {e}", path.display())),
        }
    };
    let options = RunOptions {
        verify_each: args.verify_each,
        dump_after: args.dump_after.clone(),
        stop_after: args.stop_after.clone(),
        progress: &progress,
        on_dump: Some(&mut on_dump),
        on_pass_start: Some(&mut on_pass_start),
        ..Default::default()
    };
    let no_calibration = args.calibration.is_none();
    let report = pipeline.run_with(&mut model, options).map_err(|e| match e {
        PassError::NeedsCalibration { .. } if no_calibration => {
            anyhow::anyhow!("{e}; give it activations with --calibration DIR (one <input>.npy per model input, or a subdirectory of them per batch) or --calibration random:N")
        }
        e => e.into(),
    })?;
    if let Some(e) = dump_error {
        bail!("cannot write dump {e}");
    }
    for r in &report.passes {
        eprintln!("  {:<30} {:>8.1} ms  {}", r.pass, r.seconds * 1e3, r.summary);
    }
    let check = match &original {
        Some(original) => Some(check_outputs(original, &model, &args)?),
        None => None,
    };
    if let Some(c) = &check
        && !c.broken.is_empty()
    {
        for b in &c.broken {
            eprintln!("check FAILED: {b}");
        }
        eprintln!("{} was not written", args.output.display());
        return Ok(Outcome::CheckFailed);
    }
    // The pipeline verified the final graph; saving writes atomically.
    let external_data = match args.external_data_threshold {
        Some(min_bytes) => ExternalDataPolicy::Threshold { min_bytes, location: format!("{}.data", args.output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()) },
        None => ExternalDataPolicy::Preserve,
    };
    let saved = model_file::save(&model, &args.output, &SaveOptions { external_data, sync: false })?;
    // Further models a pass produced (nested widths) go next to the output: out.w50.onnx.
    for variant in &report.variants {
        let path = variant_path(&args.output, &variant.name);
        let external_data = match args.external_data_threshold {
            Some(min_bytes) => ExternalDataPolicy::Threshold { min_bytes, location: format!("{}.data", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()) },
            None => ExternalDataPolicy::Preserve,
        };
        let saved = model_file::save(&variant.model, &path, &SaveOptions { external_data, sync: false })?;
        eprintln!("  {}: {} ({} nodes)", path.display(), bytes(saved.model_bytes + saved.external_files.iter().map(|(_, n)| n).sum::<u64>()), variant.after.nodes);
    }
    let input_bytes = std::fs::metadata(&args.input)?.len() + external_bytes(&args.input)?;
    let output_bytes = saved.model_bytes + saved.external_files.iter().map(|(_, n)| n).sum::<u64>();
    eprintln!(
        "{} -> {}: {} -> {} ({:.2}x smaller), {} -> {} nodes, {}",
        args.input.display(),
        args.output.display(),
        bytes(input_bytes),
        bytes(output_bytes),
        input_bytes as f64 / output_bytes.max(1) as f64,
        report.before.nodes,
        report.after.nodes,
        duration(report.seconds)
    );
    if let Some(path) = &args.report {
        let value = serde_json::json!({
            "input": { "path": args.input, "bytes": input_bytes },
            "output": { "path": args.output, "bytes": output_bytes },
            "pipeline": report,
            "check": check.as_ref().map(|c| &c.outputs),
        });
        write_atomically(path, serde_json::to_vec_pretty(&value)?)?;
    }
    Ok(Outcome::Success)
}

/// `dir/out.onnx` with variant `w50`: `dir/out.w50.onnx`.
fn variant_path(output: &Path, name: &str) -> PathBuf {
    let stem = output.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    let file = match output.extension() {
        Some(ext) => format!("{stem}.{name}.{}", ext.to_string_lossy()),
        None => format!("{stem}.{name}"),
    };
    output.with_file_name(file)
}

/// Bytes of the external data files a model refers to (none for the text form).
fn external_bytes(model: &Path) -> anyhow::Result<u64> {
    if model_file::is_text(model) {
        return Ok(0);
    }
    let m = Model::load(model)?;
    Ok(compactor_ir::summary::summarize(&m, 0).external_files.iter().map(|f| f.bytes).sum())
}

fn write_atomically(path: &Path, data: Vec<u8>) -> anyhow::Result<()> {
    compactor_ir::write_atomically(path, |f| std::io::Write::write_all(f, &data)).with_context(|| format!("{}: cannot write", path.display()))
}

struct Check {
    outputs: Vec<compactor_runtime::metrics::OutputComparison>,
    broken: Vec<String>,
}

/// Runs both models on the runtime on the same inputs and checks every output against the bounds.
fn check_outputs(original: &Model, result: &Model, args: &Args) -> anyhow::Result<Check> {
    let options = args.inputs.session_options()?;
    let inputs = args.inputs.load(original)?;
    let before = Session::new(original, &options)?.run(&named(&inputs))?;
    let after = Session::new(result, &options)?.run(&named(&inputs))?;
    let min_cosine = args.min_cosine.or(if args.max_error.is_none() { Some(0.99) } else { None });
    let mut outputs = Vec::new();
    let mut broken = Vec::new();
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        let c = compare(name, a, b).map_err(anyhow::Error::msg)?;
        if let Some(max) = args.max_error
            && (c.max_abs_error.is_nan() || c.max_abs_error > max)
        {
            broken.push(format!("output '{name}': max abs error {:.3e} > {max:e}", c.max_abs_error));
        }
        if let Some(min) = min_cosine
            && (c.cosine_similarity.is_nan() || c.cosine_similarity < min)
        {
            broken.push(format!("output '{name}': cosine similarity {:.6} < {min}", c.cosine_similarity));
        }
        eprintln!("check: output '{name}': max abs error {:.3e}, cosine {:.6}", c.max_abs_error, c.cosine_similarity);
        outputs.push(c);
    }
    Ok(Check { outputs, broken })
}
