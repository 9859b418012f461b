//! com.microsoft.MoE (mixture of experts), which the runtime runs with its own kernel
//! (`runtime/src/kernels/moe.rs`), against onnxruntime's CPU kernel: single-node models with
//! random weights (tests/py/make_moe_models.py: SwiGLU and unfused activations, several expert
//! counts and k, renormalised or not, biases, one token to a few hundred, experts that get no
//! token).

use compactor_runtime::npy::read_npy;
use compactor_runtime::{Session, SessionOptions};
use compactor_tests::{both_runtimes, relative_difference, run_python};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(serde::Deserialize)]
struct Case {
    model: PathBuf,
    inputs: BTreeMap<String, PathBuf>,
}

fn input_args(case: &Case) -> Vec<String> {
    case.inputs.iter().map(|(name, file)| format!("{name}={}", file.display())).collect()
}

#[test]
fn moe_matches_onnxruntime() {
    let dir = tempfile::tempdir().unwrap();
    run_python("make_moe_models.py", &[dir.path().as_os_str()]);
    let cases: BTreeMap<String, Case> = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cases.json")).unwrap()).unwrap();
    assert!(cases.len() >= 14, "expected the generated cases, got {}", cases.len());
    let mut failures = Vec::new();
    for (name, case) in &cases {
        let (theirs, ours) = both_runtimes(&case.model, &input_args(case));
        assert_eq!(ours[0].shape(), theirs[0].shape(), "{name}: output shape");
        let difference = relative_difference(&theirs, &ours);
        println!("{name}: relative difference {difference:.2e} against onnxruntime");
        if difference > 1e-5 {
            failures.push(format!("{name}: relative difference {difference:.2e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The kernel's sum per token is built in expert order whatever the thread count: one, two
/// and three threads give the same bits.
#[test]
fn moe_does_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    run_python("make_moe_models.py", &[dir.path().as_os_str()]);
    let cases: BTreeMap<String, Case> = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cases.json")).unwrap()).unwrap();
    for name in ["swiglu_many_tokens", "silu_many_tokens", "swiglu_one_token"] {
        let case = &cases[name];
        let feeds: Vec<(&str, _)> = case.inputs.iter().map(|(n, f)| (n.as_str(), read_npy(f).unwrap())).collect();
        let model = compactor_ir::Model::load(&case.model).unwrap();
        let outputs: Vec<Vec<f64>> = [1, 2, 3]
            .iter()
            .map(|&threads| {
                let session = Session::new(&model, &SessionOptions { threads, ..Default::default() }).unwrap();
                session.run(&feeds).unwrap()[0].1.to_f64_vec().unwrap()
            })
            .collect();
        assert!(outputs.windows(2).all(|w| w[0] == w[1]), "{name}: outputs differ between thread counts");
    }
}

/// Bad inputs give errors naming the problem, not panics: a router with the wrong token count.
#[test]
fn moe_refuses_mismatched_router() {
    let dir = tempfile::tempdir().unwrap();
    run_python("make_moe_models.py", &[dir.path().as_os_str()]);
    let cases: BTreeMap<String, Case> = serde_json::from_str(&std::fs::read_to_string(dir.path().join("cases.json")).unwrap()).unwrap();
    let case = &cases["swiglu_k1_idle_experts"];
    let model = compactor_ir::Model::load(&case.model).unwrap();
    let session = Session::new(&model, &SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let x = read_npy(&case.inputs["input"]).unwrap();
    let router = read_npy(&cases["swiglu_k2_norm"].inputs["router_probs"]).unwrap();
    let error = session.run(&[("input", x), ("router_probs", router)]).expect_err("a router of 18 tokens for 3");
    assert!(error.to_string().contains("router"), "{error}");
}
