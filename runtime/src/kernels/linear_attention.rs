//! ONNX `LinearAttention` (onnx 1.22): causal linear attention with a `[B, H_kv, d_k, d_v]`
//! recurrent state, updated token by token with one of four rules (`linear`, `gated`, `delta`,
//! `gated_delta`). tract has no such op; this is the operator's recurrence, in f32.

use tract_onnx::model::{ParsingContext, optional_inputs, optional_outputs};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpdateRule {
    Linear,
    Gated,
    Delta,
    GatedDelta,
}

impl UpdateRule {
    fn gating(self) -> bool {
        matches!(self, UpdateRule::Gated | UpdateRule::GatedDelta)
    }
    fn delta(self) -> bool {
        matches!(self, UpdateRule::Delta | UpdateRule::GatedDelta)
    }
}

pub fn build_linear_attention(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let q_heads: usize = node.get_attr("q_num_heads")?;
    let kv_heads: usize = node.get_attr("kv_num_heads")?;
    ensure!(q_heads > 0 && kv_heads > 0 && q_heads.is_multiple_of(kv_heads), "LinearAttention: q_num_heads ({q_heads}) must be a positive multiple of kv_num_heads ({kv_heads})");
    let scale = node.get_attr_opt::<f32>("scale")?.filter(|&s| s != 0.0);
    let rule = match node.get_attr_opt::<String>("update_rule")?.as_deref().unwrap_or("gated_delta") {
        "linear" => UpdateRule::Linear,
        "gated" => UpdateRule::Gated,
        "delta" => UpdateRule::Delta,
        "gated_delta" => UpdateRule::GatedDelta,
        other => bail!("LinearAttention: unknown update_rule '{other}'"),
    };
    let mut optional = optional_inputs(node).skip(3);
    let (past, decay, beta) = (optional.next().flatten(), optional.next().flatten(), optional.next().flatten());
    ensure!(rule.gating() == decay.is_some(), "LinearAttention: update_rule {rule:?} {} a decay input", if rule.gating() { "needs" } else { "forbids" });
    ensure!(rule.delta() == beta.is_some(), "LinearAttention: update_rule {rule:?} {} a beta input", if rule.delta() { "needs" } else { "forbids" });
    let outputs = optional_outputs(node).take(2).filter(Option::is_some).count();
    Ok((expand(LinearAttentionNode { q_heads, kv_heads, scale, rule, past, decay, beta, outputs }), vec![]))
}

#[derive(Debug, Clone)]
struct LinearAttentionNode {
    q_heads: usize,
    kv_heads: usize,
    scale: Option<f32>,
    rule: UpdateRule,
    past: Option<usize>,
    decay: Option<usize>,
    beta: Option<usize>,
    outputs: usize,
}

impl Expansion for LinearAttentionNode {
    fn name(&self) -> StaticName {
        "LinearAttention".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.outputs)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_output_arity(outputs, self.outputs)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].rank, 3)?;
        let (q_heads, kv_heads) = (self.q_heads, self.kv_heads);
        s.given_2(&inputs[0].shape, &inputs[2].shape, move |s, q, v| {
            s.equals(&outputs[0].shape[0], q[0].clone())?;
            s.equals(&outputs[0].shape[1], q[1].clone())?;
            s.equals(&outputs[0].shape[2], (v[2].clone() / kv_heads as u64) * q_heads as u64)?;
            if outputs.len() > 1 {
                s.equals(&outputs[1].rank, 4)?;
                s.equals(&outputs[1].shape[0], q[0].clone())?;
                s.equals(&outputs[1].shape[1], kv_heads.to_dim())?;
                s.equals(&outputs[1].shape[2], q[2].clone() / q_heads as u64)?;
                s.equals(&outputs[1].shape[3], v[2].clone() / kv_heads as u64)?;
            }
            Ok(())
        })?;
        if outputs.len() > 1 {
            match self.past {
                Some(p) => s.equals(&outputs[1].datum_type, &inputs[p].datum_type)?,
                None => s.equals(&outputs[1].datum_type, &inputs[0].datum_type)?,
            }
        }
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let op = LinearAttention {
            q_heads: self.q_heads,
            kv_heads: self.kv_heads,
            scale: self.scale.map(f32::to_bits),
            rule: self.rule,
            past: self.past,
            decay: self.decay,
            beta: self.beta,
            outputs: self.outputs,
        };
        model.wire_node(prefix, op, inputs)
    }
}

/// The typed op. `scale` is kept as bits so the op can be `Eq`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LinearAttention {
    q_heads: usize,
    kv_heads: usize,
    scale: Option<u32>,
    rule: UpdateRule,
    past: Option<usize>,
    decay: Option<usize>,
    beta: Option<usize>,
    outputs: usize,
}

fn f32_vec(t: &TValue) -> TractResult<Vec<f32>> {
    Ok(t.cast_to::<f32>()?.to_plain_array_view::<f32>()?.iter().copied().collect())
}

impl Op for LinearAttention {
    fn name(&self) -> StaticName {
        "LinearAttention".into()
    }
    op_as_typed_op!();
}

impl EvalOp for LinearAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (qs, ks, vs) = (inputs[0].shape(), inputs[1].shape(), inputs[2].shape());
        ensure!(qs.len() == 3 && ks.len() == 3 && vs.len() == 3, "LinearAttention: query, key and value must be rank 3");
        let (b, t) = (qs[0], qs[1]);
        let (hq, hk) = (self.q_heads, self.kv_heads);
        ensure!(qs[2] % hq == 0 && vs[2] % hk == 0 && ks[2] % hk == 0, "LinearAttention: hidden sizes do not split into heads");
        let (dk, dv) = (qs[2] / hq, vs[2] / hk);
        ensure!(ks[2] / hk == dk && ks[0] == b && vs[0] == b && ks[1] == t && vs[1] == t, "LinearAttention: query, key and value shapes disagree");
        let group = hq / hk;
        let (q, k, v) = (f32_vec(&inputs[0])?, f32_vec(&inputs[1])?, f32_vec(&inputs[2])?);
        let mut state = match self.past {
            Some(p) => {
                ensure!(inputs[p].shape() == [b, hk, dk, dv], "LinearAttention: past_state shape {:?} is not {:?}", inputs[p].shape(), [b, hk, dk, dv]);
                f32_vec(&inputs[p])?
            }
            None => vec![0f32; b * hk * dk * dv],
        };
        let decay = self.decay.map(|i| (f32_vec(&inputs[i]), inputs[i].shape().to_vec()));
        let beta = self.beta.map(|i| (f32_vec(&inputs[i]), inputs[i].shape().to_vec()));
        let scale = self.scale.map(f32::from_bits).unwrap_or(1.0 / (dk as f32).sqrt());
        let mut out = vec![0f32; b * t * hq * dv];
        let mut v_t = vec![0f32; dv];
        for bi in 0..b {
            for step in 0..t {
                for h in 0..hk {
                    let st = &mut state[((bi * hk + h) * dk) * dv..((bi * hk + h + 1) * dk) * dv];
                    let k_t = &k[(bi * t + step) * hk * dk + h * dk..][..dk];
                    v_t.copy_from_slice(&v[(bi * t + step) * hk * dv + h * dv..][..dv]);
                    if let Some((d, shape)) = &decay {
                        let d = d.as_ref().map_err(|e| format_err!("{e}"))?;
                        let row = &d[(bi * t + step) * shape[2]..][..shape[2]];
                        for i in 0..dk {
                            // One decay per head, or one per head and key channel.
                            let g = if shape[2] == hk { row[h] } else { row[h * dk + i] };
                            let factor = g.exp();
                            st[i * dv..(i + 1) * dv].iter_mut().for_each(|x| *x *= factor);
                        }
                    }
                    if let Some((be, shape)) = &beta {
                        let be = be.as_ref().map_err(|e| format_err!("{e}"))?;
                        let beta_t = be[(bi * t + step) * shape[2] + if shape[2] == 1 { 0 } else { h }];
                        for m in 0..dv {
                            let retrieved: f32 = (0..dk).map(|i| st[i * dv + m] * k_t[i]).sum();
                            v_t[m] = beta_t * (v_t[m] - retrieved);
                        }
                    }
                    for i in 0..dk {
                        for m in 0..dv {
                            st[i * dv + m] += k_t[i] * v_t[m];
                        }
                    }
                    for g in 0..group {
                        let qh = h * group + g;
                        let q_t = &q[(bi * t + step) * hq * dk + qh * dk..][..dk];
                        let o = &mut out[(bi * t + step) * hq * dv + qh * dv..][..dv];
                        for m in 0..dv {
                            o[m] = scale * (0..dk).map(|i| q_t[i] * st[i * dv + m]).sum::<f32>();
                        }
                    }
                }
            }
        }
        let out_dt = inputs[0].datum_type();
        let y = Tensor::from_shape(&[b, t, hq * dv], &out)?.cast_to_dt(out_dt)?.into_owned();
        let mut results = tvec!(y.into_tvalue());
        if self.outputs > 1 {
            let state_dt = self.past.map(|p| inputs[p].datum_type()).unwrap_or(out_dt);
            results.push(Tensor::from_shape(&[b, hk, dk, dv], &state)?.cast_to_dt(state_dt)?.into_owned().into_tvalue());
        }
        Ok(results)
    }
}

impl TypedOp for LinearAttention {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let (q, v) = (&inputs[0].shape, &inputs[2].shape);
        let dv = v[2].clone() / self.kv_heads as u64;
        let mut facts = tvec!(inputs[0].datum_type.fact([q[0].clone(), q[1].clone(), dv.clone() * self.q_heads as u64]));
        if self.outputs > 1 {
            let dt = self.past.map(|p| inputs[p].datum_type).unwrap_or(inputs[0].datum_type);
            facts.push(dt.fact([q[0].clone(), self.kv_heads.to_dim(), q[2].clone() / self.q_heads as u64, dv]));
        }
        Ok(facts)
    }
    as_op!();
}
