//! How many components a layer keeps: per layer, by a fixed rank, an energy threshold or a
//! parameter ratio; or over all layers, by a global parameter budget.

/// The rank rule of one layer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RankRule {
    /// Keep this many components (at most `min(K, N)`).
    Fixed(usize),
    /// The fewest components whose energy (squared singular values) reaches this share of
    /// the total.
    Energy(f64),
    /// The most components whose factors hold at most this share of the layer's `K·N`
    /// parameters: `r = ⌊ratio·K·N / (K + N)⌋`.
    Ratio(f64),
}

impl RankRule {
    /// The rank for a `[k, n]` layer whose component energies are `energies` (descending; read
    /// only by [`RankRule::Energy`]). At least 1.
    pub fn rank(&self, k: usize, n: usize, energies: &[f64]) -> usize {
        let full = k.min(n);
        let r = match *self {
            RankRule::Fixed(r) => r,
            RankRule::Ratio(ratio) => (ratio * (k * n) as f64 / (k + n) as f64).floor() as usize,
            RankRule::Energy(share) => {
                let total: f64 = energies.iter().sum();
                let mut kept = 0.0;
                // Relative slack so a share of 1 keeps every nonzero component, not fewer or more
                // because of rounding in the sum.
                let target = share * total * (1.0 - 1e-12);
                energies
                    .iter()
                    .position(|&e| {
                        kept += e;
                        kept >= target
                    })
                    .map_or(energies.len(), |i| i + 1)
            }
        };
        r.clamp(1, full.max(1))
    }
}

/// The largest rank at which the factors `A [K, r]` and `B [r, N]` hold fewer parameters than
/// `W [K, N]` (0 when none does): `r·(K + N) < K·N`.
pub fn break_even_rank(k: usize, n: usize) -> usize {
    if k == 0 || n == 0 { 0 } else { (k * n - 1) / (k + n) }
}

/// One way to store a layer: how many parameters it takes and what it costs (a relative
/// squared error; 0 for the layer left dense).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    pub params: u64,
    pub cost: f64,
}

/// For each layer, the index of the option that keeps the total parameters within `budget`
/// at the least total cost, by Lagrangian relaxation: each layer picks the option minimising
/// `cost + λ·params` for the smallest `λ` whose picks fit the budget. (Optimal among the
/// picks on each layer's lower convex hull; the options are fine-grained, one rank apart, so
/// the budget is met closely.) When even the smallest options exceed the budget, those.
pub fn allocate_budget(layers: &[Vec<Choice>], budget: u64) -> Vec<usize> {
    let pick = |lambda: f64| -> Vec<usize> {
        layers
            .iter()
            .map(|options| {
                let value = |o: &Choice| o.cost + lambda * o.params as f64;
                // Ties go to fewer parameters, then to the earlier option: deterministic.
                (0..options.len()).min_by(|&a, &b| value(&options[a]).total_cmp(&value(&options[b])).then(options[a].params.cmp(&options[b].params)).then(a.cmp(&b))).unwrap_or(0)
            })
            .collect()
    };
    let total = |picks: &[usize]| -> u64 { picks.iter().zip(layers).map(|(&i, options)| options.get(i).map_or(0, |o| o.params)).sum() };
    let cheapest = pick(f64::INFINITY);
    let smallest: Vec<usize> = layers.iter().map(|options| (0..options.len()).min_by_key(|&i| (options[i].params, i)).unwrap_or(0)).collect();
    if total(&smallest) > budget {
        return smallest;
    }
    let free = pick(0.0);
    if total(&free) <= budget {
        return free;
    }
    // Costs are relative errors (order 1) and parameters counts (up to ~1e10): λ spans
    // many orders of magnitude, so search its logarithm.
    let (mut lo, mut hi) = (-80.0f64, -80.0f64);
    while total(&pick(10f64.powf(hi))) > budget {
        hi += 4.0;
        if hi > 80.0 {
            return cheapest;
        }
    }
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if total(&pick(10f64.powf(mid))) > budget {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    pick(10f64.powf(hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_give_the_documented_ranks() {
        // 576 x 1536: the factors of rank r hold 2112 r parameters; 80% of 884736 is 335 ranks.
        assert_eq!(RankRule::Ratio(0.8).rank(576, 1536, &[]), 335);
        assert_eq!(break_even_rank(576, 1536), 418);
        assert_eq!(break_even_rank(4, 4), 1);
        assert_eq!(break_even_rank(3, 3), 1);
        assert_eq!(break_even_rank(2, 2), 0);
        assert_eq!(RankRule::Fixed(1000).rank(576, 192, &[]), 192);
        assert_eq!(RankRule::Fixed(0).rank(576, 192, &[]), 1);
        let energies = [50.0, 30.0, 15.0, 5.0];
        assert_eq!(RankRule::Energy(0.5).rank(4, 4, &energies), 1);
        assert_eq!(RankRule::Energy(0.8).rank(4, 4, &energies), 2);
        assert_eq!(RankRule::Energy(0.81).rank(4, 4, &energies), 3);
        assert_eq!(RankRule::Energy(1.0).rank(4, 4, &energies), 4);
    }

    /// Two layers of equal size: the budget goes to the one whose cost falls faster.
    #[test]
    fn the_budget_goes_where_it_lowers_the_cost_most() {
        let curve = |drops: &[f64]| -> Vec<Choice> {
            // Rank r keeps the first r components; the cost is the energy left.
            let total: f64 = drops.iter().sum();
            let mut options: Vec<Choice> = (1..=drops.len()).map(|r| Choice { params: r as u64 * 10, cost: (total - drops[..r].iter().sum::<f64>()) / total }).collect();
            options.push(Choice { params: 100, cost: 0.0 });
            options
        };
        let steep = curve(&[0.9, 0.05, 0.03, 0.02]);
        let flat = curve(&[0.25, 0.25, 0.25, 0.25]);
        let picks = allocate_budget(&[steep.clone(), flat.clone()], 50);
        let params: u64 = picks.iter().zip([&steep, &flat]).map(|(&i, o)| o[i].params).sum();
        assert!(params <= 50);
        // The steep layer needs one component; the flat layer gets the rest.
        assert_eq!(steep[picks[0]].params, 10, "{picks:?}");
        assert_eq!(flat[picks[1]].params, 40, "{picks:?}");
        // Enough budget for everything: no error, and of the error-free options the smaller
        // (rank 4 loses nothing here and takes 40 parameters, the dense layer 100).
        assert_eq!(allocate_budget(&[steep.clone(), flat.clone()], 200), vec![3, 3]);
        // Less than the smallest options: those.
        assert_eq!(allocate_budget(&[steep, flat], 5), vec![0, 0]);
    }
}
