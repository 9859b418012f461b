//! Ops with a one- or two-node equivalent, which tract lacks or reads more narrowly:
//! `OptionalHasElement`/`OptionalGetElement` on plain tensors or missing inputs,
//! `ai.onnx.ml.Binarizer`, and `QLinearMatMul` with f16 scales.

use super::{Builder, Lowering, lbl_name};
use bytes::Bytes;
use compactor_ir::{DataType, NodeId, Tensor, ValueId};

impl Lowering {
    /// Ops with a one- or two-node equivalent: `OptionalHasElement`/`OptionalGetElement` on a
    /// plain tensor or a missing input (the session has no optional values), and
    /// `ai.onnx.ml.Binarizer` (`x > threshold`, as x's type).
    pub(super) fn small_ops(&mut self) {
        let nodes: Vec<NodeId> = self.graph().all_nodes();
        for id in nodes {
            let node = self.graph().node(id).clone();
            let Some(out) = node.output(0) else { continue };
            let plain_tensor = |l: &Lowering, v: Option<ValueId>| v.is_some_and(|v| l.graph().value(v).ty.as_ref().is_some_and(|t| t.is_tensor()));
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            if node.is("OptionalHasElement") && (node.input(0).is_none() || plain_tensor(self, node.input(0))) {
                let present = node.input(0).is_some();
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.known", lbl_name(&node, out)) };
                let value = b.constant("present", Tensor::from_raw(DataType::Bool, &[], Bytes::from(vec![present as u8])).expect("a scalar fits"));
                b.op_into("Identity", &[value], vec![], out);
            } else if node.is("OptionalGetElement") && plain_tensor(self, node.input(0)) {
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.known", lbl_name(&node, out)) };
                b.op_into("Identity", &[node.input(0).expect("checked")], vec![], out);
            } else if node.is("QLinearMatMul") && [1, 4, 6].iter().any(|&i| self.input_type(id, i) == Some(DataType::Float16)) {
                // tract's QLinearMatMul takes f32 scales only; f16 ones convert exactly.
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.f32_scales", lbl_name(&node, out)) };
                let mut rewired = node.clone();
                for i in [1, 4, 6] {
                    if let Some(scale) = node.input(i) {
                        rewired.inputs[i] = Some(b.cast(scale, DataType::Float));
                    }
                }
                self.model.graph.node_mut(id).inputs = rewired.inputs;
                continue;
            } else if node.op_type == "Binarizer" && node.domain() == "ai.onnx.ml" && node.input(0).is_some() {
                let x = node.input(0).expect("checked");
                let threshold = node.attr_float("threshold").unwrap_or(0.0);
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
                let t = b.constant_f32(threshold);
                let t = b.op("CastLike", &[t, x], vec![]);
                let above = b.op("Greater", &[x, t], vec![]);
                b.op_into("CastLike", &[above, x], vec![], out);
            } else {
                continue;
            }
            self.model.graph.remove_node(id);
            self.report.expanded_functions += 1;
        }
    }
}
