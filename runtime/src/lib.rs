//! Compactor's CPU runtime: runs any graph the toolchain emits, on tract.
//!
//! - [`Session`]: lower a [`compactor_ir::Model`], prepare it with tract (optimised, on a
//!   configurable thread pool), run it on named [`TensorValue`]s.
//! - [`lower`]: what tract 0.23.9 cannot load (INT4/UINT4/INT2/UINT2, BF16, FP8/FP4, blocked
//!   `DequantizeLinear`/`QuantizeLinear`) is rewritten first; `DequantizeLinear -> MatMul` on
//!   constant weights becomes a fused low-bit matmul ([`kernels`]).
//! - [`capture`]: run batches and stream intermediate values into statistics sinks.
//! - [`npy`], [`inputs`], [`metrics`]: `.npy` files, deterministic random inputs, and the
//!   error measures `compactor compare` reports.
//! - [`lm`]: perplexity of a causal language model over sliding windows (`compactor eval`).

pub mod capture;
pub mod error;
pub mod inputs;
mod interpret;
pub mod kernels;
pub mod lm;
pub mod lower;
pub mod metrics;
pub mod npy;
pub mod session;
pub mod value;

pub use capture::{CaptureSink, CapturedValue, ChannelAbsMean, GramAccumulator, ValueRef};
pub use error::RuntimeError;
pub use lower::{Lowered, LoweringReport, lower};
pub use session::{IoSpec, NamedValues, PlanKind, Session, SessionOptions, default_threads, framework, keep_freed_memory, tune_tract_threading};
pub use value::{RuntimeValue, TensorValue};
