//! Error and size metrics of a quantized weight.

use super::{Hessian, QuantizedWeight};

/// How close `W_hat` is to `W`, and what it costs.
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct QuantMetrics {
    /// `‖W − W_hat‖_F / ‖W‖_F` (0 when W is all zeros and exactly reproduced).
    pub relative_frobenius_error: f64,
    /// `10 log10(‖W‖² / ‖W − W_hat‖²)` in dB; infinite when the reconstruction is exact.
    pub sqnr_db: f64,
    /// Storage bits per weight: codes, scales, zero points and outliers (16-bit value plus two
    /// 32-bit indices each), excluding container padding.
    pub bits_per_weight: f64,
    /// f32 size of W.
    pub bytes_before: u64,
    /// Bytes of the quantized form: bit-packed codes and zero points, scales, outliers.
    pub bytes_after: u64,
}

const LANES: usize = 8;

/// `signal[l] += Σ w²`, `noise[l] += Σ (w − h)²` over the elements `i ≡ l (mod 8)` of `w` and
/// `h` (whole groups of eight), compiled for AVX2 where the CPU has it: the same additions in
/// the same order, so the same sums.
fn add_squares(w: &[f32], h: &[f32], signal: &mut [f64; LANES], noise: &mut [f64; LANES]) {
    #[inline(always)]
    fn body(w: &[f32], h: &[f32], signal: &mut [f64; LANES], noise: &mut [f64; LANES]) {
        for (w, h) in w.chunks_exact(LANES).zip(h.chunks_exact(LANES)) {
            for l in 0..LANES {
                let (w, h) = (w[l] as f64, h[l] as f64);
                signal[l] += w * w;
                noise[l] += (w - h) * (w - h);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(w: &[f32], h: &[f32], signal: &mut [f64; LANES], noise: &mut [f64; LANES]) {
        body(w, h, signal, noise)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2(w, h, signal, noise) };
    }
    body(w, h, signal, noise)
}

impl QuantMetrics {
    pub fn new(weight: &[f32], quantized: &QuantizedWeight) -> Self {
        // One block row at a time (no full reconstruction in memory); the per-block-row sums
        // are added in order, so the result does not depend on anything but the inputs.
        let (k, n) = (quantized.k, quantized.n);
        assert_eq!(weight.len(), k * n, "weight and quantized weight differ in size");
        let rows_per_block = quantized.block_size.max(1);
        let mut w_hat = vec![0.0f32; rows_per_block * n];
        // Eight running sums each (element i goes to lane i % 8, lanes added at the end): one
        // running sum is a chain of dependent f64 additions, which made this step as slow as
        // the quantization itself. The order is fixed, so the result is still deterministic.
        let (mut signal, mut noise) = ([0.0f64; LANES], [0.0f64; LANES]);
        let mut lane = 0;
        for (block, w_rows) in weight.chunks(rows_per_block * n.max(1)).enumerate() {
            let w_hat = &mut w_hat[..w_rows.len()];
            quantized.dequantize_block_row(block, w_hat);
            let (mut w_it, mut h_it) = (w_rows.iter(), w_hat.iter());
            // Realign to lane 0 (block rows need not hold a multiple of eight elements).
            while lane != 0 {
                let (Some(&w), Some(&h)) = (w_it.next(), h_it.next()) else { break };
                let (w, h) = (w as f64, h as f64);
                signal[lane] += w * w;
                noise[lane] += (w - h) * (w - h);
                lane = (lane + 1) % LANES;
            }
            let (w_rest, h_rest) = (w_it.as_slice(), h_it.as_slice());
            let whole = w_rest.len() / LANES * LANES;
            add_squares(&w_rest[..whole], &h_rest[..whole], &mut signal, &mut noise);
            let (w_tail, h_tail) = (&w_rest[whole..], &h_rest[whole..]);
            for (&w, &h) in w_tail.iter().zip(h_tail) {
                let (w, h) = (w as f64, h as f64);
                signal[lane] += w * w;
                noise[lane] += (w - h) * (w - h);
                lane = (lane + 1) % LANES;
            }
        }
        let (signal, noise): (f64, f64) = (signal.iter().sum(), noise.iter().sum());
        let relative_frobenius_error = if signal > 0.0 {
            (noise / signal).sqrt()
        } else if noise > 0.0 {
            f64::INFINITY
        } else {
            0.0
        };
        let sqnr_db = 10.0 * (signal / noise).log10();
        let (bits_per_weight, bytes_after) = Self::storage(quantized);
        QuantMetrics { relative_frobenius_error, sqnr_db: if sqnr_db.is_nan() { f64::INFINITY } else { sqnr_db }, bits_per_weight, bytes_before: weight.len() as u64 * 4, bytes_after }
    }

    /// Bits per weight and bytes of the quantized form (see the fields), without the error
    /// metrics' pass over the weights.
    pub fn storage(quantized: &QuantizedWeight) -> (f64, u64) {
        let c = &quantized.config;
        let groups = (quantized.n * quantized.k_blocks()) as u64;
        let code_bits = (quantized.k * quantized.n) as u64 * c.container_bits() as u64;
        let scale_bits = groups * c.scale_dtype.bits() as u64;
        let zero_point_bits = if quantized.zero_points.is_some() { groups * c.container_bits() as u64 } else { 0 };
        let outlier_bits = quantized.outliers.len() as u64 * (16 + 32 + 32);
        let total_bits = code_bits + scale_bits + zero_point_bits + outlier_bits;
        (total_bits as f64 / (quantized.k * quantized.n) as f64, code_bits.div_ceil(8) + scale_bits / 8 + zero_point_bits.div_ceil(8) + outlier_bits / 8)
    }
}

/// `tr(ΔWᵀ H ΔW) / tr(Wᵀ H W)`: the relative output error on the calibration data.
pub fn relative_output_error(w: &[f32], w_hat: &[f32], n: usize, h: &Hessian) -> f64 {
    let delta: Vec<f32> = w.iter().zip(w_hat).map(|(a, b)| a - b).collect();
    let signal = h.quadratic_form(w, n);
    if signal > 0.0 { h.quadratic_form(&delta, n) / signal } else { 0.0 }
}

/// `‖W − W_hat‖_F / ‖W‖_F` of two `[K, N]` matrices, with [`QuantMetrics`]' conventions: 0 for an exact reconstruction,
/// infinite for any error on an all-zero W.
pub fn relative_error(w: &[f32], w_hat: &[f32]) -> f64 {
    let signal: f64 = w.iter().map(|&v| (v as f64).powi(2)).sum();
    let noise: f64 = w.iter().zip(w_hat).map(|(&a, &b)| (a as f64 - b as f64).powi(2)).sum();
    if signal > 0.0 {
        (noise / signal).sqrt()
    } else if noise > 0.0 {
        f64::INFINITY
    } else {
        0.0
    }
}
