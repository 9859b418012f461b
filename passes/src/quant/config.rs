//! Options of blockwise weight quantization and their validation.

use serde::{Deserialize, Serialize};

use super::QuantError;

/// How many weights along K share one scale (and zero point).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockSize {
    /// A power of two in `16..=256`; the last block of a column is shorter when K is not a
    /// multiple of it.
    Blocked(usize),
    /// One block spanning the whole K axis (one scale per output column).
    PerChannel,
}

/// Element type the scales are stored in. With `F16` the scales are rounded to f16 *before*
/// the weights are encoded, so the stored scale is the one the codes were computed against.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScaleDtype {
    #[default]
    F32,
    F16,
}

impl ScaleDtype {
    pub fn bits(self) -> u32 {
        match self {
            ScaleDtype::F32 => 32,
            ScaleDtype::F16 => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ScaleDtype::F32 => "f32",
            ScaleDtype::F16 => "f16",
        }
    }
}

/// The quantization grid: bit width, blocking, symmetry and scale storage.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantConfig {
    /// 2, 3, 4 or 8. (3 bits has no ONNX container type; it is for experiments and the
    /// packers refuse it.)
    pub bits: u8,
    pub block_size: BlockSize,
    /// Symmetric: no stored zero point, the implicit zero point is `2^(bits-1)`.
    pub symmetric: bool,
    pub scale_dtype: ScaleDtype,
}

impl Default for QuantConfig {
    /// int4, block 32, asymmetric, f32 scales: the usual LLM weight-only setting.
    fn default() -> Self {
        QuantConfig { bits: 4, block_size: BlockSize::Blocked(32), symmetric: false, scale_dtype: ScaleDtype::F32 }
    }
}

/// The bit widths quantization has (3 stored in 4-bit containers: see `container_bits`).
pub const BIT_WIDTHS: [u8; 4] = [2, 3, 4, 8];

pub const MIN_BLOCK_SIZE: usize = 16;
pub const MAX_BLOCK_SIZE: usize = 256;

impl QuantConfig {
    pub fn validate(&self) -> Result<(), QuantError> {
        if !BIT_WIDTHS.contains(&self.bits) {
            return Err(QuantError::InvalidOption { option: "bits", value: self.bits.to_string(), expected: "one of 2, 3, 4, 8" });
        }
        if let BlockSize::Blocked(b) = self.block_size
            && (!b.is_power_of_two() || !(MIN_BLOCK_SIZE..=MAX_BLOCK_SIZE).contains(&b))
        {
            return Err(QuantError::InvalidOption { option: "block_size", value: b.to_string(), expected: "a power of two in 16..=256, or per-channel" });
        }
        Ok(())
    }

    /// Largest code, `2^bits - 1`.
    pub fn max_code(&self) -> u8 {
        ((1u16 << self.bits) - 1) as u8
    }

    /// The implicit zero point of symmetric quantization, `2^(bits-1)` (8 for int4), which is
    /// also onnxruntime MatMulNBits' default zero point when none is given.
    pub fn mid_code(&self) -> u8 {
        1u8 << (self.bits - 1)
    }

    /// Bits each code is stored in: a 3-bit grid sits in 4-bit containers (ONNX and
    /// onnxruntime have no 3-bit type), so its file is int4's size and its accuracy 3 bits'.
    pub fn container_bits(&self) -> u8 {
        if self.bits == 3 { 4 } else { self.bits }
    }

    /// Rows of W per block for a weight with `k` rows.
    pub fn effective_block_size(&self, k: usize) -> usize {
        match self.block_size {
            BlockSize::Blocked(b) => b,
            BlockSize::PerChannel => k.max(1),
        }
    }

    /// Number of blocks along K.
    pub fn k_blocks(&self, k: usize) -> usize {
        k.div_ceil(self.effective_block_size(k))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_bad_option() {
        let bad_bits = QuantConfig { bits: 5, ..Default::default() };
        let err = bad_bits.validate().unwrap_err().to_string();
        assert!(err.contains("`bits`") && err.contains('5'), "{err}");
        for b in [8, 24, 512, 0] {
            let cfg = QuantConfig { block_size: BlockSize::Blocked(b), ..Default::default() };
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.contains("`block_size`") && err.contains(&b.to_string()), "{err}");
        }
        for b in [16, 32, 64, 128, 256] {
            QuantConfig { block_size: BlockSize::Blocked(b), ..Default::default() }.validate().unwrap();
        }
        QuantConfig { block_size: BlockSize::PerChannel, bits: 8, ..Default::default() }.validate().unwrap();
    }

    #[test]
    fn grid_constants() {
        let c = |bits| QuantConfig { bits, ..Default::default() };
        assert_eq!((c(2).max_code(), c(2).mid_code()), (3, 2));
        assert_eq!((c(3).max_code(), c(3).mid_code()), (7, 4));
        assert_eq!((c(4).max_code(), c(4).mid_code()), (15, 8));
        assert_eq!((c(8).max_code(), c(8).mid_code()), (255, 128));
    }
}
