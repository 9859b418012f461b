//! Element types for the untyped inputs of `Scan` and `Loop` bodies, which tract needs (onnx
//! 1.22's expanded function bodies leave them untyped).

use super::infer_elem;
use compactor_ir::graph::AttrValue;
use compactor_ir::{DataType, Graph, ValueType};

/// Gives the bodies of `Scan` and `Loop` nodes element types for their untyped inputs (the
/// expanded function bodies of onnx 1.22 leave them untyped, and tract needs them): a Scan
/// body input takes its outer input's type, a Loop body's are the iteration count (int64),
/// the condition (bool) and the carried values' types.
pub(super) fn type_loop_bodies(g: &mut Graph) {
    for id in g.all_nodes() {
        let node = g.node(id);
        let scan = node.is("Scan");
        if !scan && !node.is("Loop") {
            continue;
        }
        let Some(AttrValue::Graph(body)) = node.attr("body").cloned() else { continue };
        let body_inputs = g.region(body).inputs.clone();
        let types: Vec<Option<DataType>> = body_inputs
            .iter()
            .enumerate()
            .map(|(i, _)| {
                if scan {
                    g.node(id).input(i).and_then(|outer| infer_elem(g, outer, 100_000))
                } else {
                    match i {
                        0 => Some(DataType::Int64),
                        1 => Some(DataType::Bool),
                        _ => g.node(id).input(i).and_then(|outer| infer_elem(g, outer, 100_000)),
                    }
                }
            })
            .collect();
        for (v, dt) in body_inputs.into_iter().zip(types) {
            let value = g.value_mut(v);
            if let Some(dt) = dt
                && value.elem().is_none()
            {
                value.ty = Some(ValueType::tensor(dt, None));
            }
        }
    }
}
