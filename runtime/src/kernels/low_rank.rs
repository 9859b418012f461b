//! A low-rank linear layer `y = (x · A) · B` (what `factorize` emits) as one op: the two
//! products run back to back on each block of rows, the `rows × r` intermediate stays in the
//! task's cache, and the whole layer is one parallel region instead of two.
//!
//! Why: run as two matmuls, each product paid its own dispatch and thread wake-up and wrote the
//! intermediate out to memory, so a factorized layer with fewer multiply-adds than the dense one
//! could still take longer (one row: 0.105 against 0.038 ms at 384x1536).
//!
//! With a few rows (a decoder step) the rank is cut into a fixed number of slices; a task takes
//! one slice `js` through both products, `t[.., js] = x · A[.., js]` then `t[.., js] · B[js, ..]`,
//! and the slices' shares of y are added in slice order, so the result does not depend on the
//! thread count and no task waits for another between the products. A is stored transposed
//! for it (when fused), so that each slice reads a contiguous block of A and one of B. With more
//! rows, each task takes a block of rows through both products on `gemm`.

use super::SendPtr;
use super::matmul::{GemmMatMul, WeightLayout};
use super::matvec;
use std::ops::Range;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::konst::Const;

/// Rows of activations per task on the `gemm` path at most: the `rows × r` intermediate of a
/// task stays in L2 for the ranks `factorize` gives. Below it, one task per thread (as a lone
/// product is split): each task packs the weights again, and at 128 rows per task that cost
/// about 4% at 512 rows (384x1536, 576x1536).
const MAX_ROWS_PER_TASK: usize = 512;

/// Slices of the rank a few rows are split into (fewer when the rank is small): a fixed number,
/// so that the sum order does not depend on the thread count, and a multiple of common thread
/// counts, so that the slices share out evenly.
const RANK_SLICES: usize = 8;

/// Multiply-adds below which the layer runs on the calling thread.
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// `y[.., n] = Σ_j (Σ_l x[.., l] · A[l, j]) · B[j, n]` for `x` of shape `[.., k]`, `A` logically
/// `[k, r]` and `B` logically `[r, n]`, each weight in either layout.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LowRankMatMul {
    pub a: WeightLayout,
    pub b: WeightLayout,
    /// Where each axis of `y` but the last comes from: an axis of `x`, or none (size 1). The
    /// axes of `x` not named are of size 1 (tract drops and adds a batch of one around products).
    pub out_axes: Vec<Option<usize>>,
}

/// A weight's element `[row, col]` offset and its layout for the matrix-vector kernel.
fn strides(layout: WeightLayout, rows: usize, cols: usize) -> (isize, isize, matvec::Layout) {
    match layout {
        WeightLayout::RowMajor => (cols as isize, 1, matvec::Layout::Rows { stride: cols }),
        WeightLayout::Transposed => (1, rows as isize, matvec::Layout::Columns { stride: rows }),
    }
}

impl LowRankMatMul {
    /// The weights' logical shapes `(k, r, n)`, checked against each other and `x`.
    fn dims(&self, x: &[usize], a: &[usize], b: &[usize]) -> TractResult<(usize, usize, usize)> {
        let logical = |layout: WeightLayout, s: &[usize]| match layout {
            WeightLayout::RowMajor => (s[0], s[1]),
            WeightLayout::Transposed => (s[1], s[0]),
        };
        ensure!(a.len() == 2 && b.len() == 2 && !x.is_empty(), "LowRankMatMul: weights must be matrices");
        let ((k, r), (r2, n)) = (logical(self.a, a), logical(self.b, b));
        ensure!(r == r2 && x[x.len() - 1] == k, "LowRankMatMul: shapes {x:?}, {a:?} and {b:?} do not chain");
        ensure!((0..x.len() - 1).all(|i| self.out_axes.contains(&Some(i)) || x[i] == 1), "LowRankMatMul: axes of {x:?} outside {:?} must be of size 1", self.out_axes);
        Ok((k, r, n))
    }

    /// # Safety
    /// `x` holds `m · k` values, `a` and `b` the weights of logical shapes `[k, r]` and `[r, n]`
    /// in their layouts, `y` `m · n` values.
    #[allow(clippy::too_many_arguments)]
    unsafe fn compute(&self, x: &[f32], m: usize, k: usize, r: usize, n: usize, a: &[f32], b: &[f32], y: &mut [f32]) {
        if m == 0 || n == 0 {
            return;
        }
        if r == 0 || k == 0 {
            y.fill(0.0);
            return;
        }
        let pool = super::thread_pool(m * r * (k + n) >= MIN_PARALLEL_WORK);
        let (a_rs, a_cs, a_layout) = strides(self.a, k, r);
        let (b_rs, b_cs, b_layout) = strides(self.b, r, n);
        let (pa, pb, py) = (SendPtr(a.as_ptr() as *mut f32), SendPtr(b.as_ptr() as *mut f32), SendPtr(y.as_mut_ptr()));
        if m <= matvec::MAX_ROWS {
            // One parallel region: each task takes a fixed slice `js` of the rank, computes its
            // part of the intermediate `t[.., js] = x · A[.., js]` (every element summed over all
            // of k) and that part's share `t[.., js] · B[js, ..]` of y; the shares are added in
            // slice order. The slices do not depend on the thread count, so neither do the bits;
            // and no task waits for another between the two products.
            let slice = |js: &Range<usize>| {
                let mut t = vec![0f32; m * js.len()];
                let mut part = vec![0f32; m * n];
                // SAFETY: columns `js` of A and rows `js` of B are within them.
                unsafe {
                    matvec::product(x, k, m, k, pa.get(), a_layout, js.clone(), &mut t);
                    matvec::product(&t, js.len(), m, js.len(), pb.get().offset(js.start as isize * b_rs), b_layout, 0..n, &mut part);
                }
                part
            };
            let slices = matvec::column_ranges(r, RANK_SLICES.min(r.div_ceil(matvec::COLUMN_ALIGN)));
            let parts: Vec<Vec<f32>> = match pool {
                Some(pool) => {
                    use rayon::prelude::*;
                    pool.install(|| slices.par_iter().map(slice).collect())
                }
                None => slices.iter().map(slice).collect(),
            };
            matvec::add_in_order(&parts, y);
            return;
        }
        let px = SendPtr(x.as_ptr() as *mut f32);
        // Rows `rows` through both products; the intermediate in a task-local buffer.
        let block = |rows: Range<usize>| {
            let h = rows.len();
            let mut t = vec![0f32; h * r];
            // SAFETY: the rows are within x and y (tasks take disjoint rows of y); the weights'
            // strides come from their shapes.
            unsafe {
                let x0 = px.get().add(rows.start * k);
                gemm::gemm(h, r, k, t.as_mut_ptr(), 1, r as isize, false, x0, 1, k as isize, pa.get(), a_cs, a_rs, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
                let y0 = py.get().add(rows.start * n);
                gemm::gemm(h, n, r, y0, 1, n as isize, false, t.as_ptr(), 1, r as isize, pb.get(), b_cs, b_rs, 0.0, 1.0, false, false, false, gemm::Parallelism::None);
            }
        };
        let threads = pool.as_ref().map_or(1, |p| p.current_num_threads());
        let per_task = m.div_ceil(threads).min(MAX_ROWS_PER_TASK);
        let tasks: Vec<Range<usize>> = (0..m.div_ceil(per_task)).map(|i| i * per_task..((i + 1) * per_task).min(m)).collect();
        match pool {
            Some(pool) => {
                use rayon::prelude::*;
                pool.install(|| tasks.into_par_iter().for_each(block));
            }
            None => tasks.into_iter().for_each(block),
        }
    }
}

impl Op for LowRankMatMul {
    fn name(&self) -> StaticName {
        "LowRankMatMul".into()
    }

    op_as_typed_op!();
}

impl EvalOp for LowRankMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, a, b) = args_3!(inputs);
        let (k, r, n) = self.dims(x.shape(), a.shape(), b.shape())?;
        let m = x.len() / k.max(1);
        let mut shape: Vec<usize> = self.out_axes.iter().map(|a| a.map_or(1, |i| x.shape()[i])).collect();
        shape.push(n);
        // SAFETY: `compute` writes every element.
        let mut y = unsafe { Tensor::uninitialized::<f32>(&shape)? };
        {
            let (px, pa, pb) = (x.try_as_plain_ram()?, a.try_as_plain_ram()?, b.try_as_plain_ram()?);
            let mut py = y.try_as_plain_ram_mut()?;
            // SAFETY: shapes checked by `dims`.
            unsafe { self.compute(px.as_slice::<f32>()?, m, k, r, n, pa.as_slice::<f32>()?, pb.as_slice::<f32>()?, py.as_slice_mut::<f32>()?) };
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for LowRankMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = self.out_axes.iter().map(|a| a.map_or(TDim::from(1), |i| inputs[0].shape[i].clone())).collect();
        shape.push(match self.b {
            WeightLayout::RowMajor => inputs[2].shape[1].clone(),
            WeightLayout::Transposed => inputs[2].shape[0].clone(),
        });
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// The constant feeding `outlet`, when it is a Const node's f32 matrix.
fn constant_matrix(model: &TypedModel, outlet: OutletId) -> Option<()> {
    let node = &model.nodes()[outlet.node];
    let c = node.op_as::<Const>()?;
    (c.val().datum_type() == f32::datum_type() && c.val().rank() == 2 && !c.val().is_exotic()).then_some(())
}

/// Replaces each pair of [`GemmMatMul`]s `(x · A) · B` with constant matrices `A` and `B`,
/// where nothing else reads `x · A`, by one [`LowRankMatMul`]. Runs after
/// [`super::matmul::replace_matmuls`].
pub fn fuse_low_rank(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(second) = node.op_as::<GemmMatMul>() else { continue };
        let first_id = node.inputs[0].node;
        let first_node = &model.nodes()[first_id];
        let Some(first) = first_node.op_as::<GemmMatMul>() else { continue };
        if model.outlet_successors(node.inputs[0]).len() != 1 || model.outputs.contains(&node.inputs[0]) {
            continue;
        }
        if constant_matrix(model, node.inputs[1]).is_none() || constant_matrix(model, first_node.inputs[1]).is_none() {
            continue;
        }
        let x_rank = model.outlet_fact(first_node.inputs[0])?.rank();
        let Some((a, 1, middle_axes)) = first.linear_layout(x_rank) else { continue };
        let Some((b, 1, out_axes)) = second.linear_layout(middle_axes.len() + 1) else { continue };
        // The output's axes in terms of x's.
        let out_axes = out_axes.iter().map(|a| a.and_then(|j| middle_axes[j])).collect();
        let inputs = [first_node.inputs[0], first_node.inputs[1], node.inputs[1]];
        let mut patch = TypedModelPatch::default();
        let mut taps = inputs.iter().map(|&o| patch.tap_model(model, o)).collect::<TractResult<TVec<_>>>()?;
        // A stored transposed: the few-rows path reads each of A's columns as one contiguous
        // run (see `compute`). Its only reader is this op, so the original goes.
        let a = match a {
            WeightLayout::RowMajor if model.outlet_successors(first_node.inputs[1]).len() == 1 => {
                let original = model.nodes()[first_node.inputs[1].node].op_as::<Const>().expect("checked above").val();
                let transposed = (**original).clone().permute_axes(&[1, 0])?;
                taps[1] = patch.add_const(format!("{}.transposed", model.nodes()[first_node.inputs[1].node].name), transposed)?;
                WeightLayout::Transposed
            }
            a => a,
        };
        let out = patch.wire_node(&node.name, LowRankMatMul { a, b, out_axes }, &taps)?;
        patch.shunt_outside(model, id.into(), out[0])?;
        patch.apply(model)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as values;

    /// `x · A · B` in f64 by loops, weights in the given layouts.
    fn reference(x: &[f32], (m, k, r, n): (usize, usize, usize, usize), a: &[f32], al: WeightLayout, b: &[f32], bl: WeightLayout) -> Vec<f64> {
        let at = |l: usize, j: usize| if al == WeightLayout::RowMajor { a[l * r + j] } else { a[j * k + l] } as f64;
        let bt = |j: usize, c: usize| if bl == WeightLayout::RowMajor { b[j * n + c] } else { b[c * r + j] } as f64;
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            let t: Vec<f64> = (0..r).map(|j| (0..k).map(|l| x[i * k + l] as f64 * at(l, j)).sum()).collect();
            for c in 0..n {
                y[i * n + c] = (0..r).map(|j| t[j] * bt(j, c)).sum();
            }
        }
        y
    }

    fn run(op: &LowRankMatMul, x: &[f32], (m, k, r, n): (usize, usize, usize, usize), a: &[f32], b: &[f32], threads: usize) -> Vec<f32> {
        let mut y = vec![f32::NAN; m * n];
        let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
        // SAFETY: the buffers have the sizes `compute` wants.
        tract_linalg::multithread::multithread_tract_scope(executor, || unsafe { op.compute(x, m, k, r, n, a, b, &mut y) });
        y
    }

    #[test]
    fn matches_the_two_products_in_every_layout_and_thread_count() {
        use WeightLayout::*;
        for (m, k, r, n) in [(1, 384, 276, 1536), (3, 20, 70, 9), (4, 64, 1, 5), (5, 17, 33, 40), (128, 96, 31, 100), (33, 8, 130, 7), (1, 1, 1, 1)] {
            let x = values(m * k, 1);
            let (a, b) = (values(k * r, 2), values(r * n, 3));
            for (al, bl) in [(RowMajor, RowMajor), (Transposed, RowMajor), (RowMajor, Transposed), (Transposed, Transposed)] {
                let op = LowRankMatMul { a: al, b: bl, out_axes: vec![Some(0)] };
                let want = reference(&x, (m, k, r, n), &a, al, &b, bl);
                let one = run(&op, &x, (m, k, r, n), &a, &b, 1);
                for (g, w) in one.iter().zip(&want) {
                    assert!((*g as f64 - w).abs() <= 1e-4 * (1.0 + w.abs()) * (k + r) as f64, "{m}x{k}x{r}x{n} {al:?}/{bl:?}: {g} against {w}");
                }
                // A few rows: the same bits on any number of threads.
                if m <= matvec::MAX_ROWS {
                    let two = run(&op, &x, (m, k, r, n), &a, &b, 2);
                    assert_eq!(one.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), two.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{m}x{k}x{r}x{n}");
                }
            }
        }
    }

    /// The fusion finds `(x · A) · B` in a decluttered model (where tract drops a batch of one)
    /// and leaves `x · A` alone when something else reads it.
    #[test]
    fn fuses_only_a_private_chain_of_constant_weights() -> TractResult<()> {
        let build = |batch: usize, share: bool| -> TractResult<TypedModel> {
            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([batch, 5, 6]))?;
            let a = model.add_const("a", Tensor::from_shape(&[6, 3], &values(18, 1))?)?;
            let b = model.add_const("b", Tensor::from_shape(&[3, 4], &values(12, 2))?)?;
            let t = model.wire_node("t", tract_onnx::tract_core::ops::einsum::EinSum::new("bsk,kr->bsr".parse()?, f32::datum_type()), &[x, a])?[0];
            let y = model.wire_node("y", tract_onnx::tract_core::ops::einsum::EinSum::new("bsr,rn->bsn".parse()?, f32::datum_type()), &[t, b])?[0];
            let outputs = if share { vec![y, t] } else { vec![y] };
            model.select_output_outlets(&outputs)?;
            Ok(model)
        };
        for batch in [1, 2] {
            for share in [false, true] {
                let mut model = build(batch, share)?.into_decluttered()?;
                super::super::matmul::replace_matmuls(&mut model)?;
                fuse_low_rank(&mut model)?;
                let fused = model.nodes().iter().any(|n| n.op_is::<LowRankMatMul>());
                assert_eq!(fused, !share, "batch {batch}");
                let input = Tensor::from_shape(&[batch, 5, 6], &values(batch * 30, 4))?;
                let got = model.into_runnable()?.run(tvec!(input.clone().into_tvalue()))?;
                let want = build(batch, share)?.into_decluttered()?.into_runnable()?.run(tvec!(input.into_tvalue()))?;
                assert_eq!(got[0].shape(), want[0].shape());
                let data = |t: &Tensor| -> TractResult<Vec<f32>> { Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()) };
                let (g, w) = (data(&got[0])?, data(&want[0])?);
                assert!(g.iter().zip(&w).all(|(g, w)| (g - w).abs() <= 1e-5 * (1.0 + w.abs())), "{g:?} against {w:?}");
            }
        }
        Ok(())
    }
}
