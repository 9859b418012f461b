//! ONNX `Unique`, which tract lacks: distinct values (or slices), first indices, inverse map
//! and counts. Its output shape depends on the input's values.

use super::{Direct, needs_value};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_unique(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let sorted = node.get_attr_opt::<i64>("sorted")?.unwrap_or(1) != 0;
    let axis = node.get_attr_opt::<i64>("axis")?;
    let outputs = node.output.len();
    Ok((expand(Direct { op: Unique { sorted, axis }, outputs }), vec![]))
}

/// `Unique`: the distinct values (or slices along `axis`), their first indices, the inverse
/// map and the counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Unique {
    sorted: bool,
    axis: Option<i64>,
}

struct UniqueResult {
    /// Index of the first occurrence of each unique slice, in output order.
    firsts: Vec<usize>,
    inverse: Vec<i64>,
    counts: Vec<i64>,
    axis: usize,
    shape: Vec<usize>,
}

impl Unique {
    fn compute(&self, x: &Tensor) -> TractResult<UniqueResult> {
        let (x, axis) = match self.axis {
            None => (x.clone().into_shape(&[x.len()])?, 0usize),
            Some(a) => {
                let rank = x.rank() as i64;
                let a = if a < 0 { a + rank } else { a };
                ensure!((0..rank).contains(&a), "Unique: axis {a} out of range");
                (x.clone(), a as usize)
            }
        };
        let shape = x.shape().to_vec();
        let moved = x.clone().move_axis(axis, 0)?;
        let n = shape[axis];
        let width = moved.len().checked_div(n).unwrap_or(0);
        let keys: Vec<f64> = moved.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect();
        let slice = |i: usize| &keys[i * width..(i + 1) * width];
        let compare = |a: usize, b: usize| slice(a).iter().zip(slice(b)).map(|(x, y)| x.total_cmp(y)).find(|o| o.is_ne()).unwrap_or(std::cmp::Ordering::Equal);
        let mut firsts: Vec<usize> = Vec::new();
        let mut inverse = vec![0i64; n];
        for (i, slot) in inverse.iter_mut().enumerate() {
            *slot = match firsts.iter().position(|&f| compare(f, i).is_eq()) {
                Some(u) => u as i64,
                None => {
                    firsts.push(i);
                    firsts.len() as i64 - 1
                }
            };
        }
        if self.sorted {
            let mut order: Vec<usize> = (0..firsts.len()).collect();
            order.sort_by(|&a, &b| compare(firsts[a], firsts[b]));
            let mut rank = vec![0i64; order.len()];
            for (new, &old) in order.iter().enumerate() {
                rank[old] = new as i64;
            }
            inverse.iter_mut().for_each(|u| *u = rank[*u as usize]);
            firsts = order.iter().map(|&o| firsts[o]).collect();
        }
        let mut counts = vec![0i64; firsts.len()];
        inverse.iter().for_each(|&u| counts[u as usize] += 1);
        Ok(UniqueResult { firsts, inverse, counts, axis, shape })
    }
}

impl Op for Unique {
    fn name(&self) -> StaticName {
        "Unique".into()
    }
    op_as_typed_op!();
}

impl EvalOp for Unique {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let r = self.compute(x)?;
        let flat = if self.axis.is_none() { x.clone().into_tensor().into_shape(&[x.len()])? } else { x.clone().into_tensor() };
        let picked: Vec<Tensor> = r.firsts.iter().map(|&i| flat.slice(r.axis, i, i + 1)).collect::<TractResult<_>>()?;
        let y = if picked.is_empty() {
            let mut shape = r.shape.clone();
            shape[r.axis] = 0;
            Tensor::zero_dt(x.datum_type(), &shape)?
        } else {
            Tensor::stack_tensors(r.axis, &picked)?
        };
        let indices: Vec<i64> = r.firsts.iter().map(|&i| i as i64).collect();
        Ok(tvec!(y.into_tvalue(), tensor1(&indices).into_tvalue(), tensor1(&r.inverse).into_tvalue(), tensor1(&r.counts).into_tvalue()))
    }
}

impl TypedOp for Unique {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = needs_value(inputs[0], "Unique")?;
        let r = self.compute(x)?;
        let mut shape = r.shape.clone();
        shape[r.axis] = r.firsts.len();
        let count = r.firsts.len();
        Ok(tvec!(inputs[0].datum_type.fact(&shape), i64::fact([count]), i64::fact([r.inverse.len()]), i64::fact([count])))
    }
    as_op!();
}
