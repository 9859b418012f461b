//! Compactor's pass framework and passes.
//!
//! - [`Pass`] / [`PassDef`]: a pass is a small struct whose serde fields are its options.
//! - [`registry`]: the one list of passes and presets (what `compactor passes` prints).
//! - [`Pipeline`]: parse `fold-constants,quantize(bits=4)` (or a TOML file) and run it.
//! - [`analysis`]: facts several passes need (linear layers, transformer blocks, uses),
//!   computed once and cached in [`PassCtx::analyses`] until the graph changes.
//! - [`calib`]: the calibration driver: statistics of the activations a pass asks for.
//! - [`micro_experts`]: micro-expert (FFN neuron) scores: CAMERA and its baselines.
//! - [`quant`]: the numerics of blockwise weight quantization (RTN, MSE/HQQ, GPTQ) and packing.

pub mod analysis;
pub mod calib;
pub mod lowrank;
pub mod micro_experts;
pub mod pass;
pub mod passes;
pub mod pipeline;
pub mod quant;
pub mod registry;
pub mod spec;
pub mod tokens;

pub use pass::{Activation, Calibrator, ConstantEvaluator, OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome, Progress, Silent};
pub use pipeline::{GraphStats, PassReport, Pipeline, PipelineReport, RunOptions, Variant};
