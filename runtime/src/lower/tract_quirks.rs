//! Inputs tract reads more strictly than ONNX (and onnxruntime) define them:
//! - `ConstantOfShape` without a `value` attribute makes float32 zeros; tract makes f64 ones,
//!   which then spread through its type unification (an f32 × f64 MatMul it refuses). The
//!   default is written out.
//! - `Range`'s start, limit and delta and `Pad`'s constant value are scalars; exporters also
//!   pass one-element vectors, which onnxruntime takes and tract refuses. They are reshaped to
//!   scalars unless already known to be.

use super::{Builder, Lowering, lbl_name};
use compactor_ir::graph::AttrValue;
use compactor_ir::{NodeId, Tensor};

impl Lowering {
    pub(super) fn meet_tract_strictness(&mut self) {
        let nodes: Vec<NodeId> = self.graph().all_nodes();
        for id in nodes {
            let node = self.graph().node(id);
            if node.is("ConstantOfShape") && node.attr("value").is_none() {
                let zero = Tensor::from_f32(&[1], &[0.0]).expect("one value");
                self.model.graph.node_mut(id).set_attr("value", AttrValue::Tensor(zero));
                continue;
            }
            let scalars: &[usize] = if node.is("Range") {
                &[0, 1, 2]
            } else if node.is("Pad") {
                &[2]
            } else {
                continue;
            };
            let slots: Vec<usize> = scalars.iter().copied().filter(|&i| node.input(i).is_some_and(|v| self.value_rank(v) != Some(0))).collect();
            if slots.is_empty() {
                continue;
            }
            let node = node.clone();
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            let label = node.output(0).map_or_else(|| node.op_type.clone(), |out| lbl_name(&node, out));
            let mut b = Builder { lowering: self, region, pos, prefix: format!("{label}.scalar") };
            let scalar_shape = b.constant_i64("shape", &[0], &[]);
            let mut inputs = node.inputs.clone();
            for i in slots {
                let v = node.input(i).expect("filtered");
                inputs[i] = Some(b.op("Reshape", &[v, scalar_shape], vec![]));
            }
            self.model.graph.node_mut(id).inputs = inputs;
            self.report.expanded_functions += 1;
        }
    }
}
