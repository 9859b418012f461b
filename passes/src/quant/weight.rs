//! The quantized form of one weight matrix and its exact reconstruction.

use half::f16;
use rayon::prelude::*;

use super::grid::BlockParams;
use super::{QuantConfig, QuantError};

/// A weight `W [K, N]` (row-major, as it feeds `MatMul(x[.., K], W)`) after quantization.
///
/// Codes are **unsigned** in `[0, 2^bits - 1]`, one per element, in W's own `[K, N]` row-major
/// order; the reconstruction is `w_hat = (code - zero_point) * scale` for the block
/// `(n, k / block_size)`. Symmetric weights have no stored zero points: the zero point is the
/// implicit `2^(bits-1)` (the MatMulNBits default), and the packers turn such codes into signed
/// INT4/INT8/INT2 values by subtracting it.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedWeight {
    pub k: usize,
    pub n: usize,
    pub config: QuantConfig,
    /// Rows per block (K itself for per-channel).
    pub block_size: usize,
    /// `[K, N]` row-major.
    pub codes: Vec<u8>,
    /// `[N, k_blocks]` row-major; each value is exactly representable in `config.scale_dtype`.
    pub scales: Vec<f32>,
    /// `[N, k_blocks]`, present iff the config is asymmetric.
    pub zero_points: Option<Vec<u8>>,
    /// Sparse f16 corrections added on top of the dense reconstruction, sorted by (row, col).
    pub outliers: Vec<Outlier>,
}

/// One sparse correction: `w_hat[row, col] += delta` (row indexes K, col indexes N).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Outlier {
    pub row: u32,
    pub col: u32,
    pub delta: f16,
}

impl QuantizedWeight {
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.block_size)
    }

    /// Scale and zero point of block `block` of column `col`.
    pub fn params(&self, col: usize, block: usize) -> BlockParams {
        let i = col * self.k_blocks() + block;
        let zero_point = match &self.zero_points {
            Some(zp) => zp[i],
            None => self.config.mid_code(),
        };
        BlockParams { scale: self.scales[i], zero_point }
    }

    /// The reconstruction `[K, N]` the runtime computes: `(code - zero_point) * scale` in f32,
    /// plus the outlier corrections.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.k * self.n];
        if self.n == 0 {
            return out;
        }
        out.par_chunks_mut(self.block_size * self.n).enumerate().for_each(|(block, rows)| self.dequantize_block_row(block, rows));
        out
    }

    /// Writes the reconstruction of block row `block` (rows `block * block_size ..`, at most
    /// `block_size` of them) into `out`, outliers included. The per-column scale and zero
    /// point are looked up once per block row; `(code - zp) * scale` in f32 is exactly
    /// `BlockParams::decode` (both operands are small integers, exact in f32).
    pub fn dequantize_block_row(&self, block: usize, out: &mut [f32]) {
        let n = self.n;
        let first_row = block * self.block_size;
        let codes = &self.codes[first_row * n..][..out.len()];
        let (scales, zero_points): (Vec<f32>, Vec<f32>) = (0..n)
            .map(|col| {
                let p = self.params(col, block);
                (p.scale, p.zero_point as f32)
            })
            .unzip();
        for (out_row, code_row) in out.chunks_exact_mut(n).zip(codes.chunks_exact(n)) {
            for (((o, &c), &s), &z) in out_row.iter_mut().zip(code_row).zip(&scales).zip(&zero_points) {
                *o = (c as f32 - z) * s;
            }
        }
        // Outliers are sorted by (row, col): the block row's are one contiguous run.
        let rows = (first_row as u32)..((first_row + out.len() / n.max(1)) as u32);
        let start = self.outliers.partition_point(|o| o.row < rows.start);
        for o in self.outliers[start..].iter().take_while(|o| o.row < rows.end) {
            out[(o.row - rows.start) as usize * n + o.col as usize] += o.delta.to_f32();
        }
    }

    /// Adds sparse corrections for the `count` elements with the largest reconstruction error
    /// (ties broken by position, so the choice is deterministic). `weight` is the original W.
    pub fn add_top_outliers(&mut self, weight: &[f32], count: usize) -> Result<(), QuantError> {
        super::check_weight(weight, self.k, self.n)?;
        let dense = self.dequantize();
        let mut ranked: Vec<(f32, usize)> = weight.iter().zip(&dense).enumerate().map(|(i, (&w, &d))| ((w - d).abs(), i)).filter(|&(e, _)| e > 0.0).collect();
        let order = |a: &(f32, usize), b: &(f32, usize)| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1));
        let count = count.min(ranked.len());
        if count == 0 {
            return Ok(());
        }
        if count < ranked.len() {
            ranked.select_nth_unstable_by(count - 1, order);
            ranked.truncate(count);
        }
        for (_, i) in ranked {
            self.push_outlier(i / self.n, i % self.n, weight[i] - dense[i]);
        }
        self.sort_outliers();
        Ok(())
    }

    /// Adds (or merges into an existing) correction at `(row, col)`.
    pub(crate) fn push_outlier(&mut self, row: usize, col: usize, delta: f32) {
        let delta = f16::from_f32(delta);
        // A correction beyond f16's range would turn the weight into infinity: skip it.
        if delta.is_finite() && delta.to_f32() != 0.0 {
            self.outliers.push(Outlier { row: row as u32, col: col as u32, delta });
        }
    }

    pub(crate) fn sort_outliers(&mut self) {
        self.outliers.sort_by_key(|o| (o.row, o.col));
        // Merge duplicates so each position has one correction.
        self.outliers.dedup_by(|later, kept| {
            if (later.row, later.col) == (kept.row, kept.col) {
                kept.delta = f16::from_f32(kept.delta.to_f32() + later.delta.to_f32());
                true
            } else {
                false
            }
        });
    }
}
