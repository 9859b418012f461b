//! `com.microsoft.RotaryEmbedding`: rotates the first `rotary_dim` channels of every head by
//! the angles of each token's position, with cos/sin tables `[max_position, rotary_dim / 2]`.
//! The input is `[batch, seq, heads·head_size]` (split by `num_heads`, or by the tables' width
//! when `rotary_embedding_dim` is 0) or `[batch, heads, seq, head_size]`; positions are
//! `[batch, seq]`, or one offset that the sequence counts up from. `interleaved` 0 rotates the
//! two halves of the rotated channels against each other ("rotate_half"), 1 rotates adjacent
//! pairs; channels past `rotary_dim` pass through. `scale` only matters to onnxruntime when it
//! rebuilds the tables, which its CPU kernel does not, so it is ignored here too; packed
//! batching is refused. f32 is left to the runtime's kernel, with the same arithmetic; the
//! expansion serves the other types (and GroupQueryAttention's `do_rotary`).

use super::contrib::Opset;
use super::{Builder, Lowering};
use crate::error::RuntimeError;
use compactor_ir::graph::{AttrValue, Attribute};
use compactor_ir::{DataType, NodeId, ValueId};

/// A rotation: the cos/sin tables, half the rotated width, and the channel pairing.
#[derive(Clone, Copy)]
pub(super) struct Rotation {
    pub cos: ValueId,
    pub sin: ValueId,
    pub half: i64,
    pub interleaved: bool,
}

impl Rotation {
    /// Rotates `x` (channels last, `head_size` of them when known) at `positions` (int64,
    /// `[batch or 1, seq]`); `heads_axis` is where the heads sit in `x` (the tables are
    /// broadcast over it): 2 for `[B, S, N, D]`, 1 for `[B, N, S, D]`.
    pub(super) fn apply(&self, b: &mut Builder, opset: Opset, x: ValueId, positions: ValueId, heads_axis: i64, head_size: Option<i64>) -> ValueId {
        let ints = |b: &mut Builder, v: &[i64]| b.constant_i64("i", &[v.len() as u64], v);
        let last = ints(b, &[-1]);
        let slice = |b: &mut Builder, x: ValueId, from: i64, to: i64| {
            let (start, end) = (ints(b, &[from]), ints(b, &[to]));
            b.op("Slice", &[x, start, end, last], vec![])
        };
        let rotated = 2 * self.half;
        // The tables at each position, [B, S, half], with an axis of 1 for the heads.
        let cos = b.op("Gather", &[self.cos, positions], vec![]);
        let sin = b.op("Gather", &[self.sin, positions], vec![]);
        let (cos, sin) = (opset.unsqueeze(b, cos, &[heads_axis]), opset.unsqueeze(b, sin, &[heads_axis]));
        let partial = head_size != Some(rotated);
        let x_rot = if partial { slice(b, x, 0, rotated) } else { x };
        let out = if self.interleaved {
            // [.., 2·half] -> [.., half, 2]: element 0 of each pair is the "real" part.
            let pairs_shape = ints(b, &[0, 0, 0, self.half, 2]);
            let pairs = b.op("Reshape", &[x_rot, pairs_shape], vec![]);
            let (even, odd) = (slice(b, pairs, 0, 1), slice(b, pairs, 1, 2));
            let (cos, sin) = (opset.unsqueeze(b, cos, &[-1]), opset.unsqueeze(b, sin, &[-1]));
            let (even_cos, odd_sin) = (b.op("Mul", &[even, cos], vec![]), b.op("Mul", &[odd, sin], vec![]));
            let (odd_cos, even_sin) = (b.op("Mul", &[odd, cos], vec![]), b.op("Mul", &[even, sin], vec![]));
            let new_even = b.op("Sub", &[even_cos, odd_sin], vec![]);
            let new_odd = b.op("Add", &[odd_cos, even_sin], vec![]);
            let pairs = b.op("Concat", &[new_even, new_odd], vec![Attribute::new("axis", AttrValue::Int(-1))]);
            let flat_shape = ints(b, &[0, 0, 0, rotated]);
            b.op("Reshape", &[pairs, flat_shape], vec![])
        } else {
            let (first, second) = (slice(b, x_rot, 0, self.half), slice(b, x_rot, self.half, rotated));
            let (first_cos, second_sin) = (b.op("Mul", &[first, cos], vec![]), b.op("Mul", &[second, sin], vec![]));
            let (second_cos, first_sin) = (b.op("Mul", &[second, cos], vec![]), b.op("Mul", &[first, sin], vec![]));
            let new_first = b.op("Sub", &[first_cos, second_sin], vec![]);
            let new_second = b.op("Add", &[second_cos, first_sin], vec![]);
            b.op("Concat", &[new_first, new_second], vec![Attribute::new("axis", AttrValue::Int(-1))])
        };
        if !partial {
            return out;
        }
        let rest = slice(b, x, rotated, i64::MAX);
        b.op("Concat", &[out, rest], vec![Attribute::new("axis", AttrValue::Int(-1))])
    }
}

impl Lowering {
    /// The width of a cos/sin table (its second dimension), when it is a constant or declared.
    pub(super) fn table_half_width(&self, table: ValueId) -> Option<i64> {
        self.known_dim(table, 1)
    }

    pub(super) fn expand_rotary_embedding(&mut self, id: NodeId, opset: Opset) -> Result<bool, RuntimeError> {
        let node = self.graph().node(id);
        let (Some(x), Some(position_ids), Some(cos), Some(sin)) = (node.input(0), node.input(1), node.input(2), node.input(3)) else {
            return Err(self.node_err(id, "RotaryEmbedding needs input, position_ids, cos_cache and sin_cache"));
        };
        if node.attr_int("is_packed_batching").unwrap_or(0) != 0 {
            return Err(self.node_err(id, "packed batching (is_packed_batching) is not supported"));
        }
        let interleaved = node.attr_int("interleaved").unwrap_or(0) != 0;
        let num_heads = node.attr_int("num_heads").unwrap_or(0);
        let rotary_dim = node.attr_int("rotary_embedding_dim").unwrap_or(0);
        let Some(half) = self.table_half_width(cos) else { return Err(self.node_err(id, "the width of cos_cache is unknown (it is neither a constant nor declared)")) };
        if rotary_dim > 0 && num_heads <= 0 {
            return Err(self.node_err(id, "rotary_embedding_dim needs num_heads"));
        }
        // onnxruntime steps through the tables by rotary_dim / 2 per position.
        if rotary_dim > 0 && rotary_dim != 2 * half {
            return Err(
                self.node_err(id, format!("rotary_embedding_dim {rotary_dim} does not match cos_cache's width {half} (tables of head_size / 2 with a partial rotary_embedding_dim are not supported)"))
            );
        }
        let rank = match self.value_rank(x) {
            Some(r @ (3 | 4)) => r,
            Some(r) => return Err(self.node_err(id, format!("the input has rank {r}, not 3 or 4"))),
            None => return Err(self.node_err(id, "the rank of the input is unknown")),
        };
        let position_rank = match self.value_rank(position_ids) {
            Some(r @ 0..=2) => r,
            Some(r) => return Err(self.node_err(id, format!("position_ids has rank {r}, not 0, 1 or 2"))),
            None => return Err(self.node_err(id, "the rank of position_ids is unknown")),
        };
        // f32 is rotated by the runtime's kernel (`kernels/rotary_embedding.rs`) in one pass.
        if self.input_type(id, 0) == Some(DataType::Float) {
            return Ok(false);
        }
        // The head size: the tables' when rotating whole heads, else hidden / num_heads.
        let head_size = if rotary_dim == 0 {
            Some(2 * half)
        } else if rank == 4 {
            self.known_dim(x, 3)
        } else {
            self.known_dim(x, 2).map(|h| h / num_heads)
        };
        let (mut b, node) = self.builder_at(id)?;
        let out = node.output(0).expect("builder_at checked the output");
        let seq_axis = if rank == 3 { 1 } else { 2 };
        let positions = if position_rank == 2 {
            position_ids
        } else {
            // One offset: the positions are offset, offset + 1, ... along the sequence.
            let (zero, one) = (b.constant_i64("start", &[], &[0]), b.constant_i64("step", &[], &[1]));
            let seq = opset.dim(&mut b, x, seq_axis);
            let steps = b.op("Range", &[zero, seq, one], vec![]);
            let row_shape = b.constant_i64("row", &[2], &[1, -1]);
            let steps = b.op("Reshape", &[steps, row_shape], vec![]);
            let offset = b.op("Reshape", &[position_ids, row_shape], vec![]);
            b.op("Add", &[steps, offset], vec![])
        };
        let rotation = Rotation { cos, sin, half, interleaved };
        if rank == 4 {
            let y = rotation.apply(&mut b, opset, x, positions, 1, head_size);
            b.op_into("Identity", &[y], vec![], out);
        } else {
            let split = match rotary_dim {
                0 => b.constant_i64("split_heads", &[4], &[0, 0, -1, 2 * half]),
                _ => b.constant_i64("split_heads", &[4], &[0, 0, num_heads, -1]),
            };
            let heads = b.op("Reshape", &[x, split], vec![]);
            let y = rotation.apply(&mut b, opset, heads, positions, 2, head_size);
            let merge = b.constant_i64("merge_heads", &[3], &[0, 0, -1]);
            b.op_into("Reshape", &[y, merge], vec![], out);
        }
        Ok(true)
    }
}
