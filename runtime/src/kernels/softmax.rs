//! f32 softmax over the last axis, row by row in one pass each for the maximum, the
//! exponentials and their sum, and the scaling, with an exponential the compiler vectorises.
//!
//! Why: tract runs each row through three boxed kernels (maximum, exp-and-sum, scale), which for
//! attention's short rows costs more than the arithmetic: MiniLM's six softmaxes over
//! `[1, 12, 64, 64]` took 0.35 ms of its 10 ms run at 64 tokens (onnxruntime's 0.13 ms), and rows
//! of odd length (a pruned sequence) took longer still.
//!
//! The exponential is Cephes' `expf` (range reduction by `ln 2` in two parts, a degree-6
//! polynomial, the power of two put in the exponent bits): within 2 ulp of the exact value over
//! the range it is used on. Each row is summed in 16 running lanes in a fixed order, so results
//! do not depend on the thread count or the instruction set.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::nn::{Softmax, SoftmaxKind};

/// Elements below which the rows stay on the calling thread.
const MIN_PARALLEL_ELEMENTS: usize = 1 << 15;
const LANES: usize = 16;

/// `e^x`; below about -87.3 it gives the smallest normal float rather than 0 (a softmax term of
/// 1e-38 against a sum of at least 1), NaN stays NaN.
#[inline(always)]
fn exp(x: f32) -> f32 {
    // `clamp` keeps NaN.
    let x = x.clamp(-87.33654, 88.0);
    // Round x / ln 2 to the nearest integer n by adding 1.5 · 2^23: n ends up in the low bits.
    const SHIFT: f32 = 12_582_912.0;
    let t = x * std::f32::consts::LOG2_E + SHIFT;
    let n = t - SHIFT;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    let e = p * r * r + r + 1.0;
    let pow2 = f32::from_bits(((t.to_bits() as i32 - SHIFT.to_bits() as i32 + 127) << 23) as u32);
    e * pow2
}

/// One row in place.
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = row.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            lanes[i] = if c[i] > lanes[i] { c[i] } else { lanes[i] };
        }
    }
    let max = chunks.remainder().iter().chain(&lanes).fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sums = [0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            c[i] = exp(c[i] - max);
            sums[i] += c[i];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for v in chunks.into_remainder() {
        *v = exp(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|v| *v *= inv);
}

/// Rows of `row_len` values, in place.
fn softmax_rows(data: &mut [f32], row_len: usize) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // A plain loop: through `for_each` the row kernel was compiled without the feature
        // (2.5x slower).
        #[target_feature(enable = "avx512f")]
        fn wide(data: &mut [f32], row_len: usize) {
            for row in data.chunks_mut(row_len) {
                softmax_row(row)
            }
        }
        // SAFETY: the feature was detected.
        return unsafe { wide(data, row_len) };
    }
    for row in data.chunks_mut(row_len) {
        softmax_row(row)
    }
}

/// Softmax over the last axis of an f32 tensor.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LastAxisSoftmax;

impl Op for LastAxisSoftmax {
    fn name(&self) -> StaticName {
        "LastAxisSoftmax".into()
    }

    op_as_typed_op!();
}

impl EvalOp for LastAxisSoftmax {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let row_len = x.shape().last().copied().unwrap_or(1);
        let mut y = x.into_tensor();
        if row_len > 0 {
            let mut plain = y.try_as_plain_ram_mut()?;
            let data = plain.as_slice_mut::<f32>()?;
            match super::thread_pool(data.len() >= MIN_PARALLEL_ELEMENTS) {
                Some(pool) => {
                    use rayon::prelude::*;
                    // Blocks of whole rows, about 8 KB each.
                    let block = row_len * (2048 / row_len).max(1);
                    pool.install(|| data.par_chunks_mut(block).for_each(|b| softmax_rows(b, row_len)));
                }
                None => softmax_rows(data, row_len),
            }
        }
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for LastAxisSoftmax {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].without_value()))
    }
    as_op!();
}

/// Replaces tract's f32 softmax over the last axis by [`LastAxisSoftmax`].
pub fn replace_softmaxes(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(op) = node.op_as::<Softmax>() else { continue };
        let fact = model.outlet_fact(node.inputs[0])?;
        if op.kind != SoftmaxKind::Softmax || op.quant_output_dt.is_some() || fact.datum_type != f32::datum_type() || fact.rank() == 0 || op.axes.as_slice() != [fact.rank() - 1] {
            continue;
        }
        TypedModelPatch::replace_single_op(model, node, &node.inputs, LastAxisSoftmax)?.apply(model)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp() {
        let mut worst = 0f64;
        for i in -87_000..=87_900 {
            let x = i as f32 / 1000.0 + 0.000_37;
            let (got, want) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert!(exp(f32::NAN).is_nan());
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }

    /// Against the formula in f64, rows of several lengths (a multiple of the lanes and not),
    /// the same bits on one thread and three.
    #[test]
    fn rows_sum_to_one_as_the_formula_says() -> TractResult<()> {
        for row_len in [1, 7, 16, 33, 64, 1000] {
            let rows = 40_000 / row_len + 1;
            let x: Vec<f32> = (0..rows * row_len).map(|i| ((i * 37) % 101) as f32 / 7.0 - 6.0).collect();
            let input = Tensor::from_shape(&[rows, row_len], &x)?;
            let run = |threads: usize| -> TractResult<Vec<f32>> {
                let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
                let out = tract_linalg::multithread::multithread_tract_scope(executor, || LastAxisSoftmax.eval(&EvalContext::out_of_plan(), tvec!(input.clone().into_tvalue())))?;
                Ok(out[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
            };
            let got = run(1)?;
            assert!(got.iter().zip(&run(3)?).all(|(a, b)| a.to_bits() == b.to_bits()), "threads change the bits");
            for (row, out) in x.chunks(row_len).zip(got.chunks(row_len)) {
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                for (&v, &g) in row.iter().zip(out) {
                    let want = (v as f64 - max).exp() / sum;
                    assert!((g as f64 - want).abs() <= 1e-6 * want + 1e-9, "row of {row_len}: {g} against {want}");
                }
            }
        }
        Ok(())
    }
}
