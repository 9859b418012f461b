//! `SimplifiedLayerNormalization` (onnxruntime registers it in the default domain): RMS
//! normalization over the axes from `axis` (default -1) to the last,
//! `x / sqrt(mean(x²) + epsilon) · scale`; the optional output 1 is `1 / sqrt(mean(x²) + epsilon)`
//! with the normalized axes kept as 1. Inputs of another float type than f32 are normalized in
//! f32 (onnxruntime's `stash_type` 1) and the output cast back.

use super::Lowering;
use super::contrib::Opset;
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId};

/// onnxruntime's default epsilon for SimplifiedLayerNormalization.
const DEFAULT_EPSILON: f32 = 1e-5;

impl Lowering {
    pub(super) fn expand_simplified_layer_norm(&mut self, id: NodeId, opset: Opset) -> Result<bool, RuntimeError> {
        let node = self.graph().node(id);
        let (Some(x), Some(scale)) = (node.input(0), node.input(1)) else { return Err(self.node_err(id, "SimplifiedLayerNormalization needs X and scale")) };
        let axis = node.attr_int("axis").unwrap_or(-1);
        let epsilon = node.attr_float("epsilon").unwrap_or(DEFAULT_EPSILON);
        // Negative axes name the normalized axes without the rank.
        let axes: Vec<i64> = if axis < 0 {
            (axis..0).collect()
        } else {
            match self.value_rank(x) {
                Some(rank) if (axis as usize) < rank => (axis..rank as i64).collect(),
                Some(rank) => return Err(self.node_err(id, format!("axis {axis} is out of range for a rank-{rank} input"))),
                None => return Err(self.node_err(id, format!("the rank of X is unknown, so axis {axis} cannot be resolved"))),
            }
        };
        let dtype = self.input_type(id, 0).unwrap_or(DataType::Float);
        let (mut b, node) = self.builder_at(id)?;
        let (x, scale) = if dtype == DataType::Float { (x, scale) } else { (b.cast(x, DataType::Float), b.cast(scale, DataType::Float)) };
        let (y, root) = opset.rms_norm(&mut b, x, scale, &axes, epsilon);
        let out = node.output(0).expect("builder_at checked the output");
        if dtype == DataType::Float {
            b.op_into("Identity", &[y], vec![], out);
        } else {
            b.op_into("Cast", &[y], vec![Attribute::new("to", AttrValue::Int(dtype.code() as i64))], out);
        }
        if let Some(o) = node.output(1) {
            b.op_into("Reciprocal", &[root], vec![], o);
        }
        Ok(true)
    }
}
