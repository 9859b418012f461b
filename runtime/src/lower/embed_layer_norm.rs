//! `com.microsoft.EmbedLayerNormalization` and `QEmbedLayerNormalization` (the same with
//! 8-bit tables, gamma and beta, each with a per-tensor scale and zero point): BERT's embedding
//! layer. `LayerNorm(word[ids] + position[position_ids or 0..S] (+ segment[segment_ids]))`;
//! `mask_index` is the number of ones in each row of the mask (zeros without a mask), as
//! int32; `embedding_sum` is the sum before normalization.

use super::Lowering;
use super::contrib::Opset;
use super::skip_layer_norm::DEFAULT_EPSILON;
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, Tensor, ValueId};

impl Lowering {
    pub(super) fn expand_embed_layer_norm(&mut self, id: NodeId, opset: Opset) -> Result<bool, RuntimeError> {
        let node = self.graph().node(id);
        let quantized = node.op_type == "QEmbedLayerNormalization";
        let input = |i: usize| node.input(i);
        let (Some(ids), Some(word), Some(position), Some(gamma), Some(beta)) = (input(0), input(2), input(3), input(5), input(6)) else {
            return Err(self.node_err(id, "needs input_ids, the word and position tables, gamma and beta"));
        };
        let (segment_ids, segment, mask) = (input(1), input(4), input(7));
        let position_ids = if quantized { None } else { input(8) };
        // QEmbedLayerNormalization: each table's scale and zero point.
        let table_params: Vec<(Option<ValueId>, Option<ValueId>)> = (0..5).map(|table| (input(8 + table), input(13 + table))).collect();
        let params = |table: usize| table_params[table];
        if quantized && [0usize, 1, 3, 4].iter().any(|&t| params(t).0.is_none() || params(t).1.is_none()) {
            return Err(self.node_err(id, "QEmbedLayerNormalization needs a scale and zero point for each table, gamma and beta"));
        }
        let segment_params = params(2);
        if quantized && segment.is_some() && (segment_params.0.is_none() || segment_params.1.is_none()) {
            return Err(self.node_err(id, "QEmbedLayerNormalization needs a scale and zero point for the segment table"));
        }
        let epsilon = node.attr_float("epsilon").unwrap_or(DEFAULT_EPSILON);
        let mask_index_out = node.output(1);
        let (mut b, node) = self.builder_at(id)?;
        let dequantize = |b: &mut super::Builder, v: ValueId, (scale, zero): (Option<ValueId>, Option<ValueId>)| -> ValueId {
            if !quantized {
                return v;
            }
            let mut inputs = vec![v, scale.expect("checked above")];
            inputs.extend(zero);
            b.op("DequantizeLinear", &inputs, vec![])
        };
        let word = dequantize(&mut b, word, params(0));
        let position = dequantize(&mut b, position, params(1));
        let gamma = dequantize(&mut b, gamma, params(3));
        let beta = dequantize(&mut b, beta, params(4));
        let words = b.op("Gather", &[word, ids], vec![]);
        let position_ids = match position_ids {
            Some(p) => p,
            None => {
                let (zero, one) = (b.constant_i64("start", &[], &[0]), b.constant_i64("step", &[], &[1]));
                let seq = opset.dim(&mut b, ids, 1);
                b.op("Range", &[zero, seq, one], vec![])
            }
        };
        let positions = b.op("Gather", &[position, position_ids], vec![]);
        let mut sum = b.op("Add", &[words, positions], vec![]);
        if let (Some(segment_ids), Some(segment)) = (segment_ids, segment) {
            let segment = dequantize(&mut b, segment, segment_params);
            let segments = b.op("Gather", &[segment, segment_ids], vec![]);
            sum = b.op("Add", &[sum, segments], vec![]);
        }
        let (y, _, _) = opset.layer_norm(&mut b, sum, gamma, Some(beta), epsilon);
        b.op_into("Identity", &[y], vec![], node.output(0).expect("builder_at checked the output"));
        if let Some(o) = mask_index_out {
            let to_i32 = vec![Attribute::new("to", AttrValue::Int(DataType::Int32.code() as i64))];
            match mask {
                Some(mask) => {
                    let wide = b.op("Cast", &[mask], vec![Attribute::new("to", AttrValue::Int(DataType::Int64.code() as i64))]);
                    let one = b.constant_i64("one", &[], &[1]);
                    let ones = b.op("Equal", &[wide, one], vec![]);
                    let counted = b.op("Cast", &[ones], to_i32.clone());
                    let count = opset.reduce(&mut b, "ReduceSum", counted, &[1], false);
                    b.op_into("Identity", &[count], vec![], o);
                }
                None => {
                    let shape = b.op("Shape", &[ids], vec![]);
                    let first = b.constant_i64("batch_axis", &[1], &[0]);
                    let batch = b.op("Gather", &[shape, first], vec![]);
                    let zero = Tensor::from_raw(DataType::Int32, &[1], bytes::Bytes::from_static(&[0, 0, 0, 0])).expect("one int32");
                    b.op_into("ConstantOfShape", &[batch], vec![Attribute::new("value", AttrValue::Tensor(zero))], o);
                }
            }
        }
        if let Some(o) = node.output(2) {
            b.op_into("Identity", &[sum], vec![], o);
        }
        drop(b);
        if let Some(o) = mask_index_out {
            self.declare(o, DataType::Int32, 1);
        }
        Ok(true)
    }
}
