//! What one request or one caller may cost, enforced where every data path
//! passes: heavy reads (listings, counts, aggregations) per caller in
//! flight, so one caller holds at most `query.max_concurrent_per_caller`
//! reader threads (the rest are 429); validation of large documents off
//! the async workers, a few at a time; and the limits themselves, from
//! the configuration.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arca_auth::Identity;
use tokio::sync::Semaphore;

use crate::error::{ApiError, ProblemKind};

/// Documents larger than this (bytes of JSON) are validated on the
/// blocking pool: checking a schema costs CPU in proportion to the
/// document, and a megabyte of failing array items took seconds on an
/// async worker, stalling every request queued on it.
pub const OFFLOAD_BYTES: usize = 16 << 10;

/// The configured bounds.
#[derive(Debug, Clone)]
pub struct Limits {
    /// `validation.max_errors`.
    pub max_errors: usize,
    /// `query.max_concurrent_per_caller`.
    pub heavy_per_caller: usize,
    /// `query.max_page_bytes`.
    pub max_page_bytes: usize,
    /// `query.max_time`.
    pub max_time: Duration,
    /// `aggregate.*`.
    pub aggregate: arca_store::AggregateLimits,
}

/// Who a heavy read is counted against: the tenant and subject of a
/// token, or the client address of a caller without one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CallerKey {
    /// `(tenant key, sub)`.
    Subject(String, String),
    /// A caller without a token, by address (`None` when unknown).
    Anonymous(Option<IpAddr>),
}

impl CallerKey {
    /// The key of a caller.
    pub fn of(identity: Option<&Identity>, addr: Option<IpAddr>) -> Self {
        match identity {
            Some(i) => Self::Subject(i.tenant.key().to_owned(), i.sub.clone()),
            None => Self::Anonymous(addr),
        }
    }
}

/// Heavy reads in flight, per caller.
#[derive(Default)]
pub struct HeavyReads {
    in_flight: Mutex<HashMap<CallerKey, usize>>,
}

/// One heavy read's place; released when dropped (the read finished, or
/// its request was cancelled).
pub struct HeavySlot {
    reads: Arc<HeavyReads>,
    key: CallerKey,
}

impl HeavyReads {
    /// A place for one more heavy read of `key`, or 429 when it already
    /// has `max` in flight.
    pub fn acquire(self: &Arc<Self>, key: CallerKey, max: usize) -> Result<HeavySlot, ApiError> {
        let mut map = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= max {
            return Err(ApiError::new(
                ProblemKind::TooManyRequests,
                format!(
                    "at most {max} listings, counts or aggregations of one caller run at once (query.max_concurrent_per_caller); retry when one has finished"
                ),
            ));
        }
        *n += 1;
        Ok(HeavySlot {
            reads: self.clone(),
            key,
        })
    }
}

impl Drop for HeavySlot {
    fn drop(&mut self) {
        let mut map = self
            .reads
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// Validations of large documents running on the blocking pool, at most
/// one per CPU at once (the rest wait their turn).
pub struct Offload {
    permits: Arc<Semaphore>,
}

impl Default for Offload {
    fn default() -> Self {
        let n = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            permits: Arc::new(Semaphore::new(n)),
        }
    }
}

impl Offload {
    /// Runs `work` on the blocking pool once a permit is free.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::internal("the validation permits are closed"))?;
        tokio::task::spawn_blocking(move || {
            let out = work();
            drop(permit);
            out
        })
        .await
        .map_err(|e| ApiError::internal(format!("a validation task failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_holds_at_most_its_share_and_gets_it_back() {
        let reads = Arc::new(HeavyReads::default());
        let ana = CallerKey::Subject("t".into(), "ana".into());
        let bob = CallerKey::Subject("t".into(), "bob".into());
        let a1 = reads.acquire(ana.clone(), 2).expect("first");
        let a2 = reads.acquire(ana.clone(), 2).expect("second");
        let third = reads.acquire(ana.clone(), 2);
        assert!(matches!(&third, Err(e) if e.kind() == ProblemKind::TooManyRequests));
        // Another caller is not affected.
        let _b = reads.acquire(bob, 2).expect("bob");
        drop(a1);
        let _a3 = reads.acquire(ana.clone(), 2).expect("a place came back");
        drop(a2);
        // Anonymous callers count by address.
        let x = CallerKey::Anonymous(Some("10.0.0.1".parse().expect("ip")));
        let y = CallerKey::Anonymous(Some("10.0.0.2".parse().expect("ip")));
        let _x = reads.acquire(x.clone(), 1).expect("x");
        assert!(reads.acquire(x, 1).is_err());
        assert!(reads.acquire(y, 1).is_ok());
    }
}
