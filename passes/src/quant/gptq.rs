//! GPTQ: quantize the rows of W (input features) one at a time and push each row's rounding
//! error onto the rows not yet quantized, weighted by the inverse Hessian of the layer's
//! squared output error (IST-DASLab/gptq `gptq.py`, transposed: their columns are our rows).
//!
//! Linear algebra is faer's (Cholesky, triangular inverse, matmul), always with `Par::Seq`;
//! parallelism is ours, over fixed-width column chunks, so the result is the same bits for any
//! thread count.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{LltParams, cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_inverse::invert_lower_triangular;
use faer::{Accum, Mat, MatMut, MatRef, Par, Spec};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::grid::{BlockParams, FitError, fit_rtn};
use super::{QuantConfig, QuantError, QuantizedWeight, check_matrix, check_weight};

/// Output columns per parallel task. Fixed, so chunking (and every bit of the result) does not
/// depend on the thread count.
const COLUMN_CHUNK: usize = 32;

/// Hessian columns per parallel task of [`HessianAccumulator::add_batch`]: wider than
/// [`COLUMN_CHUNK`] because each task packs its share of `xᵀ` once. Fixed, like it.
const HESSIAN_CHUNK: usize = 64;

/// Streams calibration activations `x [rows, K]` into `Σ x xᵀ` without keeping them: each
/// batch's product in f32 (as GPTQ's reference computes it), summed over batches in f64.
/// Only the upper triangle is computed (the product is symmetric). Memory is `8·K²` bytes
/// (0.5 GB at K = 8192).
#[derive(Clone, Debug)]
pub struct HessianAccumulator {
    k: usize,
    /// `K × K`, column-major; element `(r, c)` is valid for `r <= c`.
    sum: Vec<f64>,
    rows: u64,
}

impl HessianAccumulator {
    pub fn new(k: usize) -> Self {
        HessianAccumulator { k, sum: vec![0.0; k * k], rows: 0 }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    /// Calibration rows seen so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Adds a batch of activations, row-major `[rows, K]`.
    pub fn add_batch(&mut self, activations: &[f32], rows: usize) -> Result<(), QuantError> {
        let k = self.k;
        check_matrix("calibration activations", activations, rows, k)?;
        let x = MatRef::from_row_major_slice(activations, rows, k);
        self.sum.par_chunks_mut(k * HESSIAN_CHUNK).enumerate().for_each(|(chunk, dst)| {
            let first = chunk * HESSIAN_CHUNK;
            let width = dst.len() / k;
            // Rows 0..first + width of these columns: the upper triangle and the diagonal block.
            let height = first + width;
            let mut product = Mat::<f32>::zeros(height, width);
            matmul(product.as_mut(), Accum::Replace, x.transpose().subrows(0, height), x.subcols(first, width), 1.0, Par::Seq);
            for (c, column) in dst.chunks_exact_mut(k).enumerate() {
                for (r, v) in column[..height].iter_mut().enumerate() {
                    *v += product[(r, c)] as f64;
                }
            }
        });
        self.rows += rows as u64;
        Ok(())
    }

    /// `H = (2/n) Σ x xᵀ`.
    pub fn hessian(&self) -> Result<Hessian, QuantError> {
        if self.rows == 0 {
            return Err(QuantError::NoCalibrationData);
        }
        let (k, factor) = (self.k, 2.0 / self.rows as f64);
        // Element (r, c) from the upper triangle: column max(r, c), row min(r, c).
        let data = (0..k * k).map(|i| (i / k, i % k)).map(|(r, c)| self.sum[r.max(c) * k + r.min(c)] * factor).collect();
        Ok(Hessian { k, data })
    }
}

/// A layer's Hessian `H [K, K]` (symmetric, row-major).
#[derive(Clone, Debug, PartialEq)]
pub struct Hessian {
    k: usize,
    data: Vec<f64>,
}

impl Hessian {
    pub fn from_matrix(k: usize, data: Vec<f64>) -> Result<Self, QuantError> {
        if k == 0 || data.len() != k * k {
            return Err(QuantError::ShapeMismatch { tensor: "hessian", shape: format!("[{k}, {k}]"), len: data.len(), expected: k * k });
        }
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            return Err(QuantError::NonFinite { tensor: "hessian", row: i / k, col: i % k, value: data[i] as f32 });
        }
        Ok(Hessian { k, data })
    }

    pub fn identity(k: usize) -> Self {
        let mut data = vec![0.0; k * k];
        for i in 0..k {
            data[i * k + i] = 1.0;
        }
        Hessian { k, data }
    }

    pub fn k(&self) -> usize {
        self.k
    }

    pub fn get(&self, row: usize, col: usize) -> f64 {
        self.data[row * self.k + col]
    }

    /// The matrix, `[K, K]` row-major.
    pub fn as_slice(&self) -> &[f64] {
        &self.data
    }

    /// The matrix, `[K, K]` row-major, without a copy.
    pub fn into_vec(self) -> Vec<f64> {
        self.data
    }

    /// `Σ_c d_cᵀ H d_c` over the columns of `d` (`[K, n]` row-major): the squared output
    /// error a weight change `d` causes on the calibration data (times H's `2/rows`).
    pub fn quadratic_form(&self, d: &[f32], n: usize) -> f64 {
        let k = self.k;
        // H is symmetric: its row-major data reads the same as column-major.
        let h = MatRef::from_column_major_slice(&self.data, k, k);
        let dm = Mat::<f64>::from_fn(k, n, |r, c| d[r * n + c] as f64);
        let mut hd = Mat::<f64>::zeros(k, n);
        matmul(hd.as_mut(), Accum::Replace, h, dm.as_ref(), 1.0, Par::Seq);
        (0..n).map(|c| (0..k).map(|r| hd[(r, c)] * dm[(r, c)]).sum::<f64>()).sum()
    }
}

/// Settings of [`quantize_gptq`]; defaults are the reference's.
#[derive(Copy, Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GptqOptions {
    /// Damping added to the diagonal, as a fraction of `mean(diag H)`.
    pub percdamp: f64,
    /// Quantize rows in order of decreasing `diag(H)`. Block parameters are then fitted up
    /// front on the original W in original order (the reference's `static_groups`), because
    /// the stored format has contiguous blocks along K; codes are stored in original order.
    pub act_order: bool,
    /// Rows per lazy batch of the error update.
    pub lazy_batch: usize,
    /// SpQR-style outliers: a weight whose scaled error `((w − w_hat) / Hinv_ii)²` exceeds
    /// `threshold · mean_i(Var_n(W[i, :]) / Hinv_ii²)` keeps an f16 correction and passes no
    /// error on (SpQR's default threshold is 0.2). `None`: no outliers.
    pub outlier_relative_threshold: Option<f64>,
}

impl Default for GptqOptions {
    fn default() -> Self {
        GptqOptions { percdamp: 0.01, act_order: false, lazy_batch: 128, outlier_relative_threshold: None }
    }
}

/// The quantized weight and GPTQ's layer loss `Σ (w − w_hat)² / Hinv_ii² / 2`.
#[derive(Clone, Debug, PartialEq)]
pub struct GptqResult {
    pub weight: QuantizedWeight,
    pub loss: f64,
}

/// GPTQ (see the module docs). Block parameters are RTN's (onnxruntime conventions) fitted on
/// the error-compensated weights of the block when its first row is reached — or, with
/// `act_order` or per-channel blocks, once on the original weights (the reference's
/// `static_groups` / `groupsize=-1`). Intentional difference from the reference: its dynamic
/// groups are fitted on W as of the start of the current lazy batch, missing the updates from
/// the batch's earlier rows; we add those, so each fit sees the weights it will encode.
///
/// Dead inputs (`H_ii = 0`) get `H_ii = 1` and a zero row, as in the reference.
pub fn quantize_gptq(weight: &[f32], k: usize, n: usize, config: &QuantConfig, hessian: &Hessian, options: &GptqOptions) -> Result<GptqResult, QuantError> {
    config.validate()?;
    check_weight(weight, k, n)?;
    if hessian.k != k {
        return Err(QuantError::ShapeMismatch { tensor: "hessian", shape: format!("[{k}, {k}]"), len: hessian.data.len(), expected: k * k });
    }
    if !(options.percdamp >= 0.0 && options.percdamp.is_finite()) {
        return Err(QuantError::InvalidOption { option: "gptq.percdamp", value: options.percdamp.to_string(), expected: "a finite value >= 0" });
    }
    if options.lazy_batch == 0 {
        return Err(QuantError::InvalidOption { option: "gptq.lazy_batch", value: "0".into(), expected: "at least 1" });
    }
    if let Some(t) = options.outlier_relative_threshold
        && !(t >= 0.0 && t.is_finite())
    {
        return Err(QuantError::InvalidOption { option: "gptq.outlier_relative_threshold", value: t.to_string(), expected: "a finite value >= 0" });
    }

    let block_size = config.effective_block_size(k);
    let k_blocks = k.div_ceil(block_size);
    let max_code = config.max_code();
    let mut h = hessian.data.clone();
    let mut w = weight.to_vec();

    // Dead inputs (never active in calibration): their rows cannot matter; zero them and make
    // H invertible there.
    for i in 0..k {
        if h[i * k + i] == 0.0 {
            h[i * k + i] = 1.0;
            w[i * n..(i + 1) * n].fill(0.0);
        }
    }

    // Static parameters, fitted on the original (dead-zeroed) weights.
    let static_params = options.act_order || k_blocks == 1;
    let fixed_params: Option<Vec<BlockParams>> = if static_params {
        let fitted: Result<Vec<BlockParams>, QuantError> = (0..n * k_blocks)
            .into_par_iter()
            .map(|i| {
                let (col, block) = (i / k_blocks, i % k_blocks);
                let rows = block * block_size..((block + 1) * block_size).min(k);
                let values: Vec<f32> = rows.map(|r| w[r * n + col]).collect();
                fit_rtn(&values, config).map_err(|e| fit_error(e, block, col, config))
            })
            .collect();
        Some(fitted?)
    } else {
        None
    };

    // Row order: decreasing diag(H) with act-order (stable, so ties keep index order).
    let mut perm: Vec<usize> = (0..k).collect();
    if options.act_order {
        perm.sort_by(|&a, &b| h[b * k + b].total_cmp(&h[a * k + a]));
    }
    let mut h_perm = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..k {
            h_perm[i * k + j] = h[perm[i] * k + perm[j]];
        }
    }
    let mean_diag = (0..k).map(|i| h_perm[i * k + i]).sum::<f64>() / k as f64;
    let damp = options.percdamp * mean_diag;
    for i in 0..k {
        h_perm[i * k + i] += damp;
    }
    let hinv = upper_cholesky_of_inverse(&h_perm, k).map_err(|pivot| QuantError::NotPositiveDefinite { pivot: perm[pivot] })?;

    let w_perm: Vec<f64> = (0..k).flat_map(|i| w[perm[i] * n..(perm[i] + 1) * n].iter().map(|&v| v as f64)).collect();
    let outlier_threshold = options.outlier_relative_threshold.map(|t| t * spqr_outlier_scale(&w_perm, &hinv, k, n));

    let ctx = GptqContext { config, k, block_size, k_blocks, max_code, perm: &perm, hinv: &hinv, lazy_batch: options.lazy_batch, outlier_threshold };
    let chunks: Vec<Result<ChunkResult, QuantError>> = (0..n.div_ceil(COLUMN_CHUNK))
        .into_par_iter()
        .map(|chunk| {
            let first = chunk * COLUMN_CHUNK;
            let width = COLUMN_CHUNK.min(n - first);
            let mut block: Vec<f64> = (0..k).flat_map(|r| w_perm[r * n + first..r * n + first + width].iter().copied()).collect();
            let fixed = fixed_params.as_ref().map(|p| &p[first * k_blocks..(first + width) * k_blocks]);
            ctx.run_chunk(&mut block, first, width, fixed)
        })
        .collect();

    let mut codes = vec![0u8; k * n];
    let mut scales = vec![0.0f32; n * k_blocks];
    let mut zero_points = vec![0u8; n * k_blocks];
    let mut outliers = Vec::new();
    let mut loss = 0.0;
    for (chunk, result) in chunks.into_iter().enumerate() {
        let result = result?;
        let first = chunk * COLUMN_CHUNK;
        let width = result.params.len() / k_blocks;
        for (i, &row) in perm.iter().enumerate() {
            codes[row * n + first..row * n + first + width].copy_from_slice(&result.codes[i * width..(i + 1) * width]);
        }
        for (j, p) in result.params.iter().enumerate() {
            scales[first * k_blocks + j] = p.scale;
            zero_points[first * k_blocks + j] = p.zero_point;
        }
        outliers.extend(result.outliers);
        loss += result.loss;
    }
    let mut quantized = QuantizedWeight { k, n, config: *config, block_size, codes, scales, zero_points: (!config.symmetric).then_some(zero_points), outliers };
    quantized.sort_outliers();
    Ok(GptqResult { weight: quantized, loss })
}

fn fit_error(e: FitError, block: usize, col: usize, config: &QuantConfig) -> QuantError {
    match e {
        FitError::ScaleOutOfRange { scale } => QuantError::ScaleOutOfRange { scale, block, col, dtype: config.scale_dtype.name() },
    }
}

/// `U` upper triangular with `UᵀU = H⁻¹` (what the reference gets from
/// `cholesky(cholesky_inverse(cholesky(H)), upper=True)`), row-major.
///
/// With `J` the reversal permutation and `J H J = L Lᵀ`, `H = R Rᵀ` for the upper triangular
/// `R = J L J`, so `H⁻¹ = R⁻ᵀ R⁻¹` and `U = R⁻¹ = J L⁻¹ J`: one Cholesky and one triangular
/// inverse instead of two Choleskys and an inverse. Returns the failing pivot (in H's order).
pub(crate) fn upper_cholesky_of_inverse(h: &[f64], k: usize) -> Result<Vec<f64>, usize> {
    let reversed = |i: usize| k - 1 - i;
    let mut l = Mat::<f64>::from_fn(k, k, |i, j| h[reversed(i) * k + reversed(j)]);
    let params: Spec<LltParams, f64> = Default::default();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(k, Par::Seq, params));
    cholesky_in_place(l.as_mut(), Default::default(), Par::Seq, MemStack::new(&mut mem), params).map_err(|e| match e {
        faer::linalg::cholesky::llt::factor::LltError::NonPositivePivot { index } => reversed(index),
    })?;
    for j in 1..k {
        for i in 0..j {
            l[(i, j)] = 0.0;
        }
    }
    let mut l_inv = Mat::<f64>::zeros(k, k);
    invert_lower_triangular(l_inv.as_mut(), l.as_ref(), Par::Seq);
    let mut u = vec![0.0f64; k * k];
    for i in 0..k {
        for j in i..k {
            u[i * k + j] = l_inv[(reversed(i), reversed(j))];
        }
    }
    Ok(u)
}

/// SpQR's outlier scale `mean_i(Var_n(W[i, :]) / U_ii²)` (variance over output columns).
fn spqr_outlier_scale(w: &[f64], hinv: &[f64], k: usize, n: usize) -> f64 {
    let denominator = if n > 1 { (n - 1) as f64 } else { 1.0 };
    (0..k)
        .map(|i| {
            let row = &w[i * n..(i + 1) * n];
            let mean = row.iter().sum::<f64>() / n as f64;
            let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / denominator;
            let d = hinv[i * k + i];
            var / (d * d)
        })
        .sum::<f64>()
        / k as f64
}

struct GptqContext<'a> {
    config: &'a QuantConfig,
    k: usize,
    block_size: usize,
    k_blocks: usize,
    max_code: u8,
    perm: &'a [usize],
    hinv: &'a [f64],
    lazy_batch: usize,
    outlier_threshold: Option<f64>,
}

struct ChunkResult {
    /// `[K, width]` in permuted row order.
    codes: Vec<u8>,
    /// `[width, k_blocks]`.
    params: Vec<BlockParams>,
    outliers: Vec<super::Outlier>,
    loss: f64,
}

impl GptqContext<'_> {
    /// GPTQ on the columns `first .. first + width`; `w` is their `[K, width]` slice in permuted
    /// row order and is consumed as scratch.
    fn run_chunk(&self, w: &mut [f64], first: usize, width: usize, fixed: Option<&[BlockParams]>) -> Result<ChunkResult, QuantError> {
        let (k, k_blocks, hinv) = (self.k, self.k_blocks, self.hinv);
        let mut params: Vec<Option<BlockParams>> = match fixed {
            Some(p) => p.iter().copied().map(Some).collect(),
            None => vec![None; width * k_blocks],
        };
        let mut codes = vec![0u8; k * width];
        let mut errors = vec![0.0f64; self.lazy_batch.min(k) * width];
        let mut outliers = Vec::new();
        let mut loss = 0.0;
        let mut values = Vec::with_capacity(self.block_size);

        for batch_start in (0..k).step_by(self.lazy_batch) {
            let batch_end = (batch_start + self.lazy_batch).min(k);
            for i in batch_start..batch_end {
                let row = self.perm[i];
                let block = row / self.block_size;
                if fixed.is_none() && row.is_multiple_of(self.block_size) {
                    // Without act-order the permutation is the identity, so the block is rows
                    // i .. i + block_size. Rows past this lazy batch still lack the updates of
                    // rows batch_start .. i; add them so the fit sees the current weights.
                    let block_end = (i + self.block_size).min(k);
                    for col in 0..width {
                        values.clear();
                        for r in i..block_end {
                            let mut v = w[r * width + col];
                            if r >= batch_end {
                                for p in batch_start..i {
                                    v -= hinv[p * k + r] * errors[(p - batch_start) * width + col];
                                }
                            }
                            values.push(v as f32);
                        }
                        let p = fit_rtn(&values, self.config).map_err(|e| fit_error(e, block, first + col, self.config))?;
                        params[col * k_blocks + block] = Some(p);
                    }
                }
                let d = hinv[i * k + i];
                let err_row = &mut errors[(i - batch_start) * width..(i - batch_start + 1) * width];
                for col in 0..width {
                    let p = params[col * k_blocks + block].expect("block parameters are fitted at the block's first row");
                    let value = w[i * width + col];
                    let code = p.encoder(self.max_code).encode(value as f32);
                    let mut reconstructed = p.decode(code) as f64;
                    if let Some(threshold) = self.outlier_threshold {
                        let scaled = (value - reconstructed) / d;
                        if scaled * scaled > threshold {
                            let delta = half::f16::from_f32((value - reconstructed) as f32);
                            if delta.is_finite() && delta.to_f32() != 0.0 {
                                outliers.push(super::Outlier { row: row as u32, col: (first + col) as u32, delta });
                                reconstructed += delta.to_f32() as f64;
                            }
                        }
                    }
                    codes[i * width + col] = code;
                    let e = value - reconstructed;
                    loss += e * e / (d * d) / 2.0;
                    err_row[col] = e / d;
                }
                // Spread the error over the rest of the lazy batch now ...
                for j in i + 1..batch_end {
                    let u = hinv[i * k + j];
                    let target = &mut w[j * width..(j + 1) * width];
                    for (t, e) in target.iter_mut().zip(err_row.iter()) {
                        *t -= u * e;
                    }
                }
            }
            // ... and over the rows after it in one matrix product.
            if batch_end < k {
                let rows = batch_end - batch_start;
                let dst = MatMut::from_row_major_slice_mut(&mut w[batch_end * width..], k - batch_end, width);
                let u = MatRef::from_row_major_slice(hinv, k, k).submatrix(batch_start, batch_end, rows, k - batch_end);
                let e = MatRef::from_row_major_slice(&errors[..rows * width], rows, width);
                matmul(dst, Accum::Add, u.transpose(), e, -1.0, Par::Seq);
            }
        }
        let params = params.into_iter().map(|p| p.expect("every block has a first row")).collect();
        Ok(ChunkResult { codes, params, outliers, loss })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upper_cholesky_of_inverse_matches_the_reference_chain() {
        let k = 37;
        // A well-conditioned SPD matrix: B Bᵀ + k I.
        let b = Mat::<f64>::from_fn(k, k, |i, j| ((i * 31 + j * 17) % 23) as f64 / 23.0 - 0.5);
        let a = &b * b.transpose() + Mat::<f64>::identity(k, k) * faer::Scale(k as f64);
        let h: Vec<f64> = (0..k * k).map(|i| a[(i / k, i % k)]).collect();
        let u = upper_cholesky_of_inverse(&h, k).unwrap();
        // Reference: inverse via Llt, then the upper factor of its Cholesky.
        let inv = faer::linalg::solvers::DenseSolveCore::inverse(&a.llt(faer::Side::Lower).unwrap());
        let l2 = inv.llt(faer::Side::Lower).unwrap();
        for i in 0..k {
            for j in 0..k {
                let want = if j >= i { l2.L()[(j, i)] } else { 0.0 };
                assert!((u[i * k + j] - want).abs() < 1e-12, "[{i},{j}] {} vs {want}", u[i * k + j]);
            }
        }
    }

    #[test]
    fn not_positive_definite_is_reported() {
        let h = vec![1.0, 2.0, 2.0, 1.0];
        assert_eq!(upper_cholesky_of_inverse(&h, 2), Err(0));
    }

    #[test]
    fn accumulator_streams_batches() {
        let k = 5;
        let x: Vec<f32> = (0..7 * k).map(|i| ((i * 13) % 11) as f32 - 5.0).collect();
        let mut acc = HessianAccumulator::new(k);
        acc.add_batch(&x[..3 * k], 3).unwrap();
        acc.add_batch(&x[3 * k..], 4).unwrap();
        let h = acc.hessian().unwrap();
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..7).map(|r| x[r * k + i] as f64 * x[r * k + j] as f64).sum::<f64>() * 2.0 / 7.0;
                assert!((h.get(i, j) - want).abs() < 1e-9);
            }
        }
        assert_eq!(HessianAccumulator::new(3).hessian().unwrap_err(), QuantError::NoCalibrationData);
        // Several column chunks, a short last one, and values that round in f32: exactly
        // symmetric, and within f32 rounding of the f64 sum.
        let (k, rows) = (150, 40);
        let x: Vec<f32> = (0..rows * k).map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0).collect();
        let mut acc = HessianAccumulator::new(k);
        acc.add_batch(&x[..25 * k], 25).unwrap();
        acc.add_batch(&x[25 * k..], 15).unwrap();
        let h = acc.hessian().unwrap();
        for i in 0..k {
            for j in 0..k {
                let want: f64 = (0..rows).map(|r| x[r * k + i] as f64 * x[r * k + j] as f64).sum::<f64>() * 2.0 / rows as f64;
                let scale: f64 = (0..rows).map(|r| (x[r * k + i] as f64 * x[r * k + j] as f64).abs()).sum::<f64>() * 2.0 / rows as f64;
                assert!((h.get(i, j) - want).abs() <= 1e-6 * scale, "({i}, {j}): {} vs {want}", h.get(i, j));
                assert_eq!(h.get(i, j), h.get(j, i));
            }
        }
        let err = acc.add_batch(&[f32::NAN; 5], 1).unwrap_err().to_string();
        assert!(err.contains("calibration activations"), "{err}");
    }
}
