//! `com.microsoft.SkipSimplifiedLayerNormalization`: RMS normalization of `input + skip (+ bias)`
//! over the last axis, times gamma. Its optional outputs are the mean (onnxruntime writes zeros:
//! an RMS norm has none), `1/sqrt(mean(sum²) + eps)` and the sum that was normalized (the
//! residual stream the next layer adds to). Inputs of another float type than f32 are summed
//! and normalized in f32, as onnxruntime's kernel does, and cast back.

use super::Lowering;
use super::contrib::Opset;
use super::skip_layer_norm::DEFAULT_EPSILON;
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, Tensor, ValueId};

impl Lowering {
    pub(super) fn expand_skip_simplified_layer_norm(&mut self, id: NodeId, opset: Opset) -> Result<bool, RuntimeError> {
        let node = self.graph().node(id);
        let (Some(input), Some(skip), Some(gamma)) = (node.input(0), node.input(1), node.input(2)) else {
            return Err(self.node_err(id, "SkipSimplifiedLayerNormalization needs input, skip and gamma"));
        };
        let bias = node.input(3);
        let epsilon = node.attr_float("epsilon").unwrap_or(DEFAULT_EPSILON);
        let dtype = self.input_type(id, 0).unwrap_or(DataType::Float);
        let (mut b, node) = self.builder_at(id)?;
        let wide = |b: &mut super::Builder, v: ValueId| if dtype == DataType::Float { v } else { b.cast(v, DataType::Float) };
        let (input, skip, gamma) = (wide(&mut b, input), wide(&mut b, skip), wide(&mut b, gamma));
        let mut sum = b.op("Add", &[input, skip], vec![]);
        if let Some(bias) = bias {
            let bias = wide(&mut b, bias);
            sum = b.op("Add", &[sum, bias], vec![]);
        }
        let (y, root) = opset.rms_norm(&mut b, sum, gamma, &[-1], epsilon);
        for (i, v) in [(0, y), (3, sum)] {
            if let Some(o) = node.output(i) {
                match dtype {
                    DataType::Float => b.op_into("Identity", &[v], vec![], o),
                    _ => b.op_into("Cast", &[v], vec![Attribute::new("to", AttrValue::Int(dtype.code() as i64))], o),
                }
            }
        }
        if let Some(o) = node.output(1) {
            let shape = b.op("Shape", &[root], vec![]);
            let zero = Tensor::from_f32(&[1], &[0.0]).expect("one f32");
            b.op_into("ConstantOfShape", &[shape], vec![Attribute::new("value", AttrValue::Tensor(zero))], o);
        }
        if let Some(o) = node.output(2) {
            b.op_into("Reciprocal", &[root], vec![], o);
        }
        Ok(true)
    }
}
