//! A model optimized by Compactor at build time (see `build.rs`), embedded in the binary.

/// The optimized model's bytes.
pub const MODEL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/tiny_mlp.optimized.onnx"));

#[cfg(test)]
mod tests {
    #[test]
    fn the_embedded_model_is_the_optimized_one() {
        let model = compactor::ir::Model::from_bytes(bytes_of(super::MODEL), None, &Default::default()).unwrap();
        compactor::ir::verify(&model).unwrap();
        // MatMul + Add became one Gemm: two Gemms, nothing else.
        let ops: Vec<String> = model.graph.all_nodes().iter().map(|&n| model.graph.node(n).op_type.clone()).collect();
        assert_eq!(ops, ["Gemm", "Relu", "Gemm"]);
    }

    fn bytes_of(data: &'static [u8]) -> compactor::ir::bytes::Bytes {
        compactor::ir::bytes::Bytes::from_static(data)
    }
}
