//! `CenterCropPad`, which tract lacks, as a `Slice` then a `Pad`, computed from `Shape(x)`.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, Tensor};

impl Lowering {
    /// `CenterCropPad(x, shape)`: along each axis, crop the centred window of the target size
    /// (the extra element, if odd, at the end) or pad with zeros around (the extra one at the
    /// end): `Slice` then `Pad`, with starts and pads computed from `Shape(x)`.
    pub(super) fn expand_center_crop_pad(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(target), Some(out)) = (node.input(0), node.input(1), node.output(0)) else { return Err(self.err(lbl, "needs an input, a shape and an output")) };
        let Some(rank) = self.value_rank(x) else { return Err(self.err(lbl, "the input's rank is unknown")) };
        let axes: Vec<i64> = match node.attr_ints("axes") {
            Some(axes) => axes.iter().map(|&a| if a < 0 { a + rank as i64 } else { a }).collect(),
            None => (0..rank as i64).collect(),
        };
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let axes_v = b.constant_i64("axes", &[axes.len() as u64], &axes);
        let zero = b.constant_i64("zero", &[], &[0]);
        let two = b.constant_i64("two", &[], &[2]);
        let shape = b.op("Shape", &[x], vec![]);
        let dims = b.op("Gather", &[shape, axes_v], vec![]);
        let target = b.cast(target, DataType::Int64);
        let surplus = b.op("Sub", &[dims, target], vec![]);
        let crop = b.op("Max", &[surplus, zero], vec![]);
        let start = b.op("Div", &[crop, two], vec![]);
        let kept = b.op("Min", &[dims, target], vec![]);
        let end = b.op("Add", &[start, kept], vec![]);
        let cropped = b.op("Slice", &[x, start, end, axes_v], vec![]);
        let shortfall = b.op("Neg", &[surplus], vec![]);
        let pad = b.op("Max", &[shortfall, zero], vec![]);
        let before = b.op("Div", &[pad, two], vec![]);
        let after = b.op("Sub", &[pad, before], vec![]);
        let pads = b.op("Concat", &[before, after], vec![Attribute::new("axis", AttrValue::Int(0))]);
        let pad_value = b.constant("pad_value", Tensor::from_f32(&[], &[0.0]).expect("a scalar fits"));
        let pad_value = b.op("CastLike", &[pad_value, x], vec![]);
        b.op_into("Pad", &[cropped, pads, pad_value, axes_v], vec![], out);
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
