//! `upgrade-opset` keeps what models compute: checked in onnxruntime on the ONNX node tests'
//! own inputs and expected outputs, and on the real models.

use compactor_ir::Model;
use compactor_passes::{Pipeline, RunOptions};
use compactor_tests::{node_test_dirs, real_models, run_python, short};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

fn upgrade(model: &mut Model, version: i64) -> Result<(), compactor_passes::PassError> {
    Pipeline::parse(&format!("upgrade-opset(version={version})"))?.run_with(model, RunOptions { verify_each: true, ..Default::default() })?;
    Ok(())
}

/// PASS/FAIL/ERROR per model path, from node_tests_ort.py.
fn ort_results(pairs: &[(PathBuf, PathBuf)], dir: &Path) -> BTreeMap<PathBuf, String> {
    let list = dir.join("list.tsv");
    let mut f = std::fs::File::create(&list).unwrap();
    for (model, case) in pairs {
        writeln!(f, "{}\t{}", model.display(), case.display()).unwrap();
    }
    drop(f);
    run_python("node_tests_ort.py", &[list.as_os_str()])
        .lines()
        .filter_map(|l| {
            let (status, rest) = l.split_once(' ')?;
            let path = rest.split(": ").next()?;
            Some((PathBuf::from(path), format!("{status} {rest}")))
        })
        .collect()
}

#[test]
fn node_tests_compute_the_same_after_upgrading_to_opset_21() {
    node_tests_compute_the_same_after_upgrading(21);
}

#[test]
fn node_tests_compute_the_same_after_upgrading_to_opset_25() {
    node_tests_compute_the_same_after_upgrading(25);
}

fn node_tests_compute_the_same_after_upgrading(version: i64) {
    let dir = tempfile::tempdir().unwrap();
    let mut originals = Vec::new();
    let mut upgraded = Vec::new();
    let mut refused = Vec::new();
    for case in node_test_dirs() {
        let path = case.join("model.onnx");
        let mut model = Model::load(&path).unwrap();
        let opset = model.opset_version("").unwrap_or(0);
        if !(7..version).contains(&opset) {
            continue;
        }
        match upgrade(&mut model, version) {
            Ok(()) => {
                assert_eq!(model.opset_version(""), Some(version));
                assert!(model.ir_version >= Some(compactor_passes::passes::upgrade_opset::min_ir_version(version)));
                let out = dir.path().join(format!("{}.onnx", case.file_name().unwrap().to_string_lossy()));
                model.save(&out).unwrap();
                originals.push((path, case.clone()));
                upgraded.push((out, case));
            }
            Err(e) => refused.push(format!("{}: {e}", short(&path))),
        }
    }
    // Only ops without an equivalent may be refused: Scan-8's batch axis.
    for r in &refused {
        assert!(r.contains("Scan-8 has a batch axis"), "unexpected refusal: {r}");
    }
    let before = ort_results(&originals, dir.path());
    let after = ort_results(&upgraded, dir.path());
    let mut regressions = Vec::new();
    let mut passing = 0;
    for ((orig, _), (up, _)) in originals.iter().zip(&upgraded) {
        let b = &before[orig];
        let a = &after[up];
        if b.starts_with("PASS ") {
            passing += 1;
            if !a.starts_with("PASS") {
                regressions.push(format!("{} -> {a}", short(orig)));
            }
        }
    }
    eprintln!("opset {version}: {} node tests below it upgraded ({} refused); {passing} pass in onnxruntime before, all of them after", originals.len(), refused.len());
    assert!(passing > 100, "too few cases exercised: {passing}");
    assert!(regressions.is_empty(), "{} cases broke:\n{}", regressions.len(), regressions.join("\n"));
}

#[test]
fn real_models_compute_the_same_after_upgrading() {
    let dir = tempfile::tempdir().unwrap();
    for path in real_models() {
        let mut model = Model::load(&path).unwrap();
        upgrade(&mut model, 21).unwrap_or_else(|e| panic!("{}: {e}", short(&path)));
        let out = dir.path().join(short(&path).replace('/', "__"));
        model.save(&out).unwrap();
        compactor_tests::compare_ort(&path, &out, 1e-5, 1e-4, "all", &compactor_tests::model_inputs(&path));
    }
}

/// Models from before opset 11 (Upsample, Slice/TopK/Clip/Pad attributes, Scatter,
/// BatchNormalization's spatial) compute the same in onnxruntime at every target opset.
#[test]
fn opset_7_and_9_models_compute_the_same_after_upgrading() {
    let dir = tempfile::tempdir().unwrap();
    for fixture in ["opset7_zoo.onnx", "opset9_zoo.onnx"] {
        let path = compactor_tests::repo_root().join("fixtures").join(fixture);
        for version in [10, 11, 13, 21] {
            let mut model = Model::load(&path).unwrap();
            upgrade(&mut model, version).unwrap_or_else(|e| panic!("{fixture} -> {version}: {e}"));
            let text = compactor_ir::text::model_to_text(&model);
            // Scatter is valid up to opset 10 and renamed when crossing 11.
            let gone: &[&str] = if version >= 11 { &["Upsample", "Scatter(", "spatial"] } else { &["Upsample", "spatial"] };
            for gone in gone {
                assert!(!text.contains(gone), "{fixture} -> {version}: {gone} left:\n{text}");
            }
            let out = dir.path().join(format!("{version}_{fixture}"));
            model.save(&out).unwrap();
            let err = compactor_tests::compare_ort(&path, &out, 0.0, 1e-6, "none", &[]);
            eprintln!("{fixture} -> opset {version}: max abs difference {err:.2e}");
        }
    }
}
