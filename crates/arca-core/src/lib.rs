//! Arca's domain, free of I/O: names and ids, collection definitions, JSON
//! Schema compilation and validation, document preparation (system fields,
//! merge patch, number checks), the query language, aggregation pipelines
//! (parsed and evaluated) and the `Scope` every store call carries.
//!
//! Nothing here touches the network, the disk or a runtime: this is the crate
//! that both storage engines share and that property tests and fuzzers drive.

pub mod collection;
pub mod document;
pub mod duration;
pub mod name;
pub mod number;
pub mod pipeline;
pub mod query;
pub mod schema;
pub mod scope;

pub use collection::{Access, AccessRule, Action, CollectionDef, DefinitionError, IndexDef};
pub use document::{
    ClientBody, Document, DocumentError, DocumentText, SystemFields, body_text, merge_patch,
    parse_body_fields, split_client_body,
};
pub use duration::HumanDuration;
pub use name::{CollectionName, DocId, FileId, NameError, Tenant};
pub use schema::{DocumentSchema, FieldError, SchemaError, Validation};
pub use scope::Scope;
