//! The `compactor` command line.
//!
//! Exit codes: 0 success; 1 the command ran but a check failed (verifier problems, error
//! bounds broken); 2 bad input or a failed operation (unreadable model, bad option, I/O).

mod cmd;
mod model_file;
mod output;
mod progress;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "compactor", version, about = "Make ONNX models smaller and faster", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Summarize a model: opsets, inputs and outputs, ops, parameters, largest tensors, external data.
    Inspect(cmd::inspect::Args),
    /// Run a pipeline of passes over a model and write the result.
    Optimize(cmd::optimize::Args),
    /// List every pass with its options, defaults and description, and the presets.
    Passes(cmd::passes::Args),
    /// Benchmarks against the reference tools, measured in the same run.
    Bench(cmd::bench::Args),
    /// Run a model on the bundled runtime; write its outputs as .npy.
    Run(cmd::run::Args),
    /// Run two models on the same inputs; report output errors, sizes and latencies.
    Compare(cmd::compare::Args),
    /// Perplexity of a causal language model on a token file, over sliding windows.
    Eval(cmd::eval::Args),
    /// Convert between ONNX and Compactor's text form (*.ctir), by file extension.
    Convert(cmd::convert::Args),
}

/// What a command reports back to `main`.
pub enum Outcome {
    Success,
    /// The command ran, but a check failed.
    CheckFailed,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inspect(args) => cmd::inspect::run(args),
        Command::Optimize(args) => cmd::optimize::run(args),
        Command::Passes(args) => cmd::passes::run(args),
        Command::Bench(args) => cmd::bench::run(args),
        Command::Run(args) => cmd::run::run(args),
        Command::Compare(args) => cmd::compare::run(args),
        Command::Eval(args) => cmd::eval::run(args),
        Command::Convert(args) => cmd::convert::run(args),
    };
    match result {
        Ok(Outcome::Success) => ExitCode::SUCCESS,
        Ok(Outcome::CheckFailed) => ExitCode::from(1),
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
