//! `Upsample` (opset 9, deprecated since 10): the opset-10 `Resize`, which it was renamed to,
//! with its nearest rounding made explicit (Upsample takes the floor).

use tract_onnx::model::ParsingContext;
use tract_onnx::pb::{AttributeProto, NodeProto, attribute_proto};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::*;

pub fn build_upsample(ctx: &ParsingContext, node: &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let resize = *ctx.framework.op_register.0.get("Resize").context("Upsample: tract has no Resize")?;
    let mut as_resize = node.clone();
    as_resize.op_type = "Resize".into();
    as_resize.attribute.push(AttributeProto { name: "nearest_mode".into(), r#type: attribute_proto::AttributeType::String as i32, s: b"floor".to_vec(), ..Default::default() });
    let mut opset_10 = ctx.clone();
    opset_10.onnx_operator_set_version = 10;
    resize(&opset_10, &as_resize)
}
