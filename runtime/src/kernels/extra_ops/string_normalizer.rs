//! ONNX `StringNormalizer`, which tract lacks: drops stop words and changes case. Its output
//! shape depends on the input's values.

use super::{Direct, needs_value};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_string_normalizer(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let case = node.get_attr_opt::<String>("case_change_action")?.unwrap_or_else(|| "NONE".into());
    ensure!(matches!(case.as_str(), "NONE" | "LOWER" | "UPPER"), "StringNormalizer: unknown case_change_action '{case}'");
    let case_sensitive = node.get_attr_opt::<i64>("is_case_sensitive")?.unwrap_or(0) != 0;
    let stopwords = node.get_attr_opt_vec::<String>("stopwords")?.unwrap_or_default();
    Ok((expand(Direct { op: StringNormalizer { case, case_sensitive, stopwords }, outputs: 1 }), vec![]))
}

/// `StringNormalizer`: drops stop words (compared with or without case) and changes case, on a
/// `[C]` or `[1, C]` string tensor; an all-dropped result is one empty string.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StringNormalizer {
    case: String,
    case_sensitive: bool,
    stopwords: Vec<String>,
}

impl StringNormalizer {
    fn compute(&self, x: &Tensor) -> TractResult<(Vec<String>, Vec<usize>)> {
        let shape = x.shape();
        ensure!(shape.len() == 1 || (shape.len() == 2 && shape[0] == 1), "StringNormalizer: input must be [C] or [1, C], got {shape:?}");
        let stop = |w: &str| if self.case_sensitive { self.stopwords.iter().any(|s| s == w) } else { self.stopwords.iter().any(|s| s.to_lowercase() == w.to_lowercase()) };
        let mut kept: Vec<String> = x
            .to_plain_array_view::<String>()?
            .iter()
            .filter(|w| !stop(w))
            .map(|w| match self.case.as_str() {
                "LOWER" => w.to_lowercase(),
                "UPPER" => w.to_uppercase(),
                _ => w.clone(),
            })
            .collect();
        if kept.is_empty() {
            kept.push(String::new());
        }
        let out_shape = if shape.len() == 2 { vec![1, kept.len()] } else { vec![kept.len()] };
        Ok((kept, out_shape))
    }
}

impl Op for StringNormalizer {
    fn name(&self) -> StaticName {
        "StringNormalizer".into()
    }
    op_as_typed_op!();
}

impl EvalOp for StringNormalizer {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (kept, shape) = self.compute(&inputs[0])?;
        Ok(tvec!(tract_onnx::prelude::tract_ndarray::ArrayD::from_shape_vec(shape, kept)?.into_tensor().into_tvalue()))
    }
}

impl TypedOp for StringNormalizer {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (_, shape) = self.compute(needs_value(inputs[0], "StringNormalizer")?)?;
        Ok(tvec!(DatumType::String.fact(&shape)))
    }
    as_op!();
}
