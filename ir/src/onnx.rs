//! Reading ONNX files into the IR and writing the IR back, losslessly.
//!
//! Reading maps the file and decodes it with prost into `Bytes` that slice the map, so
//! tensor data is never copied; external data files are checked at load time and mapped
//! on first use. Writing goes to a temporary file in the target directory that is renamed
//! over the target only once everything is written.

use crate::dtype::DataType;
use crate::error::{IrError, Origin, Result};
use crate::graph::{AttrValue, Attribute, Graph, Node, NodeId, Region, RegionId, SparseTensor, Value, ValueDef, ValueId, constant_node_tensor};
use crate::model::Model;
use crate::proto::{self, tensor_shape_proto, type_proto};
use crate::tensor::{ExternalFile, ExternalSource, Tensor, parse_external_entries};
use crate::types::{Dim, Shape, TypeKind, ValueType};
use bytes::Bytes;
use prost::Message;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

mod read;

use read::decode;
pub use read::lift_constants;

/// Options for reading a model.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// Turn `Constant` nodes into initializers of their graph.
    pub lift_constants: bool,
}

/// Where tensor data goes when a model is written.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum ExternalDataPolicy {
    /// Tensors read from external files go back to files of the same `location` (next to the
    /// output) at the same offsets; every other tensor is written inline. A file that would
    /// replace one the model reads from (an output next to its input) is named after the
    /// output instead (`<output>.data`), as it is with `Threshold`.
    #[default]
    Preserve,
    /// Every tensor inline.
    Inline,
    /// Tensors of at least `min_bytes` go to the side file `location` (relative to the output's
    /// directory), each at a 4 KiB-aligned offset; the rest inline.
    Threshold { min_bytes: u64, location: String },
}

#[derive(Clone, Debug)]
pub struct SaveOptions {
    pub external_data: ExternalDataPolicy,
    /// fsync files before renaming them into place (durability on power loss; atomicity against
    /// a failed or killed process comes from the rename alone).
    pub sync: bool,
}

impl Default for SaveOptions {
    fn default() -> Self {
        SaveOptions { external_data: ExternalDataPolicy::Preserve, sync: false }
    }
}

/// What a save wrote.
#[derive(Clone, Debug, Default)]
pub struct SaveReport {
    pub model_bytes: u64,
    /// External data files written, with their sizes.
    pub external_files: Vec<(PathBuf, u64)>,
}

const PROTOBUF_LIMIT: u64 = i32::MAX as u64;
const EXTERNAL_ALIGNMENT: u64 = 4096;

impl Model {
    pub fn load(path: impl AsRef<Path>) -> Result<Model> {
        Self::load_with(path, &LoadOptions::default())
    }

    pub fn load_with(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let origin = Origin::File(path.to_path_buf());
        let read_err = |error| IrError::Read { origin: origin.clone(), error };
        let file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if meta.is_dir() {
            return Err(IrError::NotOnnx { origin, reason: "is a directory".into() });
        }
        if meta.len() == 0 {
            return Err(IrError::NotOnnx { origin, reason: "the file is empty".into() });
        }
        // SAFETY: read-only map; tensors slice it. Like every mmap loader, we rely on the file not
        // being truncated while the model is in use.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(read_err)?;
        let base_dir = path.parent().map(|p| if p.as_os_str().is_empty() { Path::new(".") } else { p });
        decode(Bytes::from_owner(map), origin, base_dir, options)
    }

    /// Reads a model from bytes; `base_dir` resolves external data (none allowed without it).
    pub fn from_bytes(bytes: Bytes, base_dir: Option<&Path>, options: &LoadOptions) -> Result<Model> {
        decode(bytes, Origin::Memory, base_dir, options)
    }

    pub fn save(&self, path: impl AsRef<Path>) -> Result<SaveReport> {
        self.save_with(path, &SaveOptions::default())
    }

    /// Writes the model (and its external data files) atomically: each file is written to a
    /// temporary file beside it and renamed into place only when complete.
    pub fn save_with(&self, path: impl AsRef<Path>, options: &SaveOptions) -> Result<SaveReport> {
        let path = path.as_ref();
        let write_err = |error| IrError::Write { path: path.to_path_buf(), error };
        let mut writer = Writer::new(options.external_data.clone());
        let mut proto = writer.model(self)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        // Renamed or packed data files change the protos' locations and offsets: one more pass.
        let relocated = relocations(&writer, &dir, path, &self.origin);
        let compacted: BTreeMap<String, BTreeMap<u64, u64>> = compactions(&writer).into_iter().map(|(location, moves)| (relocated.get(&location).cloned().unwrap_or(location), moves)).collect();
        if !relocated.is_empty() || !compacted.is_empty() {
            writer = Writer { relocated, compacted, ..Writer::new(options.external_data.clone()) };
            proto = writer.model(self)?;
        }
        let len = proto.encoded_len() as u64;
        if len > PROTOBUF_LIMIT {
            return Err(IrError::TooLargeForProtobuf { path: path.to_path_buf(), bytes: len });
        }
        let mut report = SaveReport { model_bytes: len, external_files: Vec::new() };
        let mut pending = Vec::new();
        for (location, file) in &writer.external_files {
            let target = dir.join(location);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(|error| IrError::Write { path: target.clone(), error })?;
            }
            let tmp = write_temp(&target, options.sync, |out| file.write_to(out)).map_err(|error| IrError::Write { path: target.clone(), error })?;
            report.external_files.push((target.clone(), file.len));
            pending.push((tmp, target));
        }
        let model_tmp = write_temp(path, options.sync, |out| {
            let mut stream = StreamBuf::new(out);
            proto.encode(&mut stream).expect("StreamBuf has unbounded capacity");
            stream.finish()
        })
        .map_err(write_err)?;
        // Data files first, so the model never points at data that is not there yet.
        for (tmp, target) in pending {
            tmp.persist(&target).map_err(|e| IrError::Write { path: target.clone(), error: e.error })?;
        }
        model_tmp.persist(path).map_err(|e| write_err(e.error))?;
        Ok(report)
    }

    /// The model as a `ModelProto` with every tensor inline.
    pub fn to_proto(&self) -> Result<proto::ModelProto> {
        Writer::new(ExternalDataPolicy::Inline).model(self)
    }

    /// The model serialized with every tensor inline (for handing to a runtime).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(self.to_proto()?.encode_to_vec())
    }
}

/// Gaps in external data files (over [`MAX_GAP_BYTES`] in all) left by tensors the model no
/// longer holds, e.g. weights a pass replaced by quantized ones: written back at the same
/// offsets, the output's data file would keep the old size, in zeros. Such a file is packed
/// instead: each tensor moves down, keeping its offset modulo 4 KiB (so aligned data stays
/// aligned) and tensors that overlap in the source keep overlapping. Returns, per file, new
/// offsets by old offset; files with small gaps (alignment padding) keep their layout, so a
/// model read and written back is byte-identical.
const MAX_GAP_BYTES: u64 = 1 << 20;

fn compactions(writer: &Writer) -> BTreeMap<String, BTreeMap<u64, u64>> {
    let mut out = BTreeMap::new();
    if writer.policy != ExternalDataPolicy::Preserve {
        return out;
    }
    for (location, file) in &writer.external_files {
        let mut moves = BTreeMap::new();
        let (mut pos, mut run_old, mut run_end, mut run_new, mut gaps) = (0u64, 0u64, 0u64, 0u64, 0u64);
        for (&offset, chunk) in &file.chunks {
            if offset >= run_end {
                gaps += offset - run_end;
                let residue = offset % EXTERNAL_ALIGNMENT;
                run_new = pos + (residue + EXTERNAL_ALIGNMENT - pos % EXTERNAL_ALIGNMENT) % EXTERNAL_ALIGNMENT;
                run_old = offset;
            }
            moves.insert(offset, run_new + (offset - run_old));
            run_end = run_end.max(offset + chunk.len());
            pos = run_new + (run_end - run_old);
        }
        gaps += file.len - run_end.min(file.len);
        if gaps > MAX_GAP_BYTES {
            out.insert(location.clone(), moves);
        }
    }
    out
}

/// External data locations the output gets under a name of its own: `<output file>.data`,
/// else `<output file>.<n>.data`. Two cases need one:
/// - the output's file name differs from the model it was read from: keeping the source's data
///   file name (`model.onnx.data`) would let several outputs written into one directory
///   (`int8.onnx`, `int4.onnx`) replace each other's data;
/// - a data file would replace a file the model's own tensors are read from (an output written
///   next to its input): the input model would then point at the output's data.
///
/// A copy under the same file name into another directory keeps its data file names, so a
/// round trip stays byte-identical. The old files stay where they were.
fn relocations(writer: &Writer, dir: &Path, output: &Path, origin: &Origin) -> BTreeMap<String, String> {
    let canonical = |p: &Path| std::fs::canonicalize(p).ok();
    let sources: BTreeSet<PathBuf> = writer.sources.iter().filter_map(|p| canonical(p)).collect();
    let is_source = |p: &Path| canonical(p).is_some_and(|c| sources.contains(&c));
    let renamed = match origin {
        Origin::File(source) => source.file_name() != output.file_name(),
        Origin::Memory => false,
    };
    let mut relocated = BTreeMap::new();
    let mut taken: BTreeSet<String> = writer.external_files.keys().cloned().collect();
    let stem = output.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model".into());
    for location in writer.external_files.keys() {
        // Under `Threshold` the caller named the file; only a clash with a source renames it.
        let kept_from_source = matches!(writer.policy, ExternalDataPolicy::Preserve);
        let needs_own_name = is_source(&dir.join(location)) || (renamed && kept_from_source);
        if !needs_own_name {
            continue;
        }
        let fresh = (0..)
            .map(|n| if n == 0 { format!("{stem}.data") } else { format!("{stem}.{n}.data") })
            .find(|name| (!taken.contains(name) || name == location) && !is_source(&dir.join(name)))
            .expect("some name is free");
        taken.insert(fresh.clone());
        relocated.insert(location.clone(), fresh);
    }
    relocated
}

/// Encodes a message straight into a file: small fields gather in a 1 MiB buffer, large
/// byte fields (tensor data, slices of the source map) go to `write(2)` without a copy. prost
/// only encodes into a `BufMut`, so this is the smallest adapter from `BufMut` to `io::Write`.
struct StreamBuf<'a> {
    out: &'a mut std::fs::File,
    buf: Vec<u8>,
    /// The first write error; later writes are skipped and `finish` reports it.
    error: Option<std::io::Error>,
}

impl<'a> StreamBuf<'a> {
    const CAPACITY: usize = 1 << 20;

    fn new(out: &'a mut std::fs::File) -> Self {
        StreamBuf { out, buf: Vec::with_capacity(Self::CAPACITY), error: None }
    }

    fn flush_buffer(&mut self) {
        if self.error.is_none() && !self.buf.is_empty() {
            self.error = std::io::Write::write_all(self.out, &self.buf).err();
        }
        self.buf.clear();
    }

    fn finish(mut self) -> std::io::Result<()> {
        self.flush_buffer();
        self.error.take().map_or(Ok(()), Err)
    }
}

// SAFETY: `chunk_mut` hands out the buffer's spare capacity, and `advance_mut` only marks as
// initialised bytes that the caller has just written into that spare capacity.
unsafe impl bytes::BufMut for StreamBuf<'_> {
    fn remaining_mut(&self) -> usize {
        usize::MAX
    }

    unsafe fn advance_mut(&mut self, count: usize) {
        // SAFETY: see the impl comment.
        unsafe { self.buf.set_len(self.buf.len() + count) };
    }

    fn chunk_mut(&mut self) -> &mut bytes::buf::UninitSlice {
        if self.buf.len() == self.buf.capacity() {
            self.flush_buffer();
        }
        bytes::buf::UninitSlice::uninit(self.buf.spare_capacity_mut())
    }

    fn put_slice(&mut self, src: &[u8]) {
        if src.len() >= Self::CAPACITY / 4 {
            self.flush_buffer();
            if self.error.is_none() {
                crate::tensor::prefault(src);
                self.error = std::io::Write::write_all(self.out, src).err();
            }
        } else {
            if self.buf.capacity() - self.buf.len() < src.len() {
                self.flush_buffer();
            }
            self.buf.extend_from_slice(src);
        }
    }

    fn put<T: bytes::Buf>(&mut self, mut src: T) {
        while src.has_remaining() {
            let chunk = src.chunk();
            let n = chunk.len();
            self.put_slice(chunk);
            src.advance(n);
        }
    }
}

/// Writes a file the way models are written: into a temporary file beside `path` (mode 0644
/// before the umask), renamed into place only once `fill` has written all of it, so `path`
/// never holds half a file.
pub fn write_atomically(path: &Path, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> std::io::Result<()> {
    write_temp(path, false, fill)?.persist(path).map(|_| ()).map_err(|e| e.error)
}

fn write_temp(target: &Path, sync: bool, fill: impl FnOnce(&mut std::fs::File) -> std::io::Result<()>) -> std::io::Result<tempfile::NamedTempFile> {
    let dir = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let file_name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{file_name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    let mut tmp = builder.tempfile_in(dir)?;
    fill(tmp.as_file_mut())?;
    if sync {
        tmp.as_file().sync_all()?;
    }
    Ok(tmp)
}

// ---------------------------------------------------------------------------------------------
// Writing

/// An external data file being assembled: chunks at offsets.
#[derive(Default)]
struct ExternalFileBuilder {
    chunks: BTreeMap<u64, Chunk>,
    len: u64,
}

/// The bytes of one tensor in an external data file being written.
enum Chunk {
    Memory(Bytes),
    /// `len` bytes at `offset` of a file (external data or a scratch file): copied file to file,
    /// never mapped, so writing a model larger than memory keeps little of it resident.
    File {
        path: PathBuf,
        offset: u64,
        len: u64,
    },
}

impl Chunk {
    fn of(tensor: &Tensor) -> Result<Chunk> {
        Ok(match tensor.data_in_file() {
            Some((path, offset, len)) => Chunk::File { path: path.to_path_buf(), offset, len },
            None => Chunk::Memory(tensor.raw_data()?),
        })
    }

    fn len(&self) -> u64 {
        match self {
            Chunk::Memory(b) => b.len() as u64,
            Chunk::File { len, .. } => *len,
        }
    }
}

impl ExternalFileBuilder {
    fn write_to(&self, out: &mut std::fs::File) -> std::io::Result<()> {
        use std::io::{Seek, Write};
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
        let mut pos = 0u64;
        let mut sources: BTreeMap<&Path, std::fs::File> = BTreeMap::new();
        for (&offset, chunk) in &self.chunks {
            // Overlapping chunks (tensors that shared storage in the source file): write the rest.
            let skip = pos.saturating_sub(offset);
            if skip >= chunk.len() {
                continue;
            }
            std::io::copy(&mut std::io::repeat(0).take(offset.saturating_sub(pos)), &mut w)?;
            match chunk {
                Chunk::Memory(data) => w.write_all(&data[skip as usize..])?,
                Chunk::File { path, offset: from, len } => {
                    let source = match sources.entry(path) {
                        std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
                        std::collections::btree_map::Entry::Vacant(e) => e.insert(std::fs::File::open(path)?),
                    };
                    source.seek(std::io::SeekFrom::Start(from + skip))?;
                    let copied = std::io::copy(&mut source.take(len - skip), &mut w)?;
                    if copied != len - skip {
                        return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, format!("{} ended {} bytes early", path.display(), len - skip - copied)));
                    }
                }
            }
            pos = offset + chunk.len();
        }
        std::io::copy(&mut std::io::repeat(0).take(self.len.saturating_sub(pos)), &mut w)?;
        w.flush()
    }
}

use std::io::Read as _;

struct Writer {
    policy: ExternalDataPolicy,
    external_files: BTreeMap<String, ExternalFileBuilder>,
    /// The files external tensors are read from.
    sources: BTreeSet<PathBuf>,
    /// External data locations written under another name (see [`relocations`]).
    relocated: BTreeMap<String, String>,
    /// New offsets in packed external data files, by location and old offset (see [`compactions`]).
    compacted: BTreeMap<String, BTreeMap<u64, u64>>,
}

impl Writer {
    fn new(policy: ExternalDataPolicy) -> Self {
        Writer { policy, external_files: BTreeMap::new(), sources: BTreeSet::new(), relocated: BTreeMap::new(), compacted: BTreeMap::new() }
    }

    fn location<'a>(&'a self, location: &'a str) -> &'a str {
        self.relocated.get(location).map_or(location, String::as_str)
    }

    fn model(&mut self, model: &Model) -> Result<proto::ModelProto> {
        Ok(proto::ModelProto {
            ir_version: model.ir_version,
            opset_import: model.opset_import.clone(),
            producer_name: model.producer_name.clone(),
            producer_version: model.producer_version.clone(),
            domain: model.domain.clone(),
            model_version: model.model_version,
            doc_string: model.doc_string.clone(),
            graph: Some(self.region(&model.graph, Graph::MAIN)?),
            metadata_props: model.metadata_props.clone(),
            training_info: model.training_info.clone(),
            functions: model.functions.clone(),
            configuration: model.configuration.clone(),
        })
    }

    fn tensor(&mut self, tensor: &Tensor, name: Option<String>) -> Result<proto::TensorProto> {
        let mut p = tensor.proto().clone();
        if name.is_some() {
            p.name = name;
        }
        let inline = |p: &mut proto::TensorProto| -> Result<()> {
            if tensor.data_in_file().is_some() {
                p.raw_data = Some(tensor.raw_data()?);
                p.data_location = None;
                p.external_data.clear();
            }
            Ok(())
        };
        if let Some(ext) = tensor.external() {
            self.sources.insert(ext.path().to_path_buf());
        }
        match self.policy.clone() {
            ExternalDataPolicy::Inline => inline(&mut p)?,
            ExternalDataPolicy::Preserve => {
                if let Some(ext) = tensor.external() {
                    let data = Chunk::of(tensor)?;
                    let location = self.location(&ext.location).to_string();
                    if location != ext.location {
                        for entry in p.external_data.iter_mut().filter(|e| e.key.as_deref() == Some("location")) {
                            entry.value = Some(location.clone());
                        }
                    }
                    let offset = match self.compacted.get(&location).and_then(|moves| moves.get(&ext.offset)) {
                        Some(&moved) => {
                            p.external_data.retain(|e| e.key.as_deref() != Some("offset"));
                            p.external_data.push(proto::StringStringEntryProto { key: Some("offset".into()), value: Some(moved.to_string()) });
                            moved
                        }
                        None => ext.offset,
                    };
                    let file = self.external_files.entry(location).or_default();
                    file.len = file.len.max(offset + ext.length);
                    file.chunks.insert(offset, data);
                } else {
                    // A pass's scratch file: new data, inline like any other.
                    inline(&mut p)?;
                }
            }
            ExternalDataPolicy::Threshold { min_bytes, location } => {
                let location = self.location(&location).to_string();
                if tensor.dtype() != DataType::String && tensor.data_bytes() >= min_bytes {
                    let data = Chunk::of(tensor)?;
                    let file = self.external_files.entry(location.clone()).or_default();
                    let offset = file.len.next_multiple_of(EXTERNAL_ALIGNMENT);
                    let length = data.len();
                    file.len = offset + length;
                    file.chunks.insert(offset, data);
                    p.raw_data = None;
                    (p.float_data, p.int32_data, p.int64_data, p.double_data, p.uint64_data) = Default::default();
                    p.data_location = Some(proto::tensor_proto::DataLocation::External as i32);
                    let entry = |k: &str, v: String| proto::StringStringEntryProto { key: Some(k.into()), value: Some(v) };
                    p.external_data = vec![entry("location", location), entry("offset", offset.to_string()), entry("length", length.to_string())];
                } else {
                    inline(&mut p)?;
                }
            }
        }
        Ok(p)
    }

    fn sparse(&mut self, s: &SparseTensor) -> Result<proto::SparseTensorProto> {
        Ok(proto::SparseTensorProto {
            values: s.values.as_ref().map(|t| self.tensor(t, None)).transpose()?,
            indices: s.indices.as_ref().map(|t| self.tensor(t, None)).transpose()?,
            dims: s.dims.clone(),
        })
    }

    fn value_info(&self, graph: &Graph, id: ValueId) -> proto::ValueInfoProto {
        let v = graph.value(id);
        proto::ValueInfoProto { name: Some(v.name.clone()), r#type: v.ty.as_ref().map(type_to_proto), doc_string: v.doc_string.clone(), metadata_props: v.metadata_props.clone() }
    }

    fn region(&mut self, graph: &Graph, rid: RegionId) -> Result<proto::GraphProto> {
        let region = graph.region(rid);
        let name_of = |v: &Option<ValueId>| v.map(|v| graph.value(v).name.clone()).unwrap_or_default();
        let mut nodes = Vec::with_capacity(region.nodes.len());
        for &nid in &region.nodes {
            let n = graph.node(nid);
            let mut attribute = Vec::with_capacity(n.attributes.len());
            for a in &n.attributes {
                attribute.push(self.attribute(graph, a)?);
            }
            nodes.push(proto::NodeProto {
                input: n.inputs.iter().map(name_of).collect(),
                output: n.outputs.iter().map(name_of).collect(),
                name: n.name.clone(),
                op_type: Some(n.op_type.clone()),
                domain: n.domain.clone(),
                overload: n.overload.clone(),
                attribute,
                doc_string: n.doc_string.clone(),
                metadata_props: n.metadata_props.clone(),
                device_configurations: n.device_configurations.clone(),
            });
        }
        let mut initializer = Vec::with_capacity(region.initializers.len());
        for &v in &region.initializers {
            let value = graph.value(v);
            let tensor = value.initializer.as_ref().ok_or_else(|| IrError::TensorData { tensor: value.name.clone(), reason: "listed as an initializer but holds no tensor".into() })?;
            initializer.push(self.tensor(tensor, Some(value.name.clone()))?);
        }
        let mut sparse_initializer = Vec::with_capacity(region.sparse_initializers.len());
        for &v in &region.sparse_initializers {
            let value = graph.value(v);
            let sparse = value.sparse_initializer.as_ref().ok_or_else(|| IrError::TensorData { tensor: value.name.clone(), reason: "listed as a sparse initializer but holds none".into() })?;
            let mut p = self.sparse(sparse)?;
            if let Some(values) = p.values.as_mut() {
                values.name = Some(value.name.clone());
            }
            sparse_initializer.push(p);
        }
        Ok(proto::GraphProto {
            node: nodes,
            name: region.name.clone(),
            initializer,
            sparse_initializer,
            doc_string: region.doc_string.clone(),
            input: region.inputs.iter().map(|&v| self.value_info(graph, v)).collect(),
            output: region.outputs.iter().map(|&v| self.value_info(graph, v)).collect(),
            value_info: region.value_info.iter().map(|&v| region.value_info_as_read.get(&v).cloned().unwrap_or_else(|| self.value_info(graph, v))).collect(),
            quantization_annotation: region.quantization_annotation.clone(),
            metadata_props: region.metadata_props.clone(),
        })
    }

    fn attribute(&mut self, graph: &Graph, a: &Attribute) -> Result<proto::AttributeProto> {
        let mut p = proto::AttributeProto { name: Some(a.name.clone()), ref_attr_name: a.ref_attr_name.clone(), doc_string: a.doc_string.clone(), r#type: a.proto_type, ..Default::default() };
        match &a.value {
            AttrValue::Float(f) => p.f = Some(*f),
            AttrValue::Int(i) => p.i = Some(*i),
            AttrValue::String(s) => p.s = Some(s.clone()),
            AttrValue::Tensor(t) => p.t = Some(self.tensor(t, None)?),
            AttrValue::Graph(r) => p.g = Some(self.region(graph, *r)?),
            AttrValue::SparseTensor(s) => p.sparse_tensor = Some(self.sparse(s)?),
            AttrValue::Type(t) => p.tp = Some(type_to_proto(t)),
            AttrValue::Floats(v) => p.floats = v.clone(),
            AttrValue::Ints(v) => p.ints = v.clone(),
            AttrValue::Strings(v) => p.strings = v.clone(),
            AttrValue::Tensors(v) => p.tensors = v.iter().map(|t| self.tensor(t, None)).collect::<Result<_>>()?,
            AttrValue::Graphs(v) => p.graphs = v.iter().map(|r| self.region(graph, *r)).collect::<Result<_>>()?,
            AttrValue::SparseTensors(v) => p.sparse_tensors = v.iter().map(|s| self.sparse(s)).collect::<Result<_>>()?,
            AttrValue::Types(v) => p.type_protos = v.iter().map(type_to_proto).collect(),
            AttrValue::Undefined => {}
        }
        Ok(p)
    }
}

fn shape_to_proto(shape: &Shape) -> proto::TensorShapeProto {
    proto::TensorShapeProto {
        dim: shape
            .dims
            .iter()
            .enumerate()
            .map(|(i, d)| proto::tensor_shape_proto::Dimension {
                value: match d {
                    Dim::Known(v) => Some(tensor_shape_proto::dimension::Value::DimValue(*v)),
                    Dim::Sym(s) => Some(tensor_shape_proto::dimension::Value::DimParam(s.clone())),
                    Dim::Unknown => None,
                },
                denotation: shape.denotations.get(i).cloned().flatten(),
            })
            .collect(),
    }
}

pub(crate) fn type_to_proto(t: &ValueType) -> proto::TypeProto {
    let sub = |t: &Option<Box<ValueType>>| t.as_ref().map(|t| Box::new(type_to_proto(t)));
    let value = match &t.kind {
        TypeKind::Unset => None,
        TypeKind::Tensor { elem, shape } => Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: elem.map(DataType::code), shape: shape.as_ref().map(shape_to_proto) })),
        TypeKind::SparseTensor { elem, shape } => {
            Some(type_proto::Value::SparseTensorType(type_proto::SparseTensor { elem_type: elem.map(DataType::code), shape: shape.as_ref().map(shape_to_proto) }))
        }
        TypeKind::Sequence(e) => Some(type_proto::Value::SequenceType(Box::new(type_proto::Sequence { elem_type: sub(e) }))),
        TypeKind::Optional(e) => Some(type_proto::Value::OptionalType(Box::new(type_proto::Optional { elem_type: sub(e) }))),
        TypeKind::Map { key, value } => Some(type_proto::Value::MapType(Box::new(type_proto::Map { key_type: key.map(DataType::code), value_type: sub(value) }))),
        TypeKind::Opaque { domain, name } => Some(type_proto::Value::OpaqueType(type_proto::Opaque { domain: domain.clone(), name: name.clone() })),
    };
    proto::TypeProto { value, denotation: t.denotation.clone() }
}
