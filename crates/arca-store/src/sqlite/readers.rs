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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::oneshot;

use super::queue;
use super::setup::open_conn;
use super::writer::map_err;
use crate::StoreError;

/// A read to run on a reader thread.
pub struct ReadJob {
    run: Box<dyn FnOnce(&Connection) + Send>,
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

fn set_current(slot: &Mutex<Option<Arc<AtomicBool>>>, job: Option<Arc<AtomicBool>>) {
    *slot.lock().unwrap_or_else(|p| p.into_inner()) = job;
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
        for (n, receiver) in receivers.into_iter().enumerate() {
            let mut conn = open_conn(path, true, synchronous_full, cache_kib.max(100))?;
            // One progress handler per connection, checking the running
            // job's deadline every 1000 VM steps.
            let epoch = Instant::now();
            let deadline = Arc::new(AtomicU64::new(u64::MAX));
            // The running job's `abandoned` flag (only this reader thread
            // sets or reads it: the lock is never contended).
            let current: Arc<Mutex<Option<Arc<AtomicBool>>>> = Arc::default();
            let (watched, watched_job) = (deadline.clone(), current.clone());
            conn.progress_handler(
                1000,
                Some(move || {
                    epoch.elapsed().as_millis() as u64 > watched.load(Ordering::Relaxed)
                        || watched_job
                            .lock()
                            .ok()
                            .and_then(|j| j.as_ref().map(|a| a.load(Ordering::Relaxed)))
                            .unwrap_or(false)
                }),
            )
            .map_err(map_err)?;
            std::thread::Builder::new()
                .name(format!("arca-sqlite-reader-{n}"))
                .spawn(move || {
                    reader_loop(&conn, &receiver, |job| {
                        if job.abandoned.load(Ordering::Relaxed) {
                            // Nobody waits for it: skip the work.
                            return;
                        }
                        let limit = (epoch.elapsed() + read_timeout).as_millis() as u64;
                        deadline.store(limit, Ordering::Relaxed);
                        set_current(&current, Some(job.abandoned.clone()));
                        (job.run)(&conn);
                        set_current(&current, None);
                        deadline.store(u64::MAX, Ordering::Relaxed);
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
        // Waiting here holds no reader: cancelled, it leaves nothing behind.
        let _long = match point {
            true => None,
            false => Some(
                self.long
                    .acquire()
                    .await
                    .map_err(|_| StoreError::Unavailable("readers stopped".into()))?,
            ),
        };
        let (tx, rx) = oneshot::channel();
        let abandoned = Arc::new(AtomicBool::new(false));
        let mut guard = AbandonOnDrop(Some(abandoned.clone()));
        let run = Box::new(move |conn: &Connection| {
            // A panic in `f` drops `tx`: the caller sees "unavailable",
            // and the reader thread survives it.
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(conn)));
            if let Ok(out) = out {
                let _ = tx.send(out);
            }
        });
        self.jobs
            .send(ReadJob {
                run,
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
/// Point reads never wait behind a listing: the kinds are not mixed, and a
/// batch of listings (at most `LONG_BATCH`) runs inside `long`, so point
/// reads queued meanwhile wake another reader.
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
                Some(job) => {
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
