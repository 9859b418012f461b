//! Numeric core of blockwise weight-only quantization (no graph code).
//!
//! A weight is a row-major f32 matrix `W [K, N]` as it feeds `MatMul(x[.., K], W)`.
//! Quantization blocks run along the reduction axis K, separately for each output column n:
//! block `b` of column `n` is `W[b*B .. min((b+1)*B, K), n]`.
//!
//! Conventions (shared by every method and both packers):
//! - codes are unsigned, `[0, 2^bits - 1]`, one per weight, stored unpacked `[K, N]`;
//! - `w_hat = (code - zero_point) * scale`; symmetric weights have the implicit zero point
//!   `2^(bits-1)` and no stored zero points;
//! - scales and zero points are `[N, k_blocks]`; scales are rounded to the scale dtype before
//!   encoding, so stored and used scales agree;
//! - the RTN scale/zero-point rules are onnxruntime's `MatMulNBitsQuantizer`'s (see `grid`).
//!
//! Methods: [`quantize_rtn`], [`quantize_mse`] (clip search + HQQ-style refinement, never worse
//! than RTN per block), [`quantize_gptq`] (Hessian error feedback from calibration data, with
//! [`HessianAccumulator`]). Outliers: [`QuantizedWeight::add_top_outliers`] or GPTQ's SpQR
//! threshold. AWQ's activation-aware scale search: [`search_awq_scales`]. Packing: [`pack_qdq`] (ONNX `DequantizeLinear` with `block_size`) and
//! [`pack_matmul_nbits`] (`com.microsoft.MatMulNBits`). Metrics: [`QuantMetrics`]. Mixed
//! precision: [`choose_promotions`].

mod awq;
mod budget;
mod config;
mod gptq;
mod grid;
mod metrics;
mod mse;
mod pack;
mod rtn;
mod weight;

pub use awq::{AwqResult, Scaling, effective_weight, search_awq_scales};
pub use budget::{Promotion, choose_promotions};
pub use config::{BIT_WIDTHS, BlockSize, MAX_BLOCK_SIZE, MIN_BLOCK_SIZE, QuantConfig, ScaleDtype};
pub use gptq::{GptqOptions, GptqResult, Hessian, HessianAccumulator, quantize_gptq};
pub use grid::BlockParams;
pub use metrics::{QuantMetrics, relative_error, relative_output_error};
pub use mse::{MseOptions, quantize_mse};
pub use pack::{MatMulNBitsTensors, QdqLayout, QdqTensors, QuantDtype, conv_per_output_channel, conv_weight_as_kn, pack_matmul_nbits, pack_qdq, pack_qdq_as, scales_raw};
pub use rtn::quantize_rtn;
pub use weight::{Outlier, QuantizedWeight};

/// Errors of the quantization core; each names the option or tensor at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum QuantError {
    #[error("quantization option `{option}` = {value} is invalid: expected {expected}")]
    InvalidOption { option: &'static str, value: String, expected: &'static str },
    #[error("tensor `{tensor}` has {len} elements, but its shape {shape} needs {expected}")]
    ShapeMismatch { tensor: &'static str, shape: String, len: usize, expected: usize },
    #[error("tensor `{tensor}` has the non-finite value {value} at [{row}, {col}]")]
    NonFinite { tensor: &'static str, row: usize, col: usize, value: f32 },
    #[error("block {block} of weight column {col} needs the scale {scale}, which does not fit {dtype}")]
    ScaleOutOfRange { scale: f32, block: usize, col: usize, dtype: &'static str },
    #[error("the damped Hessian is not positive definite (pivot {pivot}); raise `percdamp`")]
    NotPositiveDefinite { pivot: usize },
    #[error("the Hessian accumulator has seen no calibration rows")]
    NoCalibrationData,
    #[error("format {format} cannot hold this weight: {reason}")]
    UnsupportedFormat { format: &'static str, reason: String },
}

/// The transpose `[cols, rows]` of a row-major `[rows, cols]` matrix. Tiled so that reads and
/// writes both stay within a few cache lines per tile, and parallel over strips of output
/// rows: a plain strided loop is several times slower on embedding-sized tables.
pub fn transpose<T: Copy + Default + Send + Sync>(src: &[T], rows: usize, cols: usize) -> Vec<T> {
    use rayon::prelude::*;
    const TILE: usize = 32;
    assert_eq!(src.len(), rows * cols, "transpose of a [{rows}, {cols}] matrix");
    let mut out = vec![T::default(); rows * cols];
    if rows == 0 || cols == 0 {
        return out;
    }
    out.par_chunks_mut(TILE * rows).enumerate().for_each(|(strip, out_rows)| {
        let c0 = strip * TILE;
        let strip_cols = out_rows.len() / rows;
        for r0 in (0..rows).step_by(TILE) {
            for r in r0..(r0 + TILE).min(rows) {
                let src_row = &src[r * cols + c0..][..strip_cols];
                for (c, &v) in src_row.iter().enumerate() {
                    out_rows[c * rows + r] = v;
                }
            }
        }
    });
    out
}

/// Checks that `weight` is a finite `[k, n]` matrix.
pub(crate) fn check_weight(weight: &[f32], k: usize, n: usize) -> Result<(), QuantError> {
    check_matrix("weight", weight, k, n)
}

pub(crate) fn check_matrix(tensor: &'static str, data: &[f32], rows: usize, cols: usize) -> Result<(), QuantError> {
    if rows == 0 || cols == 0 || data.len() != rows * cols {
        return Err(QuantError::ShapeMismatch { tensor, shape: format!("[{rows}, {cols}]"), len: data.len(), expected: rows * cols });
    }
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::NonFinite { tensor, row: i / cols, col: i % cols, value: data[i] });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn transpose_matches_the_definition() {
        for (rows, cols) in [(1, 1), (1, 7), (7, 1), (31, 33), (32, 32), (64, 3), (100, 257), (0, 5), (5, 0)] {
            let src: Vec<u32> = (0..rows * cols).map(|i| i as u32 * 7 + 1).collect();
            let t = super::transpose(&src, rows, cols);
            assert_eq!(t.len(), src.len());
            for r in 0..rows {
                for c in 0..cols {
                    assert_eq!(t[c * rows + r], src[r * cols + c], "[{rows}, {cols}] at ({r}, {c})");
                }
            }
        }
    }
}
