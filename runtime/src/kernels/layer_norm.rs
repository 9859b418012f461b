//! ONNX LayerNormalization as one op: each row's mean, variance and normalisation in one pass
//! over the row, in place of tract's expansion into casts, two reductions and six elementwise
//! ops (each a pass over the whole tensor, and with symbolic shapes tract's generic loops).
//!
//! Why: MiniLM's 13 layer norms took about 0.6 ms of its 10 ms run at 64 tokens that way,
//! onnxruntime's fused kernel about 0.25 ms. Nodes that ask for the optional Mean and
//! InvStdDev outputs keep tract's expansion.
//!
//! Computed in f32 whatever the input type (the spec's default `stash_type`), as tract's and
//! onnxruntime's do; rows are spread over the session's threads, each row summed in one fixed
//! order, so results do not depend on the thread count.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's builder, for the nodes this op does not take.
pub static TRACT_LAYER_NORMALIZATION: std::sync::OnceLock<Option<Builder>> = std::sync::OnceLock::new();

/// Elements below which the rows stay on the calling thread.
const MIN_PARALLEL_ELEMENTS: usize = 1 << 15;

pub fn build_layer_normalization(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let stash = node.get_attr_opt::<i64>("stash_type")?.unwrap_or(1);
    if node.output.iter().skip(1).any(|o| !o.is_empty()) || stash != 1 {
        let Some(tract) = TRACT_LAYER_NORMALIZATION.get().copied().flatten() else { bail!("LayerNormalization: no builder for its optional outputs") };
        return tract(ctx, node);
    }
    let op = LayerNorm { axis: node.get_attr_opt::<i64>("axis")?.unwrap_or(-1), epsilon: node.get_attr_opt::<f32>("epsilon")?.unwrap_or(1e-5).to_bits() };
    Ok((expand(op), vec![]))
}

/// `y = (x - mean) / sqrt(var + epsilon) · scale (+ bias)` over the axes from `axis` on.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LayerNorm {
    pub axis: i64,
    /// The f32's bits (the op is hashed).
    pub epsilon: u32,
}

impl LayerNorm {
    fn axis(&self, rank: usize) -> TractResult<usize> {
        let axis = if self.axis < 0 { self.axis + rank as i64 } else { self.axis };
        ensure!((0..rank as i64).contains(&axis), "LayerNormalization: axis {} for rank {rank}", self.axis);
        Ok(axis as usize)
    }
}

/// `t`'s values as f32, broadcast to `shape` (scale and bias to the normalised shape).
fn as_f32(t: &Tensor, shape: &[usize]) -> TractResult<Vec<f32>> {
    let t = t.cast_to::<f32>()?;
    let t = if t.shape() == shape { t } else { std::borrow::Cow::Owned(t.broadcast_to_shape(shape)?) };
    Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
}

/// One row: mean and variance in 16 running lanes (so the compiler vectorises them), then the
/// normalisation.
fn normalize_row(x: &[f32], scale: &[f32], bias: Option<&[f32]>, epsilon: f32, y: &mut [f32]) {
    let n = x.len() as f32;
    let lanes = |f: &dyn Fn(f32) -> f32| -> f32 {
        let mut acc = [0f32; 16];
        let chunks = x.chunks_exact(16);
        let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
        for c in chunks {
            for i in 0..16 {
                acc[i] += f(c[i]);
            }
        }
        acc.iter().sum::<f32>() + tail
    };
    let mean = lanes(&|v| v) / n;
    let var = lanes(&|v| (v - mean) * (v - mean)) / n;
    let inv = 1.0 / (var + epsilon).sqrt();
    match bias {
        Some(b) => y.iter_mut().zip(x).zip(scale.iter().zip(b)).for_each(|((y, &x), (&s, &b))| *y = (x - mean) * inv * s + b),
        None => y.iter_mut().zip(x).zip(scale).for_each(|((y, &x), &s)| *y = (x - mean) * inv * s),
    }
}

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }

    op_as_typed_op!();
}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        ensure!(inputs.len() == 2 || inputs.len() == 3, "LayerNormalization: {} inputs", inputs.len());
        let x = &inputs[0];
        let axis = self.axis(x.rank())?;
        let normalized = &x.shape()[axis..];
        let n: usize = normalized.iter().product();
        let scale = as_f32(&inputs[1], normalized)?;
        let bias = inputs.get(2).map(|b| as_f32(b, normalized)).transpose()?;
        let xs = x.cast_to::<f32>()?;
        // SAFETY: every row is written below (there are none when `n` is 0).
        let mut y = unsafe { Tensor::uninitialized::<f32>(x.shape())? };
        if n > 0 {
            let px = xs.try_as_plain_ram()?;
            let (xv, sv, bv) = (px.as_slice::<f32>()?, &scale[..], bias.as_deref());
            let mut py = y.try_as_plain_ram_mut()?;
            let yv = py.as_slice_mut::<f32>()?;
            let epsilon = f32::from_bits(self.epsilon);
            let rows = |(xr, yr): (&[f32], &mut [f32])| normalize_row(xr, sv, bv, epsilon, yr);
            match super::thread_pool(xv.len() >= MIN_PARALLEL_ELEMENTS) {
                Some(pool) => {
                    use rayon::prelude::*;
                    pool.install(|| xv.par_chunks(n).zip(yv.par_chunks_mut(n)).for_each(rows));
                }
                None => xv.chunks(n).zip(yv.chunks_mut(n)).for_each(rows),
            }
        }
        // An f32 output as it is (`cast_to_dt` then `into_owned` would copy it).
        let y = if x.datum_type() == f32::datum_type() { y } else { y.cast_to_dt(x.datum_type())?.into_owned() };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.axis(inputs[0].rank())?;
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

impl Expansion for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        if inputs.len() != 2 {
            check_input_arity(inputs, 3)?;
        }
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against the formula in f64: axes, a bias or none, scale broadcast, and the same bits on
    /// one thread and three.
    #[test]
    fn normalizes_like_the_formula() -> TractResult<()> {
        // Large enough for the rows to be spread over threads.
        let shape = [4, 64, 160];
        let x: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0).collect();
        let x = Tensor::from_shape(&shape, &x)?;
        for axis in [-1i64, 1, 2] {
            let a = if axis < 0 { 2 } else { axis as usize };
            let normalized = &shape[a..];
            let n: usize = normalized.iter().product();
            let scale = Tensor::from_shape(normalized, &(0..n).map(|i| 0.5 + i as f32 / n as f32).collect::<Vec<_>>())?;
            let bias = Tensor::from_shape(normalized, &(0..n).map(|i| i as f32 * 0.01).collect::<Vec<_>>())?;
            for with_bias in [false, true] {
                let op = LayerNorm { axis, epsilon: 1e-5f32.to_bits() };
                let mut inputs = tvec!(x.clone().into_tvalue(), scale.clone().into_tvalue());
                if with_bias {
                    inputs.push(bias.clone().into_tvalue());
                }
                let run = |threads: usize| -> TractResult<Tensor> {
                    let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
                    Ok(tract_linalg::multithread::multithread_tract_scope(executor, || op.eval(&EvalContext::out_of_plan(), inputs.clone()))?.remove(0).into_tensor())
                };
                let got = run(1)?;
                assert_eq!(got, run(3)?, "threads change the bits");
                let data = |t: &Tensor| -> TractResult<Vec<f32>> { Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec()) };
                let (xv, gv, sv, bv) = (data(&x)?, data(&got)?, data(&scale)?, data(&bias)?);
                for (row, out) in xv.chunks(n).zip(gv.chunks(n)) {
                    let mean = row.iter().map(|&v| v as f64).sum::<f64>() / n as f64;
                    let var = row.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n as f64;
                    for (i, (&v, &g)) in row.iter().zip(out).enumerate() {
                        let want = (v as f64 - mean) / (var + 1e-5).sqrt() * sv[i] as f64 + if with_bias { bv[i] as f64 } else { 0.0 };
                        assert!((g as f64 - want).abs() < 1e-5 * (1.0 + want.abs()), "axis {axis}: {g} against {want}");
                    }
                }
            }
        }
        Ok(())
    }
}
