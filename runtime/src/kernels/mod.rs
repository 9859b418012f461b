//! Kernels tract lacks, and the tract ops and ONNX op builders that run them.

pub mod block_matmul;
pub mod nbits;

pub use block_matmul::BlockQuantWeight;
