//! The single writer of the embedded engine: one thread owns the write
//! connection and drains a queue of write operations. Operations that queue
//! up while a commit is running are committed together in one transaction
//! (group commit), each inside its own savepoint so one failure does not
//! undo its neighbours, and each caller is answered only after the commit
//! that holds its write has returned.
//!
//! A document write that carries its event (the store's event log is on)
//! appends the collection's next event log row last in its savepoint, so
//! the row commits exactly when the change does. Positions are per
//! collection: the writer holds the write lock for the whole batch, so the
//! latest position is read once per collection per batch (another process
//! on the file may have written between batches) and counted on from
//! there, which makes positions follow commit order.

use std::collections::HashMap;

use arca_core::{CollectionName, DocId, Document, IndexDef, SystemFields};
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};
use tokio::sync::{mpsc, oneshot};

use super::sql;
use crate::{
    ChangeKind, IdempotencyBegin, IdempotencyKey, PutOutcome, StoreError, StoredResponse,
    TicketRecord,
};

/// Most operations committed in one transaction.
const MAX_BATCH: usize = 256;

/// A write and where to send its result.
pub enum WriteOp {
    /// `event`: the document's JSON as clients see it, when the event log
    /// is on.
    Insert {
        coll: CollectionName,
        tenant: String,
        system: SystemFields,
        body: String,
        event: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// `event`: the new document's JSON as clients see it, when the event
    /// log is on (the old one is read here, in the same savepoint).
    Replace {
        coll: CollectionName,
        tenant: String,
        system: SystemFields,
        expected_rev: u64,
        body: String,
        event: Option<String>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// `log`: whether the event log is on.
    Delete {
        coll: CollectionName,
        tenant: String,
        id: DocId,
        expected_rev: Option<u64>,
        log: bool,
        reply: oneshot::Sender<Result<Document, StoreError>>,
    },
    PutCollection {
        name: CollectionName,
        record: String,
        indexes: Vec<IndexDef>,
        at: String,
        created_at: String,
        reply: oneshot::Sender<Result<PutOutcome, StoreError>>,
    },
    DeleteCollection {
        name: CollectionName,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// Any other write (files, thumbnails, secret rotation), run in its
    /// own savepoint like the others and answered after the commit.
    Job(Box<dyn Job>),
    /// Keeps `candidate` as the secret `name` unless one is kept already;
    /// answers the kept one.
    Secret {
        name: String,
        candidate: [u8; 32],
        reply: oneshot::Sender<Result<[u8; 32], StoreError>>,
    },
    /// Forgets event log rows written before `older_than_ms`, oldest
    /// first, at most `max`.
    PruneEvents {
        older_than_ms: u64,
        max: usize,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    PutTicket {
        ticket: TicketRecord,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    TakeTicket {
        hash: [u8; 32],
        now_ms: u64,
        reply: oneshot::Sender<Result<Option<TicketRecord>, StoreError>>,
    },
    PruneTickets {
        now_ms: u64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    /// `Store::idempotency_begin`.
    IdempotencyBegin {
        claim: OwnedClaim,
        reply: oneshot::Sender<Result<IdempotencyBegin, StoreError>>,
    },
    /// `Store::idempotency_finish`.
    IdempotencyFinish {
        key: IdempotencyKey,
        run: String,
        response: StoredResponse,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// `Store::idempotency_renew`.
    IdempotencyRenew {
        key: IdempotencyKey,
        run: String,
        lease_until: i64,
        reply: oneshot::Sender<Result<bool, StoreError>>,
    },
    /// `Store::idempotency_release`.
    IdempotencyRelease {
        key: IdempotencyKey,
        run: String,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    /// `Store::idempotency_purge`.
    IdempotencyPurge {
        now: i64,
        limit: i64,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
}

/// An `IdempotencyClaim` that can cross to the writer thread.
pub struct OwnedClaim {
    pub key: IdempotencyKey,
    pub fingerprint: String,
    pub run: String,
    pub now: i64,
    pub lease_until: i64,
    pub expires_at: i64,
}

/// A write given as a function of the connection (`WriteOp::Job`).
pub trait Job: Send {
    /// Runs the write; whether it succeeded (else its savepoint is rolled
    /// back), and how to answer once the commit is known.
    fn run(self: Box<Self>, conn: &Connection) -> (Done, bool);
    /// Answers `err` without running (the batch could not begin).
    fn fail(self: Box<Self>, err: &StoreError) -> Done;
}

/// A `Job` answering the `Result<T>` of `f`.
pub struct TypedJob<T, F> {
    /// The write.
    pub f: F,
    /// Where its result goes.
    pub reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(self: Box<Self>, conn: &Connection) -> (Done, bool) {
        let r = (self.f)(conn);
        let ok = r.is_ok();
        let reply = self.reply;
        let answer = move |failed: Option<&StoreError>| {
            let _ = reply.send(failed.cloned().map_or(r, Err));
        };
        (Done::Any(Box::new(answer)), ok)
    }

    fn fail(self: Box<Self>, err: &StoreError) -> Done {
        let _ = self.reply.send(Err(err.clone()));
        Done::Any(Box::new(|_| {}))
    }
}

/// How a `Job` answers once its batch's commit is known (the commit's
/// error, if it failed).
pub type Answer = Box<dyn FnOnce(Option<&StoreError>) + Send>;
/// The latest event log position of each collection written in this
/// batch (see the module comment).
#[derive(Default)]
struct Positions(HashMap<String, u64>);

/// A finished operation waiting for its batch's commit.
pub enum Done {
    /// A `Job`'s answer, given whether the commit failed.
    Any(Answer),
    Doc(
        oneshot::Sender<Result<Document, StoreError>>,
        Result<Document, StoreError>,
    ),
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Put(
        oneshot::Sender<Result<PutOutcome, StoreError>>,
        Result<PutOutcome, StoreError>,
    ),
    Bool(
        oneshot::Sender<Result<bool, StoreError>>,
        Result<bool, StoreError>,
    ),
    Key(
        oneshot::Sender<Result<[u8; 32], StoreError>>,
        Result<[u8; 32], StoreError>,
    ),
    Begin(
        oneshot::Sender<Result<IdempotencyBegin, StoreError>>,
        Result<IdempotencyBegin, StoreError>,
    ),
    Count(
        oneshot::Sender<Result<u64, StoreError>>,
        Result<u64, StoreError>,
    ),
    Ticket(
        oneshot::Sender<Result<Option<TicketRecord>, StoreError>>,
        Result<Option<TicketRecord>, StoreError>,
    ),
}

impl Done {
    /// Sends the result, or `err` instead when the commit failed.
    fn send(self, commit_failed: Option<&StoreError>) {
        match self {
            Done::Doc(tx, r) => drop(tx.send(commit_failed.cloned().map_or(r, Err))),
            Done::Unit(tx, r) => drop(tx.send(commit_failed.cloned().map_or(r, Err))),
            Done::Put(tx, r) => drop(tx.send(commit_failed.cloned().map_or(r, Err))),
            Done::Bool(tx, r) => drop(tx.send(commit_failed.cloned().map_or(r, Err))),
            Done::Key(tx, r) => drop(tx.send(commit_failed.cloned().map_or(r, Err))),
            Done::Any(answer) => answer(commit_failed),
            Done::Begin(tx, r) => drop(tx.send(commit_failed.cloned().map_or(r, Err))),
            Done::Count(tx, r) => drop(tx.send(commit_failed.cloned().map_or(r, Err))),
            Done::Ticket(tx, r) => drop(tx.send(commit_failed.cloned().map_or(r, Err))),
        }
    }
}

/// Maps a SQLite error; constraint violations become `Conflict`.
pub fn map_err(e: rusqlite::Error) -> StoreError {
    if let rusqlite::Error::SqliteFailure(f, msg) = &e
        && f.code == ErrorCode::ConstraintViolation
    {
        let m = msg.as_deref().unwrap_or_default();
        return StoreError::Conflict(if m.contains(".id") {
            "_id".into()
        } else {
            m.into()
        });
    }
    if let rusqlite::Error::SqliteFailure(f, _) = &e
        && f.code == ErrorCode::OperationInterrupted
    {
        return StoreError::Timeout;
    }
    if e.to_string().contains("no such table") {
        return StoreError::CollectionMissing;
    }
    StoreError::Unavailable(e.to_string())
}

/// Runs the writer loop until every sender is dropped.
pub fn run(mut conn: Connection, mut rx: mpsc::Receiver<WriteOp>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut batch);
    }
    checkpoint(&conn);
}

/// Folds the whole WAL into the database file and empties it (the store
/// is closing: every write it acknowledged is committed by now).
fn checkpoint(conn: &Connection) {
    let done = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
        row.get::<_, i64>(0)
    });
    match done {
        Ok(0) => {}
        // A reader was still inside a read: the WAL stays, and SQLite
        // replays it on the next open (nothing is lost).
        Ok(_) => tracing::warn!("closing: the WAL was not fully folded back (a read was running)"),
        Err(e) => tracing::warn!(error = %e, "closing: the final WAL checkpoint failed"),
    }
}

fn commit_batch(conn: &mut Connection, batch: &mut Vec<WriteOp>) {
    let mut done = Vec::with_capacity(batch.len());
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let err = map_err(e);
        for op in batch.drain(..) {
            fail(op, &err).send(None);
        }
        return;
    }
    let mut positions = Positions::default();
    for op in batch.drain(..) {
        done.push(apply_in_savepoint(conn, &mut positions, op));
    }
    let commit = conn.execute_batch("COMMIT").map_err(map_err).err();
    if commit.is_some() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    for d in done {
        d.send(commit.as_ref());
    }
}

fn fail(op: WriteOp, err: &StoreError) -> Done {
    match op {
        WriteOp::Insert { reply, .. }
        | WriteOp::Replace { reply, .. }
        | WriteOp::PutTicket { reply, .. } => Done::Unit(reply, Err(err.clone())),
        WriteOp::Delete { reply, .. } => Done::Doc(reply, Err(err.clone())),
        WriteOp::PutCollection { reply, .. } => Done::Put(reply, Err(err.clone())),
        WriteOp::DeleteCollection { reply, .. } => Done::Bool(reply, Err(err.clone())),
        WriteOp::Secret { reply, .. } => Done::Key(reply, Err(err.clone())),
        WriteOp::Job(job) => job.fail(err),
        WriteOp::PruneEvents { reply, .. } | WriteOp::PruneTickets { reply, .. } => {
            Done::Count(reply, Err(err.clone()))
        }
        WriteOp::TakeTicket { reply, .. } => Done::Ticket(reply, Err(err.clone())),
        WriteOp::IdempotencyBegin { reply, .. } => Done::Begin(reply, Err(err.clone())),
        WriteOp::IdempotencyFinish { reply, .. } => Done::Bool(reply, Err(err.clone())),
        WriteOp::IdempotencyRenew { reply, .. } => Done::Bool(reply, Err(err.clone())),
        WriteOp::IdempotencyRelease { reply, .. } => Done::Unit(reply, Err(err.clone())),
        WriteOp::IdempotencyPurge { reply, .. } => Done::Count(reply, Err(err.clone())),
    }
}

fn apply_in_savepoint(conn: &Connection, positions: &mut Positions, op: WriteOp) -> Done {
    if let Err(e) = conn.execute_batch("SAVEPOINT op") {
        return fail(op, &map_err(e));
    }
    let (done, ok) = apply(conn, positions, op);
    if !ok {
        let _ = conn.execute_batch("ROLLBACK TO op");
    }
    let _ = conn.execute_batch("RELEASE op");
    done
}

/// Applies one operation; the flag says whether it succeeded (else its
/// savepoint is rolled back).
fn apply(conn: &Connection, positions: &mut Positions, op: WriteOp) -> (Done, bool) {
    match op {
        WriteOp::Insert {
            coll,
            tenant,
            system,
            body,
            event,
            reply,
        } => {
            let r = insert(conn, &coll, &tenant, &system, &body).and_then(|()| match event {
                Some(after) => log_event(
                    conn,
                    positions,
                    &coll,
                    Entry {
                        kind: ChangeKind::Created,
                        tenant: &tenant,
                        id: Some(&system.id),
                        before: None,
                        after: Some(&after),
                    },
                ),
                None => Ok(()),
            });
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        WriteOp::Replace {
            coll,
            tenant,
            system,
            expected_rev,
            body,
            event,
            reply,
        } => {
            let r = match event {
                None => replace(conn, &coll, &tenant, &system, expected_rev, &body),
                Some(after) => replace_logged(
                    conn,
                    positions,
                    (&coll, &tenant),
                    &system,
                    expected_rev,
                    &body,
                    &after,
                ),
            };
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        WriteOp::Delete {
            coll,
            tenant,
            id,
            expected_rev,
            log,
            reply,
        } => {
            let r =
                delete(conn, &coll, &tenant, &id, expected_rev, log).and_then(|(doc, before)| {
                    if let Some(before) = before {
                        log_event(
                            conn,
                            positions,
                            &coll,
                            Entry {
                                kind: ChangeKind::Deleted,
                                tenant: &tenant,
                                id: Some(&id),
                                before: Some(&before),
                                after: None,
                            },
                        )?;
                    }
                    Ok(doc)
                });
            let ok = r.is_ok();
            (Done::Doc(reply, r), ok)
        }
        WriteOp::PutCollection {
            name,
            record,
            indexes,
            at,
            created_at,
            reply,
        } => {
            let r = put_collection(conn, &name, &record, &indexes, &at, &created_at);
            let ok = r.is_ok();
            (Done::Put(reply, r), ok)
        }
        WriteOp::DeleteCollection { name, reply } => {
            let r = delete_collection(conn, positions, &name);
            let ok = r.is_ok();
            (Done::Bool(reply, r), ok)
        }
        WriteOp::Job(job) => job.run(conn),
        WriteOp::PruneEvents {
            older_than_ms,
            max,
            reply,
        } => {
            let r = prune_events(conn, older_than_ms, max);
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
        WriteOp::PutTicket { ticket, reply } => {
            let r = put_ticket(conn, &ticket);
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        WriteOp::TakeTicket {
            hash,
            now_ms,
            reply,
        } => {
            let r = take_ticket(conn, &hash, now_ms);
            let ok = r.is_ok();
            (Done::Ticket(reply, r), ok)
        }
        WriteOp::PruneTickets { now_ms, reply } => {
            let r = conn
                .prepare_cached("DELETE FROM _arca_tickets WHERE expires_at <= ?1")
                .and_then(|mut st| st.execute(params![ms_param(now_ms)]))
                .map(|n| n as u64)
                .map_err(map_err);
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
        WriteOp::Secret {
            name,
            candidate,
            reply,
        } => {
            let r = secret(conn, &name, &candidate);
            let ok = r.is_ok();
            (Done::Key(reply, r), ok)
        }
        WriteOp::IdempotencyBegin { claim, reply } => {
            let r = idempotency::begin(conn, &claim);
            let ok = r.is_ok();
            (Done::Begin(reply, r), ok)
        }
        WriteOp::IdempotencyFinish {
            key,
            run,
            response,
            reply,
        } => {
            let r = idempotency::finish(conn, &key, &run, &response);
            let ok = r.is_ok();
            (Done::Bool(reply, r), ok)
        }
        WriteOp::IdempotencyRenew {
            key,
            run,
            lease_until,
            reply,
        } => {
            let r = idempotency::renew(conn, &key, &run, lease_until);
            let ok = r.is_ok();
            (Done::Bool(reply, r), ok)
        }
        WriteOp::IdempotencyRelease { key, run, reply } => {
            let r = idempotency::release(conn, &key, &run);
            let ok = r.is_ok();
            (Done::Unit(reply, r), ok)
        }
        WriteOp::IdempotencyPurge { now, limit, reply } => {
            let r = idempotency::purge(conn, now, limit);
            let ok = r.is_ok();
            (Done::Count(reply, r), ok)
        }
    }
}

/// Rewrites a unique-index `Conflict` that names SQLite's index into one that
/// names the declared fields.
fn name_conflict(conn: &Connection, coll: &CollectionName, err: StoreError) -> StoreError {
    let StoreError::Conflict(msg) = &err else {
        return err;
    };
    let Some(ix) = msg
        .split("index '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
    else {
        return err;
    };
    let def: Option<String> = conn
        .query_row(
            "SELECT def FROM _arca_collections WHERE name = ?1",
            params![coll.as_str()],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten();
    let indexes = def
        .and_then(|d| serde_json::from_str::<super::CollectionRecord>(&d).ok())
        .map(|r| r.indexes)
        .unwrap_or_default();
    match indexes.iter().find(|d| sql::index_name(coll, d) == ix) {
        Some(d) => StoreError::Conflict(
            d.fields
                .iter()
                .map(|(p, _)| p.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        None => StoreError::Conflict("a unique index".into()),
    }
}

fn insert(
    conn: &Connection,
    coll: &CollectionName,
    tenant: &str,
    system: &SystemFields,
    body: &str,
) -> Result<(), StoreError> {
    super::unique::check(conn, coll, tenant, system, body)?;
    let sql = format!(
        "INSERT INTO {} (tenant, id, rev, created_at, updated_at, owner, doc) VALUES (?1, ?2, ?3, ?4, ?5, ?6, jsonb(?7))",
        sql::table(coll)
    );
    conn.prepare_cached(&sql)
        .and_then(|mut st| {
            st.execute(params![
                tenant,
                system.id.as_str(),
                rev_param(system.rev),
                system.created_at,
                system.updated_at,
                system.owner,
                body
            ])
        })
        .map_err(|e| name_conflict(conn, coll, map_err(e)))?;
    Ok(())
}

/// A revision as SQLite's signed integer (revisions never get near 2^63).
fn rev_param(rev: u64) -> i64 {
    i64::try_from(rev).unwrap_or(i64::MAX)
}

fn replace(
    conn: &Connection,
    coll: &CollectionName,
    tenant: &str,
    system: &SystemFields,
    expected_rev: u64,
    body: &str,
) -> Result<(), StoreError> {
    super::unique::check(conn, coll, tenant, system, body)?;
    let sql = format!(
        "UPDATE {} SET doc = jsonb(?1), rev = ?2, updated_at = ?3 WHERE tenant = ?4 AND id = ?5 AND rev = ?6",
        sql::table(coll)
    );
    let id = system.id.as_str();
    let n = conn
        .prepare_cached(&sql)
        .and_then(|mut st| {
            st.execute(params![
                body,
                rev_param(system.rev),
                system.updated_at,
                tenant,
                id,
                rev_param(expected_rev)
            ])
        })
        .map_err(|e| name_conflict(conn, coll, map_err(e)))?;
    if n == 1 {
        Ok(())
    } else {
        Err(missing_or_moved(conn, coll, tenant, &system.id)?)
    }
}

/// After a conditional write matched nothing: `NotFound` or `RevMismatch`.
fn missing_or_moved(
    conn: &Connection,
    coll: &CollectionName,
    tenant: &str,
    id: &DocId,
) -> Result<StoreError, StoreError> {
    let sql = format!(
        "SELECT 1 FROM {} WHERE tenant = ?1 AND id = ?2",
        sql::table(coll)
    );
    let exists = conn
        .prepare_cached(&sql)
        .and_then(|mut st| st.exists(params![tenant, id.as_str()]))
        .map_err(map_err)?;
    Ok(if exists {
        StoreError::RevMismatch
    } else {
        StoreError::NotFound
    })
}

/// Deletes the document; returns it, and when `log`, its JSON as clients
/// see it (for the event log).
fn delete(
    conn: &Connection,
    coll: &CollectionName,
    tenant: &str,
    id: &DocId,
    expected_rev: Option<u64>,
    log: bool,
) -> Result<(Document, Option<String>), StoreError> {
    let sql = format!(
        "DELETE FROM {} WHERE tenant = ?1 AND id = ?2 AND (?3 IS NULL OR rev = ?3) RETURNING {}",
        sql::table(coll),
        sql::DOC_COLUMNS
    );
    let removed = conn
        .prepare_cached(&sql)
        .and_then(|mut st| {
            st.query_row(
                params![tenant, id.as_str(), expected_rev.map(rev_param)],
                |row| Ok((sql::decode_system(row)?, row.get::<_, String>(5)?)),
            )
            .optional()
        })
        .map_err(map_err)?;
    let Some((system, body)) = removed else {
        return Err(missing_or_moved(conn, coll, tenant, id)?);
    };
    let system = system?;
    let json = match log {
        true => Some(crate::document_json(&system, body.clone()).ok_or_else(|| {
            StoreError::Unavailable("a stored document is not a JSON object".into())
        })?),
        false => None,
    };
    let body = match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) | Err(_) => serde_json::Map::new(),
    };
    Ok((Document { system, body }, json))
}

/// `replace` that also logs the change: the stored document (at
/// `expected_rev`) is read first, in the same savepoint, as the entry's
/// `before`.
fn replace_logged(
    conn: &Connection,
    positions: &mut Positions,
    (coll, tenant): (&CollectionName, &str),
    system: &SystemFields,
    expected_rev: u64,
    body: &str,
    after: &str,
) -> Result<(), StoreError> {
    let sql = format!(
        "SELECT {} FROM {} WHERE tenant = ?1 AND id = ?2 AND rev = ?3",
        sql::DOC_COLUMNS,
        sql::table(coll)
    );
    let stored = conn
        .prepare_cached(&sql)
        .and_then(|mut st| {
            st.query_row(
                params![tenant, system.id.as_str(), rev_param(expected_rev)],
                |row| Ok((sql::decode_system(row)?, row.get::<_, String>(5)?)),
            )
            .optional()
        })
        .map_err(map_err)?;
    let Some((old_system, old_body)) = stored else {
        return Err(missing_or_moved(conn, coll, tenant, &system.id)?);
    };
    let before = crate::document_json(&old_system?, old_body)
        .ok_or_else(|| StoreError::Unavailable("a stored document is not a JSON object".into()))?;
    replace(conn, coll, tenant, system, expected_rev, body)?;
    log_event(
        conn,
        positions,
        coll,
        Entry {
            kind: ChangeKind::Updated,
            tenant,
            id: Some(&system.id),
            before: Some(&before),
            after: Some(after),
        },
    )
}

/// An event log row to append.
struct Entry<'a> {
    kind: ChangeKind,
    tenant: &'a str,
    id: Option<&'a DocId>,
    before: Option<&'a str>,
    after: Option<&'a str>,
}

/// A time or position as SQLite's signed integer.
fn ms_param(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The collection's latest position (its newest row or its floor).
fn latest_position(conn: &Connection, coll: &str) -> Result<u64, StoreError> {
    let newest: Option<i64> = conn
        .prepare_cached("SELECT max(seq) FROM _arca_events WHERE coll = ?1")
        .and_then(|mut st| st.query_row(params![coll], |r| r.get(0)))
        .map_err(map_err)?;
    let floor: Option<i64> = conn
        .prepare_cached("SELECT seq FROM _arca_event_floors WHERE coll = ?1")
        .and_then(|mut st| st.query_row(params![coll], |r| r.get(0)).optional())
        .map_err(map_err)?;
    let n = newest.unwrap_or(0).max(floor.unwrap_or(0));
    Ok(u64::try_from(n).unwrap_or(0))
}

/// Appends `entry` at the collection's next position; its position. The
/// last statement of its operation, so the batch's count moves only when
/// the row is in.
fn log_event(
    conn: &Connection,
    positions: &mut Positions,
    coll: &CollectionName,
    entry: Entry<'_>,
) -> Result<(), StoreError> {
    append(conn, positions, coll.as_str(), entry).map(|_| ())
}

fn append(
    conn: &Connection,
    positions: &mut Positions,
    coll: &str,
    entry: Entry<'_>,
) -> Result<u64, StoreError> {
    let latest = match positions.0.get(coll) {
        Some(n) => *n,
        None => latest_position(conn, coll)?,
    };
    let seq = latest + 1;
    conn.prepare_cached(
        "INSERT INTO _arca_events (coll, seq, kind, tenant, id, before, after, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            coll,
            ms_param(seq),
            entry.kind.code(),
            entry.tenant,
            entry.id.map(DocId::as_str),
            entry.before,
            entry.after,
            ms_param(crate::now_ms()),
        ])
    })
    .map_err(map_err)?;
    positions.0.insert(coll.to_owned(), seq);
    Ok(seq)
}

/// Raises the collection's floor to `seq` (never lowers it).
fn raise_floor(conn: &Connection, coll: &str, seq: u64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO _arca_event_floors (coll, seq) VALUES (?1, ?2)
         ON CONFLICT (coll) DO UPDATE SET seq = max(seq, excluded.seq)",
    )
    .and_then(|mut st| st.execute(params![coll, ms_param(seq)]))
    .map_err(map_err)?;
    Ok(())
}

/// Per collection (every defined one, and every one with a floor: a
/// deleted collection's `Dropped` row), the oldest rows written before
/// `older_than_ms` while no younger row precedes them; at most `max` rows.
fn prune_events(conn: &Connection, older_than_ms: u64, max: usize) -> Result<u64, StoreError> {
    let colls: Vec<String> = conn
        .prepare("SELECT name FROM _arca_collections UNION SELECT coll FROM _arca_event_floors")
        .and_then(|mut st| st.query_map([], |r| r.get::<_, String>(0))?.collect())
        .map_err(map_err)?;
    let mut pruned = 0u64;
    for coll in colls {
        let room = max.saturating_sub(usize::try_from(pruned).unwrap_or(usize::MAX));
        if room == 0 {
            break;
        }
        let mut last = None;
        {
            let mut st = conn
                .prepare_cached(
                    "SELECT seq, at FROM _arca_events WHERE coll = ?1 ORDER BY seq LIMIT ?2",
                )
                .map_err(map_err)?;
            let mut rows = st
                .query(params![coll, ms_param(room as u64)])
                .map_err(map_err)?;
            while let Some(row) = rows.next().map_err(map_err)? {
                let (seq, at): (i64, i64) =
                    (row.get(0).map_err(map_err)?, row.get(1).map_err(map_err)?);
                if at >= ms_param(older_than_ms) {
                    break;
                }
                last = Some(seq);
            }
        }
        let Some(last) = last else { continue };
        raise_floor(conn, &coll, u64::try_from(last).unwrap_or(0))?;
        let n = conn
            .prepare_cached("DELETE FROM _arca_events WHERE coll = ?1 AND seq <= ?2")
            .and_then(|mut st| st.execute(params![coll, last]))
            .map_err(map_err)?;
        pruned += n as u64;
    }
    Ok(pruned)
}

fn put_ticket(conn: &Connection, t: &TicketRecord) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO _arca_tickets (hash, coll, holder, expires_at) VALUES (?1, ?2, ?3, ?4)",
    )
    .and_then(|mut st| {
        st.execute(params![
            t.hash.as_slice(),
            t.coll.as_str(),
            t.holder,
            ms_param(t.expires_at_ms)
        ])
    })
    .map_err(map_err)?;
    Ok(())
}

fn take_ticket(
    conn: &Connection,
    hash: &[u8; 32],
    now_ms: u64,
) -> Result<Option<TicketRecord>, StoreError> {
    let taken = conn
        .prepare_cached(
            "DELETE FROM _arca_tickets WHERE hash = ?1 RETURNING coll, holder, expires_at",
        )
        .and_then(|mut st| {
            st.query_row(params![hash.as_slice()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()
        })
        .map_err(map_err)?;
    let Some((coll, holder, expires_at)) = taken else {
        return Ok(None);
    };
    let expires_at_ms = u64::try_from(expires_at).unwrap_or(0);
    if expires_at_ms <= now_ms {
        return Ok(None);
    }
    let coll = CollectionName::parse(&coll)
        .map_err(|_| StoreError::Unavailable(format!("a stored ticket names {coll:?}")))?;
    Ok(Some(TicketRecord {
        hash: *hash,
        coll,
        holder,
        expires_at_ms,
    }))
}

/// Moves the catalogue generation on (in the transaction of the change),
/// so every process on the file learns that definitions changed.
fn bump_catalog_generation(conn: &Connection) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO _arca_meta (key, value) VALUES ('catalog_generation', 1)
         ON CONFLICT (key) DO UPDATE SET value = value + 1",
    )
    .and_then(|mut st| st.execute([]))
    .map_err(map_err)?;
    Ok(())
}

fn put_collection(
    conn: &Connection,
    name: &CollectionName,
    record: &str,
    indexes: &[IndexDef],
    ts: &str,
    created_at: &str,
) -> Result<PutOutcome, StoreError> {
    let existed = conn
        .prepare_cached("SELECT 1 FROM _arca_collections WHERE name = ?1")
        .and_then(|mut st| st.exists(params![name.as_str()]))
        .map_err(map_err)?;
    conn.execute(
        "INSERT INTO _arca_collections (name, def, created_at, updated_at) VALUES (?1, ?2, ?4, ?3)
         ON CONFLICT (name) DO UPDATE SET def = excluded.def, updated_at = excluded.updated_at",
        params![name.as_str(), record, ts, created_at],
    )
    .map_err(map_err)?;
    conn.execute_batch(&sql::create_table(name))
        .map_err(map_err)?;
    // Reconcile indexes: drop those no longer wanted, create the new ones.
    let wanted = sql::desired_indexes(name, indexes);
    let existing: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND tbl_name = ?1")
        .and_then(|mut st| {
            st.query_map(params![format!("c_{}", name.as_str())], |r| {
                r.get::<_, String>(0)
            })?
            .collect()
        })
        .map_err(map_err)?;
    for ix in existing.iter().filter(|n| !n.starts_with("sqlite_")) {
        if !wanted.iter().any(|(w, _)| w == ix) {
            conn.execute_batch(&format!("DROP INDEX IF EXISTS \"{ix}\""))
                .map_err(map_err)?;
        }
    }
    for (ix_name, ddl) in &wanted {
        if let Err(e) = conn.execute_batch(ddl) {
            let def = indexes
                .iter()
                .find(|d| &sql::index_name(name, d) == ix_name);
            return Err(match (map_err(e), def) {
                (StoreError::Conflict(_), Some(def)) => StoreError::DuplicatesForUniqueIndex(
                    def.fields
                        .iter()
                        .map(|(p, _)| p.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                (other, _) => other,
            });
        }
    }
    // What SQLite's unique indexes cannot see: keys shared through arrays.
    for def in indexes.iter().filter(|d| d.unique) {
        if super::unique::existing_conflict(conn, name, def)? {
            return Err(StoreError::DuplicatesForUniqueIndex(
                def.fields
                    .iter()
                    .map(|(p, _)| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
    }
    bump_catalog_generation(conn)?;
    Ok(if existed {
        PutOutcome::Updated
    } else {
        PutOutcome::Created
    })
}

/// Deletes the definition and the table; the collection's event log ends
/// with a `Dropped` row, its floor raised to it and every row before it
/// deleted (so a stream resuming from before the deletion gets a reset).
fn delete_collection(
    conn: &Connection,
    positions: &mut Positions,
    name: &CollectionName,
) -> Result<bool, StoreError> {
    let n = conn
        .execute(
            "DELETE FROM _arca_collections WHERE name = ?1",
            params![name.as_str()],
        )
        .map_err(map_err)?;
    conn.execute_batch(&format!("DROP TABLE IF EXISTS {}", sql::table(name)))
        .map_err(map_err)?;
    bump_catalog_generation(conn)?;
    if n == 1 {
        let seq = append(
            conn,
            positions,
            name.as_str(),
            Entry {
                kind: ChangeKind::Dropped,
                tenant: "",
                id: None,
                before: None,
                after: None,
            },
        )?;
        raise_floor(conn, name.as_str(), seq)?;
        conn.prepare_cached("DELETE FROM _arca_events WHERE coll = ?1 AND seq < ?2")
            .and_then(|mut st| st.execute(params![name.as_str(), ms_param(seq)]))
            .map_err(map_err)?;
    }
    Ok(n == 1)
}

pub fn secret(conn: &Connection, name: &str, candidate: &[u8; 32]) -> Result<[u8; 32], StoreError> {
    conn.prepare_cached("INSERT OR IGNORE INTO _arca_secrets (name, value) VALUES (?1, ?2)")
        .and_then(|mut st| st.execute(params![name, candidate.as_slice()]))
        .map_err(map_err)?;
    let kept: Vec<u8> = conn
        .prepare_cached("SELECT value FROM _arca_secrets WHERE name = ?1")
        .and_then(|mut st| st.query_row(params![name], |r| r.get(0)))
        .map_err(map_err)?;
    kept.try_into()
        .map_err(|_| StoreError::Unavailable(format!("the secret {name:?} is not 32 bytes")))
}

/// The idempotency records (`_arca_idempotency`), written on the writer
/// thread: each operation is one savepoint of a write transaction, which
/// SQLite serializes with every other process's writes on the file, so a
/// claim is atomic across replicas.
mod idempotency {
    use rusqlite::{Connection, OptionalExtension, params};

    use super::{OwnedClaim, map_err};
    use crate::{IdempotencyBegin, IdempotencyKey, StoreError, StoredResponse};

    /// What a record holds, as read.
    struct Record {
        fingerprint: String,
        run: String,
        lease_until: i64,
        expires_at: i64,
        status: Option<i64>,
        headers: Option<String>,
        body: Option<Vec<u8>>,
    }

    pub fn begin(conn: &Connection, claim: &OwnedClaim) -> Result<IdempotencyBegin, StoreError> {
        let k = &claim.key;
        let found = conn
            .prepare_cached(
                "SELECT fingerprint, run, lease_until, expires_at, status, headers, body
                 FROM _arca_idempotency WHERE tenant = ?1 AND subject = ?2 AND key = ?3",
            )
            .and_then(|mut st| {
                st.query_row(params![k.tenant, k.subject, k.key], |r| {
                    Ok(Record {
                        fingerprint: r.get(0)?,
                        run: r.get(1)?,
                        lease_until: r.get(2)?,
                        expires_at: r.get(3)?,
                        status: r.get(4)?,
                        headers: r.get(5)?,
                        body: r.get(6)?,
                    })
                })
                .optional()
            })
            .map_err(map_err)?;
        let Some(rec) = found.filter(|r| r.expires_at > claim.now) else {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO _arca_idempotency
                 (tenant, subject, key, fingerprint, run, lease_until, expires_at, status, headers, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, NULL)",
            )
            .and_then(|mut st| {
                st.execute(params![
                    k.tenant,
                    k.subject,
                    k.key,
                    claim.fingerprint,
                    claim.run,
                    claim.lease_until,
                    claim.expires_at
                ])
            })
            .map_err(map_err)?;
            return Ok(IdempotencyBegin::Started);
        };
        if rec.fingerprint != claim.fingerprint {
            return Ok(IdempotencyBegin::Mismatch);
        }
        if let Some(status) = rec.status {
            let headers: Vec<(String, String)> = rec
                .headers
                .as_deref()
                .map(serde_json::from_str)
                .transpose()
                .map_err(|e| StoreError::Unavailable(format!("a kept response's headers: {e}")))?
                .unwrap_or_default();
            return Ok(IdempotencyBegin::Done(StoredResponse {
                status: u16::try_from(status).unwrap_or(500),
                headers,
                body: rec.body.unwrap_or_default(),
            }));
        }
        if rec.lease_until > claim.now {
            return Ok(IdempotencyBegin::Running);
        }
        // The run that held it stopped without an answer: this one takes it.
        conn.prepare_cached(
            "UPDATE _arca_idempotency SET run = ?4, lease_until = ?5
             WHERE tenant = ?1 AND subject = ?2 AND key = ?3 AND run = ?6 AND status IS NULL",
        )
        .and_then(|mut st| {
            st.execute(params![
                k.tenant,
                k.subject,
                k.key,
                claim.run,
                claim.lease_until,
                rec.run
            ])
        })
        .map_err(map_err)?;
        Ok(IdempotencyBegin::Started)
    }

    pub fn finish(
        conn: &Connection,
        key: &IdempotencyKey,
        run: &str,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let headers = serde_json::to_string(&response.headers)
            .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        let n = conn
            .prepare_cached(
                "UPDATE _arca_idempotency SET status = ?5, headers = ?6, body = ?7
                 WHERE tenant = ?1 AND subject = ?2 AND key = ?3 AND run = ?4 AND status IS NULL",
            )
            .and_then(|mut st| {
                st.execute(params![
                    key.tenant,
                    key.subject,
                    key.key,
                    run,
                    i64::from(response.status),
                    headers,
                    response.body
                ])
            })
            .map_err(map_err)?;
        Ok(n == 1)
    }

    pub fn renew(
        conn: &Connection,
        key: &IdempotencyKey,
        run: &str,
        lease_until: i64,
    ) -> Result<bool, StoreError> {
        let n = conn
            .prepare_cached(
                "UPDATE _arca_idempotency SET lease_until = ?5
                 WHERE tenant = ?1 AND subject = ?2 AND key = ?3 AND run = ?4 AND status IS NULL",
            )
            .and_then(|mut st| {
                st.execute(params![key.tenant, key.subject, key.key, run, lease_until])
            })
            .map_err(map_err)?;
        Ok(n == 1)
    }

    pub fn release(conn: &Connection, key: &IdempotencyKey, run: &str) -> Result<(), StoreError> {
        conn.prepare_cached(
            "DELETE FROM _arca_idempotency
             WHERE tenant = ?1 AND subject = ?2 AND key = ?3 AND run = ?4 AND status IS NULL",
        )
        .and_then(|mut st| st.execute(params![key.tenant, key.subject, key.key, run]))
        .map_err(map_err)?;
        Ok(())
    }

    pub fn purge(conn: &Connection, now: i64, limit: i64) -> Result<u64, StoreError> {
        let n = conn
            .prepare_cached(
                "DELETE FROM _arca_idempotency WHERE rowid IN
                 (SELECT rowid FROM _arca_idempotency WHERE expires_at <= ?1 LIMIT ?2)",
            )
            .and_then(|mut st| st.execute(params![now, limit]))
            .map_err(map_err)?;
        Ok(n as u64)
    }
}
