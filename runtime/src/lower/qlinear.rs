//! onnxruntime's quantized operators (`com.microsoft` `QLinearAdd`, `QLinearMul`,
//! `QLinearSigmoid`, `QLinearLeakyRelu`, `QLinearSoftmax`, `QLinearGlobalAveragePool`,
//! `QLinearAveragePool`, `QLinearConcat`, as `quantize_static` writes them in QOperator
//! format) written as what they are defined to compute: their inputs dequantized, the float op,
//! the result quantized with the output's scale and zero point.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, ValueId, ValueType};

/// The float op a quantized op computes between dequantizing and quantizing.
enum Inner {
    /// `(op, attributes kept)`; its quantized operands come as (x, scale, zero point) triples
    /// at these input positions, and the output's scale and zero point at `output_at`.
    Elementwise { op: &'static str, operands: &'static [usize], output_at: usize, keep: &'static [&'static str] },
    /// QLinearSoftmax: its `opset` attribute says which Softmax definition (before 13: on
    /// the input flattened to 2-D at `axis`).
    Softmax,
    /// QLinearConcat: the output's scale and zero point first, then a triple per input.
    Concat,
}

fn inner(op_type: &str) -> Option<Inner> {
    use Inner::Elementwise;
    Some(match op_type {
        "QLinearAdd" => Elementwise { op: "Add", operands: &[0, 3], output_at: 6, keep: &[] },
        "QLinearMul" => Elementwise { op: "Mul", operands: &[0, 3], output_at: 6, keep: &[] },
        "QLinearSigmoid" => Elementwise { op: "Sigmoid", operands: &[0], output_at: 3, keep: &[] },
        "QLinearLeakyRelu" => Elementwise { op: "LeakyRelu", operands: &[0], output_at: 3, keep: &["alpha"] },
        "QLinearGlobalAveragePool" => Elementwise { op: "GlobalAveragePool", operands: &[0], output_at: 3, keep: &[] },
        "QLinearAveragePool" => Elementwise { op: "AveragePool", operands: &[0], output_at: 3, keep: &["auto_pad", "ceil_mode", "count_include_pad", "kernel_shape", "pads", "strides", "dilations"] },
        "QLinearSoftmax" => Inner::Softmax,
        "QLinearConcat" => Inner::Concat,
        _ => return None,
    })
}

impl Builder<'_> {
    /// `exp(x - max) / sum(exp(x - max))` along `axis`. Written out rather than as `Softmax`:
    /// tract 0.23.9 gives wrong values for a Softmax on a dequantized quantized tensor (it
    /// saturates every output), which is where a QLinearSoftmax puts it.
    fn softmax_expanded(&mut self, x: ValueId, axis: i64, opset: i64) -> ValueId {
        let keep = Attribute::new("keepdims", AttrValue::Int(1));
        let axes_attr = Attribute::new("axes", AttrValue::Ints(vec![axis]));
        let axes = self.constant_i64("axes", &[1], &[axis]);
        // Reduce ops take their axes as an input from opset 18 (ReduceSum from 13).
        let max = if opset >= 18 { self.op("ReduceMax", &[x, axes], vec![keep.clone()]) } else { self.op("ReduceMax", &[x], vec![axes_attr.clone(), keep.clone()]) };
        let shifted = self.op("Sub", &[x, max], vec![]);
        let exp = self.op("Exp", &[shifted], vec![]);
        let sum = if opset >= 13 { self.op("ReduceSum", &[exp, axes], vec![keep]) } else { self.op("ReduceSum", &[exp], vec![axes_attr, keep]) };
        self.op("Div", &[exp, sum], vec![])
    }
}

impl Lowering {
    /// Declares the element type of a quantized value that has none (an output of another
    /// onnxruntime op): its zero point's, uint8 without one. Later steps of lowering decide
    /// by it whether tract takes the `DequantizeLinear` made for it as it is.
    pub(super) fn note_quantized_type(&mut self, x: ValueId, zero: Option<ValueId>) {
        if self.graph().value(x).ty.is_some() {
            return;
        }
        let dtype = zero.and_then(|z| self.graph().constant(z)).map_or(DataType::Uint8, |t| t.dtype());
        self.model.graph.value_mut(x).ty = Some(ValueType::tensor(dtype, None));
    }

    /// Rewrites every `com.microsoft` QLinear op listed in [`inner`].
    pub(super) fn expand_qlinear_ops(&mut self) -> Result<(), RuntimeError> {
        let nodes: Vec<NodeId> = self.graph().all_nodes().into_iter().filter(|&id| self.graph().node(id).domain() == "com.microsoft" && inner(&self.graph().node(id).op_type).is_some()).collect();
        for id in nodes {
            self.expand_qlinear(id)?;
        }
        // The quantized outputs of these and of QLinearConv/QLinearMatMul have no declared
        // type when they feed a DequantizeLinear of the model's own.
        for id in self.graph().all_nodes() {
            let node = self.graph().node(id);
            if node.is("DequantizeLinear")
                && let Some(x) = node.input(0)
            {
                let zero = node.input(2);
                self.note_quantized_type(x, zero);
            }
        }
        Ok(())
    }

    fn expand_qlinear(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let Some(out) = node.output(0) else { return Ok(()) };
        let op = inner(&node.op_type).expect("listed");
        if node.attr_int("channels_last").unwrap_or(0) != 0 {
            return Err(self.err(lbl, "channels_last=1 is not supported"));
        }
        let input = |i: usize| node.input(i);
        let required = |l: &Lowering, i: usize| input(i).ok_or_else(|| l.err(lbl.clone(), format!("input {i} is missing")));
        let opset = self.model.opset_version("").unwrap_or(13);
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        // (x, scale, zero point) triples to dequantize, and the output's scale and zero point.
        let (operands, output_at): (Vec<usize>, usize) = match &op {
            Inner::Elementwise { operands, output_at, .. } => (operands.to_vec(), *output_at),
            Inner::Softmax => (vec![0], 3),
            Inner::Concat => ((2..node.inputs.len()).step_by(3).collect(), 0),
        };
        let mut dequantized = Vec::new();
        for &i in &operands {
            let (x, zero) = (required(self, i)?, input(i + 2));
            self.note_quantized_type(x, zero);
            dequantized.push((x, required(self, i + 1)?, zero));
        }
        let (y_scale, y_zero) = (required(self, output_at)?, input(output_at + 1));
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let floats: Vec<ValueId> = dequantized.into_iter().map(|(x, s, z)| b.op("DequantizeLinear", &[Some(x), Some(s), z].into_iter().flatten().collect::<Vec<_>>(), vec![])).collect();
        let result = match op {
            Inner::Elementwise { op, keep, .. } => {
                let attributes = node.attributes.iter().filter(|a| keep.contains(&a.name.as_str())).cloned().collect();
                b.op(op, &floats, attributes)
            }
            Inner::Concat => b.op("Concat", &floats, vec![Attribute::new("axis", AttrValue::Int(node.attr_int("axis").unwrap_or(0)))]),
            Inner::Softmax => {
                // Before opset 13 Softmax is defined on the input flattened to 2-D at `axis`.
                let axis = node.attr_int("axis").unwrap_or(if node.attr_int("opset").unwrap_or(opset) >= 13 { -1 } else { 1 });
                if node.attr_int("opset").unwrap_or(opset) >= 13 {
                    b.softmax_expanded(floats[0], axis, opset)
                } else {
                    let shape = b.op("Shape", &floats, vec![]);
                    let flat = b.op("Flatten", &floats, vec![Attribute::new("axis", AttrValue::Int(axis))]);
                    let soft = b.softmax_expanded(flat, 1, opset);
                    b.op("Reshape", &[soft, shape], vec![])
                }
            }
        };
        let quantize_inputs: Vec<ValueId> = [Some(result), Some(y_scale), y_zero].into_iter().flatten().collect();
        b.op_into("QuantizeLinear", &quantize_inputs, vec![], out);
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
