//! `ReduceMax`/`ReduceMin` on bools, which tract's reductions refuse: run on uint8 and cast
//! back.

use super::{Builder, Lowering, lbl_name};
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, ValueDef};

impl Lowering {
    /// tract's ReduceMax/ReduceMin take numbers only; on bools they are any/all, so reduce
    /// the values as uint8 and cast back.
    pub(super) fn reduce_bools(&mut self) {
        let nodes: Vec<NodeId> = self
            .graph()
            .all_nodes()
            .into_iter()
            .filter(|&id| {
                let n = self.graph().node(id);
                (n.is("ReduceMax") || n.is("ReduceMin")) && n.input(0).is_some() && n.output(0).is_some() && self.input_type(id, 0) == Some(DataType::Bool)
            })
            .collect();
        for id in nodes {
            let node = self.graph().node(id).clone();
            let (x, out) = (node.input(0).expect("filtered"), node.output(0).expect("filtered"));
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.as_uint8", lbl_name(&node, out)) };
            let wide = b.cast(x, DataType::Uint8);
            let reduced = b.new_value("reduced");
            b.pos += 1; // after the reduction itself
            b.op_into("Cast", &[reduced], vec![Attribute::new("to", AttrValue::Int(DataType::Bool.code() as i64))], out);
            let g = &mut self.model.graph;
            g.node_mut(id).inputs[0] = Some(wide);
            g.node_mut(id).outputs[0] = Some(reduced);
            g.value_mut(reduced).def = ValueDef::Node { node: id, output: 0 };
            self.report.expanded_functions += 1;
        }
    }
}
