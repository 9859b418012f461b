//! onnxruntime's own ops that its transformer optimizer and LLM exporters emit: fused
//! normalisations, rotary embedding, grouped-query attention, mixtures of experts (the `com.microsoft` domain, and
//! `SimplifiedLayerNormalization`, which onnxruntime registers in the default domain).

use super::nn::layer_norm;
use super::{InferError, NodeCtx, Rule, dim_add, dim_div};
use crate::dtype::DataType;
use crate::types::Dim;

/// onnxruntime's ops in the default domain (no ONNX opset has them). SimplifiedLayerNormalization
/// types its outputs as LayerNormalization does (Y as X, statistics over the normalised axes).
pub(super) fn default_domain_rule(op: &str) -> Option<Rule> {
    (op == "SimplifiedLayerNormalization").then_some(layer_norm as Rule)
}

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "SimplifiedLayerNormalization" => layer_norm,
        "SkipSimplifiedLayerNormalization" | "SkipLayerNormalization" => skip_layer_norm,
        "RotaryEmbedding" | "MoE" => as_input,
        "GroupQueryAttention" => group_query_attention,
        _ => return None,
    })
}

/// `(output, mean, inv_std_var, input_skip_bias_sum)`: the output and the sum as the input; the
/// statistics over the last axis, kept as 1.
fn skip_layer_norm(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.pass_through(0, 0);
    let stats = ctx.dims(0).map(|x| {
        let mut out = x.to_vec();
        if let Some(last) = out.last_mut() {
            *last = Dim::Known(1);
        }
        out
    });
    for i in 1..ctx.output_count().min(3) {
        ctx.set(i, Some(DataType::Float), stats.clone());
    }
    if ctx.output_count() > 3 {
        ctx.pass_through(0, 3);
    }
    Ok(())
}

/// RotaryEmbedding and MoE: the output as the input.
fn as_input(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    ctx.pass_through(0, 0);
    Ok(())
}

/// `(output, present_key, present_value)`: the output `[batch, length, num_heads · head_size]`;
/// the caches `[batch, kv_num_heads, total length, head_size]` (the past's length plus this
/// length; unknown without a past).
fn group_query_attention(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let elem = ctx.elem(0);
    let (Some(heads), Some(kv_heads)) = (ctx.attr_int("num_heads"), ctx.attr_int("kv_num_heads")) else {
        return Err(InferError::Attribute { name: "num_heads", reason: "GroupQueryAttention needs num_heads and kv_num_heads".into() });
    };
    let Some(q) = ctx.dims(0).map(<[Dim]>::to_vec) else {
        ctx.set(0, elem, None);
        return Ok(());
    };
    let [batch, length, hidden] = q.as_slice() else {
        return Err(InferError::Rank { index: 0, rank: q.len(), expected: "3".into() });
    };
    // Separate key and value, or one packed query/key/value input.
    let packed = !ctx.has_input(1);
    let head_size = if packed { dim_div(hidden, &Dim::Known(heads + 2 * kv_heads)) } else { dim_div(hidden, &Dim::Known(heads)) };
    let output = head_size.known().map_or(Dim::Unknown, |d| Dim::Known(heads * d));
    ctx.set(0, elem, Some(vec![batch.clone(), length.clone(), if packed { output } else { hidden.clone() }]));
    let past = ctx.dims(3).and_then(|p| p.get(2).cloned());
    let total = past.map_or(Dim::Unknown, |p| dim_add(&p, length));
    for i in 1..ctx.output_count().min(3) {
        ctx.set(i, elem, Some(vec![batch.clone(), Dim::Known(kv_heads), total.clone(), head_size.clone()]));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::infer::{InferOptions, infer_shapes};

    /// A decoder block's fused ops as onnxruntime's model builder writes them.
    #[test]
    fn fused_llm_ops_are_typed() {
        let mut model = crate::text::parse(
            "model ir_version=8 opset=[ai.onnx=17, com.microsoft=1]
graph g {
  input %x: f32[b,s,32]
  input %past: f32[b,2,p,8]
  input %seqlens: i32[b]
  input %total: i32[]
  input %pos: i64[b,s]
  input %router: f32[t,16]
  init %gamma = tensor<f32[32]> fill=seeded(1)
  init %wq = tensor<f32[32,32]> fill=seeded(2)
  init %wk = tensor<f32[32,16]> fill=seeded(3)
  init %cache = tensor<f32[64,4]> fill=seeded(4)
  init %fc1 = tensor<f32[16,8,32]> fill=seeded(5)
  init %fc2 = tensor<f32[16,32,4]> fill=seeded(6)
  %n = SimplifiedLayerNormalization(%x, %gamma) {axis=-1, epsilon=1e-5}
  %q = MatMul(%n, %wq)
  %k = MatMul(%n, %wk)
  %qr = com.microsoft::RotaryEmbedding(%q, %pos, %cache, %cache) {num_heads=4}
  %o, %pk, %pv = com.microsoft::GroupQueryAttention(%qr, %k, %k, %past, %past, %seqlens, %total) {kv_num_heads=2, num_heads=4}
  %y, _, _, %sum = com.microsoft::SkipSimplifiedLayerNormalization(%o, %x, %gamma) {epsilon=1e-5}
  %moe = com.microsoft::MoE(%y, %router, %fc1, _, %fc2) {activation_type=\"swiglu\", k=2, swiglu_fusion=1}
  output %y, %sum, %pk, %moe
}
",
        )
        .unwrap();
        infer_shapes(&mut model, &InferOptions::default());
        let g = &model.graph;
        let type_of = |name: &str| g.value_ids().map(|id| g.value(id)).find(|v| v.name == name).and_then(|v| v.ty.as_ref()).map(|t| t.to_string()).unwrap_or_default();
        assert_eq!(type_of("n"), "f32[b,s,32]");
        assert_eq!(type_of("qr"), "f32[b,s,32]");
        assert_eq!(type_of("o"), "f32[b,s,32]");
        assert_eq!(type_of("pk"), "f32[b,2,?,8]", "the past's symbolic length plus s is not a name");
        assert_eq!(type_of("y"), "f32[b,s,32]");
        assert_eq!(type_of("sum"), "f32[b,s,32]");
        assert_eq!(type_of("moe"), "f32[b,s,32]");
    }
}
