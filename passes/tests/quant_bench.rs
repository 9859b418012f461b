//! Timing sanity checks (not timed assertions): `cargo test --release -p compactor-passes
//! --test quant_bench -- --ignored --nocapture`.

mod common;

use std::time::Instant;

use compactor_passes::quant::*;

#[test]
#[ignore = "benchmark; run with --ignored --nocapture"]
fn bench_quantization_methods() {
    println!("rayon threads: {}", rayon::current_num_threads());
    let mut rng = common::Rng::new(42);

    let (k, n) = (4096, 4096);
    let w = rng.weights(k * n, 0.02);
    let cfg = QuantConfig { bits: 4, block_size: BlockSize::Blocked(32), symmetric: false, scale_dtype: ScaleDtype::F16 };
    for symmetric in [false, true] {
        let cfg = QuantConfig { symmetric, ..cfg };
        let t = Instant::now();
        let q = quantize_rtn(&w, k, n, &cfg).unwrap();
        let rtn_time = t.elapsed();
        let t = Instant::now();
        let packed = pack_matmul_nbits(&q).unwrap();
        let pack_time = t.elapsed();
        let m = QuantMetrics::new(&w, &q);
        println!(
            "RTN int4 g32 {} 4096x4096: {:.0} ms (+ MatMulNBits packing {:.0} ms, {} B); rel err {:.4}, SQNR {:.2} dB, {:.3} bits/weight",
            if symmetric { "sym" } else { "asym" },
            rtn_time.as_secs_f64() * 1e3,
            pack_time.as_secs_f64() * 1e3,
            packed.b.len(),
            m.relative_frobenius_error,
            m.sqnr_db,
            m.bits_per_weight
        );
    }
    let t = Instant::now();
    let q = quantize_mse(&w, k, n, &cfg, &MseOptions::default()).unwrap();
    let m = QuantMetrics::new(&w, &q);
    println!("MSE int4 g32 asym 4096x4096: {:.0} ms; rel err {:.4}, SQNR {:.2} dB", t.elapsed().as_secs_f64() * 1e3, m.relative_frobenius_error, m.sqnr_db);

    let (k, n, rows) = (1536, 384, 128);
    let w = rng.weights(k * n, 0.02);
    let x: Vec<f32> = (0..rows * k).map(|_| rng.normal() as f32).collect();
    let t = Instant::now();
    let mut acc = HessianAccumulator::new(k);
    acc.add_batch(&x, rows).unwrap();
    let h = acc.hessian().unwrap();
    let hessian_time = t.elapsed();
    for act_order in [false, true] {
        let t = Instant::now();
        let g = quantize_gptq(&w, k, n, &QuantConfig { scale_dtype: ScaleDtype::F32, ..cfg }, &h, &GptqOptions { act_order, ..Default::default() }).unwrap();
        println!(
            "GPTQ int4 g32 1536x384, 128 rows: Hessian {:.0} ms, quantize {:.0} ms (act_order {act_order}), loss {:.4}",
            hessian_time.as_secs_f64() * 1e3,
            t.elapsed().as_secs_f64() * 1e3,
            g.loss
        );
    }
}
