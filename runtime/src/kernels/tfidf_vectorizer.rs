//! `TfIdfVectorizer`: counts the n-grams of a pool (ints or strings) in each row of the input,
//! n-grams of items `skip + 1` apart for every skip up to `max_skip_count`, and weighs the
//! counts (`TF`: the counts, `IDF`: the weight where an n-gram occurs, `TFIDF`: weight × count).

use std::collections::HashMap;
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

/// An n-gram of the pool or of the input.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Item {
    Int(i64),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Weighting {
    Tf,
    Idf,
    TfIdf,
}

/// The op, with its pool turned into a map from n-gram to output column.
#[derive(Debug, Clone)]
pub struct TfIdfVectorizer {
    columns: Arc<HashMap<Vec<Item>, usize>>,
    min_gram: usize,
    max_gram: usize,
    max_skip: usize,
    width: usize,
    weighting: Weighting,
    weights: Arc<Vec<f32>>,
}

impl PartialEq for TfIdfVectorizer {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.columns, &other.columns) && Arc::ptr_eq(&self.weights, &other.weights)
    }
}
impl Eq for TfIdfVectorizer {}

impl std::hash::Hash for TfIdfVectorizer {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.min_gram, self.max_gram, self.max_skip, self.width, self.weighting).hash(state);
    }
}

pub fn build_tfidf_vectorizer(_ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let int = |name: &str| -> TractResult<usize> {
        let v = node.get_attr_opt::<i64>(name)?.with_context(|| format!("TfIdfVectorizer: {name} is required"))?;
        usize::try_from(v).map_err(|_| format_err!("TfIdfVectorizer: {name} is negative ({v})"))
    };
    let (min_gram, max_gram, max_skip) = (int("min_gram_length")?, int("max_gram_length")?, int("max_skip_count")?);
    let weighting = match node.get_attr_opt::<String>("mode")?.as_deref() {
        Some("TF") => Weighting::Tf,
        Some("IDF") => Weighting::Idf,
        Some("TFIDF") => Weighting::TfIdf,
        other => bail!("TfIdfVectorizer: mode {other:?} is not TF, IDF or TFIDF"),
    };
    let counts = node.get_attr_opt_vec::<i64>("ngram_counts")?.context("TfIdfVectorizer: ngram_counts is required")?;
    let indexes = node.get_attr_opt_vec::<i64>("ngram_indexes")?.context("TfIdfVectorizer: ngram_indexes is required")?;
    let pool: Vec<Item> = match node.get_attr_opt_vec::<i64>("pool_int64s")? {
        Some(v) => v.into_iter().map(Item::Int).collect(),
        None => node.get_attr_opt_vec::<String>("pool_strings")?.context("TfIdfVectorizer: no pool_int64s or pool_strings")?.into_iter().map(Item::Text).collect(),
    };
    let weights = node.get_attr_opt_vec::<f32>("weights")?.unwrap_or_default();
    let columns = pool_columns(&pool, &counts, &indexes, min_gram, max_gram)?;
    let width = indexes.iter().map(|&i| i + 1).max().unwrap_or(0).max(0) as usize;
    ensure!(weights.is_empty() || weights.len() >= width, "TfIdfVectorizer: {} weights for {width} outputs", weights.len());
    Ok((expand(TfIdfVectorizerNode(TfIdfVectorizer { columns: Arc::new(columns), min_gram, max_gram, max_skip, width, weighting, weights: Arc::new(weights) })), vec![]))
}

/// The pool's n-grams of lengths `min..=max`, each with its output column. `counts[i]` is where
/// the (i+1)-grams start in the pool; n-grams are numbered across all lengths, and the k-th one
/// goes to column `indexes[k]` (a repeated n-gram takes its last number).
fn pool_columns(pool: &[Item], counts: &[i64], indexes: &[i64], min: usize, max: usize) -> TractResult<HashMap<Vec<Item>, usize>> {
    let mut columns = HashMap::new();
    let mut number = 0usize;
    for (i, &start) in counts.iter().enumerate() {
        let n = i + 1;
        let end = counts.get(i + 1).map_or(pool.len() as i64, |&e| e);
        ensure!(0 <= start && start <= end && end as usize <= pool.len(), "TfIdfVectorizer: ngram_counts {counts:?} do not fit a pool of {}", pool.len());
        for gram in pool[start as usize..end as usize].chunks_exact(n) {
            if (min..=max).contains(&n) {
                let column = *indexes.get(number).with_context(|| format!("TfIdfVectorizer: no ngram_indexes entry for n-gram {number}"))?;
                ensure!(column >= 0, "TfIdfVectorizer: negative column {column}");
                columns.insert(gram.to_vec(), column as usize);
            }
            number += 1;
        }
    }
    Ok(columns)
}

impl TfIdfVectorizer {
    /// Counts per column for one row: unigrams once, longer n-grams for each skip.
    fn count_row(&self, row: &[Item], counts: &mut [f32]) {
        let mut shortest = self.min_gram.max(1);
        for skip in 0..=self.max_skip {
            let step = skip + 1;
            if shortest > self.max_gram {
                break;
            }
            for start in 0..row.len() {
                let mut gram = Vec::with_capacity(self.max_gram);
                for n in 1..=self.max_gram {
                    let at = start + (n - 1) * step;
                    if at >= row.len() {
                        break;
                    }
                    gram.push(row[at].clone());
                    if n >= shortest
                        && let Some(&column) = self.columns.get(&gram)
                    {
                        counts[column] += 1.0;
                    }
                }
            }
            // With a step of more than one, unigrams would be counted again.
            if shortest == 1 {
                shortest = 2;
            }
        }
    }

    fn weigh(&self, counts: &mut [f32]) {
        for (i, c) in counts.iter_mut().enumerate() {
            let w = self.weights.get(i).copied();
            *c = match (self.weighting, w) {
                (Weighting::Tf, _) => *c,
                (Weighting::Idf, Some(w)) => {
                    if *c > 0.0 {
                        w
                    } else {
                        0.0
                    }
                }
                (Weighting::Idf, None) => {
                    if *c > 0.0 {
                        1.0
                    } else {
                        0.0
                    }
                }
                (Weighting::TfIdf, Some(w)) => w * *c,
                (Weighting::TfIdf, None) => *c,
            };
        }
    }
}

#[derive(Debug, Clone)]
struct TfIdfVectorizerNode(TfIdfVectorizer);

impl Expansion for TfIdfVectorizerNode {
    fn name(&self) -> StaticName {
        "TfIdfVectorizer".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, DatumType::F32)?;
        let width = self.0.width;
        s.given(&inputs[0].shape, move |s, shape| {
            let mut out: TVec<TDim> = shape.iter().take(shape.len().saturating_sub(1)).cloned().collect();
            out.push(width.into());
            s.equals(&outputs[0].shape, ShapeFactoid::from(out))
        })
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

impl Op for TfIdfVectorizer {
    fn name(&self) -> StaticName {
        "TfIdfVectorizer".into()
    }
    op_as_typed_op!();
}

impl EvalOp for TfIdfVectorizer {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(x.rank() == 1 || x.rank() == 2, "TfIdfVectorizer: input of rank {} (1 or 2 expected)", x.rank());
        let items: Vec<Item> = if x.datum_type() == DatumType::String {
            x.to_plain_array_view::<String>()?.iter().cloned().map(Item::Text).collect()
        } else {
            x.cast_to::<i64>()?.to_plain_array_view::<i64>()?.iter().map(|&v| Item::Int(v)).collect()
        };
        let row_len = *x.shape().last().expect("rank checked");
        let rows = if x.rank() == 1 { 1 } else { x.shape()[0] };
        let mut out = vec![0f32; rows * self.width];
        for r in 0..rows {
            let counts = &mut out[r * self.width..(r + 1) * self.width];
            self.count_row(&items[r * row_len..(r + 1) * row_len], counts);
            self.weigh(counts);
        }
        let mut shape: TVec<usize> = x.shape()[..x.rank() - 1].into();
        shape.push(self.width);
        Ok(tvec!(Tensor::from_shape(&shape, &out)?.into_tvalue()))
    }
}

impl TypedOp for TfIdfVectorizer {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let mut shape: TVec<TDim> = inputs[0].shape.iter().take(inputs[0].rank().saturating_sub(1)).cloned().collect();
        shape.push(self.width.into());
        Ok(tvec!(f32::fact(shape)))
    }
    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(min: usize, max: usize, skip: usize, pool: &[i64], counts: &[i64], indexes: &[i64]) -> TfIdfVectorizer {
        let pool: Vec<Item> = pool.iter().map(|&v| Item::Int(v)).collect();
        let columns = pool_columns(&pool, counts, indexes, min, max).unwrap();
        let width = indexes.iter().map(|&i| i as usize + 1).max().unwrap();
        TfIdfVectorizer { columns: Arc::new(columns), min_gram: min, max_gram: max, max_skip: skip, width, weighting: Weighting::Tf, weights: Arc::new(Vec::new()) }
    }

    fn counts(op: &TfIdfVectorizer, row: &[i64]) -> Vec<f32> {
        let row: Vec<Item> = row.iter().map(|&v| Item::Int(v)).collect();
        let mut out = vec![0.0; op.width];
        op.count_row(&row, &mut out);
        out
    }

    #[test]
    fn unigrams_count_once_however_many_skips() {
        // Pool: unigrams 7, 8; bigram (7, 8).
        let v = op(1, 2, 2, &[7, 8, 7, 8], &[0, 2], &[0, 1, 2]);
        // Bigrams (7,8) at skip 0 (positions 0-1, 2-3) and skip 2 (0-3): 3; 7 and 8 twice each.
        assert_eq!(counts(&v, &[7, 8, 7, 8]), vec![2.0, 2.0, 3.0]);
    }

    #[test]
    fn grams_outside_the_lengths_keep_their_numbers() {
        // Only bigrams counted: the unigram 5 still takes number 0, so (5, 6) goes to indexes[1].
        let v = op(2, 2, 0, &[5, 5, 6], &[0, 1], &[1, 0]);
        assert_eq!(counts(&v, &[5, 6, 5]), vec![1.0, 0.0]);
    }
}
