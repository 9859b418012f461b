//! The SmolLM2-135M decoder built from its GGUF (fixtures/make_smollm2.py, run once by the
//! test-data script): onnxruntime runs the prefill and decode graphs, a greedy chat answer is
//! right, prefill logits equal step-by-step decode logits with the KV cache, left padding
//! changes nothing for the real tokens, and the f32 perplexity of the evaluation text is that
//! of a working model (tests/py/check_smollm2.py; about two minutes on 2 cores).

use compactor_tests::{run_python, test_data};

#[test]
fn smollm2_graphs_generate_and_keep_the_kv_cache_consistent() {
    let cache = test_data();
    let report = run_python("check_smollm2.py", &[cache.as_os_str(), "--no-ppl".as_ref()]);
    println!("{report}");
    let summary: serde_json::Value = serde_json::from_str(report.lines().last().expect("a JSON summary line")).expect("the summary is JSON");
    assert_eq!(summary["ok"], true, "{summary}");
    let answer = report.to_lowercase();
    assert!(answer.contains("paris"), "the greedy answer to 'What is the capital of France?' does not name Paris:\n{report}");
}
