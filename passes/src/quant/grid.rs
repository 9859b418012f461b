//! One block's scale and zero point, and the exact encode/decode arithmetic.
//!
//! The arithmetic copies onnxruntime's MatMulNBits quantizer (`BlockwiseQuantizer` in
//! `onnxruntime/core/mlas/lib/q4_dq.cpp`) operation by operation in f32, so that RTN codes and
//! scales are bit-identical to `MatMulNBitsQuantizer`'s:
//! - asymmetric: range extended to include 0, `scale = (max - min) / (2^b - 1)`,
//!   `zero_point = round(-min / scale)` clamped to `[0, 2^b - 1]`;
//! - symmetric: `scale = -m / 2^(b-1)` where `m` is the block value of largest magnitude
//!   (sign kept), with the implicit zero point `2^(b-1)`. The minus sign maps the larger half
//!   range onto the code side that has one more level (for int4: the extreme lands exactly on
//!   -8, the other side clamps at +7), so the divisor is 8, not 7, and scales may be negative;
//! - `code = clamp(round(w * (1 / scale) + zero_point), 0, 2^b - 1)`, round half away from
//!   zero (C `roundf`, Rust `f32::round`), against the *stored* (possibly f16-rounded) scale;
//! - `w_hat = (code - zero_point) * scale`.

use half::f16;

use super::{QuantConfig, ScaleDtype};

/// Scale and zero point of one block, as stored (the scale is exactly representable in the
/// configured scale dtype).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct BlockParams {
    pub scale: f32,
    pub zero_point: u8,
}

/// Why a block could not get a scale.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum FitError {
    /// The scale (or the block's dequantized range) does not fit the scale dtype / f32.
    ScaleOutOfRange { scale: f32 },
}

impl BlockParams {
    pub fn decode(&self, code: u8) -> f32 {
        (code as i32 - self.zero_point as i32) as f32 * self.scale
    }

    pub(crate) fn encoder(&self, max_code: u8) -> Encoder {
        let reciprocal = if self.scale != 0.0 { 1.0 / self.scale } else { 0.0 };
        Encoder {
            scale: self.scale,
            reciprocal,
            // 1/scale overflows for subnormal scales; dividing keeps such blocks meaningful.
            divide: !reciprocal.is_finite(),
            zero_point: self.zero_point as f32,
            max_code: max_code as f32,
        }
    }
}

/// Encodes values of one block; precomputes the reciprocal as onnxruntime does.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Encoder {
    scale: f32,
    reciprocal: f32,
    divide: bool,
    zero_point: f32,
    max_code: f32,
}

/// `f32::round` (half away from zero), without the libm call it compiles to on baseline x86-64.
/// `x - trunc(x)` is exact in f32, so this is the same function for every input.
#[inline]
pub(crate) fn round_half_away(x: f32) -> f32 {
    if x.abs() < 8_388_608.0 {
        // Truncation, with the sign of zero kept (round(-0.3) is -0.0).
        let t = (x as i32 as f32).copysign(x);
        let fraction = x - t;
        if fraction >= 0.5 {
            t + 1.0
        } else if fraction <= -0.5 {
            t - 1.0
        } else {
            t
        }
    } else {
        // Already an integer (or NaN / infinite): as `round` leaves it.
        x
    }
}

impl Encoder {
    /// `clamp(round(w / scale + zero_point), 0, max_code)`. Clamping first gives the same code
    /// (the bounds are integers and rounding is monotonic); then the value is non-negative and
    /// rounding half away from zero is truncation plus one at a fraction of one half: no branch
    /// and no libm call in the hot loop. NaN maps to 0 as before.
    #[inline]
    pub(crate) fn encode(&self, w: f32) -> u8 {
        let scaled = if self.divide { w / self.scale } else { w * self.reciprocal };
        let x = (scaled + self.zero_point).clamp(0.0, self.max_code);
        let t = x as u8;
        t + ((x - t as f32) >= 0.5) as u8
    }

    /// Whether `encode` divides by the scale (its reciprocal is not finite).
    pub(crate) fn divides(&self) -> bool {
        self.divide
    }

    pub(crate) fn reciprocal(&self) -> f32 {
        self.reciprocal
    }

    pub(crate) fn zero_point(&self) -> f32 {
        self.zero_point
    }

    /// Like `encode`, with a zero point that is not an integer (HQQ's intermediate iterate).
    #[inline]
    pub(crate) fn encode_with_zero(&self, w: f32, zero: f32) -> f32 {
        let scaled = if self.divide { w / self.scale } else { w * self.reciprocal };
        round_half_away(scaled + zero).clamp(0.0, self.max_code)
    }
}

#[cfg(test)]
mod rounding_tests {
    #[test]
    fn round_half_away_is_f32_round() {
        let mut specials = vec![0.5f32, -0.5, 1.5, -1.5, 2.5, 0.49999997, -0.49999997, 8_388_607.5, 8_388_608.0, -0.0, 1e-40, f32::MAX, f32::MIN, f32::INFINITY, f32::NEG_INFINITY];
        // Every float between -20 and 20 around each half, and a spread of bit patterns.
        for i in -40..=40 {
            let h = i as f32 * 0.5;
            specials.extend([h, f32::from_bits(h.to_bits() + 1), f32::from_bits(h.to_bits().wrapping_sub(1))]);
        }
        specials.extend((0..200_000u32).map(|i| f32::from_bits(i.wrapping_mul(2_654_435_761))));
        for &x in &specials {
            let (a, b) = (super::round_half_away(x), x.round());
            assert!(a == b && a.is_sign_negative() == b.is_sign_negative() || (a.is_nan() && b.is_nan()), "{x:e}: {a} vs {b}");
        }
        // The encoder's clamp-then-truncate form gives round-then-clamp's code for every value.
        for max_code in [3u8, 15, 255] {
            let encoder = super::BlockParams { scale: 1.0, zero_point: 0 }.encoder(max_code);
            for &x in specials.iter().chain(&[f32::NAN, 255.5, 15.5, 3.5, 254.49998]) {
                let expected = x.round().clamp(0.0, max_code as f32) as u8;
                assert_eq!(encoder.encode(x), expected, "{x:e} at max code {max_code}");
            }
        }
    }
}

/// Rounds a scale to the storage dtype; refuses scales that do not fit it.
pub(crate) fn store_scale(scale: f32, dtype: ScaleDtype) -> Result<f32, FitError> {
    let stored = match dtype {
        ScaleDtype::F32 => scale,
        ScaleDtype::F16 => f16::from_f32(scale).to_f32(),
    };
    if stored.is_finite() { Ok(stored) } else { Err(FitError::ScaleOutOfRange { scale }) }
}

/// Minimum and maximum of a block, starting from onnxruntime's `(FLT_MAX, -FLT_MAX)`.
pub(crate) fn min_max(values: &[f32]) -> (f32, f32) {
    values.iter().fold((f32::MAX, -f32::MAX), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Round-to-nearest parameters for the range `[min, max]` of a block.
pub(crate) fn fit_range(min: f32, max: f32, config: &QuantConfig) -> Result<BlockParams, FitError> {
    let max_code = config.max_code();
    let (raw_scale, zero_point) = if config.symmetric {
        let extreme = if max.abs() > min.abs() { max } else { min };
        (-extreme / config.mid_code() as f32, config.mid_code())
    } else {
        let min = min.min(0.0);
        let max = max.max(0.0);
        let raw_scale = (max - min) / max_code as f32;
        let zero_fp = if raw_scale != 0.0 { 0.0 - min / raw_scale } else { min };
        let zero_point = if zero_fp < 0.0 {
            0
        } else if zero_fp > max_code as f32 {
            max_code
        } else {
            zero_fp.round() as u8
        };
        (raw_scale, zero_point)
    };
    let scale = store_scale(raw_scale, config.scale_dtype)?;
    // The extreme code must dequantize to a finite value.
    if !(scale * max_code as f32).is_finite() {
        return Err(FitError::ScaleOutOfRange { scale: raw_scale });
    }
    Ok(BlockParams { scale, zero_point })
}

/// Round-to-nearest parameters of a block.
pub(crate) fn fit_rtn(values: &[f32], config: &QuantConfig) -> Result<BlockParams, FitError> {
    let (min, max) = min_max(values);
    fit_range(min, max, config)
}

/// Squared reconstruction error of a block under `params`, accumulated in f64.
pub(crate) fn block_error(values: &[f32], params: &BlockParams, max_code: u8) -> f64 {
    let encoder = params.encoder(max_code);
    values
        .iter()
        .map(|&v| {
            let e = (v - params.decode(encoder.encode(v))) as f64;
            e * e
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::BlockSize;

    fn cfg(bits: u8, symmetric: bool) -> QuantConfig {
        QuantConfig { bits, block_size: BlockSize::Blocked(16), symmetric, scale_dtype: ScaleDtype::F32 }
    }

    #[test]
    fn symmetric_int4_maps_the_extreme_to_minus_8() {
        let c = cfg(4, true);
        let p = fit_rtn(&[0.5, -0.25, 0.8, 0.0], &c).unwrap();
        assert_eq!(p, BlockParams { scale: -0.1, zero_point: 8 });
        let e = p.encoder(15);
        assert_eq!(e.encode(0.8), 0); // -8 steps of -0.1
        assert_eq!(p.decode(0), 0.8);
        assert_eq!(e.encode(0.0), 8);
        assert_eq!(e.encode(-0.8), 15); // +8 clamps to +7
        // A negative extreme gives a positive scale.
        let p = fit_rtn(&[-0.8, 0.5], &c).unwrap();
        assert_eq!(p.scale, 0.1);
        assert_eq!(p.encoder(15).encode(-0.8), 0);
    }

    #[test]
    fn asymmetric_range_includes_zero() {
        let c = cfg(4, false);
        let p = fit_rtn(&[1.0, 2.0, 3.0], &c).unwrap();
        assert_eq!(p, BlockParams { scale: 3.0 / 15.0, zero_point: 0 });
        let p = fit_rtn(&[-3.0, -1.0], &c).unwrap();
        assert_eq!(p.zero_point, 15);
        let e = p.encoder(15);
        assert_eq!(p.decode(e.encode(0.0)), 0.0);
    }

    #[test]
    fn zero_block_encodes_to_the_zero_point() {
        for symmetric in [false, true] {
            let c = cfg(4, symmetric);
            let p = fit_rtn(&[0.0; 8], &c).unwrap();
            assert_eq!(p.scale, 0.0);
            let q = p.encoder(15).encode(0.0);
            assert_eq!(q, p.zero_point);
            assert_eq!(p.decode(q), 0.0);
        }
    }

    #[test]
    fn f16_scale_overflow_is_refused() {
        let c = QuantConfig { scale_dtype: ScaleDtype::F16, ..cfg(4, true) };
        assert!(fit_rtn(&[1.0e6], &c).is_err());
        assert!(fit_rtn(&[1.0e5], &c).is_ok());
    }

    #[test]
    fn subnormal_scales_still_encode() {
        let c = cfg(8, true);
        let tiny = 1.0e-39_f32;
        let p = fit_rtn(&[tiny, -tiny / 2.0], &c).unwrap();
        let e = p.encoder(255);
        // Subnormal scales keep few significant bits; the point is sane codes, not NaN or 0.
        assert!((p.decode(e.encode(tiny)) - tiny).abs() <= tiny / 100.0);
        assert!((p.decode(e.encode(-tiny / 2.0)) + tiny / 2.0).abs() <= tiny / 100.0);
    }
}
