//! How close two outputs are: the measures `compactor compare` reports and the tests use.

use crate::value::TensorValue;
use serde::Serialize;

/// Agreement of one output between two runs (`a` is the reference).
#[derive(Clone, Debug, Serialize)]
pub struct OutputComparison {
    pub name: String,
    pub shape: Vec<usize>,
    pub max_abs_error: f64,
    pub mean_abs_error: f64,
    /// Of the flattened outputs; 1 when both are all zeros.
    pub cosine_similarity: f64,
    /// For logits-like outputs (floats whose last axis has >= 2 entries): the fraction of rows
    /// (all leading indices) whose argmax over the last axis agrees.
    pub top1_agreement: Option<f64>,
    /// For outputs named like logits (`logits`, `*logit*`) with a last axis of >= 2: the mean
    /// over rows of KL(softmax(a) || softmax(b)), in nats.
    pub mean_kl_divergence: Option<f64>,
}

/// Compares two values of the same shape; `Err` says why they cannot be compared.
pub fn compare(name: &str, reference: &TensorValue, candidate: &TensorValue) -> Result<OutputComparison, String> {
    if reference.shape() != candidate.shape() {
        return Err(format!("output '{name}': shapes differ: {:?} vs {:?}", reference.shape(), candidate.shape()));
    }
    let a = reference.to_f64_vec().map_err(|e| format!("output '{name}': {e}"))?;
    let b = candidate.to_f64_vec().map_err(|e| format!("output '{name}': {e}"))?;
    let (mut max_abs, mut sum_abs) = (0f64, 0f64);
    let (mut dot, mut na, mut nb) = (0f64, 0f64, 0f64);
    for (&x, &y) in a.iter().zip(&b) {
        let err = abs_diff(x, y);
        max_abs = max_abs.max(err);
        sum_abs += err;
        if x.is_finite() && y.is_finite() {
            dot += x * y;
            na += x * x;
            nb += y * y;
        }
    }
    // Identical outputs are exactly 1, whatever the rounding of the norms.
    let cosine = if max_abs == 0.0 || (na == 0.0 && nb == 0.0) {
        1.0
    } else if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        (dot / (na.sqrt() * nb.sqrt())).clamp(-1.0, 1.0)
    };
    let shape = reference.shape().to_vec();
    let logits_like = reference.dtype().is_float() && shape.last().is_some_and(|&d| d >= 2);
    let top1 = logits_like.then(|| {
        let width = *shape.last().expect("checked above");
        let rows = a.len() / width;
        let agree = a.chunks_exact(width).zip(b.chunks_exact(width)).filter(|(x, y)| argmax(x) == argmax(y)).count();
        agree as f64 / rows.max(1) as f64
    });
    let named_logits = name.to_ascii_lowercase().contains("logit");
    let kl = (logits_like && named_logits).then(|| {
        let width = *shape.last().expect("checked above");
        let rows = a.len() / width;
        let total: f64 = a.chunks_exact(width).zip(b.chunks_exact(width)).map(|(x, y)| crate::lm::kl_divergence(x, y)).sum();
        total / rows.max(1) as f64
    });
    Ok(OutputComparison {
        name: name.to_string(),
        shape,
        max_abs_error: max_abs,
        mean_abs_error: if a.is_empty() { 0.0 } else { sum_abs / a.len() as f64 },
        cosine_similarity: cosine,
        top1_agreement: top1,
        mean_kl_divergence: kl,
    })
}

/// `|x - y|`, with equal non-finite values (NaN and NaN, +inf and +inf) counting as equal.
fn abs_diff(x: f64, y: f64) -> f64 {
    if x == y || (x.is_nan() && y.is_nan()) {
        0.0
    } else if x.is_finite() && y.is_finite() {
        (x - y).abs()
    } else {
        f64::INFINITY
    }
}

fn argmax(row: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        if v > row[best] {
            best = i;
        }
    }
    best
}

/// numpy's `allclose(actual, expected, rtol, atol)` with `equal_nan`, element by element.
/// Returns the first offending index and values.
pub fn allclose(expected: &[f64], actual: &[f64], rtol: f64, atol: f64) -> Result<(), (usize, f64, f64)> {
    match expected.iter().zip(actual).position(|(&e, &a)| !is_close(e, a, rtol, atol)) {
        Some(i) => Err((i, expected[i], actual[i])),
        None => Ok(()),
    }
}

/// How many elements `allclose` would reject (a NaN against a number counts).
pub fn count_not_close(expected: &[f64], actual: &[f64], rtol: f64, atol: f64) -> usize {
    expected.iter().zip(actual).filter(|(e, a)| !is_close(**e, **a, rtol, atol)).count()
}

/// One element of numpy's `isclose` with `equal_nan`.
fn is_close(e: f64, a: f64, rtol: f64, atol: f64) -> bool {
    if e.is_nan() || a.is_nan() {
        e.is_nan() && a.is_nan()
    } else if e.is_infinite() || a.is_infinite() {
        e == a
    } else {
        (a - e).abs() <= atol + rtol * e.abs()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_on_a_known_pair() {
        let a = TensorValue::from_f32(&[2, 3], &[1.0, 2.0, 3.0, 0.0, 5.0, 1.0]).unwrap();
        let b = TensorValue::from_f32(&[2, 3], &[1.0, 2.5, 3.0, 6.0, 5.0, 1.0]).unwrap();
        let c = compare("y", &a, &b).unwrap();
        assert_eq!(c.max_abs_error, 6.0);
        assert!((c.mean_abs_error - 6.5 / 6.0).abs() < 1e-12);
        assert_eq!(c.top1_agreement, Some(0.5));
        assert!(c.cosine_similarity < 1.0 && c.cosine_similarity > 0.5);
        assert_eq!(compare("y", &a, &a).unwrap().cosine_similarity, 1.0);
        let d = TensorValue::from_f32(&[6], &[0.0; 6]).unwrap();
        assert!(compare("y", &a, &d).unwrap_err().contains("shapes differ"));
    }

    #[test]
    fn allclose_follows_numpy() {
        assert!(allclose(&[1.0, f64::NAN, f64::INFINITY], &[1.0005, f64::NAN, f64::INFINITY], 1e-3, 0.0).is_ok());
        assert_eq!(allclose(&[1.0, 2.0], &[1.0, 2.1], 1e-3, 1e-7), Err((1, 2.0, 2.1)));
        assert_eq!(count_not_close(&[1.0, 2.0, 3.0], &[f64::NAN, 2.0, 3.5], 1e-3, 1e-7), 2);
    }

    #[test]
    fn a_nan_against_a_number_is_an_infinite_error() {
        let a = TensorValue::from_f32(&[2], &[1.0, 2.0]).unwrap();
        let b = TensorValue::from_f32(&[2], &[1.0, f32::NAN]).unwrap();
        assert_eq!(compare("y", &a, &b).unwrap().max_abs_error, f64::INFINITY);
        let all_nan = TensorValue::from_f32(&[2], &[f32::NAN; 2]).unwrap();
        assert_eq!(compare("y", &a, &all_nan).unwrap().max_abs_error, f64::INFINITY);
    }
}
