//! ONNX `ReverseSequence`, which tract lacks: reverses the first `lengths[b]` steps of each
//! batch entry along the time axis.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::tract_ndarray::Axis;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_reverse_sequence(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let batch_axis = node.get_attr_opt::<i64>("batch_axis")?.unwrap_or(1);
    let time_axis = node.get_attr_opt::<i64>("time_axis")?.unwrap_or(0);
    ensure!(matches!((batch_axis, time_axis), (0, 1) | (1, 0)), "ReverseSequence: batch_axis and time_axis must be 0 and 1");
    Ok((expand(ReverseSequenceNode { batch_axis: batch_axis as usize, time_axis: time_axis as usize }), vec![]))
}

#[derive(Debug, Clone)]
struct ReverseSequenceNode {
    batch_axis: usize,
    time_axis: usize,
}

impl Expansion for ReverseSequenceNode {
    fn name(&self) -> StaticName {
        "ReverseSequence".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, ReverseSequence { batch_axis: self.batch_axis, time_axis: self.time_axis }, inputs)
    }
}

/// Reverses, for each batch entry `b`, the first `lengths[b]` steps along the time axis.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReverseSequence {
    pub batch_axis: usize,
    pub time_axis: usize,
}

impl ReverseSequence {
    fn eval_t<T: Datum + Clone>(&self, x: &Tensor, lengths: &[i64]) -> TractResult<Tensor> {
        let source = x.to_plain_array_view::<T>()?;
        let mut out = source.to_owned();
        ensure!(lengths.len() == source.shape()[self.batch_axis], "ReverseSequence: {} lengths for a batch of {}", lengths.len(), source.shape()[self.batch_axis]);
        let steps = source.shape()[self.time_axis];
        for (b, &len) in lengths.iter().enumerate() {
            ensure!((0..=steps as i64).contains(&len), "ReverseSequence: length {len} out of [0, {steps}]");
            let len = len as usize;
            for t in 0..len {
                let from = source.index_axis(Axis(self.batch_axis), b);
                let to_time = if self.time_axis > self.batch_axis { self.time_axis - 1 } else { self.time_axis };
                let row = from.index_axis(Axis(to_time), len - 1 - t).to_owned();
                let mut target = out.index_axis_mut(Axis(self.batch_axis), b);
                target.index_axis_mut(Axis(to_time), t).assign(&row);
            }
        }
        Ok(out.into_tensor())
    }
}

impl Op for ReverseSequence {
    fn name(&self) -> StaticName {
        "ReverseSequence".into()
    }
    op_as_typed_op!();
}

impl EvalOp for ReverseSequence {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, lengths) = args_2!(inputs);
        let lengths: Vec<i64> = lengths.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().copied().collect();
        let y = match x.datum_type() {
            DatumType::F32 => self.eval_t::<f32>(&x, &lengths)?,
            DatumType::F64 => self.eval_t::<f64>(&x, &lengths)?,
            DatumType::F16 => self.eval_t::<f16>(&x, &lengths)?,
            DatumType::I64 => self.eval_t::<i64>(&x, &lengths)?,
            DatumType::I32 => self.eval_t::<i32>(&x, &lengths)?,
            DatumType::U8 => self.eval_t::<u8>(&x, &lengths)?,
            DatumType::I8 => self.eval_t::<i8>(&x, &lengths)?,
            DatumType::Bool => self.eval_t::<bool>(&x, &lengths)?,
            DatumType::String => self.eval_t::<String>(&x, &lengths)?,
            other => bail!("ReverseSequence: {other:?} is not supported"),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for ReverseSequence {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].rank() >= 2, "ReverseSequence: the input must have rank >= 2");
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
    as_op!();
}
