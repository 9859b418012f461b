//! Generates the ONNX protobuf types from the vendored upstream `onnx-ml.proto`
//! (onnx 1.22.0, IR version 13) with prost; `protox` compiles the schema in pure
//! Rust so no `protoc` is needed.

fn main() {
    let proto = "proto/onnx-ml.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"]).expect("onnx-ml.proto must compile");
    let mut config = prost_build::Config::new();
    // Every `bytes` field (raw_data above all) becomes `bytes::Bytes`, so decoding from a
    // memory-mapped `Bytes` slices the map instead of copying tensor data.
    config.bytes(["."]);
    config.compile_fds(descriptors).expect("prost-build must generate the ONNX types");
}
