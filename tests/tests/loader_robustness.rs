//! The loader never panics: thousands of deterministic mutations of real model files
//! (bit flips, truncations, inserted and duplicated bytes) either load or give an error, and
//! whatever loads survives the verifier, the summary, the text form and re-serialisation.
//! (The same property is fuzzed without bounds by `fuzz/fuzz_targets/load.rs`.)

use compactor_ir::{LoadOptions, Model};
use compactor_tests::{node_test_dirs, repo_root};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(5) {
            0 => {
                let i = rng.below(out.len());
                if let Some(b) = out.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
            1 => {
                let i = rng.below(out.len());
                if let Some(b) = out.get_mut(i) {
                    *b = rng.next() as u8;
                }
            }
            2 => out.truncate(rng.below(out.len())),
            3 => {
                let i = rng.below(out.len() + 1);
                let extra: Vec<u8> = (0..=rng.below(8)).map(|_| rng.next() as u8).collect();
                out.splice(i..i, extra);
            }
            _ => {
                let a = rng.below(out.len());
                let b = (a + rng.below(64)).min(out.len());
                let chunk = out[a..b].to_vec();
                let i = rng.below(out.len() + 1);
                out.splice(i..i, chunk);
            }
        }
    }
    out
}

fn exercise(data: Vec<u8>, lift_constants: bool) -> bool {
    match Model::from_bytes(bytes::Bytes::from(data), None, &LoadOptions { lift_constants }) {
        Ok(model) => {
            let _ = compactor_ir::verify(&model);
            let _ = compactor_ir::summary::summarize(&model, 5);
            let _ = compactor_ir::model_to_text(&model);
            let _ = model.to_bytes();
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

#[test]
fn mutated_models_load_or_fail_cleanly() {
    let mut seeds: Vec<Vec<u8>> = ["tiny_mlp.onnx", "tiny_bert.onnx", "if_subgraph.onnx"].iter().map(|f| std::fs::read(repo_root().join("fixtures").join(f)).unwrap()).collect();
    // A spread of node tests: subgraphs, sequences, optional types, typed-field tensors.
    for case in [
        "test_if_seq",
        "test_loop11",
        "test_scan9_sum",
        "test_optional_has_element_empty_optional_input",
        "test_cast_FLOAT_to_INT4",
        "test_sequence_map_identity_1_sequence",
        "test_constant_pad",
        "test_gru_seq_length",
    ] {
        let dir = node_test_dirs().into_iter().find(|d| d.ends_with(case)).unwrap_or_else(|| panic!("node test {case}"));
        seeds.push(std::fs::read(dir.join("model.onnx")).unwrap());
    }
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let (mut loaded, mut total) = (0, 0);
    for seed in &seeds {
        for i in 0..600 {
            total += 1;
            if exercise(mutate(&mut rng, seed), i % 2 == 0) {
                loaded += 1;
            }
        }
    }
    // Both paths are exercised: some mutations still load, most do not.
    assert!(loaded > 0 && loaded < total, "{loaded} of {total} loaded");
    eprintln!("{loaded} of {total} mutated models loaded; none panicked");
}
