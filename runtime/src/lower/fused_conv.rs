//! onnxruntime's `com.microsoft.FusedConv` (what its optimizer makes of `Conv [-> Add] ->
//! activation` from ORT_ENABLE_EXTENDED on): `activation(Conv(X, W, B) + Z)`, written out as
//! those ops. Also the activation step of the `com.microsoft.nchwc` convolutions.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute, Node};
use compactor_ir::{NodeId, ValueId};

/// The attributes that belong to the convolution, not to the fused activation.
pub(super) const CONV_ATTRIBUTES: [&str; 6] = ["auto_pad", "dilations", "group", "kernel_shape", "pads", "strides"];

impl Builder<'_> {
    /// `activation(x)` for the names and parameters onnxruntime's fused ops take, into `out`
    /// when given.
    pub(super) fn fused_activation(&mut self, node: &Node, x: ValueId, out: Option<ValueId>) -> Result<ValueId, String> {
        let params = match node.attr("activation_params") {
            Some(AttrValue::Floats(p)) => p.clone(),
            _ => Vec::new(),
        };
        let param = |i: usize| params.get(i).copied().ok_or_else(|| format!("activation needs {} parameter(s) in activation_params", i + 1));
        let float = |name: &str, v: f32| Attribute::new(name, AttrValue::Float(v));
        let (op, inputs, attributes) = match node.attr_string("activation").unwrap_or("") {
            "" => return Ok(out.map_or(x, |o| self.op_into_ret("Identity", &[x], vec![], o))),
            "Relu" => ("Relu", vec![x], vec![]),
            "Sigmoid" => ("Sigmoid", vec![x], vec![]),
            "Tanh" => ("Tanh", vec![x], vec![]),
            "LeakyRelu" => ("LeakyRelu", vec![x], vec![float("alpha", param(0)?)]),
            "HardSigmoid" => ("HardSigmoid", vec![x], vec![float("alpha", param(0)?), float("beta", param(1)?)]),
            "Clip" => {
                let (low, high) = (self.constant_f32(param(0)?), self.constant_f32(param(1)?));
                ("Clip", vec![x, low, high], vec![])
            }
            other => return Err(format!("activation '{other}' is not supported")),
        };
        Ok(match out {
            Some(o) => self.op_into_ret(op, &inputs, attributes, o),
            None => self.op(op, &inputs, attributes),
        })
    }

    fn op_into_ret(&mut self, op: &str, inputs: &[ValueId], attributes: Vec<Attribute>, out: ValueId) -> ValueId {
        self.op_into(op, inputs, attributes, out);
        out
    }
}

impl Lowering {
    pub(super) fn expand_fused_convs(&mut self) -> Result<(), RuntimeError> {
        let nodes: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| self.graph().node(id).domain() == "com.microsoft" && self.graph().node(id).op_type == "FusedConv").collect();
        for id in nodes {
            let lbl = label(self.graph(), id);
            let node = self.graph().node(id).clone();
            let Some(out) = node.output(0) else { continue };
            let (Some(x), Some(w)) = (node.input(0), node.input(1)) else { return Err(self.err(lbl, "needs X and W")) };
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
            let conv_inputs: Vec<ValueId> = [Some(x), Some(w), node.input(2)].into_iter().flatten().collect();
            let attributes = node.attributes.iter().filter(|a| CONV_ATTRIBUTES.contains(&a.name.as_str())).cloned().collect();
            let mut y = b.op("Conv", &conv_inputs, attributes);
            if let Some(z) = node.input(3) {
                y = b.op("Add", &[y, z], vec![]);
            }
            b.fused_activation(&node, y, Some(out)).map_err(|e| self.err(lbl, e))?;
            self.model.graph.remove_node(id);
            self.report.expanded_functions += 1;
        }
        Ok(())
    }
}
