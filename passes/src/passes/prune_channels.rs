//! Structured width pruning: in every movable coupling group, keep the most salient channels
//! (by the same scores as `permute-channels`) and cut the rest from every constant of the
//! group, so the layers themselves get narrower (a real FLOP cut, not a mask).
//!
//! Built for groups whose members all have the group's width (an FFN's hidden width, a CNN's
//! channels between convolutions). Groups that split into heads and groups a normalisation or
//! reduction reads (a cut changes its statistics) are left, with the reason.

use super::permute_channels::{PermuteChannels, Score, permute};
use crate::analysis::ChannelGroups;
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Graph, Patch, ValueDef};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PruneChannels {
    /// The share of each group's channels kept.
    pub keep: f64,
    /// How channels are ranked: magnitude, l1, bn-gamma, iscs or random.
    pub score: Score,
    /// Seed of score=random.
    pub seed: u64,
    /// Kept widths are multiples of this (kernels like multiples of 8).
    pub multiple: usize,
}

impl Default for PruneChannels {
    fn default() -> Self {
        PruneChannels { keep: 0.75, score: Score::Magnitude, seed: 0, multiple: 8 }
    }
}

impl PassDef for PruneChannels {
    const NAME: &'static str = "prune-channels";
    const SUMMARY: &'static str = "Cut the least salient channels of every movable coupling group (FFN widths, CNN channels), making the layers narrower";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if !(self.keep > 0.0 && self.keep <= 1.0) {
            return Err(OptionError::new("keep", format!("{} is not a share in (0, 1]", self.keep)));
        }
        if self.multiple == 0 {
            return Err(OptionError::new("multiple", "must be at least 1"));
        }
        Ok(())
    }
}

#[derive(Serialize)]
struct GroupReport {
    width_before: i64,
    width_after: usize,
    params: Vec<String>,
    /// The kept channels' scores: highest, lowest kept, and the highest cut.
    score_kept_max: f64,
    score_kept_min: f64,
    score_cut_max: f64,
}

#[derive(Serialize)]
struct Skipped {
    params: Vec<String>,
    reason: String,
}

impl Pass for PruneChannels {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let groups = ctx.analyses.get::<ChannelGroups>(graph);
        let ranker = PermuteChannels { score: self.score, seed: self.seed };
        let mut cuts: BTreeMap<compactor_ir::ValueId, Vec<(usize, Vec<usize>, usize)>> = BTreeMap::new();
        let mut patch = Patch::new();
        let (mut reports, mut skipped) = (Vec::new(), Vec::new());
        for (i, g) in groups.groups.iter().enumerate().filter(|(_, g)| g.is_movable()) {
            let names: Vec<String> = g.params.iter().map(|&(v, a)| format!("{}[{a}]", graph.value(v).name)).collect();
            let reason = if g.units != g.width {
                Some(format!("moves in {} units of {} channels (heads): head pruning is not built yet", g.units, g.width / g.units))
            } else if !g.reducers.is_empty() {
                Some(format!("{} normalises or reduces over it: a cut changes its statistics", graph.node(g.reducers[0]).label(g.reducers[0])))
            } else if g.params.iter().any(|&(v, _)| !matches!(graph.value(v).def, ValueDef::Initializer)) {
                Some("a Constant node holds one of its constants".into())
            } else {
                None
            };
            if let Some(reason) = reason {
                skipped.push(Skipped { params: names, reason });
                continue;
            }
            let width = g.width as usize;
            let kept = (((self.keep * width as f64) / self.multiple as f64).round() as usize * self.multiple).clamp(self.multiple.min(width), width);
            if kept == width {
                continue;
            }
            let Some((order, scores)) = ranker.rank_units(graph, g, i)? else {
                skipped.push(Skipped { params: names, reason: format!("nothing score={:?} reads", self.score) });
                continue;
            };
            let keep_order = order[..kept].to_vec();
            for &(v, axis) in &g.params {
                cuts.entry(v).or_default().push((axis, keep_order.clone(), width));
            }
            // The computed values of the group get narrower: their recorded types go.
            for &(v, _) in &g.values {
                patch.set_type(v, None);
            }
            reports.push(GroupReport { width_before: g.width, width_after: kept, params: names, score_kept_max: scores[0], score_kept_min: scores[kept - 1], score_cut_max: scores[kept] });
        }
        if cuts.is_empty() {
            return Ok(PassOutcome::unchanged("no channel group cut").with_details(serde_json::json!({ "groups": reports, "skipped": skipped })));
        }
        for (v, list) in &cuts {
            let mut t = graph.constant(*v).ok_or_else(|| PassError::failed(Self::NAME, graph.value(*v).name.clone(), "not a constant"))?;
            for (axis, order, units) in list {
                t = permute(&t, *axis, order, *units).map_err(|e| PassError::failed(Self::NAME, graph.value(*v).name.clone(), e.to_string()))?;
            }
            patch.set_initializer(*v, t);
        }
        graph.apply(patch).map_err(|e| PassError::patch(Self::NAME, e))?;
        let before: i64 = reports.iter().map(|r| r.width_before).sum();
        let after: usize = reports.iter().map(|r| r.width_after).sum();
        Ok(PassOutcome::changed(format!("cut {} channel groups from {before} to {after} channels; {} groups left", reports.len(), skipped.len()))
            .with_details(serde_json::json!({ "groups": reports, "skipped": skipped })))
    }
}
