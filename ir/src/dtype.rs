//! ONNX element types.

use std::fmt;

/// Every element type of `TensorProto.DataType` (onnx 1.22, IR version 13).
///
/// The discriminants are the ONNX codes, so `dtype as i32` is what goes into a proto.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(i32)]
pub enum DataType {
    Undefined = 0,
    Float = 1,
    Uint8 = 2,
    Int8 = 3,
    Uint16 = 4,
    Int16 = 5,
    Int32 = 6,
    Int64 = 7,
    String = 8,
    Bool = 9,
    Float16 = 10,
    Double = 11,
    Uint32 = 12,
    Uint64 = 13,
    Complex64 = 14,
    Complex128 = 15,
    Bfloat16 = 16,
    Float8E4M3FN = 17,
    Float8E4M3FNUZ = 18,
    Float8E5M2 = 19,
    Float8E5M2FNUZ = 20,
    Uint4 = 21,
    Int4 = 22,
    Float4E2M1 = 23,
    Float8E8M0 = 24,
    Uint2 = 25,
    Int2 = 26,
}

/// How the elements of a type are laid out in `raw_data`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Fixed width of this many bits; sub-byte widths (4, 2) are packed low bits first.
    Bits(u32),
    /// Strings: variable length, only in `string_data`.
    Variable,
    /// `Undefined`: no layout.
    None,
}

impl DataType {
    pub const ALL: [DataType; 27] = [
        Self::Undefined,
        Self::Float,
        Self::Uint8,
        Self::Int8,
        Self::Uint16,
        Self::Int16,
        Self::Int32,
        Self::Int64,
        Self::String,
        Self::Bool,
        Self::Float16,
        Self::Double,
        Self::Uint32,
        Self::Uint64,
        Self::Complex64,
        Self::Complex128,
        Self::Bfloat16,
        Self::Float8E4M3FN,
        Self::Float8E4M3FNUZ,
        Self::Float8E5M2,
        Self::Float8E5M2FNUZ,
        Self::Uint4,
        Self::Int4,
        Self::Float4E2M1,
        Self::Float8E8M0,
        Self::Uint2,
        Self::Int2,
    ];

    /// The type with ONNX code `code`, or `None` for a code this ONNX version does not define.
    pub fn from_code(code: i32) -> Option<Self> {
        usize::try_from(code).ok().and_then(|i| Self::ALL.get(i).copied())
    }

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn layout(self) -> Layout {
        use DataType::*;
        match self {
            Undefined => Layout::None,
            String => Layout::Variable,
            Uint2 | Int2 => Layout::Bits(2),
            Uint4 | Int4 | Float4E2M1 => Layout::Bits(4),
            Uint8 | Int8 | Bool | Float8E4M3FN | Float8E4M3FNUZ | Float8E5M2 | Float8E5M2FNUZ | Float8E8M0 => Layout::Bits(8),
            Uint16 | Int16 | Float16 | Bfloat16 => Layout::Bits(16),
            Float | Int32 | Uint32 => Layout::Bits(32),
            Double | Int64 | Uint64 | Complex64 => Layout::Bits(64),
            Complex128 => Layout::Bits(128),
        }
    }

    /// Width of one element in bits, for fixed-width types.
    pub fn bit_width(self) -> Option<u32> {
        match self.layout() {
            Layout::Bits(b) => Some(b),
            _ => None,
        }
    }

    /// Bytes `count` elements take in `raw_data` (sub-byte types packed, rounded up).
    pub fn storage_bytes(self, count: u64) -> Option<u64> {
        Some(count.checked_mul(self.bit_width()? as u64)?.div_ceil(8))
    }

    pub fn is_float(self) -> bool {
        use DataType::*;
        matches!(self, Float | Double | Float16 | Bfloat16 | Float8E4M3FN | Float8E4M3FNUZ | Float8E5M2 | Float8E5M2FNUZ | Float8E8M0 | Float4E2M1)
    }

    pub fn is_integer(self) -> bool {
        use DataType::*;
        matches!(self, Uint8 | Int8 | Uint16 | Int16 | Int32 | Int64 | Uint32 | Uint64 | Uint4 | Int4 | Uint2 | Int2)
    }

    /// The short name used in the text form and in reports (`f32`, `i4`, `f8e4m3fn`, ...).
    pub fn short_name(self) -> &'static str {
        use DataType::*;
        match self {
            Undefined => "undef",
            Float => "f32",
            Uint8 => "u8",
            Int8 => "i8",
            Uint16 => "u16",
            Int16 => "i16",
            Int32 => "i32",
            Int64 => "i64",
            String => "str",
            Bool => "bool",
            Float16 => "f16",
            Double => "f64",
            Uint32 => "u32",
            Uint64 => "u64",
            Complex64 => "c64",
            Complex128 => "c128",
            Bfloat16 => "bf16",
            Float8E4M3FN => "f8e4m3fn",
            Float8E4M3FNUZ => "f8e4m3fnuz",
            Float8E5M2 => "f8e5m2",
            Float8E5M2FNUZ => "f8e5m2fnuz",
            Uint4 => "u4",
            Int4 => "i4",
            Float4E2M1 => "f4e2m1",
            Float8E8M0 => "f8e8m0",
            Uint2 => "u2",
            Int2 => "i2",
        }
    }

    /// The ONNX spelling (`FLOAT`, `INT4`, ...).
    pub fn onnx_name(self) -> &'static str {
        use DataType::*;
        match self {
            Undefined => "UNDEFINED",
            Float => "FLOAT",
            Uint8 => "UINT8",
            Int8 => "INT8",
            Uint16 => "UINT16",
            Int16 => "INT16",
            Int32 => "INT32",
            Int64 => "INT64",
            String => "STRING",
            Bool => "BOOL",
            Float16 => "FLOAT16",
            Double => "DOUBLE",
            Uint32 => "UINT32",
            Uint64 => "UINT64",
            Complex64 => "COMPLEX64",
            Complex128 => "COMPLEX128",
            Bfloat16 => "BFLOAT16",
            Float8E4M3FN => "FLOAT8E4M3FN",
            Float8E4M3FNUZ => "FLOAT8E4M3FNUZ",
            Float8E5M2 => "FLOAT8E5M2",
            Float8E5M2FNUZ => "FLOAT8E5M2FNUZ",
            Uint4 => "UINT4",
            Int4 => "INT4",
            Float4E2M1 => "FLOAT4E2M1",
            Float8E8M0 => "FLOAT8E8M0",
            Uint2 => "UINT2",
            Int2 => "INT2",
        }
    }

    /// Parses a short name (`f32`) or an ONNX name (`FLOAT`, any case).
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.short_name() == name || t.onnx_name().eq_ignore_ascii_case(name))
    }
}

impl serde::Serialize for DataType {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.short_name())
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_unknown_codes_are_rejected() {
        for (i, t) in DataType::ALL.iter().enumerate() {
            assert_eq!(t.code(), i as i32);
            assert_eq!(DataType::from_code(i as i32), Some(*t));
            assert_eq!(DataType::parse(t.short_name()), Some(*t));
            assert_eq!(DataType::parse(t.onnx_name()), Some(*t));
        }
        assert_eq!(DataType::from_code(27), None);
        assert_eq!(DataType::from_code(-1), None);
    }

    #[test]
    fn packed_storage_sizes() {
        assert_eq!(DataType::Int4.storage_bytes(5), Some(3));
        assert_eq!(DataType::Uint2.storage_bytes(5), Some(2));
        assert_eq!(DataType::Float.storage_bytes(5), Some(20));
        assert_eq!(DataType::Complex128.storage_bytes(2), Some(32));
        assert_eq!(DataType::String.storage_bytes(2), None);
    }
}
