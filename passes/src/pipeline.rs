//! Running a list of passes over a model, with measurements, verification and dumps.

use crate::pass::{Calibrator, ConstantEvaluator, Pass, PassCtx, PassError, PassKind, Progress, Silent};
use crate::registry::find_pass;
use crate::spec::{self, PassSpec};
use compactor_ir::{Graph, Model, verify};
use serde::Serialize;
use std::time::Instant;

/// A parsed, validated list of passes, ready to run.
pub struct Pipeline {
    steps: Vec<Step>,
}

struct Step {
    name: &'static str,
    kind: PassKind,
    /// The options in effect (defaults filled in), for reports.
    options: serde_json::Value,
    pass: Box<dyn Pass>,
}

/// Called with (pass name, pass index, the model's text form) after the passes in `dump_after`.
pub type DumpHook<'a> = &'a mut dyn FnMut(&str, usize, &str);
/// Called before each pass with (index, count, name).
pub type PassStartHook<'a> = &'a mut dyn FnMut(usize, usize, &str);

/// How to run a pipeline, and what it may use.
pub struct RunOptions<'a> {
    /// Verify the graph after every pass (it is always verified after the last one).
    pub verify_each: bool,
    /// Pass names after which to hand the text form of the model to `on_dump`.
    pub dump_after: Vec<String>,
    /// Stop after the first pass with this name.
    pub stop_after: Option<String>,
    pub progress: &'a dyn Progress,
    pub evaluator: Option<&'a dyn ConstantEvaluator>,
    pub calibrator: Option<&'a mut dyn Calibrator>,
    pub on_dump: Option<DumpHook<'a>>,
    pub on_pass_start: Option<PassStartHook<'a>>,
}

impl Default for RunOptions<'_> {
    fn default() -> Self {
        RunOptions { verify_each: false, dump_after: Vec::new(), stop_after: None, progress: &Silent, evaluator: None, calibrator: None, on_dump: None, on_pass_start: None }
    }
}

/// Size measurements of a graph.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct GraphStats {
    pub nodes: usize,
    /// Elements of all weight tensors (initializers and Constant nodes).
    pub parameters: u64,
    pub weight_bytes: u64,
}

impl GraphStats {
    pub fn of(graph: &Graph) -> Self {
        let weights = compactor_ir::summary::weights(graph);
        GraphStats { nodes: graph.all_nodes().len(), parameters: weights.iter().map(|(_, t)| t.len()).sum(), weight_bytes: weights.iter().map(|(_, t)| t.data_bytes()).sum() }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PassReport {
    pub pass: String,
    pub kind: PassKind,
    pub options: serde_json::Value,
    pub changed: bool,
    pub summary: String,
    pub details: serde_json::Value,
    pub before: GraphStats,
    pub after: GraphStats,
    pub seconds: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineReport {
    pub passes: Vec<PassReport>,
    pub before: GraphStats,
    pub after: GraphStats,
    pub seconds: f64,
    /// Set when `stop_after` ended the pipeline early.
    pub stopped_after: Option<String>,
    /// Further models a pass produced (nested widths), each run through the passes after it.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub variants: Vec<Variant>,
}

/// A named further result of a pass (see [`crate::PassOutcome::variants`]) after the rest of
/// the pipeline ran on it.
#[derive(Clone, Debug, Serialize)]
pub struct Variant {
    pub name: String,
    /// The passes after the one that produced it.
    pub passes: Vec<PassReport>,
    pub after: GraphStats,
    #[serde(skip)]
    pub model: Model,
}

impl Pipeline {
    /// Parses a command-line spec (`fold-constants,quantize(bits=4)`), checking every pass and option.
    pub fn parse(spec: &str) -> Result<Self, PassError> {
        Self::from_specs(spec::parse(spec)?)
    }

    /// Parses a TOML pipeline file's text.
    pub fn from_toml(text: &str) -> Result<Self, PassError> {
        Self::from_specs(spec::parse_toml(text)?)
    }

    pub fn from_specs(specs: Vec<PassSpec>) -> Result<Self, PassError> {
        let mut steps = Vec::with_capacity(specs.len());
        for spec in specs {
            let info = find_pass(&spec.name).ok_or_else(|| PassError::UnknownPass { name: spec.name.clone(), valid: crate::registry::valid_names() })?;
            let pass = info.build(&spec.options)?;
            let mut options = info.defaults();
            if let Some(map) = options.as_object_mut() {
                map.extend(spec.options.clone());
            }
            steps.push(Step { name: info.name, kind: info.kind, options, pass });
        }
        Ok(Pipeline { steps })
    }

    pub fn pass_names(&self) -> Vec<&'static str> {
        self.steps.iter().map(|s| s.name).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs every pass with default options (no evaluator, no calibration data).
    pub fn run(&self, model: &mut Model) -> Result<PipelineReport, PassError> {
        self.run_with(model, RunOptions::default())
    }

    pub fn run_with(&self, model: &mut Model, mut options: RunOptions<'_>) -> Result<PipelineReport, PassError> {
        if let Some(stop) = &options.stop_after
            && !self.steps.iter().any(|s| s.name == stop)
        {
            return Err(PassError::Spec(format!("--stop-after '{stop}': no such pass in this pipeline ({})", self.pass_names().join(", "))));
        }
        for dump in &options.dump_after {
            if !self.steps.iter().any(|s| s.name == dump) {
                return Err(PassError::Spec(format!("--dump-after '{dump}': no such pass in this pipeline ({})", self.pass_names().join(", "))));
            }
        }
        let start = Instant::now();
        let initial = GraphStats::of(&model.graph);
        let run = self.run_steps(0, model, initial, &mut options, true)?;
        if self.steps.is_empty() {
            verify(model).map_err(|problems| PassError::Invalid { pass: "(none)".into(), problems })?;
        }
        let after = run.reports.last().map(|r| r.after).unwrap_or(initial);
        Ok(PipelineReport { passes: run.reports, before: initial, after, seconds: start.elapsed().as_secs_f64(), stopped_after: run.stopped_after, variants: run.variants })
    }

    /// Runs the steps from `first` on; a pass's variants run the steps after it (without the
    /// hooks: dumps and progress lines are the main model's).
    fn run_steps(&self, first: usize, model: &mut Model, initial: GraphStats, options: &mut RunOptions<'_>, hooks: bool) -> Result<Run, PassError> {
        let mut run = Run::default();
        let mut analyses = crate::analysis::Analyses::new();
        for (i, step) in self.steps.iter().enumerate().skip(first) {
            if hooks && let Some(f) = options.on_pass_start.as_mut() {
                f(i, self.steps.len(), step.name);
            }
            let before = run.reports.last().map(|r: &PassReport| r.after).unwrap_or(initial);
            let t = Instant::now();
            let mut outcome = {
                let mut ctx = PassCtx {
                    opsets: &mut model.opset_import,
                    ir_version: &mut model.ir_version,
                    progress: options.progress,
                    evaluator: options.evaluator,
                    calibrator: options.calibrator.as_deref_mut(),
                    analyses: &mut analyses,
                };
                match step.kind {
                    PassKind::Analysis => step.pass.analyze(&model.graph, &mut ctx)?,
                    PassKind::Transform => step.pass.run(&mut model.graph, &mut ctx)?,
                }
            };
            let seconds = t.elapsed().as_secs_f64();
            if step.kind == PassKind::Analysis && (outcome.changed || !outcome.variants.is_empty()) {
                return Err(PassError::failed(step.name, "graph", "an analysis pass reported a change"));
            }
            let stop = options.stop_after.as_deref() == Some(step.name);
            let last = i + 1 == self.steps.len() || stop;
            if options.verify_each || last {
                verify(model).map_err(|problems| PassError::Invalid { pass: step.name.into(), problems })?;
            }
            let after = if outcome.changed { GraphStats::of(&model.graph) } else { before };
            if hooks
                && options.dump_after.iter().any(|d| d == step.name)
                && let Some(f) = options.on_dump.as_mut()
            {
                f(step.name, i, &compactor_ir::model_to_text(model));
            }
            let produced = std::mem::take(&mut outcome.variants);
            run.reports.push(PassReport {
                pass: step.name.into(),
                kind: step.kind,
                options: step.options.clone(),
                changed: outcome.changed,
                summary: outcome.summary,
                details: outcome.details,
                before,
                after,
                seconds,
            });
            for (name, graph) in produced {
                // The variant shares the model's opsets and metadata as they are now.
                let main = std::mem::replace(&mut model.graph, graph);
                let mut variant = model.clone();
                model.graph = main;
                verify(&variant).map_err(|problems| PassError::Invalid { pass: format!("{} ({name})", step.name), problems })?;
                let stats = GraphStats::of(&variant.graph);
                let tail = if last { Run::default() } else { self.run_steps(i + 1, &mut variant, stats, options, false)? };
                let after = tail.reports.last().map(|r| r.after).unwrap_or(stats);
                run.variants.push(Variant { name: name.clone(), passes: tail.reports, after, model: variant });
                run.variants.extend(tail.variants.into_iter().map(|v| Variant { name: format!("{name}.{}", v.name), ..v }));
            }
            if stop {
                run.stopped_after = Some(step.name.to_string());
                break;
            }
        }
        Ok(run)
    }
}

/// What running a stretch of the steps gave.
#[derive(Default)]
struct Run {
    reports: Vec<PassReport>,
    stopped_after: Option<String>,
    variants: Vec<Variant>,
}
