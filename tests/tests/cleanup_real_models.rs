//! The cleanup preset on every real model the tests use: outputs unchanged, checked by the
//! bundled runtime and by onnxruntime.

use compactor_ir::{Model, verify};
use compactor_runtime::{Session, SessionOptions, TensorValue};
use compactor_tests::{model_inputs, real_models, short};

fn runtime_outputs(model: &Model, inputs: &[(String, TensorValue)]) -> Vec<(String, TensorValue)> {
    let named: Vec<(&str, TensorValue)> = inputs.iter().map(|(n, v)| (n.as_str(), v.clone())).collect();
    Session::new(model, &SessionOptions::default()).unwrap().run(&named).unwrap()
}

#[test]
fn cleanup_keeps_every_real_models_outputs() {
    let dir = tempfile::tempdir().unwrap();
    for path in real_models() {
        let name = short(&path);
        let original = Model::load(&path).unwrap();
        let mut model = original.clone();
        let report = compactor::Pipeline::parse("cleanup").unwrap().run(&mut model).unwrap_or_else(|e| panic!("{name}: {e}"));
        verify(&model).unwrap();
        eprintln!("{name}: {} -> {} nodes", report.before.nodes, report.after.nodes);

        // The bundled runtime: same inputs, same outputs.
        let specs = model_inputs(&path);
        let inputs: Vec<(String, TensorValue)> = specs
            .iter()
            .map(|s| {
                let (n, f) = s.split_once('=').unwrap();
                (n.to_string(), compactor_runtime::npy::read_npy(std::path::Path::new(f)).unwrap())
            })
            .collect();
        let before = runtime_outputs(&original, &inputs);
        let after = runtime_outputs(&model, &inputs);
        assert_eq!(before.len(), after.len(), "{name}");
        for ((n, a), (_, b)) in before.iter().zip(&after) {
            let c = compactor_runtime::metrics::compare(n, a, b).unwrap();
            assert!(c.max_abs_error <= 1e-5, "{name}: output '{n}' moved by {}", c.max_abs_error);
        }

        // onnxruntime: the saved result against the original file.
        let out = dir.path().join(name.replace('/', "__"));
        model.save(&out).unwrap();
        compactor_tests::compare_ort(&path, &out, 1e-5, 1e-4, "all", &specs);
    }
}
