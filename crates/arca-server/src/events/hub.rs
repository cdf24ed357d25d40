//! The readers of the event log in this process: one per collection that
//! has subscribers here (a "tail"), not one per subscriber. A tail reads
//! its collection's log when a write commits through this process (at
//! once) and every `events.poll` (writes through other replicas), and
//! hands each change to its subscribers through a bounded broadcast ring
//! of `events.buffer` changes, shared by all of them: memory per
//! collection is bounded whatever the subscribers do, and a subscriber
//! that falls a whole ring behind learns it (it is reset and closed). A
//! tail ends when its last subscriber has gone, and at shutdown (its
//! subscribers' streams then end).
//!
//! Also here: the count of open streams (`events.max_subscribers`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arca_core::CollectionName;
use arca_store::ChangeKind;
use axum::body::Bytes;
use tokio::sync::{Notify, broadcast, watch};

use crate::error::{ApiError, ProblemKind};
use crate::gateway::{Change, EventLog, Seen, Wakeups};

/// Changes read from the log at once (a tail reads on until a page is
/// not full).
const PAGE: usize = 1000;

/// What a tail hands its subscribers.
#[derive(Clone, Debug)]
pub enum Feed {
    /// The next change.
    Change(Arc<Item>),
    /// Changes up to `floor` are gone from the log before this process
    /// read them (pruned while the store was out of reach): subscribers
    /// behind it get `reset`.
    Gap {
        /// The log's floor.
        floor: u64,
    },
    /// The collection was deleted at this position: streams end.
    Dropped {
        /// The `Dropped` entry's position.
        seq: u64,
    },
}

/// A change with its frames made once for every subscriber (the text of a
/// created, updated or deleted event, by what a subscriber sees of it).
#[derive(Debug)]
pub struct Item {
    /// The change.
    pub change: Change,
    frames: [OnceLock<Bytes>; 3],
}

impl Item {
    fn of(change: Change) -> Self {
        Self {
            change,
            frames: Default::default(),
        }
    }

    /// The event frame for what a subscriber sees.
    pub fn frame(&self, seen: Seen) -> Bytes {
        let slot = match seen {
            Seen::Created => 0,
            Seen::Updated => 1,
            Seen::Deleted => 2,
        };
        self.frames[slot]
            .get_or_init(|| {
                let mut out = Vec::new();
                super::stream::write_change(&mut out, &self.change, seen);
                Bytes::from(out)
            })
            .clone()
    }
}

/// A collection's reader, shared by its subscribers.
struct Tail {
    /// The last position handed on (guarded with the sender: a subscriber
    /// reads it and subscribes at one point of the feed).
    last: Mutex<u64>,
    tx: broadcast::Sender<Feed>,
}

/// What a subscriber gets when it joins a tail: the feed from `last` on.
pub struct Joined {
    /// Every change after `last`.
    pub rx: broadcast::Receiver<Feed>,
    /// The tail's position when the subscriber joined.
    pub last: u64,
}

/// The readers of this process.
pub struct Hub(Arc<Inner>);

struct Inner {
    log: EventLog,
    wakeups: Arc<Wakeups>,
    tails: Mutex<HashMap<CollectionName, Arc<Tail>>>,
    poll: Duration,
    buffer: usize,
    open: AtomicUsize,
    max: usize,
    shutdown: watch::Receiver<bool>,
}

impl Hub {
    /// The readers of `log`, woken by `wakeups`, with the configured
    /// poll interval, ring size and bound on open streams; all end when
    /// `shutdown` turns true.
    pub fn new(
        log: EventLog,
        wakeups: Arc<Wakeups>,
        cfg: &crate::config::EventsConfig,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self(Arc::new(Inner {
            log,
            wakeups,
            tails: Mutex::new(HashMap::new()),
            poll: cfg.poll.0,
            buffer: cfg.buffer,
            open: AtomicUsize::new(0),
            max: cfg.max_subscribers,
            shutdown,
        }))
    }

    /// The event log.
    pub fn log(&self) -> &EventLog {
        &self.0.log
    }

    /// A place for one more open stream, or 503 at `events.max_subscribers`.
    pub fn admit(&self) -> Result<Place, ApiError> {
        let taken = self
            .0
            .open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.0.max).then_some(n + 1)
            });
        match taken {
            Ok(n) => {
                metrics::gauge!("arca_event_streams").set((n + 1) as f64);
                Ok(Place(self.0.clone()))
            }
            Err(_) => {
                metrics::counter!("arca_event_streams_refused_total").increment(1);
                Err(ApiError::new(
                    ProblemKind::TooManySubscribers,
                    format!(
                        "this server has {} event streams open (events.max_subscribers); retry shortly",
                        self.0.max
                    ),
                ))
            }
        }
    }

    /// Joins the collection's tail, starting one (reading from `from`,
    /// a position whose changes the caller has) if it has none.
    pub fn join(&self, coll: &CollectionName, from: u64) -> Joined {
        let mut tails = self.0.tails.lock().unwrap_or_else(|p| p.into_inner());
        let tail = match tails.get(coll) {
            Some(t) => t.clone(),
            None => {
                let (tx, _) = broadcast::channel(self.0.buffer);
                let tail = Arc::new(Tail {
                    last: Mutex::new(from),
                    tx,
                });
                tails.insert(coll.clone(), tail.clone());
                let wake = self.0.wakeups.watch(coll);
                tokio::spawn(run(self.0.clone(), coll.clone(), tail.clone(), wake));
                metrics::gauge!("arca_event_tails").set(tails.len() as f64);
                tail
            }
        };
        let last = tail.last.lock().unwrap_or_else(|p| p.into_inner());
        Joined {
            rx: tail.tx.subscribe(),
            last: *last,
        }
    }

    /// The position the collection's tail has handed on, if it has one.
    pub fn position(&self, coll: &CollectionName) -> Option<u64> {
        let tails = self.0.tails.lock().unwrap_or_else(|p| p.into_inner());
        tails
            .get(coll)
            .map(|t| *t.last.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// One open stream's place in the count; given back when dropped.
pub struct Place(Arc<Inner>);

impl Drop for Place {
    fn drop(&mut self) {
        let n = self.0.open.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!("arca_event_streams").set(n.saturating_sub(1) as f64);
    }
}

/// A tail: reads its collection's log when woken or polled, hands every
/// change on, and ends when it has no subscriber left or at shutdown.
async fn run(hub: Arc<Inner>, coll: CollectionName, tail: Arc<Tail>, wake: Arc<Notify>) {
    let mut tick = tokio::time::interval(hub.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = hub.shutdown.clone();
    let mut failing = false;
    loop {
        tokio::select! {
            () = wake.notified() => {}
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|down| *down) => break,
        }
        loop {
            let from = *tail.last.lock().unwrap_or_else(|p| p.into_inner());
            let page = match hub.log.after(&coll, from, PAGE).await {
                Ok(page) => page,
                Err(e) => {
                    // Subscribers wait (keep-alives go on); logged once
                    // per outage.
                    if !failing {
                        tracing::warn!(collection = %coll, error = %e, "reading the event log failed; retrying");
                        failing = true;
                    }
                    break;
                }
            };
            failing = false;
            let full = page.changes.len() == PAGE;
            hand_on(&tail, page.changes, page.floor);
            if !full {
                break;
            }
        }
        let mut tails = hub.tails.lock().unwrap_or_else(|p| p.into_inner());
        if tail.tx.receiver_count() == 0 {
            if tails.get(&coll).is_some_and(|t| Arc::ptr_eq(t, &tail)) {
                tails.remove(&coll);
                hub.wakeups.unwatch(&coll);
            }
            metrics::gauge!("arca_event_tails").set(tails.len() as f64);
            return;
        }
    }
    // Shutdown: dropping the tail closes its subscribers' feeds.
    let mut tails = hub.tails.lock().unwrap_or_else(|p| p.into_inner());
    if tails.get(&coll).is_some_and(|t| Arc::ptr_eq(t, &tail)) {
        tails.remove(&coll);
    }
}

/// Hands a page of the log on, in order, moving the tail's position.
fn hand_on(tail: &Tail, changes: Vec<Change>, floor: u64) {
    let mut last = tail.last.lock().unwrap_or_else(|p| p.into_inner());
    let dropped_at = changes
        .iter()
        .find(|c| c.kind() == ChangeKind::Dropped)
        .map(Change::seq);
    // A floor above the position means changes were lost to this
    // process, unless the collection's deletion raised it (then the
    // `Dropped` entry ends the streams).
    if floor > *last && dropped_at != Some(floor) {
        let _ = tail.tx.send(Feed::Gap { floor });
        *last = floor;
    }
    for change in changes {
        let seq = change.seq();
        if seq <= *last {
            continue;
        }
        *last = seq;
        let feed = match change.kind() {
            ChangeKind::Dropped => Feed::Dropped { seq },
            _ => Feed::Change(Arc::new(Item::of(change))),
        };
        // No receiver is not an error: the tail ends at its next round.
        let _ = tail.tx.send(feed);
    }
}
