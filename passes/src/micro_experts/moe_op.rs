//! Micro-experts of a `com.microsoft.MoE` node: its experts are slices of two tensors, fc1
//! `[E, f·I, H]` and fc2 `[E, H, I]` (layouts and semantics in [`compactor_ir::moe`]), and the
//! activation the scores need is inside the op. So the statistics are computed here from what
//! the node reads, captured in calibration: its input rows and router logits are routed as the
//! op routes them, each expert's fc1 runs on its tokens, and `φ = weight · act(fc1 x)` is
//! accumulated per neuron. Cutting keeps chosen neurons of every expert at one width (the op's
//! tensors have one), padding with zero neurons where experts keep fewer: a zero fc2 column
//! adds nothing, whatever its activation.

use super::{ExpertWeights, NeuronStats, Weight};
use compactor_ir::moe::MoeAttributes;
use faer::linalg::matmul::matmul;
use faer::{Accum, MatMut, MatRef, Par};
use rayon::prelude::*;

/// A MoE node's expert weights, as stored.
pub struct MoeWeights<'a> {
    pub attrs: MoeAttributes,
    pub experts: usize,
    /// Intermediate neurons per expert (`I`).
    pub width: usize,
    /// Input features (`H`).
    pub hidden: usize,
    pub fc1: &'a [f32],
    pub fc1_bias: Option<&'a [f32]>,
    pub fc2: &'a [f32],
}

/// One expert's gate and up rows (`[I, H]` each, the gate only for SwiGLU), in neuron order.
pub struct ExpertRows {
    pub gate: Option<Vec<f32>>,
    pub up: Vec<f32>,
}

/// Per expert, per neuron: Σ φ² and max φ² over the tokens routed to it.
#[derive(Clone, Debug, Default)]
pub struct MoeSums {
    pub sum_square: Vec<Vec<f64>>,
    pub max_square: Vec<Vec<f64>>,
}

impl MoeWeights<'_> {
    fn rows_per_expert(&self) -> usize {
        self.attrs.activation.fusion() * self.width
    }

    /// The `e`-th expert's rows of fc1, split into gate and up.
    pub fn expert_rows(&self, e: usize) -> ExpertRows {
        let (h, i) = (self.hidden, self.width);
        let fc1 = &self.fc1[e * self.rows_per_expert() * h..][..self.rows_per_expert() * h];
        let mut gate = Vec::new();
        let mut up = Vec::with_capacity(i * h);
        for j in 0..i {
            let (first, second) = self.attrs.activation.fc1_rows(j, i);
            match second {
                Some(second) => {
                    gate.extend_from_slice(&fc1[first * h..][..h]);
                    up.extend_from_slice(&fc1[second * h..][..h]);
                }
                None => up.extend_from_slice(&fc1[first * h..][..h]),
            }
        }
        ExpertRows { gate: (!gate.is_empty()).then_some(gate), up }
    }

    /// The `e`-th expert as the scores read it (gate and up `[H, I]`, down `[I, H]`, all
    /// stored transposed).
    pub fn expert<'r>(&'r self, e: usize, rows: &'r ExpertRows) -> ExpertWeights<'r> {
        let (h, i) = (self.hidden, self.width);
        let stored = |data: &'r [f32]| Weight { data, k: h, n: i, transposed: true };
        ExpertWeights { gate: rows.gate.as_deref().map(stored), up: stored(&rows.up), down: Weight { data: &self.fc2[e * h * i..][..h * i], k: i, n: h, transposed: true } }
    }

    /// Adds one batch: `x` (`tokens × H`) and the router's `logits` (`tokens × E`).
    pub fn accumulate(&self, x: &[f32], logits: &[f32], sums: &mut MoeSums) -> Result<(), String> {
        let (h, i, e_count) = (self.hidden, self.width, self.experts);
        if !x.len().is_multiple_of(h.max(1)) || logits.len() * h != x.len() * e_count {
            return Err(format!("the input has {} values and the router {}: not {h} features and {e_count} experts per token", x.len(), logits.len()));
        }
        if sums.sum_square.is_empty() {
            *sums = MoeSums { sum_square: vec![vec![0.0; i]; e_count], max_square: vec![vec![0.0; i]; e_count] };
        }
        let routes = self.attrs.route(logits, e_count);
        let wide = self.rows_per_expert();
        // Experts are independent; each adds its tokens in token order (deterministic).
        sums.sum_square.par_iter_mut().zip(sums.max_square.par_iter_mut()).zip(routes.par_iter()).enumerate().for_each(|(e, ((sum_sq, max_sq), routed))| {
            let n = routed.len();
            if n == 0 || i == 0 {
                return;
            }
            let rows: Vec<f32> = routed.iter().flat_map(|&(t, _)| x[t * h..][..h].iter().copied()).collect();
            let fc1 = MatRef::from_row_major_slice(&self.fc1[e * wide * h..][..wide * h], wide, h);
            // Column-major [wide, n] is row-major [n, wide]: one token's fc1 outputs together.
            let mut pre = vec![0f32; wide * n];
            matmul(MatMut::from_column_major_slice_mut(&mut pre, wide, n), Accum::Replace, fc1, MatRef::from_row_major_slice(&rows, n, h).transpose(), 1.0, Par::Seq);
            if let Some(bias) = self.fc1_bias {
                let bias = &bias[e * wide..][..wide];
                pre.chunks_exact_mut(wide).for_each(|row| row.iter_mut().zip(bias).for_each(|(v, &b)| *v += b));
            }
            let mut act = vec![0f32; i * n];
            self.attrs.activation.apply(&pre, &mut act, i);
            for (row, &(_, weight)) in act.chunks_exact(i).zip(routed) {
                for ((s, m), &a) in sum_sq.iter_mut().zip(max_sq.iter_mut()).zip(row) {
                    let phi = (weight * a) as f64;
                    *s += phi * phi;
                    if phi * phi > *m || phi.is_nan() {
                        *m = phi * phi;
                    }
                }
            }
        });
        Ok(())
    }
}

impl MoeSums {
    /// The statistics of expert `e`, with the layer input's Σ x² (for `wanda`).
    pub fn neuron_stats(&self, e: usize, input_sum_square: Option<Vec<f64>>) -> NeuronStats {
        NeuronStats { sum_square: self.sum_square[e].clone(), max_square: self.max_square[e].clone(), input_sum_square }
    }
}

/// New fc1, fc1 bias and fc2 of `width` neurons per expert: expert `e` keeps neurons
/// `kept[e]` (in that order), then zero neurons up to `width`.
pub fn cut(w: &MoeWeights<'_>, kept: &[Vec<usize>], width: usize) -> (Vec<f32>, Option<Vec<f32>>, Vec<f32>) {
    let (h, i, fusion) = (w.hidden, w.width, w.attrs.activation.fusion());
    let (wide, new_wide) = (fusion * i, fusion * width);
    let mut fc1 = vec![0f32; w.experts * new_wide * h];
    let mut bias = w.fc1_bias.map(|_| vec![0f32; w.experts * new_wide]);
    let mut fc2 = vec![0f32; w.experts * h * width];
    for (e, kept) in kept.iter().enumerate() {
        for (slot, &j) in kept.iter().enumerate() {
            let (from, to) = (w.attrs.activation.fc1_rows(j, i), w.attrs.activation.fc1_rows(slot, width));
            for (src, dst) in [(Some(from.0), Some(to.0)), (from.1, to.1)] {
                let (Some(src), Some(dst)) = (src, dst) else { continue };
                fc1[(e * new_wide + dst) * h..][..h].copy_from_slice(&w.fc1[(e * wide + src) * h..][..h]);
                if let (Some(bias), Some(old)) = (bias.as_mut(), w.fc1_bias) {
                    bias[e * new_wide + dst] = old[e * wide + src];
                }
            }
            for row in 0..h {
                fc2[(e * h + row) * width + slot] = w.fc2[(e * h + row) * i + j];
            }
        }
    }
    (fc1, bias, fc2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use compactor_ir::moe::{GateUp, MoeActivation};

    fn swiglu(gate_up: GateUp) -> MoeAttributes {
        MoeAttributes { k: 1, normalize: true, activation: MoeActivation::SwiGlu { gate_up, alpha: 1f32.to_bits(), beta: 0f32.to_bits(), limit: None } }
    }

    /// Two experts of three neurons over two features; k = 1.
    fn weights<'a>(attrs: MoeAttributes, fc1: &'a [f32], fc2: &'a [f32]) -> MoeWeights<'a> {
        MoeWeights { attrs, experts: 2, width: 3, hidden: 2, fc1, fc1_bias: None, fc2 }
    }

    #[test]
    fn statistics_are_each_routed_neurons_weighted_activation() {
        // Interleaved fc1 rows: expert e, neuron j: gate row (j+1, 0), up row (0, e+1).
        let mut fc1 = Vec::new();
        for e in 0..2 {
            for j in 0..3 {
                fc1.extend([(j + 1) as f32, 0.0, 0.0, (e + 1) as f32]);
            }
        }
        let fc2 = vec![1.0; 2 * 2 * 3];
        let w = weights(swiglu(GateUp::Interleaved), &fc1, &fc2);
        // Token 0 goes to expert 0, token 1 to expert 1 (k = 1: weight 1 after renormalising).
        let x = [1.0, 2.0, -1.0, 0.5];
        let logits = [5.0, 0.0, 0.0, 5.0];
        let mut sums = MoeSums::default();
        w.accumulate(&x, &logits, &mut sums).unwrap();
        w.accumulate(&x, &logits, &mut sums).unwrap();
        let silu = |g: f32| g / (1.0 + (-g).exp());
        for j in 0..3 {
            let g = (j + 1) as f32;
            let phi0 = silu(g * 1.0) * (1.0 * 2.0);
            let phi1 = silu(-g) * (2.0 * 0.5);
            let close = |a: f64, b: f32| (a - b as f64).abs() < 1e-5 * (1.0 + b.abs() as f64);
            assert!(close(sums.sum_square[0][j], 2.0 * phi0 * phi0) && close(sums.max_square[0][j], phi0 * phi0), "{sums:?}");
            assert!(close(sums.sum_square[1][j], 2.0 * phi1 * phi1) && close(sums.max_square[1][j], phi1 * phi1), "{sums:?}");
        }
        // Expert 1 de-interleaved: gate rows (j+1, 0), up rows (0, 2).
        let rows = w.expert_rows(1);
        assert_eq!(rows.gate.as_deref(), Some(&[1.0, 0.0, 2.0, 0.0, 3.0, 0.0][..]));
        assert_eq!(rows.up, vec![0.0, 2.0, 0.0, 2.0, 0.0, 2.0]);
    }

    #[test]
    fn cutting_keeps_chosen_neurons_and_pads_with_zeros() {
        let fc1: Vec<f32> = (0..2 * 6 * 2).map(|v| v as f32).collect();
        let fc2: Vec<f32> = (0..2 * 2 * 3).map(|v| 100.0 + v as f32).collect();
        let w = weights(swiglu(GateUp::Interleaved), &fc1, &fc2);
        // Expert 0 keeps neurons 2 and 0, expert 1 keeps neuron 1 and a zero neuron.
        let (new_fc1, bias, new_fc2) = cut(&w, &[vec![2, 0], vec![1]], 2);
        assert!(bias.is_none());
        // Expert 0: rows (4, 5) then (0, 1), two features each; expert 1: rows 6+2, 6+3, zeros.
        let rows = |r: &[usize]| r.iter().flat_map(|&r| [fc1[2 * r], fc1[2 * r + 1]]).collect::<Vec<f32>>();
        let mut want = rows(&[4, 5, 0, 1, 8, 9]);
        want.extend([0.0; 4]);
        assert_eq!(new_fc1, want);
        // fc2 [E, H, I]: expert 0 columns 2, 0; expert 1 column 1 and zero.
        assert_eq!(new_fc2, vec![102.0, 100.0, 105.0, 103.0, 107.0, 0.0, 110.0, 0.0]);
    }
}
