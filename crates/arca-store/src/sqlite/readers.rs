//! The reader pool of the embedded engine: a few dedicated threads, each
//! owning one read connection, fed through `queue` (which decides how many
//! are awake). Reads already queued together share one read transaction.
//! A read whose request went away (the client disconnected, or its time
//! ran out) is skipped if it has not started, and interrupted at SQLite's
//! next progress check (every 1,000 VM steps) if it has, so an abandoned
//! query frees its reader thread at once.
//! (Dedicated threads rather than tokio's blocking pool: under load that
//! pool grew to dozens of short-lived threads, each with its own allocator
//! heap, and a shared connection pool needed a lock; a fixed set of readers
//! bounds both.)

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::queue;
use super::setup::open_conn;
use super::writer::map_err;
use crate::StoreError;

/// A read's work: given the reader's connection and a check that says
/// whether the read must stop now (its time is up or its request went
/// away; it also paces the read, see `Pacer`), for reads that run Rust
/// code between SQLite steps.
type Work = Box<dyn FnOnce(&Connection, &dyn Fn() -> bool) + Send>;

/// A read to run on a reader thread.
pub struct ReadJob {
    run: Work,
    /// Its own time limit (the pool's `read_timeout` otherwise).
    timeout: Option<Duration>,
    /// A point read (by primary key): cheap and bounded, so several of
    /// them may share one read transaction (see `reader_loop`).
    point: bool,
    /// Set when the one waiting for the result is gone (its request was
    /// cancelled: the client went away, or its time ran out): the read is
    /// skipped, or interrupted at SQLite's next progress check.
    abandoned: Arc<AtomicBool>,
}

/// Sets a job's `abandoned` flag unless disarmed: held by the waiting
/// side, so dropping its future (the request went away) abandons the job.
struct AbandonOnDrop(Option<Arc<AtomicBool>>);

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if let Some(flag) = self.0.take() {
            flag.store(true, Ordering::Relaxed);
        }
    }
}

/// A listing or count that has run this long is slow: it needs a place
/// in the slow lane to go on.
const SLOW_AFTER: Duration = Duration::from_millis(10);

/// What one reader's progress handler enforces on the running read:
/// its deadline (`read_timeout`), its request still waiting for it
/// (`abandoned`), and its share of the CPU. A listing or count yields the
/// CPU about every millisecond, and once slow (past `SLOW_AFTER`) it runs
/// only while it holds a place in the slow lane, waiting for one
/// otherwise: on a machine with as many slow reads as cores, the threads
/// serving other callers (the HTTP workers, a read by id) waited a
/// scheduler slice at every hand-off, and another tenant's GET took
/// 100 ms and more. Short listings (the usual ones) never reach the lane.
struct Pacer {
    epoch: Instant,
    /// When the running read must stop, in ms after `epoch` (`u64::MAX`:
    /// none running).
    deadline: AtomicU64,
    /// When it began, in ms after `epoch`.
    began: AtomicU64,
    /// It is a listing or count.
    long: AtomicBool,
    /// It holds a place in the slow lane.
    in_lane: AtomicBool,
    /// When it last yielded its core, in ms after `epoch`.
    yielded: AtomicU64,
    /// Its `abandoned` flag (only this reader thread sets or reads it:
    /// the lock is never contended).
    abandoned: Mutex<Option<Arc<AtomicBool>>>,
    /// Free places in the slow lane (shared by the readers).
    lane: Arc<AtomicUsize>,
}

impl Pacer {
    fn new(lane: Arc<AtomicUsize>) -> Self {
        Self {
            epoch: Instant::now(),
            deadline: AtomicU64::new(u64::MAX),
            began: AtomicU64::new(0),
            long: AtomicBool::new(false),
            in_lane: AtomicBool::new(false),
            yielded: AtomicU64::new(0),
            abandoned: Mutex::new(None),
            lane,
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn begin(&self, job: &ReadJob, timeout: Duration) {
        let now = self.now_ms();
        self.began.store(now, Ordering::Relaxed);
        self.deadline.store(
            now.saturating_add(timeout.as_millis() as u64),
            Ordering::Relaxed,
        );
        self.long.store(!job.point, Ordering::Relaxed);
        *self.abandoned.lock().unwrap_or_else(|p| p.into_inner()) = Some(job.abandoned.clone());
    }

    fn end(&self) {
        if self.in_lane.swap(false, Ordering::Relaxed) {
            self.lane.fetch_add(1, Ordering::Relaxed);
        }
        self.long.store(false, Ordering::Relaxed);
        self.deadline.store(u64::MAX, Ordering::Relaxed);
        *self.abandoned.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether the running read must stop now (its time is up, or its
    /// request went away).
    fn must_stop(&self) -> bool {
        self.now_ms() > self.deadline.load(Ordering::Relaxed)
            || self
                .abandoned
                .lock()
                .ok()
                .and_then(|a| a.as_ref().map(|f| f.load(Ordering::Relaxed)))
                .unwrap_or(false)
    }

    /// Takes a place in the slow lane if one is free.
    fn enter_lane(&self) -> bool {
        self.lane
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    }

    /// The progress handler (and the check of reads running Rust code):
    /// `true` interrupts the read.
    fn check(&self) -> bool {
        if !self.long.load(Ordering::Relaxed) {
            return self.must_stop();
        }
        if !self.in_lane.load(Ordering::Relaxed)
            && self
                .now_ms()
                .saturating_sub(self.began.load(Ordering::Relaxed))
                > SLOW_AFTER.as_millis() as u64
        {
            // Slow: wait for a place, still stopping on time.
            while !self.enter_lane() {
                if self.must_stop() {
                    return true;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            self.in_lane.store(true, Ordering::Relaxed);
        }
        let now = self.now_ms();
        if now > self.yielded.load(Ordering::Relaxed) {
            std::thread::yield_now();
            self.yielded.store(now, Ordering::Relaxed);
        }
        self.must_stop()
    }
}

/// At most this many point reads share one read transaction.
const POINT_BATCH: usize = 32;

/// At most this many other reads (listings, counts) share one.
const LONG_BATCH: usize = 4;

/// The sending side of the pool: what the store holds.
pub struct Readers {
    jobs: queue::Sender<ReadJob>,
    /// Listings and counts running or queued at once: one reader fewer
    /// than there are, so a read by id always finds one (a few slow
    /// listings would otherwise hold every reader and make every GET wait
    /// out their time).
    long: Arc<tokio::sync::Semaphore>,
}

impl Readers {
    /// Opens `count` read connections to `path` and starts a thread for
    /// each. A read running longer than `read_timeout` is interrupted
    /// (`StoreError::Timeout`), so a request that already timed out does
    /// not keep a reader busy.
    pub fn start(
        path: &Path,
        count: usize,
        synchronous_full: bool,
        cache_kib: u32,
        read_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let (jobs, receivers) = queue::queue::<ReadJob>(count.max(1));
        // Reads that run past `SLOW_AFTER` share `cores - 1` places (one
        // at least): however many slow queries run, a core stays free for
        // everything else.
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let slow_lane = Arc::new(AtomicUsize::new(cores.saturating_sub(1).max(1)));
        for (n, receiver) in receivers.into_iter().enumerate() {
            let mut conn = open_conn(path, true, synchronous_full, cache_kib.max(100))?;
            let pace = Arc::new(Pacer::new(slow_lane.clone()));
            let watched = pace.clone();
            // Checked every 1000 VM steps of the running read.
            conn.progress_handler(1000, Some(move || watched.check()))
                .map_err(map_err)?;
            std::thread::Builder::new()
                .name(format!("arca-sqlite-reader-{n}"))
                .spawn(move || {
                    reader_loop(&conn, &receiver, |job| {
                        if job.abandoned.load(Ordering::Relaxed) {
                            // Nobody waits for it: skip the work.
                            return;
                        }
                        pace.begin(&job, job.timeout.unwrap_or(read_timeout));
                        (job.run)(&conn, &|| pace.check());
                        pace.end();
                    })
                })
                .map_err(|e| {
                    StoreError::Unavailable(format!("cannot start a reader thread: {e}"))
                })?;
        }
        Ok(Self {
            jobs,
            long: Arc::new(tokio::sync::Semaphore::new(count.saturating_sub(1).max(1))),
        })
    }

    /// Runs `f` on a reader thread's connection and awaits its result;
    /// `point` marks a read by primary key (it may share a transaction
    /// with other point reads).
    pub async fn run<T, F>(&self, point: bool, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.run_checked(point, None, move |conn, _| f(conn)).await
    }

    /// `run` for a read that runs Rust code between SQLite's steps (an
    /// aggregation's stages): `f` gets a check to call regularly, which
    /// says when it must stop (its time is up, `timeout` when given, or
    /// its request went away; it also paces the read like SQLite's
    /// progress handler does).
    pub async fn run_checked<T, F>(
        &self,
        point: bool,
        timeout: Option<Duration>,
        f: F,
    ) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &dyn Fn() -> bool) -> Result<T, StoreError> + Send + 'static,
    {
        // Waiting here holds no reader: cancelled, it leaves nothing behind.
        // The place is given back when the job ends on its reader (or is
        // skipped there), not when its request goes away: an abandoned
        // read keeps its place until SQLite's next progress check stops it.
        let long = match point {
            true => None,
            false => Some(
                self.long
                    .clone()
                    .acquire_owned()
                    .await
                    .map_err(|_| StoreError::Unavailable("readers stopped".into()))?,
            ),
        };
        let (tx, rx) = oneshot::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let mut guard = AbandonOnDrop(Some(abandoned.clone()));
        let run: Work = Box::new(move |conn: &Connection, stop: &dyn Fn() -> bool| {
            let _long = long;
            // A panic in `f` drops `tx`: the caller sees "unavailable",
            // and the reader thread survives it.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn, stop)));
            if let Ok(out) = out {
                let _ = tx.send(out);
            }
        });
        self.jobs
            .send(ReadJob {
                run,
                timeout,
                point,
                abandoned,
            })
            .map_err(|_| StoreError::Unavailable("readers stopped".into()))?;
        let out = rx
            .await
            .map_err(|_| StoreError::Unavailable("the read failed".into()))?;
        // Answered: nothing to abandon any more.
        guard.0 = None;
        out
    }
}
/// A reader thread's loop: runs jobs until the store is dropped.
///
/// Reads of the same kind that are already queued when a reader picks one
/// up run together in one read transaction: SQLite's per-transaction work
/// (the file and WAL locks, the file-size check) was a fifth of a GET's
/// cost on the reader side, and batching listings cut their `fcntl` and
/// `fstat` calls by 70%. Each job was queued before that transaction
/// began, so each still sees every write acknowledged before it was asked.
/// Point reads never wait behind a listing: the kinds are not mixed, a
/// point read met while gathering listings runs first, and a batch of
/// listings (at most `LONG_BATCH`) runs inside `long`, so point reads
/// queued meanwhile wake another reader.
fn reader_loop(conn: &Connection, jobs: &queue::Receiver<ReadJob>, mut run: impl FnMut(ReadJob)) {
    let mut batch: Vec<ReadJob> = Vec::with_capacity(POINT_BATCH);
    let mut next: Option<ReadJob> = None;
    loop {
        let job = match next.take() {
            Some(job) => job,
            None => match jobs.recv() {
                Some(job) => job,
                // The store (the only sender) is gone.
                None => return,
            },
        };
        let point = job.point;
        let cap = if point { POINT_BATCH } else { LONG_BATCH };
        batch.push(job);
        while batch.len() < cap {
            match jobs.try_recv() {
                Some(job) if job.point == point => batch.push(job),
                Some(job) if job.point => {
                    // A read by id met while gathering listings runs now,
                    // before them: kept for after, it waited out their
                    // whole time (a GET took 1.2 s under a noisy
                    // neighbour's counts).
                    run(job);
                    break;
                }
                Some(job) => {
                    // A listing met while gathering reads by id: after
                    // them (a short wait).
                    next = Some(job);
                    break;
                }
                None => break,
            }
        }
        if point {
            run_batch(conn, &mut batch, &mut run);
        } else {
            jobs.long(|| run_batch(conn, &mut batch, &mut run));
        }
    }
}

/// Runs `batch` (emptying it), in one read transaction when it holds more
/// than one job.
fn run_batch(conn: &Connection, batch: &mut Vec<ReadJob>, run: &mut impl FnMut(ReadJob)) {
    if batch.len() == 1 {
        batch.drain(..).for_each(run);
        return;
    }
    // A deferred BEGIN: the snapshot is taken by the first read, after
    // every job of the batch was queued.
    let began = conn
        .prepare_cached("BEGIN")
        .and_then(|mut st| st.execute([]))
        .is_ok();
    batch.drain(..).for_each(run);
    if began && !conn.is_autocommit() {
        let ended = conn
            .prepare_cached("COMMIT")
            .and_then(|mut st| st.execute([]));
        if let Err(e) = ended {
            tracing::warn!(error = %e, "ending a batch of reads failed");
            let _ = conn.execute_batch("ROLLBACK");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(point: bool, name: &'static str, log: &Arc<Mutex<Vec<&'static str>>>) -> ReadJob {
        let log = log.clone();
        ReadJob {
            run: Box::new(move |_, _| log.lock().unwrap().push(name)),
            timeout: None,
            point,
            abandoned: Arc::default(),
        }
    }

    #[test]
    fn a_read_by_id_queued_behind_listings_runs_before_them() {
        let (tx, mut rxs) = queue::queue::<ReadJob>(1);
        let log = Arc::new(Mutex::new(Vec::new()));
        // Queued before the reader starts: it picks the listing first and
        // meets the read by id while gathering listings.
        for (point, name) in [(false, "list-1"), (true, "get"), (false, "list-2")] {
            assert!(tx.send(job(point, name, &log)).is_ok());
        }
        drop(tx);
        let rx = rxs.pop().unwrap();
        let conn = Connection::open_in_memory().unwrap();
        reader_loop(&conn, &rx, |job| (job.run)(&conn, &|| false));
        let order = log.lock().unwrap().clone();
        assert_eq!(order[0], "get", "{order:?}");
        assert_eq!(order.len(), 3, "{order:?}");
    }
}
