//! The passes, one file each.

pub mod eliminate_dead_code;
pub mod eliminate_identity;
pub mod find_layers;
pub mod fold_constants;
pub mod fold_shapes;
pub mod fuse_matmul_add;
pub mod infer_shapes;
pub mod lift_constants;
pub mod merge_duplicate_initializers;
pub mod quantize;
pub mod upgrade_opset;
