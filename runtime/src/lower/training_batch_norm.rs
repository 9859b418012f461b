//! `BatchNormalization` in training mode, which tract lacks: normalisation by the batch's own
//! statistics, and the running statistics updated with `momentum`.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{NodeId, ValueId};

impl Lowering {
    /// `BatchNormalization` in training mode: normalise with the batch's own mean and (population)
    /// variance over every axis but the channels, and update the running statistics with
    /// `momentum`.
    pub(super) fn expand_training_batch_norm(&mut self, id: NodeId, opset: i64) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(scale), Some(bias), Some(mean), Some(var), Some(out)) = (node.input(0), node.input(1), node.input(2), node.input(3), node.input(4), node.output(0)) else {
            return Err(self.err(lbl, "needs X, scale, B, input_mean, input_var and an output"));
        };
        let Some(rank) = self.value_rank(x) else { return Err(self.err(lbl, "the input's rank is unknown")) };
        let epsilon = node.attr_float("epsilon").unwrap_or(1e-5);
        let momentum = node.attr_float("momentum").unwrap_or(0.9);
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.training", lbl_name(&node, out)) };
        let axes: Vec<i64> = (0..rank as i64).filter(|&a| a != 1).collect();
        let mean_over = |b: &mut Builder, v: ValueId| {
            if opset >= 18 {
                let axes_v = b.constant_i64("axes", &[axes.len() as u64], &axes);
                b.op("ReduceMean", &[v, axes_v], vec![Attribute::new("keepdims", AttrValue::Int(1))])
            } else {
                b.op("ReduceMean", &[v], vec![Attribute::new("axes", AttrValue::Ints(axes.clone())), Attribute::new("keepdims", AttrValue::Int(1))])
            }
        };
        let batch_mean = mean_over(&mut b, x);
        let centered = b.op("Sub", &[x, batch_mean], vec![]);
        let squared = b.op("Mul", &[centered, centered], vec![]);
        let batch_var = mean_over(&mut b, squared);
        let eps = b.constant_f32(epsilon);
        let eps = b.op("CastLike", &[eps, x], vec![]);
        let shifted = b.op("Add", &[batch_var, eps], vec![]);
        let std = b.op("Sqrt", &[shifted], vec![]);
        let normalized = b.op("Div", &[centered, std], vec![]);
        let mut channel_shape = vec![1i64, -1];
        channel_shape.extend(std::iter::repeat_n(1, rank.saturating_sub(2)));
        let channel_shape = b.constant_i64("channels", &[channel_shape.len() as u64], &channel_shape);
        let scale_b = b.op("Reshape", &[scale, channel_shape], vec![]);
        let bias_b = b.op("Reshape", &[bias, channel_shape], vec![]);
        let scaled = b.op("Mul", &[normalized, scale_b], vec![]);
        b.op_into("Add", &[scaled, bias_b], vec![], out);
        let flat = b.constant_i64("flat", &[1], &[-1]);
        let keep = b.constant_f32(momentum);
        let keep = b.op("CastLike", &[keep, x], vec![]);
        let take = b.constant_f32(1.0 - momentum);
        let take = b.op("CastLike", &[take, x], vec![]);
        for (output, running, batch) in [(node.output(1), mean, batch_mean), (node.output(2), var, batch_var)] {
            let Some(output) = output else { continue };
            let batch = b.op("Reshape", &[batch, flat], vec![]);
            let old = b.op("Mul", &[running, keep], vec![]);
            let new = b.op("Mul", &[batch, take], vec![]);
            b.op_into("Add", &[old, new], vec![], output);
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
