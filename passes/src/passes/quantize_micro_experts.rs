//! CAMERA-Q: mixed-precision FFNs by micro-expert rank. Each expert's neurons are ranked by
//! their score ([`crate::micro_experts`]); the best `shares[0]` of them get `bits[0]`, the next
//! `shares[1]` get `bits[1]`, and so on (the same shares in every expert of a mixture). Every expert's neurons are permuted so each tier is
//! contiguous (function-preserving: the cut of `prune-channels` with nothing cut), then its
//! projections are split by tier: the gate and up projections into one MatMul per tier,
//! concatenated back to the full width before the activation, and the down projection into one
//! MatMul per tier of a Slice of its input, summed. That is exact (the FFN's output is a sum over
//! neurons), and each tier's weights are then quantized at their own width by the `quantize`
//! pass. Tier sizes are multiples of `block`, so a tier's blocks along the down projection's
//! input are the blocks the whole permuted weight would have.

use super::micro_expert_scores::{SCORE_NEEDS, layer_scores, measure, validate_rho};
use super::prune_channels::{Plan, cut_groups};
use super::quantize::{Format, Method, Quantize};
use crate::analysis::experts::{ExpertLayer, FfnExperts};
use crate::analysis::{ChannelGroups, LayerId, LinearLayers, LinearOp, Uses};
use crate::micro_experts::{Score, pooled_keep};
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Anchor, AttrValue, Graph, Patch, Tensor, ValueId};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct QuantizeMicroExperts {
    /// Bits of each tier, most useful neurons first: 2, 3, 4 or 8 each (3 is stored in 4-bit containers, as in quantize).
    pub bits: Vec<u8>,
    /// The share of each layer's neurons in each tier (summing to 1).
    pub shares: Vec<f64>,
    /// How neurons are ranked: camera, magnitude (no data), activation or wanda.
    pub score: Score,
    /// CAMERA's weight of the largest activation against the sum (reduce_ratio).
    pub rho: f64,
    /// Weights per scale along the reduction axis (tiers are multiples of it).
    pub block: usize,
    /// Symmetric (no zero points) or asymmetric.
    pub symmetric: bool,
    /// How weights are rounded (as in quantize).
    pub method: Method,
    /// The emitted form (as in quantize).
    pub format: Format,
}

impl Default for QuantizeMicroExperts {
    fn default() -> Self {
        QuantizeMicroExperts { bits: vec![8, 4, 2], shares: vec![0.1, 0.3, 0.6], score: Score::Camera, rho: 0.9, block: 32, symmetric: true, method: Method::Rtn, format: Format::Matmulnbits }
    }
}

impl PassDef for QuantizeMicroExperts {
    const NAME: &'static str = "quantize-micro-experts";
    const SUMMARY: &'static str = "CAMERA-Q: FFN neurons ranked by score get bit widths by tier (e.g. 8/4/2 bits), each tier its own quantized sub-FFN";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if self.bits.is_empty() || self.bits.len() != self.shares.len() {
            return Err(OptionError::new("shares", format!("{} shares for {} bit widths: give one share per tier", self.shares.len(), self.bits.len())));
        }
        if let Some(b) = self.bits.iter().find(|b| !crate::quant::BIT_WIDTHS.contains(b)) {
            return Err(OptionError::new("bits", format!("{b} is not one of 2, 3, 4, 8")));
        }
        if self.shares.iter().any(|s| s.is_nan() || *s < 0.0) || (self.shares.iter().sum::<f64>() - 1.0).abs() > 1e-6 {
            return Err(OptionError::new("shares", "must be non-negative and sum to 1"));
        }
        if !(self.block.is_power_of_two() && (16..=256).contains(&self.block)) {
            return Err(OptionError::new("block", format!("{} is not a power of two from 16 to 256", self.block)));
        }
        validate_rho(self.rho)
    }
}

/// One tier of an expert's (permuted) neurons: `start..end` at `bits`.
type Tier = (usize, usize, u8);

/// Tier boundaries over `width` neurons: cumulative shares rounded to multiples of `block`
/// (the last tier ends at `width`); tiers may be empty.
fn tier_bounds(shares: &[f64], width: usize, block: usize) -> Vec<(usize, usize)> {
    let mut bounds = Vec::new();
    let (mut start, mut cumulative) = (0usize, 0.0f64);
    for (t, share) in shares.iter().enumerate() {
        cumulative += share;
        let end = if t + 1 == shares.len() { width } else { (((cumulative * width as f64) / block as f64).round() as usize * block).clamp(start, width) };
        bounds.push((start, end));
        start = end;
    }
    bounds
}

#[derive(Serialize)]
struct TierReport {
    bits: u8,
    neurons: usize,
}

#[derive(Serialize)]
struct LayerReport {
    block: usize,
    /// Per expert, the tiers in rank order.
    experts: Vec<Vec<TierReport>>,
}

#[derive(Serialize)]
struct Skipped {
    block: usize,
    reason: String,
}

/// The suffix tier weights get, which `quantize` then selects by.
fn tier_suffix(bits: u8) -> String {
    format!("_camera_q{bits}")
}

impl QuantizeMicroExperts {
    /// Why a layer cannot be split here, if it cannot: its projections must be MatMuls by
    /// `[in, out]` initializers read by them alone.
    fn unsupported(graph: &Graph, uses: &Uses, layers: &LinearLayers, layer: &ExpertLayer) -> Option<String> {
        if let Some(op) = &layer.moe_op {
            return Some(format!("{}: a com.microsoft.MoE node's experts share one weight type, so they are not split into tiers", graph.node(op.node).label(op.node)));
        }
        for e in &layer.experts {
            for id in [e.gate, Some(e.up), Some(e.down)].into_iter().flatten() {
                let l = &layers[id];
                if l.op != LinearOp::MatMul
                    || !l.weight.chain.is_empty()
                    || l.weight.transposed
                    || uses.of(l.weight.value).len() != 1
                    || graph.value(l.weight.value).def != compactor_ir::ValueDef::Initializer
                {
                    return Some(format!("{}: only a MatMul by its own [in, out] initializer is split into tiers", l.label(graph)));
                }
            }
        }
        None
    }

    /// Splits an up or gate projection into per-tier MatMuls concatenated on the last axis.
    fn split_columns(graph: &Graph, patch: &mut Patch, layers: &LinearLayers, id: LayerId, tiers: &[Tier]) -> Result<(), PassError> {
        let l = &layers[id];
        let node = graph.node(l.node);
        let (k, n) = (l.in_features as usize, l.out_features as usize);
        let w = l.weight.tensor.to_f32().map_err(|e| PassError::ir(Self::NAME, e))?;
        let name = graph.value(l.weight.value).name.clone();
        let out = node.output(0).ok_or_else(|| PassError::failed(Self::NAME, l.label(graph), "no output"))?;
        let mut parts = Vec::new();
        for (t, &(start, end, bits)) in tiers.iter().enumerate() {
            let cols: Vec<f32> = (0..k).flat_map(|r| w[r * n + start..r * n + end].iter().copied()).collect();
            let tensor = Tensor::from_f32(&[k as u64, (end - start) as u64], &cols).map_err(|e| PassError::ir(Self::NAME, e))?;
            let weight = patch.new_initializer(node.region, &format!("{name}_tier{t}{}", tier_suffix(bits)), tensor);
            let part = patch.new_value(node.region, &format!("{}_tier{t}", graph.value(out).name), None);
            patch.node("MatMul", Anchor::Before(l.node)).name(format!("{}/tier{t}", l.label(graph))).input(node.input(0).expect("a MatMul has inputs")).input(weight).output(part).add();
            parts.push(part);
        }
        let joined = patch.new_value(node.region, &format!("{}_tiers", graph.value(out).name), None);
        let mut concat = patch.node("Concat", Anchor::Before(l.node)).name(format!("{}/tiers", l.label(graph))).attr("axis", AttrValue::Int(-1)).output(joined);
        for p in parts {
            concat = concat.input(p);
        }
        concat.add();
        patch.replace_uses(out, joined);
        patch.remove_node(l.node);
        patch.remove_value(l.weight.value);
        patch.rename(joined, graph.value(out).name.clone());
        Ok(())
    }

    /// Splits a down projection into per-tier MatMuls of slices of its input, summed.
    fn split_rows(graph: &Graph, patch: &mut Patch, layers: &LinearLayers, id: LayerId, tiers: &[Tier]) -> Result<(), PassError> {
        let l = &layers[id];
        let node = graph.node(l.node);
        let n = l.out_features as usize;
        let w = l.weight.tensor.to_f32().map_err(|e| PassError::ir(Self::NAME, e))?;
        let name = graph.value(l.weight.value).name.clone();
        let out = node.output(0).ok_or_else(|| PassError::failed(Self::NAME, l.label(graph), "no output"))?;
        let input = node.input(0).expect("a MatMul has inputs");
        let label = l.label(graph);
        let i64s =
            |patch: &mut Patch, hint: &str, v: i64| -> Result<_, PassError> { Ok(patch.new_initializer(node.region, hint, Tensor::from_i64(&[1], &[v]).map_err(|e| PassError::ir(Self::NAME, e))?)) };
        let axis = i64s(patch, &format!("{name}_tier_axis"), -1)?;
        let mut sum = None;
        for (t, &(start, end, bits)) in tiers.iter().enumerate() {
            let rows = Tensor::from_f32(&[(end - start) as u64, n as u64], &w[start * n..end * n]).map_err(|e| PassError::ir(Self::NAME, e))?;
            let weight = patch.new_initializer(node.region, &format!("{name}_tier{t}{}", tier_suffix(bits)), rows);
            let (s, e) = (i64s(patch, &format!("{name}_tier{t}_start"), start as i64)?, i64s(patch, &format!("{name}_tier{t}_end"), end as i64)?);
            let slice = patch.new_value(node.region, &format!("{}_tier{t}_in", graph.value(out).name), None);
            patch.node("Slice", Anchor::Before(l.node)).name(format!("{label}/tier{t}/slice")).input(input).input(s).input(e).input(axis).output(slice).add();
            let part = patch.new_value(node.region, &format!("{}_tier{t}", graph.value(out).name), None);
            patch.node("MatMul", Anchor::Before(l.node)).name(format!("{label}/tier{t}")).input(slice).input(weight).output(part).add();
            sum = Some(match sum {
                None => part,
                Some(acc) => {
                    let total = patch.new_value(node.region, &format!("{}_tiers{t}", graph.value(out).name), None);
                    patch.node("Add", Anchor::Before(l.node)).name(format!("{label}/tier{t}/sum")).input(acc).input(part).output(total).add();
                    total
                }
            });
        }
        let sum = sum.expect("at least one tier");
        patch.replace_uses(out, sum);
        patch.remove_node(l.node);
        patch.remove_value(l.weight.value);
        patch.rename(sum, graph.value(out).name.clone());
        Ok(())
    }
}

impl Pass for QuantizeMicroExperts {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        if self.score.needs_data() && ctx.calibrator.is_none() {
            return Err(PassError::NeedsCalibration { pass: Self::NAME.into(), why: SCORE_NEEDS.into() });
        }
        let experts = ctx.analyses.get::<FfnExperts>(graph);
        let layers = ctx.analyses.get::<LinearLayers>(graph);
        let uses = ctx.analyses.get::<Uses>(graph);
        let mut skipped = Vec::new();
        let chosen: Vec<&ExpertLayer> = experts
            .iter()
            .filter(|l| match Self::unsupported(graph, &uses, &layers, l) {
                Some(reason) => {
                    skipped.push(Skipped { block: l.block, reason });
                    false
                }
                None => true,
            })
            .collect();
        let stats = measure(graph, ctx, Self::NAME, &chosen, self.score, false)?;
        // 1. Each expert's neurons in rank order (a permutation of its coupling group).
        let groups = ctx.analyses.get::<ChannelGroups>(graph);
        let mut plans = Vec::new();
        let mut layer_tiers: Vec<(usize, Vec<Vec<Tier>>)> = Vec::new();
        let mut downs: Vec<ValueId> = Vec::new();
        for layer in &chosen {
            let scores = layer_scores(Self::NAME, graph, &layers, layer, self.score, self.rho, &stats)?;
            let ranked = pooled_keep(&scores, 0, 1);
            let mut expert_tiers = Vec::new();
            let mut expert_plans = Vec::new();
            let mut reason = None;
            for ((e, s), order) in layer.experts.iter().zip(&scores).zip(ranked) {
                let down = &layers[e.down];
                let Some(group) = groups.groups.iter().find(|g| g.params.contains(&(down.weight.value, 0))) else {
                    reason = Some(format!("{}: its neurons are in no channel group", down.label(graph)));
                    break;
                };
                if !group.is_movable() || group.units != group.width || group.width as usize != e.width {
                    reason = Some(format!("{}: its neurons cannot be permuted ({})", down.label(graph), group.pinned.first().cloned().unwrap_or_else(|| "split into heads".into())));
                    break;
                }
                let sorted = order.iter().map(|&j| s[j]).collect();
                let names = group.params.iter().map(|&(v, a)| format!("{}[{a}]", graph.value(v).name)).collect();
                expert_plans.push(Plan { group, consumers: &[], order, scores: sorted, names, notes: Vec::new() });
                let tiers: Vec<Tier> = tier_bounds(&self.shares, e.width, self.block).into_iter().zip(&self.bits).filter(|((a, b), _)| b > a).map(|((a, b), &bits)| (a, b, bits)).collect();
                expert_tiers.push(tiers);
            }
            if let Some(reason) = reason {
                skipped.push(Skipped { block: layer.block, reason });
                continue;
            }
            downs.push(layer.key(&layers));
            plans.extend(expert_plans);
            layer_tiers.push((layer.block, expert_tiers));
        }
        if plans.is_empty() {
            return Ok(PassOutcome::unchanged("no FFN layer split into tiers").with_details(serde_json::json!({ "layers": Vec::<LayerReport>::new(), "skipped": skipped })));
        }
        let full: Vec<usize> = plans.iter().map(|p| p.group.width as usize).collect();
        cut_groups(Self::NAME, graph, &plans, &full, None)?;
        drop(plans);
        // 2. Split the (now permuted) projections by tier.
        let experts = ctx.analyses.get::<FfnExperts>(graph);
        let layers = ctx.analyses.get::<LinearLayers>(graph);
        let mut patch = Patch::new();
        let (mut bits_weighted, mut params) = (0.0f64, 0usize);
        for ((_, tiers), down) in layer_tiers.iter().zip(&downs) {
            let layer =
                experts.iter().find(|l| l.key(&layers) == *down).ok_or_else(|| PassError::failed(Self::NAME, graph.value(*down).name.clone(), "the FFN is not found again after the permutation"))?;
            for (e, tiers) in layer.experts.iter().zip(tiers) {
                for id in [e.gate, Some(e.up)].into_iter().flatten() {
                    Self::split_columns(graph, &mut patch, &layers, id, tiers)?;
                }
                Self::split_rows(graph, &mut patch, &layers, e.down, tiers)?;
                let per_neuron = layer.input_width * (1 + usize::from(e.gate.is_some())) + layers[e.down].out_features as usize;
                for &(start, end, bits) in tiers {
                    bits_weighted += ((end - start) * per_neuron) as f64 * bits as f64;
                    params += (end - start) * per_neuron;
                }
            }
        }
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        // 3. Each bit width's tier weights, quantized by the quantize pass.
        let mut quantized = Vec::new();
        let mut widths: Vec<u8> = self.bits.clone();
        widths.sort_unstable();
        widths.dedup();
        for bits in widths {
            let quantize = Quantize {
                bits,
                block: self.block,
                symmetric: self.symmetric,
                method: self.method,
                format: self.format,
                ops: vec!["MatMul".into()],
                include: vec![format!("*{}", tier_suffix(bits))],
                min_elements: 0,
                ..Default::default()
            };
            let outcome = quantize.run(graph, ctx)?;
            quantized.push(serde_json::json!({ "bits": bits, "summary": outcome.summary, "details": outcome.details }));
        }
        let average = bits_weighted / params.max(1) as f64;
        let reports: Vec<LayerReport> = layer_tiers
            .into_iter()
            .map(|(block, experts)| LayerReport { block, experts: experts.into_iter().map(|tiers| tiers.into_iter().map(|(a, b, bits)| TierReport { bits, neurons: b - a }).collect()).collect() })
            .collect();
        Ok(PassOutcome::changed(format!("split {} FFN layers into bit tiers {:?}: {average:.3} bits per FFN weight; {} layers left", reports.len(), self.bits, skipped.len()))
            .with_details(serde_json::json!({ "layers": reports, "average_bits": average, "skipped": skipped, "quantize": quantized })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_block_multiples_covering_the_width() {
        assert_eq!(tier_bounds(&[0.1, 0.3, 0.6], 1536, 32), vec![(0, 160), (160, 608), (608, 1536)]);
        assert_eq!(tier_bounds(&[0.1, 0.3, 0.6], 128, 16), vec![(0, 16), (16, 48), (48, 128)]);
        assert_eq!(tier_bounds(&[0.0, 1.0], 64, 32), vec![(0, 0), (0, 64)]);
        assert_eq!(tier_bounds(&[1.0], 100, 32), vec![(0, 100)]);
    }

    #[test]
    fn options_are_checked() {
        let parse = |text: &str| -> Result<QuantizeMicroExperts, OptionError> {
            let p: QuantizeMicroExperts = serde_json::from_str(text).unwrap();
            p.validate().map(|()| p)
        };
        assert!(parse("{}").is_ok());
        assert_eq!(parse(r#"{"bits": [8, 4]}"#).unwrap_err().option, "shares");
        assert_eq!(parse(r#"{"bits": [8, 5, 2]}"#).unwrap_err().option, "bits");
        assert!(parse(r#"{"bits": [4, 3], "shares": [0.5, 0.5]}"#).is_ok());
        assert_eq!(parse(r#"{"shares": [0.5, 0.3, 0.3]}"#).unwrap_err().option, "shares");
        assert_eq!(parse(r#"{"block": 24}"#).unwrap_err().option, "block");
    }
}
