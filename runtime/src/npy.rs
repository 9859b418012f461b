//! `.npy` files in and out of [`TensorValue`]s, on the `npyz` crate.
//!
//! Values of types `.npy` cannot hold (INT4, BF16, FP8, ...) are written in their carrier type
//! (int8/uint8/float32), which holds them exactly.

use crate::error::RuntimeError;
use crate::value::TensorValue;
use npyz::{TypeChar, WriterBuilder};
use std::path::Path;
use tract_onnx::prelude::{DatumType, Tensor};

fn file_err(path: &Path, reason: impl Into<String>) -> RuntimeError {
    RuntimeError::File { path: path.to_path_buf(), reason: reason.into() }
}

/// Reads a C-order `.npy` of a bool, integer or float type.
pub fn read_npy(path: &Path) -> Result<TensorValue, RuntimeError> {
    let bytes = std::fs::read(path).map_err(|e| RuntimeError::Io { path: path.to_path_buf(), source: e })?;
    read_npy_bytes(&bytes).map_err(|reason| file_err(path, reason))
}

fn read_npy_bytes(bytes: &[u8]) -> Result<TensorValue, String> {
    let npy = npyz::NpyFile::new(bytes).map_err(|e| format!("not a .npy file: {e}"))?;
    if npy.order() == npyz::Order::Fortran {
        return Err("Fortran-order arrays are not supported; save with np.ascontiguousarray".into());
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let npyz::DType::Plain(ts) = npy.dtype() else {
        return Err(format!("structured dtype {:?} is not supported", npy.dtype().descr()));
    };
    let size = ts.size_field();
    macro_rules! read_as {
        ($t:ty) => {{
            let data: Vec<$t> = npy.into_vec::<$t>().map_err(|e| format!("bad data: {e}"))?;
            Tensor::from_shape(&shape, &data).map_err(|e| e.to_string())?
        }};
    }
    let tensor = match (ts.type_char(), size) {
        (TypeChar::Float, 4) => read_as!(f32),
        (TypeChar::Float, 8) => read_as!(f64),
        (TypeChar::Float, 2) => read_as!(half::f16),
        (TypeChar::Int, 1) => read_as!(i8),
        (TypeChar::Int, 2) => read_as!(i16),
        (TypeChar::Int, 4) => read_as!(i32),
        (TypeChar::Int, 8) => read_as!(i64),
        (TypeChar::Uint, 1) => read_as!(u8),
        (TypeChar::Uint, 2) => read_as!(u16),
        (TypeChar::Uint, 4) => read_as!(u32),
        (TypeChar::Uint, 8) => read_as!(u64),
        (TypeChar::Bool, 1) => read_as!(bool),
        _ => return Err(format!("dtype '{ts}' is not supported (bool, ints, float16/32/64 are)")),
    };
    TensorValue::from_tract(tensor).map_err(|e| e.to_string())
}

/// Writes a value as `.npy` (C order), in its carrier type; atomically, like models.
pub fn write_npy(path: &Path, value: &TensorValue) -> Result<(), RuntimeError> {
    let mut bytes = Vec::new();
    encode_npy(path, value, &mut bytes)?;
    compactor_ir::write_atomically(path, |f| std::io::Write::write_all(f, &bytes)).map_err(|e| RuntimeError::Io { path: path.to_path_buf(), source: e })
}

fn encode_npy(path: &Path, value: &TensorValue, mut out: &mut Vec<u8>) -> Result<(), RuntimeError> {
    let t = value.tract();
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let io = |e: std::io::Error| RuntimeError::Io { path: path.to_path_buf(), source: e };
    macro_rules! write_as {
        ($t:ty) => {{
            let view = t.to_plain_array_view::<$t>().map_err(|e| file_err(path, e.to_string()))?;
            let mut writer = npyz::WriteOptions::<$t>::new().default_dtype().shape(&shape).writer(&mut out).begin_nd().map_err(io)?;
            writer.extend(view.iter().copied()).map_err(io)?;
            writer.finish().map_err(io)?;
        }};
    }
    match t.datum_type() {
        DatumType::F32 => write_as!(f32),
        DatumType::F64 => write_as!(f64),
        DatumType::F16 => write_as!(half::f16),
        DatumType::I8 => write_as!(i8),
        DatumType::I16 => write_as!(i16),
        DatumType::I32 => write_as!(i32),
        DatumType::I64 => write_as!(i64),
        DatumType::U8 => write_as!(u8),
        DatumType::U16 => write_as!(u16),
        DatumType::U32 => write_as!(u32),
        DatumType::U64 => write_as!(u64),
        DatumType::Bool => write_as!(bool),
        other => return Err(file_err(path, format!("cannot write {other:?} values as .npy"))),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_type_shape_and_values() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.npy");
        let v = TensorValue::from_slice(&[2, 3], &[1i64, -2, 3, 4, 5, 6]).unwrap();
        write_npy(&path, &v).unwrap();
        let back = read_npy(&path).unwrap();
        assert_eq!(back.shape(), &[2, 3]);
        assert_eq!(back.dtype(), compactor_ir::DataType::Int64);
        assert_eq!(back.to_f64_vec().unwrap(), vec![1.0, -2.0, 3.0, 4.0, 5.0, 6.0]);
        let f = TensorValue::from_f32(&[], &[2.5]).unwrap();
        write_npy(&path, &f).unwrap();
        assert_eq!(read_npy(&path).unwrap().to_f64_vec().unwrap(), vec![2.5]);
    }

    #[test]
    fn garbage_is_refused_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.npy");
        std::fs::write(&path, b"not numpy").unwrap();
        let err = read_npy(&path).unwrap_err().to_string();
        assert!(err.contains("bad.npy") && err.contains("not a .npy"), "{err}");
    }
}
