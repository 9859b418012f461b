//! `com.microsoft` Gelu, BiasGelu (`Gelu(A + B)`) and FastGelu (the tanh approximation, with an
//! optional bias added first), as the arithmetic that defines them:
//! `0.5·x·(1 + erf(x/√2))` and `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.

use super::Lowering;
use crate::error::RuntimeError;
use compactor_ir::NodeId;

/// √(2/π), and 0.044715·√(2/π): onnxruntime's FastGelu constants.
const TANH_ALPHA: f32 = 0.797_884_6;
const TANH_GAMMA: f32 = 0.035_677_407;

impl Lowering {
    pub(super) fn expand_gelu(&mut self, id: NodeId) -> Result<bool, RuntimeError> {
        let node = self.graph().node(id);
        let Some(x) = node.input(0) else { return Err(self.node_err(id, "needs an input")) };
        let bias = node.input(1).filter(|_| node.op_type != "Gelu");
        let fast = node.op_type == "FastGelu";
        let (mut b, node) = self.builder_at(id)?;
        let out = node.output(0).expect("builder_at checked the output");
        let x = match bias {
            Some(bias) => b.op("Add", &[x, bias], vec![]),
            None => x,
        };
        let half = b.constant_f32(0.5);
        let one = b.constant_f32(1.0);
        let half_x = b.op("Mul", &[x, half], vec![]);
        let curve = if fast {
            // x·(α + γ·x²) = α·x + γ·x³
            let (alpha, gamma) = (b.constant_f32(TANH_ALPHA), b.constant_f32(TANH_GAMMA));
            let square = b.op("Mul", &[x, x], vec![]);
            let cubic_coef = b.op("Mul", &[square, gamma], vec![]);
            let coef = b.op("Add", &[cubic_coef, alpha], vec![]);
            let inner = b.op("Mul", &[x, coef], vec![]);
            b.op("Tanh", &[inner], vec![])
        } else {
            let inv_sqrt2 = b.constant_f32(std::f32::consts::FRAC_1_SQRT_2);
            let scaled = b.op("Mul", &[x, inv_sqrt2], vec![]);
            b.op("Erf", &[scaled], vec![])
        };
        let shifted = b.op("Add", &[curve, one], vec![]);
        b.op_into("Mul", &[half_x, shifted], vec![], out);
        Ok(true)
    }
}
