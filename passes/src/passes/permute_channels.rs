//! Reorders the channels of every movable coupling group ([`crate::analysis::ChannelGroups`]) by
//! saliency, most salient first, without changing what the graph computes: every constant with
//! an axis in a group is permuted along it the same way (in whole units: heads, KV-head groups).
//! So the first channels are the ones a later cut keeps.

use crate::analysis::channels::{Consumer, Role};
use crate::analysis::{ChannelGroup, ChannelGroups};
use crate::calib::{self, Request, Stats, Wanted};
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Graph, Patch, Tensor, ValueDef, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Score {
    /// NIRVANA's magnitude: the sum of |w| over every weight entry a unit's channels touch (rows and columns of the producers and consumers, biases, norm scales).
    #[default]
    Magnitude,
    /// The L1 norm of each channel's filters (the producers' output channels).
    L1,
    /// Network Slimming's |gamma| of the BatchNormalization scales in the group.
    BnGamma,
    /// ISCS-style, from the producers' weights alone: variance x (|bias| + eps) x (1 - mean |correlation| with the other channels).
    Iscs,
    /// Wanda-style, from calibration data: for each layer reading the channels, mean |x| of each input channel times the L2 norm of the weight entries it multiplies, summed over the readers (needs --calibration).
    Activation,
    /// A seeded random order (the baseline a score must beat).
    Random,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PermuteChannels {
    /// How channels are ranked: magnitude, l1, bn-gamma, iscs, activation (needs calibration data) or random.
    pub score: Score,
    /// Seed of score=random.
    pub seed: u64,
}

impl PassDef for PermuteChannels {
    const NAME: &'static str = "permute-channels";
    const SUMMARY: &'static str = "Reorder the channels of every movable coupling group by saliency (function-preserving; run infer-shapes first on models without types)";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        Ok(())
    }
}

#[derive(Serialize)]
struct GroupReport {
    width: i64,
    units: i64,
    params: usize,
    /// The new order of the units (old unit index at each new position).
    order: Vec<usize>,
    /// The score of each unit, in the new order.
    scores: Vec<f64>,
}

fn fail(what: impl Into<String>, e: impl std::fmt::Display) -> PassError {
    PassError::failed(PermuteChannels::NAME, what, e.to_string())
}

/// The f32 values of a constant and its dims.
fn values(t: &Tensor) -> Option<(Vec<f32>, Vec<usize>)> {
    let dims = t.dims().iter().map(|&d| d as usize).collect();
    t.to_f32().ok().map(|v| (v, dims))
}

/// Each channel's entries of the group's constants with a role in `roles`: for channel `c`,
/// every entry whose index on the group's axis is `c`, over all those constants in order.
fn channel_rows(graph: &Graph, g: &ChannelGroup, roles: &[Role]) -> Result<Vec<Vec<f32>>, PassError> {
    let mut rows: Vec<Vec<f32>> = vec![Vec::new(); g.width as usize];
    for (&(v, axis), role) in g.params.iter().zip(&g.roles) {
        if !roles.contains(role) {
            continue;
        }
        let t = graph.constant(v).ok_or_else(|| fail(graph.value(v).name.clone(), "not a constant"))?;
        let Some((data, dims)) = values(&t) else { continue };
        let (outer, size, inner): (usize, usize, usize) = (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product());
        // A member narrower than the group (heads of a split) spreads over the width's channels.
        let spread = g.width as usize / size;
        for o in 0..outer {
            for c in 0..size {
                let row = &data[(o * size + c) * inner..(o * size + c + 1) * inner];
                rows[c * spread].extend_from_slice(row);
            }
        }
    }
    Ok(rows)
}

/// Per-channel scores summed per unit.
fn per_unit(g: &ChannelGroup, channel: &[f64]) -> Vec<f64> {
    let units = g.units as usize;
    let per = channel.len() / units;
    (0..units).map(|u| channel[u * per..(u + 1) * per].iter().sum()).collect()
}

fn l1(graph: &Graph, g: &ChannelGroup, roles: &[Role]) -> Result<Option<Vec<f64>>, PassError> {
    let rows = channel_rows(graph, g, roles)?;
    if rows.iter().all(|r| r.is_empty()) {
        return Ok(None);
    }
    Ok(Some(per_unit(g, &rows.iter().map(|r| r.iter().map(|x| x.abs() as f64).sum()).collect::<Vec<f64>>())))
}

/// ISCS's three statistics of each channel's own filter weights (the combination is this
/// project's reading of the paper's abstract: the exact formula is not published):
/// `var(w_c) · (|b_c| + ε) · (1 − mean_{c'≠c} |ρ(w_c, w_c')|)`.
fn iscs(graph: &Graph, g: &ChannelGroup) -> Result<Option<Vec<f64>>, PassError> {
    let rows = channel_rows(graph, g, &[Role::Producer])?;
    let len = rows.iter().map(Vec::len).max().unwrap_or(0);
    if len < 2 || rows.iter().any(|r| r.len() != len) {
        return Ok(None);
    }
    let biases = channel_rows(graph, g, &[Role::Bias])?;
    let bias: Vec<f64> = biases.iter().map(|r| r.iter().map(|x| x.abs() as f64).sum()).collect();
    let mean_bias = bias.iter().sum::<f64>() / bias.len() as f64;
    let channels = rows.len();
    // Centred, unit-norm rows: their Gram matrix holds the correlations.
    let mut variance = vec![0.0f64; channels];
    let normalized = faer::Mat::<f64>::from_fn(len, channels, |_, _| 0.0);
    let mut normalized = normalized;
    for (c, row) in rows.iter().enumerate() {
        let mean = row.iter().map(|&x| x as f64).sum::<f64>() / len as f64;
        let centred: Vec<f64> = row.iter().map(|&x| x as f64 - mean).collect();
        let norm = centred.iter().map(|x| x * x).sum::<f64>().sqrt();
        variance[c] = norm * norm / len as f64;
        for (i, x) in centred.iter().enumerate() {
            normalized[(i, c)] = if norm > 0.0 { x / norm } else { 0.0 };
        }
    }
    let mut correlation = faer::Mat::<f64>::zeros(channels, channels);
    faer::linalg::matmul::matmul(correlation.as_mut(), faer::Accum::Replace, normalized.transpose(), normalized.as_ref(), 1.0, faer::Par::Seq);
    let eps = if mean_bias > 0.0 { 1e-3 * mean_bias } else { 1.0 };
    let scores: Vec<f64> = (0..channels)
        .map(|c| {
            let mean_abs = (0..channels).filter(|&d| d != c).map(|d| correlation[(c, d)].abs()).sum::<f64>() / (channels - 1).max(1) as f64;
            variance[c] * (bias[c] + eps) * (1.0 - mean_abs)
        })
        .collect();
    Ok(Some(per_unit(g, &scores)))
}

/// Wanda's weight-times-activation saliency, per channel: for each consumer, mean |x_c| of the
/// activation it reads times the L2 norm of the weight entries channel `c` multiplies; summed
/// over the consumers. `None` when no consumer has statistics.
fn activation(graph: &Graph, g: &ChannelGroup, consumers: &[Consumer], stats: &BTreeMap<ValueId, Stats>) -> Result<Option<Vec<f64>>, PassError> {
    let width = g.width as usize;
    let mut scores = vec![0.0f64; width];
    let mut measured = false;
    for c in consumers {
        let Some(mean_abs) = stats.get(&c.input).and_then(|s| s.mean_abs.as_ref()) else { continue };
        let t = graph.constant(c.weight).ok_or_else(|| fail(graph.value(c.weight).name.clone(), "not a constant"))?;
        let Some((data, dims)) = values(&t) else { continue };
        let (outer, size, inner): (usize, usize, usize) = (dims[..c.axis].iter().product(), dims[c.axis], dims[c.axis + 1..].iter().product());
        if size != width || mean_abs.len() != width {
            continue;
        }
        let mut squares = vec![0.0f64; width];
        for o in 0..outer {
            for (ch, square) in squares.iter_mut().enumerate() {
                *square += data[(o * size + ch) * inner..(o * size + ch + 1) * inner].iter().map(|&x| x as f64 * x as f64).sum::<f64>();
            }
        }
        for (score, (square, &m)) in scores.iter_mut().zip(squares.iter().zip(mean_abs)) {
            *score += m as f64 * square.sqrt();
        }
        measured = true;
    }
    Ok(measured.then(|| per_unit(g, &scores)))
}

/// Calibration statistics per activation.
pub(crate) type ActivationStats = BTreeMap<ValueId, Stats>;

/// The groups' consumers (see [`ChannelGroup::consumers`]), with the calibration statistics
/// `wanted` of the activations they read; the pipeline's calibration data runs once.
pub(crate) fn calibrate(graph: &Graph, ctx: &mut PassCtx<'_, '_>, groups: &[&ChannelGroup], wanted: Wanted, pass: &str, why: &str) -> Result<(Vec<Vec<Consumer>>, ActivationStats), PassError> {
    let uses = graph.uses();
    let consumers: Vec<Vec<Consumer>> = groups.iter().map(|g| g.consumers(graph, &uses)).collect();
    let requests: Vec<Request> =
        groups.iter().zip(&consumers).flat_map(|(g, cs)| cs.iter().map(move |c| Request { row_scale: None, value: c.input, layout: c.layout.clone(), k: g.width as usize, wanted })).collect();
    let stats = calib::collect(graph, ctx, pass, why, &requests)?;
    Ok((consumers, stats))
}

/// Why score=activation needs calibration data (for the error without it).
pub(crate) const ACTIVATION_NEEDS: &str = "score=activation weighs channels by their calibration activations";

/// Per unit of `g`: the sum of |w| over every entry of the group's constants whose index on the
/// group's axis falls in the unit.
fn magnitude(graph: &Graph, g: &ChannelGroup) -> Result<Vec<f64>, PassError> {
    let units = g.units as usize;
    let mut scores = vec![0.0f64; units];
    for &(v, axis) in &g.params {
        let t = graph.constant(v).ok_or_else(|| fail(graph.value(v).name.clone(), "not a constant"))?;
        let Some((data, dims)) = values(&t) else { continue };
        let (outer, size, inner): (usize, usize, usize) = (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product());
        let per_unit = size / units;
        for o in 0..outer {
            for c in 0..size {
                let row = &data[(o * size + c) * inner..(o * size + c + 1) * inner];
                scores[c / per_unit] += row.iter().map(|x| x.abs() as f64).sum::<f64>();
            }
        }
    }
    Ok(scores)
}

/// A seeded shuffle of `0..n` (Fisher-Yates on a SplitMix64 stream).
fn random_order(n: usize, seed: u64) -> Vec<usize> {
    let mut state = seed ^ 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

/// `t` with `axis` in `units` units reordered: new unit `j` is old unit `order[j]`. `order`
/// may list fewer units than there are: the rest are cut.
pub(crate) fn permute(t: &Tensor, axis: usize, order: &[usize], units: usize) -> Result<Tensor, compactor_ir::IrError> {
    let dims: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
    let raw = t.raw_data()?;
    let element = raw.len() / dims.iter().product::<usize>().max(1);
    let (outer, size, inner): (usize, usize, usize) = (dims[..axis].iter().product(), dims[axis], dims[axis + 1..].iter().product());
    let unit = size / units;
    let run = unit * inner * element;
    let mut out = Vec::with_capacity(outer * order.len() * run);
    for o in 0..outer {
        for &u in order {
            let start = (o * size + u * unit) * inner * element;
            out.extend_from_slice(&raw[start..start + run]);
        }
    }
    let mut new_dims = t.dims().to_vec();
    new_dims[axis] = (order.len() * unit) as u64;
    Tensor::from_raw(t.dtype(), &new_dims, bytes::Bytes::from(out))
}

/// Units most salient first, and their scores in that order.
pub(crate) type Ranking = (Vec<usize>, Vec<f64>);

impl PermuteChannels {
    /// The units of group `g` (the `index`-th of the analysis) most salient first, with each
    /// unit's score in that order; `None` when the group has nothing the score reads.
    /// score=activation reads the statistics of `consumers`' inputs in `stats`.
    pub(crate) fn rank_units(&self, graph: &Graph, g: &ChannelGroup, index: usize, consumers: &[Consumer], stats: &BTreeMap<ValueId, Stats>) -> Result<Option<Ranking>, PassError> {
        let scores = match self.score {
            Score::Magnitude => Some(magnitude(graph, g)?),
            Score::Activation => activation(graph, g, consumers, stats)?,
            Score::L1 => l1(graph, g, &[Role::Producer])?,
            Score::BnGamma => l1(graph, g, &[Role::BatchNormScale])?,
            Score::Iscs => iscs(graph, g)?,
            Score::Random => Some(vec![0.0; g.units as usize]),
        };
        let Some(scores) = scores else { return Ok(None) };
        let order: Vec<usize> = match self.score {
            Score::Random => random_order(g.units as usize, self.seed.wrapping_add(index as u64)),
            _ => {
                let mut order: Vec<usize> = (0..g.units as usize).collect();
                // Descending score; ties keep the original order.
                order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
                order
            }
        };
        let ordered = order.iter().map(|&u| scores[u]).collect();
        Ok(Some((order, ordered)))
    }
}

impl Pass for PermuteChannels {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let groups = ctx.analyses.get::<ChannelGroups>(graph);
        // Constants held by Constant nodes cannot be rewritten in place: such a group stays.
        let movable: Vec<(usize, &ChannelGroup)> =
            groups.groups.iter().enumerate().filter(|(_, g)| g.is_movable() && g.params.iter().all(|&(v, _)| matches!(graph.value(v).def, ValueDef::Initializer))).collect();
        let wanted = Wanted { mean_abs: self.score == Score::Activation, ..Default::default() };
        let (consumers, stats) = calibrate(graph, ctx, &movable.iter().map(|&(_, g)| g).collect::<Vec<_>>(), wanted, Self::NAME, ACTIVATION_NEEDS)?;
        // Every permutation of every constant, applied together (a weight has axes in two groups).
        let mut changes: BTreeMap<ValueId, Vec<(usize, Vec<usize>)>> = BTreeMap::new();
        let mut reports = Vec::new();
        let mut skipped = 0;
        for (&(i, g), consumers) in movable.iter().zip(&consumers) {
            let Some((order, scores)) = self.rank_units(graph, g, i, consumers, &stats)? else {
                // A group without what the score reads (no BatchNorm for bn-gamma) keeps its order.
                skipped += 1;
                continue;
            };
            for &(v, axis) in &g.params {
                changes.entry(v).or_default().push((axis, order.clone()));
            }
            reports.push(GroupReport { width: g.width, units: g.units, params: g.params.len(), scores, order });
        }
        if changes.is_empty() {
            let summary = if skipped > 0 { format!("{skipped} movable channel groups have nothing score={:?} reads; nothing reordered", self.score) } else { "no movable channel groups".to_string() };
            return Ok(PassOutcome::unchanged(summary).with_details(serde_json::json!({ "groups": reports })));
        }
        let mut patch = Patch::new();
        for (v, perms) in &changes {
            let mut t = graph.constant(*v).ok_or_else(|| fail(graph.value(*v).name.clone(), "not a constant"))?;
            for (axis, order) in perms {
                t = permute(&t, *axis, order, order.len()).map_err(|e| fail(graph.value(*v).name.clone(), e))?;
            }
            patch.set_initializer(*v, t);
        }
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        let moved = reports.iter().filter(|r| r.order.iter().enumerate().any(|(j, &u)| j != u)).count();
        let unscored = if skipped > 0 { format!("; {skipped} groups have nothing score={:?} reads and keep their order", self.score) } else { String::new() };
        Ok(PassOutcome::changed(format!("reordered {moved} of {} movable channel groups ({} constants){unscored}", reports.len(), changes.len()))
            .with_details(serde_json::json!({ "groups": reports })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permuting_moves_whole_units_along_one_axis() {
        // [2, 4] with units of 2 on axis 1: order [1, 0] swaps the column pairs.
        let t = Tensor::from_f32(&[2, 4], &[0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0]).unwrap();
        assert_eq!(permute(&t, 1, &[1, 0], 2).unwrap().to_f32().unwrap(), [2.0, 3.0, 0.0, 1.0, 6.0, 7.0, 4.0, 5.0]);
        assert_eq!(permute(&t, 0, &[1, 0], 2).unwrap().to_f32().unwrap(), [4.0, 5.0, 6.0, 7.0, 0.0, 1.0, 2.0, 3.0]);
        // Cutting: the kept units in order, the axis shorter.
        let cut = permute(&t, 1, &[3, 1], 4).unwrap();
        assert_eq!(cut.dims(), [2, 2]);
        assert_eq!(cut.to_f32().unwrap(), [3.0, 1.0, 7.0, 5.0]);
        let order = random_order(10, 3);
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        assert_eq!(order, random_order(10, 3));
    }
}
