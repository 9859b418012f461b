//! Fused block-dequantizing matmul: `Y = A · dequant(W)ᵀ (+ bias)` with `W` kept packed.
//!
//! `W` is `[N, K]` of unsigned 2-, 4- or 8-bit codes, stored as `com.microsoft.MatMulNBits`
//! lays it out: for each output column `n`, `k_blocks` blocks of `block_size` codes, each block
//! padded to whole bytes, low bits first. Code `q` of block `b` means `(q - zero[n, b]) * scale[n, b]`.
//!
//! The kernel never builds the f32 weight. For a tile of columns it unpacks one block of codes
//! at a time into a small buffer and uses
//! `Σ a·(q - z)·s = s·Σ a·q - z·s·Σ a`, where the block sums of `A` are computed once per row.

use std::sync::Arc;

/// Columns unpacked together, so each loaded row of `A` serves several dot products.
const COLUMN_TILE: usize = 4;

/// A packed low-bit weight with its per-block scales and zero points.
#[derive(Debug)]
pub struct BlockQuantWeight {
    /// Output features (rows of the packed weight).
    pub n: usize,
    /// Input features (the contracted dimension).
    pub k: usize,
    pub bits: u32,
    pub block_size: usize,
    /// Codes, `[n, k_blocks, bytes_per_block]`.
    pub packed: Vec<u8>,
    /// `[n, k_blocks]`.
    pub scales: Vec<f32>,
    /// `[n, k_blocks]`, in code units (so an unsigned code `q` dequantizes to `(q - zero) * scale`).
    pub zeros: Vec<f32>,
    /// Act-order: the block (scale and zero index) of each of the `k` inputs, when it is not `k / block_size`.
    pub g_idx: Option<Vec<u32>>,
    pub bias: Option<Vec<f32>>,
}

impl BlockQuantWeight {
    pub fn k_blocks(&self) -> usize {
        self.k.div_ceil(self.block_size)
    }

    pub fn bytes_per_block(&self) -> usize {
        (self.block_size * self.bits as usize).div_ceil(8)
    }

    /// Checks the sizes agree, so the kernel can index without bounds surprises.
    pub fn validate(&self) -> Result<(), String> {
        if ![2, 4, 8].contains(&self.bits) {
            return Err(format!("bits must be 2, 4 or 8, got {}", self.bits));
        }
        if self.block_size == 0 || self.n == 0 || self.k == 0 {
            return Err(format!("empty shape: N={} K={} block_size={}", self.n, self.k, self.block_size));
        }
        let blocks = self.n * self.k_blocks();
        let want = blocks * self.bytes_per_block();
        if self.packed.len() != want {
            return Err(format!("packed weight has {} bytes, N={} K={} bits={} block_size={} needs {want}", self.packed.len(), self.n, self.k, self.bits, self.block_size));
        }
        if self.scales.len() != blocks {
            return Err(format!("{} scales, need N*k_blocks = {blocks}", self.scales.len()));
        }
        if self.zeros.len() != blocks {
            return Err(format!("{} zero points, need N*k_blocks = {blocks}", self.zeros.len()));
        }
        if let Some(g) = &self.g_idx {
            if g.len() != self.k {
                return Err(format!("g_idx has {} entries, need K = {}", g.len(), self.k));
            }
            if let Some(bad) = g.iter().find(|&&b| b as usize >= self.k_blocks()) {
                return Err(format!("g_idx entry {bad} is not a block index (k_blocks = {})", self.k_blocks()));
            }
        }
        if let Some(b) = &self.bias
            && b.len() != self.n
        {
            return Err(format!("bias has {} entries, need N = {}", b.len(), self.n));
        }
        Ok(())
    }

    /// Codes of block `block` of column `col` as f32, into `out` (`len` = codes in that block).
    fn unpack_block(&self, col: usize, block: usize, out: &mut [f32]) {
        let per_block = self.bytes_per_block();
        let start = (col * self.k_blocks() + block) * per_block;
        let bytes = &self.packed[start..start + per_block];
        match self.bits {
            8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as f32),
            4 => {
                for (pair, &b) in out.chunks_mut(2).zip(bytes) {
                    pair[0] = (b & 0x0F) as f32;
                    if let Some(hi) = pair.get_mut(1) {
                        *hi = (b >> 4) as f32;
                    }
                }
            }
            _ => {
                for (quad, &b) in out.chunks_mut(4).zip(bytes) {
                    for (i, o) in quad.iter_mut().enumerate() {
                        *o = ((b >> (2 * i)) & 3) as f32;
                    }
                }
            }
        }
    }

    /// The dequantized weight row of column `col` (for tests and the act-order path).
    pub fn dequantized_row(&self, col: usize, out: &mut [f32]) {
        let kb = self.k_blocks();
        let mut codes = vec![0f32; self.block_size];
        for block in 0..kb {
            let lo = block * self.block_size;
            let hi = (lo + self.block_size).min(self.k);
            self.unpack_block(col, block, &mut codes[..hi - lo]);
            for (i, kk) in (lo..hi).enumerate() {
                let g = self.g_idx.as_ref().map_or(block, |g| g[kk] as usize);
                let (s, z) = (self.scales[col * kb + g], self.zeros[col * kb + g]);
                out[kk] = (codes[i] - z) * s;
            }
        }
    }

    /// `y[m, n] = Σ_k a[m, k] · W[n, k] (+ bias[n])` for `a` of `m` rows of `k`.
    /// Work is split over column tiles on the current tract executor's thread pool.
    pub fn matmul(&self, a: &[f32], m: usize, y: &mut [f32]) {
        debug_assert_eq!(a.len(), m * self.k);
        debug_assert_eq!(y.len(), m * self.n);
        if m == 0 {
            return;
        }
        let kb = self.k_blocks();
        // Σ a over each block of each row: the zero-point term needs nothing else.
        let block_sums: Vec<f32> = if self.g_idx.is_some() {
            Vec::new()
        } else {
            let mut sums = vec![0f32; m * kb];
            for (row, s) in a.chunks_exact(self.k).zip(sums.chunks_exact_mut(kb)) {
                for (b, chunk) in row.chunks(self.block_size).enumerate() {
                    s[b] = chunk.iter().sum();
                }
            }
            sums
        };
        let tiles = self.n.div_ceil(COLUMN_TILE);
        let run_tile = |tile: usize, out: &mut Vec<f32>| {
            let cols = tile * COLUMN_TILE..((tile + 1) * COLUMN_TILE).min(self.n);
            out.clear();
            out.resize(m * cols.len(), 0.0);
            if self.g_idx.is_some() {
                self.tile_act_order(a, m, cols, out);
            } else {
                self.tile_blocked(a, m, &block_sums, cols, out);
            }
        };
        let scatter = |tile: usize, out: &[f32], y: &mut [f32]| {
            let first = tile * COLUMN_TILE;
            let width = out.len() / m;
            for row in 0..m {
                y[row * self.n + first..row * self.n + first + width].copy_from_slice(&out[row * width..(row + 1) * width]);
            }
        };
        let work = m * self.n * self.k;
        let pool = match tract_linalg::multithread::current_tract_executor() {
            tract_linalg::multithread::Executor::MultiThread(pool) if pool.current_num_threads() > 1 && work >= 1 << 16 && tiles > 1 => Some(pool),
            _ => None,
        };
        match pool {
            Some(pool) => {
                use rayon::prelude::*;
                let threads = pool.current_num_threads();
                let per_task = tiles.div_ceil(threads * 4).max(1);
                let results: Vec<(usize, Vec<f32>)> = pool.install(|| {
                    (0..tiles.div_ceil(per_task))
                        .into_par_iter()
                        .flat_map_iter(|task| {
                            let mut outs = Vec::new();
                            for tile in task * per_task..((task + 1) * per_task).min(tiles) {
                                let mut out = Vec::new();
                                run_tile(tile, &mut out);
                                outs.push((tile, out));
                            }
                            outs
                        })
                        .collect()
                });
                for (tile, out) in results {
                    scatter(tile, &out, y);
                }
            }
            None => {
                let mut out = Vec::new();
                for tile in 0..tiles {
                    run_tile(tile, &mut out);
                    scatter(tile, &out, y);
                }
            }
        }
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(self.n) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
    }

    /// One tile of columns, blocks in order: `out` is `[m, cols.len()]`.
    fn tile_blocked(&self, a: &[f32], m: usize, block_sums: &[f32], cols: std::ops::Range<usize>, out: &mut [f32]) {
        let kb = self.k_blocks();
        let width = cols.len();
        let mut codes = vec![0f32; COLUMN_TILE * self.block_size];
        for block in 0..kb {
            let lo = block * self.block_size;
            let len = (lo + self.block_size).min(self.k) - lo;
            for (j, col) in cols.clone().enumerate() {
                self.unpack_block(col, block, &mut codes[j * self.block_size..j * self.block_size + len]);
            }
            for row in 0..m {
                let a_block = &a[row * self.k + lo..row * self.k + lo + len];
                let a_sum = block_sums[row * kb + block];
                for (j, col) in cols.clone().enumerate() {
                    let w = &codes[j * self.block_size..j * self.block_size + len];
                    let s = self.scales[col * kb + block];
                    let z = self.zeros[col * kb + block];
                    out[row * width + j] += s * (dot(a_block, w) - z * a_sum);
                }
            }
        }
    }

    /// Act-order weights: dequantize whole rows (one column at a time), since blocks are scattered over k.
    fn tile_act_order(&self, a: &[f32], m: usize, cols: std::ops::Range<usize>, out: &mut [f32]) {
        let width = cols.len();
        let mut w = vec![0f32; self.k];
        for (j, col) in cols.enumerate() {
            self.dequantized_row(col, &mut w);
            for row in 0..m {
                out[row * width + j] = dot(&a[row * self.k..(row + 1) * self.k], &w);
            }
        }
    }
}

/// Dot product with several independent accumulators, so the compiler vectorizes it.
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    const LANES: usize = 16;
    let mut acc = [0f32; LANES];
    let (a_main, a_rest) = a.split_at(a.len() - a.len() % LANES);
    let (b_main, b_rest) = b.split_at(a_main.len());
    for (x, y) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for i in 0..LANES {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

/// Shared handle, so ops and their clones point at one packed weight.
pub type SharedWeight = Arc<BlockQuantWeight>;

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(codes: &[u8], bits: u32, n: usize, k: usize, block: usize) -> Vec<u8> {
        let kb = k.div_ceil(block);
        let per_block = (block * bits as usize).div_ceil(8);
        let mut out = vec![0u8; n * kb * per_block];
        for col in 0..n {
            for kk in 0..k {
                let (b, i) = (kk / block, kk % block);
                let bit = i * bits as usize;
                out[(col * kb + b) * per_block + bit / 8] |= codes[col * k + kk] << (bit % 8);
            }
        }
        out
    }

    /// Deterministic pseudo-random numbers for tests (xorshift).
    fn rng(seed: &mut u64) -> u64 {
        *seed ^= *seed << 13;
        *seed ^= *seed >> 7;
        *seed ^= *seed << 17;
        *seed
    }

    #[test]
    fn matches_the_dequantized_reference() {
        for (bits, block, k, n, m) in [(4u32, 32usize, 64usize, 5usize, 3usize), (2, 16, 40, 7, 2), (8, 128, 100, 9, 4), (4, 16, 17, 3, 1)] {
            let mut seed = 0x9E3779B97F4A7C15u64 ^ (bits as u64 * 31 + block as u64);
            let max = 1u64 << bits;
            let codes: Vec<u8> = (0..n * k).map(|_| (rng(&mut seed) % max) as u8).collect();
            let kb = k.div_ceil(block);
            let scales: Vec<f32> = (0..n * kb).map(|_| (rng(&mut seed) % 100) as f32 / 1000.0 + 0.01).collect();
            let zeros: Vec<f32> = (0..n * kb).map(|_| (rng(&mut seed) % max) as f32).collect();
            let a: Vec<f32> = (0..m * k).map(|_| (rng(&mut seed) % 2000) as f32 / 1000.0 - 1.0).collect();
            let w = BlockQuantWeight { n, k, bits, block_size: block, packed: pack(&codes, bits, n, k, block), scales: scales.clone(), zeros: zeros.clone(), g_idx: None, bias: Some((0..n).map(|i| i as f32).collect()) };
            w.validate().unwrap();
            let mut y = vec![0f32; m * n];
            w.matmul(&a, m, &mut y);
            for row in 0..m {
                for col in 0..n {
                    let mut want = col as f64;
                    for kk in 0..k {
                        let b = col * kb + kk / block;
                        want += a[row * k + kk] as f64 * ((codes[col * k + kk] as f64 - zeros[b] as f64) * scales[b] as f64);
                    }
                    let got = y[row * n + col] as f64;
                    assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "bits {bits} block {block}: y[{row},{col}] = {got}, want {want}");
                }
            }
        }
    }

    #[test]
    fn inconsistent_sizes_are_refused() {
        let w = BlockQuantWeight { n: 2, k: 32, bits: 4, block_size: 32, packed: vec![0; 31], scales: vec![1.0; 2], zeros: vec![8.0; 2], g_idx: None, bias: None };
        assert!(w.validate().unwrap_err().contains("32"));
        let w = BlockQuantWeight { bits: 3, packed: vec![0; 32], ..w };
        assert!(w.validate().unwrap_err().contains("bits"));
    }
}
