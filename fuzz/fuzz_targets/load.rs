//! Any bytes given to the loader give a model or an error, never a panic; a loaded model
//! survives the verifier, the summary, the text form and re-serialisation.
//!
//! Run: `cargo +nightly fuzz run load fuzz/corpus/load` (seed the corpus with fixtures/*.onnx).
#![no_main]

use compactor_ir::{LoadOptions, Model};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let lift_constants = data.first().is_some_and(|b| b & 1 == 1);
    let Ok(model) = Model::from_bytes(bytes::Bytes::copy_from_slice(data), None, &LoadOptions { lift_constants }) else {
        return;
    };
    let _ = compactor_ir::verify(&model);
    let _ = compactor_ir::summary::summarize(&model, 5);
    let _ = compactor_ir::model_to_text(&model);
    let _ = model.to_bytes();
});
