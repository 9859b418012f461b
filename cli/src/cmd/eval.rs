//! `compactor eval`: perplexity of a causal language model on a token file.

use crate::Outcome;
use anyhow::{Context, bail};
use compactor_ir::Model;
use compactor_passes::Progress;
use compactor_runtime::lm::{LanguageModel, windows};
use compactor_runtime::npy::read_npy;
use compactor_runtime::{Session, SessionOptions};
use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

#[derive(clap::Args)]
pub struct Args {
    /// The model: inputs input_ids (and optionally attention_mask, position_ids, empty
    /// past_key_values.*), output logits [1, tokens, vocabulary].
    model: PathBuf,
    /// The text as token ids: a .npy of int64 or int32, any shape (read flattened).
    #[arg(long, value_name = "FILE.npy")]
    tokens: PathBuf,
    /// Tokens per forward pass (the context length evaluated).
    #[arg(long, default_value_t = 512)]
    window: usize,
    /// Tokens between window starts (default: the window, i.e. non-overlapping chunks whose
    /// first token is context only). A smaller stride gives every scored token more context.
    #[arg(long)]
    stride: Option<usize>,
    /// Evaluate only the first N tokens.
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Threads (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let stride = args.stride.unwrap_or(args.window);
    if args.window < 2 {
        bail!("--window must be at least 2 (one token of context, one to predict)");
    }
    if stride == 0 || stride > args.window {
        bail!("--stride must be between 1 and the window ({})", args.window);
    }
    let values = read_npy(&args.tokens).with_context(|| format!("--tokens {}", args.tokens.display()))?;
    if !values.dtype().is_integer() {
        bail!("{}: token ids must be integers, not {}", args.tokens.display(), values.dtype());
    }
    let mut tokens: Vec<i64> = values.to_f64_vec().map_err(anyhow::Error::msg)?.into_iter().map(|v| v as i64).collect();
    if let Some(n) = args.max_tokens {
        tokens.truncate(n);
    }
    let plan = windows(tokens.len(), args.window, stride);
    if plan.is_empty() {
        bail!("{}: {} token(s): nothing to predict", args.tokens.display(), tokens.len());
    }
    let mut options = SessionOptions::default();
    if let Some(t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        options.threads = t;
    }
    let start = Instant::now();
    let model = Model::load(&args.model)?;
    let session = Session::new(&model, &options)?;
    drop(model);
    let lm = LanguageModel::new(&session).with_context(|| format!("{}: not a causal language model eval can feed", args.model.display()))?;
    let bars = crate::progress::Bars::new();
    bars.begin("windows", plan.len() as u64);
    let result = lm.perplexity(&tokens, &plan, || bars.advance(1));
    bars.end();
    let result = result.with_context(|| format!("{}", args.model.display()))?;
    let seconds = start.elapsed().as_secs_f64();
    let mut out = std::io::stdout().lock();
    if args.json {
        let value = serde_json::json!({
            "model": args.model, "tokens_file": args.tokens, "tokens": tokens.len(), "window": args.window, "stride": stride,
            "perplexity": result.perplexity, "mean_nll": result.mean_nll, "tokens_scored": result.tokens_scored, "windows": result.windows,
            "seconds": seconds, "threads": options.threads,
        });
        serde_json::to_writer_pretty(&mut out, &value)?;
        writeln!(out)?;
    } else {
        writeln!(out, "{}: perplexity {:.4} (mean NLL {:.5} nats)", args.model.display(), result.perplexity, result.mean_nll)?;
        writeln!(
            out,
            "  {} tokens scored in {} windows of {} (stride {stride}), {:.1} s, {:.0} tokens/s, {} thread(s)",
            result.tokens_scored,
            result.windows,
            args.window,
            seconds,
            plan.iter().map(|w| w.end - w.start).sum::<usize>() as f64 / seconds,
            options.threads
        )?;
    }
    out.flush()?;
    Ok(Outcome::Success)
}
