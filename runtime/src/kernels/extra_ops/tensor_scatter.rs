//! ONNX `TensorScatter`, which tract lacks: writes an update into a copy of a cache at each
//! batch entry's write index, linearly or circularly.

use tract_onnx::model::{ParsingContext, optional_inputs};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_tensor_scatter(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let circular = match node.get_attr_opt::<String>("mode")?.as_deref().unwrap_or("linear") {
        "linear" => false,
        "circular" => true,
        other => bail!("TensorScatter: unknown mode '{other}'"),
    };
    let axis = node.get_attr_opt::<i64>("axis")?.unwrap_or(-2);
    let has_indices = optional_inputs(node).nth(2).flatten().is_some();
    Ok((expand(TensorScatterNode(TensorScatter { axis, circular, has_indices })), vec![]))
}

#[derive(Debug, Clone)]
struct TensorScatterNode(TensorScatter);

impl Expansion for TensorScatterNode {
    fn name(&self) -> StaticName {
        "TensorScatter".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Writes `update` into a copy of the cache along `axis`, starting at each batch entry's write
/// index (wrapping around the cache length in circular mode).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TensorScatter {
    axis: i64,
    circular: bool,
    has_indices: bool,
}

impl TensorScatter {
    fn eval_t<T: Datum + Clone>(&self, cache: &Tensor, update: &Tensor, writes: &[i64]) -> TractResult<Tensor> {
        let shape = cache.shape();
        let rank = shape.len() as i64;
        let axis = if self.axis < 0 { self.axis + rank } else { self.axis };
        ensure!((1..rank).contains(&axis), "TensorScatter: axis {} must fall after the batch axis", self.axis);
        let axis = axis as usize;
        let up = update.shape();
        ensure!(up.len() == shape.len() && (0..shape.len()).all(|d| if d == axis { up[d] <= shape[d] } else { up[d] == shape[d] }), "TensorScatter: update {up:?} does not fit cache {shape:?}");
        let (max_len, len) = (shape[axis], up[axis]);
        let inner: usize = shape[axis + 1..].iter().product();
        let prefix = &shape[..axis];
        let prefixes: usize = prefix.iter().product();
        let source = update.to_plain_array_view::<T>()?;
        let source: Vec<T> = source.iter().cloned().collect();
        let mut out: Vec<T> = cache.to_plain_array_view::<T>()?.iter().cloned().collect();
        let mut index = vec![0usize; prefix.len()];
        for p in 0..prefixes {
            let mut rest = p;
            for d in (0..prefix.len()).rev() {
                index[d] = rest % prefix[d];
                rest /= prefix[d];
            }
            let start = *writes.get(index[0]).context("TensorScatter: no write index for a batch entry")?;
            for step in 0..len {
                let mut position = start + step as i64;
                let mut at = index.clone();
                if self.circular {
                    // As the operator's definition: every coordinate taken modulo the cache length.
                    position = position.rem_euclid(max_len as i64);
                    at.iter_mut().for_each(|i| *i %= max_len);
                }
                ensure!((0..max_len as i64).contains(&position), "TensorScatter: write position {position} outside the cache ({max_len})");
                let flat_prefix = at.iter().zip(prefix).fold(0, |acc, (&i, &d)| acc * d + i);
                let dst = (flat_prefix * max_len + position as usize) * inner;
                let src = (p * len + step) * inner;
                out[dst..dst + inner].clone_from_slice(&source[src..src + inner]);
            }
        }
        Ok(tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, out)?.into_tensor())
    }
}

impl Op for TensorScatter {
    fn name(&self) -> StaticName {
        "TensorScatter".into()
    }
    op_as_typed_op!();
}

impl EvalOp for TensorScatter {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (cache, update) = (&inputs[0], &inputs[1]);
        let writes: Vec<i64> = if self.has_indices {
            inputs.get(2).context("TensorScatter: missing write_indices")?.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().copied().collect()
        } else {
            vec![0; cache.shape().first().copied().unwrap_or(0)]
        };
        let y = match cache.datum_type() {
            DatumType::F32 => self.eval_t::<f32>(cache, update, &writes)?,
            DatumType::F16 => self.eval_t::<f16>(cache, update, &writes)?,
            DatumType::F64 => self.eval_t::<f64>(cache, update, &writes)?,
            DatumType::I64 => self.eval_t::<i64>(cache, update, &writes)?,
            DatumType::I32 => self.eval_t::<i32>(cache, update, &writes)?,
            DatumType::I8 => self.eval_t::<i8>(cache, update, &writes)?,
            DatumType::U8 => self.eval_t::<u8>(cache, update, &writes)?,
            DatumType::Bool => self.eval_t::<bool>(cache, update, &writes)?,
            other => bail!("TensorScatter: {other:?} is not supported"),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for TensorScatter {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
    as_op!();
}
