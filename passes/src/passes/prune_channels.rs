//! Structured width pruning: in every movable coupling group, keep the most salient channels
//! (by the same scores as `permute-channels`) and cut the rest from every constant of the
//! group, so the layers themselves get narrower (a real FLOP cut, not a mask).
//!
//! How many channels each group keeps: a uniform share (`keep`), or a global budget
//! (`threshold`: the share of the prunable groups' parameters cut where the scores, normalised
//! per group, are lowest), or several nested widths (`widths`) cut from one ordering, so every
//! narrower model's channels are the first channels of every wider one.
//!
//! With calibration data, each layer reading a cut group gets the cut channels' mean
//! contribution added to its bias (`compensate`): the output then stays right on average.
//!
//! A group moves in units: channels (an FFN's hidden width, a CNN's channels between
//! convolutions), or whole heads for attention (under GQA a KV head with its query heads), which
//! are cut only with `heads` (attention is the more sensitive part); the reshapes that spell out
//! a head count or width follow the cut. Groups a normalisation or reduction reads (a cut changes
//! its statistics) are left unless `allow_norms` is given.

use super::permute_channels::{ACTIVATION_NEEDS, PermuteChannels, Score, calibrate, permute};
use crate::analysis::channels::Consumer;
use crate::analysis::{ChannelGroup, ChannelGroups};
use crate::calib::{Stats, Wanted};
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Anchor, DataType, Graph, PValue, Patch, Tensor, Use, ValueDef, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The share `keep` has when neither `threshold` nor `widths` is given.
const DEFAULT_KEEP: f64 = 0.75;

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PruneChannels {
    /// The share of each group's channels kept, the same in every group; 0: not used (0.75 when neither threshold nor widths is given).
    pub keep: f64,
    /// A global budget instead of a uniform share (0: not used): the share of the prunable groups' parameters to cut (each weight counted once). Every unit's score is divided by its group's mean unit score, and the units with the lowest normalised scores across all groups are cut until that share of the parameters is; each group then keeps a multiple of `multiple` channels (rounded up), at least one multiple.
    pub threshold: f64,
    /// How channels are ranked: magnitude, l1, bn-gamma, iscs, activation (needs calibration data) or random.
    pub score: Score,
    /// Seed of score=random.
    pub seed: u64,
    /// Kept widths are multiples of this (kernels like multiples of 8).
    pub multiple: usize,
    /// With calibration data, add the cut input channels' mean contribution (calibration mean of each cut channel times the weights it multiplies) to the bias of every layer reading them, creating the bias when there is none. Without calibration data there is nothing to compensate with: the report says so (`not_compensated`).
    pub compensate: bool,
    /// Also cut groups a LayerNorm/RMSNorm or a reduction reads over (a residual stream); their statistics change, and the report says so.
    pub allow_norms: bool,
    /// Nested widths, e.g. [0.5, 0.75]: from one ordering, one model per width (each group keeps that share, its channels the first channels of every wider model). The pass's own result is the full-width model with every prunable group in saliency order; `compactor optimize` writes each width next to the output as <stem>.w50.<ext>.
    pub widths: Vec<f64>,
    /// Also cut attention heads: a group that moves in whole heads (under GQA, a KV head with its query heads) keeps that share of its heads, at least one; reshape targets spelling a head count or width follow.
    pub heads: bool,
    /// Shares for particular groups, as "GLOB=SHARE" (e.g. "*intermediate*=0.5"): a group keeps the share of the first entry whose glob matches one of its constants' names, the others `keep`.
    pub groups: Vec<String>,
}

impl Default for PruneChannels {
    fn default() -> Self {
        PruneChannels { keep: 0.0, threshold: 0.0, score: Score::Magnitude, seed: 0, multiple: 8, compensate: true, allow_norms: false, widths: Vec::new(), heads: false, groups: Vec::new() }
    }
}

impl PassDef for PruneChannels {
    const NAME: &'static str = "prune-channels";
    const SUMMARY: &'static str = "Cut the least salient channels of every movable coupling group (FFN widths, CNN channels), making the layers narrower";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if self.keep != 0.0 && !(self.keep > 0.0 && self.keep <= 1.0) {
            return Err(OptionError::new("keep", format!("{} is not a share in (0, 1]", self.keep)));
        }
        if self.threshold != 0.0 {
            if !(self.threshold > 0.0 && self.threshold < 1.0) {
                return Err(OptionError::new("threshold", format!("{} is not a share of parameters in (0, 1)", self.threshold)));
            }
            if self.keep != 0.0 {
                return Err(OptionError::new("threshold", "give keep (the same share in every group) or threshold (a global budget), not both"));
            }
            if self.score == Score::Random {
                return Err(OptionError::new("threshold", "score=random has no scores to compare across groups; use keep"));
            }
        }
        if !self.widths.is_empty() {
            if self.keep != 0.0 || self.threshold != 0.0 {
                return Err(OptionError::new("widths", "nested widths set each model's share; give widths without keep or threshold"));
            }
            if let Some(w) = self.widths.iter().find(|w| !(**w > 0.0 && **w <= 1.0)) {
                return Err(OptionError::new("widths", format!("{w} is not a share in (0, 1]")));
            }
            let mut names: Vec<String> = self.widths.iter().map(|&w| width_name(w)).collect();
            names.sort();
            if let Some(pair) = names.windows(2).find(|p| p[0] == p[1]) {
                return Err(OptionError::new("widths", format!("two widths round to the same percentage ({})", pair[0])));
            }
        }
        if self.multiple == 0 {
            return Err(OptionError::new("multiple", "must be at least 1"));
        }
        if !self.groups.is_empty() && (self.threshold != 0.0 || !self.widths.is_empty()) {
            return Err(OptionError::new("groups", "per-group shares go with keep, not with threshold or widths"));
        }
        self.group_shares().map(|_| ())
    }
}

impl PruneChannels {
    /// `groups` parsed: (glob, share) in order.
    fn group_shares(&self) -> Result<Vec<(glob::Pattern, f64)>, OptionError> {
        self.groups
            .iter()
            .map(|entry| {
                let bad = |why: String| OptionError::new("groups", format!("'{entry}': {why}"));
                let (pattern, share) = entry.rsplit_once('=').ok_or_else(|| bad("not GLOB=SHARE".into()))?;
                let share: f64 = share.trim().parse().map_err(|_| bad(format!("'{share}' is not a number")))?;
                if !(share > 0.0 && share <= 1.0) {
                    return Err(bad(format!("{share} is not a share in (0, 1]")));
                }
                Ok((glob::Pattern::new(pattern.trim()).map_err(|e| bad(e.to_string()))?, share))
            })
            .collect()
    }

    /// The share group `names` (its constants' names) keeps: the first matching `groups`
    /// entry's, else `keep`.
    fn share_for(&self, shares: &[(glob::Pattern, f64)], names: &[String]) -> f64 {
        let keep = if self.keep != 0.0 { self.keep } else { DEFAULT_KEEP };
        shares.iter().find(|(p, _)| names.iter().any(|n| p.matches(n.rsplit_once('[').map_or(n, |(name, _)| name)))).map_or(keep, |&(_, share)| share)
    }
}

/// The name of a nested width's model: `w50` for 0.5.
pub fn width_name(width: f64) -> String {
    format!("w{}", (width * 100.0).round() as i64)
}

#[derive(Clone, Debug, Serialize)]
pub(crate) struct GroupReport {
    width_before: i64,
    pub width_after: usize,
    /// A group of heads: the heads kept, in their new order (indices of the original heads;
    /// under GQA, of the KV heads, each with its query heads).
    #[serde(skip_serializing_if = "Option::is_none")]
    kept_heads: Option<Vec<usize>>,
    params: Vec<String>,
    /// The scores of the units: mean, highest and lowest kept, highest cut (none when nothing is cut).
    score_mean: f64,
    score_kept_max: f64,
    score_kept_min: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    score_cut_max: Option<f64>,
    /// What a cut does beyond the weights (a normalisation whose statistics change).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    notes: Vec<String>,
    /// The bias shifts that stand in for the cut channels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    compensation: Vec<Compensation>,
}

/// The mean contribution of a consumer's cut inputs, moved into a bias.
#[derive(Clone, Debug, Serialize)]
struct Compensation {
    consumer: String,
    /// Where it went: the existing bias's name, or the new one.
    bias: String,
    created: bool,
    /// The largest |shift| of any output.
    max_abs_shift: f64,
}

#[derive(Serialize)]
struct Skipped {
    params: Vec<String>,
    reason: String,
}

/// Per constant, the cuts of its axes: (axis, the units kept in order, the units there are).
type Cuts = BTreeMap<ValueId, Vec<(usize, Vec<usize>, usize)>>;

/// One group to cut: its units most salient first, their scores, and what the cut changes.
pub(crate) struct Plan<'g> {
    pub group: &'g ChannelGroup,
    pub consumers: &'g [Consumer],
    pub order: Vec<usize>,
    pub scores: Vec<f64>,
    pub names: Vec<String>,
    pub notes: Vec<String>,
}

/// Where a consumer's compensation goes.
enum BiasSite {
    /// An existing constant of the consumer's output width, used only there: shifted in place.
    Existing(ValueId),
    /// Gemm or Conv without a bias: the new one becomes its input 2.
    NewInput,
    /// A MatMul without a bias: a new `Add` after it.
    NewAdd(ValueId),
}

impl PruneChannels {
    /// Units of `g` kept for a share: heads (at least one), or channels in a multiple of
    /// `multiple` (at least one multiple).
    fn kept_of(&self, share: f64, g: &ChannelGroup) -> usize {
        let (units, width) = (g.units as usize, g.width as usize);
        if g.moves_in_heads() {
            return ((share * units as f64).round() as usize).clamp(1, units);
        }
        (((share * width as f64) / self.multiple as f64).round() as usize * self.multiple).clamp(self.multiple.min(width), width)
    }

    /// Channels kept per plan under the global `threshold` budget (see the option). The
    /// parameters are counted once each (a weight between two cut groups loses rows to one and
    /// columns to the other): a channel's cost is what cutting it removes at that point.
    fn kept_under_threshold(&self, graph: &Graph, plans: &[Plan<'_>], threshold: f64) -> Vec<usize> {
        let mut dims: BTreeMap<ValueId, Vec<usize>> = BTreeMap::new();
        for p in plans {
            for &(v, _) in &p.group.params {
                if let Some(t) = graph.constant(v) {
                    dims.insert(v, t.dims().iter().map(|&d| d as usize).collect());
                }
            }
        }
        let total: usize = dims.values().map(|d| d.iter().product::<usize>()).sum();
        let mut candidates: Vec<(f64, usize, usize)> = Vec::new();
        for (i, p) in plans.iter().enumerate() {
            let mean = p.scores.iter().sum::<f64>() / p.scores.len().max(1) as f64;
            for (rank, &s) in p.scores.iter().enumerate() {
                candidates.push((if mean > 0.0 { s / mean } else { 0.0 }, i, rank));
            }
        }
        // Ascending normalised score; ties go to the later unit of the earlier group (deterministic).
        candidates.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)));
        let mut kept: Vec<usize> = plans.iter().map(|p| p.group.units as usize).collect();
        // What one unit is along each constant's axis (a head spans several channels).
        let unit_of: BTreeMap<(usize, ValueId), usize> = plans
            .iter()
            .enumerate()
            .flat_map(|(i, p)| p.group.params.iter().map(move |&(v, axis)| ((i, v), axis, p.group.units as usize)))
            .filter_map(|(key, axis, units)| dims.get(&key.1).map(|d| (key, d[axis] / units.max(1))))
            .collect();
        let mut cut = 0usize;
        for (_, i, rank) in candidates {
            if cut as f64 >= threshold * total as f64 {
                break;
            }
            // A group's cut runs from its tail: a unit goes only after every lower-ranked one
            // (its scores descend, so the ascending walk meets them tail first).
            let g = plans[i].group;
            let floor = if g.moves_in_heads() { 1 } else { self.multiple.min(g.width as usize) };
            if rank + 1 != kept[i] || kept[i] <= floor {
                continue;
            }
            kept[i] -= 1;
            for &(v, axis) in &g.params {
                if let (Some(d), Some(&unit)) = (dims.get_mut(&v), unit_of.get(&(i, v))) {
                    cut += unit * d.iter().enumerate().filter(|&(a, _)| a != axis).map(|(_, &n)| n).product::<usize>();
                    d[axis] -= unit;
                }
            }
        }
        plans.iter().zip(kept).map(|(p, k)| if p.group.moves_in_heads() { k } else { (k.div_ceil(self.multiple) * self.multiple).min(p.group.width as usize) }).collect()
    }
}

/// Cuts every plan to its `kept` units (channels, or heads; all of them: a permutation into
/// saliency order), compensating the consumers when `stats` hold the means of their inputs.
pub(crate) fn cut_groups(pass: &str, graph: &mut Graph, plans: &[Plan<'_>], kept: &[usize], stats: Option<&BTreeMap<ValueId, Stats>>) -> Result<Vec<GroupReport>, PassError> {
    let mut cuts: Cuts = BTreeMap::new();
    let mut patch = Patch::new();
    let mut reports = Vec::new();
    // Narrowed reshape targets, one per original and shape (layers share their targets), and
    // how many readers of each original moved to one.
    let mut narrowed_targets: BTreeMap<(ValueId, Vec<i64>, compactor_ir::RegionId), PValue> = BTreeMap::new();
    let mut moved_readers: BTreeMap<ValueId, usize> = BTreeMap::new();
    for (p, &kept) in plans.iter().zip(kept) {
        let (width, units) = (p.group.width as usize, p.group.units as usize);
        let kept_channels = kept * (width / units);
        let keep_order = p.order[..kept].to_vec();
        for &(v, axis) in &p.group.params {
            cuts.entry(v).or_default().push((axis, keep_order.clone(), units));
        }
        if kept < units {
            // The computed values of the group get narrower: their recorded types go.
            for &(v, _) in &p.group.values {
                patch.set_type(v, None);
            }
            // A depthwise convolution over the group has one group per channel: as many as are kept.
            for n in graph.all_nodes() {
                let node = graph.node(n);
                if matches!(node.op_type.as_str(), "Conv" | "ConvTranspose")
                    && node.attr_int("group") == Some(width as i64)
                    && width > 1
                    && node.input(0).is_some_and(|x| p.group.values.contains(&(x, 1)))
                {
                    patch.set_attr(n, "group", compactor_ir::AttrValue::Int(kept_channels as i64));
                }
                // onnxruntime's attention and rotary ops name their head counts.
                if matches!(node.op_type.as_str(), "GroupQueryAttention" | "RotaryEmbedding")
                    && let Some(out) = node.output(0)
                    && p.group.values.iter().any(|&(v, _)| v == out)
                {
                    for attr in ["num_heads", "kv_num_heads"] {
                        if let Some(count) = node.attr_int(attr).filter(|&c| c > 0) {
                            patch.set_attr(n, attr, compactor_ir::AttrValue::Int(count / units as i64 * kept as i64));
                        }
                    }
                }
                // A Reshape or Expand that spells out the size of one of the group's axes (a
                // bias reshaped to [1, C, 1, 1], attention's [0, 0, heads, head_dim] or
                // [0, 0, width]) gets a target shape of its own with the kept size.
                if matches!(node.op_type.as_str(), "Reshape" | "Expand")
                    && let (Some(out), Some(target)) = (node.output(0), node.input(1))
                    && let Some(shape) = graph.constant(target).and_then(|t| t.to_i64().ok())
                {
                    let size_of = |a: usize| graph.value(out).shape().and_then(|s| s.dims.get(a).and_then(|d| d.known()));
                    let axes: Vec<(usize, i64)> =
                        p.group.values.iter().filter(|&&(v, _)| v == out).filter_map(|&(_, a)| size_of(a).filter(|&size| shape.get(a) == Some(&size)).map(|size| (a, size))).collect();
                    if !axes.is_empty() {
                        let mut narrowed = shape.clone();
                        axes.iter().for_each(|&(a, size)| narrowed[a] = size / units as i64 * kept as i64);
                        let new = match narrowed_targets.entry((target, narrowed.clone(), node.region)) {
                            std::collections::btree_map::Entry::Occupied(e) => *e.get(),
                            std::collections::btree_map::Entry::Vacant(e) => {
                                let t = Tensor::from_i64(&[narrowed.len() as u64], &narrowed).map_err(|e| PassError::failed(pass, graph.value(target).name.clone(), e.to_string()))?;
                                *e.insert(patch.new_initializer(node.region, &format!("{}_pruned", graph.value(target).name), t))
                            }
                        };
                        patch.set_input(n, 1, Some(new));
                        *moved_readers.entry(target).or_default() += 1;
                    }
                }
            }
        }
        let score_mean = p.scores.iter().sum::<f64>() / p.scores.len().max(1) as f64;
        reports.push(GroupReport {
            width_before: p.group.width,
            width_after: kept_channels,
            kept_heads: p.group.moves_in_heads().then(|| keep_order.clone()),
            params: p.names.clone(),
            score_mean,
            score_kept_max: p.scores[0],
            score_kept_min: p.scores[kept - 1],
            score_cut_max: p.scores.get(kept).copied(),
            notes: if kept < units { p.notes.clone() } else { Vec::new() },
            compensation: Vec::new(),
        });
    }
    // An original target none of whose readers is left goes.
    let uses = graph.uses();
    for (&target, &moved) in &moved_readers {
        if moved == uses.of(target).len() && matches!(graph.value(target).def, ValueDef::Initializer) {
            patch.remove_value(target);
        }
    }
    // Bias shifts of existing constants, at full width (the cuts below then apply to them).
    let mut shifts: BTreeMap<ValueId, Vec<f64>> = BTreeMap::new();
    if let Some(stats) = stats {
        for (index, (p, &kept)) in plans.iter().zip(kept).enumerate() {
            // The cut units' channels (a head's channels are consecutive).
            let unit = (p.group.width / p.group.units) as usize;
            let cut_channels: Vec<usize> = p.order[kept..].iter().flat_map(|&u| u * unit..(u + 1) * unit).collect();
            if cut_channels.is_empty() {
                continue;
            }
            for c in p.consumers {
                let Some(mean) = stats.get(&c.input).and_then(|s| s.mean.as_ref()) else { continue };
                let Some(shift) = consumer_shift(graph, c, &cut_channels, mean) else { continue };
                let consumer = graph.node(c.node).label(c.node);
                let max_abs_shift = shift.iter().fold(0.0f64, |m, x| m.max(x.abs()));
                let entry = |bias: String, created| Compensation { consumer: consumer.clone(), bias, created, max_abs_shift };
                match bias_site(graph, &uses, c, shift.len()) {
                    Some(BiasSite::Existing(b)) => {
                        reports[index].compensation.push(entry(graph.value(b).name.clone(), false));
                        let total = shifts.entry(b).or_insert_with(|| vec![0.0; shift.len()]);
                        total.iter_mut().zip(&shift).for_each(|(t, s)| *t += s);
                    }
                    Some(BiasSite::NewInput) => {
                        let (bias, name) = new_bias(pass, graph, &mut patch, &cuts, c, &shift)?;
                        patch.set_input(c.node, 2, Some(bias));
                        reports[index].compensation.push(entry(name, true));
                    }
                    Some(BiasSite::NewAdd(out)) => {
                        let (bias, name) = new_bias(pass, graph, &mut patch, &cuts, c, &shift)?;
                        let region = graph.node(c.node).region;
                        let sum = patch.new_value(region, &format!("{}_compensated", graph.value(out).name), None);
                        patch.replace_uses(out, sum);
                        patch.node("Add", Anchor::After(c.node)).name(format!("{}/compensation", graph.value(c.weight).name)).input(out).input(bias).output(sum).add();
                        reports[index].compensation.push(entry(name, true));
                    }
                    None => reports[index].notes.push(format!("{consumer}: not compensated (its bias is shared or not one per output, or its output is a graph output)")),
                }
            }
        }
    }
    for v in cuts.keys().chain(shifts.keys()).copied().collect::<std::collections::BTreeSet<_>>() {
        let name = || graph.value(v).name.clone();
        let mut t = graph.constant(v).ok_or_else(|| PassError::failed(pass, name(), "not a constant"))?;
        if let Some(shift) = shifts.get(&v) {
            let mut values = t.to_f32().map_err(|e| PassError::failed(pass, name(), e.to_string()))?;
            values.iter_mut().zip(shift).for_each(|(x, s)| *x = (*x as f64 + s) as f32);
            t = Tensor::from_f32(t.dims(), &values).map_err(|e| PassError::failed(pass, name(), e.to_string()))?;
        }
        for (axis, order, units) in cuts.get(&v).into_iter().flatten() {
            t = permute(&t, *axis, order, *units).map_err(|e| PassError::failed(pass, name(), e.to_string()))?;
        }
        patch.set_initializer(v, t);
    }
    graph.apply(patch).map_err(|e| PassError::patch(pass, e))?;
    Ok(reports)
}

/// A new bias initializer holding `shift`, cut like the consumer's output channels (`cuts`
/// of its weight's output axis); with its name.
fn new_bias(pass: &str, graph: &Graph, patch: &mut Patch, cuts: &Cuts, c: &Consumer, shift: &[f64]) -> Result<(PValue, String), PassError> {
    let name = format!("{}_compensation", graph.value(c.weight).name);
    let values: Vec<f32> = shift.iter().map(|&x| x as f32).collect();
    let mut tensor = Tensor::from_f32(&[values.len() as u64], &values).map_err(|e| PassError::ir(pass, e))?;
    let out_axis = if c.axis == 0 { 1 } else { 0 };
    for (axis, order, units) in cuts.get(&c.weight).into_iter().flatten() {
        if *axis == out_axis {
            tensor = permute(&tensor, 0, order, *units).map_err(|e| PassError::ir(pass, e))?;
        }
    }
    Ok((patch.new_initializer(graph.node(c.node).region, &name, tensor), name))
}

/// The mean contribution of a consumer's cut input channels to each of its outputs:
/// `Σ_{c cut} mean_c · W[c, j]` (summed over a convolution's kernel window). `None` for a
/// weight that is not f32 or whose channels do not match the statistics.
fn consumer_shift(graph: &Graph, c: &Consumer, cut: &[usize], mean: &[f32]) -> Option<Vec<f64>> {
    let t = graph.constant(c.weight)?;
    if t.dtype() != DataType::Float {
        return None;
    }
    let data = t.to_f32().ok()?;
    let dims: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
    let (outer, size, inner): (usize, usize, usize) = (dims[..c.axis].iter().product(), dims[c.axis], dims[c.axis + 1..].iter().product());
    if mean.len() != size {
        return None;
    }
    // Input channels first (MatMul, Gemm without transB): the outputs are the inner axis;
    // otherwise (Gemm with transB, Conv) the outer one, and the inner one is summed.
    let mut shift = vec![0.0f64; if c.axis == 0 { inner } else { outer }];
    for &ch in cut {
        let m = mean[ch] as f64;
        for (o, s) in shift.iter_mut().enumerate() {
            *s += m * if c.axis == 0 { data[ch * inner + o] as f64 } else { data[(o * size + ch) * inner..(o * size + ch + 1) * inner].iter().map(|&x| x as f64).sum::<f64>() };
        }
    }
    Some(shift)
}

/// Where a consumer with `outputs` output channels takes a bias shift.
fn bias_site(graph: &Graph, uses: &compactor_ir::UseMap, c: &Consumer, outputs: usize) -> Option<BiasSite> {
    let node = graph.node(c.node);
    // A constant only this site uses, f32, one entry per output channel.
    let own = |v: ValueId| {
        let t = graph.constant(v)?;
        let single_use = uses.of(v).len() == 1 && matches!(graph.value(v).def, ValueDef::Initializer);
        (single_use && t.dtype() == DataType::Float && t.len() == outputs as u64 && t.dims().last() == Some(&(outputs as u64))).then_some(v)
    };
    match node.op_type.as_str() {
        "Gemm" | "Conv" => match node.input(2) {
            None => Some(BiasSite::NewInput),
            Some(b) => own(b).filter(|_| node.is("Gemm") || graph.constant(b).is_some_and(|t| t.dims().len() == 1)).map(BiasSite::Existing),
        },
        "MatMul" => {
            let out = node.output(0)?;
            let readers = uses.of(out);
            // A bias Add right after: shift its constant.
            if let [Use::Node { node: add, .. }] = readers
                && graph.node(*add).is("Add")
            {
                let other = graph.node(*add).inputs.iter().flatten().copied().find(|&v| v != out);
                if let Some(b) = other.and_then(own) {
                    return Some(BiasSite::Existing(b));
                }
            }
            // A graph output keeps its name: no Add is put behind it.
            (!readers.iter().any(|u| matches!(u, Use::Output { .. }))).then_some(BiasSite::NewAdd(out))
        }
        _ => None,
    }
}

impl Pass for PruneChannels {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let groups = ctx.analyses.get::<ChannelGroups>(graph);
        let ranker = PermuteChannels { score: self.score, seed: self.seed };
        let mut skipped = Vec::new();
        let mut candidates: Vec<(usize, &ChannelGroup, Vec<String>, Vec<String>)> = Vec::new();
        for (i, g) in groups.groups.iter().enumerate().filter(|(_, g)| g.is_movable()) {
            let names: Vec<String> = g.params.iter().map(|&(v, a)| format!("{}[{a}]", graph.value(v).name)).collect();
            let reducers: Vec<String> = g.reducers.iter().map(|&n| graph.node(n).label(n)).collect();
            let reason = if g.moves_in_heads() && !self.heads {
                Some(format!("moves in {} units of {} channels (heads): heads=true cuts whole heads", g.units, g.width / g.units))
            } else if !reducers.is_empty() && !self.allow_norms {
                Some(format!("{} normalises or reduces over it: a cut changes its statistics (allow_norms=true cuts it anyway)", reducers[0]))
            } else if g.params.iter().any(|&(v, _)| !matches!(graph.value(v).def, ValueDef::Initializer)) {
                Some("a Constant node holds one of its constants".into())
            } else {
                None
            };
            if let Some(reason) = reason {
                skipped.push(Skipped { params: names, reason });
                continue;
            }
            let notes = reducers.iter().map(|r| format!("{r} normalises or reduces over it: its statistics change")).collect();
            candidates.push((i, g, names, notes));
        }
        let compensate = self.compensate && ctx.calibrator.is_some();
        let wanted = Wanted { mean_abs: self.score == Score::Activation, mean: compensate, ..Default::default() };
        // Compensation asks only when there is calibration data: only the score can need it.
        let (consumers, stats) = calibrate(graph, ctx, &candidates.iter().map(|c| c.1).collect::<Vec<_>>(), wanted, Self::NAME, ACTIVATION_NEEDS)?;
        let mut plans = Vec::new();
        for ((i, g, names, notes), consumers) in candidates.into_iter().zip(&consumers) {
            let Some((order, scores)) = ranker.rank_units(graph, g, i, consumers, &stats)? else {
                skipped.push(Skipped { params: names, reason: format!("nothing score={:?} reads", self.score) });
                continue;
            };
            plans.push(Plan { group: g, consumers, order, scores, names, notes });
        }
        let stats = compensate.then_some(&stats);
        if !self.widths.is_empty() {
            return self.nested(graph, &plans, stats, skipped);
        }
        let kept: Vec<usize> = if self.threshold != 0.0 {
            self.kept_under_threshold(graph, &plans, self.threshold)
        } else {
            let shares = self.group_shares().map_err(|e| PassError::BadOption { pass: Self::NAME.into(), option: e.option, reason: e.reason })?;
            plans.iter().map(|p| self.kept_of(self.share_for(&shares, &p.names), p.group)).collect()
        };
        // Groups that keep every unit are left as they are.
        let (plans, kept): (Vec<Plan<'_>>, Vec<usize>) = plans.into_iter().zip(kept).filter(|(p, k)| *k < p.group.units as usize).unzip();
        if plans.is_empty() {
            return Ok(PassOutcome::unchanged("no channel group cut").with_details(serde_json::json!({ "groups": Vec::<GroupReport>::new(), "skipped": skipped })));
        }
        let reports = cut_groups(Self::NAME, graph, &plans, &kept, stats)?;
        let before: i64 = reports.iter().map(|r| r.width_before).sum();
        let after: usize = reports.iter().map(|r| r.width_after).sum();
        let compensated: usize = reports.iter().map(|r| r.compensation.len()).sum();
        let compensation = if compensated > 0 { format!(", {compensated} consumers' biases compensated") } else { String::new() };
        let mut details = serde_json::json!({ "groups": reports, "skipped": skipped });
        if self.compensate && !compensate {
            details["not_compensated"] = "no calibration data".into();
        }
        Ok(PassOutcome::changed(format!("cut {} channel groups from {before} to {after} channels{compensation}; {} groups left", reports.len(), skipped.len())).with_details(details))
    }
}

#[derive(Serialize)]
struct WidthReport {
    name: String,
    width: f64,
    groups: Vec<GroupReport>,
}

impl PruneChannels {
    /// `widths`: the graph itself gets every plan's full ordering (a permutation); each width
    /// is a copy cut to the first channels of that ordering, handed back as a variant.
    fn nested(&self, graph: &mut Graph, plans: &[Plan<'_>], stats: Option<&BTreeMap<ValueId, Stats>>, skipped: Vec<Skipped>) -> Result<PassOutcome, PassError> {
        let mut widths = self.widths.clone();
        widths.sort_by(f64::total_cmp);
        let mut variants = Vec::new();
        let mut reports = Vec::new();
        for &w in &widths {
            let mut variant = graph.clone();
            let kept: Vec<usize> = plans.iter().map(|p| self.kept_of(w, p.group)).collect();
            let groups = cut_groups(Self::NAME, &mut variant, plans, &kept, stats)?;
            reports.push(WidthReport { name: width_name(w), width: w, groups });
            variants.push((width_name(w), variant));
        }
        let full: Vec<usize> = plans.iter().map(|p| p.group.units as usize).collect();
        if !plans.is_empty() {
            cut_groups(Self::NAME, graph, plans, &full, None)?;
        }
        let names: Vec<&str> = reports.iter().map(|r| r.name.as_str()).collect();
        Ok(PassOutcome::changed(format!("ordered {} channel groups by saliency; nested widths {} from that order; {} groups left", plans.len(), names.join(", "), skipped.len()))
            .with_details(serde_json::json!({ "widths": reports, "skipped": skipped }))
            .with_variants(variants))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> Result<PruneChannels, OptionError> {
        let p: PruneChannels = serde_json::from_str(text).unwrap();
        p.validate().map(|()| p)
    }

    #[test]
    fn conflicting_options_are_rejected() {
        assert!(options(r#"{"keep": 0.5}"#).is_ok());
        assert!(options(r#"{"threshold": 0.3}"#).is_ok());
        assert!(options(r#"{}"#).is_ok());
        assert_eq!(options(r#"{"keep": 0.5, "threshold": 0.3}"#).unwrap_err().option, "threshold");
        assert_eq!(options(r#"{"widths": [0.5, 0.75], "keep": 0.5}"#).unwrap_err().option, "widths");
        assert_eq!(options(r#"{"widths": [0.5, 0.501]}"#).unwrap_err().option, "widths");
        assert_eq!(options(r#"{"widths": [1.5]}"#).unwrap_err().option, "widths");
        assert_eq!(options(r#"{"threshold": 0.3, "score": "random"}"#).unwrap_err().option, "threshold");
        assert_eq!(options(r#"{"threshold": 1.0}"#).unwrap_err().option, "threshold");
        assert_eq!(width_name(0.75), "w75");
        assert!(options(r#"{"groups": ["*attn*=0.5", "onnx::MatMul_1=1"]}"#).is_ok());
        for bad in [r#"{"groups": ["*attn*"]}"#, r#"{"groups": ["*attn*=1.5"]}"#, r#"{"groups": ["*attn*=half"]}"#, r#"{"groups": ["[=0.5"]}"#, r#"{"groups": ["*=0.5"], "threshold": 0.3}"#] {
            assert_eq!(options(bad).unwrap_err().option, "groups", "{bad}");
        }
    }
}
