//! The queue between the async handlers and the reader threads, and the
//! policy of how many readers are awake.
//!
//! Written by hand because the policy is the point: a channel wakes a
//! parked receiver on every send, so under a stream of point reads every
//! reader thread kept waking, and on a small machine (or a pod with a CPU
//! or two) those wake-ups and the context switches they bring cost more
//! than the reads. Here a parked reader is woken only when no awake reader
//! is free to take the job: every awake one is inside a long read (a
//! listing, a count), or the backlog is more than `BACKLOG` jobs per free
//! reader. So one reader serves a light point-read load, the others join
//! as the load grows, and a slow listing never holds point reads back
//! while a reader is parked.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Queued jobs per free reader above which another reader is woken.
const BACKLOG: usize = 32;

struct State<T> {
    jobs: VecDeque<T>,
    /// Readers awake and not inside a long read: each takes the next job
    /// within microseconds.
    free: usize,
    /// Readers parked.
    parked: usize,
    /// Wake-ups sent and not yet taken by a parked reader.
    wakeups: usize,
    /// The sender is gone: readers drain the queue, then stop.
    closed: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
}

impl<T> Shared<T> {
    /// The lock; a panic while it was held left the state consistent (no
    /// user code runs under it), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes a parked reader if the queued jobs need one.
    fn wake_if_needed(&self, st: &mut State<T>) {
        let needed = st.free == 0 || st.jobs.len() > BACKLOG * st.free;
        if needed && st.parked > st.wakeups && !st.jobs.is_empty() {
            st.wakeups += 1;
            // The woken reader counts as free from now, so the next send
            // does not wake a second one for the same gap.
            st.free += 1;
            self.wake.notify_one();
        }
    }
}

/// The sending side; dropping it stops the readers once the queue is empty.
pub struct Sender<T>(Arc<Shared<T>>);

/// One reader thread's side.
pub struct Receiver<T>(Arc<Shared<T>>);

/// A queue for `readers` reader threads: give each one `Receiver`.
pub fn queue<T>(readers: usize) -> (Sender<T>, Vec<Receiver<T>>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            jobs: VecDeque::new(),
            free: readers,
            parked: 0,
            wakeups: 0,
            closed: false,
        }),
        wake: Condvar::new(),
    });
    let receivers = (0..readers).map(|_| Receiver(shared.clone())).collect();
    (Sender(shared), receivers)
}

impl<T> Sender<T> {
    /// Queues `job`; it comes back if the readers are gone.
    pub fn send(&self, job: T) -> Result<(), T> {
        let mut st = self.0.lock();
        if st.closed {
            return Err(job);
        }
        st.jobs.push_back(job);
        self.0.wake_if_needed(&mut st);
        Ok(())
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        self.0.lock().closed = true;
        self.0.wake.notify_all();
    }
}

impl<T> Receiver<T> {
    /// The next queued job, without waiting.
    pub fn try_recv(&self) -> Option<T> {
        self.0.lock().jobs.pop_front()
    }

    /// The next job, parking while there is none; `None` once the sender
    /// is gone and the queue is empty.
    pub fn recv(&self) -> Option<T> {
        let mut st = self.0.lock();
        loop {
            if let Some(job) = st.jobs.pop_front() {
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st.free -= 1;
            st.parked += 1;
            st = self
                .0
                .wake
                .wait_while(st, |s| s.wakeups == 0 && !s.closed)
                .unwrap_or_else(|p| p.into_inner());
            st.parked -= 1;
            if st.wakeups > 0 {
                // The waker already counted this reader as free.
                st.wakeups -= 1;
            } else {
                st.free += 1;
            }
        }
    }

    /// Runs `f`, a long read, with this reader counted as busy, so jobs
    /// queued meanwhile wake a parked reader instead of waiting for it.
    pub fn long<R>(&self, f: impl FnOnce() -> R) -> R {
        {
            let mut st = self.0.lock();
            st.free -= 1;
            self.0.wake_if_needed(&mut st);
        }
        // Counted free again even if `f` unwinds.
        struct Free<'a, T>(&'a Shared<T>);
        impl<T> Drop for Free<'_, T> {
            fn drop(&mut self) {
                self.0.lock().free += 1;
            }
        }
        let _free = Free(&self.0);
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Waits until `n` readers are parked.
    fn parked<T>(shared: &Shared<T>, n: usize) {
        for _ in 0..2000 {
            if shared.lock().parked == n {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        panic!("expected {n} parked readers, have {}", shared.lock().parked);
    }

    /// One thread per receiver, running `serve(reader, receiver, job,
    /// first)` on each job it takes; each thread returns whether it took
    /// any.
    fn readers<T: Send + 'static>(
        rxs: Vec<Receiver<T>>,
        serve: impl Fn(usize, &Receiver<T>, T, bool) + Clone + Send + 'static,
    ) -> Vec<std::thread::JoinHandle<bool>> {
        rxs.into_iter()
            .enumerate()
            .map(|(n, rx)| {
                let serve = serve.clone();
                std::thread::spawn(move || {
                    let mut took = false;
                    while let Some(job) = rx.recv() {
                        serve(n, &rx, job, !took);
                        took = true;
                    }
                    took
                })
            })
            .collect()
    }

    /// A wait that lasts until the returned sender sends.
    fn hold() -> (mpsc::Sender<()>, impl Fn() + Clone + Send + 'static) {
        let (release, held) = mpsc::channel::<()>();
        let held = Arc::new(Mutex::new(held));
        (release, move || held.lock().unwrap().recv().unwrap())
    }

    #[test]
    fn jobs_queued_behind_a_busy_point_reader_do_not_wake_another() {
        let (tx, rxs) = queue::<u32>(2);
        let shared = tx.0.clone();
        let (release, wait) = hold();
        let (done, got) = mpsc::channel();
        let threads = readers(rxs, move |n, _, job, _| {
            if job == 0 {
                // A point read that takes a while.
                wait();
            }
            done.send((n, job)).unwrap();
        });
        parked(&shared, 2);
        tx.send(0).unwrap();
        parked(&shared, 1);
        for job in 1..=10 {
            tx.send(job).unwrap();
        }
        // The awake reader is free (not in a long read) and the backlog is
        // small: the other one stays parked.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(shared.lock().parked, 1);
        release.send(()).unwrap();
        let served: Vec<(usize, u32)> = (0..=10)
            .map(|_| got.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        let first = served[0].0;
        assert!(served.iter().all(|(n, _)| *n == first), "{served:?}");
        assert_eq!(
            served.iter().map(|(_, j)| *j).collect::<Vec<_>>(),
            (0..=10).collect::<Vec<_>>()
        );
        drop(tx);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_long_read_wakes_another_reader_for_queued_jobs() {
        let (tx, rxs) = queue::<&'static str>(2);
        let shared = tx.0.clone();
        let (release, wait) = hold();
        let (done, got) = mpsc::channel();
        let threads = readers(rxs, move |_, rx, job, _| {
            if job == "long" {
                // Blocks until the test releases it.
                rx.long(&wait);
            }
            done.send(job).unwrap();
        });
        parked(&shared, 2);
        tx.send("long").unwrap();
        parked(&shared, 1);
        // The only awake reader is inside the long read: the point read
        // must be served by the parked one, not wait for the long read.
        tx.send("point").unwrap();
        assert_eq!(got.recv_timeout(Duration::from_secs(5)).unwrap(), "point");
        release.send(()).unwrap();
        assert_eq!(got.recv_timeout(Duration::from_secs(5)).unwrap(), "long");
        drop(tx);
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn a_backlog_wakes_more_readers_and_nothing_is_lost() {
        let (tx, rxs) = queue::<usize>(3);
        let shared = tx.0.clone();
        // The readers wait at a gate with their first job, so jobs pile up.
        let gate = Arc::new(std::sync::Barrier::new(4));
        let (done, got) = mpsc::channel();
        let at_gate = gate.clone();
        let threads = readers(rxs, move |_, _, job, first| {
            if first {
                at_gate.wait();
            }
            done.send(job).unwrap();
        });
        parked(&shared, 3);
        let total = 4 * BACKLOG;
        for job in 0..total {
            tx.send(job).unwrap();
        }
        // The backlog woke every reader (a regression fails here, rather
        // than hanging at the gate).
        parked(&shared, 0);
        gate.wait();
        let mut seen: Vec<usize> = (0..total)
            .map(|_| got.recv_timeout(Duration::from_secs(5)).unwrap())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..total).collect::<Vec<_>>());
        drop(tx);
        for t in threads {
            assert!(t.join().unwrap(), "a reader never woke");
        }
    }

    #[test]
    fn dropping_the_sender_stops_the_readers_after_the_queue_drains() {
        let (tx, mut rxs) = queue::<u8>(1);
        tx.send(1).unwrap();
        tx.send(2).unwrap();
        drop(tx);
        let rx = rxs.pop().unwrap();
        assert_eq!(rx.recv(), Some(1));
        assert_eq!(rx.try_recv(), Some(2));
        assert_eq!(rx.recv(), None);
    }
}
