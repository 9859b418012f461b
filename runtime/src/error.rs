//! The one error type of the runtime.

use std::path::PathBuf;

/// Everything that can go wrong loading or running a model. Each variant names what it is about
/// (model, node, input or file) so a message alone tells the user where to look.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error(transparent)]
    Ir(#[from] compactor_ir::IrError),

    /// tract refused the model (parsing, type inference, optimisation or planning).
    #[error("{model}: tract could not prepare the model: {reason}")]
    Prepare { model: String, reason: String },

    /// The lowering step met something in the graph it cannot rewrite.
    #[error("{model}: {node}: cannot lower for tract: {reason}")]
    Lowering { model: String, node: String, reason: String },

    /// A node failed while running.
    #[error("{model}: running failed: {reason}")]
    Execution { model: String, reason: String },

    /// A node run by the interpreter (graphs with sequences, optionals or loops) failed.
    #[error("{model}: node {node}: {reason}")]
    Node { model: String, node: String, reason: String },

    #[error("{model}: no input named '{name}' (inputs: {known})")]
    UnknownInput { model: String, name: String, known: String },

    #[error("{model}: input '{name}' is missing")]
    MissingInput { model: String, name: String },

    #[error("{model}: input '{name}': {reason}")]
    BadInput { model: String, name: String, reason: String },

    #[error("{model}: cannot capture '{value}': {reason}")]
    Capture { model: String, value: String, reason: String },

    /// An unsupported element type or a tensor that cannot be converted.
    #[error("tensor '{name}': {reason}")]
    Tensor { name: String, reason: String },

    #[error("{}: {reason}", path.display())]
    File { path: PathBuf, reason: String },

    #[error("{path}: {source}", path = path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A statistics sink refused a captured value.
    #[error("capture sink for '{value}': {reason}")]
    Sink { value: String, reason: String },
}

/// tract errors carry a chain of contexts; all of it is useful in a message.
pub(crate) fn tract_reason(e: &tract_onnx::prelude::TractError) -> String {
    format!("{e:#}").replace('\n', " ")
}
