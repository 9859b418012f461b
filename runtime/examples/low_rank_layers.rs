//! Latency of models with one input `x[m, k]` (a dense layer and its factorizations, as
//! `benches/factorize.py --models layers` writes them), with the low-rank pair fused into one
//! op and run as two products, runs of all of them interleaved so that load on the machine hits
//! each alike; prints the minimum and median of each.
//!
//! `cargo run --release -p compactor-runtime --example low_rank_layers -- THREADS ROWS MODEL...`
//! where `ROWS` is a comma-separated list (`1,128,512`).

use std::time::Instant;
use tract_onnx::prelude::*;

type Plan = std::sync::Arc<TypedSimplePlan>;

fn plan(path: &str, rows: usize, threads: usize, fuse: bool) -> TractResult<Plan> {
    let ir = compactor_ir::Model::load(path)?;
    let lowered = compactor_runtime::lower(&ir)?.model.to_bytes()?;
    let mut model = tract_onnx::onnx().model_for_read(&mut &lowered[..])?;
    // The layer models name their rows `m`.
    let x = compactor_runtime::inputs::random_inputs(&ir, &[("m".to_string(), rows as i64)], 0)?;
    let k = x[0].1.shape()[1];
    model.set_input_fact(0, InferenceFact::dt_shape(f32::datum_type(), [rows, k]))?;
    let mut typed = model.into_typed()?.into_decluttered()?;
    compactor_runtime::kernels::matmul::replace_matmuls(&mut typed)?;
    if fuse {
        compactor_runtime::kernels::low_rank::fuse_low_rank(&mut typed)?;
    }
    typed.optimize()?;
    let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
    typed.into_runnable_with_options(&RunOptions { executor: Some(executor), ..Default::default() })
}

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let threads: usize = args[1].parse()?;
    let rows: Vec<usize> = args[2].split(',').map(|r| r.parse()).collect::<Result<_, _>>()?;
    compactor_runtime::keep_freed_memory();
    compactor_runtime::tune_tract_threading();
    for &m in &rows {
        let mut cases: Vec<(String, Plan, Vec<f64>)> = Vec::new();
        for path in &args[3..] {
            let name = std::path::Path::new(path).file_stem().unwrap().to_string_lossy().to_string();
            cases.push((format!("{name} fused"), plan(path, m, threads, true)?, Vec::new()));
            if !name.starts_with("dense") {
                cases.push((format!("{name} two products"), plan(path, m, threads, false)?, Vec::new()));
            }
        }
        let x: Tensor = {
            let k = cases[0].1.model().input_fact(0)?.shape[1].to_i64()? as usize;
            Tensor::from_shape(&[m, k], &(0..m * k).map(|i| ((i * 7) % 23) as f32 / 11.0 - 1.0).collect::<Vec<_>>())?
        };
        let rounds = if m == 1 { 2000 } else { 200 };
        for round in 0..rounds + 5 {
            for (_, plan, times) in cases.iter_mut() {
                let input = tvec!(x.clone().into_tvalue());
                let start = Instant::now();
                plan.run(input)?;
                if round >= 5 {
                    times.push(start.elapsed().as_secs_f64() * 1e3);
                }
            }
        }
        for (name, _, times) in cases.iter_mut() {
            times.sort_by(f64::total_cmp);
            println!("m={m:<4} {name:<28} min {:.4} ms  median {:.4} ms", times[0], times[times.len() / 2]);
        }
    }
    Ok(())
}
