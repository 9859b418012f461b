//! Tensors at the session boundary: a tract [`Tensor`] plus the ONNX element type it stands for.
//!
//! tract has no 4- and 2-bit integers, bfloat16 or float8 types. Values of those types travel
//! widened (INT4/INT2 as i8, UINT4/UINT2 as u8, BF16/FP8/FP4 as f32) and keep their ONNX type
//! alongside, so callers still see what the graph declared.

use crate::error::RuntimeError;
use compactor_ir::{DataType, Tensor as IrTensor};
use std::sync::Arc;
use tract_onnx::prelude::tract_ndarray::{ArrayD, ArrayViewD, IxDyn};
use tract_onnx::prelude::{Datum, DatumType, TValue, Tensor};

/// Cloning one shares the tensor (a decoder's KV cache goes in and out of every step without
/// a copy).
#[derive(Clone, Debug)]
pub struct TensorValue {
    tensor: Arc<Tensor>,
    onnx_type: DataType,
}

impl TensorValue {
    /// Wraps a tract tensor; its ONNX type is the natural one for its datum type.
    pub fn from_tract(tensor: Tensor) -> Result<Self, RuntimeError> {
        Self::from_shared(Arc::new(tensor))
    }

    /// Wraps a shared tract tensor (a plan's output) without copying it.
    pub fn from_shared(tensor: Arc<Tensor>) -> Result<Self, RuntimeError> {
        let onnx_type =
            onnx_type_of(tensor.datum_type()).ok_or_else(|| RuntimeError::Tensor { name: String::new(), reason: format!("tract type {:?} has no ONNX equivalent", tensor.datum_type()) })?;
        Ok(TensorValue { tensor, onnx_type })
    }

    /// A tensor standing for ONNX type `onnx_type`, stored as `tensor` (which must be the type's
    /// carrier in tract: see [`carrier_type`]).
    pub fn with_onnx_type(tensor: Tensor, onnx_type: DataType) -> Result<Self, RuntimeError> {
        Self::shared_with_onnx_type(Arc::new(tensor), onnx_type)
    }

    /// [`Self::with_onnx_type`] for a shared tensor, without copying it.
    pub fn shared_with_onnx_type(tensor: Arc<Tensor>, onnx_type: DataType) -> Result<Self, RuntimeError> {
        let want = carrier_type(onnx_type).ok_or_else(|| unsupported("", onnx_type))?;
        if tensor.datum_type() != want {
            return Err(RuntimeError::Tensor { name: String::new(), reason: format!("{onnx_type} travels as {want:?}, got {:?}", tensor.datum_type()) });
        }
        Ok(TensorValue { tensor, onnx_type })
    }

    pub fn from_f32(shape: &[usize], data: &[f32]) -> Result<Self, RuntimeError> {
        Self::from_slice(shape, data)
    }

    pub fn from_i64(shape: &[usize], data: &[i64]) -> Result<Self, RuntimeError> {
        Self::from_slice(shape, data)
    }

    pub fn from_slice<T: Datum + Copy>(shape: &[usize], data: &[T]) -> Result<Self, RuntimeError> {
        let tensor = Tensor::from_shape(shape, data).map_err(|e| RuntimeError::Tensor { name: String::new(), reason: format!("{e}") })?;
        Self::from_tract(tensor)
    }

    pub fn from_array<T: Datum>(array: ArrayD<T>) -> Result<Self, RuntimeError> {
        Self::from_tract(Tensor::from(array))
    }

    /// Decodes an IR tensor (an initializer or a test `.pb`), widening the types tract lacks.
    pub fn from_ir(t: &IrTensor) -> Result<Self, RuntimeError> {
        let name = t.proto_name().unwrap_or("<unnamed>").to_string();
        let shape: Vec<usize> = t.dims().iter().map(|&d| d as usize).collect();
        let fail = |e: String| RuntimeError::Tensor { name: name.clone(), reason: e };
        let dtype = t.dtype();
        let carrier = carrier_type(dtype).ok_or_else(|| unsupported(&name, dtype))?;
        let tensor = match dtype {
            DataType::String => {
                let strings: Vec<String> = t.strings()?.iter().map(|s| String::from_utf8_lossy(s).into_owned()).collect();
                Tensor::from(ArrayD::from_shape_vec(IxDyn(&shape), strings).map_err(|e| fail(e.to_string()))?)
            }
            DataType::Float16 => {
                let raw = t.raw_data()?;
                let values: Vec<half::f16> = raw.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]])).collect();
                Tensor::from_shape(&shape, &values).map_err(|e| fail(e.to_string()))?
            }
            DataType::Float
            | DataType::Double
            | DataType::Bfloat16
            | DataType::Float8E4M3FN
            | DataType::Float8E4M3FNUZ
            | DataType::Float8E5M2
            | DataType::Float8E5M2FNUZ
            | DataType::Float8E8M0
            | DataType::Float4E2M1 => {
                if dtype == DataType::Double {
                    let raw = t.raw_data()?;
                    let values: Vec<f64> = raw.chunks_exact(8).map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
                    Tensor::from_shape(&shape, &values).map_err(|e| fail(e.to_string()))?
                } else {
                    Tensor::from_shape(&shape, &t.to_f32()?).map_err(|e| fail(e.to_string()))?
                }
            }
            _ => {
                let values = t.to_i64()?;
                let wide = Tensor::from_shape(&shape, &values).map_err(|e| fail(e.to_string()))?;
                if carrier == DatumType::I64 {
                    wide
                } else if carrier == DatumType::U64 {
                    let v: Vec<u64> = values.iter().map(|&x| x as u64).collect();
                    Tensor::from_shape(&shape, &v).map_err(|e| fail(e.to_string()))?
                } else {
                    wide.cast_to_dt(carrier).map_err(|e| fail(e.to_string()))?.into_owned()
                }
            }
        };
        Ok(TensorValue { tensor: Arc::new(tensor), onnx_type: dtype })
    }

    /// The value as an IR tensor of its ONNX type (the inverse of [`Self::from_ir`]): bytes as
    /// they are for the types tract holds natively, narrowed back for 4-/2-bit integers and
    /// bfloat16 (exact: they were widened from those types). FP8/FP4 are refused.
    pub fn to_ir(&self) -> Result<IrTensor, RuntimeError> {
        let dims: Vec<u64> = self.shape().iter().map(|&d| d as u64).collect();
        let fail = |reason: std::string::String| RuntimeError::Tensor { name: "<value>".into(), reason };
        let dtype = self.onnx_type;
        use DataType::*;
        let raw: Vec<u8> = match dtype {
            String => {
                let strings = self.strings().ok_or_else(|| fail("string value without strings".into()))?;
                let proto = compactor_ir::proto::TensorProto {
                    dims: dims.iter().map(|&d| d as i64).collect(),
                    data_type: Some(String.code()),
                    string_data: strings.into_iter().map(|s| s.into_bytes().into()).collect(),
                    ..Default::default()
                };
                return IrTensor::from_proto(proto, None).map_err(RuntimeError::from);
            }
            d if tract_native(d) => self.tensor.as_bytes().to_vec(),
            Int4 | Uint4 => compactor_ir::tensor::pack_nibbles(&self.carrier_bytes()?),
            Int2 | Uint2 => compactor_ir::tensor::pack_crumbs(&self.carrier_bytes()?),
            Bfloat16 => self.to_f32()?.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
            other => return Err(fail(format!("cannot convert a {other} value back to a tensor"))),
        };
        IrTensor::from_raw(dtype, &dims, raw.into()).map_err(RuntimeError::from)
    }

    /// The bytes of an 8-bit carrier (i8/u8) holding sub-byte values.
    fn carrier_bytes(&self) -> Result<Vec<u8>, RuntimeError> {
        match self.tensor.datum_type() {
            DatumType::I8 | DatumType::U8 => Ok(self.tensor.as_bytes().to_vec()),
            other => Err(RuntimeError::Tensor { name: "<value>".into(), reason: format!("a {} value is carried as {other:?}", self.onnx_type) }),
        }
    }

    /// The ONNX element type this value stands for.
    pub fn dtype(&self) -> DataType {
        self.onnx_type
    }

    pub fn shape(&self) -> &[usize] {
        self.tensor.shape()
    }

    pub fn len(&self) -> usize {
        self.tensor.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensor.len() == 0
    }

    pub fn tract(&self) -> &Tensor {
        &self.tensor
    }

    /// The tensor as a tract value, shared (no copy).
    pub fn tvalue(&self) -> TValue {
        TValue::from_const(self.tensor.clone())
    }

    pub fn into_tract(self) -> Tensor {
        Arc::try_unwrap(self.tensor).unwrap_or_else(|shared| (*shared).clone())
    }

    /// A zero-copy f32 view when the value is stored as f32.
    pub fn as_f32(&self) -> Option<ArrayViewD<'_, f32>> {
        if self.tensor.datum_type() == DatumType::F32 { self.tensor.to_plain_array_view::<f32>().ok() } else { None }
    }

    /// The values as f32 (any numeric or bool type).
    pub fn to_f32(&self) -> Result<ArrayD<f32>, RuntimeError> {
        if let Some(view) = self.as_f32() {
            return Ok(view.to_owned());
        }
        let cast = self.tensor.cast_to_dt(DatumType::F32).map_err(|e| RuntimeError::Tensor { name: String::new(), reason: format!("{} cannot be read as f32: {e}", self.onnx_type) })?;
        cast.to_plain_array_view::<f32>().map(|v| v.to_owned()).map_err(|e| RuntimeError::Tensor { name: String::new(), reason: e.to_string() })
    }

    /// The values as f64, flattened in row-major order (for comparisons).
    pub fn to_f64_vec(&self) -> Result<Vec<f64>, RuntimeError> {
        let cast = self.tensor.cast_to_dt(DatumType::F64).map_err(|e| RuntimeError::Tensor { name: String::new(), reason: format!("{} cannot be read as numbers: {e}", self.onnx_type) })?;
        let view = cast.to_plain_array_view::<f64>().map_err(|e| RuntimeError::Tensor { name: String::new(), reason: e.to_string() })?;
        Ok(view.iter().copied().collect())
    }

    /// Strings of a string tensor.
    pub fn strings(&self) -> Option<Vec<String>> {
        self.tensor.to_plain_array_view::<String>().ok().map(|v| v.iter().cloned().collect())
    }

    /// A copy with the same values stored as `dtype`'s carrier (numeric casts only).
    pub fn cast_to(&self, dtype: DataType) -> Result<TensorValue, RuntimeError> {
        let carrier = carrier_type(dtype).ok_or_else(|| unsupported("", dtype))?;
        let tensor = self.tensor.cast_to_dt(carrier).map_err(|e| RuntimeError::Tensor { name: String::new(), reason: format!("cannot cast {} to {dtype}: {e}", self.onnx_type) })?.into_owned();
        Ok(TensorValue { tensor: Arc::new(tensor), onnx_type: dtype })
    }
}

impl From<TensorValue> for Tensor {
    fn from(v: TensorValue) -> Tensor {
        v.into_tract()
    }
}

fn unsupported(name: &str, dtype: DataType) -> RuntimeError {
    RuntimeError::Tensor { name: name.to_string(), reason: format!("element type {dtype} is not supported by the runtime") }
}

/// The tract type a value of ONNX type `dtype` travels as (`None`: not supported at all).
pub fn carrier_type(dtype: DataType) -> Option<DatumType> {
    use DataType::*;
    Some(match dtype {
        Float | Bfloat16 | Float8E4M3FN | Float8E4M3FNUZ | Float8E5M2 | Float8E5M2FNUZ | Float8E8M0 | Float4E2M1 => DatumType::F32,
        Double => DatumType::F64,
        Float16 => DatumType::F16,
        Int8 | Int4 | Int2 => DatumType::I8,
        Uint8 | Uint4 | Uint2 => DatumType::U8,
        Int16 => DatumType::I16,
        Uint16 => DatumType::U16,
        Int32 => DatumType::I32,
        Uint32 => DatumType::U32,
        Int64 => DatumType::I64,
        Uint64 => DatumType::U64,
        Bool => DatumType::Bool,
        String => DatumType::String,
        Complex64 | Complex128 | Undefined => return None,
    })
}

/// The ONNX type a tract datum type naturally maps to.
pub fn onnx_type_of(dt: DatumType) -> Option<DataType> {
    Some(match dt {
        DatumType::F32 => DataType::Float,
        DatumType::F64 => DataType::Double,
        DatumType::F16 => DataType::Float16,
        DatumType::I8 => DataType::Int8,
        DatumType::U8 => DataType::Uint8,
        DatumType::I16 => DataType::Int16,
        DatumType::U16 => DataType::Uint16,
        DatumType::I32 => DataType::Int32,
        DatumType::U32 => DataType::Uint32,
        DatumType::I64 => DataType::Int64,
        DatumType::U64 => DataType::Uint64,
        DatumType::Bool => DataType::Bool,
        DatumType::String => DataType::String,
        _ => return None,
    })
}

/// True for ONNX types tract can hold natively (no widening needed).
pub fn tract_native(dtype: DataType) -> bool {
    use DataType::*;
    matches!(dtype, Float | Double | Float16 | Int8 | Uint8 | Int16 | Uint16 | Int32 | Uint32 | Int64 | Uint64 | Bool | String)
}

/// A value at the session boundary or between the interpreter's nodes: a tensor, a sequence of
/// tensors, or an optional (present or empty).
#[derive(Clone, Debug)]
pub enum RuntimeValue {
    Tensor(TensorValue),
    Sequence(Vec<TensorValue>),
    Optional(Option<Box<RuntimeValue>>),
}

impl RuntimeValue {
    /// The tensor, when the value is one (or an optional holding one).
    pub fn as_tensor(&self) -> Option<&TensorValue> {
        match self {
            RuntimeValue::Tensor(t) => Some(t),
            RuntimeValue::Optional(Some(inner)) => inner.as_tensor(),
            _ => None,
        }
    }

    /// What kind of value this is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeValue::Tensor(_) => "a tensor",
            RuntimeValue::Sequence(_) => "a sequence",
            RuntimeValue::Optional(Some(_)) => "an optional with a value",
            RuntimeValue::Optional(None) => "an empty optional",
        }
    }
}

impl From<TensorValue> for RuntimeValue {
    fn from(t: TensorValue) -> Self {
        RuntimeValue::Tensor(t)
    }
}
