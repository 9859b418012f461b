//! ONNX `StringSplit`, which tract lacks: each string split on a delimiter, padded to the
//! longest split, with the split counts. Its output shape depends on the input's values.

use super::{Direct, needs_value};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_string_split(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let delimiter = node.get_attr_opt::<String>("delimiter")?.filter(|d| !d.is_empty());
    let maxsplit = node.get_attr_opt::<i64>("maxsplit")?.filter(|&m| m >= 0).map(|m| m as usize);
    Ok((expand(Direct { op: StringSplit { delimiter, maxsplit }, outputs: 2 }), vec![]))
}

/// `StringSplit`: each string split on a delimiter (runs of whitespace when none), at most
/// `maxsplit` times; substrings padded with "" to the longest split, and the split counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringSplit {
    delimiter: Option<String>,
    maxsplit: Option<usize>,
}

impl StringSplit {
    fn split(&self, s: &str) -> Vec<String> {
        let limit = self.maxsplit.map(|m| m + 1).unwrap_or(usize::MAX);
        match &self.delimiter {
            Some(d) => s.splitn(limit, d.as_str()).map(str::to_string).collect(),
            None => {
                // Python's str.split(None, maxsplit): runs of whitespace, leading ones ignored.
                let mut parts = Vec::new();
                let mut rest = s.trim_start();
                while !rest.is_empty() {
                    if parts.len() + 1 == limit {
                        parts.push(rest.to_string());
                        break;
                    }
                    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
                    parts.push(rest[..end].to_string());
                    rest = rest[end..].trim_start();
                }
                parts
            }
        }
    }

    fn compute(&self, x: &Tensor) -> TractResult<(Vec<Vec<String>>, usize)> {
        let splits: Vec<Vec<String>> = x.to_plain_array_view::<String>()?.iter().map(|s| self.split(s)).collect();
        let width = splits.iter().map(Vec::len).max().unwrap_or(0);
        Ok((splits, width))
    }
}

impl Op for StringSplit {
    fn name(&self) -> StaticName {
        "StringSplit".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StringSplit {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let (splits, width) = self.compute(x)?;
        let counts: Vec<i64> = splits.iter().map(|s| s.len() as i64).collect();
        let padded: Vec<String> = splits
            .into_iter()
            .flat_map(|mut s| {
                s.resize(width, String::new());
                s
            })
            .collect();
        let mut shape = x.shape().to_vec();
        let counts = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape.clone(), counts)?.into_tensor();
        shape.push(width);
        let y = tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, padded)?.into_tensor();
        Ok(tvec!(y.into_tvalue(), counts.into_tvalue()))
    }
}

impl TypedOp for StringSplit {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (_, width) = self.compute(needs_value(inputs[0], "StringSplit")?)?;
        let mut shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        let counts = i64::fact(shape.clone());
        shape.push(width.to_dim());
        Ok(tvec!(DatumType::String.fact(shape), counts))
    }
    as_op!();
}
