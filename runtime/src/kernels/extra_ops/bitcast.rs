//! ONNX `BitCast`, which tract lacks: reinterprets a tensor's bytes as another type of the
//! same width.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_bitcast(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let code: i64 = node.get_attr("to")?;
    let to = compactor_ir::DataType::from_code(code as i32)
        .filter(|dt| crate::value::tract_native(*dt) && *dt != compactor_ir::DataType::String && *dt != compactor_ir::DataType::Bool)
        .and_then(crate::value::carrier_type)
        .with_context(|| format!("BitCast: target type {code} is not supported"))?;
    Ok((expand(BitCastNode { to }), vec![]))
}

#[derive(Debug, Clone)]
struct BitCastNode {
    to: DatumType,
}

impl Expansion for BitCastNode {
    fn name(&self) -> StaticName {
        "BitCast".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, self.to)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let from = model.outlet_fact(inputs[0])?.datum_type;
        ensure!(from.size_of() == self.to.size_of(), "BitCast: only types of the same width are supported ({from:?} to {:?})", self.to);
        model.wire_node(prefix, BitCast { to: self.to }, inputs)
    }
}

/// Reinterprets the bytes of a tensor as another type of the same width.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BitCast {
    pub to: DatumType,
}

impl Op for BitCast {
    fn name(&self) -> StaticName {
        "BitCast".into()
    }
    op_as_typed_op!();
}

impl EvalOp for BitCast {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(x.datum_type().size_of() == self.to.size_of() && x.datum_type().is_copy(), "BitCast: cannot reinterpret {:?} as {:?}", x.datum_type(), self.to);
        let mut y = x.into_tensor().into_plain_ram()?;
        // SAFETY: same element width, plain storage, and the target is a number type for which
        // every bit pattern is a valid value (bool and strings are refused when parsing).
        unsafe { y.set_datum_type(self.to) };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for BitCast {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(self.to.fact(inputs[0].shape.clone())))
    }
    as_op!();
}
