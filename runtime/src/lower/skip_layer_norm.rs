//! `com.microsoft.SkipLayerNormalization`: `LayerNorm(input + skip (+ bias)) · gamma (+ beta)`
//! over the last axis. Its optional outputs are the mean, `1/sqrt(var + eps)` and the sum that
//! was normalized (the residual stream the next layer adds to).

use super::Lowering;
use super::contrib::Opset;
use crate::error::RuntimeError;
use compactor_ir::NodeId;

/// onnxruntime's default epsilon for its layer-norm contrib ops.
pub(super) const DEFAULT_EPSILON: f32 = 1e-12;

impl Lowering {
    pub(super) fn expand_skip_layer_norm(&mut self, id: NodeId, opset: Opset) -> Result<bool, RuntimeError> {
        let node = self.graph().node(id);
        let (Some(input), Some(skip), Some(gamma)) = (node.input(0), node.input(1), node.input(2)) else {
            return Err(self.node_err(id, "SkipLayerNormalization needs input, skip and gamma"));
        };
        let (beta, bias) = (node.input(3), node.input(4));
        let epsilon = node.attr_float("epsilon").unwrap_or(DEFAULT_EPSILON);
        let (mut b, node) = self.builder_at(id)?;
        let mut sum = b.op("Add", &[input, skip], vec![]);
        if let Some(bias) = bias {
            sum = b.op("Add", &[sum, bias], vec![]);
        }
        let (y, mean, inv_std) = opset.layer_norm(&mut b, sum, gamma, beta, epsilon);
        for (i, v) in [(0, y), (1, mean), (2, inv_std), (3, sum)] {
            if let Some(o) = node.output(i) {
                b.op_into("Identity", &[v], vec![], o);
            }
        }
        Ok(true)
    }
}
