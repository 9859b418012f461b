//! Kernels and ops tract lacks, and the ONNX op builders that register them with tract.

pub mod block_matmul;
pub mod bound_symbols;
pub mod broadcast;
pub mod deform_conv;
pub mod extra_ops;
pub mod linear_attention;
pub mod matmul;
pub mod max_unpool;
pub mod nbits;
pub mod tfidf_vectorizer;
pub mod tree_ensemble;
pub mod upsample;

pub use block_matmul::BlockQuantWeight;

use tract_onnx::prelude::*;

/// tract's optimiser with the runtime's own kernels swapped in: f32 matmuls on `gemm`
/// ([`matmul::replace_matmuls`], done on the decluttered model, before tract turns them into
/// its packed matmuls) and the broadcasts tract's fast kernels miss
/// ([`broadcast::replace_slow_broadcasts`]).
pub fn optimize(model: TypedModel) -> TractResult<TypedModel> {
    let mut model = model.into_decluttered()?;
    matmul::replace_matmuls(&mut model)?;
    model.optimize()?;
    broadcast::replace_slow_broadcasts(&mut model)?;
    Ok(model)
}
