//! Value types: tensors with symbolic shapes, and the container types ONNX allows.

use crate::dtype::DataType;
use std::fmt;

/// One dimension of a shape.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Dim {
    Known(i64),
    /// A named symbolic size (`batch`, `seq`); equal names are equal sizes.
    Sym(String),
    Unknown,
}

impl Dim {
    pub fn known(&self) -> Option<i64> {
        match self {
            Dim::Known(n) => Some(*n),
            _ => None,
        }
    }
}

impl From<i64> for Dim {
    fn from(n: i64) -> Self {
        Dim::Known(n)
    }
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Known(n) => write!(f, "{n}"),
            Dim::Sym(s) => f.write_str(s),
            Dim::Unknown => f.write_str("?"),
        }
    }
}

/// A tensor shape of known rank.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct Shape {
    pub dims: Vec<Dim>,
    /// Per-dimension denotations, kept only so a round trip loses nothing.
    pub denotations: Vec<Option<String>>,
}

impl Shape {
    pub fn new(dims: Vec<Dim>) -> Self {
        Shape { dims, denotations: Vec::new() }
    }

    pub fn known(dims: &[i64]) -> Self {
        Shape::new(dims.iter().map(|&d| Dim::Known(d)).collect())
    }

    pub fn rank(&self) -> usize {
        self.dims.len()
    }

    /// All dimensions as numbers, if every one is known.
    pub fn as_known(&self) -> Option<Vec<i64>> {
        self.dims.iter().map(Dim::known).collect()
    }

    /// The product of the dimensions, if all are known.
    pub fn element_count(&self) -> Option<i64> {
        self.as_known()?.iter().try_fold(1i64, |acc, &d| acc.checked_mul(d))
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.dims.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// The type of a value: what `TypeProto` can say, faithfully.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum TypeKind {
    /// `elem: None` means the proto left `elem_type` unset; `shape: None` means unknown rank.
    Tensor {
        elem: Option<DataType>,
        shape: Option<Shape>,
    },
    SparseTensor {
        elem: Option<DataType>,
        shape: Option<Shape>,
    },
    Sequence(Option<Box<ValueType>>),
    Map {
        key: Option<DataType>,
        value: Option<Box<ValueType>>,
    },
    Optional(Option<Box<ValueType>>),
    Opaque {
        domain: Option<String>,
        name: Option<String>,
    },
    /// A `TypeProto` with no kind set.
    Unset,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ValueType {
    pub kind: TypeKind,
    pub denotation: Option<String>,
}

impl ValueType {
    pub fn tensor(elem: DataType, shape: Option<Shape>) -> Self {
        ValueType { kind: TypeKind::Tensor { elem: Some(elem), shape }, denotation: None }
    }

    /// Element type, for a tensor.
    pub fn elem(&self) -> Option<DataType> {
        match &self.kind {
            TypeKind::Tensor { elem, .. } => *elem,
            _ => None,
        }
    }

    /// Shape, for a tensor of known rank.
    pub fn shape(&self) -> Option<&Shape> {
        match &self.kind {
            TypeKind::Tensor { shape, .. } => shape.as_ref(),
            _ => None,
        }
    }

    pub fn is_tensor(&self) -> bool {
        matches!(self.kind, TypeKind::Tensor { .. })
    }
}

impl fmt::Display for ValueType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn elem(e: &Option<DataType>) -> &'static str {
            e.map(|t| t.short_name()).unwrap_or("?")
        }
        fn inner(t: &Option<Box<ValueType>>) -> String {
            t.as_ref().map(|t| t.to_string()).unwrap_or_else(|| "?".into())
        }
        match &self.kind {
            TypeKind::Tensor { elem: e, shape } | TypeKind::SparseTensor { elem: e, shape } => {
                if matches!(self.kind, TypeKind::SparseTensor { .. }) {
                    f.write_str("sparse ")?;
                }
                f.write_str(elem(e))?;
                match shape {
                    Some(s) => write!(f, "{s}"),
                    None => f.write_str("[..]"),
                }
            }
            TypeKind::Sequence(t) => write!(f, "seq<{}>", inner(t)),
            TypeKind::Map { key, value } => write!(f, "map<{},{}>", elem(key), inner(value)),
            TypeKind::Optional(t) => write!(f, "opt<{}>", inner(t)),
            TypeKind::Opaque { domain, name } => write!(f, "opaque<{}:{}>", domain.as_deref().unwrap_or(""), name.as_deref().unwrap_or("")),
            TypeKind::Unset => f.write_str("?"),
        }
    }
}
