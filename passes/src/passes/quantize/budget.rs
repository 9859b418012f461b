//! Mixed precision (`budget_bits`): measuring each layer's gain from 8 bits, then promoting
//! within the budget ([`quant::choose_promotions`]).

use super::*;

impl Quantize {
    /// Mixed precision: starting from `bits` everywhere, promotes to 8 bits the layers whose
    /// output error drops most per extra byte, while the average stays within `budget_bits`.
    pub(super) fn apply_budget(&self, ctx: &mut PassCtx<'_, '_>, targets: &[&Target], calibration: &Calibration, results: &mut [LayerResult]) -> Result<(), PassError> {
        let total_weights: f64 = targets.iter().map(|t| t.elements() as f64).sum();
        // Storage bits of a layer, counting an AWQ layer's `1/s` vector.
        let bits_of = |q: &QuantizedWeight, scaling: Option<&Scaling>| QuantMetrics::storage(q).0 * (q.k * q.n) as f64 + scaling.map_or(0.0, |s| 32.0 * s.inverse_scales.len() as f64);
        let spent: f64 = results.iter().map(|(q, _, _, scaling)| bits_of(q, scaling.as_ref())).sum();
        let mut candidates = Vec::with_capacity(targets.len());
        let mut promoted = Vec::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            let (low, _, w, scaling) = &results[i];
            // 8 bits needs no AWQ scaling: the promoted layer is the plain 8-bit weight.
            let (high, loss) = self.quantize_weight(t, w, 8, t.hessian(calibration))?;
            ctx.progress.advance(1);
            // Error weighted by the activations when there are any, by the weights otherwise.
            let error = |q: &QuantizedWeight, scaling: Option<&Scaling>| {
                let w_hat = quant::effective_weight(q, scaling);
                match t.hessian(calibration) {
                    Some(h) => quant::relative_output_error(w, &w_hat, t.n, h),
                    None => quant::relative_error(w, &w_hat).powi(2),
                }
            };
            let gain = error(low, scaling.as_ref()) - error(&high, None);
            let cost = bits_of(&high, None) - bits_of(low, scaling.as_ref());
            candidates.push(quant::Promotion { index: i, gain, cost });
            promoted.push(Some((high, loss)));
        }
        for i in quant::choose_promotions(&candidates, spent, total_weights, self.budget_bits) {
            let (high, loss) = promoted[i].take().expect("each layer is promoted once");
            results[i].0 = high;
            results[i].1 = loss;
            results[i].3 = None;
        }
        Ok(())
    }
}
