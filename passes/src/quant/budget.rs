//! Mixed precision under a bit budget: which layers to promote to a wider format.

/// A layer that could be stored wider: what it gains (output error removed) and costs (storage
/// bits added).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Promotion {
    /// The layer's index in the caller's list.
    pub index: usize,
    pub gain: f64,
    pub cost: f64,
}

/// Greedy choice, best gain per bit first (ties by index): a promotion is taken when the
/// average bits per weight stay within `budget_bits`, starting from `spent` bits over
/// `total_weights` weights. Returns the chosen indices in the order taken.
pub fn choose_promotions(candidates: &[Promotion], mut spent: f64, total_weights: f64, budget_bits: f64) -> Vec<usize> {
    let mut order: Vec<(f64, usize, f64)> = candidates.iter().map(|p| (p.gain / p.cost.max(1.0), p.index, p.cost)).collect();
    order.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut chosen = Vec::new();
    for (_, index, cost) in order {
        if (spent + cost) / total_weights > budget_bits {
            continue;
        }
        spent += cost;
        chosen.push(index);
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_gain_per_bit_goes_first_and_the_budget_holds() {
        // 100 weights at 4 bits (400 bits spent), budget 5 bits per weight: 100 bits to spend.
        let candidates = [
            Promotion { index: 0, gain: 1.0, cost: 80.0 },
            Promotion { index: 1, gain: 3.0, cost: 60.0 },
            Promotion { index: 2, gain: 0.5, cost: 40.0 },
            Promotion { index: 3, gain: 0.6, cost: 40.0 },
        ];
        // Per bit: 1 -> 0.05, 0 -> 0.0125, 3 -> 0.015, 2 -> 0.0125. Layer 1 (60), then 3 (40).
        assert_eq!(choose_promotions(&candidates, 400.0, 100.0, 5.0), vec![1, 3]);
        // A tie in gain per bit goes to the lower index; nothing fits a spent budget.
        let tied = [Promotion { index: 5, gain: 1.0, cost: 10.0 }, Promotion { index: 4, gain: 1.0, cost: 10.0 }];
        assert_eq!(choose_promotions(&tied, 0.0, 10.0, 1.0), vec![4]);
        assert!(choose_promotions(&tied, 100.0, 10.0, 10.0).is_empty());
    }
}
