//! Reports the channel coupling groups ([`crate::analysis::ChannelGroups`]): which weights'
//! axes move together, in what units, and what pins the groups that cannot move.

use crate::analysis::ChannelGroups;
use crate::pass::{Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::Graph;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelGroupsPass {}

impl PassDef for ChannelGroupsPass {
    const NAME: &'static str = "channel-groups";
    const SUMMARY: &'static str = "Report channel coupling groups: the weight axes that must be permuted or pruned together (run infer-shapes first on models without types)";
    const KIND: PassKind = PassKind::Analysis;
}

#[derive(Serialize)]
struct GroupReport {
    width: i64,
    units: i64,
    movable: bool,
    /// `weight[axis]` of every constant in the group.
    params: Vec<String>,
    /// Nodes that reduce or normalise over the group (exact under permutation, not under a cut).
    reducers: Vec<String>,
    pinned: Vec<String>,
}

impl Pass for ChannelGroupsPass {
    fn analyze(&self, graph: &Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let groups = ctx.analyses.get::<ChannelGroups>(graph);
        let reports: Vec<GroupReport> = groups
            .groups
            .iter()
            .map(|g| GroupReport {
                width: g.width,
                units: g.units,
                movable: g.is_movable(),
                params: g.params.iter().map(|&(v, a)| format!("{}[{a}]", graph.value(v).name)).collect(),
                reducers: g.reducers.iter().map(|&n| graph.node(n).label(n)).collect(),
                pinned: g.pinned.clone(),
            })
            .collect();
        let movable = reports.iter().filter(|g| g.movable).count();
        Ok(PassOutcome::unchanged(format!("{} channel groups, {movable} movable", reports.len())).with_details(serde_json::json!({ "groups": reports })))
    }
}
