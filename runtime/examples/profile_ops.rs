//! Time per op kind of a model as the runtime hands it to tract (lowered, read with the
//! runtime's op builders, optimised, the runtime's kernels swapped in), on deterministic random inputs.
//!
//! `cargo run --release -p compactor-runtime --example profile_ops -- MODEL THREADS [NAME=N ...]`
//! where `NAME=N` sets symbolic dimensions (`batch=8 seq=128`). `BY_SHAPE=1` times op kinds
//! per output shape, `BY_NODE=1` every node apart; `ROUNDS=N` timed runs (5).

use std::collections::HashMap;
use std::time::Instant;
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    let (path, threads) = (&args[1], args[2].parse::<usize>()?);
    let dims: Vec<(String, i64)> = args[3..].iter().filter_map(|a| a.split_once('=')).map(|(n, v)| (n.to_string(), v.parse().unwrap_or(1))).collect();
    compactor_runtime::keep_freed_memory();
    compactor_runtime::tune_tract_threading();
    let ir = compactor_ir::Model::load(path)?;
    let inputs = compactor_runtime::inputs::random_inputs(&ir, &dims, 0)?;
    let lowered = compactor_runtime::lower(&ir)?.model.to_bytes()?;
    let mut model = compactor_runtime::framework().model_for_read(&mut &lowered[..])?;
    // GENERIC=1: the plan for every input shape (as a session makes it for symbolic inputs).
    let generic = std::env::var_os("GENERIC").is_some();
    if !generic {
        for (i, (_, v)) in inputs.iter().enumerate() {
            model.set_input_fact(i, InferenceFact::dt_shape(v.tract().datum_type(), v.shape()))?;
        }
    }
    // TRACT_MATMUL=1: tract's own matmuls, for comparison.
    let typed = if std::env::var_os("TRACT_MATMUL").is_some() {
        let mut typed = model.into_optimized()?;
        compactor_runtime::kernels::broadcast::replace_slow_broadcasts(&mut typed)?;
        typed
    } else {
        compactor_runtime::kernels::optimize(model.into_typed()?)?
    };
    let mut typed = typed;
    if generic {
        compactor_runtime::kernels::bound_symbols::bind_symbolic_inputs(&mut typed)?;
    }
    let executor = if threads > 1 { tract_linalg::multithread::Executor::multithread(threads) } else { tract_linalg::multithread::Executor::SingleThread };
    let plan = typed.into_runnable_with_options(&RunOptions { executor: Some(executor.clone()), ..Default::default() })?;
    let values: TVec<TValue> = inputs.iter().map(|(_, v)| v.tract().clone().into_tvalue()).collect();
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|n| n.parse().ok()).unwrap_or(5);
    let mut times: HashMap<String, f64> = HashMap::new();
    // As a session runs its plan: on one of the pool's threads, in the executor's scope.
    let profile = || -> TractResult<()> {
        for round in 0..=rounds {
            let run_start = Instant::now();
            let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
            state.run_plan_with_eval(values.clone(), |ctx, op_state, node, input| {
                let start = Instant::now();
                let result = tract_onnx::tract_core::plan::eval(ctx, op_state, node, input);
                // Round 0 warms up.
                if round > 0 {
                    let key = if std::env::var_os("BY_NODE").is_some() {
                        format!("{} {:?} {}", node.op().name(), node.outputs[0].fact.shape, node.name)
                    } else if std::env::var_os("BY_SHAPE").is_some() {
                        format!("{} {:?}", node.op().name(), node.outputs[0].fact.shape)
                    } else {
                        node.op().name().to_string()
                    };
                    *times.entry(key).or_default() += start.elapsed().as_secs_f64() * 1e3 / rounds as f64;
                }
                result
            })?;
            drop(state);
            if round > 0 {
                *times.entry("(whole run, wall clock)".into()).or_default() += run_start.elapsed().as_secs_f64() * 1e3 / rounds as f64;
            }
        }
        Ok(())
    };
    let scoped = || tract_linalg::multithread::multithread_tract_scope(executor.clone(), profile);
    match &executor {
        tract_linalg::multithread::Executor::MultiThread(pool) => pool.install(scoped)?,
        _ => scoped()?,
    }
    let mut by_op: Vec<_> = times.into_iter().collect();
    by_op.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("total {:.2} ms per run in ops", by_op.iter().filter(|x| !x.0.starts_with('(')).map(|x| x.1).sum::<f64>());
    let shown = std::env::var("TOP").ok().and_then(|n| n.parse().ok()).unwrap_or(15);
    for (op, ms) in by_op.iter().take(shown) {
        println!("{ms:8.2} ms  {op}");
    }
    Ok(())
}
