//! Optimizes `fixtures/tiny_mlp.onnx` at build time with a Compactor pipeline and puts the
//! result in OUT_DIR, where `src/lib.rs` embeds it.

use std::path::Path;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/tiny_mlp.onnx");
    println!("cargo:rerun-if-changed={}", source.display());
    let mut model = compactor::ir::Model::load(&source)?;
    compactor::Pipeline::parse("eliminate-identity,eliminate-dead-code,fuse-matmul-add")?.run(&mut model)?;
    let out = Path::new(&std::env::var("OUT_DIR")?).join("tiny_mlp.optimized.onnx");
    model.save(&out)?;
    Ok(())
}
