//! ONNX `Attention` (opset 23) with `softcap`, a `qk_matmul_output_mode` or the
//! `qk_matmul_output` output, which tract's own Attention refuses, expanded into the ops of its
//! definition.

use super::{Builder, Lowering, label, lbl_name};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute, Node};
use compactor_ir::{DataType, NodeId, Tensor, ValueId};

/// tract's Attention refuses `softcap`, `qk_matmul_output_mode` and the `qk_matmul_output`
/// output; those nodes are expanded (not ones with `nonpad_kv_seqlen`, which the expansion
/// does not cover).
pub(super) fn attention_needs_expansion(node: &Node) -> bool {
    let refused = node.attr_float("softcap").is_some_and(|c| c != 0.0) || node.attr_int("qk_matmul_output_mode").is_some_and(|m| m != 0) || node.output(3).is_some();
    refused && node.input(6).is_none()
}

impl Lowering {
    /// ONNX `Attention` (opset 23) as plain ops, for the variants tract's own refuses (see
    /// [`attention_needs_expansion`]). Follows the operator's definition: heads split from 3-D
    /// inputs, past key/value concatenated, KV heads repeated for grouped queries, both Q and K
    /// scaled by `sqrt(scale)`, softcap, mask (bool or additive, padded with -inf to the KV
    /// length) and causal bias, softmax, and the `qk_matmul_output` of the requested mode.
    pub(super) fn expand_attention(&mut self, id: NodeId) -> Result<(), RuntimeError> {
        let lbl = label(self.graph(), id);
        let node = self.graph().node(id).clone();
        let (Some(q), Some(k), Some(v), Some(out)) = (node.input(0), node.input(1), node.input(2), node.output(0)) else {
            return Err(self.err(lbl, "needs Q, K, V and an output"));
        };
        let Some(rank) = self.value_rank(q) else { return Err(self.err(lbl, "the rank of Q is unknown")) };
        let mask_is_bool = node.input(3).is_some() && self.input_type(id, 3) == Some(DataType::Bool);
        let region = node.region;
        let pos = self.graph().region(region).nodes.iter().position(|&n| n == id).expect("node is in its region");
        let mut b = Builder { lowering: self, region, pos, prefix: format!("{}.expanded", lbl_name(&node, out)) };
        let ints = |b: &mut Builder, name: &str, v: &[i64]| b.constant_i64(name, &[v.len() as u64], v);
        let perm = |p: &[i64]| vec![Attribute::new("perm", AttrValue::Ints(p.to_vec()))];
        let float = |b: &mut Builder, name: &str, value: f32| {
            let c = b.constant(name, Tensor::from_f32(&[], &[value]).expect("a scalar fits"));
            b.op("CastLike", &[c, q], vec![])
        };
        // [B, S, H*D] -> [B, H, S, D]
        let heads = |b: &mut Builder, x: ValueId, count: Option<i64>| -> Result<ValueId, String> {
            if rank == 4 {
                return Ok(x);
            }
            let count = count.ok_or("3-D inputs need q_num_heads and kv_num_heads")?;
            let shape = ints(b, "split_heads", &[0, 0, count, -1]);
            let split = b.op("Reshape", &[x, shape], vec![]);
            Ok(b.op("Transpose", &[split], perm(&[0, 2, 1, 3])))
        };
        let q4 = heads(&mut b, q, node.attr_int("q_num_heads")).map_err(|e| RuntimeError::Lowering { model: String::new(), node: lbl.clone(), reason: e })?;
        let k_new = heads(&mut b, k, node.attr_int("kv_num_heads")).map_err(|e| RuntimeError::Lowering { model: String::new(), node: lbl.clone(), reason: e })?;
        let v_new = heads(&mut b, v, node.attr_int("kv_num_heads")).map_err(|e| RuntimeError::Lowering { model: String::new(), node: lbl.clone(), reason: e })?;
        let concat2 = vec![Attribute::new("axis", AttrValue::Int(2))];
        let present_k = match node.input(4) {
            Some(past) => b.op("Concat", &[past, k_new], concat2.clone()),
            None => k_new,
        };
        let present_v = match node.input(5) {
            Some(past) => b.op("Concat", &[past, v_new], concat2),
            None => v_new,
        };
        if let Some(o) = node.output(1) {
            b.op_into("Identity", &[present_k], vec![], o);
        }
        if let Some(o) = node.output(2) {
            b.op_into("Identity", &[present_v], vec![], o);
        }
        // Scale: both operands by sqrt(scale), scale defaulting to 1/sqrt(head size).
        let root_scale = match node.attr_float("scale") {
            Some(scale) => float(&mut b, "root_scale", scale.sqrt()),
            None => {
                let shape = b.op("Shape", &[q4], vec![]);
                let three = ints(&mut b, "three", &[3]);
                let d = b.op("Gather", &[shape, three], vec![]);
                let d = b.op("CastLike", &[d, q], vec![]);
                let root = b.op("Sqrt", &[d], vec![]);
                let root = b.op("Sqrt", &[root], vec![]);
                b.op("Reciprocal", &[root], vec![])
            }
        };
        // Grouped queries: repeat each KV head q_heads / kv_heads times, interleaved.
        let repeat = |b: &mut Builder, x: ValueId| {
            let (q_shape, x_shape) = (b.op("Shape", &[q4], vec![]), b.op("Shape", &[x], vec![]));
            let (zero, one, two, four) = (ints(b, "i0", &[0]), ints(b, "i1", &[1]), ints(b, "i2", &[2]), ints(b, "i4", &[4]));
            let q_heads = b.op("Slice", &[q_shape, one, two], vec![]);
            let x_heads = b.op("Slice", &[x_shape, one, two], vec![]);
            let reps = b.op("Div", &[q_heads, x_heads], vec![]);
            let lead = b.op("Slice", &[x_shape, zero, two], vec![]);
            let tail = b.op("Slice", &[x_shape, two, four], vec![]);
            let batch = b.op("Slice", &[x_shape, zero, one], vec![]);
            let expanded_shape = b.op("Concat", &[lead, reps, tail], vec![Attribute::new("axis", AttrValue::Int(0))]);
            let unsqueezed = b.op("Unsqueeze", &[x, two], vec![]);
            let expanded = b.op("Expand", &[unsqueezed, expanded_shape], vec![]);
            let final_shape = b.op("Concat", &[batch, q_heads, tail], vec![Attribute::new("axis", AttrValue::Int(0))]);
            b.op("Reshape", &[expanded, final_shape], vec![])
        };
        let k_all = repeat(&mut b, present_k);
        let v_all = repeat(&mut b, present_v);
        let q_scaled = b.op("Mul", &[q4, root_scale], vec![]);
        let k_scaled = b.op("Mul", &[k_all, root_scale], vec![]);
        let k_t = b.op("Transpose", &[k_scaled], perm(&[0, 1, 3, 2]));
        let mut qk = b.op("MatMul", &[q_scaled, k_t], vec![]);
        if let Some(cap) = node.attr_float("softcap").filter(|&c| c > 0.0) {
            let cap = float(&mut b, "softcap", cap);
            let scaled = b.op("Div", &[qk, cap], vec![]);
            let squashed = b.op("Tanh", &[scaled], vec![]);
            qk = b.op("Mul", &[squashed, cap], vec![]);
        }
        // The additive bias: the mask (padded to the KV length with -inf), plus the causal part.
        let qk_shape = b.op("Shape", &[qk], vec![]);
        let (minus_two, minus_one, last) = (ints(&mut b, "m2", &[-2]), ints(&mut b, "m1", &[-1]), ints(&mut b, "last", &[i64::MAX]));
        let q_len = b.op("Slice", &[qk_shape, minus_two, minus_one], vec![]);
        let kv_len = b.op("Slice", &[qk_shape, minus_one, last], vec![]);
        let neg_inf = float(&mut b, "neg_inf", f32::NEG_INFINITY);
        let zero_f = float(&mut b, "zero", 0.0);
        let mut bias = match node.input(3) {
            Some(mask) => {
                let mask_shape = b.op("Shape", &[mask], vec![]);
                let mask_len = b.op("Slice", &[mask_shape, minus_one, last], vec![]);
                let missing = b.op("Sub", &[kv_len, mask_len], vec![]);
                let zero_i = ints(&mut b, "pad_before", &[0]);
                let pads = b.op("Concat", &[zero_i, missing], vec![Attribute::new("axis", AttrValue::Int(0))]);
                let additive = if mask_is_bool {
                    let no = b.constant("false", Tensor::from_raw(DataType::Bool, &[], bytes::Bytes::from_static(&[0])).expect("a scalar fits"));
                    let padded = b.op("Pad", &[mask, pads, no, minus_one], vec![]);
                    b.op("Where", &[padded, zero_f, neg_inf], vec![])
                } else {
                    b.op("Pad", &[mask, pads, neg_inf, minus_one], vec![])
                };
                Some(additive)
            }
            None => None,
        };
        if node.attr_int("is_causal").unwrap_or(0) != 0 {
            let past = match node.input(4) {
                Some(p) => {
                    let shape = b.op("Shape", &[p], vec![]);
                    let (two, three) = (ints(&mut b, "c2", &[2]), ints(&mut b, "c3", &[3]));
                    b.op("Slice", &[shape, two, three], vec![])
                }
                None => ints(&mut b, "no_past", &[0]),
            };
            let (zero_s, one_s) = (b.constant_i64("r0", &[], &[0]), b.constant_i64("r1", &[], &[1]));
            let q_len_s = b.op("Squeeze", &[q_len], vec![]);
            let kv_len_s = b.op("Squeeze", &[kv_len], vec![]);
            let rows = b.op("Range", &[zero_s, q_len_s, one_s], vec![]);
            let cols = b.op("Range", &[zero_s, kv_len_s, one_s], vec![]);
            let axis1 = ints(&mut b, "ax1", &[1]);
            let rows = b.op("Unsqueeze", &[rows, axis1], vec![]);
            let limit = b.op("Add", &[rows, past], vec![]);
            let future = b.op("Greater", &[cols, limit], vec![]);
            let causal = b.op("Where", &[future, neg_inf, zero_f], vec![]);
            bias = Some(match bias {
                Some(m) => b.op("Add", &[m, causal], vec![]),
                None => causal,
            });
        }
        let with_bias = match bias {
            Some(bias) => b.op("Add", &[qk, bias], vec![]),
            None => qk,
        };
        let probs = b.op("Softmax", &[with_bias], vec![Attribute::new("axis", AttrValue::Int(-1))]);
        if let Some(o) = node.output(3) {
            let chosen = match node.attr_int("qk_matmul_output_mode").unwrap_or(0) {
                2 => with_bias,
                3 => probs,
                _ => qk,
            };
            b.op_into("Identity", &[chosen], vec![], o);
        }
        if rank == 4 {
            b.op_into("MatMul", &[probs, v_all], vec![], out);
        } else {
            let y = b.op("MatMul", &[probs, v_all], vec![]);
            let y = b.op("Transpose", &[y], perm(&[0, 2, 1, 3]));
            let merged = ints(&mut b, "merge_heads", &[0, 0, -1]);
            b.op_into("Reshape", &[y, merged], vec![], out);
        }
        self.model.graph.remove_node(id);
        self.report.expanded_functions += 1;
        Ok(())
    }
}
