//! Round-to-nearest, and the blockwise driver the data-free methods share.

use rayon::prelude::*;

use super::grid::{BlockParams, Encoder, FitError, fit_range};
use super::{QuantConfig, QuantError, QuantizedWeight, check_weight};

/// Round-to-nearest blockwise quantization of `W [k, n]` (row-major), bit-identical to
/// onnxruntime's `MatMulNBitsQuantizer` for f32 scales (see the `grid` module docs).
///
/// The same result as `quantize_blockwise` with `fit_rtn`, computed row by row: a block row's
/// column minima and maxima in one contiguous pass, then each row encoded against its
/// columns' encoders (no strided gathers; the loops vectorise).
pub fn quantize_rtn(weight: &[f32], k: usize, n: usize, config: &QuantConfig) -> Result<QuantizedWeight, QuantError> {
    config.validate()?;
    check_weight(weight, k, n)?;
    let block_size = config.effective_block_size(k);
    let max_code = config.max_code();
    let mut codes = vec![0u8; k * n];
    let per_block_row: Vec<Result<Vec<BlockParams>, QuantError>> = codes
        .par_chunks_mut(block_size * n)
        .enumerate()
        .map(|(block, code_rows)| {
            let w_rows = &weight[block * block_size * n..][..code_rows.len()];
            let (mut lo, mut hi) = (vec![f32::MAX; n], vec![-f32::MAX; n]);
            column_ranges(w_rows, &mut lo, &mut hi);
            let params = (0..n)
                .map(|col| {
                    fit_range(lo[col], hi[col], config).map_err(|e| match e {
                        FitError::ScaleOutOfRange { scale } => QuantError::ScaleOutOfRange { scale, block, col, dtype: config.scale_dtype.name() },
                    })
                })
                .collect::<Result<Vec<BlockParams>, QuantError>>()?;
            let encoders: Vec<Encoder> = params.iter().map(|p| p.encoder(max_code)).collect();
            let row_encoder = RowEncoder::new(&encoders, max_code);
            for (code_row, w_row) in code_rows.chunks_exact_mut(n).zip(w_rows.chunks_exact(n)) {
                row_encoder.encode_row(w_row, code_row);
            }
            for &col in &row_encoder.dividing_columns {
                for (code_row, w_row) in code_rows.chunks_exact_mut(n).zip(w_rows.chunks_exact(n)) {
                    code_row[col] = encoders[col].encode(w_row[col]);
                }
            }
            Ok(params)
        })
        .collect();
    assemble(k, n, config, block_size, codes, per_block_row)
}

/// A block row's encoders as parallel arrays, so that encoding a row of W is one loop the
/// compiler vectorises (an array of `Encoder`s with its per-column `divide` branch is not;
/// it was most of the pass's time). Columns whose scale has no finite reciprocal (subnormal
/// scales) are left to `Encoder::encode` afterwards.
struct RowEncoder {
    reciprocals: Vec<f32>,
    zero_points: Vec<f32>,
    max_code: f32,
    dividing_columns: Vec<usize>,
}

impl RowEncoder {
    fn new(encoders: &[Encoder], max_code: u8) -> Self {
        RowEncoder {
            reciprocals: encoders.iter().map(|e| if e.divides() { 0.0 } else { e.reciprocal() }).collect(),
            zero_points: encoders.iter().map(|e| e.zero_point()).collect(),
            max_code: max_code as f32,
            dividing_columns: encoders.iter().enumerate().filter(|(_, e)| e.divides()).map(|(col, _)| col).collect(),
        }
    }

    /// `Encoder::encode` for every column (exactly: the same operations in the same order).
    fn encode_row(&self, w_row: &[f32], code_row: &mut [u8]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2.
            return unsafe { self.encode_row_avx2(w_row, code_row) };
        }
        self.encode_row_body(w_row, code_row)
    }

    /// The same loop compiled for AVX2 (eight lanes instead of SSE2's four): the same IEEE
    /// operations, so the same codes.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn encode_row_avx2(&self, w_row: &[f32], code_row: &mut [u8]) {
        self.encode_row_body(w_row, code_row)
    }

    #[inline(always)]
    fn encode_row_body(&self, w_row: &[f32], code_row: &mut [u8]) {
        let max_code = self.max_code;
        for (((c, &w), &r), &z) in code_row.iter_mut().zip(w_row).zip(&self.reciprocals).zip(&self.zero_points) {
            // `max` then `min` maps NaN to 0 as `clamp` + `as u8` do, and leaves a value in
            // [0, max_code], which the unchecked conversion below needs (it vectorises; the
            // saturating `as u8` does not).
            let x = (w * r + z).max(0.0).min(max_code);
            // SAFETY: x is finite and in [0, 255].
            let t = unsafe { x.to_int_unchecked::<i32>() };
            *c = (t + ((x - t as f32) >= 0.5) as i32) as u8;
        }
    }
}

/// Each column's minimum and maximum over the rows of `w_rows` (rows of `lo.len()` values),
/// folded into `lo` and `hi`; compiled for AVX2 where the CPU has it (same results).
fn column_ranges(w_rows: &[f32], lo: &mut [f32], hi: &mut [f32]) {
    #[inline(always)]
    fn body(w_rows: &[f32], lo: &mut [f32], hi: &mut [f32]) {
        for row in w_rows.chunks_exact(lo.len()) {
            for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                *l = l.min(v);
                *h = h.max(v);
            }
        }
    }
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2")]
    unsafe fn avx2(w_rows: &[f32], lo: &mut [f32], hi: &mut [f32]) {
        body(w_rows, lo, hi)
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2.
        return unsafe { avx2(w_rows, lo, hi) };
    }
    body(w_rows, lo, hi)
}

/// Runs `fit` on every block (one column's slice of K) and encodes the block against the
/// parameters it returns. Blocks are independent, so the result does not depend on the
/// number of threads.
pub(crate) fn quantize_blockwise<F>(weight: &[f32], k: usize, n: usize, config: &QuantConfig, fit: F) -> Result<QuantizedWeight, QuantError>
where
    F: Fn(&[f32]) -> Result<BlockParams, FitError> + Sync,
{
    config.validate()?;
    check_weight(weight, k, n)?;
    let block_size = config.effective_block_size(k);
    let max_code = config.max_code();
    let mut codes = vec![0u8; k * n];

    // One task per block row: its rows of W and of the codes are contiguous.
    let per_block_row: Vec<Result<Vec<BlockParams>, QuantError>> = codes
        .par_chunks_mut(block_size * n)
        .enumerate()
        .map(|(block, code_rows)| {
            let rows = code_rows.len() / n;
            let w_rows = &weight[block * block_size * n..][..rows * n];
            let mut values = vec![0.0f32; rows];
            let mut params = Vec::with_capacity(n);
            for col in 0..n {
                for (r, v) in values.iter_mut().enumerate() {
                    *v = w_rows[r * n + col];
                }
                let p = fit(&values).map_err(|e| match e {
                    FitError::ScaleOutOfRange { scale } => QuantError::ScaleOutOfRange { scale, block, col, dtype: config.scale_dtype.name() },
                })?;
                let encoder = p.encoder(max_code);
                for (r, &v) in values.iter().enumerate() {
                    code_rows[r * n + col] = encoder.encode(v);
                }
                params.push(p);
            }
            Ok(params)
        })
        .collect();

    assemble(k, n, config, block_size, codes, per_block_row)
}

/// A `QuantizedWeight` from codes and each block row's per-column parameters.
fn assemble(k: usize, n: usize, config: &QuantConfig, block_size: usize, codes: Vec<u8>, per_block_row: Vec<Result<Vec<BlockParams>, QuantError>>) -> Result<QuantizedWeight, QuantError> {
    let k_blocks = k.div_ceil(block_size);
    let mut scales = vec![0.0f32; n * k_blocks];
    let mut zero_points = vec![0u8; n * k_blocks];
    for (block, params) in per_block_row.into_iter().enumerate() {
        for (col, p) in params?.into_iter().enumerate() {
            scales[col * k_blocks + block] = p.scale;
            zero_points[col * k_blocks + block] = p.zero_point;
        }
    }
    Ok(QuantizedWeight { k, n, config: *config, block_size, codes, scales, zero_points: (!config.symmetric).then_some(zero_points), outliers: Vec::new() })
}
