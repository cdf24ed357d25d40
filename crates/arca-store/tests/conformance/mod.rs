//! The engine conformance suite: the same calls and the same expected
//! results for every engine, through `&dyn Store` only. An engine runs it
//! by implementing `Engine` (how to open a fresh, empty store) and calling
//! `conformance_suite!(ItsEngine)` in its test file, which makes one test
//! per case. The cases cover every trait method, every error, tenancy, the
//! cross-type sort order, cursors, numbers keeping their kind and the
//! idempotency records of retried requests;
//! `properties` holds the property tests against the reference evaluator;
//! `events` the event log and stream tickets.
#![allow(dead_code)]

pub mod aggregate;
pub mod cases;
pub mod events;
pub mod files;
pub mod properties;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use arca_core::{CollectionName, DocId, Document, IndexDef, Scope, SystemFields, Tenant};
use arca_store::{CollectionSpec, PutOutcome, Store, StoreError};
use serde_json::{Map, Value, json};

/// How a test wants its store.
#[derive(Debug, Clone, Copy)]
pub struct Opts {
    /// Reads running longer are stopped with `StoreError::Timeout`.
    pub read_timeout: Duration,
    /// Document writes append to the event log (the default).
    pub event_log: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Self {
            read_timeout: Duration::from_secs(30),
            event_log: true,
        }
    }
}

/// A fresh store and whatever must live as long as it (a temporary
/// folder, a database to drop).
pub struct Fresh {
    pub store: Arc<dyn Store>,
    pub keep: Box<dyn Any + Send + Sync>,
}

/// An engine under test.
pub trait Engine: 'static {
    /// Opens a fresh, empty store.
    fn open(opts: Opts) -> impl Future<Output = Fresh> + Send;

    /// How many documents make a scan slow enough to pass a 1 ms read
    /// timeout.
    const SLOW_SCAN_DOCS: usize;

    /// Property-test cases per property (an engine far slower than SQLite,
    /// such as a stand-in, runs fewer).
    const PROPERTY_CASES: u32;

    /// The server is a test stand-in whose recorded quirks (README, "What
    /// ran against what") a case must not assert against.
    fn standin() -> bool {
        false
    }
}

/// One test per case of the suite, for the engine `$engine`.
#[macro_export]
macro_rules! conformance_suite {
    ($engine:ty) => {
        $crate::conformance_suite!(@async $engine;
            round_trip_of_every_document_method,
            conditional_writes_tell_rev_mismatch_from_not_found,
            a_duplicate_id_is_a_conflict_named_id,
            tenants_never_see_each_other,
            unique_indexes_follow_mongodb_equality_per_tenant,
            unique_indexes_over_arrays_are_multikey,
            sparse_unique_indexes_skip_documents_without_the_field,
            a_unique_index_over_duplicates_changes_nothing,
            numbers_keep_their_kind,
            text_reads_match_parsed_reads,
            row_filtered_scopes_apply_to_every_read,
            listings_page_in_id_order_after_a_cursor,
            the_cross_type_sort_order_is_mongodbs,
            filters_limits_and_counts_agree,
            collections_are_created_redefined_and_listed,
            the_catalogue_generation_moves_with_every_definition_change,
            deleting_a_collection_drops_its_documents,
            a_missing_collection_is_collection_missing,
            the_filter_table_finds_what_it_expects,
            export_walks_every_tenant_in_order,
            secrets_are_made_once_and_kept,
            a_read_past_its_time_limit_is_a_timeout,
            reads_see_every_write_acknowledged_before_them,
            idempotency_a_key_runs_once_then_replays_its_response,
            idempotency_another_request_under_a_used_key_is_a_mismatch,
            idempotency_keys_are_per_tenant_and_subject,
            idempotency_records_expire,
            idempotency_a_passed_lease_is_taken_over_and_the_old_run_loses,
            idempotency_a_renewed_lease_keeps_the_key,
            idempotency_a_released_key_runs_again,
            idempotency_concurrent_claims_start_exactly_one_run,
            idempotency_large_responses_are_kept_whole,
        );
        $crate::conformance_suite!(@events $engine;
            every_write_appends_one_event_in_commit_order,
            writes_that_fail_append_nothing,
            pages_of_events_follow_a_position,
            concurrent_writes_get_distinct_increasing_positions,
            deleting_a_collection_ends_its_log,
            pruning_forgets_the_oldest_entries_and_raises_the_floor,
            a_store_without_an_event_log_appends_nothing,
            tickets_are_taken_once_and_expire,
        );
        $crate::conformance_suite!(@aggregate $engine;
            the_pipeline_table_gives_the_evaluators_results,
            aggregations_see_only_the_scope_at_every_depth,
            aggregation_limits_are_enforced,
        );
        $crate::conformance_suite!(@files $engine;
            files_stream_in_and_out_by_range,
            an_upload_is_invisible_until_committed_and_gone_when_aborted,
            files_never_cross_tenants,
            thumbnails_are_kept_until_their_file_goes,
            rotating_a_secret_keeps_the_previous_one,
            export_files_walks_every_tenant_in_order,
            list_files_walks_a_tenant_newest_first,
        );
        $crate::conformance_suite!(@sync $engine;
            listings_return_exactly_the_evaluators_matches,
            cursor_walks_visit_every_document_once,
            equality_pages_find_documents_through_arrays,
            random_pipelines_give_the_evaluators_results,
        );
    };
    (@async $engine:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                conformance::cases::$case::<$engine>().await
            }
        )*
    };
    (@events $engine:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                conformance::events::$case::<$engine>().await
            }
        )*
    };
    (@aggregate $engine:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                conformance::aggregate::$case::<$engine>().await
            }
        )*
    };
    (@files $engine:ty; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $case() {
                conformance::files::$case::<$engine>().await
            }
        )*
    };
    (@sync $engine:ty; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                conformance::properties::$case::<$engine>()
            }
        )*
    };
}

/// The collection most cases use.
pub fn people() -> CollectionName {
    CollectionName::parse("people").expect("name")
}

pub fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => panic!("object expected"),
    }
}

/// A whole-tenant scope, as operator tools make them.
#[allow(clippy::disallowed_methods)] // the suite acts as an operator
pub fn tenant_scope(tenant: &str) -> Scope {
    Scope::operator(if tenant.is_empty() {
        Tenant::None
    } else {
        Tenant::parse(tenant).expect("tenant")
    })
}

/// A row-filtered scope, as the gateway makes them after an access check.
#[allow(clippy::disallowed_methods)] // the suite stands in for the gateway
pub fn filtered_scope(tenant: &str, filter: Value) -> Scope {
    let tenant = if tenant.is_empty() {
        Tenant::None
    } else {
        Tenant::parse(tenant).expect("tenant")
    };
    Scope::authorized(
        tenant,
        arca_core::query::Filter::parse(&filter).expect("filter"),
    )
}

pub const T0: &str = "2026-12-06T10:00:00.000Z";
pub const T1: &str = "2026-12-06T10:00:01.000Z";

/// A new document stamped at `T0` by `u1`.
pub fn doc(id: &str, body: Value) -> Document {
    Document {
        system: SystemFields::first(DocId::parse(id).expect("id"), "u1".into(), T0.into()),
        body: obj(body),
    }
}

pub fn id(raw: &str) -> DocId {
    DocId::parse(raw).expect("id")
}

pub fn index(field: &str, unique: bool, sparse: bool) -> IndexDef {
    IndexDef {
        fields: vec![(field.into(), 1)],
        unique,
        sparse,
    }
}

/// Defines `people` with `indexes` (any schema: engines store what they
/// are given; validation is the server's).
pub async fn define(store: &dyn Store, indexes: &[IndexDef]) -> Result<PutOutcome, StoreError> {
    define_at(store, &people(), indexes, T0).await
}

pub async fn define_at(
    store: &dyn Store,
    name: &CollectionName,
    indexes: &[IndexDef],
    at: &str,
) -> Result<PutOutcome, StoreError> {
    store
        .put_collection(CollectionSpec {
            name,
            schema: &json!({"type": "object"}),
            indexes,
            access: &json!({"read": {"roles": ["*"]}}),
            at,
            created_at: None,
        })
        .await
}
