//! Tensors: shared, lazily loaded, zero-copy where the file allows it.
//!
//! A [`Tensor`] keeps the `TensorProto` it was read from (so writing it back loses
//! nothing), with `raw_data` as a slice of the memory-mapped file, or a handle to
//! external data that is mapped on first use. Cloning a tensor is a reference-count
//! increment; data is only copied when converted to another element type.

use crate::dtype::{DataType, Layout};
use crate::error::IrError;
use crate::proto::{StringStringEntryProto, TensorProto};
use crate::types::Shape;
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

struct Inner {
    dtype: DataType,
    dims: Vec<u64>,
    proto: TensorProto,
    external: Option<ExternalSource>,
}

/// Where an external tensor's bytes are.
#[derive(Clone, Debug)]
pub struct ExternalSource {
    /// `location` as written in the model, relative to the model's directory.
    pub location: String,
    pub offset: u64,
    pub length: u64,
    file: Arc<ExternalFile>,
}

impl ExternalSource {
    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// An external data file, mapped once on first use and shared by all its tensors. A scratch
/// file's window (see [`crate::scratch`]) is one tensor's bytes of a pass's scratch file.
#[derive(Debug)]
pub struct ExternalFile {
    path: PathBuf,
    /// Where the mapped part starts in the file (0 but for scratch windows).
    start: u64,
    len: u64,
    map: OnceLock<Result<Bytes, String>>,
    /// Keeps a scratch file alive while tensors read it (deleted with the last one).
    scratch: Option<Arc<tempfile::TempPath>>,
}

impl ExternalFile {
    /// Checks that the file exists now (so a missing file is reported at load time), maps it later.
    pub fn open(path: PathBuf) -> std::io::Result<Self> {
        let len = std::fs::metadata(&path)?.len();
        Ok(ExternalFile { path, start: 0, len, map: OnceLock::new(), scratch: None })
    }

    /// Bytes `[start, start + len)` of a scratch file.
    pub(crate) fn window(path: PathBuf, start: u64, len: u64, keep: Arc<tempfile::TempPath>) -> Self {
        ExternalFile { path, start, len, map: OnceLock::new(), scratch: Some(keep) }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bytes(&self) -> Result<&Bytes, String> {
        self.map
            .get_or_init(|| {
                if self.len == 0 {
                    return Ok(Bytes::new());
                }
                let file = std::fs::File::open(&self.path).map_err(|e| e.to_string())?;
                // SAFETY: the map is read-only; like every mmap-based loader we rely on the
                // file not being truncated while the model is open.
                let map = unsafe { memmap2::MmapOptions::new().offset(self.start).len(self.len as usize).map(&file) }.map_err(|e| e.to_string())?;
                Ok(Bytes::from_owner(map))
            })
            .as_ref()
            .map_err(Clone::clone)
    }
}

fn tensor_err(tensor: &str, reason: impl Into<String>) -> IrError {
    IrError::TensorData { tensor: tensor.to_string(), reason: reason.into() }
}

impl Tensor {
    /// Wraps a `TensorProto` read from a model, checking that its data agrees with its type and dims.
    ///
    /// `external` must be given (resolved by the loader) exactly when the proto says its data is external.
    pub fn from_proto(proto: TensorProto, external: Option<ExternalSource>) -> Result<Self, IrError> {
        let name = proto.name.clone().unwrap_or_default();
        let code = proto.data_type.unwrap_or(0);
        let dtype = DataType::from_code(code).ok_or_else(|| tensor_err(&name, format!("unknown data type {code}")))?;
        let dims = proto.dims.iter().map(|&d| u64::try_from(d).map_err(|_| tensor_err(&name, format!("negative dimension {d} in {:?}", proto.dims)))).collect::<Result<Vec<u64>, _>>()?;
        let tensor = Tensor(Arc::new(Inner { dtype, dims, proto, external }));
        tensor.check_data()?;
        Ok(tensor)
    }

    /// A new tensor from little-endian bytes in ONNX `raw_data` layout.
    pub fn from_raw(dtype: DataType, dims: &[u64], data: Bytes) -> Result<Self, IrError> {
        let proto = TensorProto { dims: dims.iter().map(|&d| d as i64).collect(), data_type: Some(dtype.code()), raw_data: Some(data), ..Default::default() };
        Self::from_proto(proto, None)
    }

    pub fn from_f32(dims: &[u64], values: &[f32]) -> Result<Self, IrError> {
        Self::from_raw(DataType::Float, dims, Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()))
    }

    pub fn from_i64(dims: &[u64], values: &[i64]) -> Result<Self, IrError> {
        Self::from_raw(DataType::Int64, dims, Bytes::from(values.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()))
    }

    /// A scalar or 1-D int64 tensor, as shape-computation constants are.
    pub fn scalar_i64(value: i64) -> Self {
        Self::from_i64(&[], &[value]).expect("a scalar always matches its data")
    }

    /// The same data under another name (used for Constant nodes and new initializers).
    pub fn with_name(&self, name: Option<String>) -> Tensor {
        let mut proto = self.0.proto.clone();
        proto.name = name;
        Tensor(Arc::new(Inner { dtype: self.0.dtype, dims: self.0.dims.clone(), proto, external: self.0.external.clone() }))
    }

    pub fn dtype(&self) -> DataType {
        self.0.dtype
    }

    pub fn dims(&self) -> &[u64] {
        &self.0.dims
    }

    pub fn shape(&self) -> Shape {
        Shape::known(&self.0.dims.iter().map(|&d| d as i64).collect::<Vec<_>>())
    }

    /// Number of elements.
    pub fn len(&self) -> u64 {
        self.0.dims.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The name stored in the proto (for initializers the value's name is authoritative).
    pub fn proto_name(&self) -> Option<&str> {
        self.0.proto.name.as_deref()
    }

    /// Where the data is when it is external data of a model file (not for tensors in a scratch file).
    pub fn external(&self) -> Option<&ExternalSource> {
        self.0.external.as_ref().filter(|e| e.file.scratch.is_none())
    }

    /// The file, byte offset and length of the data when it is read from a file (external data
    /// or a scratch file), so that it can be copied without mapping it.
    pub fn data_in_file(&self) -> Option<(&Path, u64, u64)> {
        self.0.external.as_ref().map(|e| (e.file.path.as_path(), e.file.start + e.offset, e.length))
    }

    /// A tensor whose data is in a scratch file (see [`crate::scratch::ScratchFile::store`]).
    pub(crate) fn in_scratch_file(dtype: DataType, dims: &[u64], source: ExternalSource) -> Result<Self, IrError> {
        let proto = TensorProto { dims: dims.iter().map(|&d| d as i64).collect(), data_type: Some(dtype.code()), ..Default::default() };
        Self::from_proto(proto, Some(source))
    }

    /// Lets the kernel drop this tensor's pages from the process when its data is mapped from a
    /// file (they are read from the page cache or the file again if touched later). A pass that
    /// streams a model larger than memory calls it after it is done with a weight: mapped pages
    /// count as the process's resident memory until they are unmapped. Does nothing for data in
    /// memory.
    pub fn release_pages(&self) {
        #[cfg(target_os = "linux")]
        if let Some(ext) = &self.0.external
            && let Some(Ok(map)) = ext.file.map.get()
        {
            let start = ext.offset as usize;
            let end = (start + ext.length as usize).min(map.len());
            if start < end {
                release_mapped(&map[start..end]);
            }
        }
    }

    /// The proto as read (for writing back).
    pub fn proto(&self) -> &TensorProto {
        &self.0.proto
    }

    /// Bytes of data: packed size for fixed-width types, summed string lengths for strings.
    pub fn data_bytes(&self) -> u64 {
        match self.0.dtype.storage_bytes(self.len()) {
            Some(n) => n,
            None => self.0.proto.string_data.iter().map(|s| s.len() as u64).sum(),
        }
    }

    fn name_for_errors(&self) -> &str {
        self.0.proto.name.as_deref().unwrap_or("<unnamed>")
    }

    fn check_data(&self) -> Result<(), IrError> {
        let p = &self.0.proto;
        let name = self.name_for_errors();
        let count = self.0.dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| tensor_err(name, format!("element count of dims {:?} overflows", p.dims)))?;
        if p.segment.is_some() {
            // Segmented tensors carry only part of the data; nothing to compare against.
            return Ok(());
        }
        if let Some(ext) = &self.0.external {
            let expected = self.0.dtype.storage_bytes(count);
            if let Some(expected) = expected
                && expected != ext.length
            {
                return Err(tensor_err(name, format!("external data has {} bytes, {} {:?} needs {}", ext.length, self.0.dtype, p.dims, expected)));
            }
            return Ok(());
        }
        let dtype = self.0.dtype;
        if let Some(raw) = &p.raw_data {
            let expected = dtype.storage_bytes(count);
            return match expected {
                Some(expected) if expected == raw.len() as u64 => Ok(()),
                Some(expected) => Err(tensor_err(name, format!("raw_data has {} bytes, {} {:?} needs {}", raw.len(), dtype, p.dims, expected))),
                None => Err(tensor_err(name, format!("{dtype} data cannot be stored in raw_data"))),
            };
        }
        let (field, have, want) = match typed_field(dtype) {
            TypedField::Float(per) => ("float_data", p.float_data.len() as u64, count * per),
            TypedField::Double(per) => ("double_data", p.double_data.len() as u64, count * per),
            TypedField::Int64 => ("int64_data", p.int64_data.len() as u64, count),
            TypedField::Uint64 => ("uint64_data", p.uint64_data.len() as u64, count),
            TypedField::String => ("string_data", p.string_data.len() as u64, count),
            TypedField::Int32 { per_entry } => ("int32_data", p.int32_data.len() as u64, count.div_ceil(per_entry)),
            TypedField::None => return if count == 0 { Ok(()) } else { Err(tensor_err(name, "undefined data type")) },
        };
        if have == want { Ok(()) } else { Err(tensor_err(name, format!("{field} has {have} entries, {dtype} {:?} needs {want}", p.dims))) }
    }

    /// The data in `raw_data` layout (little-endian, sub-byte types packed low bits first).
    /// Zero-copy for inline raw data and mapped external data.
    pub fn raw_data(&self) -> Result<Bytes, IrError> {
        let p = &self.0.proto;
        if let Some(ext) = &self.0.external {
            let file = ext.file.bytes().map_err(|e| IrError::ExternalData {
                origin: crate::error::Origin::File(ext.file.path.clone()),
                tensor: self.name_for_errors().to_string(),
                file: ext.file.path.clone(),
                reason: e,
            })?;
            let start = ext.offset as usize;
            let end = start + ext.length as usize;
            if end > file.len() {
                return Err(tensor_err(self.name_for_errors(), format!("external data [{start}, {end}) is past the end of {} ({} bytes)", ext.file.path.display(), file.len())));
            }
            return Ok(file.slice(start..end));
        }
        if let Some(raw) = &p.raw_data {
            return Ok(raw.clone());
        }
        let dtype = self.0.dtype;
        let out: Vec<u8> = match typed_field(dtype) {
            TypedField::Float(_) => p.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TypedField::Double(_) => p.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TypedField::Int64 => p.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TypedField::Uint64 if dtype == DataType::Uint32 => p.uint64_data.iter().flat_map(|&v| (v as u32).to_le_bytes()).collect(),
            TypedField::Uint64 => p.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            TypedField::Int32 { .. } => match dtype.bit_width() {
                Some(32) => p.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                Some(16) => p.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect(),
                // 8-bit types hold one element per entry; 4- and 2-bit types one packed byte per entry.
                _ => p.int32_data.iter().map(|&v| v as u8).collect(),
            },
            TypedField::String => return Err(tensor_err(self.name_for_errors(), "string tensors have no raw layout")),
            TypedField::None => Vec::new(),
        };
        Ok(Bytes::from(out))
    }

    /// Strings of a string tensor.
    pub fn strings(&self) -> Result<&[Bytes], IrError> {
        if self.0.dtype != DataType::String {
            return Err(tensor_err(self.name_for_errors(), format!("is {}, not strings", self.0.dtype)));
        }
        Ok(&self.0.proto.string_data)
    }

    /// Values as f32 (for every numeric type; complex types are refused).
    pub fn to_f32(&self) -> Result<Vec<f32>, IrError> {
        let raw = self.raw_data()?;
        let n = self.len() as usize;
        use DataType::*;
        let out = match self.0.dtype {
            Float => le_chunks::<4>(&raw).map(f32::from_le_bytes).collect(),
            Double => le_chunks::<8>(&raw).map(|b| f64::from_le_bytes(b) as f32).collect(),
            Float16 => le_chunks::<2>(&raw).map(|b| half::f16::from_le_bytes(b).to_f32()).collect(),
            Bfloat16 => le_chunks::<2>(&raw).map(|b| half::bf16::from_le_bytes(b).to_f32()).collect(),
            Float8E4M3FN | Float8E4M3FNUZ | Float8E5M2 | Float8E5M2FNUZ | Float8E8M0 => raw.iter().map(|&b| minifloat::decode(self.0.dtype, b)).collect(),
            Float4E2M1 => unpack_nibbles(&raw, n).map(|b| minifloat::decode(Float4E2M1, b)).collect(),
            Complex64 | Complex128 | String | Undefined => {
                return Err(tensor_err(self.name_for_errors(), format!("{} cannot be read as f32", self.0.dtype)));
            }
            _ => self.to_i64()?.into_iter().map(|v| v as f32).collect(),
        };
        Ok(out)
    }

    /// Values as i64 (integer and bool types).
    pub fn to_i64(&self) -> Result<Vec<i64>, IrError> {
        let raw = self.raw_data()?;
        let n = self.len() as usize;
        use DataType::*;
        let out = match self.0.dtype {
            Int64 => le_chunks::<8>(&raw).map(i64::from_le_bytes).collect(),
            Uint64 => le_chunks::<8>(&raw).map(|b| u64::from_le_bytes(b) as i64).collect(),
            Int32 => le_chunks::<4>(&raw).map(|b| i32::from_le_bytes(b) as i64).collect(),
            Uint32 => le_chunks::<4>(&raw).map(|b| u32::from_le_bytes(b) as i64).collect(),
            Int16 => le_chunks::<2>(&raw).map(|b| i16::from_le_bytes(b) as i64).collect(),
            Uint16 => le_chunks::<2>(&raw).map(|b| u16::from_le_bytes(b) as i64).collect(),
            Int8 => raw.iter().map(|&b| b as i8 as i64).collect(),
            Uint8 => raw.iter().map(|&b| b as i64).collect(),
            Bool => raw.iter().map(|&b| (b != 0) as i64).collect(),
            Uint4 => unpack_nibbles(&raw, n).map(|v| v as i64).collect(),
            Int4 => unpack_nibbles(&raw, n).map(|v| ((v << 4) as i8 >> 4) as i64).collect(),
            Uint2 => unpack_crumbs(&raw, n).map(|v| v as i64).collect(),
            Int2 => unpack_crumbs(&raw, n).map(|v| ((v << 6) as i8 >> 6) as i64).collect(),
            other => return Err(tensor_err(self.name_for_errors(), format!("{other} cannot be read as integers"))),
        };
        Ok(out)
    }

    /// Same dtype, dims and data bytes (names and doc strings are not compared).
    pub fn content_eq(&self, other: &Tensor) -> Result<bool, IrError> {
        if self.dtype() != other.dtype() || self.dims() != other.dims() {
            return Ok(false);
        }
        if self.dtype() == DataType::String {
            return Ok(self.strings()? == other.strings()?);
        }
        Ok(self.raw_data()? == other.raw_data()?)
    }
}

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tensor({} {:?}", self.0.dtype, self.0.dims)?;
        if let Some(ext) = &self.0.external {
            write!(f, " external {}@{}+{}", ext.location, ext.offset, ext.length)?;
        }
        f.write_str(")")
    }
}

/// Which typed field of `TensorProto` holds a type's elements when `raw_data` is not used.
enum TypedField {
    /// `float_data`, this many entries per element.
    Float(u64),
    Double(u64),
    Int64,
    Uint64,
    String,
    /// `int32_data`, with this many elements per entry.
    Int32 {
        per_entry: u64,
    },
    None,
}

fn typed_field(dtype: DataType) -> TypedField {
    use DataType::*;
    match dtype {
        Float => TypedField::Float(1),
        Complex64 => TypedField::Float(2),
        Double => TypedField::Double(1),
        Complex128 => TypedField::Double(2),
        Int64 => TypedField::Int64,
        Uint32 | Uint64 => TypedField::Uint64,
        String => TypedField::String,
        Undefined => TypedField::None,
        other => match other.layout() {
            Layout::Bits(4) => TypedField::Int32 { per_entry: 2 },
            Layout::Bits(2) => TypedField::Int32 { per_entry: 4 },
            _ => TypedField::Int32 { per_entry: 1 },
        },
    }
}

/// Maps the pages behind `data` into the process in one call, before a large sequential read.
///
/// Tensor data read in place from a memory-mapped model faults in one page run at a time on
/// first touch; writing 50 MB of such data to a file took 3x as long as writing it from
/// memory that was already mapped (30 vs 10 ms). `MADV_POPULATE_READ` (Linux 5.14+) maps the
/// whole range at once. It changes no contents, so it is harmless on any readable memory; on
/// older kernels and other systems this does nothing and the reads fault as before.
pub fn prefault(data: &[u8]) {
    #[cfg(target_os = "linux")]
    {
        const MIN_BYTES: usize = 1 << 18;
        if data.len() < MIN_BYTES {
            return;
        }
        // SAFETY: `sysconf` has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
        let start = data.as_ptr() as usize;
        let aligned = start - start % page;
        // SAFETY: the range covers pages that `data` lies in, all mapped readable (a slice is
        // never split across an unmapped page); MADV_POPULATE_READ only populates page tables.
        // The result is ignored: failure only means the pages fault in on access as usual.
        unsafe { libc::madvise(aligned as *mut libc::c_void, start + data.len() - aligned, libc::MADV_POPULATE_READ) };
    }
    #[cfg(not(target_os = "linux"))]
    let _ = data;
}

/// Unmaps the whole pages inside `data`, which must lie in a read-only map of a file (a shared
/// file mapping keeps its contents: a later read faults the page in again from the page cache
/// or the file). On anonymous memory this would lose data, hence private to this module.
#[cfg(target_os = "linux")]
fn release_mapped(data: &[u8]) {
    // SAFETY: `sysconf` has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as usize;
    let start = (data.as_ptr() as usize).next_multiple_of(page);
    let end = (data.as_ptr() as usize + data.len()) / page * page;
    if end > start {
        // SAFETY: the pages lie inside `data`, a read-only shared mapping of a file (memmap2's
        // `Mmap`), whose contents MADV_DONTNEED does not change. Failure only means the pages
        // stay resident.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
    }
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N).map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

/// 4-bit elements, low nibble first.
pub fn unpack_nibbles(raw: &[u8], count: usize) -> impl Iterator<Item = u8> + '_ {
    raw.iter().flat_map(|&b| [b & 0x0F, b >> 4]).take(count)
}

/// 2-bit elements, lowest bits first.
pub fn unpack_crumbs(raw: &[u8], count: usize) -> impl Iterator<Item = u8> + '_ {
    raw.iter().flat_map(|&b| [b & 3, (b >> 2) & 3, (b >> 4) & 3, b >> 6]).take(count)
}

/// Packs 4-bit values (only the low nibble of each is used), the first in the low nibble.
pub fn pack_nibbles(values: &[u8]) -> Vec<u8> {
    let pairs = values.chunks_exact(2);
    let last = pairs.remainder().first().map(|&v| v & 0x0F);
    pairs.map(|c| (c[0] & 0x0F) | (c[1] & 0x0F) << 4).chain(last).collect()
}

/// Packs 2-bit values, the first in the lowest bits.
pub fn pack_crumbs(values: &[u8]) -> Vec<u8> {
    values.chunks(4).map(|c| c.iter().enumerate().fold(0u8, |byte, (i, &v)| byte | (v & 3) << (2 * i))).collect()
}

/// Resolves `external_data` entries of a tensor relative to the model directory.
pub(crate) fn parse_external_entries(entries: &[StringStringEntryProto]) -> Result<(String, u64, Option<u64>), String> {
    let mut location = None;
    let mut offset = 0u64;
    let mut length = None;
    for e in entries {
        let value = e.value.as_deref().unwrap_or("");
        match e.key.as_deref().unwrap_or("") {
            "location" => location = Some(value.to_string()),
            "offset" => offset = value.parse().map_err(|_| format!("bad external data offset '{value}'"))?,
            "length" => length = Some(value.parse().map_err(|_| format!("bad external data length '{value}'"))?),
            _ => {}
        }
    }
    let location = location.ok_or("external data has no 'location'")?;
    Ok((location, offset, length))
}

impl ExternalSource {
    pub(crate) fn new(location: String, offset: u64, length: u64, file: Arc<ExternalFile>) -> Self {
        ExternalSource { location, offset, length, file }
    }
}

/// Decoding of the 8- and 4-bit float formats, which `half` does not cover.
pub mod minifloat {
    use crate::dtype::DataType;

    /// The value of one fp8 / fp4 code as f32.
    pub fn decode(dtype: DataType, code: u8) -> f32 {
        use DataType::*;
        match dtype {
            Float8E8M0 => {
                if code == 0xFF {
                    f32::NAN
                } else {
                    (2.0f32).powi(code as i32 - 127)
                }
            }
            Float8E4M3FN => {
                if code & 0x7F == 0x7F {
                    f32::NAN
                } else {
                    generic(code, 4, 3, 7)
                }
            }
            Float8E4M3FNUZ => {
                if code == 0x80 {
                    f32::NAN
                } else {
                    generic(code, 4, 3, 8)
                }
            }
            Float8E5M2 => {
                let exp = (code >> 2) & 0x1F;
                let mant = code & 3;
                if exp == 0x1F { if mant == 0 { if code & 0x80 != 0 { f32::NEG_INFINITY } else { f32::INFINITY } } else { f32::NAN } } else { generic(code, 5, 2, 15) }
            }
            Float8E5M2FNUZ => {
                if code == 0x80 {
                    f32::NAN
                } else {
                    generic(code, 5, 2, 16)
                }
            }
            Float4E2M1 => generic(code & 0x0F, 2, 1, 1),
            _ => f32::NAN,
        }
    }

    /// sign | exponent | mantissa with the given widths and bias, subnormals when the exponent is 0.
    fn generic(code: u8, exp_bits: u32, mant_bits: u32, bias: i32) -> f32 {
        let sign = if (code >> (exp_bits + mant_bits)) & 1 == 1 { -1.0 } else { 1.0 };
        let exp = ((code >> mant_bits) & ((1 << exp_bits) - 1)) as i32;
        let mant = (code & ((1 << mant_bits) - 1)) as f32 / (1 << mant_bits) as f32;
        let magnitude = if exp == 0 { mant * 2f32.powi(1 - bias) } else { (1.0 + mant) * 2f32.powi(exp - bias) };
        sign * magnitude
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nibbles_and_crumbs_pack_low_bits_first() {
        assert_eq!(pack_nibbles(&[1, 2, 3]), vec![0x21, 0x03]);
        assert_eq!(unpack_nibbles(&[0x21, 0x03], 3).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(pack_crumbs(&[1, 2, 3, 0, 1]), vec![0b00_11_10_01, 0b01]);
        assert_eq!(unpack_crumbs(&[0b00_11_10_01, 0b01], 5).collect::<Vec<_>>(), vec![1, 2, 3, 0, 1]);
    }

    #[test]
    fn int4_values_sign_extend() {
        let t = Tensor::from_raw(DataType::Int4, &[4], Bytes::from(pack_nibbles(&[0x7, 0x8, 0xF, 0x0]))).unwrap();
        assert_eq!(t.to_i64().unwrap(), vec![7, -8, -1, 0]);
        let t = Tensor::from_raw(DataType::Int2, &[4], Bytes::from(pack_crumbs(&[1, 2, 3, 0]))).unwrap();
        assert_eq!(t.to_i64().unwrap(), vec![1, -2, -1, 0]);
    }

    #[test]
    fn minifloat_known_values() {
        use minifloat::decode;
        // Values from the ONNX spec tables (Float8 types and FLOAT4E2M1).
        assert_eq!(decode(DataType::Float8E4M3FN, 0x7E), 448.0);
        assert!(decode(DataType::Float8E4M3FN, 0x7F).is_nan());
        assert_eq!(decode(DataType::Float8E4M3FN, 0x01), 2f32.powi(-9));
        assert_eq!(decode(DataType::Float8E5M2, 0x7B), 57344.0);
        assert_eq!(decode(DataType::Float8E5M2, 0x7C), f32::INFINITY);
        assert_eq!(decode(DataType::Float8E4M3FNUZ, 0x7F), 240.0);
        assert_eq!(decode(DataType::Float8E5M2FNUZ, 0x7F), 57344.0);
        assert!(decode(DataType::Float8E5M2FNUZ, 0x80).is_nan());
        assert_eq!(decode(DataType::Float8E8M0, 127), 1.0);
        let fp4: Vec<f32> = (0..8).map(|c| decode(DataType::Float4E2M1, c)).collect();
        assert_eq!(fp4, vec![0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]);
        assert_eq!(decode(DataType::Float4E2M1, 0xF), -6.0);
    }

    #[test]
    fn typed_fields_convert_to_raw_layout() {
        let proto = TensorProto { dims: vec![3], data_type: Some(DataType::Float16.code()), int32_data: vec![0x3C00, 0x4000, 0xC000], ..Default::default() };
        let t = Tensor::from_proto(proto, None).unwrap();
        assert_eq!(t.to_f32().unwrap(), vec![1.0, 2.0, -2.0]);
        let proto = TensorProto { dims: vec![2], data_type: Some(DataType::Uint32.code()), uint64_data: vec![7, 4_000_000_000], ..Default::default() };
        assert_eq!(Tensor::from_proto(proto, None).unwrap().to_i64().unwrap(), vec![7, 4_000_000_000]);
    }

    #[test]
    fn inconsistent_data_is_refused_with_the_tensor_name() {
        let proto = TensorProto { name: Some("w".into()), dims: vec![2, 3], data_type: Some(1), raw_data: Some(Bytes::from(vec![0u8; 20])), ..Default::default() };
        let err = Tensor::from_proto(proto, None).unwrap_err().to_string();
        assert!(err.contains("'w'") && err.contains("20 bytes") && err.contains("24"), "{err}");
        let proto = TensorProto { name: Some("x".into()), dims: vec![-1], data_type: Some(1), ..Default::default() };
        assert!(Tensor::from_proto(proto, None).unwrap_err().to_string().contains("negative"));
        let proto = TensorProto { name: Some("y".into()), dims: vec![1], data_type: Some(99), ..Default::default() };
        assert!(Tensor::from_proto(proto, None).unwrap_err().to_string().contains("unknown data type 99"));
    }
}
