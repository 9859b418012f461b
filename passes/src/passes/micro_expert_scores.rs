//! Reports the micro-expert scores of every FFN layer ([`crate::analysis::experts`]): how
//! much each intermediate neuron contributes, by CAMERA's score or a baseline
//! ([`crate::micro_experts`]). Statistics come from one pass of the calibration data through
//! the runtime's capture (sums and maxima per neuron: memory does not grow with the tokens).

use crate::analysis::experts::{ExpertLayer, FfnExperts, MoeOp};
use crate::analysis::{LinearLayer, LinearLayers};
use crate::calib::{self, Joint, Request, RowLayout, Stats, Wanted};
use crate::micro_experts::moe_op::{MoeSums, MoeWeights};
use crate::micro_experts::{ExpertWeights, NeuronStats, Score, Weight, neuron_scores, sums_of_squares};
use crate::pass::{Activation, OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Graph, NodeId, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MicroExpertScores {
    /// camera, magnitude (no data), activation or wanda.
    pub score: Score,
    /// CAMERA's weight of the largest activation against the sum (reduce_ratio).
    pub rho: f64,
    /// Put every neuron's score in the report, not only each expert's summary.
    pub vectors: bool,
}

impl Default for MicroExpertScores {
    fn default() -> Self {
        MicroExpertScores { score: Score::Camera, rho: 0.9, vectors: false }
    }
}

impl PassDef for MicroExpertScores {
    const NAME: &'static str = "micro-expert-scores";
    const SUMMARY: &'static str = "Report how much each FFN neuron (micro-expert) contributes: CAMERA's score or magnitude/activation/wanda";
    const KIND: PassKind = PassKind::Analysis;

    fn validate(&self) -> Result<(), OptionError> {
        validate_rho(self.rho)
    }
}

pub(crate) fn validate_rho(rho: f64) -> Result<(), OptionError> {
    if !(0.0..=1.0).contains(&rho) {
        return Err(OptionError::new("rho", format!("{rho} is not in [0, 1]")));
    }
    Ok(())
}

/// Why a data-driven score needs calibration data (for the error without it).
pub(crate) const SCORE_NEEDS: &str = "micro-expert scores other than magnitude weigh neurons by their calibration activations";

/// The f32 values of a layer's weight, as [`Weight`] reads them.
pub(crate) fn weight_values(pass: &str, graph: &Graph, layer: &LinearLayer) -> Result<Vec<f32>, PassError> {
    layer.weight.tensor.to_f32().map_err(|e| PassError::failed(pass, graph.value(layer.weight.value).name.clone(), e.to_string()))
}

/// A MoE node's expert weights read into memory (f32 values of its initializers).
pub(crate) struct LoadedMoe {
    fc1: Vec<f32>,
    fc1_bias: Option<Vec<f32>>,
    fc2: Vec<f32>,
}

impl LoadedMoe {
    pub(crate) fn load(pass: &str, graph: &Graph, op: &MoeOp) -> Result<LoadedMoe, PassError> {
        let values = |v: ValueId| {
            let value = graph.value(v);
            value.initializer.as_ref().expect("the analysis found an initializer").to_f32().map_err(|e| PassError::failed(pass, value.name.clone(), e.to_string()))
        };
        Ok(LoadedMoe { fc1: values(op.fc1)?, fc1_bias: op.fc1_bias.map(values).transpose()?, fc2: values(op.fc2)? })
    }

    pub(crate) fn view<'a>(&'a self, op: &MoeOp) -> MoeWeights<'a> {
        MoeWeights { attrs: op.attrs, experts: op.experts, width: op.width, hidden: op.hidden, fc1: &self.fc1, fc1_bias: self.fc1_bias.as_deref(), fc2: &self.fc2 }
    }
}

/// Scores of every expert of `layer` (one vector per expert: the linear experts, then the MoE
/// node's), from the calibration statistics (see [`measure`]).
pub(crate) fn layer_scores(pass: &str, graph: &Graph, layers: &LinearLayers, layer: &ExpertLayer, score: Score, rho: f64, measured: &Measured) -> Result<Vec<Vec<f64>>, PassError> {
    let stats = &measured.stats;
    let input_totals = || stats.get(&layer.input).and_then(sums_of_squares);
    let mut out = Vec::new();
    for e in &layer.experts {
        let (up, down) = (&layers[e.up], &layers[e.down]);
        let gate = e.gate.map(|g| &layers[g]);
        let (up_data, down_data) = (weight_values(pass, graph, up)?, weight_values(pass, graph, down)?);
        let gate_data = gate.map(|g| weight_values(pass, graph, g)).transpose()?;
        let weights = ExpertWeights { gate: gate.zip(gate_data.as_deref()).map(|(l, d)| weight(l, d)), up: weight(up, &up_data), down: weight(down, &down_data) };
        let neuron_stats = stats.get(&e.hidden).and_then(|hidden| NeuronStats::from_calibration(hidden, input_totals()));
        let scores = neuron_scores(score, rho, &weights, neuron_stats.as_ref()).map_err(|reason| PassError::failed(pass, down.label(graph), reason))?;
        out.push(scores);
    }
    if let Some(op) = &layer.moe_op {
        let measured_op = measured.moe.get(&op.node).ok_or_else(|| PassError::failed(pass, graph.node(op.node).label(op.node), "its weights were not read"))?;
        let weights = measured_op.weights.view(op);
        for e in 0..op.experts {
            let rows = weights.expert_rows(e);
            let neuron_stats = measured_op.sums.as_ref().map(|s| s.neuron_stats(e, input_totals()));
            let scores = neuron_scores(score, rho, &weights.expert(e, &rows), neuron_stats.as_ref())
                .map_err(|reason| PassError::failed(pass, format!("{} expert {e}", graph.node(op.node).label(op.node)), reason))?;
            out.push(scores);
        }
    }
    Ok(out)
}

/// A layer's weight values as the `[K, N]` matrix it multiplies by.
fn weight<'a>(layer: &LinearLayer, data: &'a [f32]) -> Weight<'a> {
    Weight { data, k: layer.in_features as usize, n: layer.out_features as usize, transposed: layer.weight.transposed }
}

/// What one calibration run measured for the micro-expert scores.
#[derive(Default)]
pub(crate) struct Measured {
    /// Per activation (an expert's down-projection input, a layer's input).
    pub stats: BTreeMap<ValueId, Stats>,
    /// Per MoE node, its weights (read once, for the statistics, the scores and a cut) and
    /// its experts' neuron sums (none for `magnitude`).
    pub moe: BTreeMap<NodeId, MeasuredMoe>,
}

pub(crate) struct MeasuredMoe {
    pub weights: LoadedMoe,
    pub sums: Option<MoeSums>,
}

/// Runs the calibration data once and returns the statistics `score` needs for `layers`:
/// mean square and max |x| of each expert's down-projection input (a MoE node's computed from
/// its captured input and router logits), and (for `wanda`) the mean square of the FFN input.
/// Nothing is measured for `magnitude`.
pub(crate) fn measure(graph: &Graph, ctx: &mut PassCtx<'_, '_>, pass: &str, layers: &[&ExpertLayer], score: Score, mean: bool) -> Result<Measured, PassError> {
    let ops: Vec<&MoeOp> = layers.iter().filter_map(|l| l.moe_op.as_ref()).collect();
    let loaded = ops.iter().map(|op| LoadedMoe::load(pass, graph, op)).collect::<Result<Vec<_>, _>>()?;
    let mut requests = Vec::new();
    for l in layers {
        for e in &l.experts {
            // The routing weight scales the neuron's contribution (CAMERA's φ = g(x)·act·up).
            // Compensation adds the mean the down projection reads to its bias, which a routed
            // expert's weight would then scale: routed experts are not compensated.
            let mean = mean && e.routing.is_none();
            requests.push(Request {
                row_scale: e.routing,
                value: e.hidden,
                layout: RowLayout::LastAxis,
                k: e.width,
                wanted: Wanted { mean_square: score.needs_data(), max_abs: score.needs_data(), mean, ..Default::default() },
            });
        }
        if score == Score::Wanda {
            requests.push(Request { row_scale: None, value: l.input, layout: RowLayout::LastAxis, k: l.input_width, wanted: Wanted { mean_square: true, ..Default::default() } });
        }
    }
    // A MoE node's neuron statistics, computed from its captured input and router logits
    // (when the score reads activations).
    let joint_ops: &[&MoeOp] = if score.needs_data() { &ops } else { &[] };
    let mut sums = vec![MoeSums::default(); joint_ops.len()];
    let stats = {
        let weights: Vec<MoeWeights<'_>> = joint_ops.iter().zip(&loaded).map(|(op, l)| l.view(op)).collect();
        let mut joints: Vec<Joint<'_>> = sums
            .iter_mut()
            .zip(&weights)
            .zip(joint_ops)
            .map(|((sums, w), op)| Joint { values: vec![op.input, op.router], visit: Box::new(move |a: &[Activation<'_>]| w.accumulate(a[0].data, a[1].data, sums)) })
            .collect();
        // Nothing to measure (magnitude, no compensation): no calibration runs.
        calib::collect_with(graph, ctx, pass, SCORE_NEEDS, &requests, &mut joints)?
    };
    let mut sums = sums.into_iter();
    let moe = ops.iter().zip(loaded).map(|(op, weights)| (op.node, MeasuredMoe { weights, sums: sums.next() })).collect();
    Ok(Measured { stats, moe })
}

#[derive(Serialize)]
struct ExpertReport {
    down: String,
    width: usize,
    min: f64,
    median: f64,
    max: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    scores: Option<Vec<f64>>,
}

#[derive(Serialize)]
struct LayerReport {
    block: usize,
    experts: Vec<ExpertReport>,
}

impl Pass for MicroExpertScores {
    fn analyze(&self, graph: &Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let experts = ctx.analyses.get::<FfnExperts>(graph);
        let layers = ctx.analyses.get::<LinearLayers>(graph);
        let all: Vec<&ExpertLayer> = experts.iter().collect();
        let stats = measure(graph, ctx, Self::NAME, &all, self.score, false)?;
        let mut reports = Vec::new();
        for l in experts.iter() {
            let scores = layer_scores(Self::NAME, graph, &layers, l, self.score, self.rho, &stats)?;
            // Each expert by its down projection, or by its MoE node and index.
            let names =
                l.experts.iter().map(|e| layers[e.down].label(graph)).chain(l.moe_op.iter().flat_map(|op| (0..op.experts).map(move |e| format!("{} expert {e}", graph.node(op.node).label(op.node)))));
            let experts = names
                .zip(scores)
                .map(|(down, s)| {
                    let mut sorted = s.clone();
                    sorted.sort_by(f64::total_cmp);
                    ExpertReport {
                        down,
                        width: s.len(),
                        min: sorted.first().copied().unwrap_or(0.0),
                        median: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
                        max: sorted.last().copied().unwrap_or(0.0),
                        scores: self.vectors.then_some(s),
                    }
                })
                .collect();
            reports.push(LayerReport { block: l.block, experts });
        }
        let neurons: usize = reports.iter().flat_map(|l| &l.experts).map(|e| e.width).sum();
        Ok(PassOutcome::unchanged(format!("scored {neurons} micro-experts in {} FFN layers (score={:?})", reports.len(), self.score)).with_details(serde_json::json!({ "layers": reports })))
    }
}
