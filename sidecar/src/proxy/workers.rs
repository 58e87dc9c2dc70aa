//! Where connection tasks run: a set of single-threaded tokio runtimes, each on its own
//! thread with its own epoll, and each connection on the one with the fewest live
//! connections (the nginx model: one event loop per worker, a connection never moves).
//!
//! Why not tokio's multi-thread runtime: it moves a sidecar's work between threads and
//! cores (ten times the CPU migrations of one thread, measured with `perf stat` under
//! `trellis-bench proxy`), and on a VM a wake-up on the other vCPU waits whenever the host
//! has taken that vCPU away. Here a connection stays on its thread, and a thread that is
//! held up stalls only its own share. Side by side in the bench, this had the lower added
//! p99 (ARCHITECTURE.md).
//!
//! The first slot is the runtime that created the [`Workers`] (the sidecar's main one, which
//! also runs the accept loops, the agent and the admin endpoint); the others are threads
//! of their own, stopped when the last clone of the [`Workers`] is dropped.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, mpsc};

use tokio::runtime::Handle;
use tokio::sync::oneshot;

/// A handle on the worker runtimes; clones share them.
#[derive(Clone, Debug)]
pub struct Workers(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    slots: Vec<Arc<Slot>>,
    /// Dropping these ends the extra threads' runtimes (and the tasks still on them).
    _stops: Vec<oneshot::Sender<()>>,
}

#[derive(Debug)]
struct Slot {
    handle: Handle,
    live: AtomicUsize,
}

impl Slot {
    fn new(handle: Handle) -> Arc<Self> {
        Arc::new(Self {
            handle,
            live: AtomicUsize::new(0),
        })
    }
}

/// Counts a task as live on its slot until the task ends.
struct LiveGuard(Arc<Slot>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Relaxed);
    }
}

impl Workers {
    /// Only the current runtime. Panics outside a tokio runtime.
    pub fn current() -> Self {
        Self(Arc::new(Inner {
            slots: vec![Slot::new(Handle::current())],
            _stops: Vec::new(),
        }))
    }

    /// The current runtime and `n - 1` more threads, each with a single-threaded runtime.
    /// Panics outside a tokio runtime; errors if a thread or runtime cannot be started.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let mut slots = vec![Slot::new(Handle::current())];
        let mut stops = Vec::new();
        for i in 1..n.max(1) {
            let (handle_tx, handle_rx) = mpsc::channel();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("trellis-worker-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = handle_tx.send(Ok(runtime.handle().clone()));
                            // Runs this thread's connections until the stop sender drops.
                            let _ = runtime.block_on(stop_rx);
                        }
                        Err(e) => {
                            let _ = handle_tx.send(Err(e));
                        }
                    }
                })?;
            let handle = handle_rx
                .recv()
                .map_err(|_| std::io::Error::other("a worker thread ended before starting"))??;
            slots.push(Slot::new(handle));
            stops.push(stop_tx);
        }
        Ok(Self(Arc::new(Inner {
            slots,
            _stops: stops,
        })))
    }

    /// Live tasks per runtime, in slot order (as many entries as runtimes).
    pub fn live(&self) -> Vec<usize> {
        self.0.slots.iter().map(|s| s.live.load(Relaxed)).collect()
    }

    /// Runs `make()`'s future on the runtime with the fewest live tasks (the first such).
    /// `make` runs on that runtime, so what it registers with tokio (a socket, a timer)
    /// belongs to that runtime's driver.
    pub fn spawn<M, F>(&self, make: M)
    where
        M: FnOnce() -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let slot = self
            .0
            .slots
            .iter()
            .min_by_key(|s| s.live.load(Relaxed))
            .expect("at least one slot");
        slot.live.fetch_add(1, Relaxed);
        let guard = LiveGuard(slot.clone());
        slot.handle.spawn(async move {
            let _guard = guard;
            make().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread::ThreadId;

    /// Spawns a task that reports its thread and then waits for `release`.
    fn park_one(
        workers: &Workers,
        release: &tokio::sync::watch::Receiver<bool>,
    ) -> oneshot::Receiver<ThreadId> {
        let (tx, rx) = oneshot::channel();
        let mut release = release.clone();
        workers.spawn(move || async move {
            let _ = tx.send(std::thread::current().id());
            let _ = release.wait_for(|go| *go).await;
        });
        rx
    }

    #[tokio::test(flavor = "current_thread")]
    async fn connections_go_to_the_least_busy_runtime_each_on_its_own_thread() {
        let workers = Workers::start(3).expect("start");
        assert_eq!(workers.live().len(), 3);
        let (go, release) = tokio::sync::watch::channel(false);
        let mut threads = Vec::new();
        for _ in 0..6 {
            threads.push(park_one(&workers, &release).await.expect("ran"));
        }
        // Two tasks on each runtime, the first on this test's own thread.
        assert_eq!(workers.live(), vec![2, 2, 2]);
        assert_eq!(threads[0], std::thread::current().id());
        let distinct: std::collections::HashSet<_> = threads.iter().collect();
        assert_eq!(distinct.len(), 3, "{threads:?}");
        // Same slot, same thread: slots 0,1,2 then 0,1,2 again.
        assert_eq!(threads[..3], threads[3..]);

        // When they end, the counts come back down.
        go.send_replace(true);
        for _ in 0..200 {
            if workers.live() == vec![0, 0, 0] {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        assert_eq!(workers.live(), vec![0, 0, 0]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropping_the_workers_stops_their_threads() {
        let workers = Workers::start(2).expect("start");
        // One task waits on this runtime, so the next goes to the extra thread's.
        workers.spawn(std::future::pending::<()>);
        // A task left waiting on the extra runtime is cancelled when its runtime stops.
        let (dropped_tx, dropped_rx) = oneshot::channel::<()>();
        workers.spawn(move || async move {
            let _keep = dropped_tx;
            std::future::pending::<()>().await;
        });
        assert_eq!(workers.live(), vec![1, 1]);
        drop(workers);
        // The sender inside the cancelled task is dropped: the receiver sees it closed.
        let closed = tokio::time::timeout(std::time::Duration::from_secs(5), dropped_rx).await;
        assert!(matches!(closed, Ok(Err(_))), "{closed:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn one_worker_is_the_current_runtime_alone() {
        let workers = Workers::start(1).expect("start");
        let (tx, rx) = oneshot::channel();
        workers.spawn(move || async move {
            let _ = tx.send(std::thread::current().id());
        });
        assert_eq!(rx.await.expect("ran"), std::thread::current().id());
        assert_eq!(workers.live().len(), 1);
        assert_eq!(Workers::current().live().len(), 1);
    }
}
