//! ToMe (token merging) as ONNX ops: in every block from the first merging one on, after the
//! attention residual and before the FFN, bipartite soft matching merges `r` tokens into their
//! most similar partner.
//!
//! The similarity is the cosine of the block's keys averaged over heads. Tokens alternate
//! between two sets (even positions A, odd B); each A token's best B partner is found, and the
//! `r` A tokens with the most similar partners are averaged into them, weighted by how many
//! original tokens each holds (its size). Protected tokens neither merge nor absorb, and real
//! tokens only merge with real ones (padding with padding). The kept A tokens stay in order and
//! come first, then the B tokens. Later attention adds log(size) to its logits (proportional
//! attention), so a merged token weighs as the tokens it holds. Each merge also records, for
//! every original position, which token now holds it (to spread outputs back: unmerge) and, for
//! every token, a representative original position (masks and rotary tables are gathered
//! there).

use super::emit::Emitter;
use compactor_ir::{AttrValue, DataType, PValue, Tensor, ValueId};

/// Scores of forbidden merges (finite, as in the selection).
const NEVER: f32 = -3.0e38;

/// What a merge carries from one block to the next, all per batch row.
#[derive(Clone, Copy)]
pub(crate) struct MergeState {
    /// `[B, n]` f32: original tokens each token holds.
    pub size: PValue,
    /// `[B, n]` bool: a real (not padding) token.
    pub valid: PValue,
    /// `[B, n]` bool: never merged.
    pub protected: PValue,
    /// `[B, n]` int64: an original position the token stands at.
    pub representative: PValue,
    /// `[B, S]` int64: the token holding each original position.
    pub holder: PValue,
}

/// The state before the first merge: every token itself.
pub(crate) fn initial_state(e: &mut Emitter<'_>, hidden: PValue, mask: Option<ValueId>, protect_first: usize, protect_last: usize) -> MergeState {
    let (valid, valid_f) = super::real_tokens(e, hidden, mask);
    let (protected, _, _) = super::protected_ends(e, valid, valid_f, protect_first, protect_last);
    let batch_seq = e.dims(hidden, 0, 2);
    let ones = e.op("ConstantOfShape", &[batch_seq], &[("value", AttrValue::Tensor(Tensor::from_f32(&[1], &[1.0]).expect("one")))]);
    let seq = e.dims(hidden, 1, 2);
    let s = e.squeeze(seq, &[0]);
    let (zero, one) = (e.i64_scalar(0), e.i64_scalar(1));
    let positions = e.op("Range", &[zero, s, one], &[]);
    let positions = e.unsqueeze(positions, &[0]);
    let shape = e.op("Shape", &[valid], &[]);
    let positions = e.op("Expand", &[positions, shape], &[]);
    MergeState { size: ones, valid, protected, representative: positions, holder: positions }
}

/// Rows of `x` (`[B, n, ..]`, rank `rank`) at `index` (`[B, k]`) along axis 1.
fn rows(e: &mut Emitter<'_>, x: PValue, rank: usize, index: PValue) -> PValue {
    super::gather_tokens(e, x, rank, false, &[1], index)
}

fn every_other(e: &mut Emitter<'_>, x: PValue, start: i64) -> PValue {
    let (s, end, a, step) = (e.i64s(&[start]), e.i64s(&[i64::MAX]), e.i64s(&[1]), e.i64s(&[2]));
    e.op("Slice", &[x, s, end, a, step], &[])
}

/// One merge of up to `r` tokens of `x` (`[B, n, C]`) by the similarity of `keys`
/// (`[B, n, heads·d]`). Returns the merged tokens and the new state.
pub(crate) fn merge(e: &mut Emitter<'_>, x: PValue, keys: PValue, heads: usize, r: usize, state: &MergeState) -> (PValue, MergeState) {
    let metric = if heads > 1 {
        let split = e.i64s(&[0, 0, heads as i64, -1]);
        let split = e.op("Reshape", &[keys, split], &[]);
        e.reduce("ReduceMean", split, &[2], false)
    } else {
        keys
    };
    let norm = e.reduce("ReduceL2", metric, &[-1], true);
    let metric = e.op("Div", &[metric, norm], &[]);
    let (ma, mb) = (every_other(e, metric, 0), every_other(e, metric, 1));
    let mb_t = e.op("Transpose", &[mb], &[("perm", AttrValue::Ints(vec![0, 2, 1]))]);
    let scores = e.op("MatMul", &[ma, mb_t], &[]); // [B, nA, nB]
    let (pa, pb) = (every_other(e, state.protected, 0), every_other(e, state.protected, 1));
    let (va, vb) = (every_other(e, state.valid, 0), every_other(e, state.valid, 1));
    let pa_col = e.unsqueeze(pa, &[2]);
    let pb_row = e.unsqueeze(pb, &[1]);
    let va_col = e.unsqueeze(va, &[2]);
    let vb_row = e.unsqueeze(vb, &[1]);
    let protected = e.op("Or", &[pa_col, pb_row], &[]);
    let mismatch = e.op("Xor", &[va_col, vb_row], &[]);
    let forbidden = e.op("Or", &[protected, mismatch], &[]);
    let never = e.f32_scalar(NEVER);
    let scores = e.op("Where", &[forbidden, never, scores], &[]);
    let best = e.reduce("ReduceMax", scores, &[2], false); // [B, nA]
    let partner = e.op("ArgMax", &[scores], &[("axis", AttrValue::Int(2)), ("keepdims", AttrValue::Int(0))]);
    // r' = min(r, the fewest mergeable A tokens of any row): one count for the batch.
    let half_never = e.f32_scalar(NEVER / 2.0);
    let mergeable = e.op("Greater", &[best, half_never], &[]);
    let mergeable = e.cast(mergeable, DataType::Float);
    let mergeable = e.reduce("ReduceSum", mergeable, &[1], false);
    let mergeable = e.reduce("ReduceMin", mergeable, &[0], true); // [1]
    let r_limit = e.f32_scalar(r as f32);
    let merged = e.op("Min", &[mergeable, r_limit], &[]); // [1], f32
    // The A tokens ranked by their best similarity; the first r' merge. (Ranks, not a slice of
    // the order: only TopK may have a count computed from values.)
    let n_a = e.dims(best, 1, 2);
    let (_, order) = e.top_k(best, n_a, 1);
    let (zero, one) = (e.i64_scalar(0), e.i64_scalar(1));
    let na_scalar = e.squeeze(n_a, &[0]);
    let a_index = e.op("Range", &[zero, na_scalar, one], &[]);
    let a_index = e.cast(a_index, DataType::Float);
    let a_index = e.unsqueeze(a_index, &[0]);
    let best_shape = e.op("Shape", &[best], &[]);
    let a_index = e.op("Expand", &[a_index, best_shape], &[]);
    let rank = e.op("ScatterElements", &[a_index, order, a_index], &[("axis", AttrValue::Int(1))]);
    let is_source = e.op("Less", &[rank, merged], &[]); // [B, nA]

    // Each source's row of the assignment [B, nA, nB] holds its partner; summing sources into
    // targets is a product with its transpose.
    let n_b = e.dims(mb, 1, 2);
    let nb_scalar = e.squeeze(n_b, &[0]);
    let b_index = e.op("Range", &[zero, nb_scalar, one], &[]);
    let partner_col = e.unsqueeze(partner, &[2]);
    let to_partner = e.op("Equal", &[partner_col, b_index], &[]);
    let source_col = e.unsqueeze(is_source, &[2]);
    let assign = e.op("And", &[to_partner, source_col], &[]);
    let assign = e.cast(assign, DataType::Float);
    let into = e.op("Transpose", &[assign], &[("perm", AttrValue::Ints(vec![0, 2, 1]))]); // [B, nB, nA]
    let (xa, xb) = (every_other(e, x, 0), every_other(e, x, 1));
    let (sa, sb) = (every_other(e, state.size, 0), every_other(e, state.size, 1));
    let sa_col = e.unsqueeze(sa, &[2]);
    let sb_col = e.unsqueeze(sb, &[2]);
    let xa_weighted = e.op("Mul", &[xa, sa_col], &[]);
    let added = e.op("MatMul", &[into, xa_weighted], &[]);
    let xb_weighted = e.op("Mul", &[xb, sb_col], &[]);
    let xb_sum = e.op("Add", &[xb_weighted, added], &[]);
    let added_size = e.op("MatMul", &[into, sa_col], &[]);
    let sb_new = e.op("Add", &[sb_col, added_size], &[]);
    let xb_new = e.op("Div", &[xb_sum, sb_new], &[]);
    let sb_new = e.squeeze(sb_new, &[2]);

    // Back to the current order: position c is A's c/2 (even c) or B's c/2 (odd c), i.e.
    // index c/2 or nA + c/2 of A-then-B.
    let n = e.dims(x, 1, 2);
    let n_scalar = e.squeeze(n, &[0]);
    let current = e.op("Range", &[zero, n_scalar, one], &[]);
    let two = e.i64_scalar(2);
    let half = e.op("Div", &[current, two], &[]);
    let parity = e.op("Mod", &[current, two], &[]);
    let is_b = e.cast(parity, DataType::Bool);
    let b_half = e.op("Add", &[half, n_a], &[]);
    let lookup = e.op("Where", &[is_b, b_half, half], &[]);
    let lookup = e.unsqueeze(lookup, &[0]);
    let valid_shape = e.op("Shape", &[state.valid], &[]);
    let lookup = e.op("Expand", &[lookup, valid_shape], &[]); // [B, n]
    let interleave = |e: &mut Emitter<'_>, a: PValue, b: PValue, rank: usize| {
        let joined = e.op("Concat", &[a, b], &[("axis", AttrValue::Int(1))]);
        if rank == 2 { e.op("GatherElements", &[joined, lookup], &[("axis", AttrValue::Int(1))]) } else { rows(e, joined, rank, lookup) }
    };
    let x_current = interleave(e, xa, xb_new, 3);
    let size_current = interleave(e, sa, sb_new, 2);
    let survives_a = e.op("Not", &[is_source], &[]);
    let vb = every_other(e, state.valid, 1);
    let vb_shape = e.op("Shape", &[vb], &[]);
    let true_value = Tensor::from_raw(DataType::Bool, &[1], vec![1u8].into()).expect("a bool");
    let all_b = e.op("ConstantOfShape", &[vb_shape], &[("value", AttrValue::Tensor(true_value))]);
    let survives = interleave(e, survives_a, all_b, 2);
    // The survivors in order: the largest of -position among them.
    let current_f = e.cast(current, DataType::Float);
    let negated = e.op("Neg", &[current_f], &[]);
    let key = e.op("Where", &[survives, negated, never], &[]);
    let merged_i = e.cast(merged, DataType::Int64);
    let remaining = e.op("Sub", &[n, merged_i], &[]);
    let (_, kept) = e.top_k(key, remaining, 1); // [B, n - r']
    let x_new = rows(e, x_current, 3, kept);
    let pick = |e: &mut Emitter<'_>, v: PValue| e.op("GatherElements", &[v, kept], &[("axis", AttrValue::Int(1))]);
    let size = pick(e, size_current);
    let valid = pick(e, state.valid);
    let protected = pick(e, state.protected);
    let representative = pick(e, state.representative);

    // Where each current token goes: a survivor to its place among the survivors, a merged A
    // token to its partner's place.
    // (Counted in f32, exact to 2^24 tokens: tract's CumSum takes no shape-typed integers.)
    let survives_f = e.cast(survives, DataType::Float);
    let axis1 = e.i64_scalar(1);
    let places = e.op("CumSum", &[survives_f, axis1], &[]);
    let places = e.cast(places, DataType::Int64);
    let places = e.op("Sub", &[places, one], &[]);
    let (places_a, places_b) = (every_other(e, places, 0), every_other(e, places, 1));
    let partner_place = e.op("GatherElements", &[places_b, partner], &[("axis", AttrValue::Int(1))]);
    let new_a = e.op("Where", &[survives_a, places_a, partner_place], &[]);
    let new_of_current = interleave(e, new_a, places_b, 2);
    let holder = e.op("GatherElements", &[new_of_current, state.holder], &[("axis", AttrValue::Int(1))]);
    (x_new, MergeState { size, valid, protected, representative, holder })
}

/// `log(size)` laid out to add to attention logits `[B, H, n, n]`.
pub(crate) fn log_size(e: &mut Emitter<'_>, size: PValue) -> PValue {
    let log = e.op("Log", &[size], &[]);
    e.unsqueeze(log, &[1, 2])
}
