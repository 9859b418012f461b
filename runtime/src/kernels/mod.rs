//! Kernels and ops tract lacks, and the ONNX op builders that register them with tract.

pub mod block_matmul;
pub mod broadcast;
pub mod extra_ops;
pub mod linear_attention;
pub mod nbits;

pub use block_matmul::BlockQuantWeight;
