//! The query language: filters (parse and evaluate), sort order,
//! projections and pagination cursors, all with MongoDB's semantics over
//! JSON documents.

pub mod cursor;
pub mod eval;
pub mod filter;
pub mod index;
pub mod order;
pub mod projection;
pub mod sort;

pub use cursor::{Cursor, CursorError};
pub use filter::{Claims, Cond, FieldPath, Filter, FilterError, Node, ValueSet};
pub use projection::Projection;
pub use sort::{Sort, SortKey};
