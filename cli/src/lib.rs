//! Compactor as a library: the IR, the passes and the runtime behind the `compactor` binary.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut model = compactor::ir::Model::load("model.onnx")?;
//! let report = compactor::Pipeline::parse("cleanup,quantize(bits=4)")?.run(&mut model)?;
//! model.save("model.int4.onnx")?;
//! println!("{} -> {} nodes", report.before.nodes, report.after.nodes);
//! # Ok(()) }
//! ```

pub mod services;

pub use compactor_ir as ir;
pub use compactor_passes as passes;
pub use compactor_runtime as runtime;
pub use services::{CalibrationError, RuntimeCalibrator, RuntimeEvaluator};

use compactor_passes::{PassError, PipelineReport, RunOptions};

/// A pipeline of passes wired to the bundled runtime: constant folding evaluates on it, and
/// passes that need activations (GPTQ, mixed precision) get the calibration data given with
/// [`Pipeline::with_calibration`].
pub struct Pipeline {
    passes: compactor_passes::Pipeline,
    evaluator: RuntimeEvaluator,
    calibrator: Option<RuntimeCalibrator>,
}

impl Pipeline {
    /// Parses a spec such as `cleanup,quantize(bits=4,block=32)` (see `compactor passes`).
    pub fn parse(spec: &str) -> Result<Self, PassError> {
        Ok(Self::new(compactor_passes::Pipeline::parse(spec)?))
    }

    /// Parses a TOML pipeline (`[[pass]]` tables with `name` and options).
    pub fn from_toml(text: &str) -> Result<Self, PassError> {
        Ok(Self::new(compactor_passes::Pipeline::from_toml(text)?))
    }

    fn new(passes: compactor_passes::Pipeline) -> Self {
        Pipeline { passes, evaluator: RuntimeEvaluator::default(), calibrator: None }
    }

    /// Calibration batches for passes that need activations.
    pub fn with_calibration(mut self, calibrator: RuntimeCalibrator) -> Self {
        self.calibrator = Some(calibrator);
        self
    }

    pub fn pass_names(&self) -> Vec<&'static str> {
        self.passes.pass_names()
    }

    /// Runs every pass; the graph is verified after the last one.
    pub fn run(&mut self, model: &mut ir::Model) -> Result<PipelineReport, PassError> {
        self.run_with(model, RunOptions::default())
    }

    /// Runs with the given options; the runtime's evaluator and this pipeline's calibration
    /// data are filled in.
    pub fn run_with<'a>(&'a mut self, model: &mut ir::Model, mut options: RunOptions<'a>) -> Result<PipelineReport, PassError> {
        options.evaluator = Some(&self.evaluator);
        if let Some(c) = self.calibrator.as_mut() {
            options.calibrator = Some(c);
        }
        self.passes.run_with(model, options)
    }
}
