//! Any text given to the text-form parser gives a model or an error, never a panic; a parsed
//! model prints, and its printed form reads back to the same text.
//!
//! Run: `cargo +nightly fuzz run parse_text fuzz/corpus/parse_text` (seed the corpus with
//! passes/filetests/**/*.ctir).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(model) = compactor_ir::text::parse(text) else { return };
    let _ = compactor_ir::verify(&model);
    let printed = compactor_ir::model_to_text(&model);
    let again = compactor_ir::text::parse(&printed).expect("printed text reads back");
    assert_eq!(compactor_ir::model_to_text(&again), printed);
});
