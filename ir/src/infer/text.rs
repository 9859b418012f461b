//! String and text ops: `StringNormalizer`, `StringSplit`, `TfIdfVectorizer`.

use super::{InferError, NodeCtx, Rule};
use crate::dtype::DataType;
use crate::graph::AttrValue;
use crate::types::Dim;

pub(super) fn rule(op: &str) -> Option<Rule> {
    Some(match op {
        "StringNormalizer" => string_normalizer,
        "StringSplit" => string_split,
        "TfIdfVectorizer" => tf_idf_vectorizer,
        _ => return None,
    })
}

fn string_normalizer(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let has_stopwords = matches!(ctx.node.attr("stopwords"), Some(AttrValue::Strings(s)) if !s.is_empty());
    let dims = match ctx.dims(0) {
        // Stop words are removed, so the string count is not known.
        Some([c]) => Some(vec![if has_stopwords { Dim::Unknown } else { c.clone() }]),
        Some([one, c]) => Some(vec![one.clone(), if has_stopwords { Dim::Unknown } else { c.clone() }]),
        Some(x) => return Err(InferError::Rank { index: 0, rank: x.len(), expected: "1 or 2".into() }),
        None => None,
    };
    ctx.set(0, Some(DataType::String), dims);
    Ok(())
}

fn string_split(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let input = ctx.dims(0).map(<[Dim]>::to_vec);
    ctx.set(
        0,
        Some(DataType::String),
        input.clone().map(|mut d| {
            d.push(Dim::Unknown);
            d
        }),
    );
    ctx.set(1, Some(DataType::Int64), input);
    Ok(())
}

fn tf_idf_vectorizer(ctx: &mut NodeCtx<'_>) -> Result<(), InferError> {
    ctx.require(0)?;
    let width = ctx.attr_ints("ngram_indexes").and_then(|i| i.iter().max()).and_then(|m| m.checked_add(1)).map_or(Dim::Unknown, Dim::Known);
    let dims = match ctx.dims(0) {
        Some([_]) => Some(vec![width]),
        Some([n, _]) => Some(vec![n.clone(), width]),
        Some(x) => return Err(InferError::Rank { index: 0, rank: x.len(), expected: "1 or 2".into() }),
        None => None,
    };
    ctx.set(0, Some(DataType::Float), dims);
    Ok(())
}
