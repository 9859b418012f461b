//! Token pruning inserted into the graph: from block `layer` on, the transformer runs on the
//! kept share of the tokens, chosen at run time from the previous block's attention.
//!
//! - `attention` (encoders): a token's score is the attention it receives in block `layer - 1`,
//!   averaged over heads and real query rows.
//! - `fastv` (decoders, prefill): the attention the last token pays it in block `layer - 1`,
//!   averaged over heads (FastV).
//! - `adaptive` (ZipVL): scored as `attention` (or as `score` says); per row, the fewest
//!   best-scored tokens that hold the `tau` share of the span's attention mass stay.
//! - `pool` (LLaVolta): the span `[protect_first, S - protect_last)` of padded positions
//!   averaged in windows of `stride` tokens (no scores).
//! - `tome` (ToMe): in every block from `layer` on, `r` tokens merged into their most similar
//!   partners (see [`crate::tokens::tome`]); outputs are unmerged (every position reads the
//!   token holding it) or left merged.
//!
//! Per batch row, the `ratio` share of the row's span (its real tokens but the first
//! `protect_first` and last `protect_last`) with the lowest scores goes; the rest keep their
//! order, and everything the pruned blocks read from before the cut (masks, position-derived
//! tensors, rotary tables) is gathered at the kept positions, so positions are the original
//! ones. Outputs computed from the pruned blocks are scattered back to the full length
//! (`output=scatter`: pruned tokens read zero, or their state at the cut with `fill=carry`) or
//! left short (`output=gather`, with a `kept_token_positions` output saying which tokens they
//! are). Present key/value outputs of the later blocks stay short, and a decode graph pruned
//! with the same options reads them (see [`crate::tokens::cache`]).

use crate::analysis::{LinearLayers, TransformerBlocks};
use crate::pass::{OptionError, Pass, PassCtx, PassDef, PassError, PassKind, PassOutcome};
use crate::tokens::cache::{Caches, caches, positions_name, read_kept_caches};
use crate::tokens::emit::Emitter;
use crate::tokens::fused::{FusedAttention, kept_lengths, prompt_only};
use crate::tokens::{
    KeepCount, Scoring, Selection, TokenCut, block_middle, block_output, carries_length, downstream, gather_tokens, gather_value, has_fused_residuals, is_constant, pool_tokens, positions_output,
    renamed, scatter_tokens, select_kept, shape_with_axis, spread_tokens, token_axes, tome,
};
use compactor_ir::{Anchor, AttrValue, DataType, Dim, Graph, NodeId, PValue, Patch, Tensor, ValueId};
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenMethod {
    /// Attention received, averaged over heads and real queries (encoders).
    Attention,
    /// The last token's attention, averaged over heads (FastV, decoder prefill).
    Fastv,
    /// ZipVL: per row, the fewest best-scored tokens holding `tau` of the attention mass (scored as `attention`, or as set by `score`).
    Adaptive,
    /// LLaVolta: the span averaged in windows of `stride` tokens (no scores).
    Pool,
    /// ToMe: in every block from `layer` on, `r` tokens merged into their most similar partners (keys' cosine), with proportional attention.
    Tome,
}

/// What a token's score is, from the attention probabilities of the block before the cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TokenScore {
    /// The method's own: attention received for `attention` and `adaptive`, the last query's for `fastv`.
    Auto,
    /// Attention received, averaged over heads and real query rows.
    Received,
    /// The last query row's attention, averaged over heads.
    LastQuery,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum OutputMode {
    /// The last block's output gets its full length back: kept tokens at their positions, merged or pooled ones reading their token.
    Scatter,
    /// Outputs have the kept tokens only; an extra output gives their positions.
    Gather,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Fill {
    /// Pruned tokens read zero in the restored output.
    Zero,
    /// Pruned tokens read their hidden state at the cut.
    Carry,
}

#[derive(Clone, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PruneTokens {
    /// attention (encoders), fastv (decoder prefill), adaptive (ZipVL's mass-based count), pool (LLaVolta) or tome (token merging).
    pub method: TokenMethod,
    /// The first block (0-based) that sees fewer tokens (its predecessor's attention scores them); for tome, the first block that merges.
    pub layer: usize,
    /// The share of each row's span removed (attention, fastv).
    pub ratio: f64,
    /// The share of the span's attention mass the kept tokens hold (adaptive).
    pub tau: f64,
    /// Tokens per pooling window (pool).
    pub stride: usize,
    /// Tokens merged per block (tome).
    pub r: usize,
    /// How tokens are scored: auto (the method's own), received or last-query.
    pub score: TokenScore,
    /// Real tokens at the start of each row that are always kept (e.g. [CLS], BOS); for pool, positions before the pooled span.
    pub protect_first: usize,
    /// Real tokens at the end of each row that are always kept (e.g. [SEP], the prompt's tail); for pool, positions after the pooled span.
    pub protect_last: usize,
    /// The graph input holding the attention mask (nonzero: a real token); when the model has no such input every token is real.
    pub mask: String,
    /// scatter: outputs keep the original length; gather: outputs hold the kept tokens, with their positions as an extra output.
    pub output: OutputMode,
    /// What pruned tokens read in scattered outputs: zero, or carry (their state at the cut).
    pub fill: Fill,
}

impl Default for PruneTokens {
    fn default() -> Self {
        PruneTokens {
            method: TokenMethod::Attention,
            layer: 2,
            ratio: 0.5,
            tau: 0.9,
            stride: 2,
            r: 8,
            score: TokenScore::Auto,
            protect_first: 1,
            protect_last: 1,
            mask: "attention_mask".into(),
            output: OutputMode::Scatter,
            fill: Fill::Zero,
        }
    }
}

/// The extra output of `output=gather`.
pub const KEPT_POSITIONS: &str = "kept_token_positions";

impl PassDef for PruneTokens {
    const NAME: &'static str = "prune-tokens";
    const SUMMARY: &'static str = "Insert run-time token pruning: from a chosen block on, the transformer runs on the best-scored share of the tokens (attention received, FastV, or ZipVL's adaptive count); a decode graph pruned alike reads the prompt graph's shortened key/value caches";
    const KIND: PassKind = PassKind::Transform;

    fn validate(&self) -> Result<(), OptionError> {
        if !(0.0..1.0).contains(&self.ratio) {
            return Err(OptionError::new("ratio", format!("{} is not a share in [0, 1)", self.ratio)));
        }
        if !(self.tau > 0.0 && self.tau <= 1.0) {
            return Err(OptionError::new("tau", format!("{} is not a share in (0, 1]", self.tau)));
        }
        if self.stride < 2 {
            return Err(OptionError::new("stride", "must be at least 2"));
        }
        if self.layer == 0 && matches!(self.method, TokenMethod::Attention | TokenMethod::Fastv | TokenMethod::Adaptive) {
            return Err(OptionError::new("layer", "must be at least 1: the block before it scores the tokens"));
        }
        Ok(())
    }
}

impl Pass for PruneTokens {
    fn run(&self, graph: &mut Graph, ctx: &mut PassCtx<'_, '_>) -> Result<PassOutcome, PassError> {
        let name = Self::NAME;
        let opset = ctx.opset("").unwrap_or(0);
        if opset < 13 {
            return Err(PassError::failed(name, "model", format!("opset {opset}: token pruning emits opset-13 ops; run upgrade-opset(target=13) first")));
        }
        ctx.infer_shapes(graph);
        let blocks = ctx.analyses.get::<TransformerBlocks>(graph);
        let layers = ctx.analyses.get::<LinearLayers>(graph);
        let location = format!("block {}", self.layer);
        let fused = blocks.get(self.layer).is_some_and(has_fused_residuals);
        if fused && (self.method == TokenMethod::Tome || self.fill == Fill::Carry) {
            let what = if self.method == TokenMethod::Tome { "method=tome (it merges between attention and FFN and scales attention logits)" } else { "fill=carry" };
            return Err(PassError::failed(name, location, format!("the block adds its residuals inside fused norms, which {what} needs as separate ops")));
        }
        let later = Caches::joined(&caches(graph, &layers, blocks.get(self.layer..).unwrap_or_default()));
        let mask = graph.main().inputs.iter().copied().find(|&v| graph.value(v).name == self.mask);
        if self.method == TokenMethod::Tome {
            if !later.past.is_empty() || !later.present.is_empty() {
                return Err(PassError::failed(name, location, "the blocks keep key/value caches; ToMe merges tokens differently in every block, which no cache layout follows"));
            }
            return self.merge_tokens(graph, &blocks, &layers, mask, opset);
        }
        if !later.past.is_empty() {
            // A decode graph: the pruned prompt graph's kept caches are read, nothing is scored.
            let mask = mask.ok_or_else(|| {
                PassError::failed(name, format!("input '{}'", self.mask), "a decode graph's kept caches are read through its attention mask, and the model has no such input (option mask)")
            })?;
            let report = read_kept_caches(graph, &layers, &blocks, self.layer, mask, opset).map_err(|(at, why)| PassError::failed(name, at, why))?;
            return Ok(PassOutcome::changed(format!(
                "decode: blocks {} on read key/value caches of the kept tokens ({} values gathered at their positions, read from '{}')",
                self.layer,
                report.gathered.len(),
                report.positions_input
            ))
            .with_details(report));
        }
        let scored = self.method != TokenMethod::Pool;
        let cut = TokenCut::find(graph, &layers, &blocks, self.layer).map_err(|e| PassError::failed(name, location.clone(), e))?;
        // Where the scoring block's attention probabilities come from.
        let probs = if scored {
            let scorer = &blocks[self.layer - 1].attention;
            Some(if scorer.softmax == scorer.context {
                Probs::Fused(FusedAttention::of(graph, scorer.context).map_err(|e| PassError::failed(name, format!("block {}", self.layer - 1), e))?)
            } else {
                Probs::Softmax(graph.node(scorer.softmax).output(0).ok_or_else(|| PassError::failed(name, location.clone(), "the scoring Softmax has no output"))?)
            })
        } else {
            None
        };
        if let Some(m) = mask {
            let dims = graph.value(m).ty.as_ref().and_then(|t| t.shape()).map(|s| s.dims.clone());
            if !matches!(dims.as_deref(), Some([_, d]) if *d == cut.seq) {
                return Err(PassError::failed(name, format!("input '{}'", self.mask), format!("the mask must be [batch, {}] (the hidden state's sequence length)", cut.seq)));
            }
        }
        let hidden_batch = cut.batch(graph);

        let mut patch = Patch::new();
        let label = format!("prune_tokens_{}", self.layer);
        let mut e = Emitter::new(&mut patch, Graph::MAIN, Anchor::Before(cut.first), &label, opset);
        // The hidden state reduced, the position each remaining token stands at, and (pooling)
        // each original position's pooled token and the averaging matrix.
        let mut pooling = None;
        let (hidden, kept, window_of) = match &probs {
            Some(source) => {
                let scoring = match (self.score, self.method) {
                    (TokenScore::Received, _) | (TokenScore::Auto, TokenMethod::Attention | TokenMethod::Adaptive | TokenMethod::Pool | TokenMethod::Tome) => Scoring::Received,
                    (TokenScore::LastQuery, _) | (TokenScore::Auto, TokenMethod::Fastv) => Scoring::LastQuery,
                };
                let count = match self.method {
                    TokenMethod::Adaptive => KeepCount::Mass(self.tau),
                    _ => KeepCount::Ratio(self.ratio),
                };
                let probs = match source {
                    Probs::Softmax(v) => (*v).into(),
                    Probs::Fused(attention) => attention.probs(&mut e, scoring),
                };
                let selection = Selection { probs, hidden: cut.hidden, mask, scoring, count, protect_first: self.protect_first, protect_last: self.protect_last };
                let kept = select_kept(&mut e, &selection);
                (gather_tokens(&mut e, cut.hidden.into(), 3, false, &[1], kept), kept, None)
            }
            None => {
                let (pooled, representative, window_of, averaging) = pool_tokens(&mut e, cut.hidden.into(), mask, self.stride, self.protect_first, self.protect_last);
                pooling = Some(averaging);
                (pooled, representative, Some(window_of))
            }
        };

        // Every crossing value with a sequence axis, gathered.
        for c in cut.reduced_crossings() {
            // The residual stream's other half (fused norms) is averaged as the hidden state is.
            let g = match pooling {
                Some(averaging) if Some(c.value) == cut.stream_partner => e.op("MatMul", &[averaging, c.value.into()], &[]),
                _ => gather_value(&mut e, graph, c.value, hidden_batch.as_ref(), &c.token_axes, kept),
            };
            for &(node, input) in &c.readers {
                e.patch.set_input(node, input, Some(g));
            }
        }
        // Fused attention after the cut reads the kept tokens' lengths.
        let mut lengths: HashMap<(ValueId, ValueId), (PValue, PValue)> = HashMap::new();
        for &node in &cut.fused_attention {
            let n = graph.node(node);
            let (Some(seqlens), Some(total)) = (n.input(5), n.input(6)) else {
                return Err(PassError::failed(name, n.label(node), "GroupQueryAttention without seqlens_k or total_sequence_length"));
            };
            prompt_only(n).map_err(|e| PassError::failed(name, n.label(node), e))?;
            let (new_seqlens, new_total) = *lengths.entry((seqlens, total)).or_insert_with(|| kept_lengths(&mut e, graph, seqlens, total, kept));
            e.patch.set_input(node, 5, Some(new_seqlens));
            e.patch.set_input(node, 6, Some(new_total));
        }
        let uses = graph.uses();
        for u in uses.of(cut.hidden) {
            if let compactor_ir::Use::Node { node, input } = *u
                && cut.region.contains(&node)
            {
                e.patch.set_input(node, input as usize, Some(hidden));
            }
        }

        let restore = match window_of {
            Some(window_of) => Restore::Spread { window_of, hidden: cut.hidden },
            None => Restore::Scatter { fill: self.fill, kept, hidden: cut.hidden },
        };
        let (outputs_done, restored) = self.finish_outputs(&mut e, graph, &blocks, &layers, &cut.produced, &cut.seq, "kept", restore)?;
        if self.output == OutputMode::Gather {
            positions_output(&mut e, &label, KEPT_POSITIONS, kept, hidden_batch.clone(), Dim::Sym(short_symbol(&cut.seq, "kept")));
        }
        // The later blocks' present keys/values hold the kept tokens: a decode graph pruned
        // alike reads them with their positions.
        let cache_positions = (!later.present.is_empty()).then(|| positions_name(graph, &later.present));
        if let Some(positions) = &cache_positions {
            positions_output(&mut e, &label, positions, kept, hidden_batch.clone(), Dim::Sym(short_symbol(&cut.seq, "kept")));
        }
        graph.apply(patch).map_err(|err| PassError::patch(name, err))?;
        #[derive(Serialize)]
        struct Details {
            layer: usize,
            /// The hidden state at the cut and the attention probabilities that score it.
            hidden: String,
            probs: Option<String>,
            /// Values computed before the cut, read after it, gathered along these axes.
            gathered: Vec<crate::tokens::GatheredValue>,
            /// Outputs computed from the reduced tokens; the value given its full length back.
            outputs: Vec<String>,
            restored: Option<String>,
            /// The later blocks' present keys/values (kept tokens only) and their positions' output.
            caches: Vec<String>,
            cache_positions: Option<String>,
        }
        let details = Details {
            layer: self.layer,
            hidden: graph.value(cut.hidden).name.clone(),
            probs: probs.as_ref().map(|p| match p {
                Probs::Softmax(v) => graph.value(*v).name.clone(),
                Probs::Fused(_) => format!("recomputed from block {}'s GroupQueryAttention inputs", self.layer - 1),
            }),
            gathered: cut.gathered(graph),
            outputs: outputs_done,
            restored,
            caches: later.present.iter().map(|&v| graph.value(v).name.clone()).collect(),
            cache_positions,
        };
        Ok(PassOutcome::changed(format!(
            "tokens pruned from block {} on ({:?}, {}): {} values gathered besides the hidden state, {} outputs {}",
            self.layer,
            self.method,
            match self.method {
                TokenMethod::Adaptive => format!("tau {}", self.tau),
                TokenMethod::Pool => format!("stride {}", self.stride),
                _ => format!("ratio {}", self.ratio),
            },
            details.gathered.len(),
            details.outputs.len(),
            match self.output {
                OutputMode::Scatter => "scattered back",
                OutputMode::Gather => "shortened",
            }
        ))
        .with_details(details))
    }
}

/// The scoring block's attention probabilities: its Softmax's output, or recomputed from a
/// fused attention op's inputs.
enum Probs {
    Softmax(ValueId),
    Fused(FusedAttention),
}

/// How `output=scatter` gives the last block's output its full length back.
enum Restore {
    /// The kept tokens at their positions; the others zero or their state at the cut.
    Scatter { fill: Fill, kept: PValue, hidden: ValueId },
    /// Every position reads its window's pooled token.
    Spread { window_of: PValue, hidden: ValueId },
    /// Every position reads the token holding it.
    Unmerge { holder: PValue },
}

/// The reduced length's symbol: `seq_kept` for a symbolic `seq`, else `tokens_kept`.
fn short_symbol(seq: &Dim, what: &str) -> String {
    match seq {
        Dim::Sym(s) => format!("{s}_{what}"),
        _ => format!("tokens_{what}"),
    }
}

/// The key projection's head size, when the reshape splitting its output into heads has a
/// constant last size: `[.., heads, d]` (keys are averaged over heads for ToMe's metric).
fn key_heads(graph: &Graph, uses: &compactor_ir::UseMap, layers: &LinearLayers, block: &crate::analysis::TransformerBlock) -> usize {
    let k = &layers[block.attention.k];
    let mut frontier = vec![k.output];
    for _ in 0..4 {
        let mut next = Vec::new();
        for v in frontier {
            for n in uses.consumers(v) {
                let node = graph.node(n);
                if node.is("Reshape") {
                    let last = node.input(1).and_then(|s| last_constant(graph, s));
                    return match last {
                        Some(d) if d > 0 && k.out_features.is_multiple_of(d as u64) => (k.out_features / d as u64) as usize,
                        _ => 1,
                    };
                }
                if ["Add", "Mul", "Cast"].contains(&node.op_type.as_str()) {
                    next.extend(node.outputs.iter().flatten().copied());
                }
            }
        }
        frontier = next;
    }
    1
}

/// The last element of a shape value: a constant, or a Concat ending in one.
fn last_constant(graph: &Graph, v: ValueId) -> Option<i64> {
    if let Some(t) = graph.constant(v) {
        return t.to_i64().ok()?.last().copied();
    }
    let (n, _) = graph.producer(v)?;
    let node = graph.node(n);
    if node.is("Concat") { last_constant(graph, *node.inputs.last()?.as_ref()?) } else { None }
}

impl PruneTokens {
    /// Types and outputs after the reduction. Values computed from the reduced tokens lose
    /// their types (inference gives them again). `output=scatter` gives the last block's output
    /// its full length back (so a head after it, and every output computed from it, sees every
    /// position); outputs computed from the reduced tokens otherwise stay short, their types
    /// saying so.
    #[allow(clippy::too_many_arguments)]
    fn finish_outputs(
        &self,
        e: &mut Emitter<'_>,
        graph: &Graph,
        blocks: &[crate::analysis::TransformerBlock],
        layers: &LinearLayers,
        reduced: &HashSet<ValueId>,
        seq: &Dim,
        what: &str,
        restore: Restore,
    ) -> Result<(Vec<String>, Option<String>), PassError> {
        let name = Self::NAME;
        let outputs = &graph.main().outputs;
        let mut restored = None;
        for &v in reduced {
            if graph.value(v).ty.is_some() && !outputs.contains(&v) && graph.producer(v).is_some() {
                e.patch.set_type(v, None);
            }
        }
        let mut full_again = HashSet::new();
        let mut done = Vec::new();
        if self.output == OutputMode::Scatter {
            let last = blocks.last().expect("a block was reduced");
            let at = block_output(graph, layers, last).filter(|v| reduced.contains(v)).ok_or_else(|| PassError::failed(name, format!("block {}", blocks.len() - 1), "its output was not found"))?;
            let at_name = graph.value(at).name.clone();
            let ty = graph.value(at).ty.clone();
            if ty.as_ref().and_then(|t| t.shape()).is_none_or(|s| s.rank() != 3) {
                return Err(PassError::failed(name, format!("value '{at_name}'"), "the last block's output must be [batch, sequence, hidden]; use output=gather"));
            }
            // Right after the output is made: before its first reader, if any.
            let uses = graph.uses();
            let readers = uses.consumers(at);
            e.anchor = graph.all_nodes().into_iter().find(|n| readers.contains(n)).map_or(Anchor::End(Graph::MAIN), Anchor::Before);
            let full = match restore {
                Restore::Unmerge { holder } => gather_tokens(e, at.into(), 3, false, &[1], holder),
                Restore::Spread { window_of, hidden } => {
                    let length = e.dims(hidden.into(), 1, 2);
                    spread_tokens(e, at.into(), 3, 1, window_of, length)
                }
                Restore::Scatter { fill, kept, hidden } => {
                    let base = match fill {
                        Fill::Carry => {
                            if ty.as_ref().and_then(|t| t.shape()).map(|s| s.dims[2].clone()) != graph.value(hidden).ty.as_ref().and_then(|t| t.shape()).map(|s| s.dims[2].clone()) {
                                return Err(PassError::failed(name, format!("value '{at_name}'"), "fill=carry needs the last block's output as wide as the hidden state at the cut; use fill=zero"));
                            }
                            hidden.into()
                        }
                        Fill::Zero => {
                            // Zeros [B, S, C]: the reduced output's shape with the original length.
                            let length = e.dims(hidden.into(), 1, 2);
                            let shape = shape_with_axis(e, at.into(), 3, 1, Some(length));
                            let zero = Tensor::from_f32(&[1], &[0.0]).map_err(|err| PassError::ir(name, err))?;
                            let zeros = e.op("ConstantOfShape", &[shape], &[("value", AttrValue::Tensor(zero))]);
                            let elem = ty.as_ref().and_then(|t| t.elem()).unwrap_or(DataType::Float);
                            if elem == DataType::Float { zeros } else { e.cast(zeros, elem) }
                        }
                    };
                    scatter_tokens(e, base, at.into(), 3, 1, kept)
                }
            };
            e.patch.replace_uses(at, full);
            e.patch.rename(PValue::Existing(at), graph.fresh_name(&format!("{at_name}_{what}")));
            e.patch.rename(full, at_name.clone());
            // The restored value takes the name and type the reduced one had.
            e.patch.set_type(at, None);
            e.patch.set_type(full, ty);
            if outputs.contains(&at) {
                done.push(at_name.clone());
            }
            restored = Some(at_name);
            full_again = downstream(graph, &uses, at).1;
            full_again.remove(&at);
        }
        for &o in outputs.iter().filter(|o| reduced.contains(o) && !full_again.contains(o)) {
            if token_axes(graph, o, seq).is_empty() {
                continue;
            }
            if let Some(ty) = graph.value(o).ty.as_ref()
                && !(self.output == OutputMode::Scatter && done.contains(&graph.value(o).name))
            {
                e.patch.set_type(o, Some(renamed(ty, seq, &short_symbol(seq, what))));
            }
            if !done.contains(&graph.value(o).name) {
                done.push(graph.value(o).name.clone());
            }
        }
        Ok((done, restored))
    }

    /// ToMe: a merge in every block from `layer` on (see [`crate::tokens::tome`]).
    fn merge_tokens(&self, graph: &mut Graph, blocks: &[crate::analysis::TransformerBlock], layers: &LinearLayers, mask: Option<ValueId>, opset: i64) -> Result<PassOutcome, PassError> {
        let name = Self::NAME;
        let merging = &blocks[self.layer.min(blocks.len())..];
        if merging.is_empty() {
            return Err(PassError::failed(name, format!("block {}", self.layer), format!("the model has {} transformer blocks", blocks.len())));
        }
        let uses = graph.uses();
        let mut middles = Vec::new();
        for (i, b) in merging.iter().enumerate() {
            let at = format!("block {}", self.layer + i);
            if b.attention.softmax == b.attention.context {
                return Err(PassError::failed(name, at, "its attention is one fused op; proportional attention needs its logits (a Softmax)"));
            }
            let middle = block_middle(graph, layers, b).ok_or_else(|| PassError::failed(name, at.clone(), "the hidden state between its attention and its FFN was not found"))?;
            middles.push(middle);
        }
        let seq = match graph.value(middles[0]).ty.as_ref().and_then(|t| t.shape()).map(|s| s.dims.clone()).as_deref() {
            Some([_, d @ Dim::Sym(_), _]) => d.clone(),
            Some([_, Dim::Known(n), _]) if *n > 1 => Dim::Known(*n),
            _ => return Err(PassError::failed(name, format!("block {}", self.layer), "the hidden state must be [batch, sequence, hidden]")),
        };
        if let Some(m) = mask
            && !matches!(graph.value(m).ty.as_ref().and_then(|t| t.shape()).map(|s| s.dims.clone()).as_deref(), Some([_, d]) if *d == seq)
        {
            return Err(PassError::failed(name, format!("input '{}'", self.mask), format!("the mask must be [batch, {seq}] (the hidden state's sequence length)")));
        }
        // Segment i: computed from block i's middle but not from block i+1's.
        let reach: Vec<(HashSet<NodeId>, HashSet<ValueId>)> = middles.iter().map(|&m| downstream(graph, &uses, m)).collect();
        let order = graph.all_nodes();
        let segment_of = |n: NodeId| reach.iter().rposition(|(nodes, _)| nodes.contains(&n));
        let hidden_batch = graph.value(middles[0]).ty.as_ref().and_then(|t| t.shape()).map(|s| s.dims[0].clone());

        let mut patch = Patch::new();
        let label = format!("merge_tokens_{}", self.layer);
        let first_node = |i: usize| order.iter().copied().find(|n| segment_of(*n) == Some(i));
        let start = first_node(0).ok_or_else(|| PassError::failed(name, "model", "the merging blocks are read by no node"))?;
        let mut e = Emitter::new(&mut patch, Graph::MAIN, Anchor::Before(start), &label, opset);
        let mut state = tome::initial_state(&mut e, middles[0].into(), mask, self.protect_first, self.protect_last);
        let mut states = Vec::new();
        let mut gathered: HashMap<(ValueId, usize), PValue> = HashMap::new();
        let mut gathered_names = Vec::new();
        let mut heads = Vec::new();
        for (i, b) in merging.iter().enumerate() {
            if let Some(n) = first_node(i) {
                e.anchor = Anchor::Before(n);
            }
            let keys = layers[b.attention.k].output;
            heads.push(key_heads(graph, &uses, layers, b));
            let (x, next) = tome::merge(&mut e, middles[i].into(), keys.into(), heads[i], self.r, &state);
            state = next;
            states.push(state);
            let log_size = tome::log_size(&mut e, state.size);
            // Segment i's nodes read the merged tokens, values from before the first merge at
            // the tokens' representative positions, and nothing else of earlier segments.
            for &n in order.iter().filter(|&&n| segment_of(n) == Some(i)) {
                for (k, v) in graph.node(n).inputs.iter().enumerate() {
                    let Some(v) = *v else { continue };
                    if v == middles[i] {
                        e.patch.set_input(n, k, Some(x));
                        continue;
                    }
                    if reach[i].1.contains(&v) || is_constant(graph, v) {
                        continue;
                    }
                    let axes = token_axes(graph, v, &seq);
                    if reach[0].1.contains(&v) {
                        // From an earlier segment: its length is stale.
                        if !axes.is_empty() || carries_length(graph, v, &seq) {
                            return Err(PassError::failed(name, format!("block {}", self.layer + i), format!("'{}' is computed before the block's merge and read after it", graph.value(v).name)));
                        }
                        continue;
                    }
                    if axes.is_empty() {
                        if carries_length(graph, v, &seq) {
                            return Err(PassError::failed(name, format!("value '{}'", graph.value(v).name), "is computed from the sequence length; the merged blocks would read the unmerged length"));
                        }
                        continue;
                    }
                    let g = match gathered.get(&(v, i)) {
                        Some(&g) => g,
                        None => {
                            let g = gather_value(&mut e, graph, v, hidden_batch.as_ref(), &axes, state.representative);
                            gathered.insert((v, i), g);
                            let value_name = graph.value(v).name.clone();
                            if !gathered_names.contains(&value_name) {
                                gathered_names.push(value_name);
                            }
                            g
                        }
                    };
                    e.patch.set_input(n, k, Some(g));
                }
            }
            // The next block's attention weighs each token by its size.
            if let Some(next_block) = merging.get(i + 1) {
                let softmax = next_block.attention.softmax;
                let logits = graph.node(softmax).input(0).expect("a Softmax has an input");
                let anchor = std::mem::replace(&mut e.anchor, Anchor::Before(softmax));
                let weighed = e.op("Add", &[logits.into(), log_size], &[]);
                e.anchor = anchor;
                e.patch.set_input(softmax, 0, Some(weighed));
            }
        }
        let last = *states.last().expect("at least one merge");
        let (outputs_done, restored) = self.finish_outputs(&mut e, graph, blocks, layers, &reach[0].1, &seq, "merged", Restore::Unmerge { holder: last.holder })?;
        if self.output == OutputMode::Gather {
            positions_output(&mut e, &label, KEPT_POSITIONS, last.representative, hidden_batch, Dim::Sym(short_symbol(&seq, "merged")));
        }
        graph.apply(patch).map_err(|err| PassError::patch(name, err))?;
        #[derive(Serialize)]
        struct Details {
            layer: usize,
            r: usize,
            /// Per merging block: where it merges, the keys its similarity comes from, their heads.
            middles: Vec<String>,
            keys: Vec<String>,
            heads: Vec<usize>,
            /// Values from before the first merge read after it, gathered at representative positions.
            gathered: Vec<String>,
            outputs: Vec<String>,
            restored: Option<String>,
        }
        let details = Details {
            layer: self.layer,
            r: self.r,
            middles: middles.iter().map(|&m| graph.value(m).name.clone()).collect(),
            keys: merging.iter().map(|b| graph.value(layers[b.attention.k].output).name.clone()).collect(),
            heads: heads.clone(),
            gathered: gathered_names,
            outputs: outputs_done.clone(),
            restored,
        };
        Ok(PassOutcome::changed(format!(
            "tokens merged (ToMe, r={}) in {} blocks from block {} on; {} outputs {}",
            self.r,
            merging.len(),
            self.layer,
            outputs_done.len(),
            match self.output {
                OutputMode::Scatter => "unmerged",
                OutputMode::Gather => "left merged",
            }
        ))
        .with_details(details))
    }
}
