//! Cross-checks the quantization core against onnxruntime (tests/py/quant_crosscheck.py):
//! packed QDQ and MatMulNBits models must reproduce `x @ dequantize()`, and our RTN must equal
//! onnxruntime's own `MatMulNBitsQuantizer` bit for bit.

#[path = "../../passes/tests/common/mod.rs"]
mod common;

use std::path::Path;

use compactor_passes::quant::*;
use serde_json::json;

fn write_f32(path: &Path, values: &[f32]) {
    std::fs::write(path, values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
}

struct Case {
    name: String,
    weight: Vec<f32>,
    quantized: QuantizedWeight,
    compare_ort_quantizer: bool,
}

fn write_case(root: &Path, case: &Case, x: &[f32], m: usize) -> serde_json::Value {
    let q = &case.quantized;
    let dir = root.join(&case.name);
    std::fs::create_dir_all(&dir).unwrap();
    write_f32(&dir.join("x.bin"), &x[..m * q.k]);
    write_f32(&dir.join("w.bin"), &case.weight);
    write_f32(&dir.join("deq.bin"), &q.dequantize());
    let qdq = pack_qdq(q).unwrap();
    std::fs::write(dir.join("qdq_q.bin"), &qdq.quantized).unwrap();
    std::fs::write(dir.join("qdq_scales.bin"), scales_raw(&qdq.scales, qdq.scale_dtype)).unwrap();
    if let Some(zp) = &qdq.zero_points {
        std::fs::write(dir.join("qdq_zp.bin"), zp).unwrap();
    }
    let nb = pack_matmul_nbits(q).unwrap();
    std::fs::write(dir.join("nb_b.bin"), &nb.b).unwrap();
    std::fs::write(dir.join("nb_scales.bin"), scales_raw(&nb.scales, nb.scale_dtype)).unwrap();
    if let Some(zp) = &nb.zero_points {
        std::fs::write(dir.join("nb_zp.bin"), zp).unwrap();
    }
    json!({
        // The container's width (a 3-bit grid is stored in 4-bit containers).
        "dir": case.name, "k": q.k, "n": q.n, "m": m, "bits": q.config.container_bits(), "symmetric": q.config.symmetric,
        "scale_dtype": q.config.scale_dtype.name(),
        "compare_ort_quantizer": case.compare_ort_quantizer,
        "qdq": { "dtype": qdq.dtype.code(), "scale_shape": qdq.scale_shape, "axis": qdq.axis,
                 "block_size": qdq.block_size, "opset": qdq.min_opset, "has_zero_points": qdq.zero_points.is_some() },
        "nbits": { "b_shape": nb.b_shape, "block_size": nb.block_size, "has_zero_points": nb.zero_points.is_some() },
    })
}

#[test]
fn packed_forms_run_in_onnxruntime_and_rtn_matches_its_quantizer() {
    let mut rng = common::Rng::new(7);
    let (n, m) = (24, 4);
    let max_k = 256;
    let x: Vec<f32> = (0..m * max_k).map(|_| rng.normal() as f32).collect();
    let mut cases = Vec::new();
    for k in [256usize, 200] {
        let weight = rng.weights(k * n, 0.05);
        for bits in [8u8, 4, 3, 2] {
            for symmetric in [false, true] {
                for scale_dtype in [ScaleDtype::F32, ScaleDtype::F16] {
                    for block in [16usize, 32, 64, 128] {
                        let config = QuantConfig { bits, block_size: BlockSize::Blocked(block), symmetric, scale_dtype };
                        let quantized = quantize_rtn(&weight, k, n, &config).unwrap();
                        let name = format!("rtn_k{k}_b{bits}_{}_{}_bs{block}", if symmetric { "sym" } else { "asym" }, scale_dtype.name());
                        // onnxruntime's quantizer has no 3-bit grid to compare with.
                        cases.push(Case { name, weight: weight.clone(), quantized, compare_ort_quantizer: scale_dtype == ScaleDtype::F32 && bits != 3 });
                    }
                }
                // Per-channel: QDQ block_size = K, MatMulNBits one padded power-of-two block.
                let config = QuantConfig { bits, block_size: BlockSize::PerChannel, symmetric, scale_dtype: ScaleDtype::F32 };
                let quantized = quantize_rtn(&weight, k, n, &config).unwrap();
                let name = format!("rtn_k{k}_b{bits}_{}_perchannel", if symmetric { "sym" } else { "asym" });
                cases.push(Case { name, weight: weight.clone(), quantized, compare_ort_quantizer: false });
            }
        }
        // The other methods emit the same format; run a few of them too.
        let mut hessian = HessianAccumulator::new(k);
        let calib: Vec<f32> = (0..64 * k).map(|_| rng.normal() as f32).collect();
        hessian.add_batch(&calib, 64).unwrap();
        let hessian = hessian.hessian().unwrap();
        for (symmetric, scale_dtype) in [(false, ScaleDtype::F32), (true, ScaleDtype::F16)] {
            let config = QuantConfig { bits: 4, block_size: BlockSize::Blocked(32), symmetric, scale_dtype };
            let mse = quantize_mse(&weight, k, n, &config, &MseOptions::default()).unwrap();
            cases.push(Case { name: format!("mse_k{k}_{}", scale_dtype.name()), weight: weight.clone(), quantized: mse, compare_ort_quantizer: false });
            let gptq = quantize_gptq(&weight, k, n, &config, &hessian, &GptqOptions { act_order: true, ..Default::default() }).unwrap();
            cases.push(Case { name: format!("gptq_k{k}_{}", scale_dtype.name()), weight: weight.clone(), quantized: gptq.weight, compare_ort_quantizer: false });
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let manifest: Vec<_> = cases.iter().map(|c| write_case(dir.path(), c, &x, m)).collect();
    std::fs::write(dir.path().join("manifest.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let out = compactor_tests::run_python("quant_crosscheck.py", &[dir.path().as_os_str()]);
    println!("{out}");
    assert!(out.contains(&format!("{} passed, 0 failed", cases.len())), "{out}");
}
