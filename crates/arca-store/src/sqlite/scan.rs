//! Listings and scans of the embedded engine: which SQL selects the
//! candidate rows of a query (through an index where `plan` finds one),
//! how rows are decoded (whole, or only the fields a filter and sort read),
//! and how a page is cut: in `_id` order a scan stops at the page's end;
//! in another order a bounded heap keeps the best `limit` matches. The
//! reference evaluator in arca-core decides every match.

use std::sync::Arc;

use arca_core::query::{Filter, Node, Sort, SortKey};
use arca_core::{CollectionName, DocId, Document, DocumentText, Scope};
use rusqlite::types::Value as Sql;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

use super::writer::map_err;
use super::{SqliteStore, plan, sql};
use crate::{PageBudget, Query, StoreError, trim_to_budget};

/// The two statements of an ordered equality page (see `ordered_sql`).
pub type OrderedSql = Arc<(String, String)>;

/// The two `_id`-ordered scans of an equality on `path`: by the expression
/// index (`tenant`, value, `id` bound as ?1, ?2, ?3), and by the "array on
/// this path" index (`tenant`, `id` as ?1, ?2).
pub(super) fn ordered_sql(coll: &CollectionName, path: &str) -> (String, String) {
    let t = sql::table(coll);
    (
        format!(
            "SELECT {} FROM {t} WHERE tenant = ?1 AND {} = ?2 AND id > ?3 ORDER BY id",
            sql::DOC_COLUMNS,
            sql::field_expr(path)
        ),
        format!(
            "SELECT {} FROM {t} WHERE tenant = ?1 AND {} AND id > ?2 ORDER BY id",
            sql::DOC_COLUMNS,
            sql::path_has_array(path)
        ),
    )
}

impl SqliteStore {
    /// `EXPLAIN QUERY PLAN` of the queries `find` runs for `filter` in
    /// `_id` order (for tests and diagnostics), one line per plan step.
    pub async fn explain(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
    ) -> Result<Vec<String>, StoreError> {
        let tenant = Sql::Text(scope.tenant_key().to_owned());
        let queries: Vec<(String, Vec<Sql>)> =
            match plan::prefer_ordered(filter, &self.indexed_paths(coll)) {
                Some((path, value)) => {
                    let (a, b) = ordered_sql(coll, &path);
                    vec![
                        (a, vec![tenant.clone(), value, Sql::Text(String::new())]),
                        (b, vec![tenant, Sql::Text(String::new())]),
                    ]
                }
                None => vec![self.candidate_sql(coll, scope, filter, None)],
            };
        self.read(move |c| {
            let mut out = Vec::new();
            for (sql, params) in queries {
                let mut st = c
                    .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
                    .map_err(map_err)?;
                let rows = st
                    .query_map(params_from_iter(params.iter()), |r| r.get::<_, String>(3))
                    .map_err(map_err)?;
                for r in rows {
                    out.push(r.map_err(map_err)?);
                }
            }
            Ok(out)
        })
        .await
    }

    /// The SQL that selects candidate rows for `filter` within the scope's
    /// tenant, in `_id` order, optionally after an `_id`.
    pub(super) fn candidate_sql(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        filter: &Filter,
        after_id: Option<&str>,
    ) -> (String, Vec<Sql>) {
        let table = sql::table(coll);
        let tenant = scope.tenant_key();
        let mut sql = format!("SELECT {} FROM {table} WHERE tenant = ?", sql::DOC_COLUMNS);
        let mut params = vec![Sql::Text(tenant.to_owned())];
        if let Some(p) = plan::prefilter(filter, &table, tenant, &self.indexed_paths(coll)) {
            if p.condition.starts_with("rowid IN") {
                // The index scans inside the subquery drive; `+` keeps SQLite
                // from scanning the tenant's rows instead (the tenant is
                // still checked here and inside the subquery).
                sql = format!("SELECT {} FROM {table} WHERE +tenant = ?", sql::DOC_COLUMNS);
            }
            sql.push_str(" AND ");
            sql.push_str(&p.condition);
            params.extend(p.params);
        }
        if let Some(id) = after_id {
            sql.push_str(" AND id > ?");
            params.push(Sql::Text(id.to_owned()));
        }
        sql.push_str(" ORDER BY id");
        (sql, params)
    }

    /// `find`, decoding bodies as `body` says.
    pub(super) async fn find_found<R: Send + 'static>(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        query: &Query,
        body: Body,
        finish: impl FnOnce(Vec<Found>) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let filter = scope.filter().clone().and(query.filter.clone());
        if matches!(filter.root(), Node::Nothing) || query.limit == 0 {
            return finish(Vec::new());
        }
        let (sort, limit, after) = (query.sort.clone(), query.limit, query.after.clone());
        let max_bytes = query.max_bytes;
        let by_id = sort.is_by_id();
        if by_id
            && let Some((path, value)) = plan::prefer_ordered(&filter, &self.indexed_paths(coll))
        {
            // Equality on an indexed path in `_id` order: two index scans
            // already in `_id` order, merged; a page costs its own size.
            let sql = self.ordered_sql_of(coll, path);
            let tenant = scope.tenant_key().to_owned();
            let after_id = after.map(|c| c.id).unwrap_or_default();
            return self
                .read(move |c| {
                    let pa = [
                        Sql::Text(tenant.clone()),
                        value,
                        Sql::Text(after_id.clone()),
                    ];
                    let pb = [Sql::Text(tenant), Sql::Text(after_id)];
                    let (a, b) = &*sql;
                    let page = (limit, max_bytes);
                    merged_scan(c, (a, &pa), (b, &pb), &filter, &body, page).and_then(finish)
                })
                .await;
        }
        let (sql, params) = self.candidate_sql(
            coll,
            scope,
            &filter,
            if by_id {
                after.as_ref().map(|c| c.id.as_str())
            } else {
                None
            },
        );
        self.read(move |c| {
            if by_id {
                // Candidates arrive in `_id` order: stop at the page's end
                // (its count, or its bytes).
                let mut out = Vec::with_capacity(limit.min(64));
                let mut budget = PageBudget::new(max_bytes);
                scan(c, &sql, &params, &filter, &body, |doc| {
                    let more = budget.take(doc.bytes);
                    out.push(doc);
                    out.len() < limit && more
                })?;
                return finish(out);
            }
            // Another order: every match is keyed in Rust and only the best
            // `limit` are kept (a bounded heap: memory stays O(limit), and
            // O(max_bytes) in bytes, however large the collection).
            let mut best: std::collections::BinaryHeap<Ranked<'_>> =
                std::collections::BinaryHeap::new();
            let mut held = 0usize;
            let cursor = after
                .as_ref()
                .map(|c| (SortKey(c.key.clone()), c.id.clone()));
            scan(c, &sql, &params, &filter, &body, |doc| {
                let key = sort.key_document(&doc.doc);
                let past_cursor = cursor.as_ref().is_none_or(|(k, id)| {
                    sort.compare(&key, doc.doc.system.id.as_str(), k, id)
                        == std::cmp::Ordering::Greater
                });
                if past_cursor {
                    let entry = Ranked {
                        key,
                        doc,
                        sort: &sort,
                    };
                    if best.len() < limit || best.peek().is_some_and(|worst| entry < *worst) {
                        held += entry.doc.bytes;
                        best.push(entry);
                        if best.len() > limit
                            && let Some(worst) = best.pop()
                        {
                            held -= worst.doc.bytes;
                        }
                        if let Some(max) = max_bytes {
                            trim_to_budget(&mut best, &mut held, max, |r| r.doc.bytes);
                        }
                    }
                }
                true
            })?;
            finish(best.into_sorted_vec().into_iter().map(|r| r.doc).collect())
        })
        .await
    }

    /// `ordered_sql` of `coll` and `path`, from the cache.
    fn ordered_sql_of(&self, coll: &CollectionName, path: String) -> OrderedSql {
        let key = (coll.clone(), path);
        if let Some(sql) = self.ordered.read().ok().and_then(|m| m.get(&key).cloned()) {
            return sql;
        }
        let sql = Arc::new(ordered_sql(&key.0, &key.1));
        if let Ok(mut m) = self.ordered.write() {
            m.insert(key, sql.clone());
        }
        sql
    }

    /// Reads the row of `id` in the scope's tenant and decodes it.
    pub(super) async fn point_read<T: Send + 'static>(
        &self,
        coll: &CollectionName,
        scope: &Scope,
        id: &DocId,
        decode: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
    ) -> Result<Option<T>, StoreError> {
        let sql = format!(
            "SELECT {} FROM {} WHERE tenant = ?1 AND id = ?2",
            sql::DOC_COLUMNS,
            sql::table(coll)
        );
        let (tenant, id) = (scope.tenant_key().to_owned(), id.clone());
        self.read_point(move |c| {
            let row = c
                .prepare_cached(&sql)
                .and_then(|mut st| {
                    st.query_row(params![tenant, id.as_str()], decode)
                        .optional()
                })
                .map_err(map_err)?;
            row.transpose()
        })
        .await
    }
}

/// `Body::Fields` of what `filters` and `sort` read: only those top-level
/// fields are parsed.
pub(super) fn fields_read(filters: &[&Filter], sort: Option<&Sort>) -> Body {
    let mut keys = Vec::new();
    for f in filters {
        f.top_level_fields(&mut keys);
    }
    if let Some(sort) = sort {
        sort.top_level_fields(&mut keys);
    }
    Body::Fields(keys.into_iter().map(str::to_owned).collect())
}

/// What a text listing of `query` in `scope` parses.
pub(super) fn text_body(scope: &Scope, query: &Query) -> Body {
    fields_read(&[scope.filter(), &query.filter], Some(&query.sort))
}

/// Found rows read with `Body::Fields` as documents with their texts.
pub(super) fn texts(found: Vec<Found>) -> Result<Vec<DocumentText>, StoreError> {
    found
        .into_iter()
        .map(|f| sql::document_text(f.doc.system, f.text.unwrap_or_default()))
        .collect()
}

/// Merges two `_id`-ordered candidate streams (a document in both counts
/// once), keeps what the evaluator accepts, stops at `limit`.
pub(super) fn merged_scan(
    c: &Connection,
    (a_sql, a_params): (&str, &[Sql]),
    (b_sql, b_params): (&str, &[Sql]),
    filter: &Filter,
    body: &Body,
    (limit, max_bytes): (usize, Option<usize>),
) -> Result<Vec<Found>, StoreError> {
    let mut sa = c.prepare_cached(a_sql).map_err(map_err)?;
    let mut sb = c.prepare_cached(b_sql).map_err(map_err)?;
    let mut ra = sa
        .query(params_from_iter(a_params.iter()))
        .map_err(map_err)?;
    let mut rb = sb
        .query(params_from_iter(b_params.iter()))
        .map_err(map_err)?;
    let next = |rows: &mut rusqlite::Rows<'_>| -> Result<Option<Found>, StoreError> {
        match rows.next().map_err(map_err)? {
            Some(row) => Ok(Some(body.decode(row).map_err(map_err)??)),
            None => Ok(None),
        }
    };
    let (mut na, mut nb) = (next(&mut ra)?, next(&mut rb)?);
    let mut out = Vec::with_capacity(limit.min(64));
    let mut budget = PageBudget::new(max_bytes);
    loop {
        let doc = match (na.take(), nb.take()) {
            (None, None) => break,
            (Some(x), None) => {
                na = next(&mut ra)?;
                x
            }
            (None, Some(y)) => {
                nb = next(&mut rb)?;
                y
            }
            (Some(x), Some(y)) => match x.doc.system.id.cmp(&y.doc.system.id) {
                std::cmp::Ordering::Less => {
                    nb = Some(y);
                    na = next(&mut ra)?;
                    x
                }
                std::cmp::Ordering::Greater => {
                    na = Some(x);
                    nb = next(&mut rb)?;
                    y
                }
                std::cmp::Ordering::Equal => {
                    na = next(&mut ra)?;
                    nb = next(&mut rb)?;
                    x
                }
            },
        };
        if filter.matches_document(&doc.doc) {
            let more = budget.take(doc.bytes);
            out.push(doc);
            if out.len() == limit || !more {
                break;
            }
        }
    }
    Ok(out)
}

/// A document ranked by a sort order (for the bounded top-`limit` heap:
/// the heap's greatest element is the worst of the kept ones).
struct Ranked<'a> {
    key: SortKey,
    doc: Found,
    sort: &'a arca_core::query::Sort,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.sort.compare(
            &self.key,
            self.doc.doc.system.id.as_str(),
            &other.key,
            other.doc.doc.system.id.as_str(),
        )
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

/// Streams candidate rows and hands those the evaluator accepts to `keep`;
/// stops as soon as `keep` returns false.
pub(super) fn scan(
    c: &Connection,
    sql: &str,
    params: &[Sql],
    filter: &Filter,
    body: &Body,
    mut keep: impl FnMut(Found) -> bool,
) -> Result<(), StoreError> {
    let mut st = c.prepare_cached(sql).map_err(map_err)?;
    let mut rows = st.query(params_from_iter(params.iter())).map_err(map_err)?;
    while let Some(row) = rows.next().map_err(map_err)? {
        let found = body.decode(row).map_err(map_err)??;
        if filter.matches_document(&found.doc) && !keep(found) {
            break;
        }
    }
    Ok(())
}

/// How a listing decodes the bodies of the rows it reads.
#[derive(Debug, Clone)]
pub(super) enum Body {
    /// Parse the whole body.
    Full,
    /// Parse only these top-level fields (what the filter and the sort
    /// read) and keep the stored text for the response.
    Fields(Vec<String>),
}

/// A row a listing kept: the document (whole or partial, see `Body`) and,
/// with `Body::Fields`, its stored text.
pub(super) struct Found {
    pub(super) doc: Document,
    pub(super) text: Option<String>,
    /// Its size as JSON (`arca_core::document::json_len`: what a page's
    /// byte budget counts).
    pub(super) bytes: usize,
}

impl Body {
    fn decode(&self, row: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Found, StoreError>> {
        match self {
            Body::Full => {
                let body_len = row.get_ref(5)?.as_bytes()?.len();
                Ok(sql::decode_document(row)?.map(|doc| Found {
                    bytes: arca_core::document::json_len(&doc.system, body_len),
                    doc,
                    text: None,
                }))
            }
            Body::Fields(keys) => {
                let text: String = row.get(5)?;
                let body = arca_core::parse_body_fields(&text, keys).unwrap_or_default();
                let body_len = text.len();
                Ok(sql::decode_system(row)?.map(|system| Found {
                    bytes: arca_core::document::json_len(&system, body_len),
                    doc: Document { system, body },
                    text: Some(text),
                }))
            }
        }
    }
}
