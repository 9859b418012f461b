//! Compactor's intermediate representation of ONNX models.
//!
//! - [`Model`] / [`Graph`]: an arena of nodes and values with typed ids ([`NodeId`], [`ValueId`]);
//!   subgraphs are [`Region`]s of the same arena.
//! - [`Tensor`]: shared, lazily loaded, zero-copy weights.
//! - Reading and writing ONNX ([`Model::load`], [`Model::save_with`]) without loss.
//! - Shape and type inference ([`infer_shapes`]).

pub mod dtype;
pub mod error;
pub mod graph;
pub mod infer;
pub mod model;
pub mod moe;
pub mod onnx;
pub mod patch;
pub mod pattern;
pub mod scratch;
pub mod summary;
pub mod tensor;
pub mod text;
pub mod types;
pub mod verify;

pub mod proto {
    #![allow(clippy::all, missing_docs)]
    include!(concat!(env!("OUT_DIR"), "/onnx.rs"));
}

pub use bytes;
pub use dtype::DataType;
pub use error::{IrError, Origin, Result};
pub use graph::{AttrValue, Attribute, Graph, Node, NodeId, Region, RegionId, Use, UseMap, Value, ValueDef, ValueId};
pub use infer::{InferError, InferOptions, InferReport, infer_graph_shapes, infer_shapes, record_value_info};
pub use model::Model;
pub use onnx::{ExternalDataPolicy, LoadOptions, SaveOptions, SaveReport, write_atomically};
pub use patch::{Anchor, PValue, Patch, PatchError, PatchSummary};
pub use tensor::Tensor;
pub use text::{TextError, graph_to_text, model_to_text};
pub use types::{Dim, Shape, TypeKind, ValueType};
pub use verify::{Problem, Problems, verify};
