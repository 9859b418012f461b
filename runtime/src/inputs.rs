//! Deterministic random inputs of a model's declared shapes, for `compactor run/compare` and
//! benchmarks when the user gives none.

use crate::error::RuntimeError;
use crate::lower::model_name;
use crate::value::TensorValue;
use compactor_ir::{DataType, Dim, Model, ValueId};

/// splitmix64: tiny, well-distributed, and the same on every platform.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn name_seed(seed: u64, name: &str) -> u64 {
    // FNV-1a of the name, so each input's values do not depend on the order of inputs.
    name.bytes().fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// The number of rows of constant tables that `input` indexes with a Gather (an embedding's
/// vocabulary), if any.
fn gather_vocab(model: &Model, input: ValueId) -> Option<i64> {
    let g = &model.graph;
    let uses = g.uses();
    uses.consumers(input)
        .into_iter()
        .filter_map(|n| {
            let node = g.node(n);
            if !node.is("Gather") || node.input(1) != Some(input) {
                return None;
            }
            let table = g.constant(node.input(0)?)?;
            let axis = node.attr_int("axis").unwrap_or(0);
            let rank = table.dims().len() as i64;
            let axis = if axis < 0 { axis + rank } else { axis };
            table.dims().get(usize::try_from(axis).ok()?).map(|&d| d as i64)
        })
        .min()
}

/// One tensor per graph input (initializer-backed inputs excluded), from `seed`:
/// floats uniform in [-1, 1); `*mask*` integer inputs all ones; integer inputs that index an
/// embedding (a Gather on a constant table) below its vocabulary; other integers in [0, 4);
/// bools random. Symbolic dimensions come from `dims` (a missing one is an error naming it).
pub fn random_inputs(model: &Model, dims: &[(String, i64)], seed: u64) -> Result<Vec<(String, TensorValue)>, RuntimeError> {
    random_inputs_except(model, dims, seed, &[])
}

/// [`random_inputs`] for every input not named in `given`.
pub fn random_inputs_except(model: &Model, dims: &[(String, i64)], seed: u64, given: &[&str]) -> Result<Vec<(String, TensorValue)>, RuntimeError> {
    let g = &model.graph;
    let mut out = Vec::new();
    for &id in &g.main().inputs {
        let v = g.value(id);
        if v.initializer.is_some() || given.contains(&v.name.as_str()) {
            continue;
        }
        let bad = |reason: String| RuntimeError::BadInput { model: model_name(model), name: v.name.clone(), reason };
        let dtype = v.elem().ok_or_else(|| bad("has no declared element type; give it explicitly".into()))?;
        let shape = v.shape().ok_or_else(|| bad("has no declared shape; give it explicitly".into()))?;
        let mut concrete = Vec::with_capacity(shape.rank());
        for d in &shape.dims {
            let n = match d {
                Dim::Known(n) => *n,
                Dim::Sym(s) => match dims.iter().find(|(name, _)| name == s) {
                    Some((_, n)) => *n,
                    None => {
                        // Name every unset one at once, not one per attempt.
                        let unset: Vec<&str> =
                            shape.dims.iter().filter_map(|d| if let Dim::Sym(s) = d { Some(s.as_str()) } else { None }).filter(|s| !dims.iter().any(|(name, _)| name == s)).collect();
                        let flags: Vec<String> = unset.iter().map(|s| format!("--dim {s}=N")).collect();
                        let (what, it) = if unset.len() == 1 { ("dimension", "it") } else { ("dimensions", "them") };
                        return Err(bad(format!("has symbolic {what} {} in {shape}; set {it} ({})", unset.iter().map(|s| format!("'{s}'")).collect::<Vec<_>>().join(", "), flags.join(" "))));
                    }
                },
                Dim::Unknown => return Err(bad(format!("has an unnamed unknown dimension in {shape}; give the input explicitly (--input {}=FILE.npy)", v.name))),
            };
            if n < 0 {
                // Some exporters (Paddle's, old PyTorch ones) write -1 for a dynamic dimension.
                return Err(bad(format!("has dimension {n} (dynamic, as some exporters write it) in {shape}; give the input explicitly (--input {}=FILE.npy)", v.name)));
            }
            concrete.push(n as usize);
        }
        let count: usize = concrete.iter().product();
        let mut rng = SplitMix(name_seed(seed, &v.name));
        let lower_name = v.name.to_lowercase();
        let value = if dtype.is_float() {
            let data: Vec<f32> = (0..count).map(|_| (rng.unit() * 2.0 - 1.0) as f32).collect();
            TensorValue::from_f32(&concrete, &data)?.cast_to(dtype)?
        } else if dtype == DataType::Bool {
            let data: Vec<bool> = (0..count).map(|_| rng.next() & 1 == 1).collect();
            TensorValue::from_slice(&concrete, &data)?
        } else if dtype.is_integer() {
            let data: Vec<i64> = if lower_name.contains("mask") {
                vec![1; count]
            } else {
                let high = gather_vocab(model, id).unwrap_or(4).max(1) as u64;
                (0..count).map(|_| (rng.next() % high) as i64).collect()
            };
            TensorValue::from_i64(&concrete, &data)?.cast_to(dtype)?
        } else {
            return Err(bad(format!("cannot make random {dtype} values; give the input explicitly")));
        };
        out.push((v.name.clone(), value));
    }
    Ok(out)
}
