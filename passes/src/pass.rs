//! The `Pass` trait and what a pass gets to work with.

use compactor_ir::model::OpsetImport;
use compactor_ir::{Graph, Model, Node, Tensor, ValueId};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A graph analysis or transformation.
///
/// A pass is a small struct whose fields are its options; [`PassDef`] gives its name and
/// description. `run` reads or rewrites the graph and says what it did.
pub trait Pass: Send + Sync {
    /// A transform: edits the graph (through patches). Analysis passes implement
    /// [`Pass::analyze`] instead; running one calls it.
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        self.analyze(graph, ctx)
    }

    /// An analysis ([`PassKind::Analysis`]): reads the graph and reports, with no way to change it.
    fn analyze(&self, _graph: &Graph, _ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        Err(PassError::failed("pass", "graph", "a transform pass cannot run on a read-only graph"))
    }
}

/// What the registry needs to know about a pass type: its name, its one-line description,
/// whether it changes the graph, and its options (the struct's serde fields, with defaults).
pub trait PassDef: Pass + Default + Serialize + DeserializeOwned + schemars::JsonSchema + 'static {
    const NAME: &'static str;
    const SUMMARY: &'static str;
    const KIND: PassKind;

    /// Checks option values beyond their types (ranges, combinations).
    fn validate(&self) -> Result<(), OptionError> {
        Ok(())
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PassKind {
    /// Reports on the graph; never changes it.
    Analysis,
    Transform,
}

/// A bad option value, found by [`PassDef::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionError {
    pub option: String,
    pub reason: String,
}

impl OptionError {
    pub fn new(option: &str, reason: impl Into<String>) -> Self {
        OptionError { option: option.to_string(), reason: reason.into() }
    }
}

/// What a pass reports about its run. The pipeline adds measurements before and after.
#[derive(Clone, Debug, Serialize)]
pub struct PassOutcome {
    pub changed: bool,
    /// One line for people: "folded 12 nodes into 9 initializers".
    pub summary: String,
    /// Pass-specific details for machines (per-layer numbers, lists of matches).
    pub details: serde_json::Value,
    /// Further results besides the graph (nested widths), each named: the pipeline runs its
    /// remaining passes on each of them too.
    #[serde(skip)]
    pub variants: Vec<(String, Graph)>,
}

impl PassOutcome {
    pub fn changed(summary: impl Into<String>) -> Self {
        PassOutcome { changed: true, summary: summary.into(), details: serde_json::Value::Null, variants: Vec::new() }
    }

    pub fn unchanged(summary: impl Into<String>) -> Self {
        PassOutcome { changed: false, summary: summary.into(), details: serde_json::Value::Null, variants: Vec::new() }
    }

    /// `changed` if `count` > 0.
    pub fn counted(count: usize, summary: impl Into<String>) -> Self {
        PassOutcome { changed: count > 0, summary: summary.into(), details: serde_json::Value::Null, variants: Vec::new() }
    }

    pub fn with_details(mut self, details: impl Serialize) -> Self {
        self.details = serde_json::to_value(details).unwrap_or(serde_json::Value::Null);
        self
    }

    pub fn with_variants(mut self, variants: Vec<(String, Graph)>) -> Self {
        self.variants = variants;
        self
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PassError {
    #[error("unknown pass '{name}'; valid passes and presets: {valid}")]
    UnknownPass { name: String, valid: String },

    #[error("pass '{pass}': unknown option '{option}'; valid options: {valid}")]
    UnknownOption { pass: String, option: String, valid: String },

    #[error("pass '{pass}': option '{option}': {reason}")]
    BadOption { pass: String, option: String, reason: String },

    #[error("pipeline spec: {0}")]
    Spec(String),

    #[error("pass '{pass}': {location}: {reason}")]
    Failed { pass: String, location: String, reason: String },

    #[error("pass '{pass}': {source}")]
    Ir {
        pass: String,
        #[source]
        source: compactor_ir::IrError,
    },

    #[error("pass '{pass}': {source}")]
    Patch {
        pass: String,
        #[source]
        source: compactor_ir::PatchError,
    },

    #[error("pass '{pass}' left an invalid graph: {problems}")]
    Invalid { pass: String, problems: compactor_ir::Problems },

    #[error("pass '{pass}' needs {what}, which this pipeline was not given")]
    Missing { pass: String, what: String },

    /// The pass measures activations (see [`crate::calib`]) and the pipeline has no
    /// calibration data.
    #[error("pass '{pass}' needs calibration data ({why}), which this pipeline was not given")]
    NeedsCalibration { pass: String, why: String },
}

impl PassError {
    pub fn failed(pass: &str, location: impl Into<String>, reason: impl Into<String>) -> Self {
        PassError::Failed { pass: pass.to_string(), location: location.into(), reason: reason.into() }
    }

    pub fn patch(pass: &str, source: compactor_ir::PatchError) -> Self {
        PassError::Patch { pass: pass.to_string(), source }
    }

    pub fn ir(pass: &str, source: compactor_ir::IrError) -> Self {
        PassError::Ir { pass: pass.to_string(), source }
    }
}

/// Progress of long work inside a pass (the CLI draws bars; the library default is silent).
pub trait Progress: Sync {
    /// Starts a unit of work with `total` steps.
    fn begin(&self, label: &str, total: u64);
    fn advance(&self, steps: u64);
    fn end(&self);
}

/// No progress display.
pub struct Silent;

impl Progress for Silent {
    fn begin(&self, _: &str, _: u64) {}
    fn advance(&self, _: u64) {}
    fn end(&self) {}
}

/// Evaluates single nodes on constant inputs (used by constant folding). The runtime provides
/// one; passes do not carry their own kernels.
pub trait ConstantEvaluator: Sync {
    /// The outputs of `node` given its inputs (`None` for omitted optional inputs).
    fn evaluate(&self, node: &Node, inputs: &[Option<Tensor>], opsets: &[OpsetImport]) -> Result<Vec<Tensor>, String>;
}

/// A batch of one captured activation: row-major f32 with its shape.
pub struct Activation<'a> {
    pub shape: &'a [usize],
    pub data: &'a [f32],
}

/// Runs calibration inputs through a model and streams chosen intermediate values, batch by
/// batch, to a sink (so statistics are accumulated without keeping activations).
pub trait Calibrator {
    /// How many batches one `capture` streams.
    fn batches(&self) -> usize;

    /// Runs every batch through `model`, handing each captured value to `sink`; advances
    /// `progress` once per batch.
    fn capture(&mut self, model: &Model, values: &[ValueId], progress: &dyn Progress, sink: &mut dyn FnMut(ValueId, Activation<'_>)) -> Result<(), String>;
}

/// What a pass gets besides the graph. (`'env` is the lifetime of the calibrator itself.)
pub struct PassCtx<'a, 'env> {
    /// The model's opset imports (a pass that emits newer ops updates them).
    pub opsets: &'a mut Vec<OpsetImport>,
    /// The model's IR version (newer opsets and types need a minimum).
    pub ir_version: &'a mut Option<i64>,
    pub progress: &'a dyn Progress,
    pub evaluator: Option<&'a dyn ConstantEvaluator>,
    pub calibrator: Option<&'a mut (dyn Calibrator + 'env)>,
    /// Analyses of the graph, shared by the pipeline's passes and recomputed only after the
    /// graph changes.
    pub analyses: &'a mut crate::analysis::Analyses,
}

impl PassCtx<'_, '_> {
    /// The imported version of a domain (`""` is the default ONNX domain).
    pub fn opset(&self, domain: &str) -> Option<i64> {
        let canon = |d: &str| if d == "ai.onnx" { String::new() } else { d.to_string() };
        self.opsets.iter().find(|o| canon(o.domain.as_deref().unwrap_or("")) == canon(domain)).and_then(|o| o.version)
    }

    /// Sets (or adds) a domain's imported version.
    pub fn set_opset(&mut self, domain: &str, version: i64) {
        let canon = |d: &str| if d == "ai.onnx" { String::new() } else { d.to_string() };
        match self.opsets.iter_mut().find(|o| canon(o.domain.as_deref().unwrap_or("")) == canon(domain)) {
            Some(o) => o.version = Some(version),
            None => self.opsets.push(OpsetImport { domain: Some(domain.to_string()), version: Some(version) }),
        }
    }

    /// Infers the types and shapes of every value it can (declared types are kept), so a pass
    /// can rely on `Value::ty` where the graph determines it. Skipped when the graph has not
    /// changed since the last inference at this opset (inference is idempotent); the report is
    /// then that inference's.
    pub fn infer_shapes(&mut self, graph: &mut Graph) -> compactor_ir::InferReport {
        let opset = self.opset("").unwrap_or(compactor_ir::infer::LATEST_OPSET);
        if let Some(report) = self.analyses.inferred_shapes(graph, opset) {
            return report;
        }
        let report = compactor_ir::infer_graph_shapes(graph, opset, &compactor_ir::InferOptions::default());
        self.analyses.record_inferred_shapes(graph, opset, report.clone());
        report
    }

    /// Raises the IR version to at least `min`.
    pub fn require_ir_version(&mut self, min: i64) {
        if self.ir_version.is_none_or(|v| v < min) {
            *self.ir_version = Some(min);
        }
    }

    /// A model around a copy of `graph` with these opsets (for running it, e.g. to calibrate).
    /// Tensors are shared, not copied.
    pub fn snapshot(&self, graph: &Graph) -> Model {
        let mut model = Model::new(graph.clone(), 0);
        model.opset_import = self.opsets.clone();
        model.ir_version = *self.ir_version;
        model
    }
}
