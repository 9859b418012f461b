//! `If` nodes whose condition is a constant (or a small expression over constants) replaced by
//! the branch they take: tract types both branches against the actual shapes, and the one not
//! taken may not fit them.

use compactor_ir::graph::AttrValue;
use compactor_ir::{DataType, Graph, Model, ValueId};

/// The value of a one-element constant, or of a small expression (comparisons, logic, casts)
/// over such constants: an If condition like `Equal(sr, 16000)` once `sr` is known.
fn constant_scalar(g: &Graph, v: ValueId, depth: u32) -> Option<f64> {
    if let Some(t) = g.constant(v) {
        if t.len() != 1 {
            return None;
        }
        return if t.dtype().is_float() { t.to_f32().ok()?.first().map(|&x| x as f64) } else { t.to_i64().ok()?.first().map(|&x| x as f64) };
    }
    let (node, _) = g.producer(v)?;
    let node = g.node(node);
    if depth == 0 || !node.domain().is_empty() {
        return None;
    }
    let arg = |i: usize| node.input(i).and_then(|x| constant_scalar(g, x, depth - 1));
    let truth = |b: bool| if b { 1.0 } else { 0.0 };
    Some(match node.op_type.as_str() {
        "Identity" => arg(0)?,
        "Not" => truth(arg(0)? == 0.0),
        "Cast" if node.attr_int("to") == Some(DataType::Bool.code() as i64) => truth(arg(0)? != 0.0),
        "Equal" => truth(arg(0)? == arg(1)?),
        "Greater" => truth(arg(0)? > arg(1)?),
        "Less" => truth(arg(0)? < arg(1)?),
        "GreaterOrEqual" => truth(arg(0)? >= arg(1)?),
        "LessOrEqual" => truth(arg(0)? <= arg(1)?),
        "And" => truth(arg(0)? != 0.0 && arg(1)? != 0.0),
        "Or" => truth(arg(0)? != 0.0 || arg(1)? != 0.0),
        _ => return None,
    })
}

/// Replaces every `If` whose condition is a constant by the nodes of the branch it takes.
///
/// tract types both branches of an If against the actual shapes, and the branch not taken may
/// not fit them (silero-vad's 8 kHz branch on 16 kHz input, say); the one taken always does.
/// Returns how many were inlined.
pub fn inline_constant_ifs(model: &mut Model) -> usize {
    let mut inlined = 0;
    loop {
        let g = &model.graph;
        let found = g.all_nodes().into_iter().find_map(|id| {
            let node = g.node(id);
            if !node.is("If") {
                return None;
            }
            let taken = constant_scalar(g, node.input(0)?, 8)? != 0.0;
            let branch = |name: &str| match node.attr(name) {
                Some(AttrValue::Graph(r)) => Some(*r),
                _ => None,
            };
            let (keep, drop) = if taken { (branch("then_branch")?, branch("else_branch")?) } else { (branch("else_branch")?, branch("then_branch")?) };
            (g.region(keep).outputs.len() == node.outputs.len()).then_some((id, keep, drop))
        });
        let Some((id, keep, drop)) = found else { return inlined };
        let g = &mut model.graph;
        let parent = g.node(id).region;
        let pos = g.region(parent).nodes.iter().position(|&n| n == id).expect("a node is in its region");
        let body = g.region(keep).clone();
        for &n in &body.nodes {
            g.node_mut(n).region = parent;
        }
        let moved: Vec<ValueId> = g.value_ids().filter(|&v| g.value(v).region == keep).collect();
        for v in moved {
            g.value_mut(v).region = parent;
        }
        g.region_mut(parent).initializers.extend(&body.initializers);
        let nodes = &mut g.region_mut(parent).nodes;
        nodes.splice(pos..pos, body.nodes.iter().copied());
        let outputs = g.node(id).outputs.clone();
        for (out, branch_out) in outputs.iter().zip(&body.outputs) {
            if let Some(out) = out {
                g.replace_uses(*out, *branch_out);
            }
        }
        // The body's nodes now belong to the parent: empty the region before dropping it.
        g.region_mut(keep).nodes.clear();
        g.region_mut(keep).initializers.clear();
        g.remove_node(id);
        g.remove_region(keep);
        g.remove_region(drop);
        for out in outputs.into_iter().flatten() {
            if g.try_value(out).is_some() {
                g.remove_value(out);
            }
        }
        inlined += 1;
    }
}
