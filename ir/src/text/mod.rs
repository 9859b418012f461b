//! The stable text form of a model, for snapshots, `--dump-after`, file tests and debugging.
//!
//! One line per node, values written as `%name` (quoted when the name is not a plain
//! identifier), subgraphs nested in braces. The form depends only on the graph, never on
//! hash-map order or addresses, so the same graph always prints the same text.
//!
//! [`parse`] reads the form back: `print(parse(print(m))) == print(m)` for every model without
//! model-local functions or external data. Tensors of up to [`INLINE_ELEMENTS`] elements are
//! written with their exact values; larger ones as dtype and shape, which read back as zeros,
//! and hand-written files give them a deterministic `fill=`. `docs/text-ir.md` has the grammar.

mod lex;
mod parse;
mod print;
mod scalar;
#[cfg(test)]
mod tests;

pub use parse::{MAX_ELEMENTS, parse};
pub use print::{INLINE_ELEMENTS, TextOptions, fnv1a, graph_to_text, model_to_text, model_to_text_with, model_to_text_with_data};
pub use scalar::Fill;

/// Why a text could not be read, and where (lines and columns count from 1).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("line {line}, column {column}: expected {expected}, found {found}")]
    Expected { line: usize, column: usize, expected: String, found: String },
    #[error("line {line}, column {column}: {reason}")]
    Invalid { line: usize, column: usize, reason: String },
}

impl TextError {
    /// The line and column the error points at.
    pub fn position(&self) -> (usize, usize) {
        match self {
            TextError::Expected { line, column, .. } | TextError::Invalid { line, column, .. } => (*line, *column),
        }
    }
}
