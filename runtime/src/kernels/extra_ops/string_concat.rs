//! ONNX `StringConcat`, which tract lacks: elementwise string concatenation, with numpy
//! broadcasting.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_string_concat(_ctx: &ParsingContext, _node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(StringConcatNode), vec![]))
}

#[derive(Debug, Clone)]
struct StringConcatNode;

impl Expansion for StringConcatNode {
    fn name(&self) -> StaticName {
        "StringConcat".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::String)?;
        s.given_2(&inputs[0].shape, &inputs[1].shape, move |s, a, b| {
            let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[a, b])?;
            s.equals(&outputs[0].shape, ShapeFactoid::from(shape))
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, StringConcat, inputs)
    }
}

/// Elementwise string concatenation, with numpy broadcasting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringConcat;

impl Op for StringConcat {
    fn name(&self) -> StaticName {
        "StringConcat".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StringConcat {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (a, b) = args_2!(inputs);
        let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[a.shape(), b.shape()])?;
        let (a, b) = (a.to_plain_array_view::<String>()?, b.to_plain_array_view::<String>()?);
        let (a, b) = (a.broadcast(&*shape).context("StringConcat: broadcast")?, b.broadcast(&*shape).context("StringConcat: broadcast")?);
        let joined = tract_onnx::prelude::tract_ndarray::Zip::from(&a).and(&b).map_collect(|x, y| format!("{x}{y}"));
        Ok(tvec!(joined.into_tensor().into_tvalue()))
    }
}

impl TypedOp for StringConcat {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = tract_onnx::tract_core::broadcast::multi_broadcast(&[&*inputs[0].shape, &*inputs[1].shape])?;
        Ok(tvec!(DatumType::String.fact(shape)))
    }
    as_op!();
}
