//! ONNX `Det`, which tract lacks: determinants of the trailing square matrices.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_det(_ctx: &ParsingContext, _node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    Ok((expand(DetNode), vec![]))
}

#[derive(Debug, Clone)]
struct DetNode;

impl Expansion for DetNode {
    fn name(&self) -> StaticName {
        "Det".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.given(&inputs[0].shape, move |s, shape| {
            let lead: TVec<TDim> = shape.iter().take(shape.len().saturating_sub(2)).cloned().collect();
            s.equals(&outputs[0].shape, ShapeFactoid::from(lead))
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, Det, inputs)
    }
}

/// Determinants of the trailing square matrices, by LU decomposition with partial pivoting (f64).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Det;

fn determinant(mut m: Vec<f64>, n: usize) -> f64 {
    let mut det = 1.0;
    for col in 0..n {
        let pivot = (col..n).max_by(|&a, &b| m[a * n + col].abs().total_cmp(&m[b * n + col].abs())).unwrap_or(col);
        if m[pivot * n + col] == 0.0 {
            return 0.0;
        }
        if pivot != col {
            for j in 0..n {
                m.swap(pivot * n + j, col * n + j);
            }
            det = -det;
        }
        let p = m[col * n + col];
        det *= p;
        for row in col + 1..n {
            let factor = m[row * n + col] / p;
            for j in col..n {
                m[row * n + j] -= factor * m[col * n + j];
            }
        }
    }
    det
}

impl Op for Det {
    fn name(&self) -> StaticName {
        "Det".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Det {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let shape = x.shape();
        ensure!(shape.len() >= 2 && shape[shape.len() - 1] == shape[shape.len() - 2], "Det: needs square trailing matrices, got {shape:?}");
        let n = shape[shape.len() - 1];
        let values: Vec<f64> = x.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect();
        let dets: Vec<f64> = values.chunks(n * n).map(|m| determinant(m.to_vec(), n)).collect();
        let out = Tensor::from_shape(&shape[..shape.len() - 2], &dets)?.cast_to_dt(x.datum_type())?.into_owned();
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for Det {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let rank = inputs[0].rank();
        ensure!(rank >= 2, "Det: the input must have rank >= 2");
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.iter().take(rank - 2).cloned().collect::<TVec<_>>())))
    }
    as_op!();
}
