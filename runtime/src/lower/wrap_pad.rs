//! `Pad` with mode `wrap` (tract has constant, reflect and edge): each padded axis becomes a
//! `Concat` of the input's last `begin` entries, the input, and its first `end` entries. Needs
//! the pads as constants and the padded axes' sizes known (pads up to the axis size; larger
//! or negative pads keep the node, which tract then refuses with its own message).

use super::{Builder, Lowering, lbl_name};
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{Model, NodeId};

impl Lowering {
    pub(super) fn expand_wrap_pads(&mut self) {
        let nodes: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| self.graph().node(id).is("Pad") && self.graph().node(id).attr_string("mode") == Some("wrap")).collect();
        for id in nodes {
            let Some(plan) = self.wrap_plan(id) else { continue };
            let node = self.graph().node(id).clone();
            let (Some(mut x), Some(out)) = (node.input(0), node.output(0)) else { continue };
            let region = node.region;
            let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
            let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.wrap", lbl_name(&node, out)) };
            let last = plan.iter().rposition(|&(_, begin, end)| begin > 0 || end > 0);
            for (k, &(axis, begin, end)) in plan.iter().enumerate() {
                if begin == 0 && end == 0 {
                    continue;
                }
                let axes = b.constant_i64("axis", &[1], &[axis as i64]);
                let mut parts = Vec::new();
                if begin > 0 {
                    let (starts, ends) = (b.constant_i64("starts", &[1], &[-(begin as i64)]), b.constant_i64("ends", &[1], &[i64::MAX]));
                    parts.push(b.op("Slice", &[x, starts, ends, axes], vec![]));
                }
                parts.push(x);
                if end > 0 {
                    let (starts, ends) = (b.constant_i64("starts", &[1], &[0]), b.constant_i64("ends", &[1], &[end as i64]));
                    parts.push(b.op("Slice", &[x, starts, ends, axes], vec![]));
                }
                let concat = vec![Attribute::new("axis", AttrValue::Int(axis as i64))];
                if Some(k) == last {
                    b.op_into("Concat", &parts, concat, out);
                } else {
                    x = b.op("Concat", &parts, concat);
                }
            }
            if last.is_none() {
                b.op_into("Identity", &[x], vec![], out);
            }
            self.model.graph.remove_node(id);
            self.report.expanded_functions += 1;
        }
    }

    /// `(axis, begin, end)` for every axis of a wrap Pad, when pads (and axes) are constant,
    /// non-negative and no larger than the known axis sizes.
    fn wrap_plan(&self, id: NodeId) -> Option<Vec<(usize, usize, usize)>> {
        let g = self.graph();
        let node = g.node(id);
        let dims = g.value(node.input(0)?).shape()?.as_known()?;
        let rank = dims.len() as i64;
        let pads = g.constant(node.input(1)?)?.to_i64().ok()?;
        let axes: Vec<i64> = match node.input(3) {
            Some(a) => g.constant(a)?.to_i64().ok()?,
            None => (0..rank).collect(),
        };
        if pads.len() != 2 * axes.len() {
            return None;
        }
        let mut plan = Vec::new();
        for (k, &a) in axes.iter().enumerate() {
            let axis = if a < 0 { a + rank } else { a };
            let (begin, end) = (pads[k], pads[k + axes.len()]);
            if !(0..rank).contains(&axis) || begin < 0 || end < 0 || begin > dims[axis as usize] || end > dims[axis as usize] {
                return None;
            }
            plan.push((axis as usize, begin as usize, end as usize));
        }
        Some(plan)
    }
}

/// Rewrites that need values only known once a session bakes inputs in (constant pads).
pub(crate) fn expand_wrap_pads(model: &mut Model) {
    let mut lowering = Lowering { model: model.clone(), name: super::model_name(model), report: Default::default(), ranks: Default::default() };
    lowering.expand_wrap_pads();
    if lowering.report.expanded_functions > 0 {
        *model = lowering.model;
    }
}
