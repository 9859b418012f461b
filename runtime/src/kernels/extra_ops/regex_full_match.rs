//! ONNX `RegexFullMatch`, which tract lacks: whether each string matches a pattern as a whole
//! (on the `regex` crate).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_regex_full_match(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let pattern: String = node.get_attr("pattern")?;
    // Full match: the whole string, not a substring (ONNX's RE2 semantics).
    let regex = regex::Regex::new(&format!("^(?:{pattern})$")).with_context(|| format!("RegexFullMatch: bad pattern '{pattern}'"))?;
    Ok((expand(RegexFullMatchNode(RegexFullMatch { pattern, regex: Arc::new(regex) })), vec![]))
}

#[derive(Debug, Clone)]
struct RegexFullMatchNode(RegexFullMatch);

impl Expansion for RegexFullMatchNode {
    fn name(&self) -> StaticName {
        "RegexFullMatch".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::Bool)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

/// Whether each string matches the pattern as a whole.
#[derive(Debug, Clone)]
pub struct RegexFullMatch {
    pattern: String,
    regex: Arc<regex::Regex>,
}

impl PartialEq for RegexFullMatch {
    fn eq(&self, other: &Self) -> bool {
        self.pattern == other.pattern
    }
}
impl Eq for RegexFullMatch {}

impl Op for RegexFullMatch {
    fn name(&self) -> StaticName {
        "RegexFullMatch".into()
    }
    op_as_typed_op!();
}

impl EvalOp for RegexFullMatch {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        let matched = x.to_plain_array_view::<String>()?.map(|s| self.regex.is_match(s));
        Ok(tvec!(matched.into_tensor().into_tvalue()))
    }
}

impl TypedOp for RegexFullMatch {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(DatumType::Bool.fact(inputs[0].shape.clone())))
    }
    as_op!();
}
