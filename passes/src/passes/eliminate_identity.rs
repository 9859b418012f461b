//! Removes nodes that pass their input through unchanged: Identity, inference-mode Dropout,
//! Cast to the same type, Transpose by the identity permutation, Reshape to the same static
//! shape, single-input Concat, zero Pad, and arithmetic with a neutral constant (x*1, x/1, x+0,
//! x-0) that does not broadcast x to a larger shape.
//!
//! A graph output keeps its name: when the removed node produced one, its input takes over the
//! name (and the declared type), provided that input is an ordinary value of the same graph.
//! Otherwise the node stays.

use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{DataType, Graph, Node, NodeId, Patch, ValueDef, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EliminateIdentity {}

impl PassDef for EliminateIdentity {
    const NAME: &'static str = "eliminate-identity";
    const SUMMARY: &'static str = "Remove no-op nodes (Identity, inference Dropout, same-type Cast, identity Transpose/Reshape, x*1, x+0, ...)";
    const KIND: PassKind = PassKind::Transform;
}

/// True when every element of the constant equals `neutral`.
fn all_equal(graph: &Graph, v: ValueId, neutral: f32) -> bool {
    graph.constant(v).and_then(|t| t.to_f32().ok()).is_some_and(|vals| !vals.is_empty() && vals.iter().all(|&x| x == neutral))
}

/// The constant `c` broadcast against `x` leaves x's shape as it is.
fn broadcast_keeps_shape(graph: &Graph, x: ValueId, c: ValueId) -> bool {
    let (Some(xs), Some(ct)) = (graph.value(x).shape(), graph.constant(c)) else { return false };
    let dims = ct.dims();
    dims.len() <= xs.rank() && dims.iter().all(|&d| d == 1) && graph.value(x).elem() == Some(ct.dtype())
}

/// If `node` is a no-op, the input its output equals.
fn passthrough(graph: &Graph, node: &Node, opset: i64) -> Option<ValueId> {
    if !node.domain().is_empty() || node.outputs.iter().flatten().count() != 1 || node.output(0).is_none() {
        return None;
    }
    let x = node.input(0)?;
    let out = node.output(0)?;
    match node.op_type.as_str() {
        "Identity" => Some(x),
        "Dropout" => {
            // Inference unless training_mode (input 2, opset >= 12) is a constant true.
            let training = node.input(2).map(|t| graph.constant(t).and_then(|t| t.to_i64().ok()).map(|v| v.first() != Some(&0))).unwrap_or(Some(false));
            (training == Some(false) && (opset >= 7 || node.attr_int("is_test") == Some(1))).then_some(x)
        }
        "Cast" => {
            let to = node.attr_int("to").and_then(|t| DataType::from_code(t as i32))?;
            (graph.value(x).elem() == Some(to)).then_some(x)
        }
        "Transpose" => {
            let perm = node.attr_ints("perm")?;
            perm.iter().enumerate().all(|(i, &p)| p == i as i64).then_some(x)
        }
        "Reshape" => {
            let shape = graph.value(x).shape()?.as_known()?;
            let target = graph.constant(node.input(1)?)?.to_i64().ok()?;
            (target == shape && graph.value(out).shape().and_then(|s| s.as_known()).is_none_or(|o| o == shape)).then_some(x)
        }
        "Concat" => (node.inputs.len() == 1).then_some(x),
        "Pad" => {
            let pads: Vec<i64> = if opset >= 11 { graph.constant(node.input(1)?)?.to_i64().ok()? } else { node.attr_ints("pads")?.to_vec() };
            pads.iter().all(|&p| p == 0).then_some(x)
        }
        "Mul" | "Div" | "Add" | "Sub" => {
            let neutral = if matches!(node.op_type.as_str(), "Mul" | "Div") { 1.0 } else { 0.0 };
            let c = node.input(1)?;
            if all_equal(graph, c, neutral) && broadcast_keeps_shape(graph, x, c) {
                return Some(x);
            }
            // Commutative ops: the constant may come first.
            if matches!(node.op_type.as_str(), "Mul" | "Add") && all_equal(graph, x, neutral) && broadcast_keeps_shape(graph, c, x) {
                return Some(c);
            }
            None
        }
        _ => None,
    }
}

impl Pass for EliminateIdentity {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        ctx.infer_shapes(graph);
        let opset = ctx.opset("").unwrap_or(1);
        let outputs: HashSet<ValueId> = graph.region_ids().flat_map(|r| graph.region(r).outputs.clone()).collect();
        let mut removed = 0;
        // One node at a time: removing one can change what the next one reads.
        for id in graph.all_nodes() {
            let Some(node) = graph.try_node(id) else { continue };
            let Some(input) = passthrough(graph, node, opset) else { continue };
            let out = node.output(0).expect("checked in passthrough");
            let mut patch = Patch::new();
            if outputs.contains(&out) && !self.can_take_over_name(graph, id, input, &outputs) {
                continue;
            }
            patch.replace_uses(out, input);
            patch.remove_node(id);
            let takes_name = outputs.contains(&out);
            let (name, ty, doc) = {
                let v = graph.value(out);
                (v.name.clone(), v.ty.clone(), v.doc_string.clone())
            };
            if takes_name {
                patch.rename(input, name);
                // The graph output's declared type and doc string go with its name.
                if ty.is_some() {
                    patch.set_type(input, ty);
                }
                patch.set_doc_string(input, doc);
            }
            graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
            removed += 1;
        }
        Ok(PassOutcome::counted(removed, format!("removed {removed} no-op nodes")))
    }
}

impl EliminateIdentity {
    /// Whether `input` can become the graph output `node` produces: it must be an ordinary
    /// value computed in the same graph, and not already an output itself.
    fn can_take_over_name(&self, graph: &Graph, node: NodeId, input: ValueId, outputs: &HashSet<ValueId>) -> bool {
        let v = graph.value(input);
        matches!(v.def, ValueDef::Node { .. }) && v.region == graph.node(node).region && !outputs.contains(&input)
    }
}
