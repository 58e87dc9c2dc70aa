//! The running CA's shared state: configuration, store, clock, the signing intermediate and
//! the published trust bundle.

use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use trellis_identity::TrustBundle;
use trellis_identity::clock::Clock;

use crate::config::Config;
use crate::store::Store;
use trellis_identity::profile::SigningCa;

/// Everything a request handler needs.
#[derive(Debug)]
pub struct CaState {
    pub config: Config,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    signer: RwLock<Arc<SigningCa>>,
    bundle: watch::Sender<Arc<TrustBundle>>,
}

impl CaState {
    /// Assembles the state of an initialised CA.
    pub fn new(
        config: Config,
        store: Store,
        clock: Arc<dyn Clock>,
        signer: SigningCa,
        bundle: TrustBundle,
    ) -> Self {
        Self {
            config,
            store,
            clock,
            signer: RwLock::new(Arc::new(signer)),
            bundle: watch::Sender::new(Arc::new(bundle)),
        }
    }

    /// The intermediate that signs new certificates.
    pub fn signer(&self) -> Arc<SigningCa> {
        self.signer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.borrow().clone()
    }

    /// Follows trust-bundle changes.
    pub fn watch_bundle(&self) -> watch::Receiver<Arc<TrustBundle>> {
        self.bundle.subscribe()
    }

    /// Publishes a new trust bundle to every watcher.
    pub fn publish_bundle(&self, bundle: TrustBundle) {
        self.bundle.send_replace(Arc::new(bundle));
    }

    /// Now, from the injected clock.
    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// Now as Unix seconds.
    pub fn now_unix(&self) -> u64 {
        unix(self.now())
    }
}

/// A time as Unix seconds (0 before the epoch).
pub fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Resolves once the stop flag is set (or its sender is gone).
pub async fn stopped(flag: &mut watch::Receiver<bool>) {
    let _ = flag.wait_for(|stop| *stop).await;
}
