//! Control flow: `If`, `Loop` and `Scan`. The driver first gives the body inputs their types
//! ([`subgraph_input_types`]) and infers the bodies; the rules here then type the node's
//! outputs from the bodies' outputs.

use super::{InferError, NodeCtx, Rule, join_dim};
use crate::dtype::DataType;
use crate::graph::{AttrValue, Graph, Node, NodeId, RegionId, ValueId};
use crate::types::{Dim, Shape, TypeKind, ValueType};

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "If" => if_rule,
        "Loop" => loop_rule,
        "Scan" => scan_rule,
        "SequenceMap" => sequence_map_rule,
        _ => return None,
    })
}

fn region_attr(node: &Node, name: &str) -> Option<RegionId> {
    match node.attr(name)? {
        AttrValue::Graph(r) => Some(*r),
        _ => None,
    }
}

fn value_type(graph: &Graph, v: ValueId) -> Option<&ValueType> {
    graph.try_value(v)?.ty.as_ref()
}

/// The type of a value that is one of two alternatives: what both agree on.
pub(crate) fn join_types(a: &ValueType, b: &ValueType) -> Option<ValueType> {
    let kind = match (&a.kind, &b.kind) {
        (TypeKind::Tensor { elem: ea, shape: sa }, TypeKind::Tensor { elem: eb, shape: sb }) => {
            let elem = if ea == eb { *ea } else { None };
            let shape = match (sa, sb) {
                (Some(x), Some(y)) if x.rank() == y.rank() => Some(Shape::new(x.dims.iter().zip(&y.dims).map(|(p, q)| join_dim(p, q)).collect())),
                _ => None,
            };
            TypeKind::Tensor { elem, shape }
        }
        (TypeKind::Sequence(x), TypeKind::Sequence(y)) => TypeKind::Sequence(join_inner(x, y)),
        (TypeKind::Optional(x), TypeKind::Optional(y)) => TypeKind::Optional(join_inner(x, y)),
        (x, y) if x == y => x.clone(),
        _ => return None,
    };
    Some(ValueType { kind, denotation: None })
}

fn join_inner(a: &Option<Box<ValueType>>, b: &Option<Box<ValueType>>) -> Option<Box<ValueType>> {
    match (a, b) {
        (Some(x), Some(y)) => join_types(x, y).map(Box::new),
        _ => None,
    }
}

/// The type without tensor shapes (element types, and the structure of sequences and optionals, stay).
fn without_shape(ty: &ValueType) -> ValueType {
    let kind = match &ty.kind {
        TypeKind::Tensor { elem, .. } => TypeKind::Tensor { elem: *elem, shape: None },
        TypeKind::Sequence(Some(inner)) => TypeKind::Sequence(Some(Box::new(without_shape(inner)))),
        TypeKind::Optional(Some(inner)) => TypeKind::Optional(Some(Box::new(without_shape(inner)))),
        other => other.clone(),
    };
    ValueType { kind, denotation: None }
}

fn scalar_elem(elem: DataType) -> ValueType {
    ValueType { kind: TypeKind::Tensor { elem: Some(elem), shape: None }, denotation: None }
}

/// Types for the inputs of the subgraphs of `node`, from the node's input types.
pub(super) fn subgraph_input_types(graph: &Graph, node: NodeId, opset: i64) -> Vec<(ValueId, ValueType)> {
    let n = graph.node(node);
    if !n.domain().is_empty() {
        return Vec::new();
    }
    let input_type = |i: usize| n.input(i).and_then(|v| value_type(graph, v));
    let mut out = Vec::new();
    match n.op_type.as_str() {
        "Loop" => {
            let Some(body) = region_attr(n, "body").and_then(|r| graph.try_region(r)) else { return out };
            for (k, &v) in body.inputs.iter().enumerate() {
                let ty = match k {
                    // Only the element types: a declared iteration count may be [] or [1].
                    0 => Some(scalar_elem(DataType::Int64)),
                    1 => Some(scalar_elem(DataType::Bool)),
                    // Loop-carried values may change shape from one iteration to the next.
                    _ => input_type(k).map(without_shape),
                };
                if let Some(ty) = ty {
                    out.push((v, ty));
                }
            }
        }
        "Scan" => {
            let Some(body) = region_attr(n, "body").and_then(|r| graph.try_region(r)) else { return out };
            let Some(scan_inputs) = n.attr_int("num_scan_inputs").and_then(|m| usize::try_from(m).ok()) else { return out };
            // Scan-8 has a leading sequence_lens input and a batch axis on everything.
            let (first, batched) = if opset < 9 { (1, true) } else { (0, false) };
            let Some(states) = n.inputs.len().checked_sub(first + scan_inputs) else { return out };
            let axes = n.attr_ints("scan_input_axes");
            for (k, &v) in body.inputs.iter().enumerate() {
                let Some(ty) = input_type(first + k) else { continue };
                let (Some(elem), dims) = (ty.elem(), ty.shape().map(|s| s.dims.clone())) else { continue };
                let dims = if k < states {
                    dims.map(|d| if batched { d.get(1..).map(<[Dim]>::to_vec).unwrap_or_default() } else { d })
                } else {
                    let axis = axes.and_then(|a| a.get(k - states).copied()).unwrap_or(0);
                    dims.and_then(|d| {
                        if batched {
                            return d.get(2..).map(<[Dim]>::to_vec);
                        }
                        let a = super::normalize_axis(axis, d.len()).ok()?;
                        Some(d.iter().enumerate().filter(|(i, _)| *i != a).map(|(_, x)| x.clone()).collect())
                    })
                };
                let dims = if batched && k < states && ty.shape().is_some_and(|s| s.rank() == 0) { None } else { dims };
                out.push((v, super::tensor_type(Some(elem), dims)));
            }
        }
        "SequenceMap" => {
            let Some(body) = region_attr(n, "body").and_then(|r| graph.try_region(r)) else { return out };
            for (k, &v) in body.inputs.iter().enumerate() {
                // A sequence input gives its elements one by one; a tensor input is passed whole.
                let ty = match input_type(k).map(|t| &t.kind) {
                    Some(TypeKind::Sequence(inner)) => inner.as_ref().map(|t| (**t).clone()),
                    Some(_) => input_type(k).cloned(),
                    None => None,
                };
                if let Some(ty) = ty {
                    out.push((v, ty));
                }
            }
        }
        _ => {}
    }
    out
}

fn if_rule(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let graph = ctx.graph;
    let (Some(then_r), Some(else_r)) = (region_attr(ctx.node, "then_branch"), region_attr(ctx.node, "else_branch")) else {
        return Err(InferError::Attribute { name: "then_branch", reason: "If needs then_branch and else_branch graphs".into() });
    };
    let (Some(then_b), Some(else_b)) = (graph.try_region(then_r), graph.try_region(else_r)) else { return Ok(()) };
    if then_b.outputs.len() != else_b.outputs.len() || then_b.outputs.len() != ctx.output_count() {
        return Err(InferError::Invalid(format!("the branches have {} and {} outputs, the node {}", then_b.outputs.len(), else_b.outputs.len(), ctx.output_count())));
    }
    for k in 0..ctx.output_count() {
        let (Some(t), Some(e)) = (value_type(graph, then_b.outputs[k]), value_type(graph, else_b.outputs[k])) else { continue };
        if let (Some(a), Some(b)) = (t.elem(), e.elem())
            && a != b
        {
            return Err(InferError::ElemMismatch { a, b });
        }
        if let Some(ty) = join_types(t, e) {
            ctx.set_type(k, ty);
        }
    }
    Ok(())
}

fn loop_rule(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let graph = ctx.graph;
    let Some(body) = region_attr(ctx.node, "body").and_then(|r| graph.try_region(r)) else {
        return Err(InferError::Attribute { name: "body", reason: "missing".into() });
    };
    let carried = ctx.input_count().saturating_sub(2);
    if body.inputs.len() != carried + 2 || body.outputs.len() < carried + 1 {
        return Err(InferError::Invalid(format!("the body has {} inputs and {} outputs for {carried} loop-carried values", body.inputs.len(), body.outputs.len())));
    }
    let scans = body.outputs.len() - 1 - carried;
    for k in 0..carried {
        // The final value is the initial one (no iteration) or what the body produced.
        let initial = ctx.input_type(2 + k);
        let produced = value_type(graph, body.outputs[1 + k]);
        let ty = match (initial, produced) {
            (Some(a), Some(b)) => join_types(a, b),
            _ => None,
        };
        if let Some(ty) = ty {
            ctx.set_type(k, ty);
        }
    }
    for k in 0..scans {
        let Some(ty) = value_type(graph, body.outputs[1 + carried + k]) else { continue };
        let dims = ty.shape().map(|s| std::iter::once(Dim::Unknown).chain(s.dims.iter().cloned()).collect());
        ctx.set(carried + k, ty.elem(), dims);
    }
    Ok(())
}

fn scan_rule(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let graph = ctx.graph;
    let Some(body) = region_attr(ctx.node, "body").and_then(|r| graph.try_region(r)) else {
        return Err(InferError::Attribute { name: "body", reason: "missing".into() });
    };
    let scan_inputs = ctx.attr_int("num_scan_inputs").and_then(|m| usize::try_from(m).ok()).ok_or(InferError::Attribute { name: "num_scan_inputs", reason: "missing or negative".into() })?;
    let batched = ctx.opset < 9;
    let first = usize::from(batched);
    let states = ctx.input_count().checked_sub(first + scan_inputs).ok_or_else(|| InferError::Invalid(format!("{} inputs for {scan_inputs} scan inputs", ctx.input_count())))?;
    if body.outputs.len() < states {
        return Err(InferError::Invalid(format!("the body has {} outputs for {states} states", body.outputs.len())));
    }
    // The number of iterations: the scanned axis of the first scan input.
    let (batch, length) = match ctx.dims(first + states) {
        Some(d) if batched => (d.first().cloned().unwrap_or(Dim::Unknown), d.get(1).cloned().unwrap_or(Dim::Unknown)),
        Some(d) => {
            let axis = ctx.attr_ints("scan_input_axes").and_then(|a| a.first().copied()).unwrap_or(0);
            (Dim::Unknown, super::normalize_axis(axis, d.len()).ok().map_or(Dim::Unknown, |a| d[a].clone()))
        }
        None => (Dim::Unknown, Dim::Unknown),
    };
    for k in 0..states {
        let produced = value_type(graph, body.outputs[k]);
        let ty = if batched {
            produced.map(|t| super::tensor_type(t.elem(), t.shape().map(|s| std::iter::once(batch.clone()).chain(s.dims.iter().cloned()).collect())))
        } else {
            match (ctx.input_type(first + k), produced) {
                (Some(a), Some(b)) => join_types(a, b),
                _ => None,
            }
        };
        if let Some(ty) = ty {
            ctx.set_type(k, ty);
        }
    }
    let output_axes = ctx.attr_ints("scan_output_axes");
    for k in 0..body.outputs.len() - states {
        let Some(ty) = value_type(graph, body.outputs[states + k]) else { continue };
        let dims = match ty.shape() {
            Some(s) if batched => Some([batch.clone(), length.clone()].into_iter().chain(s.dims.iter().cloned()).collect()),
            Some(s) => {
                let axis = output_axes.and_then(|a| a.get(k).copied()).unwrap_or(0);
                let a = super::normalize_axis(axis, s.rank() + 1)?;
                let mut d = s.dims.clone();
                d.insert(a, length.clone());
                Some(d)
            }
            None => None,
        };
        ctx.set(states + k, ty.elem(), dims);
    }
    Ok(())
}

fn sequence_map_rule(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    let graph = ctx.graph;
    let Some(body) = region_attr(ctx.node, "body").and_then(|r| graph.try_region(r)) else {
        return Err(InferError::Attribute { name: "body", reason: "missing".into() });
    };
    if body.outputs.len() != ctx.output_count() {
        return Err(InferError::Invalid(format!("the body has {} outputs, the node {}", body.outputs.len(), ctx.output_count())));
    }
    for (k, &out) in body.outputs.iter().enumerate() {
        if let Some(ty) = value_type(graph, out) {
            ctx.set_type(k, ValueType { kind: TypeKind::Sequence(Some(Box::new(ty.clone()))), denotation: None });
        }
    }
    Ok(())
}
