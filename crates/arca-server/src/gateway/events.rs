//! Change events on the one road to the data. The event log is read here
//! for the whole collection (every tenant: the process's one reader of it
//! fans out to its subscribers), and what a subscriber may see of each
//! change is decided here too, by its `Grant<Read>`: the change's tenant
//! must be its own, and its read filter (claims substituted) is applied to
//! the document before and after the change, so a document moving out of
//! its scope is a deletion to it and one moving in a creation. Also here:
//! the wake-up a committed write gives the reader of its collection (so a
//! write through this process is delivered at once, not at the next poll),
//! and stream tickets (kept in the store, so any replica redeems them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arca_auth::Identity;
use arca_core::{CollectionName, DocId, Tenant};
use arca_store::{ChangeKind, Store, StoreError, StoredEvent, TicketRecord};
use base64::Engine as _;
use serde_json::{Map, Value, json};
use sha2::Digest;
use tokio::sync::Notify;

use super::Gateway;
use super::grant::{Grant, Read};
use crate::error::{ApiError, ProblemKind};

/// One change of a collection, as read from its log, shared by every
/// subscriber of this process. The documents are parsed at most once, and
/// only if some subscriber's read filter needs them.
#[derive(Debug)]
pub struct Change {
    seq: u64,
    kind: ChangeKind,
    tenant: String,
    id: Option<DocId>,
    before: Option<String>,
    after: Option<String>,
    before_value: OnceLock<Option<Value>>,
    after_value: OnceLock<Option<Value>>,
}

impl Change {
    /// The change of a log entry.
    pub fn of(e: StoredEvent) -> Self {
        Self {
            seq: e.seq,
            kind: e.kind,
            tenant: e.tenant,
            id: e.id,
            before: e.before,
            after: e.after,
            before_value: OnceLock::new(),
            after_value: OnceLock::new(),
        }
    }

    /// Its position in the collection's log.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// What the store recorded.
    pub fn kind(&self) -> ChangeKind {
        self.kind
    }

    /// The document's id (none for `Dropped`).
    pub fn id(&self) -> Option<&DocId> {
        self.id.as_ref()
    }

    /// The document after the change, as clients see it (JSON text).
    pub fn after_text(&self) -> Option<&str> {
        self.after.as_deref()
    }

    /// Whether a document of the change is large enough that parsing it
    /// belongs off the async workers.
    fn is_large(&self) -> bool {
        let len = |t: &Option<String>| t.as_ref().map_or(0, String::len);
        len(&self.before).max(len(&self.after)) > crate::gateway::limits::OFFLOAD_BYTES
    }

    /// Parses both documents now (see `EventLog::after`).
    fn parse_now(&self) {
        Self::parsed(&self.before_value, &self.before);
        Self::parsed(&self.after_value, &self.after);
    }

    fn parsed<'a>(cell: &'a OnceLock<Option<Value>>, text: &Option<String>) -> Option<&'a Value> {
        cell.get_or_init(|| {
            text.as_deref()
                .and_then(|t| serde_json::from_str::<Value>(t).ok())
        })
        .as_ref()
    }
}

/// What a subscriber sees of a change, after its scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// A document it can read appeared (created, or moved into its scope).
    Created,
    /// A document it could and can read changed.
    Updated,
    /// A document it could read is gone (deleted, or moved out of its
    /// scope).
    Deleted,
}

impl Grant<Read> {
    /// What the caller sees of `change`: nothing outside its tenant; else
    /// its read filter decides on the document before and after.
    pub fn sees(&self, change: &Change) -> Option<Seen> {
        if change.tenant != self.scope.tenant_key() {
            return None;
        }
        let filter = self.scope.filter();
        let inside = |cell: &OnceLock<Option<Value>>, text: &Option<String>| {
            text.is_some()
                && (filter.is_all()
                    || Change::parsed(cell, text).is_some_and(|d| filter.matches(d)))
        };
        let before = || inside(&change.before_value, &change.before);
        let after = || inside(&change.after_value, &change.after);
        match change.kind {
            ChangeKind::Created => after().then_some(Seen::Created),
            ChangeKind::Deleted => before().then_some(Seen::Deleted),
            ChangeKind::Updated => match (before(), after()) {
                (true, true) => Some(Seen::Updated),
                (false, true) => Some(Seen::Created),
                (true, false) => Some(Seen::Deleted),
                (false, false) => None,
            },
            ChangeKind::Dropped => None,
        }
    }

    /// The caller's identity (none without a token).
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.caller.as_ref()
    }
}

/// A page of a collection's log: its changes, and its floor (positions at
/// or below it are no longer kept).
pub struct LogPage {
    /// The changes after the position asked for, in order.
    pub changes: Vec<Change>,
    /// See `arca_store::EventPage::floor`.
    pub floor: u64,
}

/// The event log of every collection, unscoped: for this process's readers
/// of it (`events::hub`), which hand each change to subscribers through
/// their grants, never to a client directly.
#[derive(Clone)]
pub struct EventLog {
    store: Arc<dyn Store>,
}

impl EventLog {
    /// The collection's latest position.
    pub async fn head(&self, coll: &CollectionName) -> Result<u64, StoreError> {
        self.store.event_head(coll).await
    }

    /// At most `limit` changes after `after`, and the floor.
    pub async fn after(
        &self,
        coll: &CollectionName,
        after: u64,
        limit: usize,
    ) -> Result<LogPage, StoreError> {
        let mut page = self.store.events(coll, after, limit).await?;
        let dropped =
            |p: &arca_store::EventPage| p.events.iter().any(|e| e.kind == ChangeKind::Dropped);
        if page.floor > after && !dropped(&page) {
            // Entries were pruned, or the collection was deleted between
            // the two reads of the page: its `Dropped` entry, at the
            // floor, committed after the entries were read (or entries
            // below the floor, not yet deleted, filled the page). Read
            // again from the floor: a deletion must end the streams, not
            // reset them. The floor is read after the entries again, so a
            // prune in between is still seen.
            let again = self
                .store
                .events(coll, page.floor.saturating_sub(1).max(after), limit)
                .await?;
            if dropped(&again) {
                page = again;
            }
        }
        let changes: Vec<Change> = page.events.into_iter().map(Change::of).collect();
        let changes = if changes.iter().any(Change::is_large) {
            // Parsing a large document costs milliseconds: done here, on
            // the blocking pool, never on an async worker (what a
            // subscriber's filter reads is then ready).
            tokio::task::spawn_blocking(move || {
                for c in changes.iter().filter(|c| c.is_large()) {
                    c.parse_now();
                }
                changes
            })
            .await
            .map_err(|e| StoreError::Unavailable(format!("parsing events failed: {e}")))?
        } else {
            changes
        };
        Ok(LogPage {
            changes,
            floor: page.floor,
        })
    }

    /// Forgets what was written before `older_than_ms`, a bounded number
    /// of entries per call; how many went.
    pub async fn prune(&self, older_than_ms: u64, max: usize) -> Result<u64, StoreError> {
        self.store.prune_events(older_than_ms, max).await
    }

    /// Forgets the tickets expired by now.
    pub async fn prune_tickets(&self) -> Result<u64, StoreError> {
        self.store.prune_tickets(arca_store::now_ms()).await
    }
}

/// Wakes the reader of a collection when a write to it has committed
/// through this process.
#[derive(Default)]
pub struct Wakeups {
    watched: Mutex<HashMap<CollectionName, Arc<Notify>>>,
}

impl Wakeups {
    /// Tells the collection's reader, if it has one, that a write
    /// committed.
    pub fn wake(&self, coll: &CollectionName) {
        let watched = self.watched.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = watched.get(coll) {
            n.notify_one();
        }
    }

    /// What the collection's reader waits on.
    pub fn watch(&self, coll: &CollectionName) -> Arc<Notify> {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(coll.clone())
            .or_default()
            .clone()
    }

    /// The collection has no reader any more.
    pub fn unwatch(&self, coll: &CollectionName) {
        self.watched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(coll);
    }
}

/// Longest ticket text looked at (a ticket is 43 characters).
const MAX_TICKET_LEN: usize = 128;

fn bad_ticket(why: &str) -> ApiError {
    ApiError::invalid_token(why)
}

/// The SHA-256 of a ticket's text: what the store keeps.
fn ticket_hash(ticket: &str) -> [u8; 32] {
    sha2::Sha256::digest(ticket.as_bytes()).into()
}

/// The identity a ticket carries, as the store keeps it (its holder).
fn holder_json(id: Option<&Identity>) -> String {
    let identity = id.map(|i| {
        json!({
            "sub": i.sub,
            "roles": i.roles,
            "tenant": match &i.tenant { Tenant::None => Value::Null, Tenant::Id(t) => json!(t) },
            "claims": i.claims,
            "exp": i.expires_at,
        })
    });
    json!({ "identity": identity }).to_string()
}

/// The identity of a stored holder (`None`: a caller without a token).
fn holder_identity(text: &str) -> Result<Option<Identity>, ApiError> {
    let broken = || ApiError::internal("a stored ticket's holder does not parse");
    let v: Value = serde_json::from_str(text).map_err(|_| broken())?;
    let id = match v.get("identity") {
        None | Some(Value::Null) => return Ok(None),
        Some(id) => id,
    };
    let tenant = match id.get("tenant") {
        None | Some(Value::Null) => Tenant::None,
        Some(Value::String(t)) => Tenant::parse(t).map_err(|_| broken())?,
        Some(_) => return Err(broken()),
    };
    Ok(Some(Identity {
        sub: id
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(broken)?
            .to_owned(),
        roles: id
            .get("roles")
            .and_then(Value::as_array)
            .map(|r| {
                r.iter()
                    .filter_map(|x| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
        tenant,
        claims: id
            .get("claims")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_else(Map::new),
        expires_at: id.get("exp").and_then(Value::as_u64).unwrap_or(0),
    }))
}

impl Gateway {
    /// The event log, for this process's readers of it.
    pub fn event_log(&self) -> EventLog {
        EventLog {
            store: self.store.clone(),
        }
    }

    /// The wake-ups of committed writes.
    pub fn wakeups(&self) -> Arc<Wakeups> {
        self.shared.wakeups.clone()
    }

    /// A single-use ticket opening the grant's collection's stream as the
    /// grant's caller, valid for `ttl`: kept in the store by its hash, so
    /// any replica redeems it.
    pub async fn mint_ticket(
        &self,
        grant: &Grant<Read>,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        let secret: [u8; 32] = rand::random();
        let ticket = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        self.store
            .put_ticket(&TicketRecord {
                hash: ticket_hash(&ticket),
                coll: grant.collection().name.clone(),
                holder: holder_json(grant.identity().map(|i| i.as_ref())),
                expires_at_ms: arca_store::now_ms().saturating_add(ttl_ms),
            })
            .await?;
        Ok(ticket)
    }

    /// Takes the ticket (single use, whoever asks first) and returns the
    /// identity it was minted for (`None`: a caller without a token); 401
    /// when it is unknown, used, expired or for another collection.
    pub async fn redeem_ticket(
        &self,
        coll: &CollectionName,
        ticket: &str,
    ) -> Result<Option<Arc<Identity>>, ApiError> {
        if ticket.is_empty() || ticket.len() > MAX_TICKET_LEN {
            return Err(bad_ticket("unknown, used or expired ticket"));
        }
        let taken = self
            .store
            .take_ticket(&ticket_hash(ticket), arca_store::now_ms())
            .await?
            .ok_or_else(|| bad_ticket("unknown, used or expired ticket"))?;
        if &taken.coll != coll {
            return Err(bad_ticket("the ticket is for another collection"));
        }
        Ok(holder_identity(&taken.holder)?.map(Arc::new))
    }
}

/// 401 for a request that sent a ticket and a token of someone else.
pub fn other_identity() -> ApiError {
    ApiError::new(
        ProblemKind::Unauthorized,
        "the ticket was minted for another identity than the bearer token's",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_holder_round_trips_every_claim() {
        let mut claims = Map::new();
        claims.insert("sub".into(), json!("ana"));
        claims.insert("team".into(), json!({"id": 7}));
        let id = Identity {
            sub: "ana".into(),
            roles: vec!["editor".into()],
            tenant: Tenant::Id("acme".into()),
            claims,
            expires_at: 1_900_000_000,
        };
        let back = holder_identity(&holder_json(Some(&id))).expect("parses");
        assert_eq!(back, Some(id));
        assert_eq!(holder_identity(&holder_json(None)).expect("parses"), None);
        let untenanted = Identity {
            tenant: Tenant::None,
            ..back.expect("some")
        };
        assert_eq!(
            holder_identity(&holder_json(Some(&untenanted))).expect("parses"),
            Some(untenanted)
        );
    }
}
