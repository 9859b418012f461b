//! Kernels and ops tract lacks, and the ONNX op builders that register them with tract.

pub mod block_matmul;
pub mod bound_symbols;
pub mod broadcast;
pub mod deform_conv;
pub mod extra_ops;
pub mod group_query_attention;
pub mod indexed_elements;
pub mod layer_norm;
pub mod linear_attention;
pub mod low_rank;
pub mod matmul;
pub mod matvec;
pub mod max_unpool;
pub mod moe;
pub mod nbits;
pub mod packed_matmul;
pub mod rotary_embedding;
pub mod softmax;
pub mod symbolic_scalars;
pub mod tfidf_vectorizer;
pub mod tree_ensemble;
pub mod upsample;

pub use block_matmul::BlockQuantWeight;

use tract_onnx::prelude::*;

/// An f32 buffer's address, handed to the tasks of one kernel evaluation that read it or write
/// disjoint parts of it (each user says which parts, where it makes one).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub(crate) *mut f32);
// SAFETY: only the kernels' parallel loops use it, each task touching its own part of the
// output (GemmMatMul: one product's block; GroupQueryAttention: one block's rows).
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}

/// The session's thread pool when it has more than one thread and `worth_it` (the work is
/// large enough to share out); `None`: run on the calling thread.
pub(crate) fn thread_pool(worth_it: bool) -> Option<std::sync::Arc<rayon::ThreadPool>> {
    match tract_linalg::multithread::current_tract_executor() {
        tract_linalg::multithread::Executor::MultiThread(pool) if worth_it && pool.current_num_threads() > 1 => Some(pool),
        _ => None,
    }
}

/// Deterministic test data in [-1, 1), varied by `seed`, that the kernels' tests share.
#[cfg(test)]
pub(crate) fn test_values(len: usize, seed: usize) -> Vec<f32> {
    (0..len).map(|i| ((i * 7 + seed * 13) % 23) as f32 / 11.0 - 1.0).collect()
}

/// tract's optimiser with the runtime's own kernels swapped in, after keeping symbolic scalars
/// out of its declutter ([`symbolic_scalars::hide_symbolic_scalars`]): f32 matmuls on `gemm`
/// ([`matmul::replace_matmuls`], done on the decluttered model, before tract turns them into
/// its packed matmuls), a low-rank pair of them as one op ([`low_rank::fuse_low_rank`]), linear
/// layers on weights packed once ([`packed_matmul::pack_linear_layers`]), the broadcasts
/// tract's fast kernels miss ([`broadcast::replace_slow_broadcasts`]), ScatterElements and
/// GatherElements walked with running offsets ([`indexed_elements::replace_indexed_elements`]),
/// softmax over the last axis ([`softmax::replace_softmaxes`]).
pub fn optimize(mut model: TypedModel) -> TractResult<TypedModel> {
    symbolic_scalars::hide_symbolic_scalars(&mut model)?;
    let mut model = model.into_decluttered()?;
    matmul::replace_matmuls(&mut model)?;
    low_rank::fuse_low_rank(&mut model)?;
    packed_matmul::pack_linear_layers(&mut model)?;
    model.optimize()?;
    broadcast::replace_slow_broadcasts(&mut model)?;
    indexed_elements::replace_indexed_elements(&mut model)?;
    softmax::replace_softmaxes(&mut model)?;
    Ok(model)
}
