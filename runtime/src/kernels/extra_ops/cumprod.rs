//! ONNX `CumProd`, which tract lacks: the cumulative product along a constant axis,
//! optionally exclusive and/or reversed.

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
