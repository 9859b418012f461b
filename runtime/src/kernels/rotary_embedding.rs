//! `com.microsoft.RotaryEmbedding` as one kernel, in f32, with the semantics of the expansion in
//! `lower/rotary_embedding.rs` (which the lowering keeps for other types and shapes).
//!
//! Why: the expansion gathers the tables, slices the halves, multiplies and concatenates, a
//! pass over the tensor per step; here each head is rotated in one pass. The arithmetic is the
//! expansion's (`x·cos - y·sin`, `y·cos + x·sin`, each product rounded), so results agree bit
//! for bit.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// A builder of tract's op register.
pub type Builder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's builder for the standard ONNX RotaryEmbedding (opset 23: input, cos_cache,
/// sin_cache, position_ids), which shares the op's name: the register is keyed by name alone.
pub static STANDARD_ROTARY_EMBEDDING: std::sync::OnceLock<Option<Builder>> = std::sync::OnceLock::new();

pub fn build_rotary_embedding(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if node.domain != "com.microsoft" {
        let Some(standard) = STANDARD_ROTARY_EMBEDDING.get().copied().flatten() else { bail!("RotaryEmbedding of domain '{}' is not supported", node.domain) };
        return standard(ctx, node);
    }
    ensure!(node.get_attr_opt::<i64>("is_packed_batching")?.unwrap_or(0) == 0, "RotaryEmbedding: packed batching is not supported");
    ensure!(node.input.len() == 4 && node.input.iter().all(|i| !i.is_empty()), "RotaryEmbedding needs input, position_ids, cos_cache and sin_cache");
    let op = RotaryEmbedding {
        interleaved: node.get_attr_opt::<i64>("interleaved")?.unwrap_or(0) != 0,
        num_heads: node.get_attr_opt::<i64>("num_heads")?.unwrap_or(0),
        rotary_dim: node.get_attr_opt::<i64>("rotary_embedding_dim")?.unwrap_or(0),
    };
    ensure!(op.rotary_dim == 0 || op.num_heads > 0, "RotaryEmbedding: rotary_embedding_dim needs num_heads");
    Ok((expand(op), vec![]))
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RotaryEmbedding {
    interleaved: bool,
    num_heads: i64,
    /// 0: whole heads, of twice the tables' width.
    rotary_dim: i64,
}

impl Expansion for RotaryEmbedding {
    fn name(&self) -> StaticName {
        "RotaryEmbedding".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 4)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.clone(), inputs)
    }
}

impl Op for RotaryEmbedding {
    fn name(&self) -> StaticName {
        "RotaryEmbedding".into()
    }
    op_as_typed_op!();
}

impl TypedOp for RotaryEmbedding {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(f32::fact(inputs[0].shape.iter().cloned().collect::<TVec<_>>())))
    }
    as_op!();
}

impl EvalOp for RotaryEmbedding {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (x, positions, cos, sin) = (&inputs[0], &inputs[1], &inputs[2], &inputs[3]);
        ensure!(cos.rank() == 2 && sin.shape() == cos.shape(), "RotaryEmbedding: cos_cache {:?} and sin_cache {:?} should be [max_position, rotary_dim / 2]", cos.shape(), sin.shape());
        let (table_len, half) = (cos.shape()[0], cos.shape()[1]);
        let rotated = 2 * half;
        // [batch, seq, heads, head_size] in memory, heads and seq swapped for a rank-4 input.
        let (batch, seq, heads, head_size, heads_outer) = match *x.shape() {
            [b, s, hidden] => {
                let head_size = if self.rotary_dim == 0 { rotated } else { hidden / self.num_heads.max(1) as usize };
                ensure!(head_size > 0 && hidden % head_size == 0, "RotaryEmbedding: width {hidden} does not split into heads of {head_size}");
                (b, s, hidden / head_size, head_size, false)
            }
            [b, n, s, d] => (b, s, n, d, true),
            _ => bail!("RotaryEmbedding: the input has rank {}, not 3 or 4", x.rank()),
        };
        ensure!(self.rotary_dim == 0 || self.rotary_dim as usize == rotated, "RotaryEmbedding: rotary_embedding_dim {} does not match cos_cache's width {half}", self.rotary_dim);
        ensure!(rotated <= head_size, "RotaryEmbedding: the tables rotate {rotated} channels of heads of {head_size}");
        let positions = positions.cast_to::<i64>()?;
        let positions = positions.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
        // Rank 2: [batch or 1, seq]; otherwise one offset that the sequence counts up from.
        let position_rank = inputs[1].rank();
        let position = |b: usize, s: usize| -> TractResult<usize> {
            let p = match position_rank {
                2 => {
                    let rows = positions.len() / seq.max(1);
                    ensure!(rows * seq == positions.len() && (rows == 1 || rows == batch), "RotaryEmbedding: position_ids {:?} should be [{batch} or 1, {seq}]", inputs[1].shape());
                    positions[if rows == 1 { s } else { b * seq + s }]
                }
                _ => {
                    ensure!(positions.len() == 1, "RotaryEmbedding: position_ids of rank {position_rank} should hold one offset");
                    positions[0] + s as i64
                }
            };
            // As Gather reads them: negative positions count from the end.
            let at = if p < 0 { p + table_len as i64 } else { p };
            ensure!((0..table_len as i64).contains(&at), "RotaryEmbedding: position {p} is outside the tables' {table_len} rows");
            Ok(at as usize)
        };
        let (cos, sin) = (cos.try_as_plain_ram()?, sin.try_as_plain_ram()?);
        let (cos, sin) = (cos.as_slice::<f32>()?, sin.as_slice::<f32>()?);
        let mut out = x.clone().into_tensor();
        {
            let mut plain = out.try_as_plain_ram_mut()?;
            let data = plain.as_slice_mut::<f32>()?;
            for b in 0..batch {
                for s in 0..seq {
                    let row = position(b, s)?;
                    let (c, si) = (&cos[row * half..][..half], &sin[row * half..][..half]);
                    for h in 0..heads {
                        let offset = if heads_outer { ((b * heads + h) * seq + s) * head_size } else { ((b * seq + s) * heads + h) * head_size };
                        rotate(&mut data[offset..offset + rotated], c, si, self.interleaved);
                    }
                }
            }
        }
        Ok(tvec!(out.into_tvalue()))
    }
}

/// Rotates one head's first `2·half` channels: the two halves against each other, or adjacent pairs.
fn rotate(x: &mut [f32], cos: &[f32], sin: &[f32], interleaved: bool) {
    let half = cos.len();
    if interleaved {
        for (pair, (&c, &s)) in x.chunks_exact_mut(2).zip(cos.iter().zip(sin)) {
            let (even, odd) = (pair[0], pair[1]);
            pair[0] = even * c - odd * s;
            pair[1] = odd * c + even * s;
        }
    } else {
        let (first, second) = x.split_at_mut(half);
        for ((a, b), (&c, &s)) in first.iter_mut().zip(second.iter_mut()).zip(cos.iter().zip(sin)) {
            let (x0, x1) = (*a, *b);
            *a = x0 * c - x1 * s;
            *b = x1 * c + x0 * s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_values as values;

    /// The rotation by its definition, on `[batch, seq, heads, head_size]` with one position per
    /// token, `half` rotated pairs per head.
    fn naive(x: &[f32], shape: [usize; 4], positions: &[usize], cos: &[f32], sin: &[f32], half: usize, interleaved: bool) -> Vec<f32> {
        let [batch, seq, heads, d] = shape;
        let mut y = x.to_vec();
        for b in 0..batch {
            for s in 0..seq {
                let p = positions[b * seq + s];
                for h in 0..heads {
                    let base = ((b * seq + s) * heads + h) * d;
                    for i in 0..half {
                        let (u, v) = if interleaved { (base + 2 * i, base + 2 * i + 1) } else { (base + i, base + half + i) };
                        let (c, sn) = (cos[p * half + i], sin[p * half + i]);
                        y[u] = x[u] * c - x[v] * sn;
                        y[v] = x[v] * c + x[u] * sn;
                    }
                }
            }
        }
        y
    }

    fn eval(op: &RotaryEmbedding, x: Tensor, positions: Tensor, cos: &[f32], sin: &[f32], half: usize) -> TractResult<Vec<f32>> {
        let table = |t: &[f32]| Tensor::from_shape(&[t.len() / half, half], t).unwrap().into_tvalue();
        let out = op.eval(&EvalContext::out_of_plan(), tvec!(x.into_tvalue(), positions.into_tvalue(), table(cos), table(sin)))?;
        Ok(out[0].try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
    }

    #[test]
    fn matches_the_definition() {
        let (batch, seq, heads, half, max_position) = (2, 5, 3, 4, 20);
        let (cos, sin) = (values(max_position * half, 1), values(max_position * half, 2));
        for (interleaved, head_size, rotary_dim) in [(false, 8, 0), (true, 8, 0), (false, 12, 8), (true, 12, 8)] {
            let op = RotaryEmbedding { interleaved, num_heads: heads as i64, rotary_dim };
            let x = values(batch * seq * heads * head_size, 3);
            // Positions per token (one row of them per batch row), then one offset.
            let positions: Vec<usize> = (0..batch * seq).map(|i| (i * 3) % max_position).collect();
            let want = naive(&x, [batch, seq, heads, head_size], &positions, &cos, &sin, half, interleaved);
            let ids = Tensor::from_shape(&[batch, seq], &positions.iter().map(|&p| p as i64).collect::<Vec<_>>()).unwrap();
            let got = eval(&op, Tensor::from_shape(&[batch, seq, heads * head_size], &x).unwrap(), ids, &cos, &sin, half).unwrap();
            assert_eq!(got, want, "interleaved {interleaved}, head {head_size}");
            let offset: Vec<usize> = (0..batch).flat_map(|_| (0..seq).map(|s| 7 + s)).collect();
            let want = naive(&x, [batch, seq, heads, head_size], &offset, &cos, &sin, half, interleaved);
            let got = eval(&op, Tensor::from_shape(&[batch, seq, heads * head_size], &x).unwrap(), tensor1(&[7i64]), &cos, &sin, half).unwrap();
            assert_eq!(got, want);
            // [batch, heads, seq, head_size]: the same rotation on the heads-first layout.
            let mut x4 = vec![0f32; x.len()];
            for (b, s, h) in (0..batch).flat_map(|b| (0..seq).flat_map(move |s| (0..heads).map(move |h| (b, s, h)))) {
                x4[((b * heads + h) * seq + s) * head_size..][..head_size].copy_from_slice(&x[((b * seq + s) * heads + h) * head_size..][..head_size]);
            }
            let got4 = eval(&op, Tensor::from_shape(&[batch, heads, seq, head_size], &x4).unwrap(), tensor1(&[7i64]), &cos, &sin, half).unwrap();
            for (b, s, h) in (0..batch).flat_map(|b| (0..seq).flat_map(move |s| (0..heads).map(move |h| (b, s, h)))) {
                assert_eq!(got4[((b * heads + h) * seq + s) * head_size..][..head_size], want[((b * seq + s) * heads + h) * head_size..][..head_size]);
            }
        }
        // A position past the tables is an error, not a panic.
        let op = RotaryEmbedding { interleaved: false, num_heads: 1, rotary_dim: 0 };
        assert!(eval(&op, Tensor::from_shape(&[1, 1, 8], &values(8, 4)).unwrap(), tensor2(&[[max_position as i64]]), &cos, &sin, half).is_err());
    }
}
