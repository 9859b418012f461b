//! `CausalConvWithState`, which tract lacks, as a depthwise `Conv` over the past state followed
//! by the input (optionally then SiLU), the new state sliced from the same concatenation.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId};

impl Lowering {
    /// `CausalConvWithState(x [B, C, L], w [C, 1, k], bias?, past [B, C, k-1]?)`: a depthwise
    /// convolution over `past ++ x` (zeros when no past), optionally followed by SiLU; the new
    /// state is the last `k - 1` steps of `past ++ x`.
    pub(super) fn expand_causal_conv(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(w), Some(out)) = (node.input(0), node.input(1), node.output(0)) else {
            return Err(self.err(lbl, "needs an input, a weight and an output"));
        };
        let channels = self.graph().constant(w).and_then(|t| t.dims().first().map(|&c| c as i64)).or_else(|| self.graph().value(x).shape().and_then(|s| s.dims.get(1)).and_then(|d| d.known()));
        let Some(channels) = channels else { return Err(self.err(lbl, "the channel count (the group size of the convolution) is unknown")) };
        let activation = node.attr_string("activation").unwrap_or("none").to_string();
        let half_input = self.input_type(id, 0) == Some(DataType::Float16);
        if !matches!(activation.as_str(), "none" | "silu" | "swish") {
            return Err(self.err(lbl, format!("unknown activation '{activation}'")));
        }
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let ints = |b: &mut Builder, name: &str, v: &[i64]| b.constant_i64(name, &[v.len() as u64], v);
        let (i0, i1, i2, i3) = (ints(&mut b, "i0", &[0]), ints(&mut b, "i1", &[1]), ints(&mut b, "i2", &[2]), ints(&mut b, "i3", &[3]));
        let w_shape = b.op("Shape", &[w], vec![]);
        let k = b.op("Slice", &[w_shape, i2, i3], vec![]);
        let history = b.op("Sub", &[k, i1], vec![]);
        let axis2 = vec![Attribute::new("axis", AttrValue::Int(2))];
        let past = match node.input(3) {
            Some(p) => p,
            None => {
                let x_shape = b.op("Shape", &[x], vec![]);
                let lead = b.op("Slice", &[x_shape, i0, i2], vec![]);
                let shape = b.op("Concat", &[lead, history], vec![Attribute::new("axis", AttrValue::Int(0))]);
                let zeros = b.op("ConstantOfShape", &[shape], vec![]);
                b.op("CastLike", &[zeros, x], vec![])
            }
        };
        let padded = b.op("Concat", &[past, x], axis2);
        // f16 inputs are convolved in f32 and rounded once, as the definition's reference does.
        let mut conv_inputs = vec![padded, w];
        conv_inputs.extend(node.input(2));
        if half_input {
            conv_inputs = conv_inputs.into_iter().map(|v| b.cast(v, DataType::Float)).collect();
        }
        let conv = b.op("Conv", &conv_inputs, vec![Attribute::new("group", AttrValue::Int(channels))]);
        let result = if activation == "none" {
            conv
        } else {
            let gate = b.op("Sigmoid", &[conv], vec![]);
            b.op("Mul", &[conv, gate], vec![])
        };
        if half_input {
            b.op_into("Cast", &[result], vec![Attribute::new("to", AttrValue::Int(DataType::Float16.code() as i64))], out);
        } else {
            b.op_into("Identity", &[result], vec![], out);
        }
        if let Some(state_out) = node.output(1) {
            let p_shape = b.op("Shape", &[padded], vec![]);
            let len = b.op("Slice", &[p_shape, i2, i3], vec![]);
            let start = b.op("Sub", &[len, history], vec![]);
            b.op_into("Slice", &[padded, start, len, i2], vec![], state_out);
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
