//! `ai.onnx.ml.TreeEnsemble` (opset 5): each row of `X` walks every tree from its root to a
//! leaf (comparisons `<=`, `<`, `>=`, `>`, `==`, `!=` or set membership on one feature; NaN
//! goes the true way where `nodes_missing_value_tracks_true` says so), and the leaves' weights
//! are summed, averaged, or reduced by min or max per target.

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Aggregate {
    Average,
    Sum,
    Min,
    Max,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Leq(f64),
    Lt(f64),
    Gte(f64),
    Gt(f64),
    Eq(f64),
    Neq(f64),
    Member(Vec<f64>),
}

/// Where a branch goes: another split or a leaf (by index).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Next {
    Split(usize),
    Leaf(usize),
}

#[derive(Debug, Clone, PartialEq)]
struct Split {
    feature: usize,
    test: Test,
    nan_is_true: bool,
    if_true: Next,
    if_false: Next,
}

#[derive(Debug, Clone)]
pub struct TreeEnsemble {
    splits: Arc<Vec<Split>>,
    roots: Vec<Next>,
    leaf_targets: Vec<usize>,
    leaf_weights: Vec<f64>,
    targets: usize,
    aggregate: Aggregate,
}

impl PartialEq for TreeEnsemble {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.splits, &other.splits)
    }
}
impl Eq for TreeEnsemble {}

impl std::hash::Hash for TreeEnsemble {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (self.splits.len(), self.targets, self.aggregate).hash(state);
    }
}

pub fn build_tree_ensemble(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let tensor = |name: &str| -> TractResult<Option<Vec<f64>>> {
        match node.get_attr_opt::<&tract_onnx::pb::TensorProto>(name)? {
            Some(proto) => Ok(Some(ctx.load_tensor(proto)?.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect())),
            None => Ok(None),
        }
    };
    let ints = |name: &str| -> TractResult<Vec<i64>> { Ok(node.get_attr_opt_vec::<i64>(name)?.unwrap_or_default()) };
    let index = |v: i64, what: &str| usize::try_from(v).map_err(|_| format_err!("TreeEnsemble: negative {what} {v}"));
    let post = node.get_attr_opt::<i64>("post_transform")?.unwrap_or(0);
    ensure!(post == 0, "TreeEnsemble: post_transform {post} is not supported (only NONE)");
    let aggregate = match node.get_attr_opt::<i64>("aggregate_function")?.unwrap_or(1) {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        2 => Aggregate::Min,
        3 => Aggregate::Max,
        other => bail!("TreeEnsemble: unknown aggregate_function {other}"),
    };
    let thresholds = tensor("nodes_splits")?.context("TreeEnsemble: nodes_splits is required")?;
    let modes = tensor("nodes_modes")?.context("TreeEnsemble: nodes_modes is required")?;
    let features = ints("nodes_featureids")?;
    let (true_ids, false_ids) = (ints("nodes_truenodeids")?, ints("nodes_falsenodeids")?);
    let (true_leafs, false_leafs) = (ints("nodes_trueleafs")?, ints("nodes_falseleafs")?);
    let missing = ints("nodes_missing_value_tracks_true")?;
    let members = tensor("membership_values")?.unwrap_or_default();
    let count = thresholds.len();
    ensure!([modes.len(), features.len(), true_ids.len(), false_ids.len(), true_leafs.len(), false_leafs.len()].iter().all(|&n| n == count), "TreeEnsemble: the nodes_* attributes differ in length");
    // Membership sets follow each other in membership_values, each ended by a NaN, in node order.
    let mut sets = members.split(|v| v.is_nan()).map(<[f64]>::to_vec);
    let next = |id: i64, leaf: i64| -> TractResult<Next> { Ok(if leaf != 0 { Next::Leaf(index(id, "leaf id")?) } else { Next::Split(index(id, "node id")?) }) };
    let mut splits = Vec::with_capacity(count);
    for i in 0..count {
        let t = thresholds[i];
        let test = match modes[i] as i64 {
            0 => Test::Leq(t),
            1 => Test::Lt(t),
            2 => Test::Gte(t),
            3 => Test::Gt(t),
            4 => Test::Eq(t),
            5 => Test::Neq(t),
            6 => Test::Member(sets.next().context("TreeEnsemble: fewer membership sets than membership nodes")?),
            other => bail!("TreeEnsemble: unknown node mode {other}"),
        };
        splits.push(Split {
            feature: index(features[i], "feature id")?,
            test,
            nan_is_true: missing.get(i).is_some_and(|&m| m != 0),
            if_true: next(true_ids[i], true_leafs[i])?,
            if_false: next(false_ids[i], false_leafs[i])?,
        });
    }
    // A root whose both branches are the same leaf is that leaf.
    let roots = ints("tree_roots")?
        .into_iter()
        .map(|r| {
            let r = index(r, "tree root")?;
            let s = splits.get(r).with_context(|| format!("TreeEnsemble: tree root {r} is not a node"))?;
            Ok(if s.if_true == s.if_false && matches!(s.if_true, Next::Leaf(_)) { s.if_true } else { Next::Split(r) })
        })
        .collect::<TractResult<_>>()?;
    let leaf_targets = ints("leaf_targetids")?.into_iter().map(|t| index(t, "target id")).collect::<TractResult<Vec<_>>>()?;
    let leaf_weights = tensor("leaf_weights")?.context("TreeEnsemble: leaf_weights is required")?;
    ensure!(leaf_targets.len() == leaf_weights.len(), "TreeEnsemble: {} leaf targets for {} weights", leaf_targets.len(), leaf_weights.len());
    let targets = index(node.get_attr_opt::<i64>("n_targets")?.context("TreeEnsemble: n_targets is required")?, "n_targets")?;
    ensure!(leaf_targets.iter().all(|&t| t < targets), "TreeEnsemble: a leaf target is not below n_targets {targets}");
    Ok((expand(TreeEnsembleNode(TreeEnsemble { splits: Arc::new(splits), roots, leaf_targets, leaf_weights, targets, aggregate })), vec![]))
}

impl TreeEnsemble {
    /// The leaf a row reaches from `start`.
    fn leaf(&self, row: &[f64], start: Next) -> TractResult<usize> {
        let mut at = start;
        for _ in 0..=self.splits.len() {
            let s = match at {
                Next::Leaf(l) => return Ok(l),
                Next::Split(i) => self.splits.get(i).with_context(|| format!("TreeEnsemble: node {i} does not exist"))?,
            };
            let x = *row.get(s.feature).with_context(|| format!("TreeEnsemble: feature {} of a row of {}", s.feature, row.len()))?;
            let holds = match &s.test {
                Test::Leq(t) => x <= *t,
                Test::Lt(t) => x < *t,
                Test::Gte(t) => x >= *t,
                Test::Gt(t) => x > *t,
                Test::Eq(t) => x == *t,
                Test::Neq(t) => x != *t,
                Test::Member(set) => set.contains(&x),
            } || (s.nan_is_true && x.is_nan());
            at = if holds { s.if_true } else { s.if_false };
        }
        bail!("TreeEnsemble: a tree has a cycle")
    }

    /// One row's targets; `largest` is the largest finite value of the output type, where a
    /// min (max) of no leaves starts.
    fn predict(&self, row: &[f64], out: &mut [f64], largest: f64) -> TractResult<()> {
        let start = match self.aggregate {
            Aggregate::Average | Aggregate::Sum => 0.0,
            Aggregate::Min => largest,
            Aggregate::Max => -largest,
        };
        out.fill(start);
        for &root in &self.roots {
            let leaf = self.leaf(row, root)?;
            let (target, weight) = (*self.leaf_targets.get(leaf).context("TreeEnsemble: leaf out of range")?, self.leaf_weights[leaf]);
            let slot = &mut out[target];
            *slot = match self.aggregate {
                Aggregate::Sum => *slot + weight,
                Aggregate::Average => *slot + weight / self.roots.len() as f64,
                Aggregate::Min => slot.min(weight),
                Aggregate::Max => slot.max(weight),
            };
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct TreeEnsembleNode(TreeEnsemble);

impl Expansion for TreeEnsembleNode {
    fn name(&self) -> StaticName {
        "TreeEnsemble".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(&'s self, s: &mut Solver<'r>, inputs: &'p [TensorProxy], outputs: &'p [TensorProxy]) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], TDim::from(self.0.targets))
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        model.wire_node(prefix, self.0.clone(), inputs)
    }
}

impl Op for TreeEnsemble {
    fn name(&self) -> StaticName {
        "TreeEnsemble".into()
    }
    op_as_typed_op!();
}

impl EvalOp for TreeEnsemble {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = args_1!(inputs);
        ensure!(x.rank() == 2, "TreeEnsemble: X must be [N, features], got {:?}", x.shape());
        let (rows, width) = (x.shape()[0], x.shape()[1]);
        let values: Vec<f64> = x.cast_to::<f64>()?.to_plain_array_view::<f64>()?.iter().copied().collect();
        let largest = match x.datum_type() {
            DatumType::F64 => f64::MAX,
            DatumType::F16 => half::f16::MAX.to_f64(),
            _ => f32::MAX as f64,
        };
        let mut out = vec![0f64; rows * self.targets];
        for r in 0..rows {
            self.predict(&values[r * width..(r + 1) * width], &mut out[r * self.targets..(r + 1) * self.targets], largest)?;
        }
        let out = Tensor::from_shape(&[rows, self.targets], &out)?.cast_to_dt(x.datum_type())?.into_owned();
        Ok(tvec!(out.into_tvalue()))
    }
}

impl TypedOp for TreeEnsemble {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(tvec![inputs[0].shape[0].clone(), self.targets.into()])))
    }
    as_op!();
}
