//! The runtime on real models: MiniLM against its reference hidden state, the PyPI models
//! against onnxruntime on the same inputs, and calibration capture against onnxruntime.

use compactor_ir::Model;
use compactor_runtime::npy::read_npy;
use compactor_runtime::{CapturedValue, ChannelAbsMean, RuntimeError, Session, SessionOptions, TensorValue, ValueRef};
use compactor_tests::{minilm, pypi_models, run_python, shared_models, short};
use std::path::PathBuf;

fn minilm_inputs() -> Vec<(String, TensorValue)> {
    let dir = shared_models();
    ["input_ids", "attention_mask", "token_type_ids"].iter().map(|n| (n.to_string(), read_npy(&dir.join(format!("minilm_{n}.npy"))).unwrap())).collect()
}

fn named(inputs: &[(String, TensorValue)]) -> Vec<(&str, TensorValue)> {
    inputs.iter().map(|(n, v)| (n.as_str(), v.clone())).collect()
}

/// Largest element difference; a NaN against a number is infinite, so NaN outputs fail.
fn max_abs(a: &TensorValue, b: &TensorValue) -> f64 {
    compactor_runtime::metrics::compare("output", a, b).unwrap().max_abs_error
}

#[test]
fn minilm_reproduces_the_reference_hidden_state() {
    let model = Model::load(minilm()).unwrap();
    let session = Session::new(&model, &SessionOptions::default()).unwrap();
    let outputs = session.run(&named(&minilm_inputs())).unwrap();
    let reference = read_npy(&shared_models().join("minilm_ref_hidden.npy")).unwrap();
    println!("MiniLM planned {:?}", session.plan_kind(&named(&minilm_inputs())).unwrap());
    let (name, hidden) = &outputs[0];
    assert_eq!(name, "last_hidden_state");
    let err = max_abs(hidden, &reference);
    println!("MiniLM last_hidden_state {:?}: max abs error {err:.3e}", hidden.shape());
    assert!(err < 1e-4, "max abs error {err}");
}

#[test]
fn minilm_gives_the_same_result_on_one_and_two_threads() {
    let model = Model::load(minilm()).unwrap();
    let inputs = minilm_inputs();
    let one = Session::new(&model, &SessionOptions { threads: 1, ..Default::default() }).unwrap().run(&named(&inputs)).unwrap();
    let two = Session::new(&model, &SessionOptions { threads: 2, ..Default::default() }).unwrap().run(&named(&inputs)).unwrap();
    assert!(max_abs(&one[0].1, &two[0].1) < 1e-5);
}

#[derive(serde::Deserialize)]
struct Reference {
    model: PathBuf,
    inputs: Vec<(String, PathBuf)>,
    outputs: Vec<(String, PathBuf)>,
}

/// Tolerance against onnxruntime: `|ours - ort| <= ATOL + RTOL * |ort|`. The f16 silero model
/// computes in half precision on both sides, where rounding differences are larger.
fn tolerance(model: &std::path::Path) -> (f64, f64) {
    if model.file_name().is_some_and(|n| n.to_string_lossy().contains("half")) { (1e-2, 1e-2) } else { (1e-4, 1e-3) }
}

#[test]
fn pypi_models_match_onnxruntime() {
    let models = pypi_models();
    let tmp = tempfile::tempdir().unwrap();
    let mut args: Vec<&std::ffi::OsStr> = vec![tmp.path().as_os_str()];
    args.extend(models.iter().map(|m| m.as_os_str()));
    let references: Vec<Reference> = serde_json::from_str(&run_python("ort_reference.py", &args)).unwrap();
    assert_eq!(references.len(), models.len());
    let mut failures = Vec::new();
    for r in &references {
        let model = Model::load(&r.model).unwrap();
        let inputs: Vec<(String, TensorValue)> = r.inputs.iter().map(|(n, f)| (n.clone(), read_npy(f).unwrap())).collect();
        let run = Session::new(&model, &SessionOptions::default()).and_then(|s| Ok((s.run(&named(&inputs))?, s.plan_kind(&named(&inputs))?)));
        let outputs = match run {
            Ok((o, kind)) => {
                println!("{}: planned {kind:?}", short(&r.model));
                // Streaming models (silero-vad's state) must not need a plan per input value.
                if kind == compactor_runtime::PlanKind::Values {
                    failures.push(format!("{}: planned for its input values, so every new input re-plans", short(&r.model)));
                }
                o
            }
            Err(e) => {
                failures.push(format!("{}: {e}", short(&r.model)));
                continue;
            }
        };
        let (atol, rtol) = tolerance(&r.model);
        for (name, file) in &r.outputs {
            let expected = read_npy(file).unwrap();
            let Some((_, actual)) = outputs.iter().find(|(n, _)| n == name) else {
                failures.push(format!("{}: no output '{name}'", short(&r.model)));
                continue;
            };
            if actual.shape() != expected.shape() {
                failures.push(format!("{}: output '{name}' has shape {:?}, onnxruntime {:?}", short(&r.model), actual.shape(), expected.shape()));
                continue;
            }
            let err = max_abs(actual, &expected);
            let e = expected.to_f64_vec().unwrap();
            let a = actual.to_f64_vec().unwrap();
            let bad = compactor_runtime::metrics::count_not_close(&e, &a, rtol, atol);
            println!("{} '{name}' {:?}: max abs error vs onnxruntime {err:.3e}, {bad} elements out of tolerance", short(&r.model), actual.shape());
            if bad > 0 {
                failures.push(format!("{}: output '{name}': {bad} elements beyond atol {atol} + rtol {rtol} (max abs error {err:.3e})", short(&r.model)));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Captured intermediates equal what onnxruntime gives when the same values are made outputs,
/// and the streaming statistics see every batch.
#[test]
fn capture_on_minilm_matches_onnxruntime() {
    let path = minilm();
    let model = Model::load(&path).unwrap();
    let g = &model.graph;
    // The first and last MatMul inputs (activations entering linear layers) and a LayerNorm-ish output.
    let matmuls: Vec<_> = g.nodes_of(compactor_ir::Graph::MAIN).filter(|(_, n)| n.is("MatMul")).map(|(_, n)| n.input(0).unwrap()).collect();
    let wanted = [matmuls[0], matmuls[matmuls.len() / 2], *matmuls.last().unwrap()];
    let names: Vec<String> = wanted.iter().map(|&v| g.value(v).name.clone()).collect();
    let session = Session::new(&model, &SessionOptions::default()).unwrap();
    let inputs = minilm_inputs();

    let mut captured: Vec<(String, TensorValue)> = Vec::new();
    let mut stats = ChannelAbsMean::default();
    let refs: Vec<ValueRef> = vec![ValueRef::Id(wanted[0]), ValueRef::Name(names[1].clone()), ValueRef::Id(wanted[2])];
    let mut sink = |c: &CapturedValue<'_>| -> Result<(), RuntimeError> {
        if c.id == wanted[2] {
            stats.add(c)?;
        }
        captured.push((c.name.to_string(), c.value.clone()));
        Ok(())
    };
    let outputs = session.run_with_capture(&named(&inputs), &refs, &mut sink).unwrap();
    // Outputs are unchanged by capturing.
    let plain = session.run(&named(&inputs)).unwrap();
    assert!(max_abs(&outputs[0].1, &plain[0].1) < 1e-6);
    assert_eq!(captured.len(), 3);

    let tmp = tempfile::tempdir().unwrap();
    let mut args: Vec<std::ffi::OsString> = vec![path.into(), tmp.path().into(), names.join(",").into()];
    for (n, _) in &inputs {
        args.push(format!("{n}={}", shared_models().join(format!("minilm_{n}.npy")).display()).into());
    }
    let arg_refs: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
    let files: std::collections::HashMap<String, PathBuf> = serde_json::from_str(&run_python("ort_run.py", &arg_refs)).unwrap();
    for (name, value) in &captured {
        let reference = read_npy(&files[name]).unwrap();
        let err = max_abs(value, &reference);
        println!("captured '{name}' {:?}: max abs error vs onnxruntime {err:.3e}", value.shape());
        assert!(err < 1e-4, "'{name}': {err}");
    }
    // A second batch accumulates into the same statistics.
    session.run_with_capture(&named(&inputs), &[ValueRef::Id(wanted[2])], &mut |c: &CapturedValue<'_>| stats.add(c)).unwrap();
    let rows = captured[2].1.shape().iter().rev().skip(1).product::<usize>() as u64;
    assert_eq!(stats.rows, 2 * rows);
    let reference = read_npy(&files[&names[2]]).unwrap().to_f32().unwrap();
    let channels = *reference.shape().last().unwrap();
    let want0: f64 = reference.iter().step_by(channels).map(|v| v.abs() as f64).sum::<f64>() / rows as f64;
    assert!((stats.means()[0] - want0).abs() < 1e-4 * (1.0 + want0), "{} vs {want0}", stats.means()[0]);

    let err = session.run_with_capture(&named(&inputs), &[ValueRef::Name("no such value".into())], &mut |_: &CapturedValue<'_>| Ok(())).unwrap_err();
    assert!(err.to_string().contains("no such value"), "{err}");
}

#[test]
fn bad_inputs_are_errors_that_name_the_input() {
    let model = Model::load(minilm()).unwrap();
    let session = Session::new(&model, &SessionOptions { threads: 1, ..Default::default() }).unwrap();
    let mut inputs = minilm_inputs();
    inputs.pop();
    let err = session.run(&named(&inputs)).unwrap_err().to_string();
    assert!(err.contains("token_type_ids") && err.contains("missing"), "{err}");
    inputs.push(("token_type_ids".into(), TensorValue::from_i64(&[3], &[0, 0, 0]).unwrap()));
    let err = session.run(&named(&inputs)).unwrap_err().to_string();
    assert!(err.contains("token_type_ids") && err.contains("shape"), "{err}");
    inputs.pop();
    inputs.push(("bogus".into(), TensorValue::from_i64(&[1], &[0]).unwrap()));
    let err = session.run(&named(&inputs)).unwrap_err().to_string();
    assert!(err.contains("bogus"), "{err}");
}
