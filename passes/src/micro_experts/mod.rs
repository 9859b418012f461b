//! Micro-expert scores: how much each intermediate neuron of an FFN expert contributes.
//!
//! A neuron `j` of an expert contributes `φ_j(x) · d_j` to the layer's output, where
//! `φ_j = g(x) · act(gate_j · x) · (up_j · x)` (`g` the expert's routing weight, 1 in a dense
//! FFN) is the down projection's input and `d_j` is the down projection's row `j`.
//!
//! - `camera` (CAMERA, arXiv 2508.02322, as its code computes it): `‖d_j‖² · ((1−ρ)·E2 + ρ·E∞)`
//!   with `E2 = Σ_x φ_j²` and `E∞ = max_x φ_j²` over the calibration tokens.
//! - `magnitude` (NIRVANA): `Σ|gate_j| + Σ|up_j| + Σ|d_j|`, no data.
//! - `activation`: `E2` alone.
//! - `wanda`: the sum of Wanda's per-weight scores `|w| · ‖input‖₂` over the neuron's weights:
//!   `Σ_k (|gate_kj| + |up_kj|) · ‖x_k‖ + ‖φ_j‖ · Σ_i |d_ji|`.

pub mod moe_op;

use crate::calib::Stats;
use serde::{Deserialize, Serialize};

/// How micro-experts are ranked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Score {
    /// CAMERA: ‖down row‖² · ((1−rho)·Σφ² + rho·max φ²) over the calibration tokens.
    #[default]
    Camera,
    /// NIRVANA: L1 of the neuron's gate column, up column and down row (no data).
    Magnitude,
    /// Σφ² over the calibration tokens.
    Activation,
    /// Wanda's |w|·‖input‖ summed over the neuron's weights.
    Wanda,
}

impl Score {
    pub fn needs_data(self) -> bool {
        self != Score::Magnitude
    }
}

/// A weight as the `[K, N]` matrix a layer multiplies by (stored `[N, K]` when `transposed`).
pub struct Weight<'a> {
    pub data: &'a [f32],
    pub k: usize,
    pub n: usize,
    pub transposed: bool,
}

impl Weight<'_> {
    fn at(&self, row: usize, col: usize) -> f32 {
        if self.transposed { self.data[col * self.k + row] } else { self.data[row * self.n + col] }
    }

    /// Per output column `j`: `Σ_k |W[k, j]| · scale[k]` (scale 1 when not given).
    pub fn column_l1(&self, scale: Option<&[f64]>) -> Vec<f64> {
        let mut sums = vec![0.0f64; self.n];
        for row in 0..self.k {
            let s = scale.map_or(1.0, |s| s[row]);
            for (j, sum) in sums.iter_mut().enumerate() {
                *sum += self.at(row, j).abs() as f64 * s;
            }
        }
        sums
    }

    /// Per input row `j`: `(Σ_i |W[j, i]|, Σ_i W[j, i]²)`.
    pub fn row_norms(&self) -> (Vec<f64>, Vec<f64>) {
        (0..self.k).map(|j| (0..self.n).map(|i| self.at(j, i) as f64).fold((0.0, 0.0), |(l1, sq), w| (l1 + w.abs(), sq + w * w))).unzip()
    }
}

/// The weights of one expert.
pub struct ExpertWeights<'a> {
    pub gate: Option<Weight<'a>>,
    pub up: Weight<'a>,
    pub down: Weight<'a>,
}

/// Calibration statistics of one expert.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NeuronStats {
    /// `E2`: Σ over tokens of φ_j².
    pub sum_square: Vec<f64>,
    /// `E∞`: the largest φ_j² of any token.
    pub max_square: Vec<f64>,
    /// Σ over tokens of x_k² of the FFN input (for `wanda`).
    pub input_sum_square: Option<Vec<f64>>,
}

impl NeuronStats {
    /// From the calibration driver's statistics of the down projection's input (mean square
    /// and max |x| wanted) and, for `wanda`, the FFN input's Σ x² ([`sums_of_squares`]).
    pub fn from_calibration(hidden: &Stats, input_sum_square: Option<Vec<f64>>) -> Option<NeuronStats> {
        Some(NeuronStats { sum_square: sums_of_squares(hidden)?, max_square: hidden.max_abs.as_ref()?.iter().map(|&m| (m as f64) * (m as f64)).collect(), input_sum_square })
    }
}

/// Σ x² per input over every row, from statistics with the mean square.
pub fn sums_of_squares(s: &Stats) -> Option<Vec<f64>> {
    s.mean_square.as_ref().map(|m| m.iter().map(|&v| v as f64 * s.rows as f64).collect())
}

/// Per-neuron scores of one expert (higher: more useful). `stats` is needed by every score
/// but `magnitude`, and `wanda` needs its `input_sum_square`.
pub fn neuron_scores(score: Score, rho: f64, w: &ExpertWeights<'_>, stats: Option<&NeuronStats>) -> Result<Vec<f64>, String> {
    let width = w.down.k;
    if w.up.n != width || w.gate.as_ref().is_some_and(|g| g.n != width) {
        return Err(format!("the projections have {} neurons, the down projection reads {width}", w.up.n));
    }
    let need = || stats.ok_or_else(|| format!("score={score:?} needs calibration statistics"));
    let (down_l1, down_sq) = w.down.row_norms();
    Ok(match score {
        Score::Camera => {
            let s = need()?;
            (0..width).map(|j| down_sq[j] * ((1.0 - rho) * s.sum_square[j] + rho * s.max_square[j])).collect()
        }
        Score::Activation => need()?.sum_square.clone(),
        Score::Magnitude => {
            let up = w.up.column_l1(None);
            let gate = w.gate.as_ref().map(|g| g.column_l1(None));
            (0..width).map(|j| up[j] + gate.as_ref().map_or(0.0, |g| g[j]) + down_l1[j]).collect()
        }
        Score::Wanda => {
            let s = need()?;
            let input = s.input_sum_square.as_ref().ok_or("score=wanda needs the FFN input's statistics")?;
            let norms: Vec<f64> = input.iter().map(|v| v.sqrt()).collect();
            let up = w.up.column_l1(Some(&norms));
            let gate = w.gate.as_ref().map(|g| g.column_l1(Some(&norms)));
            (0..width).map(|j| up[j] + gate.as_ref().map_or(0.0, |g| g[j]) + s.sum_square[j].sqrt() * down_l1[j]).collect()
        }
    })
}

/// Which neurons of each expert stay when the `drop` lowest-scoring neurons of all the experts
/// together go; each expert then keeps a multiple of `multiple` (rounded up, at least one
/// multiple), its best neurons first. Ties go out in a fixed order (later expert, later
/// neuron first), so the result is deterministic.
pub fn pooled_keep(scores: &[Vec<f64>], drop: usize, multiple: usize) -> Vec<Vec<usize>> {
    let mut all: Vec<(f64, usize, usize)> = scores.iter().enumerate().flat_map(|(e, s)| s.iter().enumerate().map(move |(j, &v)| (v, e, j))).collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2)));
    let mut dropped: Vec<Vec<bool>> = scores.iter().map(|s| vec![false; s.len()]).collect();
    for &(_, e, j) in all.iter().take(drop) {
        dropped[e][j] = true;
    }
    scores
        .iter()
        .enumerate()
        .map(|(e, s)| {
            let mut order: Vec<usize> = (0..s.len()).collect();
            order.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
            let kept = dropped[e].iter().filter(|d| !**d).count();
            let multiple = multiple.max(1);
            let kept = (kept.div_ceil(multiple) * multiple).clamp(multiple.min(s.len()), s.len());
            order.truncate(kept);
            order
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One expert, hidden 2, 3 neurons, written out by hand.
    fn expert() -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        // gate, up: [K=2, N=3]; down: [3, 2].
        (vec![1.0, -2.0, 0.5, 0.0, 1.0, -1.0], vec![2.0, 0.0, 1.0, -1.0, 3.0, 0.0], vec![1.0, 2.0, -3.0, 0.0, 0.5, 0.5])
    }

    #[test]
    fn scores_follow_their_formulas() {
        let (g, u, d) = expert();
        let w = ExpertWeights {
            gate: Some(Weight { data: &g, k: 2, n: 3, transposed: false }),
            up: Weight { data: &u, k: 2, n: 3, transposed: false },
            down: Weight { data: &d, k: 3, n: 2, transposed: false },
        };
        let stats = NeuronStats { sum_square: vec![4.0, 1.0, 9.0], max_square: vec![2.0, 1.0, 3.0], input_sum_square: Some(vec![16.0, 1.0]) };
        // ‖d_j‖² = 5, 9, 0.5.
        let camera = neuron_scores(Score::Camera, 0.9, &w, Some(&stats)).unwrap();
        let want = [5.0 * (0.1 * 4.0 + 0.9 * 2.0), 9.0 * (0.1 * 1.0 + 0.9 * 1.0), 0.5 * (0.1 * 9.0 + 0.9 * 3.0)];
        camera.iter().zip(want).for_each(|(a, b)| assert!((a - b).abs() < 1e-12, "{a} vs {b}"));
        assert_eq!(neuron_scores(Score::Activation, 0.9, &w, Some(&stats)).unwrap(), vec![4.0, 1.0, 9.0]);
        // |gate col| + |up col| + |down row|: (1+0)+(2+1)+(1+2), (2+1)+(0+3)+(3+0), (0.5+1)+(1+0)+(0.5+0.5).
        assert_eq!(neuron_scores(Score::Magnitude, 0.9, &w, None).unwrap(), vec![7.0, 9.0, 3.5]);
        // Input norms 4 and 1: gate/up columns weighted, down rows times ‖φ_j‖ = 2, 1, 3.
        let wanda = neuron_scores(Score::Wanda, 0.9, &w, Some(&stats)).unwrap();
        let want = [(4.0 + 0.0) + (8.0 + 1.0) + 2.0 * 3.0, (8.0 + 1.0) + (0.0 + 3.0) + 1.0 * 3.0, (2.0 + 1.0) + (4.0 + 0.0) + 3.0 * 1.0];
        assert_eq!(wanda, want.to_vec());
        assert!(neuron_scores(Score::Camera, 0.9, &w, None).is_err());
    }

    #[test]
    fn transposed_weights_give_the_same_scores() {
        let (g, u, d) = expert();
        let t = |m: &[f32], k: usize, n: usize| -> Vec<f32> { (0..n).flat_map(|j| (0..k).map(move |i| m[i * n + j])).collect() };
        let (gt, ut, dt) = (t(&g, 2, 3), t(&u, 2, 3), t(&d, 3, 2));
        let plain = ExpertWeights {
            gate: Some(Weight { data: &g, k: 2, n: 3, transposed: false }),
            up: Weight { data: &u, k: 2, n: 3, transposed: false },
            down: Weight { data: &d, k: 3, n: 2, transposed: false },
        };
        let stored = ExpertWeights {
            gate: Some(Weight { data: &gt, k: 2, n: 3, transposed: true }),
            up: Weight { data: &ut, k: 2, n: 3, transposed: true },
            down: Weight { data: &dt, k: 3, n: 2, transposed: true },
        };
        let stats = NeuronStats { sum_square: vec![4.0, 1.0, 9.0], max_square: vec![2.0, 1.0, 3.0], input_sum_square: Some(vec![16.0, 1.0]) };
        for score in [Score::Camera, Score::Magnitude, Score::Activation, Score::Wanda] {
            assert_eq!(neuron_scores(score, 0.5, &plain, Some(&stats)).unwrap(), neuron_scores(score, 0.5, &stored, Some(&stats)).unwrap());
        }
    }

    #[test]
    fn pooled_keep_drops_the_lowest_across_experts() {
        let scores = vec![vec![5.0, 1.0, 3.0, 0.5], vec![2.0, 4.0, 0.1, 6.0]];
        // The three lowest of all: 0.1 (expert 1), 0.5 and 1.0 (expert 0).
        assert_eq!(pooled_keep(&scores, 3, 1), vec![vec![0, 2], vec![3, 1, 0]]);
        assert_eq!(pooled_keep(&scores, 0, 1), vec![vec![0, 2, 1, 3], vec![3, 1, 0, 2]]);
        // Multiples round each expert's kept count up.
        assert_eq!(pooled_keep(&scores, 3, 2), vec![vec![0, 2], vec![3, 1, 0, 2]]);
        // Never below one multiple.
        assert_eq!(pooled_keep(&scores, 8, 1), vec![vec![0], vec![3]]);
    }
}
