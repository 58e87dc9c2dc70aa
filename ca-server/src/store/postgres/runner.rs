//! Where the database client runs: a small tokio runtime owned by the store, so that the
//! synchronous [`crate::store::Store`] calls work from anywhere (an async worker of the
//! CA's runtime, its blocking pool, a plain thread, a current-thread runtime) without
//! nesting runtimes and without the client depending on the caller's runtime to make
//! progress.

use std::future::Future;

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

use crate::store::StoreError;

/// The store's runtime. Dropping it never blocks (a store may be dropped on an async
/// worker): its threads are left to finish on their own.
#[derive(Debug)]
pub(super) struct Runner {
    runtime: Option<Runtime>,
}

impl Runner {
    pub fn start() -> Result<Self, StoreError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("trellis-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Storage(format!("cannot start the database runtime: {e}")))?;
        Ok(Self {
            runtime: Some(runtime),
        })
    }

    fn handle(&self) -> &Handle {
        self.runtime
            .as_ref()
            .expect("the runtime is only taken when the store is dropped")
            .handle()
    }

    /// Runs `work` in the background on the store's runtime until the store is dropped.
    pub fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        self.handle().spawn(work);
    }

    /// Runs `work` on the store's runtime and waits for its result. On a worker of a
    /// multi-thread runtime the wait is in `block_in_place`, so the worker's other tasks
    /// go on elsewhere; anywhere else the thread just waits.
    pub fn block<T, E>(
        &self,
        work: impl Future<Output = Result<T, E>> + Send + 'static,
    ) -> Result<T, E>
    where
        T: Send + 'static,
        E: Send + 'static + From<StoreError>,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle().spawn(async move {
            let _ = tx.send(work.await);
        });
        wait(&rx)
    }
}

/// Waits for the answer a task of the store's runtime sends on `rx` (see
/// [`Runner::block`]); a sender dropped unanswered is a storage failure.
pub(super) fn wait<T, E>(rx: &std::sync::mpsc::Receiver<Result<T, E>>) -> Result<T, E>
where
    E: From<StoreError>,
{
    let wait = move || {
        rx.recv().unwrap_or_else(|_| {
            Err(E::from(StoreError::Storage(
                "the database task stopped before answering".into(),
            )))
        })
    };
    match Handle::try_current() {
        Ok(caller) if caller.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(wait)
        }
        _ => wait(),
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}
