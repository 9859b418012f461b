//! Tensor elements in the text form: exact decimal (or NaN bit patterns) per element type,
//! quoted strings, and the deterministic fills that keep hand-written tensors short.

use crate::dtype::DataType;
use crate::tensor::{Tensor, minifloat, pack_crumbs, pack_nibbles, unpack_crumbs, unpack_nibbles};
use std::fmt::Write;

/// How the elements of a type are written, one text element each (complex: two).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scalar {
    F32,
    F64,
    F16,
    BF16,
    /// The 8- and 4-bit float formats, written as the value of their code.
    Mini(DataType),
    Int {
        bits: u32,
        signed: bool,
    },
    Bool,
    Str,
    /// `Undefined`: no elements.
    None,
}

impl Scalar {
    pub(crate) fn of(dtype: DataType) -> Scalar {
        use DataType::*;
        match dtype {
            Float | Complex64 => Scalar::F32,
            Double | Complex128 => Scalar::F64,
            Float16 => Scalar::F16,
            Bfloat16 => Scalar::BF16,
            Float8E4M3FN | Float8E4M3FNUZ | Float8E5M2 | Float8E5M2FNUZ | Float8E8M0 | Float4E2M1 => Scalar::Mini(dtype),
            Bool => Scalar::Bool,
            String => Scalar::Str,
            Undefined => Scalar::None,
            Int8 | Int16 | Int32 | Int64 | Int4 | Int2 => Scalar::Int { bits: dtype.bit_width().unwrap_or(64), signed: true },
            Uint8 | Uint16 | Uint32 | Uint64 | Uint4 | Uint2 => Scalar::Int { bits: dtype.bit_width().unwrap_or(64), signed: false },
        }
    }

    /// Text elements per tensor element (complex numbers are written as real, imaginary).
    pub(crate) fn per_element(dtype: DataType) -> u64 {
        if matches!(dtype, DataType::Complex64 | DataType::Complex128) { 2 } else { 1 }
    }

    fn width(self) -> u32 {
        match self {
            Scalar::F32 => 32,
            Scalar::F64 => 64,
            Scalar::F16 | Scalar::BF16 => 16,
            Scalar::Mini(DataType::Float4E2M1) => 4,
            Scalar::Mini(_) | Scalar::Bool => 8,
            Scalar::Int { bits, .. } => bits,
            Scalar::Str | Scalar::None => 0,
        }
    }
}

/// A plain name: written without quotes. It never ends in `:` (so `%x: f32` reads back).
pub(crate) fn is_plain(name: &str) -> bool {
    !name.is_empty() && !name.ends_with(':') && name.chars().all(|c| c.is_ascii_alphanumeric() || "_./:-".contains(c))
}

/// A double-quoted string; bytes that are not UTF-8 are written as `\xNN`.
pub(crate) fn quote_bytes(bytes: &[u8]) -> String {
    let mut q = String::with_capacity(bytes.len() + 2);
    q.push('"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            match c {
                '"' => q.push_str("\\\""),
                '\\' => q.push_str("\\\\"),
                '\n' => q.push_str("\\n"),
                c if c.is_control() => {
                    let _ = write!(q, "\\u{{{:x}}}", c as u32);
                }
                c => q.push(c),
            }
        }
        for b in chunk.invalid() {
            let _ = write!(q, "\\x{b:02x}");
        }
    }
    q.push('"');
    q
}

pub(crate) fn quote(s: &str) -> String {
    quote_bytes(s.as_bytes())
}

/// A name as written: bare when plain, quoted otherwise.
pub(crate) fn name(s: &str) -> String {
    if is_plain(s) { s.to_string() } else { quote(s) }
}

/// An f32 exactly: the shortest decimal that reads back to the same bits, `inf`/`-inf`, or a
/// NaN with its bit pattern.
pub(crate) fn format_f32(v: f32) -> String {
    if v.is_nan() { format!("nan(0x{:08x})", v.to_bits()) } else { format!("{v:?}") }
}

fn format_f64(v: f64) -> String {
    if v.is_nan() { format!("nan(0x{:016x})", v.to_bits()) } else { format!("{v:?}") }
}

/// Every element of a tensor as text (complex numbers as two elements each).
pub(crate) fn format_elements(t: &Tensor) -> Option<Vec<String>> {
    let scalar = Scalar::of(t.dtype());
    if scalar == Scalar::Str {
        return Some(t.strings().ok()?.iter().map(|s| quote_bytes(s)).collect());
    }
    let raw = t.raw_data().ok()?;
    let count = (t.len() * Scalar::per_element(t.dtype())) as usize;
    let bits: Vec<u64> = match scalar.width() {
        0 => Vec::new(),
        2 => unpack_crumbs(&raw, count).map(u64::from).collect(),
        4 => unpack_nibbles(&raw, count).map(u64::from).collect(),
        w => raw.chunks_exact(w as usize / 8).map(|c| c.iter().rev().fold(0u64, |a, &b| a << 8 | b as u64)).collect(),
    };
    Some(bits.into_iter().map(|b| format_bits(scalar, b)).collect())
}

fn format_bits(scalar: Scalar, b: u64) -> String {
    match scalar {
        Scalar::F32 => format_f32(f32::from_bits(b as u32)),
        Scalar::F64 => format_f64(f64::from_bits(b)),
        Scalar::F16 | Scalar::BF16 => {
            let v = if scalar == Scalar::F16 { half::f16::from_bits(b as u16).to_f32() } else { half::bf16::from_bits(b as u16).to_f32() };
            if v.is_nan() { format!("nan(0x{b:04x})") } else { format!("{v:?}") }
        }
        Scalar::Mini(dtype) => {
            let v = minifloat::decode(dtype, b as u8);
            if v.is_nan() { format!("nan(0x{b:02x})") } else { format!("{v:?}") }
        }
        Scalar::Int { bits, signed: true } => (((b << (64 - bits)) as i64) >> (64 - bits)).to_string(),
        Scalar::Int { signed: false, .. } => b.to_string(),
        Scalar::Bool => if b != 0 { "1" } else { "0" }.to_string(),
        Scalar::Str | Scalar::None => String::new(),
    }
}

/// One element as read: a number (or `inf`, `nan`) with an optional NaN bit pattern, or a string.
#[derive(Clone, Debug)]
pub(crate) enum Element {
    Number { text: String, nan_bits: Option<u64> },
    Str(Vec<u8>),
}

/// The element's bits in the type's native width (two's complement for integers).
pub(crate) fn element_bits(scalar: Scalar, e: &Element) -> Result<u64, String> {
    let (text, nan_bits) = match e {
        Element::Number { text, nan_bits } => (text.as_str(), *nan_bits),
        Element::Str(_) => return Err("a string where a number belongs".into()),
    };
    if let Some(bits) = nan_bits {
        let width = scalar.width();
        if width < 64 && bits >> width != 0 {
            return Err(format!("NaN pattern 0x{bits:x} is wider than {width} bits"));
        }
        let is_nan = match scalar {
            Scalar::F32 => f32::from_bits(bits as u32).is_nan(),
            Scalar::F64 => f64::from_bits(bits).is_nan(),
            Scalar::F16 => half::f16::from_bits(bits as u16).is_nan(),
            Scalar::BF16 => half::bf16::from_bits(bits as u16).is_nan(),
            Scalar::Mini(dtype) => minifloat::decode(dtype, bits as u8).is_nan(),
            _ => return Err("a NaN pattern for an integer type".into()),
        };
        return if is_nan { Ok(bits) } else { Err(format!("0x{bits:x} is not a NaN of this type")) };
    }
    let float = |t: &str| -> Result<f64, String> {
        match t {
            "nan" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            _ => t.parse::<f64>().map_err(|_| format!("'{t}' is not a number")),
        }
    };
    let f32_of = |t: &str| -> Result<f32, String> {
        match t {
            "nan" => Ok(f32::NAN),
            "inf" => Ok(f32::INFINITY),
            "-inf" => Ok(f32::NEG_INFINITY),
            // Read directly as f32: through f64 a decimal could round twice.
            _ => t.parse::<f32>().map_err(|_| format!("'{t}' is not a number")),
        }
    };
    match scalar {
        Scalar::F32 => Ok(f32_of(text)?.to_bits() as u64),
        Scalar::F64 => Ok(float(text)?.to_bits()),
        Scalar::F16 => Ok(half::f16::from_f32(f32_of(text)?).to_bits() as u64),
        Scalar::BF16 => Ok(half::bf16::from_f32(f32_of(text)?).to_bits() as u64),
        Scalar::Mini(dtype) => minifloat_code(dtype, f32_of(text)?).map(u64::from),
        Scalar::Int { bits, signed } => {
            let v: i128 = text.parse().map_err(|_| format!("'{text}' is not an integer"))?;
            let (lo, hi) = int_range(bits, signed);
            if v < lo || v > hi {
                return Err(format!("{v} is outside [{lo}, {hi}]"));
            }
            Ok((v as u64) & mask(bits))
        }
        Scalar::Bool => match text {
            "0" | "false" => Ok(0),
            "1" | "true" => Ok(1),
            _ => Err(format!("'{text}' is not a bool (0 or 1)")),
        },
        Scalar::Str | Scalar::None => Err("a number where none belongs".into()),
    }
}

fn mask(bits: u32) -> u64 {
    if bits >= 64 { u64::MAX } else { (1u64 << bits) - 1 }
}

fn int_range(bits: u32, signed: bool) -> (i128, i128) {
    if signed { (-(1i128 << (bits - 1)), (1i128 << (bits - 1)) - 1) } else { (0, (1i128 << bits) - 1) }
}

/// The code of a minifloat: the one with exactly this value, else the nearest finite one.
fn minifloat_code(dtype: DataType, v: f32) -> Result<u8, String> {
    let codes = if dtype == DataType::Float4E2M1 { 16u16 } else { 256 };
    let decoded = (0..codes).map(|c| (c as u8, minifloat::decode(dtype, c as u8)));
    if v.is_nan() {
        return decoded.clone().find(|(_, d)| d.is_nan()).map(|(c, _)| c).ok_or_else(|| format!("{dtype} has no NaN"));
    }
    if let Some((c, _)) = decoded.clone().find(|(_, d)| d.to_bits() == v.to_bits()) {
        return Ok(c);
    }
    if !v.is_finite() {
        return Err(format!("{dtype} has no {v}"));
    }
    decoded.filter(|(_, d)| d.is_finite()).min_by(|a, b| (a.1 - v).abs().total_cmp(&(b.1 - v).abs())).map(|(c, _)| c).ok_or_else(|| format!("{dtype} has no finite values"))
}

/// Packs element bits into `raw_data` layout.
pub(crate) fn pack(scalar: Scalar, bits: &[u64]) -> Vec<u8> {
    match scalar.width() {
        0 => Vec::new(),
        2 => pack_crumbs(&bits.iter().map(|&b| b as u8).collect::<Vec<_>>()),
        4 => pack_nibbles(&bits.iter().map(|&b| b as u8).collect::<Vec<_>>()),
        w => bits.iter().flat_map(|b| b.to_le_bytes().into_iter().take(w as usize / 8)).collect(),
    }
}

/// A deterministic fill for a tensor too large to write out.
#[derive(Clone, Debug, PartialEq)]
pub enum Fill {
    /// Zero bytes (the value 0 in every type but `f8e8m0`; empty strings).
    Zeros,
    /// Element `i` is `i` (integers wrap to the type's width).
    Iota,
    /// Uniform in `[low, high)` from SplitMix64 seeded with `seed`; integers uniform over
    /// `low..high`.
    Seeded { seed: u64, low: f64, high: f64 },
}

impl Fill {
    /// The default range of `seeded(SEED)`: `[-1, 1)` for floats, `0..10` for integers, `0..2` for bools.
    pub fn default_range(dtype: DataType) -> (f64, f64) {
        match Scalar::of(dtype) {
            Scalar::Int { .. } => (0.0, 10.0),
            Scalar::Bool => (0.0, 2.0),
            _ => (-1.0, 1.0),
        }
    }
}

/// The next SplitMix64 output: a tiny, fully specified generator, so fills are the same on
/// every platform and version.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The raw data (or strings) of a filled tensor of `count` elements.
pub(crate) fn fill_bits(dtype: DataType, count: u64, fill: &Fill) -> Result<Vec<u64>, String> {
    let scalar = Scalar::of(dtype);
    let n = count * Scalar::per_element(dtype);
    let n = usize::try_from(n).map_err(|_| format!("{n} elements do not fit in memory"))?;
    match fill {
        Fill::Zeros => Ok(vec![0; n]),
        Fill::Iota => match scalar {
            Scalar::Int { bits, .. } => Ok((0..n as u64).map(|i| i & mask(bits)).collect()),
            Scalar::Bool => Ok((0..n as u64).map(|i| i & 1).collect()),
            Scalar::F32 | Scalar::F64 | Scalar::F16 | Scalar::BF16 => Ok((0..n).map(|i| float_bits(scalar, i as f64)).collect()),
            _ => Err(format!("fill=iota is not defined for {dtype}")),
        },
        Fill::Seeded { seed, low, high } => {
            if low >= high || !low.is_finite() || !high.is_finite() {
                return Err(format!("seeded range [{low}, {high}) is empty or not finite"));
            }
            let mut state = *seed;
            match scalar {
                Scalar::F32 | Scalar::F64 | Scalar::F16 | Scalar::BF16 => Ok((0..n)
                    .map(|_| {
                        let unit = (splitmix64(&mut state) >> 11) as f64 * (1.0 / (1u64 << 53) as f64);
                        float_bits(scalar, low + (high - low) * unit)
                    })
                    .collect()),
                Scalar::Int { bits, signed } => {
                    let (lo, hi) = (low.ceil() as i128, high.ceil() as i128 - 1);
                    let (min, max) = int_range(bits, signed);
                    if lo > hi || lo < min || hi > max {
                        return Err(format!("seeded integers {lo}..={hi} do not fit {dtype} ({min}..={max})"));
                    }
                    let span = (hi - lo + 1) as u128;
                    Ok((0..n).map(|_| ((lo + (splitmix64(&mut state) as u128 % span) as i128) as u64) & mask(bits)).collect())
                }
                Scalar::Bool => Ok((0..n).map(|_| splitmix64(&mut state) & 1).collect()),
                _ => Err(format!("fill=seeded is not defined for {dtype}")),
            }
        }
    }
}

fn float_bits(scalar: Scalar, v: f64) -> u64 {
    match scalar {
        Scalar::F32 => (v as f32).to_bits() as u64,
        Scalar::F64 => v.to_bits(),
        Scalar::F16 => half::f16::from_f64(v).to_bits() as u64,
        _ => half::bf16::from_f64(v).to_bits() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_read_back_bit_for_bit() {
        for v in [0.1f32, -0.0, 1e-45, f32::MAX, f32::MIN_POSITIVE, 3.0e-39, f32::INFINITY, f32::NEG_INFINITY, f32::from_bits(0x7fc0_0001), f32::from_bits(0xffc0_0000)] {
            let text = format_f32(v);
            let e = match text.strip_prefix("nan(0x") {
                Some(hex) => Element::Number { text: "nan".into(), nan_bits: Some(u64::from_str_radix(hex.trim_end_matches(')'), 16).unwrap()) },
                None => Element::Number { text: text.clone(), nan_bits: None },
            };
            assert_eq!(element_bits(Scalar::F32, &e).unwrap() as u32, v.to_bits(), "{text}");
        }
    }

    #[test]
    fn minifloat_codes_round_trip() {
        for dtype in [DataType::Float8E4M3FN, DataType::Float8E4M3FNUZ, DataType::Float8E5M2, DataType::Float8E5M2FNUZ, DataType::Float8E8M0, DataType::Float4E2M1] {
            let codes = if dtype == DataType::Float4E2M1 { 16 } else { 256 };
            for c in 0..codes {
                let text = format_bits(Scalar::Mini(dtype), c);
                let e = match text.strip_prefix("nan(0x") {
                    Some(hex) => Element::Number { text: "nan".into(), nan_bits: Some(u64::from_str_radix(hex.trim_end_matches(')'), 16).unwrap()) },
                    None => Element::Number { text: text.clone(), nan_bits: None },
                };
                assert_eq!(element_bits(Scalar::Mini(dtype), &e).unwrap(), c, "{dtype} {text}");
            }
        }
    }

    #[test]
    fn seeded_fills_are_fixed_numbers() {
        // Same seed, same numbers, within the range (text::tests pins the values themselves).
        let bits = fill_bits(DataType::Float, 3, &Fill::Seeded { seed: 42, low: -1.0, high: 1.0 }).unwrap();
        let values: Vec<f32> = bits.iter().map(|&b| f32::from_bits(b as u32)).collect();
        assert!(values.iter().all(|v| (-1.0..1.0).contains(v)));
        let again = fill_bits(DataType::Float, 3, &Fill::Seeded { seed: 42, low: -1.0, high: 1.0 }).unwrap();
        assert_eq!(bits, again);
        let ints = fill_bits(DataType::Int4, 64, &Fill::Seeded { seed: 7, low: -8.0, high: 8.0 }).unwrap();
        assert!(ints.iter().all(|&b| b < 16));
        assert!(fill_bits(DataType::Uint8, 4, &Fill::Seeded { seed: 7, low: -1.0, high: 3.0 }).is_err());
    }
}
