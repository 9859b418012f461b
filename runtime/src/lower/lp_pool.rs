//! `LpPool`, which tract lacks, as an `AveragePool` of `|x|^p` scaled back to a window sum.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::NodeId;
use compactor_ir::graph::{AttrValue, Attribute};

impl Lowering {
    /// `LpPool(x) = (Σ_window |x|^p)^(1/p)`, the window sum being an AveragePool (padding
    /// counted, so padded zeros add nothing) times the window size.
    pub(super) fn expand_lp_pool(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(out)) = (node.input(0), node.output(0)) else { return Err(self.err(lbl, "needs an input and an output")) };
        let Some(kernel) = node.attr_ints("kernel_shape").map(<[i64]>::to_vec) else { return Err(self.err(lbl, "needs kernel_shape")) };
        let p = node.attr_int("p").unwrap_or(2) as f32;
        let window: i64 = kernel.iter().product();
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let mut attributes: Vec<Attribute> = node.attributes.iter().filter(|a| a.name != "p").cloned().collect();
        attributes.push(Attribute::new("count_include_pad", AttrValue::Int(1)));
        let abs = b.op("Abs", &[x], vec![]);
        let p_v = b.constant_f32(p);
        let p_v = b.op("CastLike", &[p_v, x], vec![]);
        let powered = b.op("Pow", &[abs, p_v], vec![]);
        let mean = b.op("AveragePool", &[powered], attributes);
        let size = b.constant_f32(window as f32);
        let size = b.op("CastLike", &[size, x], vec![]);
        let sum = b.op("Mul", &[mean, size], vec![]);
        let inv = b.constant_f32(1.0 / p);
        let inv = b.op("CastLike", &[inv, x], vec![]);
        b.op_into("Pow", &[sum, inv], vec![], out);
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
