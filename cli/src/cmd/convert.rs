use crate::Outcome;
use crate::model_file::{self, is_text};
use anyhow::bail;
use compactor_ir::SaveOptions;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// The model to read: ONNX, or the text form when named *.ctir.
    input: PathBuf,
    /// Where to write it: the text form when named *.ctir (see docs/text-ir.md), else ONNX.
    output: PathBuf,
    /// Text output: write tensors of more than 8 elements as dtype and shape only (they read
    /// back as zeros), for a short file to read or to start a hand-written test from.
    #[arg(long)]
    elide_data: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    if args.output == args.input {
        bail!("the output would overwrite the input {}; write to another file", args.input.display());
    }
    if args.elide_data && !is_text(&args.output) {
        bail!("--elide-data is for text output (*.ctir), not {}", args.output.display());
    }
    let model = model_file::load(&args.input)?;
    if args.elide_data {
        model_file::write_text(&args.output, &compactor_ir::model_to_text(&model))?;
    } else {
        model_file::save(&model, &args.output, &SaveOptions::default())?;
    }
    eprintln!("{} -> {}", args.input.display(), args.output.display());
    // Written either way (a graph being debugged may be invalid); the exit code says so.
    if let Err(problems) = compactor_ir::verify(&model) {
        eprintln!("verifier: {problems}");
        return Ok(Outcome::CheckFailed);
    }
    Ok(Outcome::Success)
}
