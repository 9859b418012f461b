//! Linear-layer products on the packed kernel against `gemm` (which packs B on every call), with
//! a fresh weight per call (12 weights in turn, as a model's layers come), as in a real run.
//!
//! `cargo run --release -p compactor-runtime --example packed_products -- THREADS`

use compactor_runtime::kernels::matmul::WeightLayout;
use compactor_runtime::kernels::packed_matmul::PackedWeight;
use std::time::Instant;

fn main() {
    let threads: usize = std::env::args().nth(1).and_then(|t| t.parse().ok()).unwrap_or(1);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
    for (m, k, n) in [(64, 384, 1536), (64, 1536, 384), (64, 384, 384), (32, 384, 1536), (256, 384, 1536), (512, 576, 1536), (1, 576, 1536), (4, 1536, 576)] {
        let layers = 12;
        let weights: Vec<Vec<f32>> = (0..layers).map(|s| (0..k * n).map(|i| ((i * 7 + s * 13) % 23) as f32 / 11.0 - 1.0).collect()).collect();
        let packed: Vec<PackedWeight> = weights.iter().map(|w| PackedWeight::pack(w, WeightLayout::RowMajor, k, n)).collect();
        let a: Vec<f32> = (0..m * k).map(|i| (i % 17) as f32 / 17.0).collect();
        let mut c = vec![0f32; m * n];
        let rounds = 30;
        let time = |f: &mut dyn FnMut(usize)| {
            let mut best = f64::MAX;
            for _ in 0..rounds {
                let start = Instant::now();
                for l in 0..layers {
                    f(l);
                }
                best = best.min(start.elapsed().as_secs_f64() / layers as f64);
            }
            best * 1e3
        };
        let gemm_ms = time(&mut |l| {
            let w = &weights[l];
            let (ap, wp, cp) = (a.as_ptr() as usize, w.as_ptr() as usize, c.as_mut_ptr() as usize);
            let part = |p: usize| {
                let cols = p * n / threads..(p + 1) * n / threads;
                unsafe {
                    gemm::gemm(
                        m,
                        cols.len(),
                        k,
                        (cp as *mut f32).add(cols.start),
                        1,
                        n as isize,
                        false,
                        ap as *const f32,
                        1,
                        k as isize,
                        (wp as *const f32).add(cols.start),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    )
                }
            };
            if threads > 1 {
                pool.install(|| rayon::scope(|s| (0..threads).for_each(|p| s.spawn(move |_| part(p)))));
            } else {
                part(0)
            }
        });
        let packed_ms = tract_linalg::multithread::multithread_tract_scope(executor.clone(), || time(&mut |l| packed[l].multiply(&a, k, m, &mut c, n).expect("an AVX-512F machine")));
        let gmacs = |ms: f64| (m * k * n) as f64 / ms / 1e6;
        println!("{m:>4}x{k:>4}x{n:>4}  gemm {gemm_ms:.3} ms ({:.0} GMAC/s)  packed {packed_ms:.3} ms ({:.0} GMAC/s)  ratio {:.2}", gmacs(gemm_ms), gmacs(packed_ms), packed_ms / gemm_ms);
    }
}
