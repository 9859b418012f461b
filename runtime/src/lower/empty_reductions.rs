//! `ReduceMax`/`ReduceMin` of a tensor with no elements: ONNX defines the maximum of an empty
//! set as -inf (the minimum as +inf); tract gives the lowest (highest) finite value. When the
//! declared input shape has a zero dimension, every output element reduces an empty set, so the
//! output becomes the infinity of the right sign, of the reduction's shape.

use super::{Builder, Lowering, lbl_name};
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{Dim, NodeId, Tensor, ValueDef};

impl Lowering {
    pub(super) fn fill_empty_reductions(&mut self) {
        let nodes: Vec<NodeId> = self
            .graph()
            .all_nodes()
            .into_iter()
            .filter(|&id| {
                let n = self.graph().node(id);
                (n.is("ReduceMax") || n.is("ReduceMin")) && n.output(0).is_some() && n.input(0).is_some_and(|x| self.graph().value(x).shape().is_some_and(|s| s.dims.contains(&Dim::Known(0))))
            })
            .collect();
        for id in nodes {
            let node = self.graph().node(id).clone();
            let (x, out) = (node.input(0).expect("filtered"), node.output(0).expect("filtered"));
            let fill = if node.is("ReduceMax") { f32::NEG_INFINITY } else { f32::INFINITY };
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region") + 1;
            let reduced = {
                let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.empty_set", lbl_name(&node, out)) };
                let reduced = b.new_value("reduced");
                let shape = b.op("Shape", &[reduced], vec![]);
                let value = Tensor::from_f32(&[1], &[fill]).expect("one value");
                let filled = b.op("ConstantOfShape", &[shape], vec![Attribute::new("value", AttrValue::Tensor(value))]);
                b.op_into("CastLike", &[filled, x], vec![], out);
                reduced
            };
            let g = &mut self.model.graph;
            g.node_mut(id).outputs[0] = Some(reduced);
            g.value_mut(reduced).def = ValueDef::Node { node: id, output: 0 };
            self.report.expanded_functions += 1;
        }
    }
}
