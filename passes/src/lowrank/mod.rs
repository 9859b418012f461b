//! Numeric core of low-rank and tensor-network factorization (no graph code).
//!
//! A weight is the row-major f32 matrix `W [K, N]` of `x · W`, as in [`crate::quant`].
//!
//! - [`truncate`]: the best rank-r approximation of `S · W` for a weighting `S` of the input
//!   side, as the factors `A [K, r]`, `B [r, N]` with `W ≈ A · B`. Plain SVD: `S = I` (the
//!   weight's own error); ASVD: `S = diag(mean|x|^alpha)`; SVD-LLM: `SᵀS = XᵀX`, the
//!   calibration Gram matrix, so `‖S·D‖ = ‖X·D‖` for any change `D` of the weight and dropping
//!   singular values costs exactly their root sum of squares in calibration output error.
//!   Computed from the eigendecomposition of the smaller Gram matrix of `S · W`, in f64, with
//!   a randomized subspace iteration for large layers that keep few components.
//! - [`rank`]: how many components to keep (fixed, energy, parameter ratio) and a global
//!   parameter budget spread over layers by their measured costs.
//! - [`mpo`]: matrix product operators (tensor trains): `W` reshaped to
//!   `[k1..kc, n1..nc]` and split into `c` cores by sequential SVDs (TT-SVD).
//!
//! Every dense factorization runs on one thread (`Par::Seq`): layers are factorized in
//! parallel, and the results do not depend on the thread count.

pub mod mpo;
pub mod rank;
pub mod truncate;

pub use mpo::{BondRule, Mpo, MpoShape, balanced_factors, decompose_mpo};
pub use rank::{Choice, RankRule, allocate_budget, break_even_rank};
pub use truncate::{Factors, Solver, Spectrum, Weighting, decompose, relative_error, relative_output_error};

/// Errors of the factorization numerics; each names what is at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LowRankError {
    #[error("tensor `{tensor}` has {len} elements, but its shape {shape} needs {expected}")]
    ShapeMismatch { tensor: &'static str, shape: String, len: usize, expected: usize },
    #[error("the weight has the non-finite value {value} at [{row}, {col}]")]
    NonFinite { row: usize, col: usize, value: f32 },
    #[error("the {what} eigendecomposition did not converge")]
    NoConvergence { what: &'static str },
    #[error("the calibration Gram matrix is not positive definite even with a jitter of {jitter:e} of its mean diagonal (input channels that are always zero?)")]
    NotPositiveDefinite { jitter: f64 },
    #[error("factor shape {factors:?} does not multiply to {dim}")]
    BadFactors { factors: Vec<usize>, dim: usize },
}

/// `W [k, n]` row-major f32 as an f64 matrix, checked.
pub(crate) fn weight_matrix(w: &[f32], k: usize, n: usize) -> Result<faer::Mat<f64>, LowRankError> {
    if w.len() != k * n {
        return Err(LowRankError::ShapeMismatch { tensor: "weight", shape: format!("[{k}, {n}]"), len: w.len(), expected: k * n });
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(LowRankError::NonFinite { row: i / n, col: i % n, value: w[i] });
    }
    Ok(faer::Mat::from_fn(k, n, |r, c| w[r * n + c] as f64))
}
