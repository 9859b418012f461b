//! `Shape` and `Size` of values whose shape is fully known become constants, so the shape
//! arithmetic after them can be folded (see `fold-constants`).

use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Graph, Patch, Tensor};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FoldShapes {}

impl PassDef for FoldShapes {
    const NAME: &'static str = "fold-shapes";
    const SUMMARY: &'static str = "Replace Shape/Size of values with fully known shapes by constants";
    const KIND: PassKind = PassKind::Transform;
}

/// ONNX `Shape` start/end (opset 15): negative counts from the back, both clamped to [0, rank].
fn shape_slice(dims: &[i64], start: Option<i64>, end: Option<i64>) -> Vec<i64> {
    let rank = dims.len() as i64;
    let clamp = |i: i64| (if i < 0 { i + rank } else { i }).clamp(0, rank) as usize;
    let (s, e) = (clamp(start.unwrap_or(0)), clamp(end.unwrap_or(rank)));
    if s < e { dims[s..e].to_vec() } else { Vec::new() }
}

impl Pass for FoldShapes {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        ctx.infer_shapes(graph);
        let mut patch = Patch::new();
        let mut folded = 0;
        for id in graph.all_nodes() {
            let node = graph.node(id);
            if !(node.is("Shape") || node.is("Size")) {
                continue;
            }
            let (Some(x), Some(out)) = (node.input(0), node.output(0)) else { continue };
            let Some(dims) = graph.value(x).shape().and_then(|s| s.as_known()) else { continue };
            let tensor = if node.is("Shape") {
                let dims = shape_slice(&dims, node.attr_int("start"), node.attr_int("end"));
                Tensor::from_i64(&[dims.len() as u64], &dims)
            } else {
                Tensor::from_i64(&[], &[dims.iter().product()])
            }
            .map_err(|e| PassError::ir(Self::NAME, e))?;
            let name = graph.value(out).name.clone();
            let constant = patch.new_initializer(node.region, &name, tensor);
            patch.replace_uses(out, constant);
            patch.remove_node(id);
            patch.rename(constant, name);
            folded += 1;
        }
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        Ok(PassOutcome::counted(folded, format!("folded {folded} Shape/Size nodes")))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shape_start_end_follow_onnx() {
        let d = [2, 3, 4, 5];
        assert_eq!(super::shape_slice(&d, None, None), d);
        assert_eq!(super::shape_slice(&d, Some(1), Some(-1)), [3, 4]);
        assert_eq!(super::shape_slice(&d, Some(-10), Some(10)), d);
        assert_eq!(super::shape_slice(&d, Some(3), Some(1)), Vec::<i64>::new());
    }
}
