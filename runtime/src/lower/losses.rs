//! `NegativeLogLikelihoodLoss` and `SoftmaxCrossEntropyLoss`, which tract lacks, as the ONNX
//! ops of their definitions: the target's log-probability gathered and negated, weighted,
//! zeroed at `ignore_index`, and reduced.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{NodeId, ValueId};

impl Lowering {
    /// `loss = -log_prob[n, target[n, ...], ...] * weight[target]`, zero where
    /// `target == ignore_index`, then `none`, `sum` or (weighted) `mean` reduction.
    pub(super) fn expand_loss(&mut self, id: NodeId, opset: i64) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let softmax = node.op_type == "SoftmaxCrossEntropyLoss";
        let reduction = node.attr_string("reduction").unwrap_or("mean").to_string();
        let (Some(x), Some(target)) = (node.input(0), node.input(1)) else {
            return Err(self.err(lbl, "needs scores and targets"));
        };
        if !matches!(reduction.as_str(), "none" | "sum" | "mean") {
            return Err(self.err(lbl, format!("unknown reduction '{reduction}'")));
        }
        let Some(out) = node.output(0) else { return Ok(()) };
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let axes_one = |b: &mut Builder, op: &str, v: ValueId| {
            // Squeeze/Unsqueeze take axes as an input from opset 13, as an attribute before.
            if opset >= 13 {
                let axes = b.constant_i64("axis1", &[1], &[1]);
                b.op(op, &[v, axes], vec![])
            } else {
                b.op(op, &[v], vec![Attribute::new("axes", AttrValue::Ints(vec![1]))])
            }
        };
        let log_prob = if softmax {
            let lp = if opset >= 13 {
                b.op("LogSoftmax", &[x], vec![Attribute::new("axis", AttrValue::Int(1))])
            } else {
                // Before 13 LogSoftmax flattens the trailing axes; classes are axis 1 only.
                let lse = b.op("ReduceLogSumExp", &[x], vec![Attribute::new("axes", AttrValue::Ints(vec![1])), Attribute::new("keepdims", AttrValue::Int(1))]);
                b.op("Sub", &[x, lse], vec![])
            };
            if let Some(lp_out) = node.output(1) {
                b.op_into("Identity", &[lp], vec![], lp_out);
            }
            lp
        } else {
            x
        };
        let (safe_target, keep) = match node.attr_int("ignore_index") {
            Some(ignore) => {
                let ignore = b.constant_i64("ignore_index", &[], &[ignore]);
                let ignore = b.op("CastLike", &[ignore, target], vec![]);
                let zero = b.constant_i64("zero", &[], &[0]);
                let zero = b.op("CastLike", &[zero, target], vec![]);
                let ignored = b.op("Equal", &[target, ignore], vec![]);
                let keep = b.op("Not", &[ignored], vec![]);
                (b.op("Where", &[keep, target, zero], vec![]), Some(keep))
            }
            None => (target, None),
        };
        let index = axes_one(&mut b, "Unsqueeze", safe_target);
        let picked = b.op("GatherElements", &[log_prob, index], vec![Attribute::new("axis", AttrValue::Int(1))]);
        let picked = axes_one(&mut b, "Squeeze", picked);
        let mut loss = b.op("Neg", &[picked], vec![]);
        let mut weights = None;
        if let Some(w) = node.input(2) {
            let w = b.op("Gather", &[w, safe_target], vec![Attribute::new("axis", AttrValue::Int(0))]);
            loss = b.op("Mul", &[loss, w], vec![]);
            weights = Some(w);
        }
        if let Some(keep) = keep {
            let keep = b.op("CastLike", &[keep, loss], vec![]);
            loss = b.op("Mul", &[loss, keep], vec![]);
            weights = Some(match weights {
                Some(w) => b.op("Mul", &[w, keep], vec![]),
                None => keep,
            });
        }
        let all = vec![Attribute::new("keepdims", AttrValue::Int(0))];
        match (reduction.as_str(), weights) {
            ("none", _) => b.op_into("Identity", &[loss], vec![], out),
            ("sum", _) => b.op_into("ReduceSum", &[loss], all, out),
            (_, None) => b.op_into("ReduceMean", &[loss], all, out),
            (_, Some(w)) => {
                let total = b.op("ReduceSum", &[loss], all.clone());
                let weight = b.op("ReduceSum", &[w], all);
                b.op_into("Div", &[total, weight], vec![], out);
            }
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
