//! Fused block-dequantizing matmul: `Y = A · dequant(W)ᵀ (+ bias)` with `W` kept packed.
//!
//! `W` is `[N, K]` of unsigned 2-, 4- or 8-bit codes, stored as `com.microsoft.MatMulNBits`
//! lays it out: for each output column `n`, `k_blocks` blocks of `block_size` codes, each block
//! padded to whole bytes, low bits first. Code `q` of block `b` means `(q - zero[n, b]) * scale[n, b]`.
//!
//! The kernel never builds the f32 weight: it dequantizes a tile of output columns at a time,
//! block by block, into a small buffer, and multiplies that tile (dot products for a few rows
//! of `A`, a SIMD GEMM from the `gemm` crate for more).

use std::sync::Arc;

/// Output columns per tile on the direct (packed-bytes) path; the GEMM path dequantizes tiles of
/// `GEMM_COLUMN_TILE` columns one band of `GEMM_BAND` inputs at a time, so a band of a tile
/// is all of the weight that exists in f32 at any time, per thread.
const COLUMN_TILE: usize = 16;

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

    /// The dequantized weight row of output column `col`: `K` values, built block by block
    /// from the packed codes (the only f32 copy of the weight the kernel ever holds is a tile
    /// of such rows).
    pub fn dequantized_row(&self, col: usize, out: &mut [f32]) {
        self.dequantized_segment(col, 0..self.k_blocks(), out);
    }

    /// Like [`Self::dequantized_row`] for the inputs of blocks `blocks` only: `out` holds
    /// inputs `blocks.start * block_size .. min(blocks.end * block_size, K)`.
    fn dequantized_segment(&self, col: usize, blocks: std::ops::Range<usize>, out: &mut [f32]) {
        let kb = self.k_blocks();
        let per_block = self.bytes_per_block();
        let row = &self.packed[col * kb * per_block..(col + 1) * kb * per_block];
        let (scales, zeros) = (&self.scales[col * kb..(col + 1) * kb], &self.zeros[col * kb..(col + 1) * kb]);
        let base = blocks.start * self.block_size;
        for (block, bytes) in row.chunks_exact(per_block).enumerate().take(blocks.end).skip(blocks.start) {
            let lo = block * self.block_size;
            let hi = (lo + self.block_size).min(self.k);
            let segment = &mut out[lo - base..hi - base];
            unpack_codes(bytes, self.bits, segment);
            match &self.g_idx {
                // Act-order: each input picks its own block's scale and zero point.
                Some(g) => {
                    for (v, &b) in segment.iter_mut().zip(&g[lo..hi]) {
                        let b = b as usize;
                        *v = (*v - zeros[b]) * scales[b];
                    }
                }
                None => {
                    let (s, zs) = (scales[block], zeros[block] * scales[block]);
                    segment.iter_mut().for_each(|v| *v = *v * s - zs);
                }
            }
        }
    }

    /// [`Self::dequantized_segment`] with whole 4-bit blocks done in AVX2 when the CPU has it
    /// (the scalar unpacking was a fifth of the many-row path's time on int4 MiniLM). The same
    /// operations (`code · s − z·s`, no FMA), so the result is bit-identical.
    fn dequantized_segment_fast(&self, col: usize, blocks: std::ops::Range<usize>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if self.bits == 4 && self.g_idx.is_none() && (self.block_size / 2).is_multiple_of(8) && std::is_x86_feature_detected!("avx2") {
            let kb = self.k_blocks();
            let per_block = self.bytes_per_block();
            let row = &self.packed[col * kb * per_block..(col + 1) * kb * per_block];
            let base = blocks.start * self.block_size;
            for (block, bytes) in row.chunks_exact(per_block).enumerate().take(blocks.end).skip(blocks.start) {
                let lo = block * self.block_size;
                if lo + self.block_size > self.k {
                    // A short last block: the portable path.
                    self.dequantized_segment(col, block..block + 1, &mut out[lo - base..self.k - base]);
                    continue;
                }
                let (s, zs) = (self.scales[col * kb + block], self.zeros[col * kb + block] * self.scales[col * kb + block]);
                // SAFETY: the CPU has AVX2 (checked above); bytes hold block_size / 2 bytes, a
                // multiple of 8, and the output slice holds block_size values.
                unsafe { dequantize_block4_avx2(bytes, s, zs, &mut out[lo - base..lo - base + self.block_size]) };
            }
            return;
        }
        self.dequantized_segment(col, blocks, out)
    }

    /// `Σ_k a[k] · W[col, k]` read from the packed bytes: per block `s · Σ a·q - z·s · Σ a`,
    /// with `Σ a` of each block given. Blocks are a multiple of 16 codes (the last may be short).
    /// `a` is the activation row as [`DirectRow`] prepared it.
    fn packed_dot(&self, col: usize, a: &DirectRow) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the functions are compiled for (just checked).
            return unsafe { if self.bits == 4 { self.packed_dot4_avx2(col, a) } else { self.packed_dot_avx2(col, a) } };
        }
        self.packed_dot_body(col, a)
    }

    /// The 4-bit loop in AVX2 intrinsics: 8 bytes (16 codes) per step, widened to two vectors
    /// of 8 lanes (low and high nibbles) and fused-multiply-added with the even and odd
    /// activations. (The portable loop below vectorises to 4 lanes without FMA.)
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn packed_dot4_avx2(&self, col: usize, a: &DirectRow) -> f32 {
        use std::arch::x86_64::*;
        let kb = self.k_blocks();
        let per_block = self.bytes_per_block();
        let row = &self.packed[col * kb * per_block..(col + 1) * kb * per_block];
        let nibble = _mm256_set1_epi32(0x0F);
        let mut total = _mm256_setzero_ps();
        let mut offset = 0f32;
        for (block, bytes) in row.chunks_exact(per_block).enumerate() {
            let (s, z) = (self.scales[col * kb + block], self.zeros[col * kb + block]);
            let (even, odd) = (&a.even[block * per_block..][..per_block], &a.odd[block * per_block..][..per_block]);
            let (mut acc_even, mut acc_odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            // per_block is a multiple of 8 (blocks of whole multiples of 16 codes).
            for j in (0..per_block).step_by(8) {
                // SAFETY: j + 8 <= per_block, the length of bytes, even and odd.
                unsafe {
                    let codes = _mm256_cvtepu8_epi32(_mm_loadl_epi64(bytes.as_ptr().add(j) as *const __m128i));
                    let low = _mm256_cvtepi32_ps(_mm256_and_si256(codes, nibble));
                    let high = _mm256_cvtepi32_ps(_mm256_srli_epi32(codes, 4));
                    acc_even = _mm256_fmadd_ps(low, _mm256_loadu_ps(even.as_ptr().add(j)), acc_even);
                    acc_odd = _mm256_fmadd_ps(high, _mm256_loadu_ps(odd.as_ptr().add(j)), acc_odd);
                }
            }
            total = _mm256_fmadd_ps(_mm256_add_ps(acc_even, acc_odd), _mm256_set1_ps(s), total);
            offset += z * s * a.block_sums[block];
        }
        let mut lanes = [0f32; 8];
        // SAFETY: lanes holds 8 f32.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), total) };
        lanes.iter().sum::<f32>() - offset
    }

    /// The same loop compiled for AVX2 + FMA (the default target has only SSE2).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn packed_dot_avx2(&self, col: usize, a: &DirectRow) -> f32 {
        self.packed_dot_body(col, a)
    }

    #[inline(always)]
    fn packed_dot_body(&self, col: usize, a: &DirectRow) -> f32 {
        // Byte-wise loops over fixed-width chunks with no shuffles, so they vectorise: widen
        // 8 codes to f32 and multiply-add with the matching activations.
        const LANES: usize = 8;
        let kb = self.k_blocks();
        let per_block = self.bytes_per_block();
        let row = &self.packed[col * kb * per_block..(col + 1) * kb * per_block];
        let mut total = [0f32; LANES];
        let mut offset = 0f32;
        for (block, bytes) in row.chunks_exact(per_block).enumerate() {
            let (s, z) = (self.scales[col * kb + block], self.zeros[col * kb + block]);
            let mut acc = [0f32; LANES];
            if self.bits == 4 {
                // Byte j of the block holds codes 2j (low nibble) and 2j+1 (high nibble).
                let (even, odd) = (&a.even[block * per_block..][..per_block], &a.odd[block * per_block..][..per_block]);
                let mut acc_odd = [0f32; LANES];
                for ((b8, e8), o8) in bytes.chunks_exact(LANES).zip(even.chunks_exact(LANES)).zip(odd.chunks_exact(LANES)) {
                    for i in 0..LANES {
                        acc[i] += e8[i] * (b8[i] & 0x0F) as f32;
                        acc_odd[i] += o8[i] * (b8[i] >> 4) as f32;
                    }
                }
                acc.iter_mut().zip(acc_odd).for_each(|(x, y)| *x += y);
            } else {
                let values = &a.values[block * per_block..][..per_block];
                for (b8, a8) in bytes.chunks_exact(LANES).zip(values.chunks_exact(LANES)) {
                    for i in 0..LANES {
                        acc[i] += a8[i] * b8[i] as f32;
                    }
                }
            }
            for (t, v) in total.iter_mut().zip(acc) {
                *t += s * v;
            }
            offset += z * s * a.block_sums[block];
        }
        total.iter().sum::<f32>() - offset
    }

    /// `y[m, n] = Σ_k a[m, k] · W[n, k] (+ bias[n])` for `a` of `m` rows of `k`.
    ///
    /// Columns are processed in tiles, spread over the current tract executor's thread pool.
    /// A few rows of `a` are multiplied straight from the packed bytes; more rows go through a
    /// SIMD GEMM (the `gemm` crate), one band of K at a time: the band of the tile's weight rows
    /// is dequantized into a small buffer and its product accumulated into the tile's output.
    pub fn matmul(&self, a: &[f32], m: usize, y: &mut [f32]) {
        debug_assert_eq!(a.len(), m * self.k);
        debug_assert_eq!(y.len(), m * self.n);
        if m == 0 {
            return;
        }
        // A few rows against 4- or 8-bit blocks: straight from the packed bytes, nothing unpacked.
        let direct = m < GEMM_MIN_ROWS && self.g_idx.is_none() && self.bits != 2 && self.block_size.is_multiple_of(16);
        let tile_width = if direct { COLUMN_TILE } else { GEMM_COLUMN_TILE };
        let tiles = self.n.div_ceil(tile_width);
        let direct_rows: Vec<DirectRow> = if direct { a.chunks_exact(self.k).map(|row| DirectRow::new(row, self)).collect() } else { Vec::new() };
        let n = self.n;
        let y_out = OutputColumns(y.as_mut_ptr());
        // Each tile writes its own columns of `y` (row stride n): no per-tile buffer to copy.
        let run_tile = |tile: usize, w: &mut Vec<f32>| {
            let cols = tile * tile_width..((tile + 1) * tile_width).min(n);
            // SAFETY: tiles cover disjoint column ranges of `y`, which outlives every task, so
            // no two tasks write the same element and nothing reads `y` meanwhile.
            let dst = unsafe { y_out.at(cols.start) };
            if direct {
                for (j, col) in cols.clone().enumerate() {
                    for (row, a_row) in direct_rows.iter().enumerate() {
                        // SAFETY: row < m and cols.start + j < n: inside `y`.
                        unsafe { *dst.add(row * n + j) = self.packed_dot(col, a_row) };
                    }
                }
                return;
            }
            // Band by band along K: the dequantized band of the tile stays in cache, and each
            // product is as wide as the tile.
            let band_blocks = (GEMM_BAND / self.block_size).max(1);
            for first in (0..self.k_blocks()).step_by(band_blocks) {
                let blocks = first..(first + band_blocks).min(self.k_blocks());
                let k0 = first * self.block_size;
                let len = (blocks.end * self.block_size).min(self.k) - k0;
                w.resize(cols.len() * len, 0.0);
                for (j, col) in cols.clone().enumerate() {
                    self.dequantized_segment_fast(col, blocks.clone(), &mut w[j * len..(j + 1) * len]);
                }
                // SAFETY: `dst` addresses rows 0..m, columns cols of `y` with row stride n.
                unsafe { multiply_tile(&a[k0..], self.k, m, len, w, cols.len(), TileOutput { ptr: dst, row_stride: n, accumulate: first > 0 }) };
            }
        };
        let work = m * self.n * self.k;
        let pool = super::thread_pool(work >= 1 << 16 && tiles > 1);
        match pool {
            Some(pool) => {
                use rayon::prelude::*;
                let per_task = tiles.div_ceil(pool.current_num_threads() * 4).max(1);
                pool.install(|| {
                    (0..tiles.div_ceil(per_task)).into_par_iter().for_each(|task| {
                        let mut w = Vec::new();
                        for tile in task * per_task..((task + 1) * per_task).min(tiles) {
                            run_tile(tile, &mut w);
                        }
                    })
                });
            }
            None => {
                let mut w = Vec::new();
                for tile in 0..tiles {
                    run_tile(tile, &mut w);
                }
            }
        }
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(self.n) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
    }
}

/// Rows of `a` below which a tile is multiplied by dot products rather than a GEMM call.
const GEMM_MIN_ROWS: usize = 4;

/// Output columns per tile on the GEMM path, and inputs (K) per band: a dequantized band of a
/// tile is 64 × 256 f32 (64 KiB, within L2). Measured on MiniLM int4 and K = N = 4096: tiles
/// of 64 beat 16 (narrow products that repack the activations per tile) and 128 (too few tiles
/// to share out over two threads on N = 384).
const GEMM_COLUMN_TILE: usize = 64;
const GEMM_BAND: usize = 256;

/// Where a tile's product goes: row `r` at `ptr + r * row_stride`; with `accumulate` it is
/// added to what is there, else it replaces it.
struct TileOutput {
    ptr: *mut f32,
    row_stride: usize,
    accumulate: bool,
}

/// `out[r, j] (+)= Σ_k a[r, k] · w[j, k]` for a band of `k` inputs of a tile of `width`
/// dequantized weight rows; row `r` of `a` starts at `a[r * a_stride]`.
///
/// # Safety
/// `out` must address `m` rows of `width` writable f32 at its row stride, not overlapping `a`
/// or `w`, and not accessed by anyone else during the call.
unsafe fn multiply_tile(a: &[f32], a_stride: usize, m: usize, k: usize, w: &[f32], width: usize, out: TileOutput) {
    let TileOutput { ptr: out, row_stride: out_stride, accumulate } = out;
    assert!(m == 0 || a.len() >= (m - 1) * a_stride + k, "activation band out of range");
    assert!(w.len() >= width * k && out_stride >= width, "tile buffers too short");
    if m < GEMM_MIN_ROWS {
        for r in 0..m {
            let row = &a[r * a_stride..r * a_stride + k];
            for (j, w_row) in w.chunks_exact(k).take(width).enumerate() {
                // SAFETY: r < m and j < width: inside the caller's rows (see # Safety).
                let o = unsafe { &mut *out.add(r * out_stride + j) };
                *o = if accumulate { *o + dot(row, w_row) } else { dot(row, w_row) };
            }
        }
        return;
    }
    // SAFETY: the strides describe `a` as m×k with row stride `a_stride`, `w` as the k×width
    // matrix whose column j is w[j*k..(j+1)*k] (the asserts check both are that long), and
    // `out` as m×width with row stride `out_stride`, which the caller vouches for.
    unsafe {
        gemm::gemm(m, width, k, out, 1, out_stride as isize, accumulate, a.as_ptr(), 1, a_stride as isize, w.as_ptr(), k as isize, 1, 1.0, 1.0, false, false, false, gemm::Parallelism::None);
    }
}

/// `y`'s base pointer, shared by the tasks that each write their own columns of it.
#[derive(Clone, Copy)]
struct OutputColumns(*mut f32);
// SAFETY: the tasks holding it write disjoint elements (see `matmul`).
unsafe impl Send for OutputColumns {}
unsafe impl Sync for OutputColumns {}

impl OutputColumns {
    /// # Safety
    /// `offset` must lie inside `y`.
    unsafe fn at(&self, offset: usize) -> *mut f32 {
        // SAFETY: the caller keeps `offset` inside `y`.
        unsafe { self.0.add(offset) }
    }
}

/// Unsigned codes of one block as f32, low bits first; `out` holds the block's codes (the
/// last block of a row may be shorter than the bytes hold).
/// One block of 4-bit codes (low nibble first) to `code · s − zs`: 8 bytes, 16 codes per step.
/// Needs `bytes.len() % 8 == 0` and `out.len() == 2 * bytes.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn dequantize_block4_avx2(bytes: &[u8], s: f32, zs: f32, out: &mut [f32]) {
    use std::arch::x86_64::*;
    debug_assert!(bytes.len().is_multiple_of(8) && out.len() == 2 * bytes.len());
    let (scale, offset, nibble) = (_mm256_set1_ps(s), _mm256_set1_ps(zs), _mm_set1_epi8(0x0F));
    for (j, chunk) in bytes.chunks_exact(8).enumerate() {
        // SAFETY: chunk has 8 bytes; out has 16 values from 16 * j (checked by the caller).
        unsafe {
            let packed = _mm_loadl_epi64(chunk.as_ptr() as *const __m128i);
            let low = _mm_and_si128(packed, nibble);
            let high = _mm_and_si128(_mm_srli_epi16(packed, 4), nibble);
            // Codes in order: byte 0 low, byte 0 high, byte 1 low, ...
            let codes = _mm_unpacklo_epi8(low, high);
            let first = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
            let second = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8)));
            let dst = out.as_mut_ptr().add(16 * j);
            _mm256_storeu_ps(dst, _mm256_sub_ps(_mm256_mul_ps(first, scale), offset));
            _mm256_storeu_ps(dst.add(8), _mm256_sub_ps(_mm256_mul_ps(second, scale), offset));
        }
    }
}

fn unpack_codes(bytes: &[u8], bits: u32, out: &mut [f32]) {
    match bits {
        8 => out.iter_mut().zip(bytes).for_each(|(o, &b)| *o = b as f32),
        4 => {
            let full = out.len() / 2;
            for (pair, &b) in out[..full * 2].chunks_exact_mut(2).zip(bytes) {
                pair[0] = (b & 0x0F) as f32;
                pair[1] = (b >> 4) as f32;
            }
            if out.len() % 2 == 1 {
                out[full * 2] = (bytes[full] & 0x0F) as f32;
            }
        }
        _ => {
            let full = out.len() / 4;
            for (quad, &b) in out[..full * 4].chunks_exact_mut(4).zip(bytes) {
                quad[0] = (b & 3) as f32;
                quad[1] = ((b >> 2) & 3) as f32;
                quad[2] = ((b >> 4) & 3) as f32;
                quad[3] = (b >> 6) as f32;
            }
            for (i, o) in out[full * 4..].iter_mut().enumerate() {
                *o = ((bytes[full] >> (2 * i)) & 3) as f32;
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

/// One activation row for the direct (packed-bytes) path, prepared once per call and shared
/// by every output column: zero-padded to whole blocks (padded codes then add nothing), split
/// into even and odd positions for 4-bit weights (the two nibbles of a byte), and the sum of
/// each block (for the zero-point term).
struct DirectRow {
    /// 8-bit: the padded row.
    values: Vec<f32>,
    /// 4-bit: positions 0, 2, 4, ... and 1, 3, 5, ... of the padded row.
    even: Vec<f32>,
    odd: Vec<f32>,
    block_sums: Vec<f32>,
}

impl DirectRow {
    fn new(row: &[f32], w: &BlockQuantWeight) -> DirectRow {
        let mut values = row.to_vec();
        values.resize(w.k_blocks() * w.block_size, 0.0);
        let block_sums = row.chunks(w.block_size).map(|c| c.iter().sum::<f32>()).collect();
        if w.bits == 4 {
            let (even, odd) = values.chunks_exact(2).map(|p| (p[0], p[1])).unzip();
            DirectRow { values: Vec::new(), even, odd, block_sums }
        } else {
            DirectRow { values, even: Vec::new(), odd: Vec::new(), block_sums }
        }
    }
}

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
    fn fast_dequantization_is_bit_identical() {
        let mut seed = 0x5EED_u64;
        for (block, k) in [(16usize, 64usize), (32, 384), (64, 200), (128, 1000), (256, 512), (32, 33)] {
            let n = 3;
            let kb = k.div_ceil(block);
            let codes: Vec<u8> = (0..n * k).map(|_| (rng(&mut seed) % 16) as u8).collect();
            let scales: Vec<f32> = (0..n * kb).map(|_| (rng(&mut seed) % 1000) as f32 / 777.0 - 0.6).collect();
            let zeros: Vec<f32> = (0..n * kb).map(|_| (rng(&mut seed) % 16) as f32).collect();
            let w = BlockQuantWeight { n, k, bits: 4, block_size: block, packed: pack(&codes, 4, n, k, block), scales, zeros, g_idx: None, bias: None };
            w.validate().unwrap();
            for col in 0..n {
                for blocks in [0..kb, kb / 2..kb, 0..kb.div_ceil(2)] {
                    let len = (blocks.end * block).min(k) - blocks.start * block;
                    let (mut slow, mut fast) = (vec![0.0f32; len], vec![1.0f32; len]);
                    w.dequantized_segment(col, blocks.clone(), &mut slow);
                    w.dequantized_segment_fast(col, blocks.clone(), &mut fast);
                    assert!(slow.iter().zip(&fast).all(|(a, b)| a.to_bits() == b.to_bits()), "block {block}, k {k}, col {col}, blocks {blocks:?}");
                }
            }
        }
    }

    #[test]
    fn matches_the_dequantized_reference() {
        // Direct (packed-bytes) path for m < 4: 4- and 8-bit, short last blocks, several column
        // tiles; the dequantize-then-GEMM path for m >= 4 and for 2-bit, over several bands of K
        // (a short last band and block) and several column tiles.
        for (bits, block, k, n, m) in [
            (4u32, 32usize, 64usize, 5usize, 3usize),
            (2, 16, 40, 7, 2),
            (8, 128, 100, 9, 4),
            (4, 16, 17, 3, 1),
            (8, 16, 40, 5, 2),
            (4, 64, 200, 33, 2),
            (8, 32, 300, 20, 1),
            (4, 128, 1000, 17, 1),
            (4, 32, 600, 70, 5),
            (2, 16, 700, 5, 2),
            (8, 128, 1100, 130, 6),
        ] {
            let mut seed = 0x9E3779B97F4A7C15u64 ^ (bits as u64 * 31 + block as u64);
            let max = 1u64 << bits;
            let codes: Vec<u8> = (0..n * k).map(|_| (rng(&mut seed) % max) as u8).collect();
            let kb = k.div_ceil(block);
            let scales: Vec<f32> = (0..n * kb).map(|_| (rng(&mut seed) % 100) as f32 / 1000.0 + 0.01).collect();
            let zeros: Vec<f32> = (0..n * kb).map(|_| (rng(&mut seed) % max) as f32).collect();
            let a: Vec<f32> = (0..m * k).map(|_| (rng(&mut seed) % 2000) as f32 / 1000.0 - 1.0).collect();
            let w = BlockQuantWeight {
                n,
                k,
                bits,
                block_size: block,
                packed: pack(&codes, bits, n, k, block),
                scales: scales.clone(),
                zeros: zeros.clone(),
                g_idx: None,
                bias: Some((0..n).map(|i| i as f32).collect()),
            };
            w.validate().unwrap();
            // Whatever `y` held is overwritten, not accumulated onto.
            let mut y = vec![f32::NAN; m * n];
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

    /// Act-order weights: each input picks its own block's scale and zero point (`g_idx`),
    /// across several bands and tiles of the GEMM path.
    #[test]
    fn g_idx_picks_each_inputs_block() {
        let (bits, block, k, n, m) = (4u32, 32usize, 600usize, 70usize, 5usize);
        let mut seed = 0x1234_5678_9ABC_DEF0u64;
        let codes: Vec<u8> = (0..n * k).map(|_| (rng(&mut seed) % 16) as u8).collect();
        let kb = k.div_ceil(block);
        let scales: Vec<f32> = (0..n * kb).map(|_| (rng(&mut seed) % 100) as f32 / 1000.0 + 0.01).collect();
        let zeros: Vec<f32> = (0..n * kb).map(|_| (rng(&mut seed) % 16) as f32).collect();
        let g: Vec<u32> = (0..k).map(|_| (rng(&mut seed) % kb as u64) as u32).collect();
        let a: Vec<f32> = (0..m * k).map(|_| (rng(&mut seed) % 2000) as f32 / 1000.0 - 1.0).collect();
        let w = BlockQuantWeight { n, k, bits, block_size: block, packed: pack(&codes, bits, n, k, block), scales: scales.clone(), zeros: zeros.clone(), g_idx: Some(g.clone()), bias: None };
        w.validate().unwrap();
        let mut y = vec![0f32; m * n];
        w.matmul(&a, m, &mut y);
        for row in 0..m {
            for col in 0..n {
                let want: f64 = (0..k)
                    .map(|kk| {
                        let b = col * kb + g[kk] as usize;
                        a[row * k + kk] as f64 * ((codes[col * k + kk] as f64 - zeros[b] as f64) * scales[b] as f64)
                    })
                    .sum();
                let got = y[row * n + col] as f64;
                assert!((got - want).abs() < 1e-4 * (1.0 + want.abs()), "y[{row},{col}] = {got}, want {want}");
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
