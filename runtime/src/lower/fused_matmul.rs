//! `com.microsoft.FusedMatMul`: `alpha * op(A) · op(B)`, where `op` transposes the last two
//! axes when `transA`/`transB` is set. Written as an `Einsum` over `...` batch axes, which
//! transposes without knowing the operands' ranks (onnxruntime's optimizer leaves none
//! declared), then a `Mul` by alpha.

use super::Lowering;
use crate::error::RuntimeError;
use compactor_ir::NodeId;
use compactor_ir::graph::{AttrValue, Attribute};

impl Lowering {
    pub(super) fn expand_fused_matmul(&mut self, id: NodeId) -> Result<bool, RuntimeError> {
        let node = self.graph().node(id);
        if node.attr_int("transBatchA").unwrap_or(0) != 0 || node.attr_int("transBatchB").unwrap_or(0) != 0 {
            return Err(self.node_err(id, "FusedMatMul with transBatchA/transBatchB is not supported"));
        }
        let (Some(a), Some(b_in)) = (node.input(0), node.input(1)) else { return Err(self.node_err(id, "FusedMatMul needs two inputs")) };
        let trans_a = node.attr_int("transA").unwrap_or(0) != 0;
        let trans_b = node.attr_int("transB").unwrap_or(0) != 0;
        let alpha = node.attr_float("alpha").unwrap_or(1.0);
        let out = node.output(0);
        let (mut b, _) = self.builder_at(id)?;
        let out = out.expect("builder_at checked the output");
        let product = if trans_a || trans_b {
            let lhs = if trans_a { "...ji" } else { "...ij" };
            let rhs = if trans_b { "...kj" } else { "...jk" };
            let equation = format!("{lhs},{rhs}->...ik");
            let attrs = vec![Attribute::new("equation", AttrValue::String(equation.into()))];
            if alpha == 1.0 {
                b.op_into("Einsum", &[a, b_in], attrs, out);
                return Ok(true);
            }
            b.op("Einsum", &[a, b_in], attrs)
        } else {
            if alpha == 1.0 {
                b.op_into("MatMul", &[a, b_in], vec![], out);
                return Ok(true);
            }
            b.op("MatMul", &[a, b_in], vec![])
        };
        let alpha_v = b.constant_f32(alpha);
        b.op_into("Mul", &[product, alpha_v], vec![], out);
        Ok(true)
    }
}
