//! Matrix product operators (tensor trains) by TT-SVD.
//!
//! `W [K, N]` with `K = k1·…·kc` and `N = n1·…·nc` is read as `W[i1..ic, j1..jc]` (row-major
//! digits), regrouped as `P[(i1 j1), (i2 j2), …, (ic jc)]` and split by sequential SVDs into `c`
//! cores `C_t[a_t, i_t, j_t, a_(t+1)]` with bond dimensions `χ_t` (`χ_0 = χ_c = 1`):
//! `W[i, j] = Σ_a Π_t C_t[a_t, i_t, j_t, a_(t+1)]`. Core `t` is stored as the matrix
//! `[χ_t·k_t, n_t·χ_(t+1)]` that the graph's `MatMul` chain multiplies by (see [`Mpo::apply`]).

use super::LowRankError;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::svd::{ComputeSvdVectors, svd, svd_scratch};
use faer::{Mat, MatRef, Par};

/// How a weight's two dimensions are split into the cores' factors.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct MpoShape {
    pub in_factors: Vec<usize>,
    pub out_factors: Vec<usize>,
}

impl MpoShape {
    pub fn cores(&self) -> usize {
        self.in_factors.len()
    }

    /// The largest useful bond dimension after each core but the last: the smaller side of the
    /// matrix the sweep splits there.
    pub fn full_bonds(&self) -> Vec<usize> {
        self.capped_bonds(usize::MAX)
    }

    /// Parameters of the cores with these inner bonds (one per core but the last).
    pub fn params(&self, bonds: &[usize]) -> u64 {
        let chi = |t: usize| if t == 0 || t == self.cores() { 1 } else { bonds[t - 1] };
        (0..self.cores()).map(|t| (chi(t) * self.in_factors[t] * self.out_factors[t] * chi(t + 1)) as u64).sum()
    }

    /// Multiply-adds per input row of the contraction ([`Mpo::apply`]): core `t` multiplies
    /// `Q_t = k_(t+1)…k_c · n_1…n_(t-1)` vectors of `χ_t·k_t` by `[χ_t·k_t, n_t·χ_(t+1)]`. Unlike
    /// the parameters, this exceeds the dense `K·N` well before the bonds are full.
    pub fn macs_per_row(&self, bonds: &[usize]) -> u64 {
        let chi = |t: usize| if t == 0 || t == self.cores() { 1 } else { bonds[t - 1] };
        (0..self.cores())
            .map(|t| {
                let q: usize = self.in_factors[t + 1..].iter().product::<usize>() * self.out_factors[..t].iter().product::<usize>();
                (q * chi(t) * self.in_factors[t] * self.out_factors[t] * chi(t + 1)) as u64
            })
            .sum()
    }

    /// The inner bonds the sweep gives when every bond is capped at `cap`: the split after core
    /// `t` has `χ_t·k_t·n_t` rows and the remaining pairs as columns, and keeps at most the
    /// smaller of those and `cap`.
    pub fn capped_bonds(&self, cap: usize) -> Vec<usize> {
        let sizes: Vec<usize> = self.in_factors.iter().zip(&self.out_factors).map(|(k, n)| k * n).collect();
        let mut chi = 1usize;
        (0..sizes.len().saturating_sub(1))
            .map(|t| {
                let rows = chi.saturating_mul(sizes[t]);
                let cols: usize = sizes[t + 1..].iter().product();
                chi = rows.min(cols).min(cap.max(1));
                chi
            })
            .collect()
    }
}

/// The most balanced split of `dim` into `parts` factors, each at least 2 (largest first), or
/// `None` when there is none (a prime, or too few prime factors).
pub fn balanced_factors(dim: usize, parts: usize) -> Option<Vec<usize>> {
    fn search(rest: usize, parts: usize, max: usize, current: &mut Vec<usize>, best: &mut Option<Vec<usize>>) {
        if parts == 1 {
            if rest >= 2 && rest <= max {
                current.push(rest);
                let spread = |v: &[usize]| v[0] as f64 / *v.last().expect("nonempty") as f64;
                if best.as_ref().is_none_or(|b| spread(current) < spread(b)) {
                    *best = Some(current.clone());
                }
                current.pop();
            }
            return;
        }
        // Factors in non-increasing order, so each split is tried once.
        for f in (2..=max.min(rest)).rev() {
            if rest.is_multiple_of(f) {
                current.push(f);
                search(rest / f, parts - 1, f, current, best);
                current.pop();
            }
        }
    }
    if parts == 0 {
        return None;
    }
    let mut best = None;
    search(dim, parts, dim, &mut Vec::new(), &mut best);
    best
}

/// How the sweep truncates each bond.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BondRule {
    /// At most this bond dimension.
    pub max_bond: Option<usize>,
    /// The fewest singular values of each split whose energy reaches this share.
    pub energy: Option<f64>,
}

/// A weight as a chain of cores.
#[derive(Clone, Debug, PartialEq)]
pub struct Mpo {
    pub shape: MpoShape,
    /// Inner bond dimensions (`cores - 1` of them).
    pub bonds: Vec<usize>,
    /// Core `t` as the row-major matrix `[χ_t·k_t, n_t·χ_(t+1)]`.
    pub cores: Vec<Vec<f32>>,
    /// The share of each split's energy its truncation kept.
    pub kept_energy: Vec<f64>,
}

/// TT-SVD of `W [k, n]` into `shape.cores()` cores, truncating each bond by `rule`.
pub fn decompose_mpo(w: &[f32], k: usize, n: usize, shape: &MpoShape, rule: BondRule) -> Result<Mpo, LowRankError> {
    if shape.in_factors.iter().product::<usize>() != k {
        return Err(LowRankError::BadFactors { factors: shape.in_factors.clone(), dim: k });
    }
    if shape.out_factors.iter().product::<usize>() != n || shape.out_factors.len() != shape.in_factors.len() {
        return Err(LowRankError::BadFactors { factors: shape.out_factors.clone(), dim: n });
    }
    let wm = super::weight_matrix(w, k, n)?;
    let cores_count = shape.cores();
    let sizes: Vec<usize> = shape.in_factors.iter().zip(&shape.out_factors).map(|(a, b)| a * b).collect();
    // P[(i1 j1), …, (ic jc)], row-major over the pairs.
    let mut permuted = vec![0.0f64; k * n];
    let mut in_digits = vec![0usize; cores_count];
    let mut out_digits = vec![0usize; cores_count];
    for i in 0..k {
        digits(i, &shape.in_factors, &mut in_digits);
        for j in 0..n {
            digits(j, &shape.out_factors, &mut out_digits);
            let mut position = 0;
            for t in 0..cores_count {
                position = position * sizes[t] + in_digits[t] * shape.out_factors[t] + out_digits[t];
            }
            permuted[position] = wm[(i, j)];
        }
    }
    let mut cores = Vec::with_capacity(cores_count);
    let mut bonds = Vec::new();
    let mut kept_energy = Vec::new();
    // The part not yet split, `[χ_t·k_t n_t, rest]` row-major.
    let mut carry = permuted;
    let mut chi = 1;
    for &size in sizes.iter().take(cores_count - 1) {
        let rows = chi * size;
        let cols = carry.len() / rows;
        let matrix = MatRef::from_row_major_slice(&carry, rows, cols);
        let (values, u, v) = thin_svd(matrix)?;
        let energies: Vec<f64> = values.iter().map(|s| s * s).collect();
        let total: f64 = energies.iter().sum();
        let mut keep = values.len();
        if let Some(share) = rule.energy {
            let mut kept = 0.0;
            keep = energies
                .iter()
                .position(|&e| {
                    kept += e;
                    kept >= share * total * (1.0 - 1e-12)
                })
                .map_or(values.len(), |i| i + 1);
        }
        if let Some(cap) = rule.max_bond {
            keep = keep.min(cap);
        }
        let keep = keep.clamp(1, values.len().max(1));
        kept_energy.push(if total > 0.0 { energies[..keep].iter().sum::<f64>() / total } else { 1.0 });
        // Core t: the first `keep` left singular vectors, rows (a_t, i_t, j_t).
        let mut core = vec![0.0f32; rows * keep];
        for r in 0..rows {
            for c in 0..keep {
                core[r * keep + c] = u[(r, c)] as f32;
            }
        }
        // Its rows are (a_t, i_t, j_t) and columns a_(t+1): row-major, that is already the
        // matrix [(a_t, i_t), (j_t, a_(t+1))] the contraction multiplies by.
        cores.push(core);
        // Carry Σ·Vᵀ forward: [keep, cols] is [keep·k n, cols / (k n)] for the next split.
        let mut next = vec![0.0f64; keep * cols];
        for r in 0..keep {
            for c in 0..cols {
                next[r * cols + c] = values[r] * v[(c, r)];
            }
        }
        carry = next;
        bonds.push(keep);
        chi = keep;
    }
    cores.push(carry.iter().map(|&v| v as f32).collect());
    Ok(Mpo { shape: shape.clone(), bonds, cores, kept_energy })
}

/// Row-major digits of `index` in the mixed radix `factors`.
fn digits(mut index: usize, factors: &[usize], out: &mut [usize]) {
    for t in (0..factors.len()).rev() {
        out[t] = index % factors[t];
        index /= factors[t];
    }
}

impl Mpo {
    pub fn params(&self) -> u64 {
        self.shape.params(&self.bonds)
    }

    /// The bond dimension before core `t` (1 before the first, and after the last).
    pub fn bond(&self, t: usize) -> usize {
        if t == 0 || t == self.shape.cores() { 1 } else { self.bonds[t - 1] }
    }

    /// `x [rows, K] · W` as the graph computes it, core by core: the state
    /// `[rows, k_t, Q_t, χ_t]` (`Q_t` the remaining input digits, then the output digits made
    /// so far) has `k_t` moved last, is reshaped to `[rows, Q_t, χ_t·k_t]` and multiplied by
    /// core `t`, giving `[rows, Q_t, n_t·χ_(t+1)]`; after the last core the state is
    /// `[rows, n1..nc]` = `[rows, N]`.
    pub fn apply(&self, x: &[f32], rows: usize) -> Vec<f32> {
        let mut state: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let width = state.len() / rows.max(1);
        let mut q = width;
        for t in 0..self.shape.cores() {
            let (k, n, chi_in, chi_out) = (self.shape.in_factors[t], self.shape.out_factors[t], self.bond(t), self.bond(t + 1));
            q /= k * chi_in;
            let core = &self.cores[t];
            let mut next = vec![0.0f64; rows * q * n * chi_out];
            for r in 0..rows {
                for i in 0..k {
                    for p in 0..q {
                        for a in 0..chi_in {
                            let s = state[((r * k + i) * q + p) * chi_in + a];
                            if s == 0.0 {
                                continue;
                            }
                            let row = &core[(a * k + i) * n * chi_out..(a * k + i + 1) * n * chi_out];
                            let out = &mut next[(r * q + p) * n * chi_out..(r * q + p + 1) * n * chi_out];
                            for (o, &c) in out.iter_mut().zip(row) {
                                *o += s * c as f64;
                            }
                        }
                    }
                }
            }
            state = next;
            q *= n * chi_out;
        }
        state.into_iter().map(|v| v as f32).collect()
    }

    /// The dense `[K, N]` weight the cores represent: the cores contracted bond by bond
    /// (`K·N·χ` multiply-adds), then the digit pairs put back in place.
    pub fn to_dense(&self) -> Vec<f32> {
        let cores = self.shape.cores();
        let (k, n): (usize, usize) = (self.shape.in_factors.iter().product(), self.shape.out_factors.iter().product());
        // [(i1 j1)…(it jt), χ_(t+1)] row-major; core t read as [χ_t, (i_t j_t χ_(t+1))].
        let mut chain = Mat::<f64>::from_fn(1, 1, |_, _| 1.0);
        for t in 0..cores {
            let (chi_in, chi_out) = (self.bond(t), self.bond(t + 1));
            let width = self.shape.in_factors[t] * self.shape.out_factors[t] * chi_out;
            let core = Mat::<f64>::from_fn(chi_in, width, |r, c| self.cores[t][r * width + c] as f64);
            let product = super::truncate::product(chain.as_ref(), core.as_ref());
            // [P, (i j χ')] row-major is [P·(i j), χ'] row-major.
            let rows = product.nrows() * width / chi_out;
            chain = Mat::from_fn(rows, chi_out, |r, c| {
                let flat = r * chi_out + c;
                product[(flat / width, flat % width)]
            });
        }
        let sizes: Vec<usize> = self.shape.in_factors.iter().zip(&self.shape.out_factors).map(|(a, b)| a * b).collect();
        let mut dense = vec![0.0f32; k * n];
        let (mut in_digits, mut out_digits) = (vec![0; cores], vec![0; cores]);
        for i in 0..k {
            digits(i, &self.shape.in_factors, &mut in_digits);
            for j in 0..n {
                digits(j, &self.shape.out_factors, &mut out_digits);
                let position = (0..cores).fold(0, |p, t| p * sizes[t] + in_digits[t] * self.shape.out_factors[t] + out_digits[t]);
                dense[i * n + j] = chain[(position, 0)] as f32;
            }
        }
        dense
    }
}

/// Singular values (descending) and the thin `U` and `V`.
type Svd = (Vec<f64>, Mat<f64>, Mat<f64>);

/// The thin SVD of `a`, on one thread.
fn thin_svd(a: MatRef<'_, f64>) -> Result<Svd, LowRankError> {
    let (m, n) = a.shape();
    let size = m.min(n);
    let mut s = faer::diag::Diag::<f64>::zeros(size);
    let mut u = Mat::<f64>::zeros(m, size);
    let mut v = Mat::<f64>::zeros(n, size);
    let params = Default::default();
    let mut mem = MemBuffer::new(svd_scratch::<f64>(m, n, ComputeSvdVectors::Thin, ComputeSvdVectors::Thin, Par::Seq, params));
    svd(a, s.as_mut(), Some(u.as_mut()), Some(v.as_mut()), Par::Seq, MemStack::new(&mut mem), params).map_err(|_| LowRankError::NoConvergence { what: "MPO split" })?;
    let values = s.column_vector();
    // Fix each pair's sign (largest entry of v positive) so outputs do not depend on the
    // library's choice.
    for c in 0..size {
        let largest = v.col(c).iter().copied().fold(0.0f64, |m, x| if x.abs() > m.abs() { x } else { m });
        if largest < 0.0 {
            u.col_mut(c).iter_mut().for_each(|x| *x = -*x);
            v.col_mut(c).iter_mut().for_each(|x| *x = -*x);
        }
    }
    Ok(((0..size).map(|i| values[i]).collect(), u, v))
}

#[cfg(test)]
mod tests {
    use super::super::truncate::relative_error;
    use super::super::truncate::tests::random;
    use super::*;

    #[test]
    fn balanced_factors_are_as_even_as_the_dimension_allows() {
        assert_eq!(balanced_factors(576, 2), Some(vec![24, 24]));
        assert_eq!(balanced_factors(1536, 2), Some(vec![48, 32]));
        assert_eq!(balanced_factors(576, 3), Some(vec![9, 8, 8]));
        assert_eq!(balanced_factors(384, 4), Some(vec![6, 4, 4, 4]));
        assert_eq!(balanced_factors(577, 2), None);
        assert_eq!(balanced_factors(8, 4), None);
    }

    /// Full bonds reproduce the weight for 2, 3 and 4 cores; the graph's contraction order
    /// ([`Mpo::apply`]) equals `x · W`.
    #[test]
    fn full_bonds_reproduce_the_weight() {
        for (k, n, cores) in [(12, 10, 2), (24, 18, 3), (16, 16, 4)] {
            let w = random(k, n, cores as u64);
            let shape = MpoShape { in_factors: balanced_factors(k, cores).unwrap(), out_factors: balanced_factors(n, cores).unwrap() };
            let mpo = decompose_mpo(&w, k, n, &shape, BondRule { max_bond: None, energy: None }).unwrap();
            assert_eq!(mpo.bonds, shape.full_bonds());
            assert!(relative_error(&w, &mpo.to_dense()) < 1e-6, "{k}x{n}/{cores}: {}", relative_error(&w, &mpo.to_dense()));
            let x = random(3, k, 99);
            let y = mpo.apply(&x, 3);
            for r in 0..3 {
                for c in 0..n {
                    let expected: f32 = (0..k).map(|i| x[r * k + i] * w[i * n + c]).sum();
                    assert!((y[r * n + c] - expected).abs() < 1e-4, "{r},{c}");
                }
            }
        }
    }

    /// Two cores are the Kronecker-product SVD: a weight that is one Kronecker product
    /// `A ⊗ B` needs bond 1, and smaller bonds lose more.
    #[test]
    fn bonds_truncate_and_params_count() {
        let (a, b) = (random(4, 3, 1), random(6, 5, 2));
        let (k, n) = (24, 15);
        let w: Vec<f32> = (0..k * n).map(|idx| (idx / n, idx % n)).map(|(i, j)| a[(i / 6) * 3 + j / 5] * b[(i % 6) * 5 + j % 5]).collect();
        let shape = MpoShape { in_factors: vec![4, 6], out_factors: vec![3, 5] };
        let mpo = decompose_mpo(&w, k, n, &shape, BondRule { max_bond: Some(1), energy: None }).unwrap();
        assert!(relative_error(&w, &mpo.to_dense()) < 1e-6);
        assert_eq!(mpo.params(), 12 + 30);
        let noisy = random(k, n, 3);
        let errors: Vec<f64> = [1, 3, 6]
            .iter()
            .map(|&cap| {
                let m = decompose_mpo(&noisy, k, n, &shape, BondRule { max_bond: Some(cap), energy: None }).unwrap();
                assert_eq!(m.params(), shape.params(&[cap]));
                relative_error(&noisy, &m.to_dense())
            })
            .collect();
        assert!(errors[0] > errors[1] && errors[1] > errors[2], "{errors:?}");
        // x [.., 24] -> [.., 4, 6]: core 0 maps 6 vectors of 4 to 3·cap, core 1 maps 3 vectors of
        // cap·6 to 5.
        assert_eq!(shape.macs_per_row(&[2]), (6 * 4 * 3 * 2 + 3 * 2 * 6 * 5) as u64);
        let by_energy = decompose_mpo(&noisy, k, n, &shape, BondRule { max_bond: None, energy: Some(0.5) }).unwrap();
        assert!(by_energy.kept_energy[0] >= 0.5 && by_energy.bonds[0] < 12);
    }

    #[test]
    fn factors_that_do_not_multiply_out_are_errors() {
        let shape = MpoShape { in_factors: vec![4, 5], out_factors: vec![3, 5] };
        assert!(matches!(decompose_mpo(&[0.0; 24 * 15], 24, 15, &shape, BondRule { max_bond: None, energy: None }), Err(LowRankError::BadFactors { .. })));
    }
}
