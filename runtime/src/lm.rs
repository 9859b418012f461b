//! Language-model evaluation: the perplexity of a token sequence over sliding windows, computed
//! as Hugging Face's strided evaluation (and lm-eval's rolling loglikelihood) does: windows of
//! `window` tokens start every `stride` tokens, and each token is scored once, in the first
//! window that holds it with at least one token of context before it; later windows give
//! earlier tokens as context only. `stride == window` is llama.cpp-style non-overlapping chunks
//! (whose first tokens are context, never scored).

use crate::error::RuntimeError;
use crate::session::{IoSpec, Session};
use crate::value::TensorValue;
use compactor_ir::{DataType, Dim};

/// One forward pass: tokens `start..end` go in; the predictions of `scored_from..end` count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    pub start: usize,
    pub end: usize,
    pub scored_from: usize,
}

/// The windows over `tokens` tokens. `stride` must be in `1..=window`.
pub fn windows(tokens: usize, window: usize, stride: usize) -> Vec<Window> {
    assert!(window >= 2 && (1..=window).contains(&stride), "window {window}, stride {stride}");
    let mut out = Vec::new();
    let mut scored_until = 0;
    let mut start = 0;
    while start + 1 < tokens {
        let end = (start + window).min(tokens);
        let scored_from = scored_until.max(start + 1);
        if scored_from < end {
            out.push(Window { start, end, scored_from });
        }
        scored_until = end;
        if end == tokens {
            break;
        }
        start += stride;
    }
    out
}

/// `-log softmax(logits)[target]`, in f64.
pub fn negative_log_likelihood(logits: &[f32], target: usize) -> f64 {
    log_sum_exp(logits) - logits[target] as f64
}

/// `log Σ exp(x)`, in f64, shifted by the maximum so large logits do not overflow.
fn log_sum_exp<T: Copy + Into<f64>>(x: &[T]) -> f64 {
    let max = x.iter().map(|&v| v.into()).fold(f64::NEG_INFINITY, f64::max);
    max + x.iter().map(|&v| (v.into() - max).exp()).sum::<f64>().ln()
}

/// `KL(softmax(p) || softmax(q))`: how far the distribution `q` is from the reference `p`.
pub fn kl_divergence(p: &[f64], q: &[f64]) -> f64 {
    let (lp, lq) = (log_sum_exp(p), log_sum_exp(q));
    p.iter().zip(q).map(|(&a, &b)| (a - lp).exp() * ((a - lp) - (b - lq))).sum::<f64>().max(0.0)
}

/// Perplexity over a token sequence.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Perplexity {
    pub perplexity: f64,
    /// Mean negative log-likelihood per scored token (nats).
    pub mean_nll: f64,
    pub tokens_scored: usize,
    pub windows: usize,
}

/// Feeds a causal language model one window at a time. It knows the inputs exporters give such
/// models: `input_ids`, `attention_mask` (all ones), `position_ids` (0, 1, ...) and empty
/// `past_key_values.*` / `past.*` caches; its output is `logits` (or the only output),
/// `[1, tokens, vocabulary]`.
pub struct LanguageModel<'s> {
    session: &'s Session,
    inputs: Vec<InputRole>,
    logits: String,
}

enum InputRole {
    Ids(String, DataType),
    Mask(String, DataType),
    Positions(String, DataType),
    /// An empty cache: batch 1, every symbolic dimension 0.
    EmptyPast(String, DataType, Vec<usize>),
}

impl<'s> LanguageModel<'s> {
    pub fn new(session: &'s Session) -> Result<Self, RuntimeError> {
        let unsupported = |spec: &IoSpec, why: &str| RuntimeError::Tensor { name: spec.name.clone(), reason: why.to_string() };
        let int_type = |spec: &IoSpec| match spec.dtype {
            None | Some(DataType::Int64) => Ok(DataType::Int64),
            Some(DataType::Int32) => Ok(DataType::Int32),
            Some(other) => Err(unsupported(spec, &format!("a language model's token input should be int64 or int32, not {other}"))),
        };
        let mut inputs = Vec::new();
        for spec in session.inputs() {
            let name = spec.name.clone();
            let role = match name.as_str() {
                "input_ids" => InputRole::Ids(name, int_type(spec)?),
                "attention_mask" => InputRole::Mask(name, int_type(spec)?),
                "position_ids" => InputRole::Positions(name, int_type(spec)?),
                n if n.starts_with("past_key_values") || n.starts_with("past.") || n.starts_with("past_") => {
                    let dims = spec.shape.as_ref().ok_or_else(|| unsupported(spec, "a cache input needs a declared shape to be made empty"))?;
                    let shape = dims.dims.iter().enumerate().map(|(i, d)| match d {
                        Dim::Known(k) => *k as usize,
                        _ if i == 0 => 1,
                        _ => 0,
                    });
                    InputRole::EmptyPast(name, spec.dtype.unwrap_or(DataType::Float), shape.collect())
                }
                _ => return Err(unsupported(spec, "not an input of a causal language model (input_ids, attention_mask, position_ids, past_key_values.*)")),
            };
            inputs.push(role);
        }
        if !inputs.iter().any(|r| matches!(r, InputRole::Ids(..))) {
            return Err(RuntimeError::Tensor { name: "input_ids".into(), reason: "the model has no input named input_ids".into() });
        }
        let outputs = session.outputs();
        let logits = match outputs.iter().find(|o| o.name == "logits") {
            Some(o) => o.name.clone(),
            None if outputs.len() == 1 => outputs[0].name.clone(),
            None => return Err(RuntimeError::Tensor { name: "logits".into(), reason: "the model has several outputs and none is named logits".into() }),
        };
        Ok(LanguageModel { session, inputs, logits })
    }

    /// The logits of `tokens` (batch 1): `[tokens.len(), vocabulary]`, row-major.
    pub fn logits(&self, tokens: &[i64]) -> Result<(Vec<f32>, usize), RuntimeError> {
        let n = tokens.len();
        let ints = |dt: DataType, values: Vec<i64>| match dt {
            DataType::Int32 => TensorValue::from_slice(&[1, n], &values.iter().map(|&v| v as i32).collect::<Vec<_>>()),
            _ => TensorValue::from_i64(&[1, n], &values),
        };
        let mut feeds = Vec::with_capacity(self.inputs.len());
        for role in &self.inputs {
            feeds.push(match role {
                InputRole::Ids(name, dt) => (name.as_str(), ints(*dt, tokens.to_vec())?),
                InputRole::Mask(name, dt) => (name.as_str(), ints(*dt, vec![1; n])?),
                InputRole::Positions(name, dt) => (name.as_str(), ints(*dt, (0..n as i64).collect())?),
                InputRole::EmptyPast(name, dt, shape) => {
                    let empty = match dt {
                        DataType::Float16 => TensorValue::from_slice::<half::f16>(shape, &[])?,
                        _ => TensorValue::from_f32(shape, &[])?,
                    };
                    (name.as_str(), empty)
                }
            });
        }
        let outputs = self.session.run(&feeds)?;
        let (_, logits) = outputs.into_iter().find(|(name, _)| *name == self.logits).expect("the session returns every output");
        let shape = logits.shape().to_vec();
        if shape.len() != 3 || shape[0] != 1 || shape[1] != n {
            return Err(RuntimeError::Tensor { name: self.logits.clone(), reason: format!("expected logits of shape [1, {n}, vocabulary], got {shape:?}") });
        }
        let data = logits.to_f32()?;
        let data = data.as_standard_layout();
        Ok((data.as_slice().expect("standard layout is contiguous").to_vec(), shape[2]))
    }

    /// Perplexity of `tokens` over the given windows; `each` is called after every window.
    pub fn perplexity(&self, tokens: &[i64], windows: &[Window], mut each: impl FnMut()) -> Result<Perplexity, RuntimeError> {
        let (mut nll, mut scored) = (0f64, 0usize);
        for w in windows {
            let (logits, vocabulary) = self.logits(&tokens[w.start..w.end])?;
            for (t, &target) in tokens.iter().enumerate().take(w.end).skip(w.scored_from) {
                if target < 0 || target as usize >= vocabulary {
                    return Err(RuntimeError::Tensor { name: "input_ids".into(), reason: format!("token {t} is {target}, outside the vocabulary of {vocabulary}") });
                }
                let row = t - w.start - 1;
                nll += negative_log_likelihood(&logits[row * vocabulary..(row + 1) * vocabulary], target as usize);
                scored += 1;
            }
            each();
        }
        let mean_nll = nll / scored.max(1) as f64;
        Ok(Perplexity { perplexity: mean_nll.exp(), mean_nll, tokens_scored: scored, windows: windows.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_after_the_first_is_scored_once() {
        for (n, window, stride) in [(10, 4, 4), (10, 4, 2), (10, 4, 1), (9, 4, 3), (4, 4, 4), (5, 4, 4), (2, 2, 1), (1000, 512, 256)] {
            let ws = windows(n, window, stride);
            let mut seen = vec![0; n];
            for w in &ws {
                assert!(w.end - w.start <= window && w.start < w.scored_from && w.scored_from < w.end, "{w:?}");
                for count in &mut seen[w.scored_from..w.end] {
                    *count += 1;
                }
            }
            // Non-overlapping chunks leave each chunk's first token unscored; overlapping ones miss only token 0.
            let expected: Vec<usize> = (0..n).map(|t| if t == 0 || (stride == window && t % window == 0) { 0 } else { 1 }).collect();
            assert_eq!(seen, expected, "n {n} window {window} stride {stride}: {ws:?}");
        }
        assert!(windows(1, 4, 4).is_empty());
        assert_eq!(windows(10, 4, 2)[1], Window { start: 2, end: 6, scored_from: 4 });
    }

    #[test]
    fn likelihoods_match_a_direct_softmax() {
        let logits = [1.0f32, 2.0, 3.0, -50.0];
        let z: f64 = logits.iter().map(|&l| (l as f64).exp()).sum();
        for t in 0..4 {
            let direct = -((logits[t] as f64).exp() / z).ln();
            assert!((negative_log_likelihood(&logits, t) - direct).abs() < 1e-9);
        }
        // Shifting every logit changes nothing; large logits do not overflow.
        let shifted: Vec<f32> = logits.iter().map(|l| l + 1000.0).collect();
        assert!((negative_log_likelihood(&shifted, 2) - negative_log_likelihood(&logits, 2)).abs() < 1e-4);
        let p = [0.0f64, 1.0, 2.0];
        assert_eq!(kl_divergence(&p, &p), 0.0);
        let q = [2.0f64, 1.0, 0.0];
        let softmax = |x: &[f64]| -> Vec<f64> {
            let z: f64 = x.iter().map(|v| v.exp()).sum();
            x.iter().map(|v| v.exp() / z).collect()
        };
        let (sp, sq) = (softmax(&p), softmax(&q));
        let direct: f64 = sp.iter().zip(&sq).map(|(a, b)| a * (a / b).ln()).sum();
        assert!((kl_divergence(&p, &q) - direct).abs() < 1e-12);
    }
}
