//! A scratch file for tensor data a pass produces while streaming a model larger than memory.
//!
//! A pass that rewrites every weight of a large model (quantization) would otherwise hold all its
//! results in memory until the model is written. Instead it stores each result here as soon as
//! it is made: the bytes go to a temporary file through the page cache (which the kernel can
//! write back and drop), and the pass gets a [`Tensor`] that maps them lazily, like external
//! data. Writing the model copies them from the file to the output without mapping them (see
//! `onnx.rs`); the file is deleted when the last tensor stored in it is dropped.

use crate::dtype::DataType;
use crate::error::IrError;
use crate::tensor::{ExternalFile, ExternalSource, Tensor};
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Offsets in the file are page-aligned, so each tensor can be mapped on its own.
const ALIGNMENT: u64 = 4096;

pub struct ScratchFile {
    path: Arc<tempfile::TempPath>,
    /// The open file and its length so far.
    file: Mutex<(std::fs::File, u64)>,
}

impl ScratchFile {
    /// A new, empty scratch file in `dir` (the system's temporary directory when `None`;
    /// `TMPDIR` chooses it on Unix).
    pub fn new(dir: Option<&Path>) -> std::io::Result<Self> {
        let named = match dir {
            Some(d) => tempfile::Builder::new().prefix(".compactor-scratch-").tempfile_in(d)?,
            None => tempfile::Builder::new().prefix(".compactor-scratch-").tempfile()?,
        };
        let (file, path) = named.into_parts();
        Ok(ScratchFile { path: Arc::new(path), file: Mutex::new((file, 0)) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes stored so far (with alignment padding).
    pub fn len(&self) -> u64 {
        self.file.lock().map(|f| f.1).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends `data` (`raw_data` layout of a `dtype` tensor of `dims`) and returns a tensor
    /// reading it from the file. Safe to call from several threads.
    pub fn store(&self, dtype: DataType, dims: &[u64], data: &[u8]) -> Result<Tensor, IrError> {
        let err = |e: std::io::Error| IrError::Write { path: self.path.to_path_buf(), error: e };
        let offset = {
            let mut guard = self.file.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let (file, len) = &mut *guard;
            let offset = len.next_multiple_of(ALIGNMENT);
            if offset > *len {
                file.write_all(&vec![0; (offset - *len) as usize]).map_err(err)?;
            }
            file.write_all(data).map_err(err)?;
            *len = offset + data.len() as u64;
            offset
        };
        let file = Arc::new(ExternalFile::window(self.path.to_path_buf(), offset, data.len() as u64, self.path.clone()));
        let source = ExternalSource::new(String::new(), 0, data.len() as u64, file);
        Tensor::in_scratch_file(dtype, dims, source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_tensors_read_back_and_the_file_goes_with_the_last_one() {
        let scratch = ScratchFile::new(None).unwrap();
        let path = scratch.path().to_path_buf();
        let a = scratch.store(DataType::Float, &[3], &[1f32, 2., 3.].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()).unwrap();
        let b = scratch.store(DataType::Uint8, &[5], &[9, 8, 7, 6, 5]).unwrap();
        assert_eq!(scratch.len(), 4096 + 5);
        assert_eq!(a.to_f32().unwrap(), vec![1., 2., 3.]);
        assert_eq!(b.to_i64().unwrap(), vec![9, 8, 7, 6, 5]);
        // Not external data of any model: written inline or to the output's own data file.
        assert!(a.external().is_none());
        b.release_pages();
        assert_eq!(b.raw_data().unwrap().as_ref(), &[9, 8, 7, 6, 5]);
        drop(scratch);
        assert!(path.exists(), "tensors still read the file");
        drop((a, b));
        assert!(!path.exists());
    }

    #[test]
    fn data_of_the_wrong_length_is_refused() {
        let scratch = ScratchFile::new(None).unwrap();
        assert!(scratch.store(DataType::Float, &[2], &[0; 4]).is_err());
    }
}
