//! Token pruning around onnxruntime's `com.microsoft.GroupQueryAttention`, which computes
//! attention in one op: its probabilities are not a value of the graph, and it reads the
//! sequence's lengths as inputs rather than from shapes.
//!
//! - Scores: the probabilities the scoring block's op computes inside are recomputed from its
//!   query and key inputs (after their rotary embedding), `softmax(q·kᵀ·scale)` with the op's
//!   masking: in a row of `seqlens_k[b] + 1` tokens (a right-padded prompt), query `i` sees
//!   keys `j <= min(i, seqlens_k[b])`. For FastV only the row's last real query is computed.
//! - Lengths: the later ops' `seqlens_k` becomes each row's kept real tokens minus one and
//!   `total_sequence_length` the kept length.
//!
//! Scoring needs a prompt graph (no past key/value: with a cache the keys are not the block's
//! own), no rotary inside the op, no packed QKV, softcap or local window. Decode graphs reading
//! kept caches (see [`super::cache`]) recompute the later ops' lengths from the attention mask.

use super::emit::Emitter;
use super::{NEVER, Scoring};
use compactor_ir::{AttrValue, DataType, Graph, NodeId, PValue, ValueId};

/// A GroupQueryAttention node's inputs and sizes, as the scoring reads them.
pub(crate) struct FusedAttention {
    query: ValueId,
    key: ValueId,
    seqlens: ValueId,
    heads: i64,
    kv_heads: i64,
    head_size: i64,
    scale: f32,
}

impl FusedAttention {
    /// The node as a scorer, or why it cannot be one.
    pub(crate) fn of(graph: &Graph, node: NodeId) -> Result<FusedAttention, String> {
        let n = graph.node(node);
        if !super::is_group_query_attention(n) {
            return Err(format!("its attention is one fused op ({}); only GroupQueryAttention's probabilities are recomputed", n.op_type));
        }
        let int = |name: &str, default: i64| n.attr_int(name).unwrap_or(default);
        if int("do_rotary", 0) != 0 {
            return Err("GroupQueryAttention applies the rotary embedding itself (do_rotary=1); its rotated queries and keys are not values to score from".into());
        }
        if n.attr_float("softcap").is_some_and(|c| c != 0.0) || int("local_window_size", -1) != -1 {
            return Err("GroupQueryAttention with softcap or a local window is not scored".into());
        }
        let input = |i: usize| n.inputs.get(i).copied().flatten();
        let (Some(query), Some(key), Some(seqlens)) = (input(0), input(1), input(5)) else {
            return Err("GroupQueryAttention with packed QKV (no separate key input) is not scored".into());
        };
        prompt_only(n)?;
        let (heads, kv_heads) = (int("num_heads", 0), int("kv_num_heads", 0));
        let width = graph.value(query).ty.as_ref().and_then(|t| t.shape()).and_then(|s| s.dims.last().cloned()).and_then(|d| d.known());
        let head_size = match width {
            Some(w) if heads > 0 && kv_heads > 0 && heads % kv_heads == 0 && w % heads == 0 => w / heads,
            _ => return Err(format!("GroupQueryAttention's head counts ({heads}, {kv_heads}) and query width ({width:?}) do not fit")),
        };
        let scale = n.attr_float("scale").filter(|&s| s != 0.0).unwrap_or(1.0 / (head_size as f32).sqrt());
        Ok(FusedAttention { query, key, seqlens, heads, kv_heads, head_size, scale })
    }

    /// The op's attention probabilities, averaged over each KV head's query heads:
    /// `[B, kv_heads, Sq, S]`, every query row (`Received`) or each row's last real one
    /// (`LastQuery`, `Sq` = 1). Averaging over those then over the KV heads is the mean over
    /// every head, as the scores take it.
    pub(crate) fn probs(&self, e: &mut Emitter<'_>, scoring: Scoring) -> PValue {
        let (kv, group, d) = (self.kv_heads, self.heads / self.kv_heads, self.head_size);
        let last_real = e.cast(self.seqlens.into(), DataType::Int64);
        let last_real = e.unsqueeze(last_real, &[1]);
        let query = match scoring {
            // Row b's query at position seqlens_k[b]: [B, 1, heads·d].
            Scoring::LastQuery => {
                let rows = e.op("GatherND", &[self.query.into(), last_real], &[("batch_dims", AttrValue::Int(1))]);
                e.unsqueeze(rows, &[1])
            }
            Scoring::Received => self.query.into(),
        };
        let shape = e.i64s(&[0, 0, kv, group, d]);
        let query = e.op("Reshape", &[query, shape], &[]);
        let query = e.op("Transpose", &[query], &[("perm", AttrValue::Ints(vec![0, 2, 3, 1, 4]))]);
        let shape = e.i64s(&[0, 0, kv, d]);
        let key = e.op("Reshape", &[self.key.into(), shape], &[]);
        let key = e.op("Transpose", &[key], &[("perm", AttrValue::Ints(vec![0, 2, 3, 1]))]);
        let key = e.unsqueeze(key, &[2]);
        // [B, kv, group, Sq, S]
        let scores = e.op("MatMul", &[query, key], &[]);
        let scale = e.f32_scalar(self.scale);
        let scores = e.op("Mul", &[scores, scale], &[]);
        let length = e.dims(self.key.into(), 1, 2);
        let length = e.squeeze(length, &[0]);
        let (zero, one) = (e.i64_scalar(0), e.i64_scalar(1));
        let keys = e.op("Range", &[zero, length, one], &[]);
        let keys_row = e.unsqueeze(keys, &[0]);
        // Keys of the row: j <= seqlens_k[b], [B, S].
        let in_row = e.op("LessOrEqual", &[keys_row, last_real], &[]);
        let visible = match scoring {
            Scoring::LastQuery => e.unsqueeze(in_row, &[1, 2, 3]),
            Scoring::Received => {
                // And causal: j <= i, [S, S].
                let queries = e.unsqueeze(keys, &[1]);
                let causal = e.op("LessOrEqual", &[keys_row, queries], &[]);
                let in_row = e.unsqueeze(in_row, &[1]);
                let both = e.op("And", &[causal, in_row], &[]);
                e.unsqueeze(both, &[1, 2])
            }
        };
        let never = e.f32_scalar(NEVER);
        let scores = e.op("Where", &[visible, scores, never], &[]);
        let probs = e.op("Softmax", &[scores], &[("axis", AttrValue::Int(-1))]);
        e.reduce("ReduceMean", probs, &[2], false)
    }
}

/// Refuses a GroupQueryAttention node that reads a past key/value: with a cache its keys are
/// not the block's own tokens, and the kept tokens' lengths would not be its lengths.
pub(crate) fn prompt_only(node: &compactor_ir::Node) -> Result<(), String> {
    if node.input(3).is_some() || node.input(4).is_some() {
        return Err("GroupQueryAttention reads a past key/value: token pruning works on prompt graphs".into());
    }
    Ok(())
}

/// `seqlens_k` and `total_sequence_length` for the kept tokens `[B, k]` (positions in
/// increasing order): each row's kept positions up to its last real one, minus one, and `k`;
/// int32, `total` shaped as the original `total`.
pub(crate) fn kept_lengths(e: &mut Emitter<'_>, graph: &Graph, seqlens: ValueId, total: ValueId, kept: PValue) -> (PValue, PValue) {
    let last_real = e.cast(seqlens.into(), DataType::Int64);
    let last_real = e.unsqueeze(last_real, &[1]);
    let real = e.op("LessOrEqual", &[kept, last_real], &[]);
    int32_lengths(e, graph, real, total, kept)
}

/// `seqlens_k` and `total_sequence_length` for attention over a kept cache: `positions`
/// `[B, k]` are columns of the attention `mask` `[B, T]`; the real ones among them, minus one,
/// and `k`.
pub(crate) fn cached_lengths(e: &mut Emitter<'_>, graph: &Graph, mask: ValueId, total: ValueId, positions: PValue) -> (PValue, PValue) {
    let real = e.op("GatherElements", &[mask.into(), positions], &[("axis", AttrValue::Int(1))]);
    let real = e.cast(real, DataType::Bool);
    int32_lengths(e, graph, real, total, positions)
}

/// The lengths GroupQueryAttention reads for `[B, k]` tokens of which `real` (bool) are real:
/// their count minus one per row, and `k`, shaped as the original `total`.
fn int32_lengths(e: &mut Emitter<'_>, graph: &Graph, real: PValue, total: ValueId, tokens: PValue) -> (PValue, PValue) {
    let real = e.cast(real, DataType::Int32);
    let count = e.reduce("ReduceSum", real, &[1], false);
    let one = e.op("Constant", &[], &[("value", AttrValue::Tensor(compactor_ir::Tensor::from_raw(DataType::Int32, &[], 1i32.to_le_bytes().to_vec().into()).expect("an int32 scalar")))]);
    let new_seqlens = e.op("Sub", &[count, one], &[]);
    let k = e.dims(tokens, 1, 2);
    let k = e.cast(k, DataType::Int32);
    let scalar = graph.value(total).ty.as_ref().and_then(|t| t.shape()).is_some_and(|s| s.rank() == 0);
    let new_total = if scalar { e.squeeze(k, &[0]) } else { k };
    (new_seqlens, new_total)
}
