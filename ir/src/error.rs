//! Errors of the IR crate. Each names the file and the place in the model it is about.

use std::path::PathBuf;

/// Where bytes came from: a file, or memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Memory,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Memory => f.write_str("<in-memory model>"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IrError {
    #[error("{origin}: cannot read: {error}")]
    Read { origin: Origin, error: std::io::Error },

    #[error("{origin}: not an ONNX model: {reason}")]
    NotOnnx { origin: Origin, reason: String },

    #[error("{origin}: tensor '{tensor}': {reason}")]
    Tensor { origin: Origin, tensor: String, reason: String },

    #[error("{origin}: tensor '{tensor}': external data file '{file}' {reason}")]
    ExternalData { origin: Origin, tensor: String, file: PathBuf, reason: String },

    #[error("{origin}: {location}: {reason}")]
    Structure { origin: Origin, location: String, reason: String },

    #[error("{path}: cannot write: {error}")]
    Write { path: PathBuf, error: std::io::Error },

    #[error("{path}: the model needs {bytes} bytes inline, over protobuf's 2 GiB limit; save with external data (a size threshold) instead")]
    TooLargeForProtobuf { path: PathBuf, bytes: u64 },

    #[error("tensor '{tensor}': {reason}")]
    TensorData { tensor: String, reason: String },
}

pub type Result<T, E = IrError> = std::result::Result<T, E>;
