//! onnxruntime's `com.microsoft.QGemm` (quantized A and B, an int32 bias C on the scale
//! `a_scale * b_scale`, and an optional quantized output), as `quantize_static` writes for a
//! Gemm: written as a float `Gemm` on the dequantized operands. A constant B (a weight, per
//! tensor or per output column) is dequantized here.

use super::quant_params::{QuantLayout, dequantize_constant};
use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, Tensor, ValueId};

impl Lowering {
    pub(super) fn expand_qgemms(&mut self) -> Result<(), RuntimeError> {
        let nodes: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| self.graph().node(id).domain() == "com.microsoft" && self.graph().node(id).op_type == "QGemm").collect();
        for id in nodes {
            self.expand_qgemm(id)?;
        }
        Ok(())
    }

    fn expand_qgemm(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let Some(out) = node.output(0) else { return Ok(()) };
        let input = |i: usize| node.input(i);
        let (Some(a), Some(a_scale), Some(bw), Some(b_scale)) = (input(0), input(1), input(3), input(4)) else {
            return Err(self.err(lbl, "needs A, a_scale, B and b_scale"));
        };
        let trans_b = node.attr_int("transB").unwrap_or(0) != 0;
        // B's scale is per tensor or per output column (B's axis 1, or 0 when transposed).
        let constant_b = match (self.graph().constant(bw), self.graph().constant(b_scale)) {
            (Some(w), Some(s)) => {
                let zero = input(5).map(|z| self.graph().constant(z).ok_or_else(|| self.err(lbl.clone(), "a constant B needs a constant zero point"))).transpose()?;
                let layout = if s.dims().iter().product::<u64>() == 1 { QuantLayout::PerTensor } else { QuantLayout::PerAxis { axis: if trans_b { 0 } else { 1 } } };
                let values = dequantize_constant(&w, &s, zero.as_ref(), layout).map_err(|e| self.err(lbl.clone(), format!("B: {e}")))?;
                Some(Tensor::from_f32(w.dims(), &values).map_err(|e| self.err(lbl.clone(), e.to_string()))?)
            }
            _ => None,
        };
        self.note_quantized_type(a, input(2));
        if constant_b.is_none() {
            self.note_quantized_type(bw, input(5));
        }
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let dequantize = |b: &mut Builder, x: ValueId, s: ValueId, z: Option<ValueId>| b.op("DequantizeLinear", &[Some(x), Some(s), z].into_iter().flatten().collect::<Vec<_>>(), vec![]);
        let a_f = dequantize(&mut b, a, a_scale, input(2));
        let b_f = match constant_b {
            Some(t) => b.constant("b", t),
            None => dequantize(&mut b, bw, b_scale, input(5)),
        };
        let mut operands = vec![a_f, b_f];
        if let Some(c) = input(6) {
            // C holds int32 multiples of a_scale * b_scale.
            let c_f = b.cast(c, DataType::Float);
            let scale = b.op("Mul", &[a_scale, b_scale], vec![]);
            operands.push(b.op("Mul", &[c_f, scale], vec![]));
        }
        let attributes: Vec<Attribute> =
            ["alpha", "transA", "transB"].iter().filter_map(|n| node.attributes.iter().find(|a| a.name == *n).cloned()).chain([Attribute::new("beta", AttrValue::Float(1.0))]).collect();
        match input(7) {
            Some(y_scale) => {
                let y = b.op("Gemm", &operands, attributes);
                let quantize_inputs: Vec<ValueId> = [Some(y), Some(y_scale), input(8)].into_iter().flatten().collect();
                b.op_into("QuantizeLinear", &quantize_inputs, vec![], out);
            }
            None => b.op_into("Gemm", &operands, attributes, out),
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
