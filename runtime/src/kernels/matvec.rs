//! Products of a few rows of activations by a weight matrix (a decoder step's projections and
//! LM head), streaming the weight once from memory.
//!
//! Why: with one row the product is bound by how fast the weight is read, and `gemm`'s packing
//! and tiling (made for reuse of each weight element across many rows) reach about half the
//! memory bandwidth there. Here each weight element is loaded once, in address order, and used
//! for every row of A while it is in L1.
//!
//! B is read in place in either layout: rows contiguous (`[k, n]`, an `x · W` weight) or
//! columns contiguous (`[n, k]` read as its transpose, a tied embedding used as LM head).
//! Every output element is summed in one fixed order whatever the column range it falls in, so
//! results do not depend on how the columns are split over threads.

use std::ops::Range;

/// Rows of A up to which a product takes this path rather than `gemm`.
pub const MAX_ROWS: usize = 4;

/// How B (logically `[k, n]`) lies in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `B[l, j]` at `l · stride + j`: each row of B contiguous.
    Rows { stride: usize },
    /// `B[l, j]` at `j · stride + l`: each column of B contiguous.
    Columns { stride: usize },
}

/// Contracted rows per task when a narrow row-major B is split along its rows: each chunk's
/// partial sums are added in chunk order, whatever thread computed them.
pub const CHUNK_ROWS: usize = 64;

/// `0..len` in chunks of [`CHUNK_ROWS`]: how a product is split along its contracted rows.
pub fn row_chunks(len: usize) -> Vec<Range<usize>> {
    (0..len.div_ceil(CHUNK_ROWS)).map(|i| i * CHUNK_ROWS..((i + 1) * CHUNK_ROWS).min(len)).collect()
}

/// The chunks' partial products added into `out` in chunk order, whatever thread made each:
/// the same bits on any number of threads.
pub fn add_in_order(partials: &[Vec<f32>], out: &mut [f32]) {
    out.copy_from_slice(&partials[0]);
    for part in &partials[1..] {
        out.iter_mut().zip(part).for_each(|(s, p)| *s += p);
    }
}

/// Row-major Bs at least this wide are split by columns: each thread still reads long runs.
pub const WIDE_ROWS: usize = 4096;

/// Columns handed out together: range boundaries are multiples of this, so the vector loop and
/// its scalar tail always meet at the same columns.
pub const COLUMN_ALIGN: usize = 8;

/// `out[i · width + (j - cols.start)] = Σ_l a[i · a_stride + l] · B[l, j]` for the `m` rows of
/// `a` (`k` contiguous values each) and `j` in `cols`; `out` holds `m · cols.len()` values.
///
/// # Safety
/// `b` must be valid for reads of every `B[l, j]` with `l < k` and `j` in `cols` under `layout`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn product(a: &[f32], a_stride: usize, m: usize, k: usize, b: *const f32, layout: Layout, cols: Range<usize>, out: &mut [f32]) {
    debug_assert!(m == 0 || (a.len() >= (m - 1) * a_stride + k && out.len() >= m * cols.len()));
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features; the caller vouches for `b`.
        unsafe {
            match layout {
                // By the matrix's width, not the range's: the same sums whatever the split.
                Layout::Rows { stride } if stride >= WIDE_ROWS => wide_rows_avx2(a, a_stride, m, k, b.add(cols.start), stride, cols.len(), out),
                Layout::Rows { stride } => rows_avx2(a, a_stride, m, k, b.add(cols.start), stride, cols.len(), out),
                Layout::Columns { stride } => columns_avx2(a, a_stride, m, k, b.add(cols.start * stride), stride, cols.len(), out),
            }
        }
        return;
    }
    // SAFETY: as above.
    unsafe {
        match layout {
            Layout::Rows { stride } => rows_scalar(a, a_stride, m, k, b.add(cols.start), stride, cols.len(), out),
            Layout::Columns { stride } => columns_scalar(a, a_stride, m, k, b.add(cols.start * stride), stride, cols.len(), out),
        }
    }
}

/// Rows of B contiguous, narrower than [`WIDE_ROWS`]: each row of B is read whole, in order (one sequential stream, which
/// the hardware prefetcher follows; interleaving rows ran at two thirds of the bandwidth on
/// rows of 576), and used for every row of A. Rows are summed in blocks of eight into `block`
/// (in L1), each block then added to `out`: the long running sum takes one rounding per block,
/// which keeps sums over `k` of 1536 near a blocked gemm's accuracy.
///
/// # Safety
/// AVX2 and FMA available; `b` valid for `width` values at each of `k` rows `stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn rows_avx2(a: &[f32], a_stride: usize, m: usize, k: usize, b: *const f32, stride: usize, width: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    out[..m * width].fill(0.0);
    let mut block = vec![0f32; m * width];
    let vector_end = width / 8 * 8;
    let mut l = 0;
    // SAFETY (all pointer reads and writes below): rows `l + q` are below `k`, columns below
    // `width`; `block` and `out` hold `m · width` values.
    unsafe {
        while l < k {
            let rows = (k - l).min(8);
            for q in 0..rows {
                let row = b.add((l + q) * stride);
                for i in 0..m {
                    let x = a[i * a_stride + l + q];
                    let xv = _mm256_set1_ps(x);
                    let t = block.as_mut_ptr().add(i * width);
                    let mut j = 0;
                    if q == 0 {
                        while j < vector_end {
                            _mm256_storeu_ps(t.add(j), _mm256_mul_ps(xv, _mm256_loadu_ps(row.add(j))));
                            j += 8;
                        }
                        for j in vector_end..width {
                            *t.add(j) = x * *row.add(j);
                        }
                    } else {
                        while j < vector_end {
                            _mm256_storeu_ps(t.add(j), _mm256_fmadd_ps(xv, _mm256_loadu_ps(row.add(j)), _mm256_loadu_ps(t.add(j))));
                            j += 8;
                        }
                        for j in vector_end..width {
                            *t.add(j) = x.mul_add(*row.add(j), *t.add(j));
                        }
                    }
                }
            }
            for (o, t) in out[..m * width].iter_mut().zip(&block) {
                *o += t;
            }
            l += rows;
        }
    }
}

/// Rows of B contiguous and long (wider than [`WIDE_ROWS`]): blocks of eight rows read side by
/// side (eight long streams; a block's partial sums in registers), each block's share summed on
/// its own (two chains of four) before it joins `out`.
///
/// # Safety
/// AVX2 and FMA available; `b` valid for `width` values at each of `k` rows `stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn wide_rows_avx2(a: &[f32], a_stride: usize, m: usize, k: usize, b: *const f32, stride: usize, width: usize, out: &mut [f32]) {
    use std::arch::x86_64::*;
    out[..m * width].fill(0.0);
    let vector_end = width / 8 * 8;
    let mut l = 0;
    // SAFETY (all pointer reads and writes below): rows `l..l + 8` (or `l`) are below `k`,
    // columns below `width`; `out` holds `m · width` values.
    unsafe {
        while l + 8 <= k {
            let r: [*const f32; 8] = std::array::from_fn(|q| b.add((l + q) * stride));
            for i in 0..m {
                let x = &a[i * a_stride + l..i * a_stride + l + 8];
                let xv: [__m256; 8] = std::array::from_fn(|q| _mm256_set1_ps(x[q]));
                let acc = out.as_mut_ptr().add(i * width);
                let mut j = 0;
                while j < vector_end {
                    let mut t0 = _mm256_mul_ps(xv[0], _mm256_loadu_ps(r[0].add(j)));
                    let mut t1 = _mm256_mul_ps(xv[4], _mm256_loadu_ps(r[4].add(j)));
                    for q in 1..4 {
                        t0 = _mm256_fmadd_ps(xv[q], _mm256_loadu_ps(r[q].add(j)), t0);
                        t1 = _mm256_fmadd_ps(xv[q + 4], _mm256_loadu_ps(r[q + 4].add(j)), t1);
                    }
                    _mm256_storeu_ps(acc.add(j), _mm256_add_ps(_mm256_loadu_ps(acc.add(j)), _mm256_add_ps(t0, t1)));
                    j += 8;
                }
                for j in vector_end..width {
                    let mut t0 = x[0] * *r[0].add(j);
                    let mut t1 = x[4] * *r[4].add(j);
                    for q in 1..4 {
                        t0 = x[q].mul_add(*r[q].add(j), t0);
                        t1 = x[q + 4].mul_add(*r[q + 4].add(j), t1);
                    }
                    *acc.add(j) += t0 + t1;
                }
            }
            l += 8;
        }
        while l < k {
            let row = b.add(l * stride);
            for i in 0..m {
                let x = a[i * a_stride + l];
                let xv = _mm256_set1_ps(x);
                let acc = out.as_mut_ptr().add(i * width);
                let mut j = 0;
                while j < vector_end {
                    let s = _mm256_fmadd_ps(xv, _mm256_loadu_ps(row.add(j)), _mm256_loadu_ps(acc.add(j)));
                    _mm256_storeu_ps(acc.add(j), s);
                    j += 8;
                }
                for j in vector_end..width {
                    *acc.add(j) = x.mul_add(*row.add(j), *acc.add(j));
                }
            }
            l += 1;
        }
    }
}

/// Columns of B contiguous: dot products, one column after the other so that the weight is
/// read as one sequential stream (which the hardware prefetcher follows; four interleaved
/// columns ran at half the bandwidth), each row of A against the column while it is in L1.
///
/// # Safety
/// AVX2 and FMA available; `b` valid for `k` values at each of `width` columns `stride` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn columns_avx2(a: &[f32], a_stride: usize, m: usize, k: usize, b: *const f32, stride: usize, width: usize, out: &mut [f32]) {
    // SAFETY: column `j` is below `width`.
    unsafe {
        for j in 0..width {
            let col = b.add(j * stride);
            for i in 0..m {
                out[i * width + j] = dot_avx2(a[i * a_stride..].as_ptr(), col, k);
            }
        }
    }
}

/// The dot product of `x` and `y`, `k` long: four 8-lane accumulators (32 values a step, then
/// 8), summed pairwise, reduced, then the scalar tail.
///
/// # Safety
/// AVX2 and FMA available; `x` and `y` valid for `k` reads.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn dot_avx2(x: *const f32, y: *const f32, k: usize) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: every read is below `k`.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut l = 0;
        while l + 32 <= k {
            for (q, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(l + 8 * q)), _mm256_loadu_ps(y.add(l + 8 * q)), *acc);
            }
            l += 32;
        }
        while l + 8 <= k {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(x.add(l)), _mm256_loadu_ps(y.add(l)), acc[0]);
            l += 8;
        }
        let s = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
        let half = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps::<1>(s));
        let quarter = _mm_add_ps(half, _mm_movehl_ps(half, half));
        let single = _mm_add_ss(quarter, _mm_movehdup_ps(quarter));
        let mut total = _mm_cvtss_f32(single);
        for t in l..k {
            total = (*x.add(t)).mul_add(*y.add(t), total);
        }
        total
    }
}

/// [`rows_avx2`] without SIMD.
///
/// # Safety
/// As [`rows_avx2`], but any CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn rows_scalar(a: &[f32], a_stride: usize, m: usize, k: usize, b: *const f32, stride: usize, width: usize, out: &mut [f32]) {
    out[..m * width].fill(0.0);
    for l in 0..k {
        // SAFETY: row `l` is below `k` and holds `width` readable values.
        let row = unsafe { std::slice::from_raw_parts(b.add(l * stride), width) };
        for i in 0..m {
            let x = a[i * a_stride + l];
            for (acc, &w) in out[i * width..(i + 1) * width].iter_mut().zip(row) {
                *acc += x * w;
            }
        }
    }
}

/// [`columns_avx2`] without SIMD.
///
/// # Safety
/// As [`columns_avx2`], but any CPU.
#[allow(clippy::too_many_arguments)]
unsafe fn columns_scalar(a: &[f32], a_stride: usize, m: usize, k: usize, b: *const f32, stride: usize, width: usize, out: &mut [f32]) {
    for j in 0..width {
        // SAFETY: column `j` is below `width` and holds `k` readable values.
        let col = unsafe { std::slice::from_raw_parts(b.add(j * stride), k) };
        for i in 0..m {
            out[i * width + j] = a[i * a_stride..i * a_stride + k].iter().zip(col).map(|(x, w)| x * w).sum();
        }
    }
}

/// `parts` column ranges covering `0..n`, boundaries on multiples of [`COLUMN_ALIGN`] (the
/// last ones may be empty when `n` is small).
pub fn column_ranges(n: usize, parts: usize) -> Vec<Range<usize>> {
    let bound = |p: usize| if p == parts { n } else { (p * n / parts) / COLUMN_ALIGN * COLUMN_ALIGN };
    (0..parts).map(|p| bound(p)..bound(p + 1)).filter(|r| !r.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as values;

    /// Every shape and both layouts against a plain triple loop, over column ranges that split
    /// the columns in several ways; the split never changes a bit of the result.
    #[test]
    fn matches_naive_product_in_both_layouts() {
        for (m, k, n) in [(1, 20, 4100), (2, 9, 4097), (1, 1, 1), (1, 3, 5), (2, 7, 9), (3, 17, 33), (4, 64, 40), (1, 576, 100), (4, 45, 23), (1, 8, 8), (2, 16, 3)] {
            let a = values(m * k, 1);
            let rows = values(k * n, 2);
            // The same matrix stored column by column, with padding between columns.
            let pad = 3;
            let mut columns = vec![f32::NAN; n * (k + pad)];
            for l in 0..k {
                for j in 0..n {
                    columns[j * (k + pad) + l] = rows[l * n + j];
                }
            }
            let want: Vec<f32> = (0..m).flat_map(|i| (0..n).map(|j| (0..k).map(|l| a[i * k + l] as f64 * rows[l * n + j] as f64).sum::<f64>() as f32).collect::<Vec<_>>()).collect();
            for (b, layout) in [(rows.as_ptr(), Layout::Rows { stride: n }), (columns.as_ptr(), Layout::Columns { stride: k + pad })] {
                let mut whole = vec![0f32; m * n];
                // SAFETY: the buffers hold the whole matrix in `layout`.
                unsafe { product(&a, k, m, k, b, layout, 0..n, &mut whole) };
                for (g, w) in whole.iter().zip(&want) {
                    assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{m}x{k}x{n} {layout:?}: {g} against {w}");
                }
                for parts in [2, 3, 7] {
                    let mut split = vec![0f32; m * n];
                    for cols in column_ranges(n, parts) {
                        let mut part = vec![0f32; m * cols.len()];
                        // SAFETY: as above.
                        unsafe { product(&a, k, m, k, b, layout, cols.clone(), &mut part) };
                        for i in 0..m {
                            split[i * n + cols.start..i * n + cols.end].copy_from_slice(&part[i * cols.len()..(i + 1) * cols.len()]);
                        }
                    }
                    assert_eq!(split.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), whole.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{m}x{k}x{n} {layout:?} in {parts}");
                }
            }
        }
    }

    #[test]
    fn column_ranges_cover_all_columns_on_aligned_bounds() {
        for n in [0, 1, 7, 8, 9, 100, 576, 49152] {
            for parts in 1..5 {
                let ranges = column_ranges(n, parts);
                assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), n);
                assert!(ranges.windows(2).all(|w| w[0].end == w[1].start && w[1].start % COLUMN_ALIGN == 0));
            }
        }
    }
}
