//! Models on disk in either form: ONNX, or Compactor's text form for files named `*.ctir`.

use anyhow::Context;
use compactor_ir::{LoadOptions, Model, SaveOptions, SaveReport};
use std::path::Path;

/// The extension of the text form.
pub const TEXT_EXTENSION: &str = "ctir";

pub fn is_text(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case(TEXT_EXTENSION))
}

/// Reads an ONNX model, or parses a `.ctir` file.
pub fn load(path: &Path) -> anyhow::Result<Model> {
    if is_text(path) {
        let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
        return compactor_ir::text::parse(&text).with_context(|| format!("{}: not a valid text-form model", path.display()));
    }
    Ok(Model::load_with(path, &LoadOptions::default())?)
}

/// Writes ONNX, or the text form (with every tensor's values, so it reads back to the same
/// weights) for a `.ctir` path; either way atomically.
pub fn save(model: &Model, path: &Path, options: &SaveOptions) -> anyhow::Result<SaveReport> {
    if is_text(path) {
        let text = compactor_ir::text::model_to_text_with_data(model);
        write_text(path, &text)?;
        return Ok(SaveReport { model_bytes: text.len() as u64, external_files: Vec::new() });
    }
    Ok(model.save_with(path, options)?)
}

pub fn write_text(path: &Path, text: &str) -> anyhow::Result<()> {
    compactor_ir::write_atomically(path, |f| std::io::Write::write_all(f, text.as_bytes())).with_context(|| format!("{}: cannot write", path.display()))
}
