//! Ops of the `ai.onnx.ml` and `ai.onnx.preview.training` domains.

use super::{InferError, NodeCtx, Rule};
use crate::dtype::DataType;
use crate::graph::AttrValue;
use crate::types::Dim;

pub(super) fn ml_rule(op: &str) -> Option<Rule> {
    Some(match op {
        "LabelEncoder" => label_encoder,
        "Binarizer" | "Normalizer" | "Scaler" => same_shape_as_input,
        "ArrayFeatureExtractor" => array_feature_extractor,
        "TreeEnsemble" => tree_ensemble,
        _ => return None,
    })
}

pub(super) fn training_rule(op: &str) -> Option<Rule> {
    Some(match op {
        "Adagrad" | "Adam" | "Momentum" => optimizer,
        _ => return None,
    })
}

fn same_shape_as_input(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = if ctx.node.op_type == "Binarizer" { ctx.elem(0) } else { Some(DataType::Float) };
    ctx.set(0, elem, ctx.dims(0).map(<[Dim]>::to_vec));
    Ok(())
}

fn label_encoder(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let n = ctx.node;
    let elem = if let Some(t) = n.attr_tensor("values_tensor") {
        Some(t.dtype())
    } else if matches!(n.attr("values_strings"), Some(AttrValue::Strings(_))) {
        Some(DataType::String)
    } else if n.attr_ints("values_int64s").is_some() {
        Some(DataType::Int64)
    } else if matches!(n.attr("values_floats"), Some(AttrValue::Floats(_))) {
        Some(DataType::Float)
    } else {
        None
    };
    ctx.set(0, elem, ctx.dims(0).map(<[Dim]>::to_vec));
    Ok(())
}

fn array_feature_extractor(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(1)?;
    let count = ctx.dims(1).map_or(Dim::Unknown, super::dim_product);
    let dims = match ctx.dims(0) {
        Some([]) => return Err(InferError::Rank { index: 0, rank: 0, expected: "at least 1".into() }),
        Some([_]) => Some(vec![Dim::Known(1), count]),
        Some([lead @ .., _]) => Some(lead.iter().cloned().chain(std::iter::once(count)).collect()),
        None => None,
    };
    ctx.set(0, ctx.elem(0), dims);
    Ok(())
}

fn tree_ensemble(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let targets = ctx.attr_int("n_targets").map_or(Dim::Unknown, Dim::Known);
    let rows = ctx.dims(0).and_then(|d| d.first().cloned()).unwrap_or(Dim::Unknown);
    ctx.set(0, ctx.elem(0), Some(vec![rows, targets]));
    Ok(())
}

/// Optimizers update their tensors in place: each new tensor is typed like the old one.
/// Inputs are R, T, then groups of n tensors (X, G, and H for Adagrad; X, G, V for Momentum;
/// X, G, V, H for Adam); outputs are the new X, then the new V and/or H.
fn optimizer(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let groups = if ctx.node.op_type == "Adam" { 4 } else { 3 };
    let tensors = ctx.input_count().saturating_sub(2);
    if !tensors.is_multiple_of(groups) || tensors == 0 {
        return Err(InferError::Invalid(format!("{tensors} optimized tensors do not form groups of {groups}")));
    }
    let n = tensors / groups;
    // The input group each output group copies: X (0), then the state groups after G (1).
    let sources: Vec<usize> = (0..groups).filter(|&g| g != 1).collect();
    for (k, g) in sources.iter().enumerate() {
        for i in 0..n {
            ctx.pass_through(2 + g * n + i, k * n + i);
        }
    }
    Ok(())
}
