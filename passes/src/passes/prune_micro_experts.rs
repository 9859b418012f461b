//! CAMERA-P: removes the least useful micro-experts (intermediate neurons) of every FFN layer.
//!
//! Layer by layer in execution order (as CAMERA's code runs), each layer's neurons are scored
//! on the calibration data flowing through the layers already pruned, and the `ratio` share
//! with the lowest scores, pooled across all the experts of the layer (or the same share of
//! every expert, `per_expert=true`), goes: their gate and up
//! columns and down rows are cut from the weights (the layers get narrower). A dense FFN is
//! one expert. `sequential=false` scores every layer on the unpruned model in one calibration
//! pass instead (faster, as the baselines usually run).
//!
//! A `com.microsoft.MoE` node's experts share one width (its fc1 and fc2 are single tensors):
//! with `per_expert=true` each expert loses the same share; pooled, each keeps its own
//! neurons and the narrower ones are padded with zero neurons up to the widest.

use super::micro_expert_scores::{LoadedMoe, SCORE_NEEDS, layer_scores, measure, validate_rho};
use super::prune_channels::{GroupReport, Plan, cut_groups};
use crate::analysis::experts::{ExpertLayer, FfnExperts, MoeOp};
use crate::analysis::{ChannelGroups, LinearLayers, Uses};
use crate::calib::Stats;
use crate::micro_experts::{Score, moe_op, pooled_keep};
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Graph, Patch, Tensor, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PruneMicroExperts {
    /// The share of each layer's micro-experts removed (pooled across the layer's experts).
    pub ratio: f64,
    /// CAMERA's weight of the largest activation against the sum (reduce_ratio).
    pub rho: f64,
    /// camera, magnitude (no data), activation or wanda.
    pub score: Score,
    /// Score each layer on activations that went through the layers pruned before it (CAMERA); false: score every layer on the unpruned model in one calibration pass.
    pub sequential: bool,
    /// Leave this many leading FFN layers alone.
    pub skip: usize,
    /// Each expert keeps a multiple of this many neurons (rounded up).
    pub multiple: usize,
    /// Add the removed neurons' calibration mean contribution to the down projection's bias (needs calibration data).
    pub compensate: bool,
    /// Remove the share from every expert of a mixture alike (all experts keep one width, as com.microsoft.MoE needs) instead of pooling a layer's experts (ragged widths).
    pub per_expert: bool,
}

impl Default for PruneMicroExperts {
    fn default() -> Self {
        PruneMicroExperts { ratio: 0.2, rho: 0.9, score: Score::Camera, sequential: true, skip: 0, multiple: 1, compensate: false, per_expert: false }
    }
}

impl PassDef for PruneMicroExperts {
    const NAME: &'static str = "prune-micro-experts";
    const SUMMARY: &'static str = "Remove the lowest-scoring FFN neurons (micro-experts) of every layer, CAMERA-P style (calibrated, layer by layer)";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if !(0.0..1.0).contains(&self.ratio) {
            return Err(OptionError::new("ratio", format!("{} is not a share in [0, 1)", self.ratio)));
        }
        if self.multiple == 0 {
            return Err(OptionError::new("multiple", "must be at least 1"));
        }
        validate_rho(self.rho)
    }
}

#[derive(Serialize)]
struct LayerReport {
    block: usize,
    /// Micro-experts before and after, all experts of the layer together (zero neurons that
    /// pad a MoE node's experts to one width not counted).
    before: usize,
    after: usize,
    experts: Vec<GroupReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    moe: Option<MoeReport>,
}

/// What became of a MoE node's experts.
#[derive(Serialize)]
struct MoeReport {
    node: String,
    width_before: usize,
    /// The experts' one width: the most neurons any keeps.
    width_after: usize,
    /// Neurons each expert keeps (the rest of `width_after` are zero).
    kept: Vec<usize>,
    padded: usize,
}

#[derive(Serialize)]
struct Skipped {
    block: usize,
    reason: String,
}

/// A MoE node's experts to cut: each keeps its listed neurons, padded to `width`.
struct MoeCut<'a> {
    op: &'a MoeOp,
    kept: Vec<Vec<usize>>,
    width: usize,
}

impl MoeCut<'_> {
    fn report(&self, graph: &Graph) -> MoeReport {
        let kept: Vec<usize> = self.kept.iter().map(Vec::len).collect();
        MoeReport { node: graph.node(self.op.node).label(self.op.node), width_before: self.op.width, width_after: self.width, padded: kept.iter().map(|k| self.width - k).sum(), kept }
    }

    /// The patch replacing the node's expert tensors with the cut ones.
    fn patch(&self, pass: &str, graph: &Graph, loaded: &LoadedMoe, patch: &mut Patch) -> Result<(), PassError> {
        let weights = loaded.view(self.op);
        let (fc1, fc1_bias, fc2) = moe_op::cut(&weights, &self.kept, self.width);
        let (e, h, f) = (self.op.experts as u64, self.op.hidden as u64, self.op.attrs.activation.fusion() as u64);
        let w = self.width as u64;
        let tensor = |dims: &[u64], values: &[f32]| Tensor::from_f32(dims, values).map_err(|err| PassError::failed(pass, graph.node(self.op.node).label(self.op.node), err.to_string()));
        patch.set_initializer(self.op.fc1, tensor(&[e, f * w, h], &fc1)?);
        patch.set_initializer(self.op.fc2, tensor(&[e, h, w], &fc2)?);
        if let (Some(value), Some(bias)) = (self.op.fc1_bias, fc1_bias) {
            patch.set_initializer(value, tensor(&[e, f * w], &bias)?);
        }
        Ok(())
    }
}

/// Why a MoE node's experts cannot be cut in place, if they cannot: a weight another node
/// also reads would change under it.
fn moe_shared_weight(graph: &Graph, uses: &Uses, op: &MoeOp) -> Option<String> {
    [Some(op.fc1), op.fc1_bias, Some(op.fc2)]
        .into_iter()
        .flatten()
        .find(|&v| uses.of(v).len() != 1)
        .map(|v| format!("{}: '{}' is read by other nodes too", graph.node(op.node).label(op.node), graph.value(v).name))
}

impl Pass for PruneMicroExperts {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        if self.score.needs_data() && ctx.calibrator.is_none() {
            return Err(PassError::NeedsCalibration { pass: Self::NAME.into(), why: SCORE_NEEDS.into() });
        }
        let compensate = self.compensate && ctx.calibrator.is_some();
        let (targets, mut skipped): (Vec<(usize, ValueId)>, Vec<Skipped>) = {
            let experts = ctx.analyses.get::<FfnExperts>(graph);
            let layers = ctx.analyses.get::<LinearLayers>(graph);
            let refused = experts.refused.iter().map(|&(block, n, ref why)| Skipped { block, reason: format!("{}: {why}", graph.node(n).label(n)) }).collect();
            (experts.iter().skip(self.skip).map(|l| (l.block, l.key(&layers))).collect(), refused)
        };
        let mut reports = Vec::new();
        let batches: Vec<Vec<(usize, ValueId)>> = if self.sequential { targets.into_iter().map(|t| vec![t]).collect() } else { vec![targets] };
        // Progress: each calibration pass shows its own bar (one bar at a time).
        for batch in batches {
            let experts = ctx.analyses.get::<FfnExperts>(graph);
            let layers = ctx.analyses.get::<LinearLayers>(graph);
            let chosen: Vec<&ExpertLayer> = batch.iter().filter_map(|&(_, w)| experts.iter().find(|l| l.key(&layers) == w)).collect();
            let measured = measure(graph, ctx, Self::NAME, &chosen, self.score, compensate)?;
            let groups = ctx.analyses.get::<ChannelGroups>(graph);
            // The layers reading each group matter only to compensation.
            let uses = ctx.analyses.get::<Uses>(graph);
            let consumers: Vec<Vec<_>> = groups.groups.iter().map(|g| if compensate && g.is_movable() { g.consumers(graph, &uses) } else { Vec::new() }).collect();
            let mut plans: Vec<Plan<'_>> = Vec::new();
            let mut kept_counts = Vec::new();
            let mut layer_spans = Vec::new();
            for layer in &chosen {
                let scores = layer_scores(Self::NAME, graph, &layers, layer, self.score, self.rho, &measured)?;
                let total: usize = scores.iter().map(Vec::len).sum();
                let keep = if self.per_expert {
                    scores.iter().flat_map(|s| pooled_keep(std::slice::from_ref(s), (self.ratio * s.len() as f64).floor() as usize, self.multiple)).collect()
                } else {
                    pooled_keep(&scores, (self.ratio * total as f64).floor() as usize, self.multiple)
                };
                let mut expert_plans = Vec::new();
                let mut reason = layer.moe_op.as_ref().and_then(|op| moe_shared_weight(graph, &uses, op));
                for ((e, s), kept) in layer.experts.iter().zip(&scores).zip(&keep) {
                    if reason.is_some() {
                        break;
                    }
                    let down = &layers[e.down];
                    // The neuron axis of the stored down weight.
                    let axis = usize::from(down.weight.transposed);
                    let Some((index, group)) = groups.groups.iter().enumerate().find(|(_, g)| g.params.contains(&(down.weight.value, axis))) else {
                        reason = Some(format!("{}: its neurons are in no channel group", down.label(graph)));
                        break;
                    };
                    if !group.is_movable() || group.units != group.width || group.width as usize != e.width {
                        let why = group.pinned.first().cloned().unwrap_or_else(|| format!("its neurons move in {} units of {} channels", group.units, group.width));
                        reason = Some(format!("{}: its neurons cannot be cut ({why})", down.label(graph)));
                        break;
                    }
                    let mut order = kept.clone();
                    let mut rest: Vec<usize> = (0..e.width).filter(|j| !kept.contains(j)).collect();
                    rest.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
                    order.extend(rest);
                    let sorted = order.iter().map(|&j| s[j]).collect();
                    let names = group.params.iter().map(|&(v, a)| format!("{}[{a}]", graph.value(v).name)).collect();
                    expert_plans.push((Plan { group, consumers: &consumers[index], order, scores: sorted, names, notes: Vec::new() }, kept.len()));
                }
                if let Some(reason) = reason {
                    skipped.push(Skipped { block: layer.block, reason });
                    continue;
                }
                let moe_cut = layer.moe_op.as_ref().map(|op| {
                    let kept = keep[layer.experts.len()..].to_vec();
                    let width = kept.iter().map(Vec::len).max().unwrap_or(0);
                    MoeCut { op, kept, width }
                });
                layer_spans.push((layer.block, total, expert_plans.len(), moe_cut));
                for (plan, kept) in expert_plans {
                    plans.push(plan);
                    kept_counts.push(kept);
                }
            }
            // Layers that keep every neuron are left as they are (ratio 0 is the identity).
            let changed = plans.iter().zip(&kept_counts).any(|(p, &k)| k < p.group.width as usize);
            let groups_reports = if changed {
                let stats: Option<&BTreeMap<ValueId, Stats>> = compensate.then_some(&measured.stats);
                cut_groups(Self::NAME, graph, &plans, &kept_counts, stats)?
            } else {
                Vec::new()
            };
            let mut next = groups_reports.into_iter();
            let mut patch = Patch::new();
            for (block, total, count, moe_cut) in layer_spans {
                let experts: Vec<GroupReport> = next.by_ref().take(count).collect();
                let mut after = if experts.is_empty() { total - moe_cut.as_ref().map_or(0, |c| c.op.experts * c.op.width) } else { experts.iter().map(|g| g.width_after).sum() };
                let moe = match &moe_cut {
                    Some(cut) => {
                        after += cut.kept.iter().map(Vec::len).sum::<usize>();
                        if cut.kept.iter().any(|k| k.len() < cut.op.width) {
                            let loaded = &measured.moe.get(&cut.op.node).expect("measured with its layer").weights;
                            cut.patch(Self::NAME, graph, loaded, &mut patch)?;
                        }
                        Some(cut.report(graph))
                    }
                    None => None,
                };
                reports.push(LayerReport { block, before: total, after, experts, moe });
            }
            if !patch.is_empty() {
                graph.apply(patch).map_err(|e| PassError::failed(Self::NAME, "MoE experts", e.to_string()))?;
            }
        }
        let before: usize = reports.iter().map(|r| r.before).sum();
        let after: usize = reports.iter().map(|r| r.after).sum();
        let details = serde_json::json!({ "layers": reports, "skipped": skipped });
        if before == after {
            return Ok(PassOutcome::unchanged(format!("no micro-expert removed ({} FFN layers, {} left alone)", reports.len(), skipped.len())).with_details(details));
        }
        Ok(PassOutcome::changed(format!("removed {} of {before} micro-experts in {} FFN layers (score={:?}); {} layers left alone", before - after, reports.len(), self.score, skipped.len()))
            .with_details(details))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_checked() {
        let parse = |text: &str| -> Result<PruneMicroExperts, OptionError> {
            let p: PruneMicroExperts = serde_json::from_str(text).unwrap();
            p.validate().map(|()| p)
        };
        assert!(parse(r#"{}"#).is_ok());
        assert!(parse(r#"{"ratio": 0.0}"#).is_ok());
        assert_eq!(parse(r#"{"ratio": 1.0}"#).unwrap_err().option, "ratio");
        assert_eq!(parse(r#"{"rho": 1.5}"#).unwrap_err().option, "rho");
        assert_eq!(parse(r#"{"multiple": 0}"#).unwrap_err().option, "multiple");
    }
}
