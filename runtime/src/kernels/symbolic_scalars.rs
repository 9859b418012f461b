//! A Mul by a scalar computed from a symbolic dimension keeps that scalar out of tract's
//! declutter, which casts a Mul's uniform operand to f64 to test it for zero and fails while the
//! dimension is still a symbol ("Undetermined symbol"). MiniLM's mask construction multiplies
//! `Range(batch)` by `seq` this way; without this, it had no plan for every length and each new
//! length was planned on its own (about a quarter of a second each).
//!
//! The scalar goes through [`RunTimeValue`], a pass-through op tract neither folds nor sees
//! through, so the Mul stays a Mul and computes at run time, when `seq` has a value.

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_core::ops::binary::TypedBinOp;
use tract_onnx::tract_core::ops::math::Mul;

/// Its input, unchanged; its output's fact carries no value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RunTimeValue;

impl Op for RunTimeValue {
    fn name(&self) -> StaticName {
        "RunTimeValue".into()
    }
    op_as_typed_op!();
}

impl EvalOp for RunTimeValue {
    // Not evaluated while optimising: that would make the value a constant again.
    not_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        Ok(inputs)
    }
}

impl TypedOp for RunTimeValue {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

/// True when `fact` is a constant of dimensions one of which is still symbolic.
fn symbolic_constant(fact: &TypedFact) -> bool {
    fact.datum_type == TDim::datum_type() && fact.konst.as_ref().and_then(|k| k.try_as_plain_ram().ok()?.as_slice::<TDim>().ok().map(|dims| dims.iter().any(|d| d.to_i64().is_err()))).unwrap_or(false)
}

/// Puts a [`RunTimeValue`] before the symbolic constant operand of each Mul whose other operand
/// is computed at run time (when both are constants tract folds the product itself). Runs on
/// the typed model, before tract's declutter.
pub fn hide_symbolic_scalars(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = &model.nodes()[id];
        let Some(bin) = node.op_as::<TypedBinOp>() else { continue };
        if !bin.0.is::<Mul>() || node.inputs.len() != 2 {
            continue;
        }
        let facts: Vec<TypedFact> = model.node_input_facts(id)?.into_iter().cloned().collect();
        let Some(slot) = (0..2).find(|&s| symbolic_constant(&facts[s]) && facts[1 - s].konst.is_none()) else { continue };
        let mut patch = TypedModelPatch::default();
        let inputs = node.inputs.iter().map(|&o| patch.tap_model(model, o)).collect::<TractResult<TVec<_>>>()?;
        let mut wired = inputs.clone();
        wired[slot] = patch.wire_node(format!("{}.run_time", node.name), RunTimeValue, &[inputs[slot]])?[0];
        let out = patch.wire_node(&node.name, node.op.clone(), &wired)?;
        patch.shunt_outside(model, id.into(), out[0])?;
        patch.apply(model)?;
    }
    Ok(())
}
