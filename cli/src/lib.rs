//! Compactor as a library: the IR, the passes and the runtime behind the `compactor` binary.

pub use compactor_ir as ir;
pub use compactor_passes as passes;
pub use compactor_passes::Pipeline;
