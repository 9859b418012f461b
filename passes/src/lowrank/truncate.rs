//! The best rank-r approximation of a weighted weight `M = S · W`, through the
//! eigendecomposition of its smaller Gram matrix (in f64).
//!
//! When `N ≤ K`, the right singular vectors `V` of `M` and the `σ²` are the eigenpairs of
//! `MᵀM = Wᵀ(SᵀS)W`, and the truncation back in weight space is `W·V_r·V_rᵀ` (`S` cancels:
//! `S⁻¹·M·V_r = W·V_r`), so `S` is never formed or inverted; `SᵀS` is the calibration Gram
//! `G = XᵀX` for SVD-LLM. When `K < N`, the left singular vectors `U` are the eigenvectors of
//! `M·Mᵀ` (`K × K`) and the truncation is `S⁻¹·U_r·U_rᵀ·S·W`; for SVD-LLM `S = Lᵀ` with
//! `G = L·Lᵀ` (Cholesky, with a small jitter if `G` is singular).
//!
//! Either way `W ≈ Σ_i a_i·b_iᵀ` over components `i` whose `b_i` are orthogonal, so the
//! squared calibration output error of dropping a set of components is the sum of
//! theirs, `‖X·a_i‖²·‖b_i‖²`, and for SVD-LLM that is `σ_i²`.

use super::{LowRankError, weight_matrix};
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::cholesky::llt::factor::{LltParams, cholesky_in_place, cholesky_in_place_scratch};
use faer::linalg::evd::{ComputeEigenvectors, self_adjoint_evd, self_adjoint_evd_scratch};
use faer::linalg::matmul::matmul;
use faer::linalg::triangular_solve::solve_upper_triangular_in_place;
use faer::{Accum, Mat, MatRef, Par, Spec};
use rand_chacha::ChaCha8Rng;
use rand_chacha::rand_core::{RngCore, SeedableRng};

/// What the truncation's error is measured on: the input side's weighting `S`.
#[derive(Clone, Copy, Debug)]
pub enum Weighting<'a> {
    /// `S = I`: the weight's own Frobenius error (plain truncated SVD).
    Plain,
    /// `S = diag(s)`, `s_k > 0` (ASVD: `s_k = mean|x_k|^alpha`).
    Channels(&'a [f64]),
    /// `SᵀS = G`, the calibration Gram matrix `[K, K]` (row-major, symmetric): SVD-LLM.
    Gram(&'a [f64]),
}

/// How the eigenvectors are found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Solver {
    /// All of them, by a dense symmetric eigendecomposition.
    Exact,
    /// The leading `components` only, by randomized subspace iteration (for large layers that
    /// keep few components); the total energy stays exact (the trace).
    Randomized { components: usize },
}

/// A layer's components, strongest first: `W ≈ Σ_i a_i·b_iᵀ`.
pub struct Spectrum {
    pub k: usize,
    pub n: usize,
    /// `a_i` as column `i` of a `[K, c]` matrix and `b_i` as column `i` of `[N, c]`.
    a: Mat<f64>,
    b: Mat<f64>,
    /// `σ_i²` of `S·W`, descending: the energy each component carries in the weighting's
    /// measure.
    pub energies: Vec<f64>,
    /// The sum of every `σ²` (also when the randomized solver found only some components).
    pub total_energy: f64,
    /// With calibration data: the squared output error each component carries,
    /// `‖X·a_i‖²·‖b_i‖²`, and `‖X·W‖²` (in the Gram's scale).
    pub output_costs: Option<Vec<f64>>,
    pub output_energy: Option<f64>,
    /// The jitter added to the Gram's diagonal for its Cholesky factor (a share of its mean
    /// diagonal), 0 when none was needed.
    pub jitter: f64,
}

/// Low-rank factors `A [K, r]` and `B [r, N]` (row-major) with `W ≈ A·B`.
#[derive(Clone, Debug, PartialEq)]
pub struct Factors {
    pub rank: usize,
    pub a: Vec<f32>,
    pub b: Vec<f32>,
}

/// The components of `W [k, n]` under `weighting`; `calibration` is the Gram matrix the output
/// costs are measured with (usually the one SVD-LLM weights by; any method can report them).
pub fn decompose(w: &[f32], k: usize, n: usize, weighting: Weighting<'_>, calibration: Option<&[f64]>, solver: Solver) -> Result<Spectrum, LowRankError> {
    let wm = weight_matrix(w, k, n)?;
    let check_square = |g: &[f64], tensor: &'static str| -> Result<(), LowRankError> {
        if g.len() != k * k {
            return Err(LowRankError::ShapeMismatch { tensor, shape: format!("[{k}, {k}]"), len: g.len(), expected: k * k });
        }
        Ok(())
    };
    if let Weighting::Channels(s) = weighting
        && s.len() != k
    {
        return Err(LowRankError::ShapeMismatch { tensor: "channel scales", shape: format!("[{k}]"), len: s.len(), expected: k });
    }
    if let Weighting::Gram(g) = weighting {
        check_square(g, "Gram matrix")?;
    }
    if let Some(g) = calibration {
        check_square(g, "calibration Gram matrix")?;
    }
    fn gram(g: &[f64], k: usize) -> MatRef<'_, f64> {
        MatRef::from_row_major_slice(g, k, k)
    }
    let mut jitter = 0.0;
    // G·W when the weighting computes it (reused for the output energy).
    let mut gram_times_weight = None;
    let (energies, total_energy, a, b) = if n <= k {
        // Right side: C = Wᵀ·(SᵀS)·W.
        let pw = match weighting {
            Weighting::Plain => wm.clone(),
            Weighting::Channels(s) => Mat::from_fn(k, n, |r, c| wm[(r, c)] * s[r] * s[r]),
            Weighting::Gram(g) => product(gram(g, k), wm.as_ref()),
        };
        let c = symmetric(product(wm.transpose(), pw.as_ref()));
        if let Weighting::Gram(_) = weighting {
            gram_times_weight = Some(pw);
        }
        let total = trace(c.as_ref());
        let (energies, v) = eigenpairs(c, solver)?;
        (energies, total, product(wm.as_ref(), v.as_ref()), v)
    } else {
        // Left side: C = M·Mᵀ with M = S·W.
        let (m, whitening) = match weighting {
            Weighting::Plain => (wm.clone(), None),
            Weighting::Channels(s) => (Mat::from_fn(k, n, |r, c| wm[(r, c)] * s[r]), None),
            Weighting::Gram(g) => {
                let (l, used) = cholesky_with_jitter(g, k)?;
                jitter = used;
                (product(l.transpose(), wm.as_ref()), Some(l))
            }
        };
        let c = symmetric(product(m.as_ref(), m.transpose()));
        let total = trace(c.as_ref());
        let (energies, u) = eigenpairs(c, solver)?;
        // a_i = S⁻¹·u_i, b_i = Mᵀ·u_i.
        let a = match (weighting, whitening) {
            (Weighting::Channels(s), _) => Mat::from_fn(k, u.ncols(), |r, c| u[(r, c)] / s[r]),
            (_, Some(l)) => {
                let mut a = u.clone();
                solve_upper_triangular_in_place(l.transpose(), a.as_mut(), Par::Seq);
                a
            }
            _ => u.clone(),
        };
        (energies, total, a, product(m.transpose(), u.as_ref()))
    };
    let mut spectrum = Spectrum { k, n, a, b, energies, total_energy, output_costs: None, output_energy: None, jitter };
    spectrum.normalize_signs();
    if let Some(g) = calibration {
        let exact_whitening = matches!(weighting, Weighting::Gram(w) if std::ptr::eq(w, g)) && jitter == 0.0;
        if exact_whitening {
            // SVD-LLM: ‖X·a_i‖²·‖b_i‖² = σ_i² and ‖X·W‖² = ‖S·W‖² (the whitening makes it so).
            spectrum.output_costs = Some(spectrum.energies.clone());
            spectrum.output_energy = Some(spectrum.total_energy);
        } else {
            let b_norms: Vec<f64> = (0..spectrum.components()).map(|i| squared_norm(spectrum.b.col(i).iter().copied())).collect();
            let ga = product(gram(g, k), spectrum.a.as_ref());
            spectrum.output_costs = Some((0..spectrum.components()).map(|i| spectrum.a.col(i).iter().zip(ga.col(i).iter()).map(|(x, y)| x * y).sum::<f64>() * b_norms[i]).collect());
            let gw = gram_times_weight.unwrap_or_else(|| product(gram(g, k), wm.as_ref()));
            spectrum.output_energy = Some(wm.col_iter().zip(gw.col_iter()).map(|(x, y)| x.iter().zip(y.iter()).map(|(p, q)| p * q).sum::<f64>()).sum());
        }
    }
    Ok(spectrum)
}

impl Spectrum {
    /// How many components were computed.
    pub fn components(&self) -> usize {
        self.energies.len()
    }

    /// The share of the total energy the first `rank` components keep.
    pub fn kept_energy(&self, rank: usize) -> f64 {
        if self.total_energy <= 0.0 {
            return 1.0;
        }
        (self.energies.iter().take(rank).sum::<f64>() / self.total_energy).min(1.0)
    }

    /// The relative calibration output error `‖X·(W − Ŵ)‖ / ‖X·W‖` of keeping `rank`
    /// components (with calibration data). Components the randomized solver did not compute
    /// count with the energy left over.
    pub fn output_error(&self, rank: usize) -> Option<f64> {
        let (costs, total) = (self.output_costs.as_ref()?, self.output_energy?);
        if total <= 0.0 {
            return Some(0.0);
        }
        let dropped: f64 = costs.iter().skip(rank).sum();
        let uncomputed = if costs.len() < self.k.min(self.n) { (self.total_energy - self.energies.iter().sum::<f64>()).max(0.0) } else { 0.0 };
        Some(((dropped + uncomputed) / total).max(0.0).sqrt())
    }

    /// The squared relative cost of keeping each rank `1..=max_rank`, for budgets: output error
    /// with calibration data, else the weighting's own energy left.
    pub fn costs(&self, max_rank: usize) -> Vec<f64> {
        (1..=max_rank.min(self.components()))
            .map(|r| match self.output_error(r) {
                Some(e) => e * e,
                None => 1.0 - self.kept_energy(r),
            })
            .collect()
    }

    /// The first `rank` components as factors, each rank-one term balanced so that its column
    /// of `A` and row of `B` have the same norm (so both factors share one range, which
    /// quantizing them afterwards needs).
    pub fn factors(&self, rank: usize) -> Factors {
        let (k, n) = (self.k, self.n);
        let rank = rank.min(self.components());
        let mut a = vec![0.0f32; k * rank];
        let mut b = vec![0.0f32; rank * n];
        for i in 0..rank {
            let (na, nb) = (squared_norm(self.a.col(i).iter().copied()).sqrt(), squared_norm(self.b.col(i).iter().copied()).sqrt());
            let t = if na > 0.0 && nb > 0.0 { (nb / na).sqrt() } else { 1.0 };
            for r in 0..k {
                a[r * rank + i] = (self.a[(r, i)] * t) as f32;
            }
            for (c, v) in b[i * n..(i + 1) * n].iter_mut().enumerate() {
                *v = (self.b[(c, i)] / t) as f32;
            }
        }
        Factors { rank, a, b }
    }

    /// Flips each component so the largest entry of `b_i` is positive: eigenvectors have no
    /// sign of their own, and a fixed rule keeps outputs identical across library versions.
    fn normalize_signs(&mut self) {
        for i in 0..self.components() {
            let column = self.b.col(i);
            let largest = column.iter().copied().fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
            if largest < 0.0 {
                self.a.col_mut(i).iter_mut().for_each(|v| *v = -*v);
                self.b.col_mut(i).iter_mut().for_each(|v| *v = -*v);
            }
        }
    }
}

impl Factors {
    /// `A·B` as `[K, N]` row-major (f64 sums).
    pub fn product(&self, k: usize, n: usize) -> Vec<f32> {
        let a = MatRef::from_row_major_slice(&self.a, k, self.rank);
        let b = MatRef::from_row_major_slice(&self.b, self.rank, n);
        let (a, b) = (Mat::from_fn(k, self.rank, |r, c| a[(r, c)] as f64), Mat::from_fn(self.rank, n, |r, c| b[(r, c)] as f64));
        let p = product(a.as_ref(), b.as_ref());
        (0..k * n).map(|i| p[(i / n, i % n)] as f32).collect()
    }
}

/// `‖W − Ŵ‖ / ‖W‖` (Frobenius) of two `[K, N]` matrices.
pub fn relative_error(w: &[f32], approx: &[f32]) -> f64 {
    let total = squared_norm(w.iter().map(|&v| v as f64));
    let diff = squared_norm(w.iter().zip(approx).map(|(&x, &y)| x as f64 - y as f64));
    if total > 0.0 { (diff / total).sqrt() } else { diff.sqrt() }
}

/// `‖X·(W − Ŵ)‖ / ‖X·W‖` with the calibration Gram `G = XᵀX` (`[K, K]` row-major).
pub fn relative_output_error(gram: &[f64], w: &[f32], approx: &[f32], k: usize, n: usize) -> f64 {
    let g = MatRef::from_row_major_slice(gram, k, k);
    let wm = Mat::from_fn(k, n, |r, c| w[r * n + c] as f64);
    let d = Mat::from_fn(k, n, |r, c| w[r * n + c] as f64 - approx[r * n + c] as f64);
    let quadratic = |m: &Mat<f64>| -> f64 {
        let gm = product(g, m.as_ref());
        m.col_iter().zip(gm.col_iter()).map(|(x, y)| x.iter().zip(y.iter()).map(|(p, q)| p * q).sum::<f64>()).sum()
    };
    let total = quadratic(&wm);
    let error = quadratic(&d).max(0.0);
    if total > 0.0 { (error / total).sqrt() } else { error.sqrt() }
}

fn squared_norm(values: impl Iterator<Item = f64>) -> f64 {
    values.map(|v| v * v).sum()
}

pub(crate) fn product(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, Par::Seq);
    out
}

fn symmetric(c: Mat<f64>) -> Mat<f64> {
    let d = c.nrows();
    Mat::from_fn(d, d, |r, j| 0.5 * (c[(r, j)] + c[(j, r)]))
}

fn trace(c: MatRef<'_, f64>) -> f64 {
    (0..c.nrows()).map(|i| c[(i, i)]).sum()
}

/// Eigenvalues (descending, clamped at 0: the matrix is a Gram matrix) and eigenvectors (as
/// columns) of the symmetric `c`.
fn eigenpairs(c: Mat<f64>, solver: Solver) -> Result<(Vec<f64>, Mat<f64>), LowRankError> {
    match solver {
        Solver::Exact => eigenpairs_exact(c.as_ref()),
        Solver::Randomized { components } => eigenpairs_randomized(c.as_ref(), components),
    }
}

fn eigenpairs_exact(c: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>), LowRankError> {
    let d = c.nrows();
    let mut s = faer::diag::Diag::<f64>::zeros(d);
    let mut u = Mat::<f64>::zeros(d, d);
    let params = Default::default();
    let mut mem = MemBuffer::new(self_adjoint_evd_scratch::<f64>(d, ComputeEigenvectors::Yes, Par::Seq, params));
    self_adjoint_evd(c, s.as_mut(), Some(u.as_mut()), Par::Seq, MemStack::new(&mut mem), params).map_err(|_| LowRankError::NoConvergence { what: "Gram matrix" })?;
    // Ascending from faer: reverse.
    let values = s.column_vector();
    let energies = (0..d).rev().map(|i| values[i].max(0.0)).collect();
    Ok((energies, Mat::from_fn(d, d, |r, j| u[(r, d - 1 - j)])))
}

/// The leading `wanted` eigenpairs by subspace iteration with a few extra vectors: `Q ← orth(C·Q)`
/// a fixed number of times from a seeded random start, then the small eigenproblem of `QᵀCQ`.
fn eigenpairs_randomized(c: MatRef<'_, f64>, wanted: usize) -> Result<(Vec<f64>, Mat<f64>), LowRankError> {
    let d = c.nrows();
    let wanted = wanted.clamp(1, d);
    let width = (wanted + (wanted / 10).max(10)).min(d);
    if width == d {
        return eigenpairs_exact(c);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(0x636f_6d70_6163_746f);
    let mut q = Mat::from_fn(d, width, |_, _| (rng.next_u32() as f64 / u32::MAX as f64) * 2.0 - 1.0);
    orthonormalize(&mut q);
    const ITERATIONS: usize = 6;
    for _ in 0..ITERATIONS {
        q = product(c, q.as_ref());
        orthonormalize(&mut q);
    }
    let small = symmetric(product(q.transpose(), product(c, q.as_ref()).as_ref()));
    let (energies, z) = eigenpairs_exact(small.as_ref())?;
    let vectors = product(q.as_ref(), z.as_ref());
    Ok((energies[..wanted].to_vec(), vectors.subcols(0, wanted).to_owned()))
}

/// Orthonormal columns spanning `q`'s, by modified Gram-Schmidt done twice (one pass loses
/// orthogonality on ill-conditioned inputs). A column that vanishes is left zero.
fn orthonormalize(q: &mut Mat<f64>) {
    let width = q.ncols();
    for _ in 0..2 {
        for j in 0..width {
            for i in 0..j {
                let dot: f64 = q.col(i).iter().zip(q.col(j).iter()).map(|(x, y)| x * y).sum();
                for r in 0..q.nrows() {
                    let v = q[(r, i)];
                    q[(r, j)] -= dot * v;
                }
            }
            let norm = squared_norm(q.col(j).iter().copied()).sqrt();
            let scale = if norm > 1e-300 { 1.0 / norm } else { 0.0 };
            q.col_mut(j).iter_mut().for_each(|v| *v *= scale);
        }
    }
}

/// The lower Cholesky factor of `g` (upper triangle zero), with the smallest jitter (a share of
/// the mean diagonal: 0, 1e-10, 1e-8, ... 1e-2) that makes it positive definite.
fn cholesky_with_jitter(g: &[f64], k: usize) -> Result<(Mat<f64>, f64), LowRankError> {
    let mean_diagonal = (0..k).map(|i| g[i * k + i]).sum::<f64>() / k as f64;
    let params: Spec<LltParams, f64> = Default::default();
    let mut mem = MemBuffer::new(cholesky_in_place_scratch::<f64>(k, Par::Seq, params));
    let mut tried = 0.0;
    for jitter in [0.0, 1e-10, 1e-8, 1e-6, 1e-4, 1e-2] {
        tried = jitter;
        let add = jitter * mean_diagonal.max(f64::MIN_POSITIVE);
        let mut l = Mat::from_fn(k, k, |r, c| g[r * k + c] + if r == c { add } else { 0.0 });
        if cholesky_in_place(l.as_mut(), Default::default(), Par::Seq, MemStack::new(&mut mem), params).is_ok() {
            for c in 1..k {
                for r in 0..c {
                    l[(r, c)] = 0.0;
                }
            }
            return Ok((l, jitter));
        }
    }
    Err(LowRankError::NotPositiveDefinite { jitter: tried })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix with entries in [-1, 1).
    pub(crate) fn random(rows: usize, cols: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..rows * cols).map(|_| (rng.next_u32() as f64 / u32::MAX as f64 * 2.0 - 1.0) as f32).collect()
    }

    /// `XᵀX` of `x [rows, k]`, in f64.
    fn gram(x: &[f32], rows: usize, k: usize) -> Vec<f64> {
        let mut g = vec![0.0; k * k];
        for row in x.chunks_exact(k) {
            for i in 0..k {
                for j in 0..k {
                    g[i * k + j] += row[i] as f64 * row[j] as f64;
                }
            }
        }
        let _ = rows;
        g
    }

    /// Calibration rows with very different channel scales, so weighting matters.
    fn activations(rows: usize, k: usize) -> Vec<f32> {
        let base = random(rows, k, 7);
        base.iter().enumerate().map(|(i, &v)| v * (1.0 + 20.0 * ((i % k) as f32 / k as f32).powi(3))).collect()
    }

    /// `‖X·(W − Ŵ)‖` measured on the activations themselves, in f64.
    fn measured_output_error(x: &[f32], w: &[f32], approx: &[f32], k: usize, n: usize) -> f64 {
        let mut sum = 0.0;
        for row in x.chunks_exact(k) {
            for c in 0..n {
                let e: f64 = (0..k).map(|i| row[i] as f64 * (w[i * n + c] as f64 - approx[i * n + c] as f64)).sum();
                sum += e * e;
            }
        }
        sum.sqrt()
    }

    #[test]
    fn full_rank_reproduces_the_weight() {
        for (k, n) in [(12, 7), (7, 12), (9, 9)] {
            let w = random(k, n, 1);
            let x = activations(40, k);
            let g = gram(&x, 40, k);
            let s: Vec<f64> = (0..k).map(|i| 0.5 + i as f64).collect();
            for weighting in [Weighting::Plain, Weighting::Channels(&s), Weighting::Gram(&g)] {
                let spectrum = decompose(&w, k, n, weighting, Some(&g), Solver::Exact).unwrap();
                let f = spectrum.factors(k.min(n));
                let approx = f.product(k, n);
                assert!(relative_error(&w, &approx) < 1e-6, "{k}x{n} {weighting:?}: {}", relative_error(&w, &approx));
                assert!(spectrum.output_error(k.min(n)).unwrap() < 1e-6);
            }
        }
    }

    /// SVD-LLM's whitening: the calibration output error of a truncation is the root sum of the
    /// dropped squared singular values of the whitened weight, on both sides of K = N.
    #[test]
    fn svd_llm_output_error_is_the_dropped_singular_values() {
        for (k, n) in [(24, 10), (10, 24)] {
            let w = random(k, n, 2);
            let rows = 200;
            let x = activations(rows, k);
            let g = gram(&x, rows, k);
            let spectrum = decompose(&w, k, n, Weighting::Gram(&g), Some(&g), Solver::Exact).unwrap();
            for rank in [1, 3, 7] {
                let approx = spectrum.factors(rank).product(k, n);
                let measured = measured_output_error(&x, &w, &approx, k, n);
                let predicted = spectrum.energies[rank..].iter().sum::<f64>().sqrt();
                assert!((measured - predicted).abs() <= 1e-4 * predicted, "{k}x{n} rank {rank}: measured {measured}, predicted {predicted}");
                let total = measured_output_error(&x, &w, &vec![0.0; k * n], k, n);
                let relative = spectrum.output_error(rank).unwrap();
                assert!((relative - measured / total).abs() < 1e-4 * relative);
            }
        }
    }

    /// Every method's reported output error is the measured one, and SVD-LLM's is the lowest
    /// at every rank (it is optimal for that error).
    #[test]
    fn reported_output_errors_are_measured_ones_and_svd_llm_is_lowest() {
        let (k, n, rows) = (20, 16, 120);
        let w = random(k, n, 3);
        let x = activations(rows, k);
        let g = gram(&x, rows, k);
        let mean_abs: Vec<f64> = (0..k).map(|c| x.iter().skip(c).step_by(k).map(|v| v.abs() as f64).sum::<f64>() / rows as f64).collect();
        let s: Vec<f64> = mean_abs.iter().map(|m| m.sqrt()).collect();
        let total = measured_output_error(&x, &w, &vec![0.0; k * n], k, n);
        for rank in [2, 5, 9] {
            let mut errors = Vec::new();
            for weighting in [Weighting::Plain, Weighting::Channels(&s), Weighting::Gram(&g)] {
                let spectrum = decompose(&w, k, n, weighting, Some(&g), Solver::Exact).unwrap();
                let approx = spectrum.factors(rank).product(k, n);
                let measured = measured_output_error(&x, &w, &approx, k, n) / total;
                let reported = spectrum.output_error(rank).unwrap();
                assert!((measured - reported).abs() < 1e-4 * measured, "{weighting:?} rank {rank}: {measured} vs {reported}");
                assert!((relative_output_error(&g, &w, &approx, k, n) - measured).abs() < 1e-4 * measured);
                errors.push(measured);
            }
            assert!(errors[2] < errors[0] && errors[2] < errors[1], "rank {rank}: {errors:?}");
        }
    }

    /// A singular Gram (a channel that is always zero) still factors, with a jitter.
    #[test]
    fn a_singular_gram_gets_a_jitter() {
        let (k, n, rows) = (8, 12, 50);
        let w = random(k, n, 4);
        let mut x = activations(rows, k);
        for row in x.chunks_exact_mut(k) {
            row[3] = 0.0;
        }
        let g = gram(&x, rows, k);
        let spectrum = decompose(&w, k, n, Weighting::Gram(&g), Some(&g), Solver::Exact).unwrap();
        assert!(spectrum.jitter > 0.0);
        let approx = spectrum.factors(4).product(k, n);
        let measured = measured_output_error(&x, &w, &approx, k, n) / measured_output_error(&x, &w, &vec![0.0; k * n], k, n);
        assert!((spectrum.output_error(4).unwrap() - measured).abs() < 1e-4 * measured);
    }

    /// The randomized solver finds the leading components of a matrix with a decaying
    /// spectrum as the exact one does.
    #[test]
    fn randomized_matches_exact_on_the_leading_components() {
        let (k, n, r) = (300, 200, 12);
        // Low rank plus a little noise.
        let left = random(k, r, 5);
        let right = random(r, n, 6);
        let noise = random(k, n, 8);
        let w: Vec<f32> = (0..k * n).map(|i| (0..r).map(|j| left[(i / n) * r + j] * right[j * n + i % n] * (1.0 + j as f32)).sum::<f32>() + 1e-3 * noise[i]).collect();
        let exact = decompose(&w, k, n, Weighting::Plain, None, Solver::Exact).unwrap();
        let fast = decompose(&w, k, n, Weighting::Plain, None, Solver::Randomized { components: r }).unwrap();
        assert_eq!(fast.components(), r);
        assert!((fast.total_energy - exact.total_energy).abs() < 1e-9 * exact.total_energy);
        for i in 0..r {
            assert!((fast.energies[i] - exact.energies[i]).abs() < 1e-8 * exact.energies[0], "{i}");
        }
        let (a, b) = (exact.factors(r).product(k, n), fast.factors(r).product(k, n));
        assert!(relative_error(&a, &b) < 1e-6, "{}", relative_error(&a, &b));
    }

    #[test]
    fn output_is_the_same_on_every_run() {
        let w = random(30, 20, 9);
        let one = decompose(&w, 30, 20, Weighting::Plain, None, Solver::Exact).unwrap().factors(5);
        let two = decompose(&w, 30, 20, Weighting::Plain, None, Solver::Exact).unwrap().factors(5);
        assert_eq!(one, two);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(matches!(decompose(&[1.0; 5], 2, 3, Weighting::Plain, None, Solver::Exact), Err(LowRankError::ShapeMismatch { .. })));
        assert!(matches!(decompose(&[1.0, f32::NAN, 0.0, 1.0], 2, 2, Weighting::Plain, None, Solver::Exact), Err(LowRankError::NonFinite { row: 0, col: 1, .. })));
        assert!(matches!(decompose(&[1.0; 4], 2, 2, Weighting::Channels(&[1.0]), None, Solver::Exact), Err(LowRankError::ShapeMismatch { .. })));
    }
}
