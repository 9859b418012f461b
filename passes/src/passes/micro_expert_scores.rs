//! Reports the micro-expert scores of every FFN layer ([`crate::analysis::experts`]): how
//! much each intermediate neuron contributes, by CAMERA's score or a baseline
//! ([`crate::micro_experts`]). Statistics come from one pass of the calibration data through
//! the runtime's capture (sums and maxima per neuron: memory does not grow with the tokens).

use crate::analysis::experts::{ExpertLayer, FfnExperts};
use crate::analysis::{LinearLayer, LinearLayers};
use crate::calib::{self, Request, RowLayout, Stats, Wanted};
use crate::micro_experts::{ExpertWeights, NeuronStats, Score, Weight, neuron_scores};
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use compactor_ir::{Graph, ValueId};
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

/// Scores of every expert of `layer` (one vector per expert), from the calibration statistics
/// `stats` (see [`measure`]).
pub(crate) fn layer_scores(pass: &str, graph: &Graph, layers: &LinearLayers, layer: &ExpertLayer, score: Score, rho: f64, stats: &BTreeMap<ValueId, Stats>) -> Result<Vec<Vec<f64>>, PassError> {
    let mut out = Vec::new();
    for e in &layer.experts {
        let (up, down) = (&layers[e.up], &layers[e.down]);
        let gate = e.gate.map(|g| &layers[g]);
        let (up_data, down_data) = (weight_values(pass, graph, up)?, weight_values(pass, graph, down)?);
        let gate_data = gate.map(|g| weight_values(pass, graph, g)).transpose()?;
        let weights = ExpertWeights { gate: gate.zip(gate_data.as_deref()).map(|(l, d)| weight(l, d)), up: weight(up, &up_data), down: weight(down, &down_data) };
        let neuron_stats = match stats.get(&e.hidden) {
            Some(hidden) => NeuronStats::from_calibration(hidden, stats.get(&layer.input)),
            None => None,
        };
        let scores = neuron_scores(score, rho, &weights, neuron_stats.as_ref()).map_err(|reason| PassError::failed(pass, down.label(graph), reason))?;
        out.push(scores);
    }
    Ok(out)
}

/// A layer's weight values as the `[K, N]` matrix it multiplies by.
fn weight<'a>(layer: &LinearLayer, data: &'a [f32]) -> Weight<'a> {
    Weight { data, k: layer.in_features as usize, n: layer.out_features as usize, transposed: layer.weight.transposed }
}

/// Runs the calibration data once and returns the statistics `score` needs for `layers`:
/// mean square and max |x| of each expert's down-projection input, and (for `wanda`) the mean
/// square of the FFN input. Nothing is measured for `magnitude`.
pub(crate) fn measure(graph: &Graph, ctx: &mut PassCtx<'_, '_>, pass: &str, layers: &[&ExpertLayer], score: Score, mean: bool) -> Result<BTreeMap<ValueId, Stats>, PassError> {
    if !score.needs_data() && !mean {
        return Ok(BTreeMap::new());
    }
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
    calib::collect(graph, ctx, pass, SCORE_NEEDS, &requests)
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
            let experts = l
                .experts
                .iter()
                .zip(scores)
                .map(|(e, s)| {
                    let mut sorted = s.clone();
                    sorted.sort_by(f64::total_cmp);
                    ExpertReport {
                        down: layers[e.down].label(graph),
                        width: e.width,
                        min: sorted.first().copied().unwrap_or(0.0),
                        median: sorted.get(sorted.len() / 2).copied().unwrap_or(0.0),
                        max: sorted.last().copied().unwrap_or(0.0),
                        scores: self.vectors.then_some(s),
                    }
                })
                .collect();
            reports.push(LayerReport { block: l.block, experts });
        }
        let neurons: usize = experts.iter().flat_map(|l| &l.experts).map(|e| e.width).sum();
        Ok(PassOutcome::unchanged(format!("scored {neurons} micro-experts in {} FFN layers (score={:?})", reports.len(), self.score)).with_details(serde_json::json!({ "layers": reports })))
    }
}
