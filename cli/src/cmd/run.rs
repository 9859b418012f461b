use crate::Outcome;
use anyhow::{Context, bail};
use compactor_ir::Model;
use compactor_runtime::npy::{read_npy, write_npy};
use compactor_runtime::{Session, SessionOptions, TensorValue};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct Args {
    /// The .onnx file.
    model: PathBuf,
    #[command(flatten)]
    inputs: InputArgs,
    /// Write each output to DIR/<output name>.npy.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Inputs, symbolic dimensions and threads, shared by `run`, `compare` and `bench runtime`.
#[derive(clap::Args, Clone)]
pub struct InputArgs {
    /// An input from a .npy file (repeatable). Inputs not given are made up: deterministic
    /// random values of the declared shape.
    #[arg(long = "input", value_name = "NAME=FILE.npy")]
    pub inputs: Vec<String>,
    /// The size of a symbolic dimension, for made-up inputs and planning (repeatable).
    #[arg(long = "dim", value_name = "NAME=N")]
    pub dims: Vec<String>,
    /// Seed of the made-up inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl InputArgs {
    pub fn dims(&self) -> anyhow::Result<Vec<(String, i64)>> {
        self.dims
            .iter()
            .map(|d| {
                let (name, n) = d.split_once('=').with_context(|| format!("--dim {d}: expected NAME=N"))?;
                let n: i64 = n.parse().with_context(|| format!("--dim {d}: '{n}' is not a number"))?;
                if n < 0 {
                    bail!("--dim {d}: a dimension cannot be negative");
                }
                Ok((name.to_string(), n))
            })
            .collect()
    }

    pub fn session_options(&self) -> anyhow::Result<SessionOptions> {
        let mut options = SessionOptions { dims: self.dims()?, ..Default::default() };
        if let Some(t) = self.threads {
            if t == 0 {
                bail!("--threads must be at least 1");
            }
            options.threads = t;
        }
        Ok(options)
    }

    /// The given .npy inputs, completed with made-up ones for the rest of `model`'s inputs.
    pub fn load(&self, model: &Model) -> anyhow::Result<Vec<(String, TensorValue)>> {
        let mut given: Vec<(String, TensorValue)> = Vec::new();
        for spec in &self.inputs {
            let (name, file) = spec.split_once('=').with_context(|| format!("--input {spec}: expected NAME=FILE.npy"))?;
            let value = read_npy(Path::new(file)).with_context(|| format!("--input {name}"))?;
            given.push((name.to_string(), value));
        }
        let made_up = compactor_runtime::inputs::random_inputs_except(model, &self.dims()?, self.seed, &given.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())?;
        given.extend(made_up);
        Ok(given)
    }
}

pub fn named(inputs: &[(String, TensorValue)]) -> Vec<(&str, TensorValue)> {
    inputs.iter().map(|(n, v)| (n.as_str(), v.clone())).collect()
}

/// A file name for an output: its name with path separators and odd characters replaced.
pub fn file_stem(name: &str) -> String {
    let stem: String = name.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    if stem.is_empty() || stem.starts_with('.') { format!("output{stem}") } else { stem }
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let model = Model::load(&args.model)?;
    let options = args.inputs.session_options()?;
    let inputs = args.inputs.load(&model)?;
    let session = Session::new(&model, &options)?;
    let start = std::time::Instant::now();
    let outputs = session.run(&named(&inputs))?;
    let elapsed = start.elapsed();
    let mut written = Vec::new();
    if let Some(dir) = &args.output_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the directory", dir.display()))?;
        for (name, value) in &outputs {
            let path = dir.join(format!("{}.npy", file_stem(name)));
            write_npy(&path, value)?;
            written.push(Some(path));
        }
    } else {
        written.resize(outputs.len(), None);
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<serde_json::Value> = outputs
            .iter()
            .zip(&written)
            .map(|((name, v), file)| {
                let stats = summary(v);
                serde_json::json!({ "name": name, "dtype": v.dtype(), "shape": v.shape(), "file": file, "min": stats.map(|s| s.0), "max": stats.map(|s| s.1), "mean": stats.map(|s| s.2) })
            })
            .collect();
        let value = serde_json::json!({ "model": args.model, "threads": options.threads, "milliseconds": elapsed.as_secs_f64() * 1e3, "outputs": list });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}: ran in {:.2} ms on {} thread(s)", args.model.display(), elapsed.as_secs_f64() * 1e3, options.threads)?;
        for ((name, v), file) in outputs.iter().zip(&written) {
            let stats = summary(v).map(|(lo, hi, mean)| format!("  min {lo:.6} max {hi:.6} mean {mean:.6}")).unwrap_or_default();
            let file = file.as_ref().map(|f| format!("  -> {}", f.display())).unwrap_or_default();
            writeln!(out, "  {name}: {}{:?}{stats}{file}", v.dtype(), v.shape())?;
        }
    }
    out.flush()?;
    Ok(Outcome::Success)
}

/// min, max and mean of a numeric value.
fn summary(v: &TensorValue) -> Option<(f64, f64, f64)> {
    let data = v.to_f64_vec().ok()?;
    if data.is_empty() {
        return None;
    }
    let lo = data.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = data.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Some((lo, hi, data.iter().sum::<f64>() / data.len() as f64))
}
