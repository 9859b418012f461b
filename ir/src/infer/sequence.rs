//! Sequence and optional ops: their outputs are `seq<tensor>` / `optional<...>` types.

use super::control::join_types;
use super::{InferError, NodeCtx, Rule, normalize_axis};
use crate::dtype::DataType;
use crate::types::{Dim, TypeKind, ValueType};

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "SequenceEmpty" => sequence_empty,
        "SequenceConstruct" => sequence_construct,
        "SequenceInsert" => sequence_insert,
        "SequenceErase" => sequence_erase,
        "SequenceAt" => sequence_at,
        "SequenceLength" => sequence_length,
        "SplitToSequence" => split_to_sequence,
        "ConcatFromSequence" => concat_from_sequence,
        "Optional" => optional,
        "OptionalHasElement" => optional_has_element,
        "OptionalGetElement" => optional_get_element,
        _ => return None,
    })
}

fn sequence_of(elem: ValueType) -> ValueType {
    ValueType { kind: TypeKind::Sequence(Some(Box::new(elem))), denotation: None }
}

/// The element type of sequence input `i` (`None` when not known); an error if it is not a sequence.
fn sequence_element(ctx: &NodeCtx<'_>, i: usize) -> Result<Option<ValueType>, InferError> {
    match ctx.input_type(i).map(|t| &t.kind) {
        Some(TypeKind::Sequence(inner)) => Ok(inner.as_ref().map(|t| (**t).clone())),
        Some(TypeKind::Unset) | None => Ok(None),
        Some(_) => Err(InferError::InputValue { index: i, reason: "is not a sequence".into() }),
    }
}

fn sequence_empty(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let elem = ctx.attr_dtype("dtype")?.unwrap_or(DataType::Float);
    ctx.set_type(0, sequence_of(super::tensor_type(Some(elem), None)));
    Ok(())
}

fn sequence_construct(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let mut joined: Option<ValueType> = None;
    for i in 0..ctx.input_count() {
        let Some(t) = ctx.input_type(i) else { return Ok(()) };
        joined = Some(match joined {
            None => t.clone(),
            Some(j) => match join_types(&j, t) {
                Some(x) => x,
                None => return Err(InferError::InputValue { index: i, reason: "types differ".into() }),
            },
        });
    }
    if let Some(j) = joined {
        ctx.set_type(0, sequence_of(j));
    }
    Ok(())
}

fn sequence_insert(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let (Some(inner), Some(t)) = (sequence_element(ctx, 0)?, ctx.input_type(1)) else { return Ok(()) };
    if let Some(j) = join_types(&inner, t) {
        ctx.set_type(0, sequence_of(j));
    }
    Ok(())
}

fn sequence_erase(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    sequence_element(ctx, 0)?;
    ctx.pass_through(0, 0);
    Ok(())
}

fn sequence_at(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    if let Some(inner) = sequence_element(ctx, 0)? {
        ctx.set_type(0, inner);
    }
    Ok(())
}

fn sequence_length(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    sequence_element(ctx, 0)?;
    ctx.set(0, Some(DataType::Int64), Some(Vec::new()));
    Ok(())
}

fn split_to_sequence(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let dims = match ctx.dims(0) {
        Some(x) => {
            let axis = normalize_axis(ctx.attr_int_or("axis", 0), x.len())?;
            let mut out = x.to_vec();
            if !ctx.has_input(1) {
                if ctx.attr_int_or("keepdims", 1) != 0 {
                    out[axis] = Dim::Known(1);
                } else {
                    out.remove(axis);
                }
            } else {
                // Equal pieces only when a scalar split divides the axis.
                out[axis] = match (ctx.ints(1), &x[axis], ctx.rank(1)) {
                    (Some(s), Dim::Known(d), Some(0)) if s.len() == 1 && s[0] > 0 && d % s[0] == 0 => Dim::Known(s[0]),
                    (Some(s), _, Some(1)) if !s.is_empty() && s.iter().all(|&v| v == s[0]) => Dim::Known(s[0]),
                    _ => Dim::Unknown,
                };
            }
            Some(out)
        }
        None => None,
    };
    ctx.set_type(0, sequence_of(super::tensor_type(elem, dims)));
    Ok(())
}

fn concat_from_sequence(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let Some(inner) = sequence_element(ctx, 0)? else { return Ok(()) };
    let new_axis = ctx.attr_int_or("new_axis", 0) != 0;
    let axis = ctx.attr_int("axis").ok_or(InferError::Attribute { name: "axis", reason: "missing".into() })?;
    let dims = match inner.shape() {
        Some(s) => {
            let mut d = s.dims.clone();
            if new_axis {
                let a = normalize_axis(axis, d.len() + 1)?;
                d.insert(a, Dim::Unknown);
            } else {
                let a = normalize_axis(axis, d.len())?;
                d[a] = Dim::Unknown;
            }
            Some(d)
        }
        None => None,
    };
    ctx.set(0, inner.elem(), dims);
    Ok(())
}

fn optional(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let inner = match ctx.node.attr("type") {
        Some(crate::graph::AttrValue::Type(t)) => Some(t.clone()),
        _ => ctx.input_type(0).cloned(),
    };
    if let Some(inner) = inner {
        ctx.set_type(0, ValueType { kind: TypeKind::Optional(Some(Box::new(inner))), denotation: None });
    }
    Ok(())
}

fn optional_has_element(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.set(0, Some(DataType::Bool), Some(Vec::new()));
    Ok(())
}

fn optional_get_element(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    match ctx.input_type(0).map(|t| &t.kind) {
        Some(TypeKind::Optional(Some(inner))) => {
            let inner = (**inner).clone();
            ctx.set_type(0, inner);
        }
        Some(TypeKind::Optional(None)) | None => {}
        Some(_) => ctx.pass_through(0, 0),
    }
    Ok(())
}
