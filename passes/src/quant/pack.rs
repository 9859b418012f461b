//! Packing a [`QuantizedWeight`] into the two ONNX forms a `quantize` pass emits.
//!
//! a. Standard QDQ: `DequantizeLinear(q, scale, zero_point, axis=0, block_size=B)` whose output
//!    is `W_hat [K, N]` directly (no Transpose); [`pack_qdq_as`] also writes the transposed
//!    `[N, K]` form (axis 1), Conv weights blocked along their input channels, and Conv weights
//!    per output channel (per-axis, axis 0, no `block_size`). `q` keeps W's shape `[K, N]`, scales and zero
//!    points are `[ceil(K/B), N]`; a short last block is allowed by the operator. Symmetric
//!    weights become signed INT{bits} with no zero point (`code - 2^(bits-1)`), asymmetric ones
//!    UINT{bits} with a UINT{bits} zero point. Per-channel uses `block_size = K`.
//!    4- and 8-bit need opset 21, 2-bit opset 25. With f16 scales the operator outputs f16.
//!    A 3-bit grid is stored in 4-bit containers: INT4 codes from -4 to 3, or UINT4 codes and
//!    zero points from 0 to 7.
//! b. `com.microsoft.MatMulNBits`: B uint8 `[N, k_blocks, B*bits/8]`, scales `[N*k_blocks]`,
//!    zero points uint8 `[N * ceil(k_blocks*bits/8)]` (each column's zero points packed on their
//!    own, low bits first), absent for symmetric weights (onnxruntime then uses `2^(bits-1)`).
//!    A 3-bit grid is stored as `bits = 4`; its symmetric codes are moved up by 4 so that
//!    onnxruntime's implied zero point 8 leaves them at -4 to 3.
//!    K is padded up to a whole number of blocks; padded rows hold the block's zero-point code
//!    so they dequantize to 0. Per-channel uses one block of `max(16, K.next_power_of_two())`.
//!    Scales must have the activation's element type (f32 → float input, f16 → float16 input).

use compactor_ir::DataType;
use compactor_ir::tensor::{pack_crumbs, pack_nibbles};

use super::{BlockSize, QuantError, QuantizedWeight, ScaleDtype};

/// Element type of the quantized (and zero-point) tensor of the QDQ form.
pub type QuantDtype = DataType;

/// Initializers and attributes of the blocked `DequantizeLinear` form.
#[derive(Clone, Debug, PartialEq)]
pub struct QdqTensors {
    /// ONNX `raw_data` of the quantized tensor, shape `shape` (sub-byte types packed, low bits first).
    pub quantized: Vec<u8>,
    pub dtype: QuantDtype,
    /// `[K, N]` for [`QdqLayout::KN`]; see [`QdqLayout`] for the others.
    pub shape: Vec<usize>,
    /// Scale values in the layout's order (`[k_blocks, N]` for `KN`), exactly representable in `scale_dtype`.
    pub scales: Vec<f32>,
    pub scale_dtype: ScaleDtype,
    pub scale_shape: Vec<usize>,
    /// `raw_data` of the zero points, same dtype as `quantized`, shape `scale_shape`.
    pub zero_points: Option<Vec<u8>>,
    pub axis: i64,
    pub block_size: usize,
    /// Lowest `ai.onnx` opset whose `DequantizeLinear` takes `dtype` with `block_size`.
    pub min_opset: i64,
}

/// Initializers and attributes of the `com.microsoft.MatMulNBits` form.
#[derive(Clone, Debug, PartialEq)]
pub struct MatMulNBitsTensors {
    /// uint8 `[N, k_blocks, blob_size]`.
    pub b: Vec<u8>,
    pub b_shape: [usize; 3],
    /// `[N * k_blocks]`, exactly representable in `scale_dtype`.
    pub scales: Vec<f32>,
    pub scale_dtype: ScaleDtype,
    /// uint8 `[N * ceil(k_blocks * bits / 8)]`.
    pub zero_points: Option<Vec<u8>>,
    /// Attributes.
    pub k: usize,
    pub n: usize,
    pub bits: u8,
    pub block_size: usize,
}

/// Little-endian bytes of `values` in `dtype` (for `raw_data`).
pub fn scales_raw(values: &[f32], dtype: ScaleDtype) -> Vec<u8> {
    match dtype {
        ScaleDtype::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ScaleDtype::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
    }
}

fn pack_bits(bits: u8, values: Vec<u8>) -> Vec<u8> {
    match bits {
        2 => pack_crumbs(&values),
        4 => pack_nibbles(&values),
        _ => values,
    }
}

fn check_packable(q: &QuantizedWeight, format: &'static str) -> Result<(), QuantError> {
    if !super::BIT_WIDTHS.contains(&q.config.bits) {
        return Err(QuantError::UnsupportedFormat { format, reason: format!("bits = {} (only 2, 3, 4 and 8 have a container type)", q.config.bits) });
    }
    Ok(())
}

/// How the quantized matrix `[K, N]` is laid out as the ONNX weight tensor that
/// `DequantizeLinear` reproduces (blocks always run along K).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QdqLayout {
    /// `q [K, N]`, blocks along axis 0: a MatMul weight.
    KN,
    /// `q [N, K]`, blocks along axis 1: a weight stored transposed (Gemm `transB`) or an
    /// embedding table `[vocab, dim]` quantized along `dim` (K = dim, N = vocab).
    NK,
    /// A Conv weight `[O, C, spatial...]` blocked along the input channels (axis 1): K = C,
    /// N = O·prod(spatial), column `n = o·S + s`.
    Conv { out_channels: usize, spatial: Vec<usize> },
    /// A Conv weight `[O, C, spatial...]` with one scale per output channel (per-axis, axis 0,
    /// scale `[O]`): K = C·prod(spatial), the whole reduction of an output, N = O; stored like
    /// `NK`. For weights whose input channels fill a block far less than their whole reduction
    /// does (depthwise convolutions), where blocks along C would hold a scale for every few
    /// weights.
    ConvPerChannel { dims: Vec<usize> },
}

impl QdqLayout {
    /// The ONNX tensor's shape and the quantization axis for a `[k, n]` matrix.
    fn shape_and_axis(&self, k: usize, n: usize) -> (Vec<usize>, i64) {
        match self {
            QdqLayout::KN => (vec![k, n], 0),
            QdqLayout::NK => (vec![n, k], 1),
            QdqLayout::Conv { out_channels, spatial } => {
                let mut shape = vec![*out_channels, k];
                shape.extend(spatial);
                (shape, 1)
            }
            QdqLayout::ConvPerChannel { dims } => (dims.clone(), 0),
        }
    }

    /// For each element of the ONNX tensor in its row-major order, the index into a `[k, n]`
    /// row-major matrix it holds (`k`: the extent of the blocked axis — K for the weight,
    /// k_blocks for its scales).
    fn source_indices(&self, k: usize, n: usize) -> impl Iterator<Item = usize> + '_ {
        let s: usize = match self {
            QdqLayout::Conv { spatial, .. } => spatial.iter().product(),
            _ => 1,
        };
        (0..k * n).map(move |i| match self {
            QdqLayout::KN => i,
            QdqLayout::NK | QdqLayout::ConvPerChannel { .. } => (i % k) * n + i / k,
            QdqLayout::Conv { .. } => {
                let (o, rest) = (i / (k * s), i % (k * s));
                (rest / s) * n + o * s + rest % s
            }
        })
    }
}

/// The standard blocked QDQ form of a MatMul weight (`[K, N]`, axis 0; see the module docs).
pub fn pack_qdq(q: &QuantizedWeight) -> Result<QdqTensors, QuantError> {
    pack_qdq_as(q, &QdqLayout::KN)
}

/// The standard blocked QDQ form in any [`QdqLayout`].
pub fn pack_qdq_as(q: &QuantizedWeight, layout: &QdqLayout) -> Result<QdqTensors, QuantError> {
    check_packable(q, "DequantizeLinear")?;
    if let QdqLayout::Conv { out_channels, spatial } = layout
        && out_channels * spatial.iter().product::<usize>() != q.n
    {
        return Err(QuantError::UnsupportedFormat { format: "DequantizeLinear", reason: format!("a Conv layout of {out_channels} channels x {spatial:?} does not have {} columns", q.n) });
    }
    if let QdqLayout::ConvPerChannel { dims } = layout
        && (dims.first() != Some(&q.n) || dims.iter().product::<usize>() != q.k * q.n || q.k_blocks() != 1)
    {
        return Err(QuantError::UnsupportedFormat {
            format: "DequantizeLinear",
            reason: format!("a per-output-channel Conv layout of {dims:?} needs {} columns of one block each, not {} x {} in {} blocks", dims.first().unwrap_or(&0), q.k, q.n, q.k_blocks()),
        });
    }
    let bits = q.config.container_bits();
    let k_blocks = q.k_blocks();
    let (dtype, offset) = match (bits, q.config.symmetric) {
        (2, true) => (DataType::Int2, q.config.mid_code()),
        (2, false) => (DataType::Uint2, 0),
        (4, true) => (DataType::Int4, q.config.mid_code()),
        (4, false) => (DataType::Uint4, 0),
        (_, true) => (DataType::Int8, q.config.mid_code()),
        (_, false) => (DataType::Uint8, 0),
    };
    let (shape, axis) = layout.shape_and_axis(q.k, q.n);
    let scale_shape = match layout {
        QdqLayout::ConvPerChannel { .. } => vec![q.n],
        _ => layout.shape_and_axis(k_blocks, q.n).0,
    };
    // Signed values in two's complement; the packers keep the low `bits` bits.
    let mut codes: Vec<u8> = match layout {
        QdqLayout::KN => q.codes.clone(),
        QdqLayout::NK | QdqLayout::ConvPerChannel { .. } => super::transpose(&q.codes, q.k, q.n),
        QdqLayout::Conv { .. } => layout.source_indices(q.k, q.n).map(|i| q.codes[i]).collect(),
    };
    codes.iter_mut().for_each(|c| *c = c.wrapping_sub(offset));
    let quantized = pack_bits(bits, codes);
    // Scales and zero points are [N, k_blocks] (column-major blocks): index [b, c] is c * k_blocks + b.
    let block_index = |i: usize| (i % q.n) * k_blocks + i / q.n;
    let block_order: Vec<usize> = layout.source_indices(k_blocks, q.n).map(block_index).collect();
    let scales = block_order.iter().map(|&i| q.scales[i]).collect();
    let zero_points = q.zero_points.as_ref().map(|zp| pack_bits(bits, block_order.iter().map(|&i| zp[i]).collect()));
    Ok(QdqTensors {
        quantized,
        dtype,
        shape,
        scales,
        scale_dtype: q.config.scale_dtype,
        scale_shape,
        zero_points,
        axis,
        // Per-axis DequantizeLinear has no block size.
        block_size: if matches!(layout, QdqLayout::ConvPerChannel { .. }) { 0 } else { q.block_size },
        min_opset: if bits == 2 { 25 } else { 21 },
    })
}

/// The `com.microsoft.MatMulNBits` form (see the module docs).
pub fn pack_matmul_nbits(q: &QuantizedWeight) -> Result<MatMulNBitsTensors, QuantError> {
    check_packable(q, "MatMulNBits")?;
    let bits = q.config.container_bits();
    let block_size = match q.config.block_size {
        BlockSize::Blocked(b) => b,
        BlockSize::PerChannel => q.k.next_power_of_two().max(16),
    };
    let k_blocks = q.k.div_ceil(block_size);
    debug_assert_eq!(k_blocks, q.k_blocks());
    let padded_k = k_blocks * block_size;
    let blob_size = block_size * bits as usize / 8;

    // Columns of the codes are the rows of B: transpose once, then pad each to whole blocks.
    let columns = super::transpose(&q.codes, q.k, q.n);
    let padded = if padded_k == q.k {
        columns
    } else {
        let mut padded = Vec::with_capacity(q.n * padded_k);
        for (col, column) in columns.chunks_exact(q.k).enumerate() {
            padded.extend_from_slice(column);
            padded.resize((col + 1) * padded_k, q.params(col, k_blocks - 1).zero_point);
        }
        padded
    };
    // A narrower grid's symmetric codes, around its own mid code, moved to the container's.
    let shift = if q.zero_points.is_none() { (1u8 << (bits - 1)) - q.config.mid_code() } else { 0 };
    let padded: Vec<u8> = if shift == 0 { padded } else { padded.into_iter().map(|c| c + shift).collect() };
    // Blocks hold whole bytes (block_size >= 16) and so do padded columns, so packing the
    // whole matrix packs each blob.
    let b = pack_bits(bits, padded);
    let zero_points = q.zero_points.as_ref().map(|zp| {
        // Each column's zero points start on a fresh byte; a partial last byte is zero-filled.
        zp.chunks(k_blocks).flat_map(|col_zp| pack_bits(bits, col_zp.to_vec())).collect()
    });
    Ok(MatMulNBitsTensors { b, b_shape: [q.n, k_blocks, blob_size], scales: q.scales.clone(), scale_dtype: q.config.scale_dtype, zero_points, k: q.k, n: q.n, bits, block_size })
}

/// Whether a Conv weight `[O, C, spatial...]` gets one scale per output channel rather than
/// blocks along C. Blocks along C hold min(C, block) weights; a scale per output channel holds
/// the whole C·S reduction. With fewer channels than a block, take whichever is nearer a
/// block's worth (by ratio): per output channel for depthwise weights (C = 1), which would
/// otherwise get a scale per weight, and for a first layer over 3 channels.
pub fn conv_per_output_channel(dims: &[usize], block: usize) -> bool {
    let (c, whole) = (dims[1], dims[1..].iter().product::<usize>());
    block == 0 || (c < block && (whole <= block || whole * c < block * block))
}

/// A Conv weight `[O, C, spatial...]` (row-major, `S` = the spatial product) as the `[K, N]`
/// matrix of the numerics for [`QdqLayout::Conv`]: K = C, N = O·S, element `(c, o·S + x)` is
/// `w[o, c, x]`, so blocks run along the input channels.
pub fn conv_weight_as_kn(data: &[f32], out_channels: usize, k: usize, spatial: usize) -> Vec<f32> {
    let n = out_channels * spatial;
    let mut m = vec![0.0; k * n];
    for o in 0..out_channels {
        for ch in 0..k {
            for x in 0..spatial {
                m[ch * n + o * spatial + x] = data[(o * k + ch) * spatial + x];
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::{QuantConfig, quantize_rtn};
    use compactor_ir::tensor::{unpack_crumbs, unpack_nibbles};

    fn weight(k: usize, n: usize) -> Vec<f32> {
        (0..k * n).map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * if i % 13 == 0 { 3.0 } else { 1.0 }).collect()
    }

    fn unpack(bits: u8, raw: &[u8], count: usize) -> Vec<u8> {
        match bits {
            2 => unpack_crumbs(raw, count).collect(),
            4 => unpack_nibbles(raw, count).collect(),
            _ => raw[..count].to_vec(),
        }
    }

    /// Sign-extends a `bits`-wide two's complement value.
    fn signed(bits: u8, v: u8) -> i32 {
        let shift = 8 - bits;
        ((v << shift) as i8 >> shift) as i32
    }

    #[test]
    fn qdq_unpacks_to_the_reconstruction() {
        for grid in [2u8, 3, 4, 8] {
            // A 3-bit grid sits in 4-bit containers.
            let bits = if grid == 3 { 4 } else { grid };
            for symmetric in [false, true] {
                for block_size in [BlockSize::Blocked(16), BlockSize::PerChannel] {
                    let (k, n) = (37, 5);
                    let cfg = QuantConfig { bits: grid, block_size, symmetric, scale_dtype: ScaleDtype::F32 };
                    let q = quantize_rtn(&weight(k, n), k, n, &cfg).unwrap();
                    let t = pack_qdq(&q).unwrap();
                    assert_eq!(
                        t.dtype,
                        match (bits, symmetric) {
                            (2, true) => DataType::Int2,
                            (2, false) => DataType::Uint2,
                            (4, true) => DataType::Int4,
                            (4, false) => DataType::Uint4,
                            (_, true) => DataType::Int8,
                            (_, false) => DataType::Uint8,
                        }
                    );
                    assert_eq!(t.quantized.len(), (k * n * bits as usize).div_ceil(8));
                    assert_eq!(t.scales.len(), t.scale_shape[0] * t.scale_shape[1]);
                    let codes = unpack(bits, &t.quantized, k * n);
                    let zps = t.zero_points.as_ref().map(|z| unpack(bits, z, t.scales.len()));
                    let expected = q.dequantize();
                    for row in 0..k {
                        for col in 0..n {
                            let i = row * n + col;
                            let s = (row / t.block_size) * n + col;
                            let level = match &zps {
                                Some(zp) => codes[i] as i32 - zp[s] as i32,
                                None => signed(bits, codes[i]),
                            };
                            if let (3, None) = (grid, &zps) {
                                assert!((-4..=3).contains(&level), "a 3-bit level: {level}");
                            }
                            if let (3, Some(zp)) = (grid, &zps) {
                                assert!(codes[i] < 8 && zp[s] < 8, "3-bit codes and zero points");
                            }
                            assert_eq!(level as f32 * t.scales[s], expected[i], "bits {grid} sym {symmetric} [{row},{col}]");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn matmul_nbits_unpacks_to_the_reconstruction() {
        for grid in [2u8, 3, 4, 8] {
            let bits = if grid == 3 { 4 } else { grid };
            for symmetric in [false, true] {
                for block_size in [BlockSize::Blocked(16), BlockSize::Blocked(32), BlockSize::PerChannel] {
                    let (k, n) = (37, 3);
                    let cfg = QuantConfig { bits: grid, block_size, symmetric, scale_dtype: ScaleDtype::F32 };
                    let q = quantize_rtn(&weight(k, n), k, n, &cfg).unwrap();
                    let t = pack_matmul_nbits(&q).unwrap();
                    assert_eq!(t.bits, bits, "the container's width is the attribute");
                    let [bn, k_blocks, blob] = t.b_shape;
                    assert_eq!((bn, blob), (n, t.block_size * bits as usize / 8));
                    assert_eq!(t.b.len(), n * k_blocks * blob);
                    let zp_bytes_per_col = (k_blocks * bits as usize).div_ceil(8);
                    if let Some(zp) = &t.zero_points {
                        assert_eq!(zp.len(), n * zp_bytes_per_col);
                    }
                    let expected = q.dequantize();
                    for col in 0..n {
                        let codes = unpack(bits, &t.b[col * k_blocks * blob..], k_blocks * t.block_size);
                        let zps: Vec<u8> = match &t.zero_points {
                            Some(zp) => unpack(bits, &zp[col * zp_bytes_per_col..], k_blocks),
                            None => vec![1 << (bits - 1); k_blocks],
                        };
                        for (row, &c) in codes.iter().enumerate() {
                            let b = row / t.block_size;
                            let level = c as i32 - zps[b] as i32;
                            if grid == 3 {
                                assert!((-7..=7).contains(&level) && (!symmetric || (-4..=3).contains(&level)), "a 3-bit level: {level}");
                            }
                            let want = if row < k { expected[row * n + col] } else { 0.0 };
                            assert_eq!(level as f32 * t.scales[col * k_blocks + b], want, "bits {grid} sym {symmetric} {block_size:?} [{row},{col}]");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn other_widths_are_refused_by_both_packers() {
        let cfg = QuantConfig { bits: 5, ..Default::default() };
        let q = QuantizedWeight { k: 32, n: 2, block_size: 32, config: cfg, codes: vec![0; 64], scales: vec![1.0; 2], zero_points: None, outliers: Vec::new() };
        assert!(pack_qdq(&q).unwrap_err().to_string().contains("bits = 5"));
        assert!(pack_matmul_nbits(&q).unwrap_err().to_string().contains("bits = 5"));
    }

    #[test]
    fn zero_points_pack_per_column_low_bits_first() {
        // 3 blocks of 4-bit zero points per column: 2 bytes per column, the last nibble zero.
        let cfg = QuantConfig { bits: 4, block_size: BlockSize::Blocked(16), symmetric: false, scale_dtype: ScaleDtype::F32 };
        let (k, n) = (48, 2);
        let mut q = quantize_rtn(&weight(k, n), k, n, &cfg).unwrap();
        q.zero_points = Some(vec![1, 2, 3, 4, 5, 6]);
        let t = pack_matmul_nbits(&q).unwrap();
        assert_eq!(t.zero_points.unwrap(), vec![0x21, 0x03, 0x54, 0x06]);
        let raw = scales_raw(&[1.0, 0.5], ScaleDtype::F16);
        assert_eq!(raw, vec![0x00, 0x3C, 0x00, 0x38]);
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use crate::quant::{QuantConfig, quantize_rtn};
    use compactor_ir::tensor::unpack_nibbles;

    /// Every layout holds the same weights and block parameters, just in another order.
    #[test]
    fn transposed_and_conv_layouts_hold_the_kn_values() {
        let (k, n) = (40, 6);
        let w: Vec<f32> = (0..k * n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        let cfg = QuantConfig { bits: 4, block_size: BlockSize::Blocked(16), symmetric: false, scale_dtype: ScaleDtype::F32 };
        let q = quantize_rtn(&w, k, n, &cfg).unwrap();
        let kn = pack_qdq(&q).unwrap();
        let kn_codes: Vec<u8> = unpack_nibbles(&kn.quantized, k * n).collect();
        let kb = q.k_blocks();

        let nk = pack_qdq_as(&q, &QdqLayout::NK).unwrap();
        assert_eq!((nk.shape.clone(), nk.scale_shape.clone(), nk.axis), (vec![n, k], vec![n, kb], 1));
        let nk_codes: Vec<u8> = unpack_nibbles(&nk.quantized, k * n).collect();
        for r in 0..k {
            for c in 0..n {
                assert_eq!(nk_codes[c * k + r], kn_codes[r * n + c]);
            }
        }
        for b in 0..kb {
            for c in 0..n {
                assert_eq!(nk.scales[c * kb + b], kn.scales[b * n + c]);
            }
        }

        // Conv [O=3, C=40, 2] (n = 6 = 3 x 2): element [o, c, s] is (k = c, n = o*2 + s).
        let conv = pack_qdq_as(&q, &QdqLayout::Conv { out_channels: 3, spatial: vec![2] }).unwrap();
        assert_eq!((conv.shape.clone(), conv.scale_shape.clone(), conv.axis), (vec![3, k, 2], vec![3, kb, 2], 1));
        let conv_codes: Vec<u8> = unpack_nibbles(&conv.quantized, k * n).collect();
        let conv_zp: Vec<u8> = unpack_nibbles(conv.zero_points.as_ref().unwrap(), kb * n).collect();
        let kn_zp: Vec<u8> = unpack_nibbles(kn.zero_points.as_ref().unwrap(), kb * n).collect();
        for o in 0..3 {
            for s in 0..2 {
                for c in 0..k {
                    assert_eq!(conv_codes[(o * k + c) * 2 + s], kn_codes[c * n + o * 2 + s]);
                }
                for b in 0..kb {
                    assert_eq!(conv.scales[(o * kb + b) * 2 + s], kn.scales[b * n + o * 2 + s]);
                    assert_eq!(conv_zp[(o * kb + b) * 2 + s], kn_zp[b * n + o * 2 + s]);
                }
            }
        }
        assert!(pack_qdq_as(&q, &QdqLayout::Conv { out_channels: 4, spatial: vec![2] }).is_err());
    }

    /// A depthwise Conv weight `[O=6, 1, 3, 3]` per output channel: K = 9, one scale per O.
    #[test]
    fn per_output_channel_conv_layout_is_per_axis_over_the_whole_reduction() {
        let dims = vec![6, 1, 3, 3];
        let (k, n) = (9, 6);
        // The weight in its stored [O, 1, 3, 3] order, as the pass hands it over: [K, N].
        let stored: Vec<f32> = (0..k * n).map(|i| ((i * 29 % 53) as f32 - 26.0) / 13.0).collect();
        let w = crate::quant::transpose(&stored, n, k);
        let cfg = QuantConfig { bits: 4, block_size: BlockSize::PerChannel, symmetric: true, scale_dtype: ScaleDtype::F32 };
        let q = quantize_rtn(&w, k, n, &cfg).unwrap();
        let t = pack_qdq_as(&q, &QdqLayout::ConvPerChannel { dims: dims.clone() }).unwrap();
        assert_eq!((t.shape.clone(), t.scale_shape.clone(), t.axis, t.block_size), (dims.clone(), vec![n], 0, 0));
        // Dequantizing per axis 0 gives back the RTN reconstruction in the stored order.
        let codes: Vec<u8> = unpack_nibbles(&t.quantized, k * n).collect();
        for o in 0..n {
            for r in 0..k {
                let code = ((codes[o * k + r] << 4) as i8 >> 4) as f32;
                assert_eq!(code * t.scales[o], q.dequantize()[r * n + o], "[{o}, {r}]");
            }
        }
        // More than one block per output channel, or dims that do not match, are refused.
        let w18: Vec<f32> = (0..18 * n).map(|i| i as f32 - 50.0).collect();
        let blocked = quantize_rtn(&w18, 18, n, &QuantConfig { block_size: BlockSize::Blocked(16), ..cfg }).unwrap();
        assert_eq!(blocked.k_blocks(), 2);
        assert!(pack_qdq_as(&blocked, &QdqLayout::ConvPerChannel { dims: vec![6, 2, 3, 3] }).is_err());
        assert!(pack_qdq_as(&q, &QdqLayout::ConvPerChannel { dims: vec![3, 2, 3, 3] }).is_err());
    }

    #[test]
    fn conv_weights_take_the_scale_layout_nearer_a_block() {
        // (dims, block, per output channel?)
        for (dims, block, expected) in [
            (&[64, 1, 3, 3][..], 32, true),   // depthwise: 9 per scale, not 1
            (&[16, 3, 3, 3][..], 32, true),   // first layer: 27 per scale, not 3
            (&[64, 8, 3, 3][..], 32, true),   // 72 per scale is nearer 32 than 8 is
            (&[64, 16, 3, 3][..], 32, false), // 16 per scale is nearer 32 than 144 is
            (&[64, 8, 1, 1][..], 32, true),   // 1x1 over 8 channels: the same 8 either way
            (&[64, 64, 3, 3][..], 32, false), // whole blocks along C
            (&[64, 64, 3, 3][..], 0, true),   // block=0: per channel
        ] {
            assert_eq!(conv_per_output_channel(dims, block), expected, "{dims:?} block {block}");
        }
    }
}
