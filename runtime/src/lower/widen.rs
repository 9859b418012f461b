//! Step 4 of lowering: tensors, `Cast`/`output_dtype` targets and declared value types of a type
//! tract lacks are widened to a carrier type it has (INT4/INT2 to INT8, UINT4/UINT2 to UINT8,
//! BF16/FP8/FP4 to FLOAT), in which their values are exact.

use super::{Lowering, label};
use crate::error::RuntimeError;
use crate::value::{carrier_type, tract_native};
use bytes::Bytes;
use compactor_ir::graph::AttrValue;
use compactor_ir::{DataType, NodeId, Tensor, TypeKind, ValueId, ValueType};

impl Lowering {
    /// Step 4a: initializers and tensor attributes of types tract lacks.
    pub(super) fn widen_tensors(&mut self) -> Result<(), RuntimeError> {
        let values: Vec<ValueId> = self.graph().value_ids().collect();
        for v in values {
            let Some(t) = self.graph().value(v).initializer.clone() else { continue };
            if let Some(w) = widen_tensor(&t).map_err(|e| self.err(format!("initializer '{}'", self.graph().value(v).name), e))? {
                self.model.graph.value_mut(v).initializer = Some(w);
                self.report.widened_tensors += 1;
            }
        }
        let nodes: Vec<NodeId> = self.graph().node_ids().collect();
        for id in nodes {
            let lbl = label(self.graph(), id);
            let mut widened = 0;
            let node = self.model.graph.node_mut(id);
            for attr in node.attributes.iter_mut() {
                match &mut attr.value {
                    AttrValue::Tensor(t) => {
                        if let Some(w) = widen_tensor(t).map_err(|e| RuntimeError::Lowering { model: self.name.clone(), node: lbl.clone(), reason: e })? {
                            *t = w;
                            widened += 1;
                        }
                    }
                    AttrValue::Int(code) if attr.name == "to" || attr.name == "output_dtype" => {
                        if let Some(dt) = DataType::from_code(*code as i32)
                            && !tract_native(dt)
                            && carrier_type(dt).is_some()
                        {
                            *code = carrier_code(dt) as i64;
                        }
                    }
                    _ => {}
                }
            }
            self.report.widened_tensors += widened;
        }
        Ok(())
    }

    /// Step 4b: declared value types (inputs, outputs, value_info).
    pub(super) fn widen_value_types(&mut self) {
        let values: Vec<ValueId> = self.graph().value_ids().collect();
        for v in values {
            let value = self.model.graph.value_mut(v);
            if let Some(ty) = &mut value.ty {
                widen_type(ty);
            }
        }
    }
}

pub(super) fn carrier_code(dt: DataType) -> i32 {
    if tract_native(dt) {
        return dt.code();
    }
    use DataType::*;
    match dt {
        Int4 | Int2 => Int8.code(),
        Uint4 | Uint2 => Uint8.code(),
        _ => Float.code(),
    }
}

fn widen_type(ty: &mut ValueType) {
    match &mut ty.kind {
        TypeKind::Tensor { elem, .. } | TypeKind::SparseTensor { elem, .. } => {
            if let Some(dt) = elem
                && !tract_native(*dt)
                && carrier_type(*dt).is_some()
            {
                *elem = DataType::from_code(carrier_code(*dt));
            }
        }
        TypeKind::Sequence(Some(inner)) | TypeKind::Optional(Some(inner)) => widen_type(inner),
        TypeKind::Map { value: Some(inner), .. } => widen_type(inner),
        _ => {}
    }
}

/// The same values in the carrier type, or `None` when the tensor needs no change.
pub(crate) fn widen_tensor(t: &Tensor) -> Result<Option<Tensor>, String> {
    let dt = t.dtype();
    if tract_native(dt) || carrier_type(dt).is_none() {
        return Ok(None);
    }
    let carrier = DataType::from_code(carrier_code(dt)).expect("a carrier is an ONNX type");
    let bytes: Vec<u8> = match carrier {
        DataType::Int8 | DataType::Uint8 => t.to_i64().map_err(|e| e.to_string())?.into_iter().map(|v| v as u8).collect(),
        _ => t.to_f32().map_err(|e| e.to_string())?.into_iter().flat_map(f32::to_le_bytes).collect(),
    };
    let widened = Tensor::from_raw(carrier, t.dims(), Bytes::from(bytes)).map_err(|e| e.to_string())?;
    Ok(Some(widened.with_name(t.proto_name().map(str::to_string))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sub_byte_and_minifloat_tensors_widen_exactly() {
        let t = Tensor::from_raw(DataType::Int4, &[3], Bytes::from(compactor_ir::tensor::pack_nibbles(&[7, 8, 0xF]))).unwrap();
        let w = widen_tensor(&t).unwrap().unwrap();
        assert_eq!(w.dtype(), DataType::Int8);
        assert_eq!(w.to_i64().unwrap(), vec![7, -8, -1]);
        let t = Tensor::from_raw(DataType::Bfloat16, &[1], Bytes::from(half::bf16::from_f32(1.5).to_le_bytes().to_vec())).unwrap();
        assert_eq!(widen_tensor(&t).unwrap().unwrap().to_f32().unwrap(), vec![1.5]);
        assert!(widen_tensor(&Tensor::from_f32(&[1], &[1.0]).unwrap()).unwrap().is_none());
    }
}
