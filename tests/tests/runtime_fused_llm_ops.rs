//! The fused LLM ops onnxruntime-genai's model builder emits (SimplifiedLayerNormalization,
//! com.microsoft SkipSimplifiedLayerNormalization, RotaryEmbedding and GroupQueryAttention),
//! which the runtime expands into standard ops, against onnxruntime: single-op models of each
//! (tests/py/make_fused_llm_ops.py: padding, decode with a past, rotary inside attention and
//! the other variants, float16 too), and SmolLM2-135M in that form (a prompt through prefill_fused.onnx, a
//! decode_fused.onnx step with its KV cache; tests/py/smollm2_fused_reference.py).

use compactor_ir::{DataType, Model};
use compactor_runtime::npy::read_npy;
use compactor_runtime::{Session, SessionOptions, TensorValue};
use compactor_tests::{run_python, test_data};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(serde::Deserialize)]
struct Case {
    model: PathBuf,
    inputs: BTreeMap<String, PathBuf>,
    outputs: Vec<PathBuf>,
}

/// The largest `|ours - theirs|`, or the first element past `atol + rtol·|theirs|` (NaN and
/// infinities included), or a shape mismatch.
fn worst_difference(ours: &TensorValue, theirs: &TensorValue, atol: f64, rtol: f64) -> Result<f64, String> {
    if ours.shape() != theirs.shape() {
        return Err(format!("shape {:?}, onnxruntime {:?}", ours.shape(), theirs.shape()));
    }
    let mut worst = 0.0f64;
    for (i, (a, b)) in ours.to_f64_vec().unwrap().iter().zip(theirs.to_f64_vec().unwrap()).enumerate() {
        let diff = (a - b).abs();
        if diff.is_nan() || diff > atol + rtol * b.abs() {
            return Err(format!("[{i}] = {a}, onnxruntime {b}"));
        }
        worst = worst.max(diff);
    }
    Ok(worst)
}

fn inputs(files: &BTreeMap<String, PathBuf>) -> Vec<(&str, TensorValue)> {
    files.iter().map(|(name, file)| (name.as_str(), read_npy(file).unwrap())).collect()
}

#[test]
fn fused_llm_ops_match_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    run_python("make_fused_llm_ops.py", &[dir.path().as_os_str()]);
    let cases: BTreeMap<String, Case> = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 30, "expected the generated cases, got {}", cases.len());
    let mut failures = Vec::new();
    for (name, case) in &cases {
        let run = Session::new(&Model::load(&case.model).unwrap(), &SessionOptions { threads: 1, ..Default::default() }).and_then(|s| s.run(&inputs(&case.inputs)));
        let outputs = match run {
            Ok(outputs) => outputs,
            Err(e) => {
                failures.push(format!("{name}: {e}"));
                continue;
            }
        };
        assert_eq!(outputs.len(), case.outputs.len(), "{name}: outputs");
        let mut worst = 0.0f64;
        for ((output, ours), reference) in outputs.iter().zip(&case.outputs) {
            let reference = read_npy(reference).unwrap();
            // float16 outputs: a last-bit difference is 1e-3 relative.
            let (atol, rtol) = if reference.dtype() == DataType::Float16 { (1e-3, 2e-3) } else { (1e-5, 1e-4) };
            match worst_difference(ours, &reference, atol, rtol) {
                Ok(w) => worst = worst.max(w),
                Err(e) => failures.push(format!("{name} {output}: {e}")),
            }
        }
        println!("{name}: max abs diff {worst:.2e} against onnxruntime");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[derive(serde::Deserialize)]
struct LlmCase {
    model: PathBuf,
    inputs: BTreeMap<String, PathBuf>,
    outputs: BTreeMap<String, PathBuf>,
}

/// Runs one SmolLM2 graph and checks its logits (and presents) against onnxruntime's.
fn smollm2_matches(case: &LlmCase, what: &str) {
    let start = std::time::Instant::now();
    let session = Session::new(&Model::load(&case.model).unwrap(), &SessionOptions::default()).unwrap_or_else(|e| panic!("{what}: {e}"));
    // Every layer's attention stays for the runtime's kernel (the lowering once lost the query's
    // type 30 ops up a decoder and expanded the deeper layers into full-score attention).
    let lowered = &session.lowered_model().graph;
    let kept = lowered.all_nodes().into_iter().filter(|&n| lowered.node(n).op_type == "GroupQueryAttention" && lowered.node(n).domain() == "com.microsoft").count();
    assert_eq!(kept, 30, "{what}: GroupQueryAttention nodes left for the kernel");
    let feeds = inputs(&case.inputs);
    let loaded = start.elapsed();
    let outputs = session.run(&feeds).unwrap_or_else(|e| panic!("{what}: {e}"));
    println!("{what}: loaded in {loaded:.1?}, ran in {:.1?}, planned {:?}", start.elapsed() - loaded, session.plan_kind(&feeds).unwrap());
    assert_eq!(outputs.len(), case.outputs.len(), "{what}: outputs");
    let (mut logits, mut presents) = (0.0f64, 0.0f64);
    for (name, ours) in &outputs {
        let theirs = read_npy(Path::new(&case.outputs[name])).unwrap();
        // Logits reach 30: 1e-3 is float32 summation order over 30 layers.
        let (atol, worst) = if name == "logits" { (1e-3, &mut logits) } else { (1e-4, &mut presents) };
        *worst = worst.max(worst_difference(ours, &theirs, atol, 0.0).unwrap_or_else(|e| panic!("{what} {name}: {e}")));
    }
    println!("{what}: max abs diff against onnxruntime: logits {logits:.2e}, presents {presents:.2e}");
}

#[test]
fn smollm2_fused_prefill_and_decode_match_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    println!("{}", run_python("smollm2_fused_reference.py", &[test_data().as_os_str(), dir.path().as_os_str()]).trim());
    let cases: BTreeMap<String, LlmCase> = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cases.json")).unwrap()).unwrap();
    smollm2_matches(&cases["prefill"], "prefill_fused.onnx");
    smollm2_matches(&cases["decode"], "decode_fused.onnx");
}
