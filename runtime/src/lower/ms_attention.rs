//! `com.microsoft.Attention` and `QAttention` (the same over a quantized input and weight,
//! each with a scale and zero point): BERT-style self attention with merged Q/K/V weights.
//!
//! `qkv = x·W + bias`, split into Q, K, V (`qkv_hidden_sizes`, or equal thirds), each into
//! `num_heads` heads; `softmax(scale·Q·Kᵀ + mask) · V` with the heads merged back. The mask is
//! additive, `mask_filter_value` (default -10000) where a key is masked: `mask_index` of shape
//! `[batch]` gives each row's length (keys at or past it are masked), a `[batch, kv]` or
//! `[batch, q, kv]` mask masks its zeros. `unidirectional` masks later keys the same way, and
//! `attention_bias` is added. Past/present state, rotary embeddings and the left-padding
//! (`[2·batch]`) and 4-D mask forms are refused with a message.

use super::Lowering;
use super::contrib::Opset;
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{NodeId, ValueId};

const DEFAULT_MASK_FILTER: f32 = -10000.0;

impl Lowering {
    pub(super) fn expand_ms_attention(&mut self, id: NodeId, opset: Opset) -> Result<bool, RuntimeError> {
        let g = self.graph();
        let node = g.node(id);
        let quantized = node.op_type == "QAttention";
        let (Some(x), Some(w)) = (node.input(0), node.input(1)) else { return Err(self.node_err(id, "needs an input and weights")) };
        let bias = node.input(2);
        let (mask, past, attention_bias) = if quantized { (node.input(5), node.input(8), None) } else { (node.input(3), node.input(4), node.input(5)) };
        if past.is_some() || node.output(1).is_some() || (!quantized && node.input(6).is_some()) {
            return Err(self.node_err(id, "past/present key-value state is not supported"));
        }
        if node.attr_int("do_rotary").unwrap_or(0) != 0 {
            return Err(self.node_err(id, "rotary embeddings (do_rotary) are not supported"));
        }
        let Some(heads) = node.attr_int("num_heads").filter(|&h| h > 0) else { return Err(self.node_err(id, "num_heads is missing")) };
        let total =
            g.constant(w).map(|t| t.dims().iter().map(|&d| d as i64).collect::<Vec<i64>>()).or_else(|| g.value(w).shape().and_then(|s| s.as_known())).and_then(|d| (d.len() == 2).then_some(d[1]));
        let sizes = match (node.attr_ints("qkv_hidden_sizes"), total) {
            (Some(s), _) if s.len() == 3 => [s[0], s[1], s[2]],
            (_, Some(t)) if t % 3 == 0 => [t / 3; 3],
            _ => return Err(self.node_err(id, "the Q/K/V hidden sizes are unknown (no qkv_hidden_sizes and weights of unknown shape)")),
        };
        if sizes.iter().any(|s| s % heads != 0) || sizes[0] != sizes[1] {
            return Err(self.node_err(id, format!("hidden sizes {sizes:?} do not split into {heads} heads")));
        }
        let mask_rank = match mask {
            Some(m) => match self.value_rank(m) {
                Some(r @ 1..=3) => Some(r),
                Some(r) => return Err(self.node_err(id, format!("a {r}-D mask_index is not supported"))),
                None => return Err(self.node_err(id, "the rank of mask_index is unknown")),
            },
            None => None,
        };
        let weight_scale_len = if quantized { node.input(4).and_then(|s| g.constant(s)).map(|t| t.len()) } else { None };
        if quantized && [3, 4].iter().any(|&i| node.input(i).is_none()) {
            return Err(self.node_err(id, "QAttention needs input_scale and weight_scale"));
        }
        let head_size = sizes[0] / heads;
        let scale = node.attr_float("scale").filter(|&s| s != 0.0).unwrap_or(1.0 / (head_size as f32).sqrt());
        let filter = node.attr_float("mask_filter_value").unwrap_or(DEFAULT_MASK_FILTER);
        let unidirectional = node.attr_int("unidirectional").unwrap_or(0) != 0;
        let (mut b, node) = self.builder_at(id)?;
        let out = node.output(0).expect("builder_at checked the output");
        let (x, w) = if quantized {
            // The input's scale comes from DynamicQuantizeLinear: tract's DequantizeLinear
            // wants a constant one, so this one is written out.
            let to_f32 = || vec![Attribute::new("to", AttrValue::Int(compactor_ir::DataType::Float.code() as i64))];
            let mut codes = b.op("Cast", &[x], to_f32());
            if let Some(zero) = node.input(6) {
                let zero = b.op("Cast", &[zero], to_f32());
                codes = b.op("Sub", &[codes, zero], vec![]);
            }
            let input_f = b.op("Mul", &[codes, node.input(3).expect("checked above")], vec![]);
            let weight_q: Vec<ValueId> = [Some(w), node.input(4), node.input(7)].into_iter().flatten().collect();
            let per_column = weight_scale_len.is_none_or(|n| n > 1);
            let axis = if per_column { vec![Attribute::new("axis", AttrValue::Int(1))] } else { vec![] };
            (input_f, b.op("DequantizeLinear", &weight_q, axis))
        } else {
            (x, w)
        };
        let mut qkv = b.op("MatMul", &[x, w], vec![]);
        if let Some(bias) = bias {
            qkv = b.op("Add", &[qkv, bias], vec![]);
        }
        let perm = |p: &[i64]| vec![Attribute::new("perm", AttrValue::Ints(p.to_vec()))];
        let last_axis = b.constant_i64("last_axis", &[1], &[-1]);
        let split = |b: &mut super::Builder, from: i64, size: i64, order: &[i64]| {
            let (start, end) = (b.constant_i64("start", &[1], &[from]), b.constant_i64("end", &[1], &[from + size]));
            let part = b.op("Slice", &[qkv, start, end, last_axis], vec![]);
            let shape = b.constant_i64("heads", &[4], &[0, 0, heads, size / heads]);
            let split = b.op("Reshape", &[part, shape], vec![]);
            b.op("Transpose", &[split], perm(order))
        };
        let q = split(&mut b, 0, sizes[0], &[0, 2, 1, 3]);
        let k_t = split(&mut b, sizes[0], sizes[1], &[0, 2, 3, 1]);
        let v = split(&mut b, sizes[0] + sizes[1], sizes[2], &[0, 2, 1, 3]);
        let scores = b.op("MatMul", &[q, k_t], vec![]);
        let scale_v = b.constant_f32(scale);
        let mut scores = b.op("Mul", &[scores, scale_v], vec![]);
        let (zero_f, filter_v) = (b.constant_f32(0.0), b.constant_f32(filter));
        let to_i64 = || vec![Attribute::new("to", AttrValue::Int(compactor_ir::DataType::Int64.code() as i64))];
        if let (Some(mask), Some(rank)) = (mask, mask_rank) {
            let wide = b.op("Cast", &[mask], to_i64());
            let additive = if rank == 1 {
                // Keys at positions >= the row's length are padding.
                let (zero, one) = (b.constant_i64("start", &[], &[0]), b.constant_i64("step", &[], &[1]));
                let kv_len = opset.dim(&mut b, x, 1);
                let keys = b.op("Range", &[zero, kv_len, one], vec![]);
                let lengths = opset.unsqueeze(&mut b, wide, &[1]);
                let valid = b.op("Less", &[keys, lengths], vec![]);
                let per_row = b.op("Where", &[valid, zero_f, filter_v], vec![]);
                opset.unsqueeze(&mut b, per_row, &[1, 2])
            } else {
                let zero = b.constant_i64("zero", &[], &[0]);
                let kept = b.op("Greater", &[wide, zero], vec![]);
                let per_key = b.op("Where", &[kept, zero_f, filter_v], vec![]);
                opset.unsqueeze(&mut b, per_key, if rank == 2 { &[1, 2] } else { &[1] })
            };
            scores = b.op("Add", &[scores, additive], vec![]);
        }
        if unidirectional {
            let (zero, one) = (b.constant_i64("start", &[], &[0]), b.constant_i64("step", &[], &[1]));
            let len = opset.dim(&mut b, x, 1);
            let keys = b.op("Range", &[zero, len, one], vec![]);
            let queries = opset.unsqueeze(&mut b, keys, &[1]);
            let future = b.op("Greater", &[keys, queries], vec![]);
            let causal = b.op("Where", &[future, filter_v, zero_f], vec![]);
            scores = b.op("Add", &[scores, causal], vec![]);
        }
        if let Some(extra) = attention_bias {
            scores = b.op("Add", &[scores, extra], vec![]);
        }
        let probs = b.op("Softmax", &[scores], vec![Attribute::new("axis", AttrValue::Int(3))]);
        let context = b.op("MatMul", &[probs, v], vec![]);
        let context = b.op("Transpose", &[context], perm(&[0, 2, 1, 3]));
        let merged = b.constant_i64("merge_heads", &[3], &[0, 0, sizes[2]]);
        b.op_into("Reshape", &[context, merged], vec![], out);
        Ok(true)
    }
}
