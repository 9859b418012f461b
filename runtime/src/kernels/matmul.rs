//! f32 matrix products on the `gemm` crate, in place of tract's for the matmul-shaped EinSums
//! of a decluttered model (ONNX MatMul, Gemm and matmul-like Einsum all become those).
//!
//! Why: at batch 8 most of MiniLM's time was tract's matmuls and the packing of their
//! operands, and tract's executor does not spread a batch of small products (one per attention
//! head) over threads. Here a batch of products is split over the session's thread pool, one
//! single-threaded `gemm` per product, and a lone large product (activations × weight) is cut
//! into one block per thread. Operands are read in place through strides (transposed or permuted
//! operands included), so no transposes or copies are added around the product. Linear layers
//! (activations by a constant weight) move on to [`super::packed_matmul`] where it runs.

use super::SendPtr;
use super::matvec;
use std::ops::Range;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::axes::{AxesMapping, Axis};
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::einsum::EinSum;

/// Multiply-adds below which a matmul stays on the calling thread (about a microsecond).
const MIN_PARALLEL_WORK: usize = 1 << 16;

/// Where one einsum axis sits in A, B and the output C.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Place {
    a: Option<usize>,
    b: Option<usize>,
    c: Option<usize>,
}

/// `C = A · B` batched, as an einsum whose axes each play one role: batch (in C, and in A
/// and/or B, broadcast when of size 1), row `m` (A and C), column `n` (B and C) or contracted
/// `k` (A and B). Several row (or column, or contracted) axes act as one when they are
/// adjacent and in the same order in both tensors that hold them; row and column axes that
/// are not become batch axes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GemmMatMul {
    /// The einsum replaced, for the output's shape.
    axes: AxesMapping,
    batch: Vec<Place>,
    /// Row, column and contracted axes, outermost first; empty means a size of 1.
    m: Vec<Place>,
    n: Vec<Place>,
    k: Vec<Place>,
    /// Axes of one operand only, of size 1 (a matmul of `[1, m, k]` by `[k, n]` into `[m, n]`).
    unit: Vec<Place>,
    /// The contracted axes are adjacent in B (in `k`'s order) but not in A: A's rows are
    /// gathered into a contiguous block before each product (tract folds the merge of heads
    /// before an output projection into the einsum: `cbmk,cbkn->amn`).
    gather_a: bool,
}

/// True when `axes` sit side by side, in this order, in two tensors (`first` and `second` give
/// an axis's position in each), so that together they index those tensors like one axis.
fn mergeable(axes: &[Place], first: impl Fn(&Place) -> Option<usize>, second: impl Fn(&Place) -> Option<usize>) -> bool {
    axes.windows(2).all(|w| first(&w[0]).zip(first(&w[1])).is_some_and(|(x, y)| y == x + 1) && second(&w[0]).zip(second(&w[1])).is_some_and(|(x, y)| y == x + 1))
}

/// How a constant weight matrix of a linear layer lies: `[k, n]` (an ONNX MatMul weight) or
/// `[n, k]` (read as its transpose: Gemm's transB, a tied embedding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightLayout {
    RowMajor,
    Transposed,
}

impl GemmMatMul {
    /// The op for a two-input einsum whose axes all have a matmul role, or `None`. `unit` tells
    /// which axes are known to be of size 1 (those may be in one operand only).
    pub fn from_axes(axes: &AxesMapping, unit: impl Fn(&Axis) -> bool) -> Option<GemmMatMul> {
        if axes.input_count() != 2 || axes.output_count() != 1 {
            return None;
        }
        let one = |positions: &[usize]| match positions {
            [] => Some(None),
            [p] => Some(Some(*p)),
            // An axis repeated in one tensor is a diagonal, not a matmul.
            _ => None,
        };
        let (mut batch, mut m, mut n, mut k, mut units) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for axis in axes.iter_all_axes() {
            let Axis { inputs, outputs, .. } = axis;
            let lone = outputs[0].is_empty() && (inputs[0].is_empty() || inputs[1].is_empty());
            let place = Place { a: one(&inputs[0])?, b: one(&inputs[1])?, c: one(&outputs[0])? };
            match (place.a.is_some(), place.b.is_some(), place.c.is_some()) {
                (true, true, false) => k.push(place),
                (true, false, true) => m.push(place),
                (false, true, true) => n.push(place),
                (_, _, true) => batch.push(place),
                _ if lone && unit(axis) => units.push(place),
                // Summed over in one operand only: a reduction, not a product.
                _ => return None,
            }
        }
        // An outer product (nothing contracted) is a broadcast multiplication; tract has that.
        if k.is_empty() {
            return None;
        }
        k.sort_by_key(|p| p.a);
        let mut gather_a = false;
        if !mergeable(&k, |p| p.a, |p| p.b) {
            k.sort_by_key(|p| p.b);
            if !mergeable(&k, |p| p.b, |p| p.b) {
                return None;
            }
            gather_a = true;
        }
        // Rows and columns in output order; those that cannot be one axis loop like batches.
        for (group, input) in [(&mut m, 0), (&mut n, 1)] {
            group.sort_by_key(|p| p.c);
            let pos = |p: &Place| if input == 0 { p.a } else { p.b };
            while !mergeable(group, pos, |p| p.c) {
                batch.push(group.remove(0));
            }
        }
        Some(GemmMatMul { axes: axes.clone(), batch, m, n, k, unit: units, gather_a })
    }

    /// When this product is a linear layer `x[.., k] · W` with A of rank `x_rank` (A's last
    /// axes contracted with a weight B, the output's last axis B's other one), B's layout, how
    /// many of A's axes are contracted, and where each other axis of the output comes from: an
    /// axis of A (in A's order), or none (a new axis of size 1). Axes of A the output drops are
    /// of size 1. Several contracted axes (heads and head dimension merged by an output
    /// projection, `mhd,hdn->mn`) act as one: B is then `[k.., n]` or `[n, k..]`.
    pub fn linear_layout(&self, x_rank: usize) -> Option<(WeightLayout, usize, Vec<Option<usize>>)> {
        if self.gather_a || x_rank < self.k.len() || self.unit.iter().any(|p| p.b.is_some()) || self.batch.iter().any(|p| p.a.is_some() || p.b.is_some()) {
            return None;
        }
        let [n] = self.n.as_slice() else { return None };
        let contracted = self.k.len();
        let rows = self.m.len() + self.batch.len();
        // The contracted axes are A's last ones, in order (they are adjacent in both operands).
        if self.k.iter().enumerate().any(|(i, p)| p.a != Some(x_rank - contracted + i)) || n.c != Some(rows) || self.m.iter().any(|p| p.b.is_some()) {
            return None;
        }
        let mut from: Vec<Option<usize>> = vec![None; rows];
        for p in &self.m {
            *from.get_mut(p.c?)? = p.a;
        }
        // Rows merge into one index only if A's axes keep their order.
        if !from.iter().flatten().collect::<Vec<_>>().windows(2).all(|w| w[0] < w[1]) {
            return None;
        }
        let layout = match (self.k[0].b?, n.b?) {
            (0, last) if last == contracted => WeightLayout::RowMajor,
            (1, 0) => WeightLayout::Transposed,
            _ => return None,
        };
        Some((layout, contracted, from))
    }

    /// `C[m, n] = Σ_k X[m, k] · W[n, k]`: a linear layer whose weight is stored `[out, in]`
    /// (onnxruntime's MoE experts, Gemm's transB), read in place.
    pub(crate) fn by_transposed_weight() -> GemmMatMul {
        let axes = AxesMapping::from_strs(&["mk", "nk"], &["mn"]).expect("a valid einsum");
        GemmMatMul::from_axes(&axes, |_| false).expect("a matmul")
    }

    /// The product on plain f32 buffers, for kernels that multiply their own operands, on the
    /// session's thread pool like the op. Checks the shapes against the axes and the buffers
    /// against the shapes; `c` must hold the output's shape.
    pub(crate) fn product(&self, a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], c: &mut [f32]) -> TractResult<Vec<usize>> {
        let c_shape = self.check_shapes(a_shape, b_shape)?;
        let len = |shape: &[usize]| shape.iter().product::<usize>();
        ensure!(
            a.len() == len(a_shape) && b.len() == len(b_shape) && c.len() == len(&c_shape),
            "GemmMatMul: buffers of {}, {} and {} values for shapes {a_shape:?}, {b_shape:?} and {c_shape:?}",
            a.len(),
            b.len(),
            c.len()
        );
        // SAFETY: shapes checked against the axes, buffers against the shapes.
        unsafe { self.compute(a, a_shape, b, b_shape, c, &c_shape) };
        Ok(c_shape)
    }

    /// Runs the product on plain f32 buffers of the given shapes (`c` has `c_shape`).
    ///
    /// # Safety
    /// The shapes must be those the einsum accepts: `a` and `b` hold `a_shape` and `b_shape`
    /// elements, `c` holds `c_shape` elements, and those agree with the axes (as checked by
    /// [`GemmMatMul::check_shapes`]).
    unsafe fn compute(&self, a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], c: &mut [f32], c_shape: &[usize]) {
        let strides = |shape: &[usize]| {
            let mut s = vec![0isize; shape.len()];
            let mut acc = 1isize;
            for d in (0..shape.len()).rev() {
                s[d] = acc;
                acc *= shape[d] as isize;
            }
            s
        };
        let (sa, sb, sc) = (strides(a_shape), strides(b_shape), strides(c_shape));
        // Stride of an axis in one operand: 0 where it is absent or broadcast (size 1).
        let stride = |pos: Option<usize>, shape: &[usize], s: &[isize]| pos.filter(|&p| shape[p] != 1).map_or(0, |p| s[p]);
        let size = |p: &Place| p.c.map(|i| c_shape[i]).or(p.a.map(|i| a_shape[i])).unwrap_or(1);
        // Merged row/column/contracted axes: the product of sizes, the innermost's stride.
        // (These axes have the same size in both tensors holding them: no broadcasting.)
        let group = |axes: &[Place]| -> (usize, isize, isize, isize) {
            let n = axes.iter().map(size).product();
            let Some(inner) = axes.last() else { return (n, 0, 0, 0) };
            (n, inner.a.map_or(0, |i| sa[i]), inner.b.map_or(0, |i| sb[i]), inner.c.map_or(0, |i| sc[i]))
        };
        let (m, a_rs, _, c_rs) = group(&self.m);
        let (n, _, b_cs, c_cs) = group(&self.n);
        let (k, a_cs, b_rs, _) = group(&self.k);
        // Where each contracted index sits in a row of A (all of them, for a gathered A).
        let a_k_offsets: Vec<isize> = if self.gather_a {
            let mut offsets = vec![0isize];
            for p in &self.k {
                let (n, s) = (size(p), p.a.map_or(0, |i| sa[i]));
                offsets = offsets.iter().flat_map(|&o| (0..n as isize).map(move |i| o + i * s)).collect();
            }
            offsets
        } else {
            (0..k as isize).map(|l| l * a_cs).collect()
        };
        if m == 0 || n == 0 {
            return;
        }
        // One (A, B, C) offset per product, in C's order.
        let sizes: Vec<usize> = self.batch.iter().map(size).collect();
        let count: usize = sizes.iter().product();
        let mut offsets = Vec::with_capacity(count);
        let mut index = vec![0usize; sizes.len()];
        for _ in 0..count {
            let (mut oa, mut ob, mut oc) = (0isize, 0isize, 0isize);
            for (p, &i) in self.batch.iter().zip(&index) {
                oa += i as isize * stride(p.a, a_shape, &sa);
                ob += i as isize * stride(p.b, b_shape, &sb);
                oc += i as isize * p.c.map_or(0, |d| sc[d]);
            }
            offsets.push((oa, ob, oc));
            for d in (0..index.len()).rev() {
                index[d] += 1;
                if index[d] < sizes[d] {
                    break;
                }
                index[d] = 0;
            }
        }
        if k == 0 {
            // Nothing to contract: every output is an empty sum.
            c.fill(0.0);
            return;
        }
        let pool = super::thread_pool(count * m * n * k >= MIN_PARALLEL_WORK);
        // A few rows: bound by reading B, which the streaming kernel does at full bandwidth.
        let layout = if b_cs == 1 || n == 1 {
            Some(matvec::Layout::Rows { stride: b_rs as usize })
        } else if b_rs == 1 || k == 1 {
            Some(matvec::Layout::Columns { stride: b_cs as usize })
        } else {
            None
        };
        if let Some(layout) = layout.filter(|_| m <= matvec::MAX_ROWS) {
            let (a, b, c) = (SendPtr(a.as_ptr() as *mut f32), SendPtr(b.as_ptr() as *mut f32), SendPtr(c.as_mut_ptr()));
            // A's rows, contiguous.
            let a_rows = |oa: isize| -> Vec<f32> {
                // SAFETY: the offsets stay within A (they come from its shape).
                (0..m).flat_map(|r| a_k_offsets.iter().map(move |&o| unsafe { *a.get().offset(oa + r as isize * a_rs + o) })).collect()
            };
            let write = |oc: isize, cols: Range<usize>, out: &[f32]| {
                for r in 0..m {
                    for (j, &v) in cols.clone().zip(&out[r * cols.len()..]) {
                        // SAFETY: within C; tasks write disjoint columns or products of C.
                        unsafe { *c.get().offset(oc + r as isize * c_rs + j as isize * c_cs) = v };
                    }
                }
            };
            if let (1, matvec::Layout::Rows { stride }, true) = (count, layout, n < matvec::WIDE_ROWS) {
                // One narrow product: split along the contracted rows, so that each thread
                // streams a contiguous part of B; the chunks' partial sums are added in order.
                let (oa, ob, oc) = offsets[0];
                let rows = a_rows(oa);
                let chunks = matvec::row_chunks(k);
                let partial = |ls: &Range<usize>| {
                    let mut out = vec![0f32; m * n];
                    // SAFETY: rows `ls` of B are within it.
                    unsafe { matvec::product(&rows[ls.start..], k, m, ls.len(), b.get().offset(ob + ls.start as isize * stride as isize), layout, 0..n, &mut out) };
                    out
                };
                let partials: Vec<Vec<f32>> = match pool {
                    Some(pool) => {
                        use rayon::prelude::*;
                        pool.install(|| chunks.par_iter().map(partial).collect())
                    }
                    None => chunks.iter().map(partial).collect(),
                };
                let mut sum = vec![0f32; m * n];
                matvec::add_in_order(&partials, &mut sum);
                write(oc, 0..n, &sum);
                return;
            }
            let parts = pool.as_ref().map_or(1, |p| p.current_num_threads().div_ceil(count.max(1)));
            let tasks: Vec<(usize, Range<usize>)> = (0..count).flat_map(|i| matvec::column_ranges(n, parts).into_iter().map(move |cols| (i, cols))).collect();
            let run = |(i, cols): &(usize, Range<usize>)| {
                let (oa, ob, oc) = offsets[*i];
                let rows = a_rows(oa);
                let mut out = vec![0f32; m * cols.len()];
                // SAFETY: offsets and strides come from the operands' shapes (see `block` below).
                unsafe { matvec::product(&rows, k, m, k, b.get().offset(ob), layout, cols.clone(), &mut out) };
                write(oc, cols.clone(), &out);
            };
            match pool {
                Some(pool) => {
                    use rayon::prelude::*;
                    pool.install(|| tasks.par_iter().for_each(run));
                }
                None => tasks.iter().for_each(run),
            }
            return;
        }
        let (a, b, c) = (SendPtr(a.as_ptr() as *mut f32), SendPtr(b.as_ptr() as *mut f32), SendPtr(c.as_mut_ptr()));
        // The block `rows × cols` of one product.
        let block = |&(oa, ob, oc): &(isize, isize, isize), rows: Range<usize>, cols: Range<usize>| {
            let (r, c0) = (rows.start as isize, cols.start as isize);
            // A gathered A: these rows, contiguous.
            let gathered: Vec<f32> = if self.gather_a {
                // SAFETY: the offsets stay within A (they come from its shape).
                rows.clone().flat_map(|row| a_k_offsets.iter().map(move |&o| unsafe { *a.get().offset(oa + row as isize * a_rs + o) })).collect()
            } else {
                Vec::new()
            };
            let (a_block, a_cs, a_rs) = if self.gather_a { (gathered.as_ptr() as *mut f32, 1, k as isize) } else { (unsafe { a.get().offset(oa + r * a_rs) }, a_cs, a_rs) };
            // SAFETY: the offsets and strides stay within the three buffers (they come from
            // their shapes), and blocks write disjoint parts of C: distinct batch indices differ
            // along an axis of C, which has a nonzero stride there, and blocks of one product
            // are disjoint ranges of its rows or columns.
            unsafe {
                gemm::gemm(
                    rows.len(),
                    cols.len(),
                    k,
                    c.get().offset(oc + r * c_rs + c0 * c_cs),
                    c_cs,
                    c_rs,
                    false,
                    a_block,
                    a_cs,
                    a_rs,
                    b.get().offset(ob + c0 * b_cs),
                    b_cs,
                    b_rs,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                )
            }
        };
        // Every thread gets whole products when there are enough to go round (a per-head
        // product is too small to split); otherwise each product is cut along its longer side,
        // one part per thread. Measured on MiniLM's projections, parts on single-threaded
        // gemms beat gemm's own threading (128×384×384 on two threads: 0.09 ms against 0.12–0.18).
        let parts = pool.as_ref().map_or(1, |p| p.current_num_threads().div_ceil(count.max(1))).min(m.max(n));
        let tasks: Vec<(usize, Range<usize>)> = (0..count).flat_map(|i| (0..parts).map(move |p| (i, p * m.max(n) / parts..(p + 1) * m.max(n) / parts))).collect();
        let run = |(i, part): &(usize, Range<usize>)| if m >= n { block(&offsets[*i], part.clone(), 0..n) } else { block(&offsets[*i], 0..m, part.clone()) };
        match pool {
            Some(pool) => {
                use rayon::prelude::*;
                pool.install(|| tasks.par_iter().for_each(run));
            }
            None => tasks.iter().for_each(run),
        }
    }

    /// Checks that the operand shapes agree along every axis (up to broadcasting of batch axes)
    /// and gives the output's shape.
    fn check_shapes(&self, a_shape: &[usize], b_shape: &[usize]) -> TractResult<Vec<usize>> {
        ensure!(a_shape.len() == self.axes.rank(InOut::In(0)) && b_shape.len() == self.axes.rank(InOut::In(1)), "GemmMatMul: operand ranks {a_shape:?} {b_shape:?} do not fit {}", self.axes);
        let mut c_shape = vec![1usize; self.axes.rank(InOut::Out(0))];
        for p in self.batch.iter().chain(&self.m).chain(&self.n).chain(&self.k) {
            let (x, y) = (p.a.map(|i| a_shape[i]), p.b.map(|i| b_shape[i]));
            // Absent from one operand: the other's size; in both: equal, or one of them 1 (a
            // broadcast batch axis; contracted axes must be equal).
            let size = match (x, y) {
                (Some(x), Some(y)) if x == y => x,
                (Some(x), Some(y)) if (x == 1 || y == 1) && p.c.is_some() => {
                    if x == 1 {
                        y
                    } else {
                        x
                    }
                }
                (Some(x), Some(y)) => bail!("GemmMatMul: sizes {x} and {y} of {a_shape:?} and {b_shape:?} disagree for {}", self.axes),
                (x, y) => x.or(y).unwrap_or(1),
            };
            if let Some(i) = p.c {
                c_shape[i] = size;
            }
        }
        for p in &self.unit {
            ensure!(p.a.map_or(1, |i| a_shape[i]) == 1 && p.b.map_or(1, |i| b_shape[i]) == 1, "GemmMatMul: {a_shape:?} and {b_shape:?} do not fit {}", self.axes);
        }
        Ok(c_shape)
    }
}

impl Op for GemmMatMul {
    fn name(&self) -> StaticName {
        "GemmMatMul".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("{}", self.axes)])
    }

    op_as_typed_op!();
}

impl EvalOp for GemmMatMul {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let c_shape = self.check_shapes(a.shape(), b.shape())?;
        let (pa, pb) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
        // SAFETY: every element is written by the products below (or zeroed when k = 0).
        let mut c = unsafe { Tensor::uninitialized::<f32>(&c_shape)? };
        {
            let mut pc = c.try_as_plain_ram_mut()?;
            // SAFETY: shapes checked above.
            unsafe { self.compute(pa.as_slice::<f32>()?, a.shape(), pb.as_slice::<f32>()?, b.shape(), pc.as_slice_mut::<f32>()?, &c_shape) };
        }
        Ok(tvec!(c.into_tvalue()))
    }
}

impl TypedOp for GemmMatMul {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        EinSum::new(self.axes.clone(), f32::datum_type()).output_facts(inputs)
    }
    as_op!();
}

/// Replaces the f32 matmul-shaped EinSums of a decluttered model by [`GemmMatMul`].
/// Run before tract's optimiser, which would turn them into its own packed matmuls.
pub fn replace_matmuls(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        if let Some(patch) = replacement(model, id)? {
            patch.apply(model)?;
        }
    }
    Ok(())
}

/// The patch putting a [`GemmMatMul`] in place of node `id`, when it is an f32 matmul.
fn replacement(model: &TypedModel, id: usize) -> TractResult<Option<TypedModelPatch>> {
    let f32_dt = f32::datum_type();
    let node = &model.nodes()[id];
    let Some(einsum) = node.op_as::<EinSum>() else { return Ok(None) };
    if einsum.q_params.is_some() || einsum.operating_dt != f32_dt || node.inputs.len() != 2 || node.outputs[0].fact.datum_type != f32_dt {
        return Ok(None);
    }
    // Plain f32 operands only (not block-quantized weights).
    let facts = model.node_input_facts(id)?;
    if facts.iter().any(|f| f.datum_type != f32_dt || f.is_exotic()) {
        return Ok(None);
    }
    let unit = |axis: &Axis| (0..2).all(|i| axis.inputs[i].iter().all(|&p| facts[i].shape[p].is_one()));
    let Some(op) = GemmMatMul::from_axes(&einsum.axes, unit) else { return Ok(None) };
    Ok(Some(TypedModelPatch::replace_single_op(model, node, &node.inputs, op)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `C[batch.., m, n] = Σ_k A[batch.., m, k] · B[batch.., k, n]` by index arithmetic, with
    /// numpy broadcasting of the batch dimensions.
    fn reference(a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize]) -> (Vec<f32>, Vec<usize>) {
        let (ra, rb) = (a_shape.len(), b_shape.len());
        let (m, k, n) = (a_shape[ra - 2], a_shape[ra - 1], b_shape[rb - 1]);
        let rank = ra.max(rb);
        let pad = |s: &[usize]| [vec![1; rank - s.len()], s.to_vec()].concat();
        let (pa, pb) = (pad(a_shape), pad(b_shape));
        let batch: Vec<usize> = (0..rank - 2).map(|d| pa[d].max(pb[d])).collect();
        let count: usize = batch.iter().product();
        let mut out = Vec::new();
        for flat in 0..count {
            let mut rest = flat;
            let mut idx = vec![0; batch.len()];
            for d in (0..batch.len()).rev() {
                idx[d] = rest % batch[d];
                rest /= batch[d];
            }
            let offset = |p: &[usize]| idx.iter().enumerate().fold(0, |acc, (d, &i)| acc * p[d] + if p[d] == 1 { 0 } else { i });
            let (oa, ob) = (offset(&pa) * m * k, offset(&pb) * k * n);
            for i in 0..m {
                for j in 0..n {
                    out.push((0..k).map(|l| a[oa + i * k + l] * b[ob + l * n + j]).sum());
                }
            }
        }
        (out, [batch, vec![m, n]].concat())
    }

    use crate::kernels::test_values as values;

    fn run(op: &GemmMatMul, a: &Tensor, b: &Tensor) -> Tensor {
        op.eval(&EvalContext::out_of_plan(), tvec!(a.clone().into_tvalue(), b.clone().into_tvalue())).unwrap().remove(0).into_tensor()
    }

    /// The einsum of ONNX MatMul for operands of these ranks (at least 2): `..mk, ..kn -> ..mn`.
    fn numpy_matmul(a_rank: usize, b_rank: usize) -> GemmMatMul {
        let batch: String = "abcdefgh".chars().take(a_rank.max(b_rank) - 2).collect();
        let tail = |rank: usize| &batch[batch.len() + 2 - rank..];
        let axes = AxesMapping::from_strs(&[format!("{}mk", tail(a_rank)), format!("{}kn", tail(b_rank))], &[format!("{batch}mn")]).unwrap();
        GemmMatMul::from_axes(&axes, |_| false).expect("a matmul")
    }

    fn data(t: &Tensor) -> Vec<f32> {
        t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec()
    }

    fn check(a_shape: &[usize], b_shape: &[usize], threads: usize) {
        let a = Tensor::from_shape(a_shape, &values(a_shape.iter().product(), 1)).unwrap();
        let b = Tensor::from_shape(b_shape, &values(b_shape.iter().product(), 2)).unwrap();
        let (want, want_shape) = reference(&data(&a), a_shape, &data(&b), b_shape);
        let op = numpy_matmul(a_shape.len(), b_shape.len());
        let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
        let got = tract_linalg::multithread::multithread_tract_scope(executor, || run(&op, &a, &b));
        assert_eq!(got.shape(), &want_shape[..], "{a_shape:?} x {b_shape:?}");
        for (g, w) in data(&got).iter().zip(&want) {
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{a_shape:?} x {b_shape:?} on {threads} threads: {g} against {w}");
        }
    }

    #[test]
    fn matches_reference_matmul() {
        for threads in [1, 3] {
            check(&[1, 1], &[1, 1], threads);
            check(&[3, 5], &[5, 7], threads);
            check(&[17, 33], &[33, 9], threads);
            check(&[2, 3, 4], &[2, 4, 5], threads);
            // Batch dimensions broadcast either way, and a missing one.
            check(&[2, 1, 3, 4], &[1, 3, 4, 5], threads);
            check(&[5, 3, 4], &[4, 6], threads);
            check(&[4, 3], &[2, 5, 3, 2], threads);
            check(&[1, 7, 6], &[8, 6, 3], threads);
            // The MiniLM attention shapes, smaller.
            check(&[2, 12, 16, 8], &[2, 12, 8, 16], threads);
            // Empty dimensions: no rows, no columns, no batch, nothing contracted.
            check(&[0, 4], &[4, 3], threads);
            check(&[3, 4], &[4, 0], threads);
            check(&[0, 2, 3], &[0, 3, 2], threads);
            check(&[2, 3, 0], &[2, 0, 4], threads);
            // Big enough to be spread over threads: one product cut by rows or by columns,
            // products handed out whole, fewer products than threads.
            check(&[131, 70], &[70, 90], threads);
            check(&[20, 64], &[64, 301], threads);
            check(&[5, 40, 50], &[5, 50, 41], threads);
            check(&[2, 90, 50], &[2, 50, 70], threads);
            // A few rows by a narrow B: the contracted rows split in chunks, over threads.
            check(&[1, 130], &[130, 50], threads);
            check(&[3, 200], &[200, 33], threads);
        }
    }

    #[test]
    fn reads_transposed_and_permuted_operands() {
        // C[b, s, h, d] = Σ_t A[b, h, s, t] · B[b, t, h, d]: attention output written straight
        // into [batch, seq, heads, dim], with B read in its [batch, seq, heads, dim] layout.
        let axes = AxesMapping::from_strs(&["bhst", "bthd"], &["bshd"]).unwrap();
        let op = GemmMatMul::from_axes(&axes, |_| false).unwrap();
        let (bn, h, s, d) = (2, 3, 4, 5);
        let a = Tensor::from_shape(&[bn, h, s, s], &values(bn * h * s * s, 3)).unwrap();
        let b = Tensor::from_shape(&[bn, s, h, d], &values(bn * s * h * d, 4)).unwrap();
        let got = run(&op, &a, &b);
        assert_eq!(got.shape(), &[bn, s, h, d]);
        let (av, bv, gv) = (data(&a), data(&b), data(&got));
        for (x, y, z, w) in indices4(bn, s, h, d) {
            let want: f32 = (0..s).map(|t| av[((x * h + z) * s + y) * s + t] * bv[((x * s + t) * h + z) * d + w]).sum();
            let g = gv[((x * s + y) * h + z) * d + w];
            assert!((g - want).abs() < 1e-4, "{g} against {want}");
        }
        // Gemm with both operands transposed: C[m, n] = Σ_k A[k, m] · B[n, k].
        let op = GemmMatMul::from_axes(&AxesMapping::from_strs(&["km", "nk"], &["mn"]).unwrap(), |_| false).unwrap();
        let a = Tensor::from_shape(&[4, 3], &values(12, 5)).unwrap();
        let b = Tensor::from_shape(&[2, 4], &values(8, 6)).unwrap();
        let got = run(&op, &a, &b);
        let (av, bv, gv) = (data(&a), data(&b), data(&got));
        for i in 0..3 {
            for j in 0..2 {
                let want: f32 = (0..4).map(|l| av[l * 3 + i] * bv[j * 4 + l]).sum();
                assert!((gv[i * 2 + j] - want).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn gathers_contracted_axes_apart_in_a() {
        // C[a, m, n] = Σ_{c, b, k} A[c, b, m, k] · B[c, b, k, n]: heads merged into an output
        // projection; c, b, k are adjacent in B only. Small (one row: the streaming kernel) and
        // larger (gemm, split over threads).
        let axes = AxesMapping::from_strs(&["cbmk", "cbkn"], &["amn"]).unwrap();
        let op = GemmMatMul::from_axes(&axes, |axis| axis.repr == 'a').unwrap();
        for (c, bh, m, k, n) in [(2, 3, 1, 5, 7), (3, 3, 40, 16, 50), (2, 1, 3, 9, 300)] {
            let a = Tensor::from_shape(&[c, bh, m, k], &values(c * bh * m * k, 9)).unwrap();
            let b = Tensor::from_shape(&[c, bh, k, n], &values(c * bh * k * n, 10)).unwrap();
            let (av, bv) = (data(&a), data(&b));
            for threads in [1, 2] {
                let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
                let got = tract_linalg::multithread::multithread_tract_scope(executor, || run(&op, &a, &b));
                assert_eq!(got.shape(), &[1, m, n]);
                let gv = data(&got);
                for i in 0..m {
                    for j in 0..n {
                        let want: f32 = indices4(c, bh, k, 1).map(|(x, y, l, _)| av[((x * bh + y) * m + i) * k + l] * bv[((x * bh + y) * k + l) * n + j]).sum();
                        assert!((gv[i * n + j] - want).abs() < 1e-4 * (1.0 + want.abs()), "{:?}: {} against {want}", (c, bh, m, k, n), gv[i * n + j]);
                    }
                }
            }
        }
    }

    fn indices4(a: usize, b: usize, c: usize, d: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        (0..a).flat_map(move |x| (0..b).flat_map(move |y| (0..c).flat_map(move |z| (0..d).map(move |w| (x, y, z, w)))))
    }

    #[test]
    fn drops_unit_axes_of_one_operand() {
        // [1, m, k] x [k, n] -> [m, n], as tract writes a batch-1 MatMul whose batch axis it dropped.
        let axes = AxesMapping::from_strs(&["amk", "kn"], &["mn"]).unwrap();
        assert!(GemmMatMul::from_axes(&axes, |_| false).is_none());
        let op = GemmMatMul::from_axes(&axes, |axis| axis.repr == 'a').unwrap();
        let a = Tensor::from_shape(&[1, 3, 4], &values(12, 7)).unwrap();
        let b = Tensor::from_shape(&[4, 5], &values(20, 8)).unwrap();
        let got = run(&op, &a, &b);
        let (want, _) = reference(&data(&a), &[3, 4], &data(&b), &[4, 5]);
        assert_eq!(got.shape(), &[3, 5]);
        assert!(data(&got).iter().zip(&want).all(|(g, w)| (g - w).abs() < 1e-5));
        // The unit axis must be 1 at run time.
        let a = Tensor::from_shape(&[2, 3, 4], &values(24, 7)).unwrap();
        assert!(op.eval(&EvalContext::out_of_plan(), tvec!(a.into_tvalue(), b.into_tvalue())).is_err());
    }

    #[test]
    fn refuses_what_is_not_a_matmul() {
        // A sum over one operand only, a diagonal, an outer product.
        assert!(GemmMatMul::from_axes(&AxesMapping::from_strs(&["mk", "n"], &["mn"]).unwrap(), |_| false).is_none());
        assert!(GemmMatMul::from_axes(&AxesMapping::from_strs(&["kk", "kn"], &["n"]).unwrap(), |_| false).is_none());
        assert!(GemmMatMul::from_axes(&AxesMapping::from_strs(&["m", "n"], &["mn"]).unwrap(), |_| false).is_none());
        // Two contracted axes that are not adjacent in B.
        assert!(GemmMatMul::from_axes(&AxesMapping::from_strs(&["mij", "inj"], &["mn"]).unwrap(), |_| false).is_none());
    }
}
