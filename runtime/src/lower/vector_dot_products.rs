//! `MatMul` of two vectors, which tract's MatMul refuses, as `ReduceSum(a * b)`.

use super::{Builder, Lowering, lbl_name};
use compactor_ir::NodeId;
use compactor_ir::graph::{AttrValue, Attribute};

impl Lowering {
    /// `MatMul` of two vectors is their dot product, a scalar; tract's MatMul wants a matrix on
    /// one side, so write it as `ReduceSum(a * b)`.
    pub(super) fn vector_dot_products(&mut self) {
        let nodes: Vec<NodeId> = self
            .graph()
            .all_nodes()
            .into_iter()
            .filter(|&id| {
                let n = self.graph().node(id);
                n.is("MatMul") && n.output(0).is_some() && (0..2).all(|i| n.input(i).and_then(|v| self.value_rank(v)) == Some(1))
            })
            .collect();
        for id in nodes {
            let node = self.graph().node(id).clone();
            let (a, b_in, out) = (node.input(0).expect("filtered"), node.input(1).expect("filtered"), node.output(0).expect("filtered"));
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.dot", lbl_name(&node, out)) };
            let products = b.op("Mul", &[a, b_in], vec![]);
            b.op_into("ReduceSum", &[products], vec![Attribute::new("keepdims", AttrValue::Int(0))], out);
            self.model.graph.remove_node(id);
            self.report.expanded_functions += 1;
        }
    }
}
