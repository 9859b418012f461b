//! `com.microsoft.GroupQueryAttention` as one kernel: causal attention in which each KV head
//! serves a group of query heads, with an optional KV cache, in f32. Same semantics as the
//! expansion in `lower/group_query_attention.rs` (which the lowering keeps for what this
//! kernel does not take: packed QKV, rotary, attention bias, head sinks, other types).
//!
//! Why: the expansion computes every score (the masked upper triangle included), then masks
//! and normalises in separate passes. Here each block of query rows meets only the keys it can
//! see, scores and context are `gemm` products on the present KV read in place (each KV head
//! shared by its query heads, never copied per head), and the softmax is one pass per row.
//! Blocks of query rows of each KV head are spread over the session's thread pool; a block's
//! result does not depend on the thread that runs it.
//!
//! Row `b` holds `seqlens_k[b] + 1` tokens in all; its past is `past_b = seqlens_k[b] + 1 - S`
//! of them, or none when `S` equals `total_sequence_length` (the first prompt, maybe right
//! padded). The present key/value (`P + S` long) is the past's first `past_b` tokens, then the
//! new ones, then zeros. Query `s` sees keys `j <= min(past_b + s, seqlens_k[b])` (and
//! `j > past_b + s - local_window_size` with a window).

use super::SendPtr;
use std::ops::Range;
use tract_onnx::model::{ParsingContext, optional_inputs, optional_outputs};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// Query positions per task: enough rows for `gemm` to run at speed, blocks small enough that
/// the causal triangle is mostly skipped and the tasks balance over threads.
const QUERY_BLOCK: usize = 64;

pub fn build_group_query_attention(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let heads: i64 = node.get_attr("num_heads")?;
    let kv_heads: i64 = node.get_attr("kv_num_heads")?;
    ensure!(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, "GroupQueryAttention: num_heads ({heads}) must be a positive multiple of kv_num_heads ({kv_heads})");
    ensure!(node.get_attr_opt::<i64>("do_rotary")?.unwrap_or(0) == 0, "GroupQueryAttention: do_rotary is expanded by the lowering, not run natively");
    let inputs: Vec<Option<usize>> = optional_inputs(node).take(node.input.len().max(7)).collect();
    ensure!(
        inputs.len() >= 7 && inputs[0].is_some() && inputs[1].is_some() && inputs[2].is_some() && inputs[5].is_some() && inputs[6].is_some(),
        "GroupQueryAttention: query, key, value, seqlens_k and total_sequence_length are needed"
    );
    ensure!(inputs[3].is_some() == inputs[4].is_some(), "GroupQueryAttention: past_key and past_value go together");
    ensure!(inputs[7..].iter().all(Option::is_none), "GroupQueryAttention: cos/sin caches, position_ids, attention_bias, head_sink and KV scales are expanded by the lowering, not run natively");
    let outputs = optional_outputs(node).take(3).filter(Option::is_some).count();
    ensure!(outputs != 2 && optional_outputs(node).next().flatten().is_some(), "GroupQueryAttention: present_key and present_value go together, after the output");
    let op = GroupQueryAttention {
        heads: heads as usize,
        kv_heads: kv_heads as usize,
        scale: node.get_attr_opt::<f32>("scale")?.filter(|&s| s != 0.0).map(f32::to_bits),
        softcap: node.get_attr_opt::<f32>("softcap")?.unwrap_or(0.0).to_bits(),
        window: node.get_attr_opt::<i64>("local_window_size")?.unwrap_or(-1),
        smooth: node.get_attr_opt::<i64>("smooth_softmax")?.unwrap_or(0) == 1,
        past: inputs[3].is_some(),
        outputs,
    };
    Ok((expand(op), vec![]))
}

/// The op; floats kept as bits so it can be `Eq` and `Hash`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GroupQueryAttention {
    heads: usize,
    kv_heads: usize,
    scale: Option<u32>,
    /// 0 for none.
    softcap: u32,
    /// Negative for none.
    window: i64,
    smooth: bool,
    past: bool,
    /// 1 (the output alone) or 3 (with the present key and value).
    outputs: usize,
}

impl Expansion for GroupQueryAttention {
    fn name(&self) -> StaticName {
        "GroupQueryAttention".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.outputs)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, if self.past { 7 } else { 5 })?;
        check_output_arity(outputs, self.outputs)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].rank, 3)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        if self.outputs == 3 {
            let heads = self.heads as u64;
            for present in &outputs[1..] {
                s.equals(&present.datum_type, f32::datum_type())?;
                s.equals(&present.rank, 4)?;
                s.equals(&present.shape[0], &inputs[0].shape[0])?;
                s.equals(&present.shape[1], self.kv_heads.to_dim())?;
                s.given(&inputs[0].shape[2], move |s, hidden| s.equals(&present.shape[3], hidden / heads))?;
            }
            if self.past {
                s.given_2(&inputs[0].shape[1], &inputs[3].shape[2], move |s, seq, past| {
                    s.equals(&outputs[1].shape[2], seq.clone() + past.clone())?;
                    s.equals(&outputs[2].shape[2], seq + past)
                })?;
            } else {
                s.equals(&outputs[1].shape[2], &inputs[0].shape[1])?;
                s.equals(&outputs[2].shape[2], &inputs[0].shape[1])?;
            }
        }
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for GroupQueryAttention {
    fn name(&self) -> StaticName {
        "GroupQueryAttention".into()
    }
    op_as_typed_op!();
}

impl TypedOp for GroupQueryAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let q = &inputs[0].shape;
        let mut facts = tvec!(f32::fact(q.iter().cloned().collect::<TVec<_>>()));
        if self.outputs == 3 {
            let total = if self.past { q[1].clone() + inputs[3].shape[2].clone() } else { q[1].clone() };
            let present = f32::fact([q[0].clone(), self.kv_heads.to_dim(), total, q[2].clone() / self.heads as u64]);
            facts.push(present.clone());
            facts.push(present);
        }
        Ok(facts)
    }
    as_op!();
}

/// Sizes of one evaluation.
#[derive(Debug, Clone, Copy)]
struct Dims {
    batch: usize,
    seq: usize,
    heads: usize,
    kv_heads: usize,
    head_size: usize,
    past: usize,
}

impl Dims {
    fn groups(&self) -> usize {
        self.heads / self.kv_heads
    }
    fn total(&self) -> usize {
        self.past + self.seq
    }
}

impl EvalOp for GroupQueryAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        let (lengths, total_input) = if self.past { (&inputs[5], &inputs[6]) } else { (&inputs[3], &inputs[4]) };
        ensure!(q.rank() == 3 && k.rank() == 3 && v.rank() == 3, "GroupQueryAttention: query, key and value must be rank 3");
        let (batch, seq) = (q.shape()[0], q.shape()[1]);
        ensure!(q.shape()[2] % self.heads == 0, "GroupQueryAttention: query width {} does not split into {} heads", q.shape()[2], self.heads);
        let head_size = q.shape()[2] / self.heads;
        let kv_shape = [batch, seq, self.kv_heads * head_size];
        ensure!(k.shape() == kv_shape && v.shape() == kv_shape, "GroupQueryAttention: key {:?} and value {:?} should be {kv_shape:?}", k.shape(), v.shape());
        let past_len = if self.past {
            let (pk, pv) = (&inputs[3], &inputs[4]);
            ensure!(pk.rank() == 4 && pk.shape() == pv.shape(), "GroupQueryAttention: past key {:?} and value {:?} disagree", pk.shape(), pv.shape());
            ensure!(
                pk.shape()[0] == batch && pk.shape()[1] == self.kv_heads && pk.shape()[3] == head_size,
                "GroupQueryAttention: past key {:?} should be [{batch}, {}, P, {head_size}]",
                pk.shape(),
                self.kv_heads
            );
            pk.shape()[2]
        } else {
            0
        };
        let dims = Dims { batch, seq, heads: self.heads, kv_heads: self.kv_heads, head_size, past: past_len };
        let lengths = lengths.cast_to::<i64>()?;
        let lengths = lengths.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
        ensure!(lengths.len() == batch, "GroupQueryAttention: seqlens_k has {} values for a batch of {batch}", lengths.len());
        let total_len = total_input.cast_to::<i64>()?;
        let total_len = *total_len.try_as_plain_ram()?.as_slice::<i64>()?.first().context("GroupQueryAttention: total_sequence_length is empty")?;
        let first_prompt = seq as i64 == total_len;
        // Each row's past: none in the first prompt, else what its length leaves before the new tokens.
        let pasts: Vec<usize> = lengths
            .iter()
            .map(|&len| {
                let past = if first_prompt { 0 } else { len + 1 - seq as i64 };
                ensure!((0..=past_len as i64).contains(&past), "GroupQueryAttention: seqlens_k {len} leaves a past of {past} tokens, outside 0..={past_len}");
                Ok(past as usize)
            })
            .collect::<TractResult<_>>()?;

        let (present_k, present_v) = {
            let past = self.past.then(|| (&inputs[3], &inputs[4]));
            let present = |new: &TValue, past: Option<&TValue>| -> TractResult<Tensor> {
                present(&dims, &pasts, new.try_as_plain_ram()?.as_slice::<f32>()?, past.map(|p| p.try_as_plain_ram()?.as_slice::<f32>()).transpose()?)
            };
            (present(k, past.map(|p| p.0))?, present(v, past.map(|p| p.1))?)
        };
        // SAFETY: every element is written by the blocks below.
        let mut out = unsafe { Tensor::uninitialized::<f32>(q.shape())? };
        {
            let params =
                Params { dims, scale: self.scale.map(f32::from_bits).unwrap_or(1.0 / (head_size as f32).sqrt()), softcap: f32::from_bits(self.softcap), window: self.window, smooth: self.smooth };
            let (pk, pv) = (present_k.try_as_plain_ram()?, present_v.try_as_plain_ram()?);
            let mut po = out.try_as_plain_ram_mut()?;
            attend(&params, &pasts, &lengths, q.try_as_plain_ram()?.as_slice::<f32>()?, pk.as_slice::<f32>()?, pv.as_slice::<f32>()?, po.as_slice_mut::<f32>()?);
        }
        let mut results = tvec!(out.into_tvalue());
        if self.outputs == 3 {
            results.push(present_k.into_tvalue());
            results.push(present_v.into_tvalue());
        }
        Ok(results)
    }
}

/// The present key or value `[B, kv_heads, P + S, D]`: per row, its past, the new tokens
/// (`new` is `[B, S, kv_heads·D]`), then zeros.
fn present(dims: &Dims, pasts: &[usize], new: &[f32], past: Option<&[f32]>) -> TractResult<Tensor> {
    let Dims { batch, seq, kv_heads, head_size: d, past: p, .. } = *dims;
    let total = dims.total();
    let mut out = Tensor::zero::<f32>(&[batch, kv_heads, total, d])?;
    {
        let mut plain = out.try_as_plain_ram_mut()?;
        let out = plain.as_slice_mut::<f32>()?;
        for (b, &past_b) in pasts.iter().enumerate() {
            for h in 0..kv_heads {
                let head = &mut out[(b * kv_heads + h) * total * d..][..total * d];
                if let Some(past) = past {
                    head[..past_b * d].copy_from_slice(&past[(b * kv_heads + h) * p * d..][..past_b * d]);
                }
                for s in 0..seq {
                    head[(past_b + s) * d..][..d].copy_from_slice(&new[((b * seq + s) * kv_heads + h) * d..][..d]);
                }
            }
        }
    }
    Ok(out)
}

struct Params {
    dims: Dims,
    scale: f32,
    softcap: f32,
    window: i64,
    smooth: bool,
}

impl Params {
    /// The keys query `s` of a row with past `past_b` and `seqlens_k` `len` sees (maybe empty).
    fn visible(&self, past_b: usize, len: i64, s: usize) -> Range<usize> {
        let position = (past_b + s) as i64;
        let last = position.min(len).min(self.dims.total() as i64 - 1);
        let first = if self.window >= 0 { (position - self.window + 1).max(0) } else { 0 };
        if last < first { 0..0 } else { first as usize..last as usize + 1 }
    }
}

/// All query heads of all rows, one task per (row, KV head, block of query positions).
fn attend(params: &Params, pasts: &[usize], lengths: &[i64], q: &[f32], present_k: &[f32], present_v: &[f32], out: &mut [f32]) {
    let dims = params.dims;
    let blocks = dims.seq.div_ceil(QUERY_BLOCK);
    let tasks: Vec<(usize, usize, usize)> = (0..dims.batch).flat_map(|b| (0..dims.kv_heads).flat_map(move |h| (0..blocks).map(move |blk| (b, h, blk)))).collect();
    let out = SendPtr(out.as_mut_ptr());
    let run = |&(b, h, blk): &(usize, usize, usize)| {
        let positions = blk * QUERY_BLOCK..((blk + 1) * QUERY_BLOCK).min(dims.seq);
        // SAFETY: the task writes only the rows of its positions and its query heads.
        unsafe { attend_block(params, pasts[b], lengths[b], q, present_k, present_v, out.get(), b, h, positions) };
    };
    let pool = super::thread_pool(tasks.len() > 1);
    match pool {
        Some(pool) => {
            use rayon::prelude::*;
            pool.install(|| tasks.par_iter().for_each(run));
        }
        None => tasks.iter().for_each(run),
    }
}

/// The query heads of KV head `h` at `positions` of row `b`: scores against the keys those
/// positions see, softmax, and the weighted values, written to `out` (`[B, S, heads·D]`).
///
/// # Safety
/// `out` must hold `[B, S, heads·D]` values; no other thread writes these rows and heads.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_block(params: &Params, past_b: usize, len: i64, q: &[f32], present_k: &[f32], present_v: &[f32], out: *mut f32, b: usize, h: usize, positions: Range<usize>) {
    let Dims { seq, heads, head_size: d, .. } = params.dims;
    let total = params.dims.total();
    let groups = params.dims.groups();
    let ranges: Vec<Range<usize>> = positions.clone().map(|s| params.visible(past_b, len, s)).collect();
    // The keys any of these positions see; rows that see none take the expansion's result
    // (every key masked alike: a plain average of all keys, or zero with a smooth softmax).
    let keys = ranges.iter().filter(|r| !r.is_empty()).fold(None, |acc: Option<Range<usize>>, r| Some(acc.map_or(r.clone(), |a| a.start.min(r.start)..a.end.max(r.end)))).unwrap_or(0..0);
    let rows = positions.len();
    let row_stride = (heads * d) as isize;
    let k_head = &present_k[(b * params.dims.kv_heads + h) * total * d..][..total * d];
    let v_head = &present_v[(b * params.dims.kv_heads + h) * total * d..][..total * d];
    let width = keys.len();
    let mut scores = vec![0f32; rows * width.max(1)];
    for g in 0..groups {
        let head = h * groups + g;
        let q_block = q[(b * seq + positions.start) * heads * d + head * d..].as_ptr();
        // SAFETY: the output rows of these positions and this head are ours.
        let out_block = unsafe { out.add((b * seq + positions.start) * heads * d + head * d) };
        if width > 0 {
            // SAFETY: `q_block` has `rows` rows `heads·D` apart, `D` wide; the keys are within
            // the head's present; `scores` holds `rows × width`.
            unsafe {
                gemm::gemm(
                    rows,
                    width,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    width as isize,
                    false,
                    q_block,
                    1,
                    row_stride,
                    k_head[keys.start * d..].as_ptr(),
                    d as isize,
                    1,
                    0.0,
                    params.scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (row, range) in scores.chunks_mut(width).zip(&ranges) {
                let visible = range.start.saturating_sub(keys.start)..range.end.saturating_sub(keys.start);
                softmax_row(row, visible, params.softcap, params.smooth);
            }
            // SAFETY: `scores` rows are probabilities over `width` keys from `keys.start`;
            // the output rows are `heads·D` apart.
            unsafe {
                gemm::gemm(
                    rows,
                    d,
                    width,
                    out_block,
                    1,
                    row_stride,
                    false,
                    scores.as_ptr(),
                    1,
                    width as isize,
                    v_head[keys.start * d..].as_ptr(),
                    1,
                    d as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
        for (i, range) in ranges.iter().enumerate() {
            if range.is_empty() {
                // SAFETY: row `i` of this head's output block.
                let row = unsafe { std::slice::from_raw_parts_mut(out_block.offset(i as isize * row_stride), d) };
                row.fill(0.0);
                if !params.smooth {
                    for t in 0..total {
                        for (o, &x) in row.iter_mut().zip(&v_head[t * d..(t + 1) * d]) {
                            *o += x;
                        }
                    }
                    row.iter_mut().for_each(|o| *o /= total as f32);
                }
            }
        }
    }
}

/// Turns one row of scores into probabilities over `visible` (zero elsewhere): softcap, then
/// softmax; a smooth softmax adds a zero logit to the denominator.
fn softmax_row(row: &mut [f32], visible: Range<usize>, softcap: f32, smooth: bool) {
    row[..visible.start].fill(0.0);
    row[visible.end..].fill(0.0);
    let part = &mut row[visible];
    if part.is_empty() {
        return;
    }
    if softcap > 0.0 {
        part.iter_mut().for_each(|x| *x = (*x / softcap).tanh() * softcap);
    }
    let mut top = part.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if smooth {
        top = top.max(0.0);
    }
    let mut sum = exp_shifted(part, top);
    if smooth {
        sum += (-top).exp();
    }
    let inverse = 1.0 / sum;
    part.iter_mut().for_each(|x| *x *= inverse);
}

/// `x = exp(x - shift)` in place, for a `shift` no smaller than any value; returns the sum.
fn exp_shifted(values: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features.
        return unsafe { exp_shifted_avx2(values, shift) };
    }
    values
        .iter_mut()
        .map(|x| {
            *x = (*x - shift).exp();
            *x
        })
        .sum()
}

/// [`exp_shifted`] eight lanes at a time (the tail through a padded lane group): `2^k · p(r)`
/// with `x = k·ln2 + r`, `p` a degree-5 fit of `e^r` on `|r| <= ln2/2` (relative error about
/// 2e-7); inputs below -87 give zero.
///
/// # Safety
/// AVX2 and FMA available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_shifted_avx2(values: &mut [f32], shift: f32) -> f32 {
    use std::arch::x86_64::*;
    #[inline(always)]
    unsafe fn exp8(x: __m256) -> __m256 {
        // SAFETY: register arithmetic only.
        unsafe {
            let x = _mm256_max_ps(x, _mm256_set1_ps(-87.0));
            let k = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)));
            let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693_145_75), x);
            let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.428_606_8e-6), r);
            let mut p = _mm256_set1_ps(1.987_569_2e-4);
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
            p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
            let scale = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127))));
            let result = _mm256_mul_ps(p, scale);
            // Underflow: below -87 the scale is not a normal number; the true value is ~0.
            _mm256_and_ps(result, _mm256_cmp_ps::<_CMP_GT_OQ>(x, _mm256_set1_ps(-87.0)))
        }
    }
    // SAFETY: loads and stores stay within `values` (the tail goes through `lanes`).
    unsafe {
        let shift_v = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let n = values.len();
        let p = values.as_mut_ptr();
        let mut i = 0;
        while i + 8 <= n {
            let y = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), shift_v));
            _mm256_storeu_ps(p.add(i), y);
            acc = _mm256_add_ps(acc, y);
            i += 8;
        }
        if i < n {
            let mut lanes = [f32::NEG_INFINITY; 8];
            lanes[..n - i].copy_from_slice(&values[i..]);
            let y = exp8(_mm256_sub_ps(_mm256_loadu_ps(lanes.as_ptr()), shift_v));
            _mm256_storeu_ps(lanes.as_mut_ptr(), y);
            values[i..].copy_from_slice(&lanes[..n - i]);
            acc = _mm256_add_ps(acc, y);
        }
        let mut sums = [0f32; 8];
        _mm256_storeu_ps(sums.as_mut_ptr(), acc);
        sums.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as values;

    struct Case {
        batch: usize,
        seq: usize,
        heads: usize,
        kv_heads: usize,
        head_size: usize,
        /// Past length; `None` for no past inputs.
        past: Option<usize>,
        lengths: Vec<i32>,
        total: i32,
        window: i64,
        smooth: bool,
        softcap: f32,
    }

    /// The definition, in f64: present = past, new, zeros; each query sees its visible keys.
    fn naive(c: &Case, q: &[f32], k: &[f32], v: &[f32], pk: &[f32], pv: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, p) = (c.head_size, c.past.unwrap_or(0));
        let total = p + c.seq;
        let groups = c.heads / c.kv_heads;
        let scale = 1.0 / (d as f64).sqrt();
        let mut present_k = vec![0f32; c.batch * c.kv_heads * total * d];
        let mut present_v = present_k.clone();
        let mut out = vec![0f32; c.batch * c.seq * c.heads * d];
        for b in 0..c.batch {
            let len = c.lengths[b] as usize;
            let past_b = if c.seq as i32 == c.total { 0 } else { len + 1 - c.seq };
            for h in 0..c.kv_heads {
                for t in 0..total {
                    for x in 0..d {
                        let at = ((b * c.kv_heads + h) * total + t) * d + x;
                        if t < past_b {
                            present_k[at] = pk[((b * c.kv_heads + h) * p + t) * d + x];
                            present_v[at] = pv[((b * c.kv_heads + h) * p + t) * d + x];
                        } else if t - past_b < c.seq {
                            present_k[at] = k[((b * c.seq + t - past_b) * c.kv_heads + h) * d + x];
                            present_v[at] = v[((b * c.seq + t - past_b) * c.kv_heads + h) * d + x];
                        }
                    }
                }
            }
            for s in 0..c.seq {
                let position = (past_b + s) as i64;
                let visible = |j: usize| (j as i64) <= position.min(len as i64) && (c.window < 0 || j as i64 > position - c.window);
                for head in 0..c.heads {
                    let h = head / groups;
                    let key = |j: usize| &present_k[((b * c.kv_heads + h) * total + j) * d..][..d];
                    let value = |j: usize| &present_v[((b * c.kv_heads + h) * total + j) * d..][..d];
                    let query = &q[((b * c.seq + s) * c.heads + head) * d..][..d];
                    let mut logits: Vec<Option<f64>> = (0..total)
                        .map(|j| {
                            visible(j).then(|| {
                                let raw = scale * query.iter().zip(key(j)).map(|(&x, &y)| x as f64 * y as f64).sum::<f64>();
                                if c.softcap > 0.0 { (raw / c.softcap as f64).tanh() * c.softcap as f64 } else { raw }
                            })
                        })
                        .collect();
                    let o = &mut out[((b * c.seq + s) * c.heads + head) * d..][..d];
                    if logits.iter().all(Option::is_none) {
                        if !c.smooth {
                            logits = vec![Some(0.0); total];
                        } else {
                            continue;
                        }
                    }
                    let mut top = logits.iter().flatten().copied().fold(f64::NEG_INFINITY, f64::max);
                    if c.smooth {
                        top = top.max(0.0);
                    }
                    let weights: Vec<f64> = logits.iter().map(|l| l.map_or(0.0, |l| (l - top).exp())).collect();
                    let sum: f64 = weights.iter().sum::<f64>() + if c.smooth { (-top).exp() } else { 0.0 };
                    for (x, slot) in o.iter_mut().enumerate() {
                        *slot = ((0..total).map(|j| weights[j] * value(j)[x] as f64).sum::<f64>() / sum) as f32;
                    }
                }
            }
        }
        (out, present_k, present_v)
    }

    fn run(c: &Case, threads: usize) {
        let d = c.head_size;
        let q = values(c.batch * c.seq * c.heads * d, 1);
        let k = values(c.batch * c.seq * c.kv_heads * d, 2);
        let v = values(c.batch * c.seq * c.kv_heads * d, 3);
        let p = c.past.unwrap_or(0);
        let (pk, pv) = (values(c.batch * c.kv_heads * p * d, 4), values(c.batch * c.kv_heads * p * d, 5));
        let op = GroupQueryAttention { heads: c.heads, kv_heads: c.kv_heads, scale: None, softcap: c.softcap.to_bits(), window: c.window, smooth: c.smooth, past: c.past.is_some(), outputs: 3 };
        let tensor = |data: &[f32], shape: &[usize]| Tensor::from_shape(shape, data).unwrap().into_tvalue();
        let mut inputs = tvec!(tensor(&q, &[c.batch, c.seq, c.heads * d]), tensor(&k, &[c.batch, c.seq, c.kv_heads * d]), tensor(&v, &[c.batch, c.seq, c.kv_heads * d]));
        if c.past.is_some() {
            inputs.push(tensor(&pk, &[c.batch, c.kv_heads, p, d]));
            inputs.push(tensor(&pv, &[c.batch, c.kv_heads, p, d]));
        }
        inputs.push(Tensor::from_shape(&[c.batch], &c.lengths).unwrap().into_tvalue());
        inputs.push(tensor0(c.total).into_tvalue());
        let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
        let got = tract_linalg::multithread::multithread_tract_scope(executor, || op.eval(&EvalContext::out_of_plan(), inputs.clone()).unwrap());
        let (want, want_k, want_v) = naive(c, &q, &k, &v, &pk, &pv);
        let data = |t: &TValue| t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap().to_vec();
        assert_eq!(got[1].shape(), &[c.batch, c.kv_heads, p + c.seq, d]);
        assert_eq!(data(&got[1]), want_k);
        assert_eq!(data(&got[2]), want_v);
        assert_eq!(got[0].shape(), &[c.batch, c.seq, c.heads * d]);
        for (i, (g, w)) in data(&got[0]).iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-5 * (1.0 + w.abs()), "output {i}: {g} against {w} on {threads} threads");
        }
        // The same bytes whatever the thread count.
        let single = tract_linalg::multithread::multithread_tract_scope(tract_linalg::multithread::Executor::SingleThread, || op.eval(&EvalContext::out_of_plan(), inputs).unwrap());
        assert_eq!(data(&single[0]).iter().map(|x| x.to_bits()).collect::<Vec<_>>(), data(&got[0]).iter().map(|x| x.to_bits()).collect::<Vec<_>>());
    }

    #[allow(clippy::too_many_arguments)]
    fn case(batch: usize, seq: usize, heads: usize, kv_heads: usize, head_size: usize, past: Option<usize>, lengths: &[i32], total: i32) -> Case {
        Case { batch, seq, heads, kv_heads, head_size, past, lengths: lengths.to_vec(), total, window: -1, smooth: false, softcap: 0.0 }
    }

    #[test]
    fn matches_the_definition() {
        let cases = [
            // First prompts: no past inputs, or an empty past; right padding in the second row.
            case(2, 5, 4, 2, 8, None, &[4, 2], 5),
            case(2, 5, 4, 2, 8, Some(0), &[4, 2], 5),
            // Longer than one query block, odd head size, one KV head for three query heads.
            case(1, 150, 3, 1, 13, None, &[149], 150),
            case(2, 131, 6, 2, 65, None, &[130, 70], 131),
            // Decoding after a past, rows of different lengths.
            case(2, 1, 6, 2, 12, Some(7), &[7, 3], 8),
            case(2, 3, 4, 4, 16, Some(4), &[6, 5], 7),
            case(1, 70, 2, 1, 9, Some(20), &[89], 90),
        ];
        for mut c in cases {
            for threads in [1, 3] {
                run(&c, threads);
            }
            c.window = 3;
            run(&c, 2);
            // A window shorter than the padding: padded rows see no key at all.
            c.window = 1;
            run(&c, 2);
            c.smooth = true;
            run(&c, 2);
            c.window = -1;
            c.softcap = 1.5;
            run(&c, 2);
        }
    }

    #[test]
    fn exp_matches_the_library() {
        let mut xs: Vec<f32> = (0..1000).map(|i| -(i as f32) * 0.09).chain([0.0, -1e-7, -86.9, -87.5, -200.0, f32::NEG_INFINITY]).collect();
        let want: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        let sum = exp_shifted(&mut xs, 0.0);
        for (g, w) in xs.iter().zip(&want) {
            assert!((g - w).abs() <= 4e-7 * w + 1e-37, "{g} against {w}");
        }
        assert!((sum - want.iter().sum::<f32>()).abs() < 1e-5);
    }
}
