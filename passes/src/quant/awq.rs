//! AWQ's activation-aware scaling (arXiv 2306.00978; ../shared/docs/compression-methods.md §4).
//!
//! A weight `W [K, N]` is quantized as `W' = diag(s) W` and the activation it multiplies is
//! divided by `s` (one `Mul` in front of the layer), so the product is unchanged while the
//! input channels that carry large activations get a finer grid. `s = m^α / sqrt(max · min)`
//! with `m` the mean absolute activation of each input channel, and `α` searched over
//! `{0, 0.05, …, 0.95}` for the smallest output error `tr(ΔWᵀ H ΔW)` of the effective weight
//! `W_eff = diag(1/s) Q(W')` on the calibration Hessian. `α = 0` is the unscaled weight, so
//! the result is never worse than quantizing `W` directly (on the calibration data).

use super::{Hessian, QuantError, QuantizedWeight};

/// The AWQ paper's grid of exponents.
pub const ALPHAS: usize = 20;

/// A scaled and quantized weight.
#[derive(Clone, Debug)]
pub struct AwqResult {
    /// `Q(diag(s) W)`: what is stored.
    pub weight: QuantizedWeight,
    /// `s` per input channel: the stored weight is `Q(diag(s) W)`.
    pub scales: Vec<f32>,
    /// `1/s` per input channel: what the activation is multiplied by.
    pub inverse_scales: Vec<f32>,
    pub alpha: f32,
    /// `tr(ΔWᵀ H ΔW)` of the effective weight at the chosen `α`, and with no scaling.
    pub output_error: f64,
    pub unscaled_output_error: f64,
}

/// How an AWQ-scaled weight relates to the original: `W ≈ diag(inverse_scales) · dequantized`.
pub struct Scaling {
    pub inverse_scales: Vec<f32>,
    pub alpha: f32,
    /// `tr(ΔWᵀHΔW)` of plain quantization (α = 0), for the report.
    pub unscaled_output_error: f64,
}

/// What a layer computes with: the dequantized weight, times `1/s` per input channel under AWQ.
pub fn effective_weight(q: &QuantizedWeight, scaling: Option<&Scaling>) -> Vec<f32> {
    let mut w_hat = q.dequantize();
    if let Some(scaling) = scaling {
        for (row, &inv) in w_hat.chunks_exact_mut(q.n.max(1)).zip(&scaling.inverse_scales) {
            row.iter_mut().for_each(|v| *v *= inv);
        }
    }
    w_hat
}

/// Per-channel scales for exponent `alpha`, with the same normalisation as the reference
/// (`auto_scale.py`): the geometric mean of the extremes becomes 1. Channels that never fire
/// get the smallest positive statistic so that every scale is finite and positive.
fn scales_for(mean_abs: &[f32], alpha: f32) -> Vec<f32> {
    let floor = mean_abs.iter().copied().filter(|&m| m > 0.0 && m.is_finite()).fold(f32::INFINITY, f32::min);
    let floor = if floor.is_finite() { floor } else { 1.0 };
    let raw: Vec<f32> = mean_abs.iter().map(|&m| if m > 0.0 && m.is_finite() { m } else { floor }.powf(alpha)).collect();
    let (lo, hi) = raw.iter().fold((f32::INFINITY, 0.0f32), |(lo, hi), &s| (lo.min(s), hi.max(s)));
    let norm = (hi as f64 * lo as f64).sqrt() as f32;
    raw.iter().map(|&s| s / norm).collect()
}

/// Searches AWQ's scale exponent for `W [K, N]` (row-major) and returns the best scaled
/// weight. `quantize` quantizes a `[K, N]` matrix (RTN or MSE with the pass's settings).
pub fn search_awq_scales(weight: &[f32], k: usize, n: usize, mean_abs: &[f32], hessian: &Hessian, quantize: impl Fn(&[f32]) -> Result<QuantizedWeight, QuantError>) -> Result<AwqResult, QuantError> {
    super::check_weight(weight, k, n)?;
    if mean_abs.len() != k || hessian.k() != k {
        return Err(QuantError::ShapeMismatch { tensor: "activation statistics", shape: format!("[{k}]"), len: mean_abs.len().min(hessian.k()), expected: k });
    }
    let mut best: Option<AwqResult> = None;
    let mut unscaled_error = f64::NAN;
    let mut scaled = vec![0.0f32; k * n];
    let mut delta = vec![0.0f32; k * n];
    for step in 0..ALPHAS {
        let alpha = step as f32 * 0.05;
        let scales = scales_for(mean_abs, alpha);
        let inverse_scales: Vec<f32> = scales.iter().map(|&s| 1.0 / s).collect();
        for ((dst, src), &s) in scaled.chunks_exact_mut(n).zip(weight.chunks_exact(n)).zip(&scales) {
            for (d, &w) in dst.iter_mut().zip(src) {
                *d = w * s;
            }
        }
        let q = quantize(&scaled)?;
        // The effective weight, computed as the graph does: the dequantized W' times 1/s.
        let w_hat = q.dequantize();
        for (((d, w), h), &inv) in delta.chunks_exact_mut(n).zip(weight.chunks_exact(n)).zip(w_hat.chunks_exact(n)).zip(&inverse_scales) {
            for ((d, &w), &h) in d.iter_mut().zip(w).zip(h) {
                *d = w - h * inv;
            }
        }
        let error = hessian.quadratic_form(&delta, n);
        if step == 0 {
            unscaled_error = error;
        }
        if best.as_ref().is_none_or(|b| error < b.output_error) {
            best = Some(AwqResult { weight: q, scales, inverse_scales, alpha, output_error: error, unscaled_output_error: f64::NAN });
        }
    }
    let mut best = best.expect("ALPHAS > 0");
    best.unscaled_output_error = unscaled_error;
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{BlockSize, HessianAccumulator, QuantConfig, ScaleDtype, quantize_rtn};

    #[test]
    fn scales_are_normalised_and_finite() {
        let s = scales_for(&[4.0, 1.0, 0.0, f32::NAN], 0.5);
        // sqrt(4)=2 and the floor 1 -> norm sqrt(2 * 1).
        let norm = 2.0f32.sqrt();
        assert_eq!(s, vec![2.0 / norm, 1.0 / norm, 1.0 / norm, 1.0 / norm]);
        assert!(scales_for(&[0.0, 0.0], 0.7).iter().all(|&v| v == 1.0));
        assert!(scales_for(&[3.0, 5.0], 0.0).iter().all(|&v| v == 1.0));
    }

    /// Activations with a few loud input channels (as transformers have): AWQ scales those
    /// channels up and beats plain RTN on the output error, which it measures correctly.
    #[test]
    fn loud_channels_get_scaled_and_the_output_error_drops() {
        let (k, n, rows) = (128, 48, 512);
        let mut state = 0x1234_5678u64;
        let mut next = move || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        let weight: Vec<f32> = (0..k * n).map(|_| next() * 0.1).collect();
        let loud = [3usize, 40, 77, 100];
        let x: Vec<f32> = (0..rows * k).map(|i| next() * if loud.contains(&(i % k)) { 30.0 } else { 1.0 }).collect();
        let mut acc = HessianAccumulator::new(k);
        acc.add_batch(&x, rows).unwrap();
        let h = acc.hessian().unwrap();
        let mut mean_abs = vec![0.0f32; k];
        for row in x.chunks_exact(k) {
            for (m, &v) in mean_abs.iter_mut().zip(row) {
                *m += v.abs() / rows as f32;
            }
        }
        let config = QuantConfig { bits: 4, block_size: BlockSize::Blocked(32), symmetric: true, scale_dtype: ScaleDtype::F32 };
        let r = search_awq_scales(&weight, k, n, &mean_abs, &h, |w| quantize_rtn(w, k, n, &config)).unwrap();
        assert!(r.alpha > 0.0, "alpha {}", r.alpha);
        assert!(r.output_error < 0.8 * r.unscaled_output_error, "{} vs {}", r.output_error, r.unscaled_output_error);
        assert!(loud.iter().all(|&c| r.inverse_scales[c] < r.inverse_scales[0]), "loud channels are scaled up");
        // The reported error is the effective weight's, measured directly on the activations.
        let w_hat = r.weight.dequantize();
        let mut direct = 0.0f64;
        for row in x.chunks_exact(k) {
            for col in 0..n {
                let y: f64 = (0..k).map(|i| row[i] as f64 * (weight[i * n + col] as f64 - w_hat[i * n + col] as f64 * r.inverse_scales[i] as f64)).sum();
                direct += y * y;
            }
        }
        let relative = (2.0 * direct / rows as f64 - r.output_error).abs() / r.output_error;
        assert!(relative < 1e-3, "quadratic form {} vs direct {}", r.output_error, 2.0 * direct / rows as f64);
        // Unscaled is plain RTN.
        let plain = quantize_rtn(&weight, k, n, &config).unwrap();
        let delta: Vec<f32> = weight.iter().zip(plain.dequantize()).map(|(&w, h)| w - h).collect();
        assert_eq!(h.quadratic_form(&delta, n), r.unscaled_output_error);
    }
}
