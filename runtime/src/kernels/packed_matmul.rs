//! Products of activations by a constant weight that was laid out once, when the plan was
//! made, for an AVX-512 kernel (as onnxruntime's MLAS packs its weights at session creation).
//!
//! Why: `gemm` packs B on every call. For a linear layer of a short sequence (MiniLM at 64
//! tokens: 64×384 by 384×1536) that packing, which reads the whole weight from memory and writes
//! it again, costs about a fifth of the product. Packed here once, each weight is read once per
//! run, in address order, straight into the kernel.
//!
//! Layout: the weight `[k, n]` is cut into blocks of [`DEPTH`] contracted rows and, within a
//! block, panels of [`PANEL`] columns (the last zero-padded); a panel's rows are contiguous, so
//! one kernel call reads one contiguous run of memory. Each output element is summed in one fixed
//! order (block by block, each block in row order), whatever rows or columns a task covers, so
//! results do not depend on the number of threads.

use super::SendPtr;
use super::matmul::{GemmMatMul, WeightLayout};
use std::ops::Range;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::konst::Const;

/// Columns per packed panel: two AVX-512 registers.
pub const PANEL: usize = 32;
/// Contracted rows per block: one panel of a block (32 KB) stays in L1 while every row of A
/// goes through it.
pub const DEPTH: usize = 256;
/// Rows of A per kernel call: 24 accumulator registers of the 32.
const TILE_ROWS: usize = 12;
/// Rows of A per task: their block of A (`ROWS_PER_TASK × DEPTH` floats, 192 KB) stays in L2
/// while the task's panels go by.
const ROWS_PER_TASK: usize = 192;
/// Multiply-adds below which a product stays on the calling thread.
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Sixteen floats on a cache line: the packed weight's unit, so every panel row is aligned.
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(C, align(64))]
struct Line([f32; 16]);

/// A `[k, n]` weight laid out for [`PackedWeight::multiply`].
#[derive(Clone, PartialEq)]
pub struct PackedWeight {
    k: usize,
    n: usize,
    lines: Vec<Line>,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight({}x{})", self.k, self.n)
    }
}

/// True when this machine runs the packed kernel (AVX-512F); elsewhere products stay on `gemm`.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

impl PackedWeight {
    /// Packs `w`, a `[k, n]` matrix stored as `layout` says (`[n, k]` when transposed).
    pub fn pack(w: &[f32], layout: WeightLayout, k: usize, n: usize) -> PackedWeight {
        assert_eq!(w.len(), k * n, "a {k}x{n} weight");
        let panels = n.div_ceil(PANEL);
        let mut lines = vec![Line([0.0; 16]); k * panels * 2];
        let mut at = 0;
        for block in (0..k).step_by(DEPTH) {
            let depth = DEPTH.min(k - block);
            for p in 0..panels {
                let cols = p * PANEL..(p * PANEL + PANEL).min(n);
                for l in block..block + depth {
                    let row = &mut lines[at..at + 2];
                    for (i, j) in cols.clone().enumerate() {
                        row[i / 16].0[i % 16] = match layout {
                            WeightLayout::RowMajor => w[l * n + j],
                            WeightLayout::Transposed => w[j * k + l],
                        };
                    }
                    at += 2;
                }
            }
        }
        PackedWeight { k, n, lines }
    }

    /// Bytes held.
    pub fn size(&self) -> usize {
        self.lines.len() * std::mem::size_of::<Line>()
    }

    /// `C[i, j] = Σ_l A[i, l] · W[l, j]` for the `m` rows of A (row `i` at `a[i * lda..]`, its
    /// `k` values contiguous) into C (row `i` at `c[i * ldc..]`, `n` values), on the calling
    /// thread or the session's pool. Fails on a machine without AVX-512F (see [`available`]) and
    /// on operands too short for `m` rows.
    pub fn multiply(&self, a: &[f32], lda: usize, m: usize, c: &mut [f32], ldc: usize) -> TractResult<()> {
        ensure!(available(), "the packed kernel needs AVX-512F");
        let (k, n) = (self.k, self.n);
        if m == 0 || n == 0 {
            return Ok(());
        }
        ensure!(lda >= k && ldc >= n && a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n, "operands too short for {m} rows of a {k}x{n} product");
        if k == 0 {
            (0..m).for_each(|i| c[i * ldc..i * ldc + n].fill(0.0));
            return Ok(());
        }
        let panels = n.div_ceil(PANEL);
        let pool = super::thread_pool(m * n * k >= MIN_PARALLEL_WORK);
        let threads = pool.as_ref().map_or(1, |p| p.current_num_threads());
        // Rows in chunks of equal size, each chunk's panels split in one part per thread: tasks
        // of about equal work, a multiple of the thread count.
        let chunks = m.div_ceil(ROWS_PER_TASK);
        let row_chunks: Vec<Range<usize>> = (0..chunks).map(|i| i * m / chunks..(i + 1) * m / chunks).collect();
        let parts = threads.min(panels);
        let tasks: Vec<(Range<usize>, Range<usize>)> = row_chunks.iter().flat_map(|rows| (0..parts).map(move |p| (rows.clone(), p * panels / parts..(p + 1) * panels / parts))).collect();
        let (a, c) = (SendPtr(a.as_ptr() as *mut f32), SendPtr(c.as_mut_ptr()));
        // SAFETY: the rows and panels of every task are within the operands (checked above),
        // and tasks write disjoint blocks of C.
        let run = |(rows, panels): &(Range<usize>, Range<usize>)| unsafe { self.block(a.get(), lda, rows.clone(), panels.clone(), c.get(), ldc) };
        match pool {
            Some(pool) => {
                use rayon::prelude::*;
                pool.install(|| tasks.par_iter().for_each(run));
            }
            None => tasks.iter().for_each(run),
        }
        Ok(())
    }

    /// The rows `rows` of C, columns of panels `panels`.
    ///
    /// # Safety
    /// A holds those rows (`k` values at `a + i * lda`), C their columns (at `c + i * ldc`).
    unsafe fn block(&self, a: *const f32, lda: usize, rows: Range<usize>, panels: Range<usize>, c: *mut f32, ldc: usize) {
        let (k, n) = (self.k, self.n);
        let all_panels = n.div_ceil(PANEL);
        let base = self.lines.as_ptr() as *const f32;
        for block in (0..k).step_by(DEPTH) {
            let depth = DEPTH.min(k - block);
            for p in panels.clone() {
                // SAFETY: blocks before this one hold DEPTH rows of every panel; the panel's
                // `depth` rows of PANEL floats follow its predecessors'.
                let b = unsafe { base.add((block * all_panels + p * depth) * PANEL) };
                let cols = PANEL.min(n - p * PANEL);
                let mut i = rows.start;
                while i < rows.end {
                    let tile = TILE_ROWS.min(rows.end - i);
                    // SAFETY: rows i..i+tile of A and C exist (the caller's rows), the panel
                    // has `depth` rows, and the block's columns are within C.
                    unsafe {
                        let (a, c) = (a.add(i * lda + block), c.add(i * ldc + p * PANEL));
                        tile_dispatch(tile, depth, a, lda, b, c, ldc, cols, block > 0);
                    }
                    i += tile;
                }
            }
        }
    }
}

/// `y[.., n] = Σ_l x[.., l] · W[l, n]` with `W` a constant packed at plan time (`l` may run
/// over several axes of `x`: its last `contracted` ones).
#[derive(Debug, Clone)]
pub struct PackedMatMul {
    pub weight: Arc<PackedWeight>,
    /// How many of `x`'s last axes are contracted (several: heads merged by an output projection).
    pub contracted: usize,
    /// Where each axis of `y` but the last comes from: an axis of `x`, or none (size 1). The
    /// axes of `x` not named are of size 1.
    pub out_axes: Vec<Option<usize>>,
}

impl PartialEq for PackedMatMul {
    fn eq(&self, other: &Self) -> bool {
        self.out_axes == other.out_axes && self.contracted == other.contracted && (Arc::ptr_eq(&self.weight, &other.weight) || self.weight == other.weight)
    }
}

impl Eq for PackedMatMul {}

impl Op for PackedMatMul {
    fn name(&self) -> StaticName {
        "PackedMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{}x{} weight, {} bytes packed", self.weight.k, self.weight.n, self.weight.size())])
    }

    op_as_typed_op!();
}

impl EvalOp for PackedMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let (k, n) = (self.weight.k, self.weight.n);
        let split = x.rank().checked_sub(self.contracted);
        ensure!(split.is_some_and(|s| x.shape()[s..].iter().product::<usize>() == k), "PackedMatMul: input of shape {:?} for a {k}x{n} weight", x.shape());
        let rows: usize = x.shape()[..x.rank() - self.contracted].iter().product();
        let mut shape: Vec<usize> = self.out_axes.iter().map(|a| a.map_or(1, |i| x.shape()[i])).collect();
        ensure!(shape.iter().product::<usize>() == rows, "PackedMatMul: input of shape {:?} for output axes {:?}", x.shape(), self.out_axes);
        shape.push(n);
        // SAFETY: `multiply` writes every element.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let px = x.try_as_plain_ram()?;
            let mut py = y.try_as_plain_ram_mut()?;
            self.weight.multiply(px.as_slice::<f32>()?, k, rows, py.as_slice_mut::<f32>()?, n)?;
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for PackedMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = self.out_axes.iter().map(|a| a.map_or(TDim::from(1), |i| inputs[0].shape[i].clone())).collect();
        shape.push(self.weight.n.into());
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// Replaces each [`GemmMatMul`] of activations by a constant f32 matrix (a linear layer) with
/// a [`PackedMatMul`] holding the matrix packed, when this machine has the kernel and nothing
/// else reads the matrix (which goes). Runs after [`super::matmul::replace_matmuls`] (and after
/// low-rank fusion, which takes its pairs first).
pub fn pack_linear_layers(model: &mut TypedModel) -> TractResult<()> {
    if !available() {
        return Ok(());
    }
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(op) = node.op_as::<GemmMatMul>() else { continue };
        let Some(weight) = model.nodes()[node.inputs[1].node].op_as::<Const>().map(|c| c.val().clone()) else { continue };
        // A weight read elsewhere too (an embedding tied to the LM head) stays where it is
        // rather than being held twice.
        if model.outlet_successors(node.inputs[1]).len() != 1 {
            continue;
        }
        if weight.datum_type() != f32::datum_type() || weight.is_exotic() {
            continue;
        }
        let x_rank = model.outlet_fact(node.inputs[0])?.rank();
        let Some((layout, contracted, out_axes)) = op.linear_layout(x_rank) else { continue };
        let (k, n) = match layout {
            WeightLayout::RowMajor => (weight.len() / weight.shape()[contracted], weight.shape()[contracted]),
            WeightLayout::Transposed => (weight.len() / weight.shape()[0], weight.shape()[0]),
        };
        let packed = PackedWeight::pack(weight.try_as_plain_ram()?.as_slice::<f32>()?, layout, k, n);
        let mut patch = TypedModelPatch::default();
        let x = patch.tap_model(model, node.inputs[0])?;
        let out = patch.wire_node(&node.name, PackedMatMul { weight: Arc::new(packed), contracted, out_axes }, &[x])?;
        patch.shunt_outside(model, id.into(), out[0])?;
        patch.apply(model)?;
    }
    // Drops the constants that fed only the replaced products.
    model.compact()?;
    Ok(())
}

/// One `rows × PANEL` tile, the kernel instance for its number of rows.
///
/// # Safety
/// As [`tile`].
#[allow(clippy::too_many_arguments)]
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
unsafe fn tile_dispatch(rows: usize, depth: usize, a: *const f32, lda: usize, b: *const f32, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as the caller's.
    unsafe {
        match rows {
            1 => tile::<1>(depth, a, lda, b, c, ldc, cols, accumulate),
            2 => tile::<2>(depth, a, lda, b, c, ldc, cols, accumulate),
            3 => tile::<3>(depth, a, lda, b, c, ldc, cols, accumulate),
            4 => tile::<4>(depth, a, lda, b, c, ldc, cols, accumulate),
            5 => tile::<5>(depth, a, lda, b, c, ldc, cols, accumulate),
            6 => tile::<6>(depth, a, lda, b, c, ldc, cols, accumulate),
            7 => tile::<7>(depth, a, lda, b, c, ldc, cols, accumulate),
            8 => tile::<8>(depth, a, lda, b, c, ldc, cols, accumulate),
            9 => tile::<9>(depth, a, lda, b, c, ldc, cols, accumulate),
            10 => tile::<10>(depth, a, lda, b, c, ldc, cols, accumulate),
            11 => tile::<11>(depth, a, lda, b, c, ldc, cols, accumulate),
            _ => tile::<TILE_ROWS>(depth, a, lda, b, c, ldc, cols, accumulate),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    unreachable!("the packed kernel is x86-64 only")
}

/// `C[r, j] (+)= Σ_l A[r, l] · B[l, j]` for `R` rows and the first `cols` of a panel's 32 columns,
/// over `depth` contracted rows; `accumulate` adds to C (a later block) instead of writing it.
///
/// # Safety
/// AVX-512F is available; A holds `R` rows of `depth` values (`a + r * lda`), B `depth` aligned
/// rows of 32, C `R` rows of `cols` values (`c + r * ldc`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize>(depth: usize, a: *const f32, lda: usize, b: *const f32, c: *mut f32, ldc: usize, cols: usize, accumulate: bool) {
    use std::arch::x86_64::*;
    let mut low = [_mm512_setzero_ps(); R];
    let mut high = [_mm512_setzero_ps(); R];
    for l in 0..depth {
        // SAFETY: within B's `depth` rows and A's rows (the caller's contract).
        unsafe {
            let b0 = _mm512_load_ps(b.add(l * PANEL));
            let b1 = _mm512_load_ps(b.add(l * PANEL + 16));
            for r in 0..R {
                let x = _mm512_set1_ps(*a.add(r * lda + l));
                low[r] = _mm512_fmadd_ps(x, b0, low[r]);
                high[r] = _mm512_fmadd_ps(x, b1, high[r]);
            }
        }
    }
    let mask = |from: usize| -> __mmask16 {
        if cols >= from + 16 {
            0xffff
        } else if cols <= from {
            0
        } else {
            (1u32 << (cols - from)) as u16 - 1
        }
    };
    let (m0, m1) = (mask(0), mask(16));
    for r in 0..R {
        // SAFETY: the masks keep the stores within the row's `cols` values.
        unsafe {
            let p = c.add(r * ldc);
            let (mut v0, mut v1) = (low[r], high[r]);
            if accumulate {
                v0 = _mm512_add_ps(_mm512_maskz_loadu_ps(m0, p), v0);
                v1 = _mm512_add_ps(_mm512_maskz_loadu_ps(m1, p.add(16)), v1);
            }
            _mm512_mask_storeu_ps(p, m0, v0);
            _mm512_mask_storeu_ps(p.add(16), m1, v1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as values;

    /// Every shape edge: rows not a multiple of the tile, columns not of the panel, contracted
    /// rows over several blocks, strided A and C, both weight layouts, one thread and three.
    #[test]
    fn matches_reference_product() {
        if !available() {
            eprintln!("skipped: no AVX-512F on this machine");
            return;
        }
        for (m, k, n) in [(1, 1, 1), (3, 5, 7), (13, 33, 31), (12, 256, 32), (25, 257, 33), (200, 600, 70), (4, 513, 65), (0, 4, 3), (3, 0, 4)] {
            let (lda, ldc) = (k + 3, n + 2);
            let a = values(m * lda, 1);
            let w = values(k * n, 2);
            for layout in [WeightLayout::RowMajor, WeightLayout::Transposed] {
                let packed = PackedWeight::pack(&w, layout, k, n);
                for threads in [1, 3] {
                    let mut c = vec![f32::NAN; m * ldc];
                    let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
                    tract_linalg::multithread::multithread_tract_scope(executor, || packed.multiply(&a, lda, m, &mut c, ldc)).unwrap();
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = c[i * ldc + j];
                            if j >= n {
                                assert!(got.is_nan(), "{m}x{k}x{n}: wrote past the row's end");
                                continue;
                            }
                            let want: f32 = (0..k)
                                .map(|l| {
                                    a[i * lda + l]
                                        * match layout {
                                            WeightLayout::RowMajor => w[l * n + j],
                                            WeightLayout::Transposed => w[j * k + l],
                                        }
                                })
                                .sum();
                            assert!((got - want).abs() <= 1e-4 * (1.0 + want.abs()), "{m}x{k}x{n} {layout:?} on {threads} threads at ({i}, {j}): {got} against {want}");
                        }
                    }
                }
            }
        }
    }

    /// The same bits on any number of threads.
    #[test]
    fn results_do_not_depend_on_threads() {
        if !available() {
            eprintln!("skipped: no AVX-512F on this machine");
            return;
        }
        let (m, k, n) = (300, 700, 100);
        let (a, w) = (values(m * k, 3), values(k * n, 4));
        let packed = PackedWeight::pack(&w, WeightLayout::RowMajor, k, n);
        let run = |threads: usize| {
            let mut c = vec![0f32; m * n];
            let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
            tract_linalg::multithread::multithread_tract_scope(executor, || packed.multiply(&a, k, m, &mut c, n)).unwrap();
            c
        };
        let one = run(1);
        for threads in [2, 3, 5] {
            assert!(run(threads).iter().zip(&one).all(|(x, y)| x.to_bits() == y.to_bits()), "{threads} threads");
        }
    }

    /// Linear layers of a model are packed, whatever their weight's layout or the number of
    /// contracted axes (heads merged by an output projection), unless the weight is shared;
    /// the packed model computes what the einsums did.
    #[test]
    fn packs_the_linear_layers_of_a_model() -> TractResult<()> {
        use tract_onnx::tract_core::ops::einsum::EinSum;
        if !available() {
            eprintln!("skipped: no AVX-512F on this machine");
            return Ok(());
        }
        // (einsum, x's shape, weight's shape, whether the weight has a second reader)
        let cases = [
            ("bsk,kn->bsn", vec![2, 5, 6], vec![6, 7], false),
            ("bsk,nk->bsn", vec![2, 5, 6], vec![7, 6], false),
            ("shd,hdn->sn", vec![5, 3, 4], vec![3, 4, 7], false),
            ("bsk,kn->bsn", vec![2, 5, 6], vec![6, 7], true),
        ];
        for (expr, x_shape, w_shape, shared) in cases {
            let build = || -> TractResult<TypedModel> {
                let mut model = TypedModel::default();
                let x = model.add_source("x", f32::fact(&x_shape))?;
                let w = model.add_const("w", Tensor::from_shape(&w_shape, &values(w_shape.iter().product(), 1))?)?;
                let y = model.wire_node("y", EinSum::new(expr.parse()?, f32::datum_type()), &[x, w])?[0];
                let mut outputs = vec![y];
                if shared {
                    outputs.push(model.wire_node("y_again", EinSum::new(expr.parse()?, f32::datum_type()), &[x, w])?[0]);
                }
                model.select_output_outlets(&outputs)?;
                Ok(model)
            };
            let mut model = build()?.into_decluttered()?;
            super::super::matmul::replace_matmuls(&mut model)?;
            pack_linear_layers(&mut model)?;
            let packed = model.nodes().iter().any(|n| n.op_is::<PackedMatMul>());
            assert_eq!(packed, !shared, "{expr}");
            let input = Tensor::from_shape(&x_shape, &values(x_shape.iter().product(), 2))?;
            let got = model.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
            let want = build()?.into_decluttered()?.into_runnable()?.run(tvec!(input.into_tvalue()))?;
            assert_eq!(got[0].shape(), want[0].shape(), "{expr}");
            let data = |t: &Tensor| -> TractResult<Vec<f32>> { Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()) };
            let (g, w) = (data(&got[0])?, data(&want[0])?);
            assert!(g.iter().zip(&w).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs())), "{expr}: {g:?} against {w:?}");
        }
        Ok(())
    }
}
