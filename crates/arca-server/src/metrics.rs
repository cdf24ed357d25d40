//! Prometheus metrics: the process-wide recorder and the few series Arca
//! records (HTTP requests by route template, store operation latency, JWKS
//! fetches; open and timed-out connections are counted in `conn`).

use std::sync::OnceLock;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the global recorder once and returns its handle. Later calls
/// return the same handle (tests may build several apps in one process).
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("duration_seconds".into()), LATENCY_BUCKETS)
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics may be empty");
            }
            handle
        })
        .clone()
}

/// Records one finished HTTP request.
///
/// The handles of each (route, method, status) series are kept per thread:
/// building the label set and looking the series up in the registry was
/// ~3% of a request's CPU. Every label is bounded: routes are templates
/// (or `unmatched`), methods outside the standard ones count as `other`
/// (a client may send any token as a method), statuses are three digits.
pub fn record_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    thread_local! {
        static SERIES: std::cell::RefCell<RequestSeries> = Default::default();
    }
    let method = method_label(method);
    SERIES.with_borrow_mut(|series| {
        let by_route = match series.get_mut(route) {
            Some(m) => m,
            None => series.entry(route.to_owned()).or_default(),
        };
        let (count, latency) = by_route.entry((method, status)).or_insert_with(|| {
            let count = metrics::counter!(
                "http_requests_total",
                "route" => route.to_owned(),
                "method" => method,
                "status" => status.to_string()
            );
            let latency = metrics::histogram!(
                "http_request_duration_seconds",
                "route" => route.to_owned(),
                "method" => method
            );
            (count, latency)
        });
        count.increment(1);
        latency.record(elapsed.as_secs_f64());
    });
}

/// Per route template, per (method, status): the request counter and the
/// latency histogram.
type RequestSeries = std::collections::HashMap<
    String,
    std::collections::HashMap<(&'static str, u16), (metrics::Counter, metrics::Histogram)>,
>;

/// The `method` label: a standard method, or `other`.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "other",
    }
}

/// Records one store operation (`op` is one of a few fixed names; the
/// handles are kept per thread, as for requests).
pub fn record_store_op(op: &'static str, elapsed: Duration) {
    thread_local! {
        static OPS: std::cell::RefCell<Vec<(&'static str, metrics::Histogram)>> =
            const { std::cell::RefCell::new(Vec::new()) };
    }
    OPS.with_borrow_mut(|ops| {
        let i = match ops.iter().position(|(name, _)| *name == op) {
            Some(i) => i,
            None => {
                let h = metrics::histogram!("store_operation_duration_seconds", "op" => op);
                ops.push((op, h));
                ops.len() - 1
            }
        };
        ops[i].1.record(elapsed.as_secs_f64());
    });
}
