//! A broadcasting f32 Add/Sub/Mul/Div for the shapes tract's optimised kernels leave to its
//! generic element-by-element loop.
//!
//! tract's elementwise kernels are fast for equal shapes, for an operand repeated in lockstep
//! (a bias `[N]` over `[.., N]`) and for one value per block. Anything else, like an attention
//! mask `[B, 1, 1, S]` added to scores `[B, H, S, S]` with `B > 1`, stays a plain binary op that
//! broadcasts element by element: 7 ms per layer of MiniLM at batch 8; so does every binary op
//! whose shapes are symbolic when the plan is made (a residual add after token pruning, on the
//! reduced length). This op walks the output in rows of its trailing dimensions, along which
//! each operand is either whole or of size 1, so the inner loop is a contiguous slice operation.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BinKind {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinKind {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "Add" => BinKind::Add,
            "Sub" => BinKind::Sub,
            "Mul" => BinKind::Mul,
            "Div" => BinKind::Div,
            _ => return None,
        })
    }

    #[inline]
    fn rows(self, out: &mut [f32], a: &[f32], b: &[f32]) {
        let it = out.iter_mut().zip(a.iter().zip(b));
        match self {
            BinKind::Add => it.for_each(|(o, (x, y))| *o = x + y),
            BinKind::Sub => it.for_each(|(o, (x, y))| *o = x - y),
            BinKind::Mul => it.for_each(|(o, (x, y))| *o = x * y),
            BinKind::Div => it.for_each(|(o, (x, y))| *o = x / y),
        }
    }

    /// A row of `a` with one value of `b`, or (`swapped`) one value of `a` with a row of `b`.
    #[inline]
    fn row_and_value(self, out: &mut [f32], row: &[f32], value: f32, swapped: bool) {
        let it = out.iter_mut().zip(row);
        match (self, swapped) {
            (BinKind::Add, _) => it.for_each(|(o, x)| *o = x + value),
            (BinKind::Mul, _) => it.for_each(|(o, x)| *o = x * value),
            (BinKind::Sub, false) => it.for_each(|(o, x)| *o = x - value),
            (BinKind::Sub, true) => it.for_each(|(o, x)| *o = value - x),
            (BinKind::Div, false) => it.for_each(|(o, x)| *o = x / value),
            (BinKind::Div, true) => it.for_each(|(o, x)| *o = value / x),
        }
    }
}

/// Output elements below which the op stays on the calling thread.
const MIN_PARALLEL_ELEMENTS: usize = 1 << 16;
/// Output elements per task, about.
const BLOCK_ELEMENTS: usize = 1 << 14;

/// `out = a ∘ b` for f32 operands of the output's rank, broadcasting size-1 dimensions.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BroadcastBinary {
    pub kind: BinKind,
}

/// Row-major strides of `shape` within itself, 0 along broadcast (size-1) dimensions of `out`.
fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; shape.len()];
    let mut acc = 1;
    for d in (0..shape.len()).rev() {
        strides[d] = if shape[d] == 1 && out[d] != 1 { 0 } else { acc };
        acc *= shape[d];
    }
    strides
}

impl BroadcastBinary {
    pub fn compute(&self, a: &[f32], a_shape: &[usize], b: &[f32], b_shape: &[usize], out_shape: &[usize]) -> Vec<f32> {
        let rank = out_shape.len();
        // The trailing dimensions form contiguous rows of the output; along them each operand
        // is either whole (a row of its own) or of size 1 (one value for the row).
        let whole = |shape: &[usize], from: usize| shape[from..] == out_shape[from..];
        let ones = |shape: &[usize], from: usize| shape[from..].iter().all(|&d| d == 1);
        let mut split = rank;
        while split > 0 {
            let from = split - 1;
            let (aw, bw) = (whole(a_shape, from), whole(b_shape, from));
            if !((aw || ones(a_shape, from)) && (bw || ones(b_shape, from)) && (aw || bw)) {
                break;
            }
            split = from;
        }
        let row: usize = out_shape[split..].iter().product();
        let (a_row, b_row) = (whole(a_shape, split), whole(b_shape, split));
        let (sa, sb) = (broadcast_strides(a_shape, out_shape), broadcast_strides(b_shape, out_shape));
        let total: usize = out_shape.iter().product();
        let row = row.max(1);
        // Rows from `first` on into `block`: the offsets of the first row from its index, then an
        // odometer over the outer dimensions, keeping both operands' offsets.
        let fill = |block: &mut [f32], first: usize| {
            let mut index = vec![0usize; split];
            let (mut off_a, mut off_b, mut rest) = (0usize, 0usize, first);
            for d in (0..split).rev() {
                index[d] = rest % out_shape[d];
                rest /= out_shape[d];
                off_a += index[d] * sa[d];
                off_b += index[d] * sb[d];
            }
            for chunk in block.chunks_mut(row) {
                match (a_row, b_row) {
                    (true, false) => self.kind.row_and_value(chunk, &a[off_a..off_a + row], b[off_b], false),
                    (false, true) => self.kind.row_and_value(chunk, &b[off_b..off_b + row], a[off_a], true),
                    _ => self.kind.rows(chunk, &a[off_a..off_a + row], &b[off_b..off_b + row]),
                }
                for d in (0..split).rev() {
                    index[d] += 1;
                    off_a += sa[d];
                    off_b += sb[d];
                    if index[d] < out_shape[d] {
                        break;
                    }
                    off_a -= sa[d] * index[d];
                    off_b -= sb[d] * index[d];
                    index[d] = 0;
                }
            }
        };
        let mut out = vec![0f32; total];
        // Large outputs (an attention mask added to every head's scores) in blocks of rows over
        // the session's threads.
        match super::thread_pool(total >= MIN_PARALLEL_ELEMENTS && row >= 16) {
            Some(pool) => {
                use rayon::prelude::*;
                let rows_per_block = (BLOCK_ELEMENTS / row).max(1);
                pool.install(|| out.par_chunks_mut(rows_per_block * row).enumerate().for_each(|(i, block)| fill(block, i * rows_per_block)));
            }
            None => fill(&mut out, 0),
        }
        out
    }
}

impl Op for BroadcastBinary {
    fn name(&self) -> StaticName {
        format!("Broadcast{:?}", self.kind).into()
    }
    op_as_typed_op!();
}

impl EvalOp for BroadcastBinary {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        ensure!(a.rank() == b.rank(), "BroadcastBinary: ranks differ");
        let out_shape: Vec<usize> = a.shape().iter().zip(b.shape()).map(|(&x, &y)| x.max(y)).collect();
        for (&x, (&y, &o)) in a.shape().iter().zip(b.shape().iter().zip(&out_shape)) {
            ensure!((x == o || x == 1) && (y == o || y == 1), "BroadcastBinary: {:?} and {:?} do not broadcast", a.shape(), b.shape());
        }
        let (pa, pb) = (a.try_as_plain_ram()?, b.try_as_plain_ram()?);
        let out = self.compute(pa.as_slice::<f32>()?, a.shape(), pb.as_slice::<f32>()?, b.shape(), &out_shape);
        Ok(tvec!(Tensor::from_shape(&out_shape, &out)?.into_tvalue()))
    }
}

impl TypedOp for BroadcastBinary {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[&*inputs[0].shape, &*inputs[1].shape])?;
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

/// Whether broadcasting an operand of `shape` to `out` misses all of tract's fast paths.
fn slow(shape: &[usize], out: &[usize]) -> bool {
    if shape == out || shape.iter().product::<usize>() <= 1 || shape.len() != out.len() {
        return false;
    }
    let first = shape.iter().position(|&d| d != 1).unwrap_or(0);
    let last = shape.iter().rposition(|&d| d != 1).unwrap_or(0);
    shape[first..] != out[first..] && shape[..=last] != out[..=last]
}

/// Replaces the f32 Add/Sub/Mul/Div nodes of an optimised model that broadcast in a way
/// tract's fast kernels do not cover, or whose shapes are symbolic (which tract leaves to its
/// generic loop), by [`BroadcastBinary`].
pub fn replace_slow_broadcasts(model: &mut TypedModel) -> TractResult<()> {
    // One patch at a time, each found on the model as the previous one left it: a patch taps
    // the outlets of its neighbours, which an earlier patch may have replaced.
    for _ in 0..model.nodes().len() {
        let Some((id, kind)) = next_slow_broadcast(model)? else { return Ok(()) };
        let node = &model.nodes()[id];
        TypedModelPatch::replace_single_op(model, node, &node.inputs, BroadcastBinary { kind })?.apply(model)?;
    }
    Ok(())
}

fn next_slow_broadcast(model: &TypedModel) -> TractResult<Option<(usize, BinKind)>> {
    for &id in &model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(bin) = node.op_as::<TypedBinOp>() else { continue };
        let Some(kind) = BinKind::from_name(bin.0.name()) else { continue };
        if node.inputs.len() != 2 || node.outputs[0].fact.datum_type != f32::datum_type() {
            continue;
        }
        let facts = model.node_input_facts(id)?;
        if facts.iter().any(|f| f.datum_type != f32::datum_type() || f.rank() != node.outputs[0].fact.rank()) {
            continue;
        }
        let replace = match (facts[0].shape.as_concrete(), facts[1].shape.as_concrete(), node.outputs[0].fact.shape.as_concrete()) {
            (Some(a), Some(b), Some(out)) => slow(a, out) || slow(b, out),
            // With symbolic shapes tract keeps its generic element-by-element loop.
            _ => true,
        };
        if replace {
            return Ok(Some((id, kind)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_like_numpy() {
        // a [2, 1, 3] + b [1, 2, 1] -> [2, 2, 3]
        let a = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let b = [10.0, 20.0];
        let op = BroadcastBinary { kind: BinKind::Add };
        let out = op.compute(&a, &[2, 1, 3], &b, &[1, 2, 1], &[2, 2, 3]);
        assert_eq!(out, vec![11.0, 12.0, 13.0, 21.0, 22.0, 23.0, 14.0, 15.0, 16.0, 24.0, 25.0, 26.0]);
        // scores [2, 2, 2] - mask [2, 1, 2]
        let s = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
        let m = [1.0, 1.0, 2.0, 2.0];
        let out = BroadcastBinary { kind: BinKind::Sub }.compute(&s, &[2, 2, 2], &m, &[2, 1, 2], &[2, 2, 2]);
        assert_eq!(out, vec![0.0, 1.0, 2.0, 3.0, 3.0, 4.0, 5.0, 6.0]);
        assert!(slow(&[8, 1, 1, 128], &[8, 12, 128, 128]));
        assert!(!slow(&[1, 1, 1, 128], &[8, 12, 128, 128]));
        assert!(!slow(&[8, 12, 1, 1], &[8, 12, 128, 128]));
    }

    /// Every kind, against element-by-element broadcasting: operands whole along the trailing
    /// dimensions, one value per row on either side, and neither.
    #[test]
    fn matches_elementwise_broadcasting() {
        let shapes: [(&[usize], &[usize]); 6] =
            [(&[2, 3, 4], &[2, 3, 4]), (&[2, 3, 4], &[1, 1, 4]), (&[2, 3, 4], &[2, 3, 1]), (&[2, 1, 1], &[2, 3, 4]), (&[1, 1, 1], &[2, 3, 4]), (&[2, 1, 4], &[1, 3, 1])];
        for (a_shape, b_shape) in shapes {
            let out_shape: Vec<usize> = a_shape.iter().zip(b_shape).map(|(&x, &y)| x.max(y)).collect();
            let a: Vec<f32> = (0..a_shape.iter().product::<usize>()).map(|i| i as f32 + 1.0).collect();
            let b: Vec<f32> = (0..b_shape.iter().product::<usize>()).map(|i| 0.5 * i as f32 + 2.0).collect();
            let at = |shape: &[usize], idx: &[usize]| idx.iter().zip(shape).fold(0, |acc, (&i, &n)| acc * n + if n == 1 { 0 } else { i });
            for kind in [BinKind::Add, BinKind::Sub, BinKind::Mul, BinKind::Div] {
                let got = BroadcastBinary { kind }.compute(&a, a_shape, &b, b_shape, &out_shape);
                for (flat, g) in got.iter().enumerate() {
                    let idx = [flat / (out_shape[1] * out_shape[2]), flat / out_shape[2] % out_shape[1], flat % out_shape[2]];
                    let (x, y) = (a[at(a_shape, &idx)], b[at(b_shape, &idx)]);
                    let want = match kind {
                        BinKind::Add => x + y,
                        BinKind::Sub => x - y,
                        BinKind::Mul => x * y,
                        BinKind::Div => x / y,
                    };
                    assert_eq!(*g, want, "{kind:?} {a_shape:?} {b_shape:?} at {idx:?}");
                }
            }
        }
    }

    /// A mask added to every head's scores, large enough to be split over threads: the same
    /// values as on one thread, and as element-by-element broadcasting.
    #[test]
    fn large_outputs_split_over_threads() {
        let (a_shape, b_shape, out_shape) = ([2, 12, 64, 64], [2, 1, 1, 64], [2, 12, 64, 64]);
        let a: Vec<f32> = (0..a_shape.iter().product::<usize>()).map(|i| (i % 97) as f32).collect();
        let b: Vec<f32> = (0..128).map(|i| i as f32 * 0.25).collect();
        let op = BroadcastBinary { kind: BinKind::Sub };
        let one = op.compute(&a, &a_shape, &b, &b_shape, &out_shape);
        let three = tract_linalg::multithread::multithread_tract_scope(tract_linalg::multithread::Executor::multithread(3), || op.compute(&a, &a_shape, &b, &b_shape, &out_shape));
        assert_eq!(one, three);
        for (flat, g) in three.iter().enumerate() {
            let (batch, col) = (flat / (12 * 64 * 64), flat % 64);
            assert_eq!(*g, a[flat] - b[batch * 64 + col], "at {flat}");
        }
    }
}
