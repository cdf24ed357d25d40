//! The MongoDB engine's pure translation layer: arca-core values, filters,
//! sorts, projections and schemas turned into BSON for the official
//! `mongodb` driver, and stored BSON documents read back. Nothing here does
//! I/O; the engine that talks to the server builds on these functions.
//!
//! - `value`: JSON <-> BSON with number kinds kept, and the stored layout
//!   `{_id: {t, i}, _tenant, _rev, _created_at, _updated_at, _owner, ...}`.
//! - `filter`: `Filter` -> a BSON filter that matches a superset of what the
//!   reference evaluator matches, with an `exact` flag; sort and projection
//!   documents.
//! - `schema`: a collection's JSON Schema -> a `$jsonSchema` validator.
//! - `pipeline`: a scoped aggregation `Pipeline` -> the BSON pipeline sent
//!   (tenant and read filters first, in every `$lookup` too, and the
//!   client view before any user stage).
//! - `files`: GridFS (bucket `files`) for file bytes and metadata, and the
//!   thumbnail cache.

mod engine;
mod files;
pub mod filter;
pub mod pipeline;
pub mod schema;
pub mod value;

pub use engine::{MongoOptions, MongoStore};

/// The BSON crate the driver is built with (bson 3, through the driver's
/// `bson-3` feature), re-exported so callers name one version.
pub use mongodb::bson;
