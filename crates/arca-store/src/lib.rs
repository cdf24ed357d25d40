//! Storage: the `Store` trait every engine implements, and the engines.
//!
//! The trait speaks arca-core types only (names, ids, documents, `Scope`),
//! never SQL or BSON, so the HTTP layer is the same whatever the engine.
//! Each method says how it maps onto MongoDB, so that the MongoDB engine
//! fits the same trait without a redesign.

pub mod mongodb;
pub mod sqlite;

use arca_core::query::{Cursor, Filter, Sort};
use arca_core::{CollectionName, DocId, Document, DocumentText, IndexDef, Scope};
use serde_json::{Map, Value};

pub use sqlite::{SqliteOptions, SqliteStore};

/// Re-exported so engines and callers name query types from one place.
pub use arca_core::query;

/// A failure of a store operation.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// No such document within the scope.
    #[error("not found")]
    NotFound,
    /// The collection has no storage (deleted meanwhile).
    #[error("collection not found")]
    CollectionMissing,
    /// A duplicate `_id` or unique index value; names the fields.
    #[error("duplicate value for {0}")]
    Conflict(String),
    /// The stored revision is not the expected one.
    #[error("revision mismatch")]
    RevMismatch,
    /// A unique index cannot be added: existing documents hold duplicates.
    #[error("existing documents hold duplicate values for the unique index on {0}")]
    DuplicatesForUniqueIndex(String),
    /// A read ran past its time limit and was stopped.
    #[error("the query ran past its time limit")]
    Timeout,
    /// The engine is unavailable (disk full, I/O error, shutting down).
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A stored collection definition, as the catalogue keeps it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredCollection {
    /// The name.
    pub name: CollectionName,
    /// The JSON Schema as given.
    pub schema: Value,
    /// Declared indexes.
    pub indexes: Vec<IndexDef>,
    /// Access rules as given.
    pub access: Value,
    /// RFC 3339 UTC.
    pub created_at: String,
    /// RFC 3339 UTC.
    pub updated_at: String,
}

/// Whether `put_collection` created or updated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutOutcome {
    /// A new collection.
    Created,
    /// An existing collection was redefined.
    Updated,
}

/// A document to insert.
#[derive(Debug, Clone)]
pub struct NewDocument {
    /// Client-chosen id, or `None` for a generated one.
    pub id: Option<DocId>,
    /// The creator's `sub`.
    pub owner: String,
    /// User fields (already validated).
    pub body: Map<String, Value>,
}

/// A page of documents written as JSON (see `Store::find_page`).
#[derive(Debug, Clone, PartialEq)]
pub struct TextPage {
    /// The page's documents as JSON objects, comma-separated (no brackets).
    pub items: Vec<u8>,
    /// The page's last document, when more documents follow it.
    pub last: Option<DocumentText>,
}

/// Cuts a listing fetched with a look-ahead (`query.limit` of `page + 1`)
/// to its first `page` documents; returns the last one kept when more
/// followed it (a next page exists).
pub fn page_end<T>(docs: &mut Vec<T>, page: usize) -> Option<&T> {
    if docs.len() <= page {
        return None;
    }
    docs.truncate(page);
    docs.last()
}

impl TextPage {
    /// The first `page` of `docs`, and the last of those if `docs` holds
    /// more than `page`.
    pub fn of(mut docs: Vec<DocumentText>, page: usize) -> Self {
        let more = page_end(&mut docs, page).is_some();
        let mut items = Vec::with_capacity(docs.len() * 256);
        for (i, doc) in docs.iter().enumerate() {
            if i > 0 {
                items.push(b',');
            }
            doc.write_json(&mut items);
        }
        let last = if more { docs.pop() } else { None };
        Self { items, last }
    }
}

/// A listing: filter, order, position and size.
#[derive(Debug, Clone)]
pub struct Query {
    /// The client's filter (the scope's filter is applied on top).
    pub filter: Filter,
    /// The order (always completed by `_id` ascending).
    pub sort: Sort,
    /// Start strictly after this position.
    pub after: Option<Cursor>,
    /// At most this many documents.
    pub limit: usize,
}

/// The storage engine interface.
#[async_trait::async_trait]
pub trait Store: Send + Sync + 'static {
    /// Answers when the engine can serve (`/readyz`).
    /// MongoDB: `ping` command.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Every collection definition. MongoDB: a `_arca_collections` collection.
    async fn collections(&self) -> Result<Vec<StoredCollection>, StoreError>;

    /// Creates or redefines a collection and reconciles its indexes in one
    /// step: if a new unique index meets duplicates, nothing changes.
    /// MongoDB: `createCollection`/`collMod` with the `$jsonSchema`
    /// validator, `createIndexes` (each with `_tenant` first), `dropIndexes`.
    async fn put_collection(
        &self,
        name: &CollectionName,
        schema: &Value,
        indexes: &[IndexDef],
        access: &Value,
    ) -> Result<PutOutcome, StoreError>;

    /// Deletes a collection and all its documents; `false` if it did not
    /// exist. MongoDB: `drop` plus the catalogue entry.
    async fn delete_collection(&self, name: &CollectionName) -> Result<bool, StoreError>;

    /// Inserts a document in the scope's tenant with `_rev` 1.
    /// MongoDB: `insertOne` (duplicate key 11000 -> `Conflict`).
    async fn insert(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        doc: NewDocument,
    ) -> Result<Document, StoreError>;

    /// The document with `id` within the scope (tenant and row filter).
    /// MongoDB: `findOne({_tenant, _id, ...scope filter})`.
    async fn get(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<Document>, StoreError>;

    /// `get`, with the body as the stored JSON text, for reads that only
    /// pass the document on. Engines that store text override it to skip
    /// the parse; the default serializes what `get` returns.
    /// MongoDB: as `get` (BSON has no stored JSON text to pass on).
    async fn get_text(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
    ) -> Result<Option<DocumentText>, StoreError> {
        Ok(self
            .get(coll, scope, id)
            .await?
            .as_ref()
            .map(DocumentText::of))
    }

    /// Replaces the body of the document at `expected_rev` and bumps its
    /// revision, atomically: `RevMismatch` if it changed meanwhile,
    /// `NotFound` if it is gone. MongoDB: `findOneAndReplace({_tenant,
    /// _id, _rev: expected})`.
    async fn replace(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        expected_rev: u64,
        body: Map<String, Value>,
    ) -> Result<Document, StoreError>;

    /// Deletes the document (only at `expected_rev` when given).
    /// MongoDB: `deleteOne({_tenant, _id[, _rev]})`.
    async fn delete(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        expected_rev: Option<u64>,
    ) -> Result<(), StoreError>;

    /// Documents of the scope matching the query's filter, in its order,
    /// strictly after its cursor, at most `limit` of them.
    /// MongoDB: `find({$and: [{_tenant}, scope filter, filter, keyset
    /// condition on (sort fields, _id)]}).sort({...sort, _id: 1}).limit(n)`.
    async fn find(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<Document>, StoreError>;

    /// `find`, with each body as the stored JSON text, for listings sent
    /// without a projection. Engines that store text override it to parse
    /// only what the filter and sort read; the default serializes `find`.
    /// MongoDB: as `find`.
    async fn find_text(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
    ) -> Result<Vec<DocumentText>, StoreError> {
        let docs = self.find(coll, scope, query).await?;
        Ok(docs.iter().map(DocumentText::of).collect())
    }

    /// `find_text` written out for a response: the first `page` documents
    /// found, and the last of them when more follow (pass a `query.limit`
    /// of `page + 1` to learn that). Engines that read on threads of their
    /// own override it to write there, so the documents are freed where
    /// they were made. MongoDB: as `find`.
    async fn find_page(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
        page: usize,
    ) -> Result<TextPage, StoreError> {
        let docs = self.find_text(coll, scope, query).await?;
        Ok(TextPage::of(docs, page))
    }

    /// The number of documents of the scope matching `filter`.
    /// MongoDB: `countDocuments({$and: [{_tenant}, scope filter, filter]})`.
    async fn count(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use arca_core::SystemFields;

    fn text(id: &str) -> DocumentText {
        let system = SystemFields {
            id: DocId::parse(id).expect("id"),
            rev: 1,
            created_at: "2026-11-29T10:00:00.000Z".into(),
            updated_at: "2026-11-29T10:00:00.000Z".into(),
            owner: "u".into(),
        };
        DocumentText::new(system, format!("{{\"k\":\"{id}\"}}")).expect("object")
    }

    #[test]
    fn a_text_page_writes_its_documents_and_keeps_the_last_when_more_follow() {
        let docs = || vec![text("a"), text("b"), text("c")];
        let joined = |ids: &[&str]| {
            let parts: Vec<Vec<u8>> = ids.iter().map(|i| text(i).to_json_bytes()).collect();
            parts.join(&b","[..])
        };
        // More than a page: the look-ahead document is not written.
        let p = TextPage::of(docs(), 2);
        assert_eq!(p.items, joined(&["a", "b"]));
        assert_eq!(p.last, Some(text("b")));
        // Exactly a page, or less: nothing follows.
        let p = TextPage::of(docs(), 3);
        assert_eq!((p.items, p.last), (joined(&["a", "b", "c"]), None));
        let p = TextPage::of(docs(), 10);
        assert_eq!(p.last, None);
        let p = TextPage::of(Vec::new(), 2);
        assert_eq!((p.items, p.last), (Vec::new(), None));
    }
}
