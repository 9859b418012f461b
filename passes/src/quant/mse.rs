//! Data-free error minimisation per block: clip search, HQQ-style zero-point optimisation and
//! a least-squares scale refit. The objective is the block's squared reconstruction error
//! `Σ (w − w_hat)²` computed with the exact stored-format arithmetic, and a candidate replaces
//! the current parameters only when it lowers that error, so the result is never worse than
//! RTN on any block.
//!
//! Order: (1) GPTQ-style clip grid on the RTN range, then for asymmetric blocks each end on
//! its own; (2) asymmetric only: HQQ's proximal iteration on the zero point (p = 0.7, β = 10,
//! β·=1.01, early stop on rising mean |error|) starting from the best clipped parameters rather
//! than from the raw min/max, each real-valued iterate rounded to an integer zero point because
//! both ONNX forms store integer zero points; (3) least squares: the line through the codes
//! (asymmetric) and the optimal scale for fixed codes, re-encoding while it helps. The scale is
//! never optimised by HQQ itself (HQQ keeps it fixed too).

use serde::{Deserialize, Serialize};

use super::grid::{BlockParams, FitError, block_error, fit_range, min_max, store_scale};
use super::rtn::quantize_blockwise;
use super::{QuantConfig, QuantError, QuantizedWeight};

/// Settings of [`quantize_mse`]; the defaults are GPTQ's clip grid and HQQ's optimiser constants.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MseOptions {
    /// Shrink factors `1 − i/grid` for `i = 1 ..= max_shrink·grid` (GPTQ: grid 100, max shrink 0.8).
    pub grid: usize,
    pub max_shrink: f32,
    /// Coarse-to-fine search over the shrink factors: every `search_stride`-th factor, then all
    /// factors within one stride of the best. 1 tries every factor (about 3x slower).
    pub search_stride: usize,
    /// HQQ iterations on the zero point (asymmetric only; 0 disables).
    pub hqq_iterations: usize,
    /// HQQ's lp-norm `p` of the shrinkage operator.
    pub hqq_lp_norm: f32,
    /// HQQ's initial `beta`, multiplied by `hqq_kappa` each iteration.
    pub hqq_beta: f32,
    pub hqq_kappa: f32,
    /// Alternations of "least-squares scale for the current codes, re-encode" (0 disables).
    pub scale_refits: usize,
}

impl Default for MseOptions {
    fn default() -> Self {
        MseOptions { grid: 100, max_shrink: 0.8, search_stride: 4, hqq_iterations: 20, hqq_lp_norm: 0.7, hqq_beta: 10.0, hqq_kappa: 1.01, scale_refits: 4 }
    }
}

/// Blockwise quantization minimising each block's squared error (see the module docs).
pub fn quantize_mse(weight: &[f32], k: usize, n: usize, config: &QuantConfig, options: &MseOptions) -> Result<QuantizedWeight, QuantError> {
    if options.search_stride == 0 {
        return Err(QuantError::InvalidOption { option: "mse.search_stride", value: "0".into(), expected: "at least 1" });
    }
    if options.grid == 0 || !(0.0..1.0).contains(&options.max_shrink) {
        return Err(QuantError::InvalidOption { option: "mse.grid / mse.max_shrink", value: format!("{} / {}", options.grid, options.max_shrink), expected: "grid >= 1 and 0 <= max_shrink < 1" });
    }
    if !(options.hqq_lp_norm > 0.0 && options.hqq_lp_norm <= 1.0 && options.hqq_beta > 0.0 && options.hqq_kappa >= 1.0) {
        return Err(QuantError::InvalidOption {
            option: "mse.hqq_*",
            value: format!("p={} beta={} kappa={}", options.hqq_lp_norm, options.hqq_beta, options.hqq_kappa),
            expected: "0 < p <= 1, beta > 0, kappa >= 1",
        });
    }
    quantize_blockwise(weight, k, n, config, |values| fit_mse(values, config, options))
}

/// Tries the indices `first..=last` on a grid of `stride`, then every index within one stride of
/// the best of them (or of `first` when none improved). `try_index` says whether an index
/// improved on everything tried before it. `stride` 1 is the exhaustive search.
fn coarse_to_fine(first: usize, last: usize, stride: usize, mut try_index: impl FnMut(usize) -> bool) {
    let stride = stride.max(1);
    let mut best = None;
    for i in (first..=last).step_by(stride) {
        if try_index(i) {
            best = Some(i);
        }
    }
    if stride == 1 {
        return;
    }
    let center = best.unwrap_or(first);
    for i in center.saturating_sub(stride - 1).max(first)..=(center + stride - 1).min(last) {
        if !(i - first).is_multiple_of(stride) {
            try_index(i);
        }
    }
}

/// The best parameters found for one block, never worse than RTN's.
pub(crate) fn fit_mse(values: &[f32], config: &QuantConfig, options: &MseOptions) -> Result<BlockParams, FitError> {
    let max_code = config.max_code();
    let (min, max) = min_max(values);
    let mut best = fit_range(min, max, config)?;
    let mut best_error = block_error(values, &best, max_code);
    // Takes the candidate if it is strictly better; says whether it did.
    let consider = |candidate: BlockParams, best: &mut BlockParams, best_error: &mut f64| {
        let e = block_error(values, &candidate, max_code);
        let better = e < *best_error;
        if better {
            *best = candidate;
            *best_error = e;
        }
        better
    };

    // 1. Clip search: shrink the range towards 0 (GPTQ's grid; squared error, not |.|^2.4, since
    //    squared error is the metric we promise not to worsen).
    let steps = (options.max_shrink * options.grid as f32) as usize;
    let factor = |i: usize| 1.0 - i as f32 / options.grid as f32;
    let stride = options.search_stride;
    let mut best_factors = (1.0f32, 1.0f32);
    coarse_to_fine(1, steps, stride, |i| {
        let p = factor(i);
        let improved = fit_range(p * min, p * max, config).is_ok_and(|c| consider(c, &mut best, &mut best_error));
        if improved {
            best_factors = (p, p);
        }
        improved
    });
    // Asymmetric ranges are often lopsided (an outlier on one side): then refine each end on
    // its own, the low end first, starting from the best common factor.
    if !config.symmetric {
        let high = best_factors.1;
        coarse_to_fine(0, steps, stride, |i| {
            let p = factor(i);
            let improved = fit_range(p * min, high * max, config).is_ok_and(|c| consider(c, &mut best, &mut best_error));
            if improved {
                best_factors.0 = p;
            }
            improved
        });
        let low = best_factors.0;
        coarse_to_fine(0, steps, stride, |i| {
            let p = factor(i);
            fit_range(low * min, p * max, config).is_ok_and(|c| consider(c, &mut best, &mut best_error))
        });
    }
    if best_error == 0.0 {
        return Ok(best);
    }

    // 2. HQQ on the zero point with the scale fixed (asymmetric only: symmetric has no free
    //    zero point). HQQ's iterate is real-valued; the formats store integer zero points, so
    //    each iterate is rounded and judged by the exact error.
    if !config.symmetric && best.scale != 0.0 && options.hqq_iterations > 0 {
        let encoder = best.encoder(max_code);
        let inv_scale = 1.0 / best.scale;
        let mut zero = best.zero_point as f32;
        let mut beta = options.hqq_beta;
        let mut hqq_best = f32::INFINITY;
        for _ in 0..options.hqq_iterations {
            let mut mean_abs_error = 0.0f32;
            let mut zero_sum = 0.0f32;
            for &w in values {
                let q = encoder.encode_with_zero(w, zero);
                let e = w - (q - zero) * best.scale;
                mean_abs_error += e.abs();
                // Shrinkage (proximal step of the |e|^p penalty): sign(e)·relu(|e| − |e|^(p−1)/β).
                let shrunk = if e == 0.0 { 0.0 } else { e.signum() * (e.abs() - e.abs().powf(options.hqq_lp_norm - 1.0) / beta).max(0.0) };
                zero_sum += q - (w - shrunk) * inv_scale;
            }
            mean_abs_error /= values.len() as f32;
            // Early stop as HQQ: once the (pre-update) error stops falling.
            if mean_abs_error >= hqq_best {
                break;
            }
            hqq_best = mean_abs_error;
            zero = zero_sum / values.len() as f32;
            beta *= options.hqq_kappa;
            if zero.is_finite() {
                let zero_point = zero.round().clamp(0.0, max_code as f32) as u8;
                consider(BlockParams { scale: best.scale, zero_point }, &mut best, &mut best_error);
            }
        }
    }

    // 3. Least squares for the chosen codes. Asymmetric: the line w ≈ a·q + b through the
    //    codes gives a zero point -b/a (rounded to the integer grid) and a scale a.
    if !config.symmetric {
        let encoder = best.encoder(max_code);
        let count = values.len() as f64;
        let (mut sq, mut sw, mut sqq, mut sqw) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        for &w in values {
            let q = encoder.encode(w) as f64;
            sq += q;
            sw += w as f64;
            sqq += q * q;
            sqw += q * w as f64;
        }
        let variance = sqq - sq * sq / count;
        if variance > 0.0 {
            let slope = (sqw - sq * sw / count) / variance;
            let intercept = (sw - slope * sq) / count;
            let zero = -intercept / slope;
            if let Ok(scale) = store_scale(slope as f32, config.scale_dtype)
                && zero.is_finite()
                && scale != 0.0
                && (scale * max_code as f32).is_finite()
            {
                let zero_point = zero.round().clamp(0.0, max_code as f64) as u8;
                consider(BlockParams { scale, zero_point }, &mut best, &mut best_error);
            }
        }
    }
    // Then the least-squares scale for the current codes and zero point (the optimum of
    // Σ(w − s·(q − z))² over s), re-encoding each time, while it helps.
    for _ in 0..options.scale_refits {
        let encoder = best.encoder(max_code);
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for &w in values {
            let d = encoder.encode(w) as f64 - best.zero_point as f64;
            num += w as f64 * d;
            den += d * d;
        }
        if den == 0.0 {
            break;
        }
        let Ok(scale) = store_scale((num / den) as f32, config.scale_dtype) else { break };
        let before = best_error;
        if scale != 0.0 && (scale * max_code as f32).is_finite() {
            consider(BlockParams { scale, zero_point: best.zero_point }, &mut best, &mut best_error);
        }
        if best_error >= before {
            break;
        }
    }
    Ok(best)
}
