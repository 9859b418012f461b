//! ONNX ops tract 0.23.9 does not have, registered through its op register: `CumProd` and
//! `BitCast` (same-width types). Each is a parsed [`Expansion`] wiring a small typed op.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::tract_ndarray::Axis;
use tract_onnx::prelude::tract_num_traits::One;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_cumprod(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let exclusive = node.get_attr_opt::<i64>("exclusive")?.unwrap_or(0) != 0;
    let reverse = node.get_attr_opt::<i64>("reverse")?.unwrap_or(0) != 0;
    Ok((expand(CumProdNode { exclusive, reverse }), vec![]))
}

#[derive(Debug, Clone)]
struct CumProdNode {
    exclusive: bool,
    reverse: bool,
}

impl Expansion for CumProdNode {
    fn name(&self) -> StaticName {
        "CumProd".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 2)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let axis = model.outlet_fact(inputs[1])?.konst.clone().context("CumProd: axis must be a constant")?;
        let axis = axis.cast_to_scalar::<i64>()?;
        let rank = model.outlet_fact(inputs[0])?.rank() as i64;
        let axis = if axis < 0 { axis + rank } else { axis };
        ensure!((0..rank).contains(&axis), "CumProd: axis {axis} out of range for rank {rank}");
        model.wire_node(prefix, CumProd { axis: axis as usize, exclusive: self.exclusive, reverse: self.reverse }, &[inputs[0]])
    }
}

/// Cumulative product along `axis`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CumProd {
    pub axis: usize,
    pub exclusive: bool,
    pub reverse: bool,
}

impl CumProd {
    fn eval_t<T: Datum + Copy + std::ops::Mul<Output = T> + One>(&self, t: &Tensor) -> TractResult<Tensor> {
        let mut a = t.to_plain_array_view::<T>()?.to_owned();
        for mut lane in a.lanes_mut(Axis(self.axis)) {
            let n = lane.len();
            let mut acc = T::one();
            for step in 0..n {
                let i = if self.reverse { n - 1 - step } else { step };
                let v = lane[i];
                if self.exclusive {
                    lane[i] = acc;
                    acc = acc * v;
                } else {
                    acc = acc * v;
                    lane[i] = acc;
                }
            }
        }
        Ok(a.into_tensor())
    }
}

impl Op for CumProd {
    fn name(&self) -> StaticName {
        "CumProd".into()
    }
    op_as_typed_op!();
}

impl EvalOp for CumProd {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let y = match x.datum_type() {
            DatumType::F32 => self.eval_t::<f32>(&x)?,
            DatumType::F64 => self.eval_t::<f64>(&x)?,
            DatumType::I32 => self.eval_t::<i32>(&x)?,
            DatumType::I64 => self.eval_t::<i64>(&x)?,
            DatumType::U32 => self.eval_t::<u32>(&x)?,
            DatumType::U64 => self.eval_t::<u64>(&x)?,
            DatumType::F16 => {
                let wide = x.cast_to::<f32>()?.into_owned();
                self.eval_t::<f32>(&wide)?.cast_to_dt(DatumType::F16)?.into_owned()
            }
            other => bail!("CumProd: {other:?} is not supported"),
        };
        Ok(tvec!(y.into_tvalue()))
    }
}

impl TypedOp for CumProd {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
    as_op!();
}

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
