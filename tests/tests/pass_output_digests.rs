//! Every pass's output on real models is pinned byte for byte: the SHA-256 of the written ONNX
//! file of each (model, pipeline) pair is compared with `tests/pass_output_digests.txt`.
//!
//! Refactors of the pass infrastructure must not change what a pass writes; a change that is
//! meant to change an output re-records the digests with `COMPACTOR_BLESS=1` and says why in
//! its commit. The same run twice must also give the same bytes (checked here by the
//! calibrated pipelines, whose statistics are accumulated in parallel).

use compactor_ir::{ExternalDataPolicy, Model, SaveOptions};
use compactor_passes::RunOptions;
use compactor_runtime::SessionOptions;
use compactor_tests::{minilm, pypi_models, repo_root, short};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Pipelines run without calibration data: every transform pass alone with its defaults, the
/// presets, and the quantizer's main variants.
const PIPELINES: &[&str] = &[
    "lift-constants",
    "eliminate-identity",
    "fold-shapes",
    "fold-constants",
    "eliminate-dead-code",
    "merge-duplicate-initializers",
    "fuse-matmul-add",
    "infer-shapes",
    "upgrade-opset",
    "cleanup",
    "int8-linear-int4-embeddings",
    "quantize(bits=8,block=0)",
    "quantize(bits=4,block=32)",
    "quantize(bits=4,block=32,format=matmulnbits)",
    "quantize(bits=4,block=64,method=mse,symmetric=false)",
    "quantize(bits=2,block=16,scale_dtype=f16)",
    "quantize(bits=4,block=32,outliers=0.01)",
];

/// Pipelines that need calibration data (run on MiniLM with 4 batches of random tokens).
const CALIBRATED: &[&str] =
    &["quantize(bits=4,block=32,method=gptq)", "quantize(bits=4,block=32,awq=true)", "quantize(bits=4,block=32,method=gptq,awq=true,act_order=true)", "quantize(bits=4,block=32,budget_bits=5)"];

fn digests_file() -> PathBuf {
    repo_root().join("tests/pass_output_digests.txt")
}

fn read_digests() -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(digests_file()).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (key, digest) = l.rsplit_once(' ').expect("'<model> <pipeline> <sha256>' lines");
            (key.to_string(), digest.to_string())
        })
        .collect()
}

/// The digest of the model as `compactor optimize` writes it (inline tensors, so external data
/// files are covered too).
fn digest(model: &Model, dir: &Path) -> String {
    let path = dir.join("out.onnx");
    model.save_with(&path, &SaveOptions { external_data: ExternalDataPolicy::Inline, sync: false }).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    format!("{:x}", Sha256::digest(&bytes))
}

fn run(src: &Path, spec: &str, calibrated: bool) -> Model {
    let mut model = Model::load(src).unwrap();
    let mut pipeline = compactor::Pipeline::parse(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
    if calibrated {
        let options = SessionOptions { dims: vec![("batch".into(), 1), ("seq".into(), 64)], ..Default::default() };
        let calibration = compactor::RuntimeCalibrator::random(&model, 4, 0, options).unwrap();
        pipeline = pipeline.with_calibration(calibration);
    }
    pipeline.run_with(&mut model, RunOptions { verify_each: true, ..Default::default() }).unwrap_or_else(|e| panic!("{}: {spec}: {e}", short(src)));
    model
}

#[test]
fn pass_outputs_match_their_recorded_digests() {
    let bless = std::env::var_os("COMPACTOR_BLESS").is_some();
    let recorded = read_digests();
    let dir = tempfile::tempdir().unwrap();
    let mut models = vec![minilm()];
    // Small PyPI models of distinct families (the large ones add minutes, not coverage).
    models.extend(pypi_models().into_iter().filter(|p| std::fs::metadata(p).is_ok_and(|m| m.len() < 8 << 20)));
    let mut actual = BTreeMap::new();
    for src in &models {
        for spec in PIPELINES {
            let model = run(src, spec, false);
            actual.insert(format!("{} {spec}", short(src)), digest(&model, dir.path()));
        }
    }
    for spec in CALIBRATED {
        let first = digest(&run(&minilm(), spec, true), dir.path());
        let again = digest(&run(&minilm(), spec, true), dir.path());
        assert_eq!(first, again, "{spec}: two runs with the same calibration data wrote different bytes");
        actual.insert(format!("{} {spec}", short(&minilm())), first);
    }
    if bless {
        let mut text = String::from("# SHA-256 of pass outputs (tests/tests/pass_output_digests.rs); COMPACTOR_BLESS=1 rewrites.\n");
        for (key, digest) in &actual {
            text.push_str(&format!("{key} {digest}\n"));
        }
        std::fs::write(digests_file(), text).unwrap();
        return;
    }
    let mut differences = Vec::new();
    for (key, digest) in &actual {
        match recorded.get(key) {
            Some(expected) if expected == digest => {}
            Some(expected) => differences.push(format!("{key}: {digest}, recorded {expected}")),
            None => differences.push(format!("{key}: not recorded (COMPACTOR_BLESS=1 records it)")),
        }
    }
    for key in recorded.keys().filter(|k| !actual.contains_key(*k)) {
        differences.push(format!("{key}: recorded but not run"));
    }
    assert!(differences.is_empty(), "pass outputs changed:\n{}", differences.join("\n"));
}
