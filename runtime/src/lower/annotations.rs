//! Declared shapes of intermediate values are hints: onnxruntime checks them against what it
//! infers and warns, but tract takes every declared shape as a fact and refuses a model whose
//! annotation (`1 x sequence_length x 128`) does not unify with what the inputs give
//! (`1 x 16 x 128`). The lowered copy keeps element types but drops the shapes of every value
//! a node defines and of annotations; graph inputs, initializers and subgraph inputs keep
//! theirs. The IR itself is untouched, so round trips stay lossless.

use compactor_ir::{Graph, TypeKind, ValueDef};

/// Drops the shapes of node outputs and `value_info` annotations. Returns how many it dropped.
pub(super) fn drop_intermediate_shapes(g: &mut Graph) -> usize {
    let mut dropped = 0;
    for region in g.region_ids().collect::<Vec<_>>() {
        let region = g.region(region);
        let mut values: Vec<_> = region.value_info.clone();
        values.extend(region.outputs.iter().copied());
        for &node in &region.nodes {
            values.extend(g.node(node).outputs.iter().flatten().copied());
        }
        for v in values {
            let value = g.value_mut(v);
            if !matches!(value.def, ValueDef::Node { .. } | ValueDef::Annotation) {
                continue;
            }
            if let Some(ty) = &mut value.ty
                && let TypeKind::Tensor { shape, .. } = &mut ty.kind
                && shape.take().is_some()
            {
                dropped += 1;
            }
        }
    }
    dropped
}
