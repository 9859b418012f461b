//! ONNX ops tract 0.23.9 does not have, registered through its op register: `CumProd`,
//! `BitCast` (same-width types), `StringConcat`, `ReverseSequence`, `Det`, `Col2Im`,
//! `ai.onnx.ml.LabelEncoder`, `RegexFullMatch` (on the `regex` crate), `TensorScatter`, and the
//! value-shaped `Unique`, `StringSplit`, `StringNormalizer` and `AffineGrid`. Each is a parsed
//! [`Expansion`] wiring a small typed op.

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

mod affine_grid;
mod bitcast;
mod col2im;
mod cumprod;
mod det;
mod label_encoder;
mod regex_full_match;
mod reverse_sequence;
mod string_concat;
mod string_normalizer;
mod string_split;
mod tensor_scatter;
mod unique;

pub use affine_grid::{AffineGrid, build_affine_grid};
pub use bitcast::{BitCast, build_bitcast};
pub use col2im::{Col2Im, build_col2im};
pub use cumprod::{CumProd, build_cumprod};
pub use det::{Det, build_det};
pub use label_encoder::{LabelEncoder, build_label_encoder};
pub use regex_full_match::{RegexFullMatch, build_regex_full_match};
pub use reverse_sequence::{ReverseSequence, build_reverse_sequence};
pub use string_concat::{StringConcat, build_string_concat};
pub use string_normalizer::{StringNormalizer, build_string_normalizer};
pub use string_split::{StringSplit, build_string_split};
pub use tensor_scatter::{TensorScatter, build_tensor_scatter};
pub use unique::{Unique, build_unique};

/// Ops whose output shape depends on input values (Unique, StringSplit, AffineGrid's `size`):
/// tract can type them only once those inputs are constants, which the session arranges by
/// planning for the input values. Until then typing fails with this message.
fn needs_value<'a>(fact: &'a TypedFact, op: &str) -> TractResult<&'a Arc<Tensor>> {
    fact.konst.as_ref().with_context(|| format!("{op}: the output shape depends on input values"))
}

/// An op parsed from ONNX whose typed form is `op` itself, on all of the node's inputs.
#[derive(Debug, Clone)]
struct Direct<O: TypedOp + Clone> {
    op: O,
    outputs: usize,
}

impl<O: TypedOp + Clone + std::fmt::Debug> Expansion for Direct<O> {
    fn name(&self) -> StaticName {
        self.op.name()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(self.outputs)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, _s: &mut Solver<'r>, _inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_output_arity(outputs, self.outputs)
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let wired = model.wire_node(prefix, self.op.clone(), inputs)?;
        Ok(wired.into_iter().take(self.outputs).collect())
    }
}
