//! The passes, one file each.

pub mod channel_groups;
pub mod eliminate_dead_code;
pub mod eliminate_identity;
pub mod factorize;
pub mod find_layers;
pub mod fold_constants;
pub mod fold_shapes;
pub mod fuse_matmul_add;
pub mod infer_shapes;
pub mod lift_constants;
pub mod merge_duplicate_initializers;
pub mod micro_expert_scores;
pub mod permute_channels;
pub mod prune_channels;
pub mod prune_micro_experts;
pub mod prune_tokens;
pub mod quantize;
pub mod quantize_micro_experts;
pub mod upgrade_opset;

/// Selected weights of at least this many bytes in all are rewritten streaming: each layer's
/// result goes to a scratch file as soon as it is made and the weight's mapped pages are let
/// go, so memory stays near a few layers' worth whatever the model's size (the output is the
/// same). `COMPACTOR_STREAM_MIN_BYTES` sets it (0: always).
const STREAM_MIN_BYTES: u64 = 1 << 30;

pub(crate) fn stream_min_bytes() -> u64 {
    std::env::var("COMPACTOR_STREAM_MIN_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(STREAM_MIN_BYTES)
}

/// Checks an option's glob patterns.
pub(crate) fn validate_globs(option: &str, patterns: &[String]) -> Result<(), crate::pass::OptionError> {
    for p in patterns {
        glob::Pattern::new(p).map_err(|e| crate::pass::OptionError::new(option, format!("'{p}': {e}")))?;
    }
    Ok(())
}

/// Whether one of the glob `patterns` matches one of `names` (a layer's node and weight names).
pub(crate) fn matches_any(patterns: &[String], names: &[&str]) -> bool {
    patterns.iter().any(|p| glob::Pattern::new(p).is_ok_and(|p| names.iter().any(|n| p.matches(n))))
}

/// Removes a rewritten layer's old weight: the nodes between it and its readers (`chain`), and
/// the constant itself (an initializer, or a Constant node's output, which goes with its node).
pub(crate) fn remove_weight(graph: &compactor_ir::Graph, patch: &mut compactor_ir::Patch, chain: &[compactor_ir::NodeId], weight: compactor_ir::ValueId) {
    for &n in chain {
        patch.remove_node(n);
    }
    match graph.value(weight).def {
        compactor_ir::ValueDef::Node { node, .. } => patch.remove_node(node),
        _ => patch.remove_value(weight),
    }
}
