//! The event log and stream tickets, the same on every engine: one entry
//! per committed write in commit order, none for a write that failed,
//! pages after a position, the floor (what is no longer kept) after
//! pruning and after a collection is deleted, and tickets taken once.

use std::collections::BTreeSet;
use std::sync::Arc;

use arca_core::{CollectionName, Document};
use arca_store::{ChangeKind, StoreError, StoredEvent, TicketRecord};
use serde_json::{Value, json};

use super::*;

/// Every entry of `coll` after `after` (the log is small in these cases).
async fn all_after(store: &dyn Store, coll: &CollectionName, after: u64) -> Vec<StoredEvent> {
    store
        .events(coll, after, 10_000)
        .await
        .expect("events")
        .events
}

/// An entry's document text, parsed.
fn parsed(text: &Option<String>) -> Value {
    serde_json::from_str(text.as_deref().expect("a document")).expect("JSON")
}

fn next(d: &Document, body: Value) -> Document {
    Document {
        system: d.system.next(T1.into()),
        body: obj(body),
    }
}

pub async fn every_write_appends_one_event_in_commit_order<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    assert_eq!(store.event_head(&people()).await, Ok(0), "no entry yet");
    let acme = tenant_scope("acme");
    let first = doc("ana", json!({"name": "Ana", "n": 9007199254740993_i64}));
    store
        .insert(&people(), &acme, &first)
        .await
        .expect("insert");
    let second = next(&first, json!({"name": "Bia"}));
    store
        .replace(&people(), &acme, &second, 1)
        .await
        .expect("replace");
    store
        .delete(&people(), &acme, &id("ana"), Some(2))
        .await
        .expect("delete");
    let events = all_after(store, &people(), 0).await;
    let kinds: Vec<_> = events.iter().map(|e| (e.seq, e.kind)).collect();
    assert_eq!(
        kinds,
        vec![
            (1, ChangeKind::Created),
            (2, ChangeKind::Updated),
            (3, ChangeKind::Deleted)
        ]
    );
    for e in &events {
        assert_eq!(e.tenant, "acme");
        assert_eq!(e.id.as_ref().map(|i| i.as_str()), Some("ana"));
    }
    // The documents as clients see them: system fields, numbers exact.
    assert_eq!(events[0].before, None);
    assert_eq!(parsed(&events[0].after), first.to_json());
    assert_eq!(
        parsed(&events[0].after)["n"],
        json!(9007199254740993_i64),
        "a 64-bit integer kept exactly"
    );
    assert_eq!(parsed(&events[1].before), first.to_json());
    assert_eq!(parsed(&events[1].after), second.to_json());
    assert_eq!(parsed(&events[2].before), second.to_json());
    assert_eq!(events[2].after, None);
    assert_eq!(store.event_head(&people()).await, Ok(3));
    // Another collection has its own positions.
    let other = CollectionName::parse("other").expect("name");
    define_at(store, &other, &[], T0).await.expect("define");
    store
        .insert(&other, &tenant_scope(""), &doc("x", json!({})))
        .await
        .expect("insert");
    let theirs = all_after(store, &other, 0).await;
    assert_eq!(theirs.len(), 1);
    assert_eq!(theirs[0].seq, 1);
    assert_eq!(theirs[0].tenant, "", "the untenanted space");
}

pub async fn writes_that_fail_append_nothing<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[index("email", true, false)])
        .await
        .expect("define");
    let s = tenant_scope("");
    let d = doc("a", json!({"email": "a@x"}));
    store.insert(&people(), &s, &d).await.expect("insert");
    // A taken id, a taken unique value, a stale revision, a missing
    // document, a delete at the wrong revision: all refused, none logged.
    assert!(matches!(
        store.insert(&people(), &s, &d).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .insert(&people(), &s, &doc("b", json!({"email": "a@x"})))
            .await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .replace(&people(), &s, &next(&d, json!({"email": "z@x"})), 7)
            .await,
        Err(StoreError::RevMismatch)
    );
    assert_eq!(
        store
            .replace(&people(), &s, &next(&doc("gone", json!({})), json!({})), 1)
            .await,
        Err(StoreError::NotFound)
    );
    assert_eq!(
        store.delete(&people(), &s, &id("a"), Some(9)).await,
        Err(StoreError::RevMismatch)
    );
    assert_eq!(
        store.delete(&people(), &s, &id("gone"), None).await,
        Err(StoreError::NotFound)
    );
    let events = all_after(store, &people(), 0).await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(store.event_head(&people()).await, Ok(1));
    // And the next write that succeeds takes the next position.
    store
        .delete(&people(), &s, &id("a"), Some(1))
        .await
        .expect("delete");
    let events = all_after(store, &people(), 1).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].seq, events[0].kind), (2, ChangeKind::Deleted));
}

pub async fn pages_of_events_follow_a_position<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    for i in 0..5 {
        store
            .insert(&people(), &s, &doc(&format!("d{i}"), json!({"i": i})))
            .await
            .expect("insert");
    }
    let page = store.events(&people(), 1, 2).await.expect("events");
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert_eq!(page.floor, 0, "nothing was forgotten");
    let ids: Vec<_> = page
        .events
        .iter()
        .map(|e| e.id.as_ref().map(|i| i.to_string()))
        .collect();
    assert_eq!(ids, vec![Some("d1".into()), Some("d2".into())]);
    let rest = store.events(&people(), 3, 100).await.expect("events");
    assert_eq!(rest.events.len(), 2);
    let none = store.events(&people(), 5, 100).await.expect("events");
    assert!(none.events.is_empty());
    // A collection that never had an entry.
    let page = store
        .events(&CollectionName::parse("nobody").expect("name"), 0, 10)
        .await
        .expect("events of an unknown collection");
    assert_eq!(page, arca_store::EventPage::default());
}

pub async fn concurrent_writes_get_distinct_increasing_positions<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store: Arc<dyn Store> = f.store.clone();
    define(store.as_ref(), &[]).await.expect("define");
    let n = 40;
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move {
                let scope = tenant_scope(if i % 2 == 0 { "a" } else { "b" });
                store
                    .insert(
                        &people(),
                        &scope,
                        &doc(&format!("w{i:02}"), json!({"i": i})),
                    )
                    .await
            })
        })
        .collect();
    for w in writes {
        w.await.expect("task").expect("insert");
    }
    let events = all_after(store.as_ref(), &people(), 0).await;
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        (1..=n).collect::<Vec<u64>>(),
        "one position each, in order"
    );
    let ids: BTreeSet<_> = events
        .iter()
        .filter_map(|e| e.id.as_ref().map(|i| i.to_string()))
        .collect();
    assert_eq!(ids.len(), n as usize, "every write once");
}

pub async fn deleting_a_collection_ends_its_log<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    store
        .insert(&people(), &s, &doc("a", json!({})))
        .await
        .expect("insert");
    store
        .insert(&people(), &s, &doc("b", json!({})))
        .await
        .expect("insert");
    assert_eq!(store.delete_collection(&people()).await, Ok(true));
    let page = store.events(&people(), 0, 100).await.expect("events");
    assert_eq!(page.floor, 3, "everything before the drop is gone");
    assert_eq!(
        page.events
            .iter()
            .map(|e| (e.seq, e.kind))
            .collect::<Vec<_>>(),
        vec![(3, ChangeKind::Dropped)]
    );
    assert_eq!(page.events[0].id, None);
    assert_eq!(store.event_head(&people()).await, Ok(3));
    // Defined again, its positions go on from there (a client holding an
    // old position is below the floor: it gets a reset, not old events).
    define(store, &[]).await.expect("define again");
    store
        .insert(&people(), &s, &doc("a", json!({"again": true})))
        .await
        .expect("insert");
    let page = store.events(&people(), 3, 100).await.expect("events");
    assert_eq!(page.floor, 3);
    assert_eq!(
        page.events
            .iter()
            .map(|e| (e.seq, e.kind))
            .collect::<Vec<_>>(),
        vec![(4, ChangeKind::Created)]
    );
    // Deleting a collection that does not exist logs nothing.
    let ghost = CollectionName::parse("ghost").expect("name");
    assert_eq!(store.delete_collection(&ghost).await, Ok(false));
    assert_eq!(store.event_head(&ghost).await, Ok(0));
}

pub async fn pruning_forgets_the_oldest_entries_and_raises_the_floor<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    for i in 0..3 {
        store
            .insert(&people(), &s, &doc(&format!("d{i}"), json!({})))
            .await
            .expect("insert");
    }
    // Nothing is older than the start of time.
    assert_eq!(store.prune_events(0, 1000).await, Ok(0));
    let far = arca_store::now_ms() + 60_000;
    // At most `max` entries go, oldest first.
    assert_eq!(store.prune_events(far, 2).await, Ok(2));
    let page = store.events(&people(), 0, 100).await.expect("events");
    assert_eq!(page.floor, 2);
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![3]
    );
    // A position at the floor still resumes without a gap.
    let page = store.events(&people(), 2, 100).await.expect("events");
    assert!(page.floor <= 2);
    assert_eq!(page.events.len(), 1);
    assert_eq!(store.prune_events(far, 100).await, Ok(1));
    assert_eq!(store.event_head(&people()).await, Ok(3), "the head stays");
    store
        .insert(&people(), &s, &doc("later", json!({})))
        .await
        .expect("insert");
    let page = store.events(&people(), 3, 100).await.expect("events");
    assert_eq!(
        page.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4],
        "positions are never reused"
    );
}

pub async fn a_store_without_an_event_log_appends_nothing<E: Engine>() {
    let f = E::open(Opts {
        event_log: false,
        ..Opts::default()
    })
    .await;
    let store = f.store.as_ref();
    define(store, &[]).await.expect("define");
    let s = tenant_scope("");
    let d = doc("a", json!({"v": 1}));
    store.insert(&people(), &s, &d).await.expect("insert");
    store
        .replace(&people(), &s, &next(&d, json!({"v": 2})), 1)
        .await
        .expect("replace");
    store
        .delete(&people(), &s, &id("a"), None)
        .await
        .expect("delete");
    assert!(all_after(store, &people(), 0).await.is_empty());
    assert_eq!(store.event_head(&people()).await, Ok(0));
}

pub async fn tickets_are_taken_once_and_expire<E: Engine>() {
    let f = E::open(Opts::default()).await;
    let store: Arc<dyn Store> = f.store.clone();
    let now = arca_store::now_ms();
    let ticket = |byte: u8, expires_at_ms: u64| TicketRecord {
        hash: [byte; 32],
        coll: people(),
        holder: format!("{{\"sub\":\"s{byte}\"}}"),
        expires_at_ms,
    };
    store
        .put_ticket(&ticket(1, now + 60_000))
        .await
        .expect("put");
    store
        .put_ticket(&ticket(2, now + 60_000))
        .await
        .expect("put");
    store.put_ticket(&ticket(3, now - 1)).await.expect("put");
    // Many at once: exactly one gets it.
    let takes: Vec<_> = (0..12)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.take_ticket(&[1; 32], arca_store::now_ms()).await })
        })
        .collect();
    let mut got = Vec::new();
    for t in takes {
        if let Some(t) = t.await.expect("task").expect("take") {
            got.push(t);
        }
    }
    assert_eq!(got, vec![ticket(1, now + 60_000)], "exactly one taker");
    assert_eq!(store.take_ticket(&[1; 32], now).await, Ok(None), "used");
    // Expired (at the time of taking): not given, and gone.
    assert_eq!(store.take_ticket(&[3; 32], now).await, Ok(None));
    assert_eq!(
        store.take_ticket(&[2; 32], now + 60_000).await,
        Ok(None),
        "past its expiry"
    );
    assert_eq!(store.take_ticket(&[9; 32], now).await, Ok(None), "unknown");
    store.put_ticket(&ticket(4, now + 1)).await.expect("put");
    store
        .put_ticket(&ticket(5, now + 60_000))
        .await
        .expect("put");
    assert_eq!(store.prune_tickets(now + 10).await, Ok(1));
    assert_eq!(
        store.take_ticket(&[5; 32], now).await,
        Ok(Some(ticket(5, now + 60_000)))
    );
}
