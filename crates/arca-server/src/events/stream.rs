//! One subscriber's stream: the `text/event-stream` body of
//! `GET /v1/collections/{name}/events`.
//!
//! It catches up from the store first (from `Last-Event-ID`, page by page,
//! as fast as the client reads: a resume far back costs no memory), then
//! joins its collection's tail in this process and follows it, skipping
//! what it already sent (positions only grow), so every change after the
//! id it resumed from comes exactly once. Each change passes through the
//! subscriber's `Grant<Read>` (tenant, read filter on the document before
//! and after); when the collection definitions change, the grant is made
//! again, so the rules in force at delivery apply (a caller who lost the
//! read role, or a deleted collection, ends the stream).
//!
//! It ends when the caller's token expires (`exp` plus `auth.leeway`: the
//! client reconnects with a new token and `Last-Event-ID`), when the
//! collection is deleted, at shutdown, and after a `reset` when it fell a
//! whole ring behind its tail (a slow client: memory stays bounded) or the
//! changes it needed were pruned. A comment line every `events.keepalive`
//! keeps proxies from closing an idle stream; the first bytes carry
//! `retry:` (the reconnection delay).

use std::pin::Pin;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arca_core::CollectionName;
use arca_store::ChangeKind;
use axum::body::Bytes;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio::sync::{broadcast, watch};
use tokio::time::{Instant, Interval, Sleep};

use super::hub::{Feed, Place};
use crate::gateway::{Caller, Change, Grant, Read, Seen};
use crate::state::AppState;

/// Changes read from the store per page while catching up.
const CATCH_UP_PAGE: usize = 500;

/// A chunk handed to the connection holds about this much at most (more
/// changes wait for the next one).
const CHUNK_BYTES: usize = 64 << 10;

/// Appends an SSE field; a value holding line breaks (never the case for
/// the JSON sent here, which escapes them) is split over several lines of
/// the same field, as the format wants.
fn field(out: &mut Vec<u8>, name: &str, value: &str) {
    let value = value.replace("\r\n", "\n");
    for line in value.split(['\n', '\r']) {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
}

/// Appends one event: `id`, `event`, `data`, and the blank line.
pub fn write_event(out: &mut Vec<u8>, id: u64, event: &str, data: &str) {
    field(out, "id", &id.to_string());
    field(out, "event", event);
    field(out, "data", data);
    out.push(b'\n');
}

/// Appends the event a subscriber gets for `change`, as it sees it: the
/// document for `created` and `updated`, `{"_id"}` for `deleted`.
pub fn write_change(out: &mut Vec<u8>, change: &Change, seen: Seen) {
    let id = change.id().map(|i| i.as_str()).unwrap_or_default();
    match seen {
        Seen::Created | Seen::Updated => {
            let name = if seen == Seen::Created {
                "created"
            } else {
                "updated"
            };
            write_event(out, change.seq(), name, change.after_text().unwrap_or("{}"));
        }
        Seen::Deleted => {
            let data = serde_json::json!({ "_id": id }).to_string();
            write_event(out, change.seq(), "deleted", &data);
        }
    }
}

/// Why a stream is reset.
#[derive(Debug, Clone, Copy)]
pub enum ResetReason {
    /// The `Last-Event-ID` (or the stream's position) is no longer kept.
    Expired,
    /// The subscriber fell a whole buffer behind.
    Slow,
}

impl ResetReason {
    fn label(self) -> &'static str {
        match self {
            ResetReason::Expired => "expired",
            ResetReason::Slow => "slow",
        }
    }
}

/// Appends a `reset` event whose id is where following resumes.
pub fn write_reset(out: &mut Vec<u8>, id: u64, why: ResetReason) {
    metrics::counter!("arca_event_resets_total", "reason" => why.label()).increment(1);
    let data = serde_json::json!({ "reason": why.label() }).to_string();
    write_event(out, id, "reset", &data);
}

/// Where a subscriber is.
enum Mode {
    /// Reading the store; once caught up, it joins the tail. With a feed
    /// already joined, it reads up to `until` (the tail's position when
    /// it joined) and then follows the feed.
    CatchUp {
        joined: Option<(broadcast::Receiver<Feed>, u64)>,
    },
    /// Following the tail.
    Live(broadcast::Receiver<Feed>),
    /// Over.
    Done,
}

/// One subscriber.
pub struct Subscriber {
    state: AppState,
    caller: Caller,
    coll: CollectionName,
    grant: Grant<Read>,
    /// The catalogue version the grant was made for.
    catalog: u64,
    /// The last position handled (sent, or not seen by this caller).
    pos: u64,
    mode: Mode,
    out: Vec<u8>,
    expiry: Option<Pin<Box<Sleep>>>,
    keepalive: Interval,
    shutdown: watch::Receiver<bool>,
    _place: Place,
}

/// When a token of `exp` (seconds since the epoch) stops being accepted.
fn expiry_of(exp: u64, leeway: Duration) -> Option<Instant> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
    let until = Duration::from_secs(exp)
        .checked_add(leeway)?
        .saturating_sub(now);
    Instant::now().checked_add(until)
}

/// How a stream starts.
pub struct Start {
    /// The caller (its identity from a token or a ticket).
    pub caller: Caller,
    /// Its grant on the collection.
    pub grant: Grant<Read>,
    /// The position to follow from.
    pub pos: u64,
    /// Send `reset` first (the resume point is no longer kept), with
    /// `pos` as its id.
    pub reset: bool,
    /// The place in the count of open streams.
    pub place: Place,
}

impl Subscriber {
    /// A subscriber of the grant's collection.
    pub fn new(state: AppState, start: Start) -> Self {
        let cfg = &state.config().events;
        let leeway = state.config().auth.leeway.0;
        let mut out = Vec::with_capacity(256);
        // The reconnection delay, and bytes at once: some clients (and
        // proxies) wait for the first body bytes before reporting a stream
        // open.
        out.extend_from_slice(format!("retry: {}\n\n", cfg.retry.0.as_millis()).as_bytes());
        if start.reset {
            write_reset(&mut out, start.pos, ResetReason::Expired);
        }
        let expiry = start
            .caller
            .identity
            .as_ref()
            .and_then(|id| expiry_of(id.expires_at, leeway))
            .map(|at| Box::pin(tokio::time::sleep_until(at)));
        let period = cfg.keepalive.0;
        let keepalive = tokio::time::interval_at(Instant::now() + period, period);
        let shutdown = state.shutdown_signal();
        let catalog = state.gateway().catalog_version();
        Self {
            coll: start.grant.collection().name.clone(),
            catalog,
            caller: start.caller,
            grant: start.grant,
            pos: start.pos,
            mode: Mode::CatchUp { joined: None },
            out,
            expiry,
            keepalive,
            shutdown,
            _place: start.place,
            state,
        }
    }

    /// The stream's next bytes, or `None` when it is over.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            if !self.out.is_empty() {
                let chunk = std::mem::take(&mut self.out);
                return Some(Bytes::from(chunk));
            }
            let expired = self.expiry.as_ref().is_some_and(|s| s.is_elapsed());
            if expired || *self.shutdown.borrow() {
                self.mode = Mode::Done;
            }
            match std::mem::replace(&mut self.mode, Mode::Done) {
                Mode::Done => return None,
                Mode::CatchUp { joined } => self.catch_up(joined).await,
                Mode::Live(rx) => self.follow(rx).await,
            }
        }
    }

    /// Makes the grant again if the collection definitions changed since
    /// it was made; `false` when the caller may no longer read (or the
    /// collection is gone): the stream ends.
    fn grant_holds(&mut self) -> bool {
        let gateway = self.state.gateway();
        let version = gateway.catalog_version();
        if version == self.catalog {
            return true;
        }
        let renewed = gateway
            .collection(&self.coll)
            .and_then(|c| gateway.authorize::<Read>(&self.caller, &c));
        match renewed {
            Ok(grant) => {
                self.grant = grant;
                self.catalog = version;
                true
            }
            Err(_) => false,
        }
    }

    /// Sends `change` as the caller sees it (maybe nothing), from a frame
    /// made once for all subscribers when there is one.
    fn deliver(&mut self, change: &Change, shared: Option<&super::hub::Item>) {
        self.pos = change.seq();
        if let Some(seen) = self.grant.sees(change) {
            let before = self.out.len();
            match shared {
                Some(item) => self.out.extend_from_slice(&item.frame(seen)),
                None => write_change(&mut self.out, change, seen),
            }
            if self.out.len() > before {
                metrics::counter!("arca_events_sent_total").increment(1);
            }
        }
    }

    /// One page of catching up from the store; joins the tail once the
    /// store has nothing more.
    async fn catch_up(&mut self, joined: Option<(broadcast::Receiver<Feed>, u64)>) {
        if !self.grant_holds() {
            return;
        }
        let log = self.state.events().log().clone();
        let page = match log.after(&self.coll, self.pos, CATCH_UP_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                // The client reconnects (`retry`) with its last id.
                tracing::warn!(collection = %self.coll, error = %e, "a stream could not read the event log; closing it");
                return;
            }
        };
        if page.floor > self.pos {
            // The collection was deleted (the drop is in the page): the
            // stream ends.
            if page.changes.iter().any(|c| c.kind() == ChangeKind::Dropped) {
                return;
            }
            // What this stream needed was pruned while it caught up (a
            // resume point checked at the start can be pruned before the
            // first page is read): `reset`, then it follows from the head,
            // like a stream that starts with `reset` (the client refetches,
            // which covers everything up to the head).
            let head = log.head(&self.coll).await.unwrap_or(page.floor);
            write_reset(&mut self.out, head, ResetReason::Expired);
            self.pos = head.max(page.floor);
            self.mode = Mode::CatchUp { joined };
            return;
        }
        let full = page.changes.len() == CATCH_UP_PAGE;
        for change in &page.changes {
            if change.kind() == ChangeKind::Dropped {
                return;
            }
            self.deliver(change, None);
        }
        self.mode = match joined {
            Some((rx, until)) if self.pos >= until => Mode::Live(rx),
            Some(joined) => Mode::CatchUp {
                joined: Some(joined),
            },
            None if full => Mode::CatchUp { joined: None },
            None => {
                let j = self.state.events().join(&self.coll, self.pos);
                if j.last > self.pos {
                    Mode::CatchUp {
                        joined: Some((j.rx, j.last)),
                    }
                } else {
                    Mode::Live(j.rx)
                }
            }
        };
    }

    /// Handles one item of the feed; `false` when the stream ends.
    fn handle(&mut self, got: Result<Feed, RecvError>) -> bool {
        match got {
            Ok(Feed::Change(item)) => {
                if item.change.seq() > self.pos {
                    self.deliver(&item.change, Some(&item));
                }
                true
            }
            Ok(Feed::Gap { floor }) if floor > self.pos => {
                // Changes this process had not handed on yet were pruned
                // (it stalled longer than `events.retention`): `reset`,
                // and the stream goes on from the floor, as the tail does.
                write_reset(&mut self.out, floor, ResetReason::Expired);
                self.pos = floor;
                true
            }
            Ok(Feed::Gap { .. }) => true,
            Ok(Feed::Dropped { seq }) => seq <= self.pos,
            Err(RecvError::Lagged(_)) => {
                let at = self.state.events().position(&self.coll).unwrap_or(self.pos);
                write_reset(&mut self.out, at, ResetReason::Slow);
                false
            }
            Err(RecvError::Closed) => false,
        }
    }

    /// Follows the tail until there is something to send, the keep-alive
    /// is due, or the stream ends.
    async fn follow(&mut self, mut rx: broadcast::Receiver<Feed>) {
        let Self {
            expiry,
            shutdown,
            keepalive,
            ..
        } = self;
        let expired = async {
            match expiry.as_mut() {
                Some(sleep) => sleep.await,
                None => std::future::pending().await,
            }
        };
        let got = tokio::select! {
            biased;
            _ = shutdown.wait_for(|down| *down) => return,
            () = expired => return,
            got = rx.recv() => Some(got),
            _ = keepalive.tick() => None,
        };
        let Some(got) = got else {
            self.out.extend_from_slice(b": keep-alive\n\n");
            self.mode = Mode::Live(rx);
            return;
        };
        if !self.grant_holds() {
            return;
        }
        if !self.handle(got) {
            return;
        }
        // Whatever else is ready goes in the same chunk.
        while self.out.len() < CHUNK_BYTES {
            match rx.try_recv() {
                Ok(feed) => {
                    if !self.handle(Ok(feed)) {
                        return;
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(n)) => {
                    if !self.handle(Err(RecvError::Lagged(n))) {
                        return;
                    }
                }
                Err(TryRecvError::Closed) => return,
            }
        }
        self.mode = Mode::Live(rx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_framed_as_the_format_wants() {
        let mut out = Vec::new();
        write_event(&mut out, 7, "created", "{\"_id\":\"a\"}");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "id: 7\nevent: created\ndata: {\"_id\":\"a\"}\n\n"
        );
        let mut out = Vec::new();
        write_event(&mut out, 8, "x", "a\nb\r\nc");
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "id: 8\nevent: x\ndata: a\ndata: b\ndata: c\n\n"
        );
    }
}
