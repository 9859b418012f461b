//! The key/value caches of the blocks that see fewer tokens, for generation.
//!
//! A pruned prompt graph (no past inputs) leaves the present key/value outputs of its later
//! blocks short and outputs the original positions of the tokens they hold,
//! `<prefix>kept_token_positions` `[batch, kept]` (`<prefix>`: what the cache outputs' names
//! start with, e.g. `present.`). A decode graph (past key/value inputs) pruned at the same block
//! reads those caches: it takes the positions as an input (`past_key_values.kept_token_positions`
//! beside `past_key_values.0.key`), appends its new tokens' positions (the attention mask's last
//! columns) and outputs them beside its presents, so a generation loop that feeds each present
//! output back as the past input of the same name carries them along. Everything the later
//! blocks read along the keys' axis (the attention mask, as a bias or as it is) is gathered at
//! those positions; fused attention's `seqlens_k` and `total_sequence_length` count the kept
//! tokens. New tokens keep the position ids they are given: the original positions.

use super::emit::Emitter;
use super::{GatheredValue, TokenCut, dims, gather_value, is_group_query_attention, positions_output, renamed};
use crate::analysis::{LinearLayers, TransformerBlock};
use compactor_ir::{Anchor, AttrValue, DataType, Dim, Graph, PValue, Patch, Shape, ValueDef, ValueId, ValueType};
use serde::Serialize;
use std::collections::{HashMap, HashSet};

/// What the kept positions are called beside caches named like `present.0.key`.
const POSITIONS: &str = "kept_token_positions";

/// Blocks' key/value caches: the past inputs they read and their present values that are graph
/// outputs.
#[derive(Default)]
pub(crate) struct Caches {
    pub past: Vec<ValueId>,
    pub present: Vec<ValueId>,
}

impl Caches {
    /// The caches of several blocks together.
    pub(crate) fn joined(all: &[Caches]) -> Caches {
        Caches { past: all.iter().flat_map(|c| c.past.iter().copied()).collect(), present: all.iter().flat_map(|c| c.present.iter().copied()).collect() }
    }
}

/// Each block's cache. Fused attention: the op's past inputs and present outputs. Plain
/// attention: on the paths from the key and value projections to the attention's MatMuls, the
/// rank-3+ graph inputs read (past keys/values concatenated in front) and the graph outputs.
pub(crate) fn caches(graph: &Graph, layers: &LinearLayers, blocks: &[TransformerBlock]) -> Vec<Caches> {
    let outputs: HashSet<ValueId> = graph.main().outputs.iter().copied().collect();
    let uses = graph.uses();
    let mut all = Vec::new();
    for block in blocks {
        let mut caches = Caches::default();
        let attention = &block.attention;
        let node = graph.node(attention.context);
        if is_group_query_attention(node) {
            caches.past.extend([3, 4].into_iter().filter_map(|i| node.input(i)));
            caches.present.extend([1, 2].into_iter().filter_map(|i| node.output(i)).filter(|v| outputs.contains(v)));
            all.push(caches);
            continue;
        }
        let mut seen = HashSet::new();
        let mut work = vec![layers[attention.k].output, layers[attention.v].output];
        while let Some(v) = work.pop() {
            if !seen.insert(v) {
                continue;
            }
            if outputs.contains(&v) {
                caches.present.push(v);
            }
            for n in uses.consumers(v) {
                let reader = graph.node(n);
                if reader.is("MatMul") || n == attention.softmax {
                    continue;
                }
                for &i in reader.inputs.iter().flatten() {
                    let rank = dims(graph, i).map_or(0, |d| d.len());
                    if graph.value(i).def == ValueDef::Input && rank >= 3 && !caches.past.contains(&i) {
                        caches.past.push(i);
                    }
                }
                work.extend(reader.outputs.iter().flatten().copied());
            }
        }
        caches.past.sort();
        caches.present.sort();
        all.push(caches);
    }
    all
}

/// The kept positions' name beside the caches `values`: their names' common prefix up to its
/// first digit, cut after its last `.` or `_` (`present.0.key`, `present.1.value`: `present.`),
/// followed by `kept_token_positions`.
pub(crate) fn positions_name(graph: &Graph, values: &[ValueId]) -> String {
    name_beside(&values.iter().map(|&v| graph.value(v).name.as_str()).collect::<Vec<_>>())
}

fn name_beside(names: &[&str]) -> String {
    let Some(first) = names.first() else { return POSITIONS.into() };
    let mut common = first.len();
    for n in &names[1..] {
        common = common.min(first.bytes().zip(n.bytes()).take_while(|(a, b)| a == b).count());
    }
    let prefix = &first[..common];
    let prefix = &prefix[..prefix.find(|c: char| c.is_ascii_digit()).unwrap_or(prefix.len())];
    let prefix = &prefix[..prefix.rfind(['.', '_']).map_or(0, |i| i + 1)];
    format!("{prefix}{POSITIONS}")
}

/// What the decode rewrite did, for the pass's report.
#[derive(Serialize)]
pub(crate) struct DecodeReport {
    pub layer: usize,
    /// The hidden state entering the first block with kept caches.
    pub hidden: String,
    /// The kept positions read (past) and written (with the new tokens').
    pub positions_input: String,
    pub positions_output: String,
    /// Values computed before the cut, read after it, gathered along these (key) axes.
    pub gathered: Vec<GatheredValue>,
    /// The past inputs of the blocks with kept caches.
    pub past: Vec<String>,
}

/// Rewrites a decode graph so that blocks `layer..` read caches holding the kept tokens only
/// (see the module documentation). Errors: (where, why).
pub(crate) fn read_kept_caches(graph: &mut Graph, layers: &LinearLayers, blocks: &[TransformerBlock], layer: usize, mask: ValueId, opset: i64) -> Result<DecodeReport, (String, String)> {
    let at = format!("block {layer}");
    let later = blocks.get(layer..).filter(|b| !b.is_empty()).ok_or_else(|| (at.clone(), format!("the model has {} transformer blocks", blocks.len())))?;
    let mask_name = graph.value(mask).name.clone();
    let (batch, keys) = match dims(graph, mask).as_deref() {
        Some([b, k @ Dim::Sym(_)]) => (b.clone(), k.clone()),
        _ => return Err((format!("input '{mask_name}'"), "the mask must be [batch, total length] with a symbolic total length".into())),
    };
    let cut = TokenCut::find_along(graph, layers, blocks, layer, Some(&keys)).map_err(|e| (at.clone(), e))?;
    if cut.seq == keys {
        return Err((format!("input '{mask_name}'"), "the mask is as long as the new tokens; a decode graph's mask covers the past tokens too".into()));
    }
    let per_block = caches(graph, layers, later);
    if let Some(i) = per_block.iter().position(|c| c.past.is_empty()) {
        return Err((format!("block {}", layer + i), "it reads no past key/value while other blocks after the cut do".into()));
    }
    let cache = Caches::joined(&per_block);
    let past_length = dims(graph, cache.past[0])
        .and_then(|d| d.into_iter().find(|d| matches!(d, Dim::Sym(_)) && *d != batch))
        .ok_or_else(|| (format!("input '{}'", graph.value(cache.past[0]).name), "the past key/value has no symbolic length".to_string()))?;
    let (kept_past, kept_total) = (format!("{past_length}_kept"), format!("{keys}_kept"));

    let mut patch = Patch::new();
    let label = format!("kept_cache_{layer}");
    let mut e = Emitter::new(&mut patch, Graph::MAIN, Anchor::Before(cut.first), &label, opset);
    let positions_input = positions_name(graph, &cache.past);
    let past_positions = e.patch.new_input(Graph::MAIN, &positions_input, Some(ValueType::tensor(DataType::Int64, Some(Shape::new(vec![batch.clone(), Dim::Sym(kept_past.clone())])))));
    // The new tokens stand at the mask's last columns.
    let total = e.dims(mask.into(), 1, 2);
    let new = e.dims(cut.hidden.into(), 1, 2);
    let start = e.op("Sub", &[total, new], &[]);
    let (start, end, step) = (e.squeeze(start, &[0]), e.squeeze(total, &[0]), e.i64_scalar(1));
    let range = e.op("Range", &[start, end, step], &[]);
    let range = e.unsqueeze(range, &[0]);
    let rows = e.dims(cut.hidden.into(), 0, 1);
    let shape = e.op("Concat", &[rows, new], &[("axis", AttrValue::Int(0))]);
    let new_positions = e.op("Expand", &[range, shape], &[]);
    let positions = e.op("Concat", &[past_positions, new_positions], &[("axis", AttrValue::Int(1))]);

    let batch_of_hidden = cut.batch(graph);
    for c in cut.reduced_crossings() {
        let g = gather_value(&mut e, graph, c.value, batch_of_hidden.as_ref(), &c.token_axes, positions);
        for &(node, input) in &c.readers {
            e.patch.set_input(node, input, Some(g));
        }
    }
    let mut lengths: HashMap<ValueId, (PValue, PValue)> = HashMap::new();
    for &node in &cut.fused_attention {
        let n = graph.node(node);
        let Some(total) = n.input(6) else {
            return Err((n.label(node), "GroupQueryAttention without total_sequence_length".into()));
        };
        let (seqlens, total) = *lengths.entry(total).or_insert_with(|| super::fused::cached_lengths(&mut e, graph, mask, total, positions));
        e.patch.set_input(node, 5, Some(seqlens));
        e.patch.set_input(node, 6, Some(total));
    }

    // Types: the kept caches' lengths are their own symbols; values after the cut are typed
    // again by inference.
    let outputs: HashSet<ValueId> = graph.main().outputs.iter().copied().collect();
    for &v in &cut.produced {
        if graph.value(v).ty.is_some() && !outputs.contains(&v) && graph.producer(v).is_some() {
            e.patch.set_type(v, None);
        }
    }
    for &v in &cache.past {
        if let Some(ty) = &graph.value(v).ty {
            e.patch.set_type(v, Some(renamed(ty, &past_length, &kept_past)));
        }
    }
    for &v in &cache.present {
        if let Some(ty) = &graph.value(v).ty {
            e.patch.set_type(v, Some(renamed(ty, &keys, &kept_total)));
        }
    }
    let positions_output_name = positions_name(graph, &cache.present);
    positions_output(&mut e, &label, &positions_output_name, positions, Some(batch), Dim::Sym(kept_total));
    let report = DecodeReport {
        layer,
        hidden: graph.value(cut.hidden).name.clone(),
        positions_input,
        positions_output: positions_output_name,
        gathered: cut.gathered(graph),
        past: cache.past.iter().map(|&v| graph.value(v).name.clone()).collect(),
    };
    graph.apply(patch).map_err(|err| ("model".to_string(), err.to_string()))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::name_beside;

    #[test]
    fn positions_are_named_after_the_caches() {
        assert_eq!(name_beside(&["present.2.key", "present.2.value", "present.3.key"]), "present.kept_token_positions");
        assert_eq!(name_beside(&["past_key_values.2.key", "past_key_values.2.value"]), "past_key_values.kept_token_positions");
        assert_eq!(name_beside(&["present_key_5", "present_value_5"]), "present_kept_token_positions");
        assert_eq!(name_beside(&["k_cache", "v_cache"]), "kept_token_positions");
        assert_eq!(name_beside(&[]), "kept_token_positions");
    }
}
