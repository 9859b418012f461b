//! Steps 2 and 3 of lowering: a `DequantizeLinear` tract cannot take (blocked, or of a type
//! tract lacks) is folded into an initializer when its inputs are constant, and otherwise, like
//! such a `QuantizeLinear`, expanded into plain ONNX arithmetic. A `QuantizeLinear` reading a
//! `Softmax` is expanded as well, which keeps the softmax in f32.

use super::quant_params::{dequantize_constant, quant_layout, quant_type};
use super::widen::carrier_code;
use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use bytes::Bytes;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, Tensor, ValueDef, ValueType};

impl Lowering {
    /// Steps 2 and 3.
    pub(super) fn fold_and_expand_quantization(&mut self) -> Result<(), RuntimeError> {
        let nodes: Vec<NodeId> = self.graph().all_nodes();
        for id in nodes {
            let node = self.graph().node(id);
            if node.is("DequantizeLinear") && self.dequantize_needs_lowering(id) {
                if !self.try_fold_dequantize(id)? {
                    self.expand_quantize(id, false)?;
                }
            } else if node.is("QuantizeLinear") && self.quantize_needs_lowering(id) {
                self.expand_quantize(id, true)?;
            }
        }
        Ok(())
    }

    fn dequantize_needs_lowering(&self, id: NodeId) -> bool {
        let node = self.graph().node(id);
        node.attr_int("block_size").unwrap_or(0) > 0
            || self.input_type(id, 0).is_none_or(|t| !matches!(t, DataType::Int8 | DataType::Uint8 | DataType::Int32))
            || self.input_type(id, 1).is_some_and(|t| t != DataType::Float)
    }

    fn quantize_needs_lowering(&self, id: NodeId) -> bool {
        let node = self.graph().node(id);
        let out_type = self.quantize_output_type(id);
        // tract 0.23.9 turns `DequantizeLinear -> Softmax -> QuantizeLinear` with one quantized
        // type on both sides into a quantized softmax that saturates (every output 1.0 where
        // onnxruntime and the ONNX reference give probabilities); a plain-arithmetic quantize
        // keeps the softmax in f32.
        let reads_softmax = node.input(0).and_then(|v| self.graph().producer(v)).is_some_and(|(p, _)| self.graph().node(p).is("Softmax"));
        reads_softmax
            || node.attr_int("block_size").unwrap_or(0) > 0
            || out_type.is_none_or(|t| !matches!(t, DataType::Int8 | DataType::Uint8))
            || self.input_type(id, 1).is_some_and(|t| t != DataType::Float)
            || self.input_type(id, 0).is_some_and(|t| t != DataType::Float)
    }

    fn quantize_output_type(&self, id: NodeId) -> Option<DataType> {
        let node = self.graph().node(id);
        match node.attr_int("output_dtype") {
            Some(code) if code != 0 => DataType::from_code(code as i32),
            _ if node.input(2).is_some() => self.input_type(id, 2),
            _ => Some(DataType::Uint8),
        }
    }

    /// Replaces a DequantizeLinear whose inputs are all constant by its value.
    fn try_fold_dequantize(&mut self, id: NodeId) -> Result<bool, RuntimeError> {
        let g = self.graph();
        let node = g.node(id);
        let (Some(x), Some(scale)) = (node.input(0).and_then(|v| g.constant(v)), node.input(1).and_then(|v| g.constant(v))) else { return Ok(false) };
        let zero = match node.input(2) {
            Some(v) => match g.constant(v) {
                Some(t) => Some(t),
                None => return Ok(false),
            },
            None => None,
        };
        let Some(out) = node.output(0) else { return Ok(false) };
        let lbl = label(g, id);
        let layout = quant_layout(node, x.dims().len(), scale.dims().len()).map_err(|e| self.err(lbl.clone(), e))?;
        let values = dequantize_constant(&x, &scale, zero.as_ref(), layout).map_err(|e| self.err(lbl.clone(), e))?;
        let out_type = match node.attr_int("output_dtype") {
            Some(code) if code != 0 => DataType::from_code(code as i32).unwrap_or(scale.dtype()),
            _ => scale.dtype(),
        };
        let tensor = if out_type == DataType::Float16 {
            Tensor::from_raw(DataType::Float16, x.dims(), Bytes::from(values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect::<Vec<u8>>()))
        } else {
            // f32 carries bf16 too (the runtime widens bf16 to f32 anyway).
            Tensor::from_f32(x.dims(), &values)
        }
        .map_err(|e| self.err(lbl, e.to_string()))?;
        // The output value becomes the initializer, so every use sees it unchanged.
        let region = g.node(id).region;
        self.model.graph.remove_node(id);
        let value = self.model.graph.value_mut(out);
        value.def = ValueDef::Initializer;
        value.initializer = Some(tensor.with_name(Some(value.name.clone())));
        value.ty = Some(ValueType::tensor(tensor.dtype(), Some(tensor.shape())));
        self.model.graph.region_mut(region).initializers.push(out);
        self.report.folded_dequantize += 1;
        Ok(true)
    }

    /// Rewrites a DequantizeLinear (`quantize == false`) or QuantizeLinear as plain ops:
    /// `y = (float(x) - float(zero)) * scale` and
    /// `y = cast(clip(round(x / scale) + zero, lo, hi))`, scale and zero point broadcast
    /// along their axis, blocked ones repeated with a Gather.
    fn expand_quantize(&mut self, id: NodeId, quantize: bool) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(x), Some(scale)) = (node.input(0), node.input(1)) else {
            return Err(self.err(lbl, "missing input"));
        };
        let Some(out) = node.output(0) else { return Ok(()) };
        let x_rank = self.value_rank(x);
        let scale_rank = self.value_rank(scale);
        let (x_rank, scale_rank) = match (x_rank, scale_rank) {
            (Some(x), Some(s)) => (x, s),
            // A scalar scale broadcasts as it is: the input's rank does not matter.
            (None, Some(0)) if node.attr_int("block_size").unwrap_or(0) == 0 => (0, 0),
            _ => return Err(self.err(lbl, "input ranks are unknown; cannot expand a blocked or sub-byte (de)quantization")),
        };
        let layout = quant_layout(&node, x_rank, scale_rank).map_err(|e| self.err(lbl.clone(), e))?;
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.lowered", lbl_name(&node, out)) };
        let x_type = b.lowering.input_type(id, 0);
        let scale_type = b.lowering.input_type(id, 1).unwrap_or(DataType::Float);
        let scale_f = b.cast(scale, DataType::Float);
        let scale_b = b.broadcast_param(scale_f, x, layout, x_rank);
        let zero_b = match node.input(2) {
            Some(z) => {
                let zf = b.cast(z, DataType::Float);
                Some(b.broadcast_param(zf, x, layout, x_rank))
            }
            None => None,
        };
        let result = if quantize {
            let out_type = b.lowering.quantize_output_type(id).unwrap_or(DataType::Uint8);
            let (lo, hi) = match (out_type, quant_type(out_type)) {
                (DataType::Int16, _) => (i16::MIN as i64, i16::MAX as i64),
                (DataType::Uint16, _) => (0, u16::MAX as i64),
                (_, Some(qt)) if qt.offset > 0 => (-qt.offset, qt.offset - 1),
                (_, Some(qt)) => (0, (1i64 << qt.bits) - 1),
                (_, None) => return Err(b.lowering.err(lbl, format!("quantizing to {out_type} is not supported"))),
            };
            let xf = b.cast(x, DataType::Float);
            let divided = b.op("Div", &[xf, scale_b], vec![]);
            let rounded = b.op("Round", &[divided], vec![]);
            let shifted = match zero_b {
                Some(z) => b.op("Add", &[rounded, z], vec![]),
                None => rounded,
            };
            let lo = b.constant_f32(lo as f32);
            let hi = b.constant_f32(hi as f32);
            let clipped = b.op("Clip", &[shifted, lo, hi], vec![]);
            b.op_into("Cast", &[clipped], vec![Attribute::new("to", AttrValue::Int(carrier_code(out_type) as i64))], out);
            let _ = x_type;
            out
        } else {
            let xf = b.cast(x, DataType::Float);
            let centered = match zero_b {
                Some(z) => b.op("Sub", &[xf, z], vec![]),
                None => xf,
            };
            let out_type = match node.attr_int("output_dtype") {
                Some(code) if code != 0 => DataType::from_code(code as i32).unwrap_or(scale_type),
                _ => scale_type,
            };
            if carrier_code(out_type) == DataType::Float.code() {
                b.op_into("Mul", &[centered, scale_b], vec![], out);
            } else {
                let y = b.op("Mul", &[centered, scale_b], vec![]);
                b.op_into("Cast", &[y], vec![Attribute::new("to", AttrValue::Int(carrier_code(out_type) as i64))], out);
            }
            out
        };
        let _ = result;
        self.model.graph.remove_node(id);
        self.report.expanded += 1;
        Ok(())
    }
}
