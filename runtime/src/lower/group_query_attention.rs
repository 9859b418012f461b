//! `com.microsoft.GroupQueryAttention`: causal self attention in which each of `kv_num_heads`
//! key/value heads serves `num_heads / kv_num_heads` query heads, with a KV cache, as
//! onnxruntime's CPU kernel computes it.
//!
//! Query `[B, S, num_heads·D]`, key and value `[B, S, kv_num_heads·D]` (or all three packed in
//! the query), past key/value `[B, kv_num_heads, P, D]`. Row `b` holds `seqlens_k[b] + 1` real
//! tokens in all; its past is `past_b = seqlens_k[b] + 1 - S` of them, or none when `S` equals
//! `total_sequence_length` (the first prompt, whose rows may be right-padded). The present
//! key/value (`P + S` long: the cache is not shared with the past) is the past's first `past_b`
//! tokens, then the new ones, then zeros. Query `s` sees keys `j <= min(past_b + s, seqlens_k[b])`
//! (and `j > past_b + s - local_window_size` with a window), through
//! `softmax(scale·q·kᵀ (softcapped) + attention_bias)`, smooth (a zero logit, or the head's sink,
//! added to the denominator) with `smooth_softmax` or `head_sink`. With `do_rotary` the new
//! queries and keys are first rotated at `past_b + s`, or at `position_ids` (in the first prompt
//! only its first element, counted up along the sequence, as onnxruntime reads it).
//!
//! The runtime runs the common form itself (see `kernels/group_query_attention.rs`); this
//! expansion covers the rest: packed QKV, rotary, attention bias, head sinks, f16.
//!
//! Queries are grouped per KV head (`[B, kv_heads, groups·S, D]`) so each KV head is read by one
//! matmul and never copied per query head. Refused with a message: a quantized KV cache
//! (`k_scale`/`v_scale`) and the `output_qk` output. A shared past/present buffer (past of the
//! maximum length) gives a present of `P + S`, not onnxruntime's `max(P, total)`.

use super::contrib::Opset;
use super::rotary_embedding::Rotation;
use super::{Builder, Lowering};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, Tensor, ValueId};

impl Lowering {
    pub(super) fn expand_group_query_attention(&mut self, id: NodeId, opset: Opset) -> Result<bool, RuntimeError> {
        let node = self.graph().node(id);
        let input = |i: usize| node.input(i);
        let (Some(query), Some(seqlens_k), Some(total)) = (input(0), input(5), input(6)) else {
            return Err(self.node_err(id, "GroupQueryAttention needs query, seqlens_k and total_sequence_length"));
        };
        let (Some(heads), Some(kv_heads)) = (node.attr_int("num_heads").filter(|&h| h > 0), node.attr_int("kv_num_heads").filter(|&h| h > 0)) else {
            return Err(self.node_err(id, "num_heads and kv_num_heads must be positive"));
        };
        if heads % kv_heads != 0 {
            return Err(self.node_err(id, format!("num_heads {heads} is not a multiple of kv_num_heads {kv_heads}")));
        }
        let groups = heads / kv_heads;
        let key_value = match (input(1), input(2)) {
            (Some(k), Some(v)) => Some((k, v)),
            (None, None) => None,
            _ => return Err(self.node_err(id, "key and value must both be given, or both be absent (packed QKV)")),
        };
        let past = match (input(3), input(4)) {
            (Some(k), Some(v)) => Some((k, v)),
            (None, None) => None,
            _ => return Err(self.node_err(id, "past_key and past_value must both be given or both be absent")),
        };
        let quantized = |attr: &str| node.attr_string(attr).is_some_and(|t| t != "NONE");
        if input(12).is_some() || input(13).is_some() || quantized("k_quant_type") || quantized("v_quant_type") {
            return Err(self.node_err(id, "a quantized KV cache (k_scale, v_scale, k_quant_type, v_quant_type) is not supported"));
        }
        if node.output(3).is_some() {
            return Err(self.node_err(id, "the output_qk output is not supported"));
        }
        // The common form (separate f32 query, key and value, no rotary, bias or sinks) is left
        // for the runtime's kernel (`kernels/group_query_attention.rs`), which skips the masked
        // scores this expansion computes.
        let rotary = node.attr_int("do_rotary").unwrap_or(0) == 1;
        let presents_paired = node.output(1).is_some() == node.output(2).is_some();
        if key_value.is_some() && !rotary && (7..14).all(|i| input(i).is_none()) && presents_paired && self.input_type(id, 0) == Some(DataType::Float) {
            return Ok(false);
        }
        // With rotary, the same once q and k are rotated (below).
        let kernel_takes_the_rest = key_value.is_some() && (10..14).all(|i| input(i).is_none()) && presents_paired && self.input_type(id, 0) == Some(DataType::Float);
        let total_sequence_length = total;
        let softcap = node.attr_float("softcap").unwrap_or(0.0);
        let window = node.attr_int("local_window_size").unwrap_or(-1);
        let smooth = node.attr_int("smooth_softmax").unwrap_or(0) == 1;
        let scale = node.attr_float("scale").filter(|&s| s != 0.0);
        let rotation = if rotary {
            let (Some(cos), Some(sin)) = (input(7), input(8)) else { return Err(self.node_err(id, "do_rotary needs cos_cache and sin_cache")) };
            let Some(half) = self.table_half_width(cos) else { return Err(self.node_err(id, "the width of cos_cache is unknown (it is neither a constant nor declared)")) };
            Some(Rotation { cos, sin, half, interleaved: node.attr_int("rotary_interleaved").unwrap_or(0) == 1 })
        } else {
            None
        };
        let (position_ids, attention_bias, head_sink) = (input(9), input(10), input(11));
        // A bias with one head, or one per query head, is laid out like the grouped scores.
        let bias_heads = match attention_bias {
            Some(bias) => match (self.value_rank(bias), self.known_dim(bias, 1)) {
                (Some(4), Some(h)) if h == 1 || h == heads => Some(h),
                (Some(4), Some(h)) => return Err(self.node_err(id, format!("attention_bias has {h} heads, not 1 or {heads}"))),
                _ => return Err(self.node_err(id, "attention_bias needs a known rank of 4 and a known head dimension")),
            },
            None => None,
        };
        let head_size = match key_value {
            Some(_) => self.known_dim(query, -1).map(|h| h / heads),
            None => self.known_dim(query, -1).map(|h| h / (heads + 2 * kv_heads)),
        }
        .or_else(|| past.and_then(|(k, _)| self.known_dim(k, 3)));
        let dtype = self.input_type(id, 0).unwrap_or(DataType::Float);

        let (mut b, node) = self.builder_at(id)?;
        let ints = |b: &mut Builder, v: &[i64]| b.constant_i64("i", &[v.len() as u64], v);
        let scalar = |b: &mut Builder, v: i64| b.constant_i64("s", &[], &[v]);
        let float = |b: &mut Builder, v: f32| {
            let c = b.constant_f32(v);
            if dtype == DataType::Float { c } else { b.cast(c, dtype) }
        };
        let perm = |p: &[i64]| vec![Attribute::new("perm", AttrValue::Ints(p.to_vec()))];
        let axis = |a: i64| vec![Attribute::new("axis", AttrValue::Int(a))];
        let to_i64 = |b: &mut Builder, v: ValueId| b.cast(v, DataType::Int64);

        // The new tokens' heads, [B, S, N, D].
        let (q4, k4, v4) = match key_value {
            Some((key, value)) => {
                let (q_shape, kv_shape) = (ints(&mut b, &[0, 0, heads, -1]), ints(&mut b, &[0, 0, kv_heads, -1]));
                (b.op("Reshape", &[query, q_shape], vec![]), b.op("Reshape", &[key, kv_shape], vec![]), b.op("Reshape", &[value, kv_shape], vec![]))
            }
            None => {
                let shape = ints(&mut b, &[0, 0, heads + 2 * kv_heads, -1]);
                let all = b.op("Reshape", &[query, shape], vec![]);
                let heads_axis = ints(&mut b, &[2]);
                let mut part = |from: i64, to: i64| {
                    let (start, end) = (ints(&mut b, &[from]), ints(&mut b, &[to]));
                    b.op("Slice", &[all, start, end, heads_axis], vec![])
                };
                (part(0, heads), part(heads, heads + kv_heads), part(heads + kv_heads, heads + 2 * kv_heads))
            }
        };

        // Lengths: each row's past (past_b) and the positions of its new tokens (past_b + s).
        let seqlens = to_i64(&mut b, seqlens_k);
        let total = to_i64(&mut b, total);
        let one_shape = ints(&mut b, &[1]);
        let total = b.op("Reshape", &[total, one_shape], vec![]);
        let seq = opset.dim(&mut b, query, 1);
        let (zero, one) = (scalar(&mut b, 0), scalar(&mut b, 1));
        let first_prompt = b.op("Equal", &[seq, total], vec![]);
        let ends = b.op("Add", &[seqlens, one], vec![]);
        let starts = b.op("Sub", &[ends, seq], vec![]);
        let past_len = b.op("Where", &[first_prompt, zero, starts], vec![]);
        let past_col = opset.unsqueeze(&mut b, past_len, &[1]);
        let steps = b.op("Range", &[zero, seq, one], vec![]);
        let positions = b.op("Add", &[past_col, steps], vec![]);

        let (q4, k4) = match rotation {
            Some(rotation) => {
                // Given positions count, in the first prompt, up from the first one only.
                let at = match position_ids {
                    Some(ids) => {
                        let (flat, corner) = (ints(&mut b, &[-1]), ints(&mut b, &[1, 1]));
                        let flat = b.op("Reshape", &[ids, flat], vec![]);
                        let (start, end) = (ints(&mut b, &[0]), ints(&mut b, &[1]));
                        let first = b.op("Slice", &[flat, start, end], vec![]);
                        let first = b.op("Reshape", &[first, corner], vec![]);
                        let counted = b.op("Add", &[first, steps], vec![]);
                        b.op("Where", &[first_prompt, counted, ids], vec![])
                    }
                    None => positions,
                };
                (rotation.apply(&mut b, opset, q4, at, 2, head_size), rotation.apply(&mut b, opset, k4, at, 2, head_size))
            }
            None => (q4, k4),
        };
        // Rotated, the common form again: the runtime's kernel takes it from here.
        if rotary && kernel_takes_the_rest {
            let flat = ints(&mut b, &[0, 0, -1]);
            let (q, k) = (b.op("Reshape", &[q4, flat], vec![]), b.op("Reshape", &[k4, flat], vec![]));
            let inputs = [Some(q), Some(k), key_value.map(|kv| kv.1), past.map(|p| p.0), past.map(|p| p.1), Some(seqlens_k), Some(total_sequence_length)];
            let attributes = node.attributes.iter().filter(|a| a.name != "do_rotary" && a.name != "rotary_interleaved").cloned().collect();
            let outputs: Vec<Option<ValueId>> = (0..3).map(|i| node.output(i)).collect();
            b.node_into(Some(super::contrib::MICROSOFT), "GroupQueryAttention", &inputs, attributes, &outputs);
            return Ok(true);
        }
        let scale = match (scale, head_size) {
            (Some(s), _) => float(&mut b, s),
            (None, Some(d)) => float(&mut b, 1.0 / (d as f32).sqrt()),
            (None, None) => {
                let d = opset.dim(&mut b, q4, 3);
                let d = b.cast(d, DataType::Float);
                let root = b.op("Sqrt", &[d], vec![]);
                let inverse = b.op("Reciprocal", &[root], vec![]);
                if dtype == DataType::Float { inverse } else { b.cast(inverse, dtype) }
            }
        };
        let q4 = b.op("Mul", &[q4, scale], vec![]);
        let q_heads = b.op("Transpose", &[q4], perm(&[0, 2, 1, 3]));
        let k_new = b.op("Transpose", &[k4], perm(&[0, 2, 1, 3]));
        let v_new = b.op("Transpose", &[v4], perm(&[0, 2, 1, 3]));

        // The present: key j of row b is past j (j < past_b), new token j - past_b, or zero.
        // Gathered from [past, new, one zero token] along the sequence, flattened so that one
        // Gather copies whole tokens (tract's GatherND goes element by element).
        let new_shape = b.op("Shape", &[k_new], vec![]);
        let (i0, i1, i2, i3, i4) = (ints(&mut b, &[0]), ints(&mut b, &[1]), ints(&mut b, &[2]), ints(&mut b, &[3]), ints(&mut b, &[4]));
        let lead = b.op("Slice", &[new_shape, i0, i2], vec![]);
        let tail = b.op("Slice", &[new_shape, i3, i4], vec![]);
        let zero_shape = b.op("Concat", &[lead, one_shape, tail], axis(0));
        let zero_value = Tensor::from_raw(dtype, &[1], bytes::Bytes::from(vec![0u8; dtype.storage_bytes(1).unwrap_or(4) as usize])).expect("one zero");
        let zero_token = b.op("ConstantOfShape", &[zero_shape], vec![Attribute::new("value", AttrValue::Tensor(zero_value))]);
        let past_size = match past {
            Some((past_k, _)) => opset.dim(&mut b, past_k, 2),
            None => zero,
        };
        let present_len = b.op("Add", &[past_size, seq], vec![]);
        let keys = b.op("Range", &[zero, present_len, one], vec![]);
        let relative = b.op("Sub", &[keys, past_col], vec![]);
        let in_new = b.op("Less", &[relative, seq], vec![]);
        let from_new = b.op("Add", &[relative, past_size], vec![]);
        let new_or_zero = b.op("Where", &[in_new, from_new, present_len], vec![]);
        let in_past = b.op("Less", &[keys, past_col], vec![]);
        let index = b.op("Where", &[in_past, keys, new_or_zero], vec![]);
        // Token t of head h of row b is row (b·kv_heads + h)·(T + 1) + t of the flattened cache.
        // T + 1 is read off the keys, not the shapes: tract fails to fold a product with a
        // symbolic length.
        let last_key = opset.reduce(&mut b, "ReduceMax", keys, &[0], false);
        let two = scalar(&mut b, 2);
        let joined_len = b.op("Add", &[last_key, two], vec![]);
        let batch = b.op("Slice", &[new_shape, i0, i1], vec![]);
        let kv_heads_v = ints(&mut b, &[kv_heads]);
        let head_rows = b.op("Mul", &[batch, kv_heads_v], vec![]);
        let head_rows = b.op("Squeeze", &[head_rows], vec![]);
        let head_index = b.op("Range", &[zero, head_rows, one], vec![]);
        let per_row = ints(&mut b, &[-1, kv_heads, 1]);
        let head_index = b.op("Reshape", &[head_index, per_row], vec![]);
        let head_start = b.op("Mul", &[head_index, joined_len], vec![]);
        let index = opset.unsqueeze(&mut b, index, &[1]);
        let index = b.op("Add", &[head_start, index], vec![]);
        let minus_one = ints(&mut b, &[-1]);
        let token_rows = b.op("Concat", &[minus_one, tail], axis(0));
        let present = |b: &mut Builder, past: Option<ValueId>, new: ValueId| {
            let parts: Vec<ValueId> = past.into_iter().chain([new, zero_token]).collect();
            let joined = b.op("Concat", &parts, axis(2));
            let tokens = b.op("Reshape", &[joined, token_rows], vec![]);
            b.op("Gather", &[tokens, index], vec![])
        };
        let present_k = present(&mut b, past.map(|p| p.0), k_new);
        let present_v = present(&mut b, past.map(|p| p.1), v_new);
        for (i, v) in [(1, present_k), (2, present_v)] {
            if let Some(o) = node.output(i) {
                b.op_into("Identity", &[v], vec![], o);
            }
        }

        // Scores per KV head: its query heads' rows stacked, [B, kv_heads, groups·S, T].
        let grouped_shape = ints(&mut b, &[0, kv_heads, -1, 0]);
        let q_grouped = b.op("Reshape", &[q_heads, grouped_shape], vec![]);
        let k_t = b.op("Transpose", &[present_k], perm(&[0, 1, 3, 2]));
        let mut scores = b.op("MatMul", &[q_grouped, k_t], vec![]);
        if softcap > 0.0 {
            let cap = float(&mut b, softcap);
            let scaled = b.op("Div", &[scores, cap], vec![]);
            let squashed = b.op("Tanh", &[scaled], vec![]);
            scores = b.op("Mul", &[squashed, cap], vec![]);
        }
        if let (Some(bias), Some(bias_heads)) = (attention_bias, bias_heads) {
            let bias = if bias_heads == 1 {
                let repeats = ints(&mut b, &[1, 1, groups, 1]);
                b.op("Tile", &[bias, repeats], vec![])
            } else {
                b.op("Reshape", &[bias, grouped_shape], vec![])
            };
            scores = b.op("Add", &[scores, bias], vec![]);
        }
        // Which keys each row sees: up to its position, never past the row's own length.
        let row_tile = ints(&mut b, &[1, groups]);
        let per_row = |b: &mut Builder, v: ValueId| {
            let tiled = b.op("Tile", &[v, row_tile], vec![]);
            opset.unsqueeze(b, tiled, &[1, 3])
        };
        let last_key = opset.unsqueeze(&mut b, seqlens, &[1]);
        let upper = b.op("Min", &[positions, last_key], vec![]);
        let upper = per_row(&mut b, upper);
        let mut visible = b.op("LessOrEqual", &[keys, upper], vec![]);
        if window >= 0 {
            let reach = scalar(&mut b, window - 1);
            let lower = b.op("Sub", &[positions, reach], vec![]);
            let lower = per_row(&mut b, lower);
            let recent = b.op("GreaterOrEqual", &[keys, lower], vec![]);
            visible = b.op("And", &[visible, recent], vec![]);
        }
        // The lowest finite value rather than -inf, so no softmax kernel meets inf - inf.
        let hidden = float(&mut b, if dtype == DataType::Float16 { -65504.0 } else { f32::MIN });
        let masked = b.op("Where", &[visible, scores, hidden], vec![]);
        let probs = if smooth || head_sink.is_some() {
            // softmax with one more logit, 0 or the head's sink, in the denominator only.
            let sink = match head_sink {
                Some(sink) => {
                    let per_group = ints(&mut b, &[kv_heads, groups, 1]);
                    let sink = b.op("Reshape", &[sink, per_group], vec![]);
                    let fixed = ints(&mut b, &[kv_heads, groups]);
                    let seq_1d = b.op("Reshape", &[seq, one_shape], vec![]);
                    let shape = b.op("Concat", &[fixed, seq_1d], axis(0));
                    let sink = b.op("Expand", &[sink, shape], vec![]);
                    let rows = ints(&mut b, &[kv_heads, -1, 1]);
                    b.op("Reshape", &[sink, rows], vec![])
                }
                None => float(&mut b, 0.0),
            };
            let row_max = opset.reduce(&mut b, "ReduceMax", masked, &[-1], true);
            let top = b.op("Max", &[row_max, sink], vec![]);
            let shifted = b.op("Sub", &[masked, top], vec![]);
            let exp = b.op("Exp", &[shifted], vec![]);
            let sum = opset.reduce(&mut b, "ReduceSum", exp, &[-1], true);
            let sink_shifted = b.op("Sub", &[sink, top], vec![]);
            let sink_exp = b.op("Exp", &[sink_shifted], vec![]);
            let denominator = b.op("Add", &[sum, sink_exp], vec![]);
            b.op("Div", &[exp, denominator], vec![])
        } else {
            b.op("Softmax", &[masked], axis(-1))
        };
        let context = b.op("MatMul", &[probs, present_v], vec![]);
        let heads_shape = ints(&mut b, &[0, heads, -1, 0]);
        let context = b.op("Reshape", &[context, heads_shape], vec![]);
        let context = b.op("Transpose", &[context], perm(&[0, 2, 1, 3]));
        let merged = ints(&mut b, &[0, 0, -1]);
        b.op_into("Reshape", &[context, merged], vec![], node.output(0).expect("builder_at checked the output"));
        Ok(true)
    }
}
