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
            for row in w_rows.chunks_exact(n) {
                for ((l, h), &v) in lo.iter_mut().zip(hi.iter_mut()).zip(row) {
                    *l = l.min(v);
                    *h = h.max(v);
                }
            }
            let params = (0..n)
                .map(|col| {
                    fit_range(lo[col], hi[col], config).map_err(|e| match e {
                        FitError::ScaleOutOfRange { scale } => QuantError::ScaleOutOfRange { scale, block, col, dtype: config.scale_dtype.name() },
                    })
                })
                .collect::<Result<Vec<BlockParams>, QuantError>>()?;
            let encoders: Vec<Encoder> = params.iter().map(|p| p.encoder(max_code)).collect();
            for (code_row, w_row) in code_rows.chunks_exact_mut(n).zip(w_rows.chunks_exact(n)) {
                for ((c, &w), e) in code_row.iter_mut().zip(w_row).zip(&encoders) {
                    *c = e.encode(w);
                }
            }
            Ok(params)
        })
        .collect();
    assemble(k, n, config, block_size, codes, per_block_row)
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
    Ok(QuantizedWeight {
        k,
        n,
        config: *config,
        block_size,
        codes,
        scales,
        zero_points: (!config.symmetric).then_some(zero_points),
        outliers: Vec::new(),
    })
}
