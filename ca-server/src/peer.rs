//! A connection's client chain, and what has been learned about it once per connection
//! instead of once per request.
//!
//! The TLS layer only proves the peer holds the leaf's key (`DeferredClientVerifier`);
//! every request then has to verify the chain against the bundle. A connection that makes
//! many requests presents the same bytes each time, so the result is remembered on the
//! connection and reused while it still holds:
//!
//! - the trust bundle is the same one (every publication, such as adding or removing a
//!   root, re-verifies: the memo holds a weak reference, compared by address), and
//! - now is inside the validity of every certificate of the chain (so expiry is still
//!   checked on every request).
//!
//! What can change without touching the bundle, revocation, is not remembered: callers
//! check it on every request. A failed verification is not remembered either.

use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::SystemTime;

use rustls_pki_types::CertificateDer;
use trellis_identity::bundle::VerifiedSvid;
use trellis_identity::svid::SvidError;
use trellis_identity::{CertInfo, TrustBundle, hex};

/// The client chain a connection presented (unverified) and its memos.
#[derive(Debug, Default)]
pub struct PeerChain {
    certs: Vec<CertificateDer<'static>>,
    serial: OnceLock<Option<Vec<u8>>>,
    verified: Mutex<Option<Verified>>,
}

/// A successful verification and the conditions under which it still holds.
#[derive(Debug, Clone)]
struct Verified {
    bundle: Weak<TrustBundle>,
    valid_from: SystemTime,
    valid_until: SystemTime,
    svid: VerifiedSvid,
}

impl PeerChain {
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Self {
        Self {
            certs,
            ..Self::default()
        }
    }

    /// The certificates as presented, leaf first. NOT verified.
    pub fn certs(&self) -> &[CertificateDer<'static>] {
        &self.certs
    }

    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }

    /// The leaf's serial number bytes, parsed once; `None` without a parseable leaf.
    pub fn leaf_serial(&self) -> Option<&[u8]> {
        self.serial
            .get_or_init(|| {
                let leaf = self.certs.first()?;
                hex::decode(&CertInfo::parse(leaf).ok()?.serial)
            })
            .as_deref()
    }

    /// The chain verified against `bundle` at `now`, by `verify` unless an earlier
    /// verification on this connection still holds (see the module docs).
    pub fn verify_with(
        &self,
        bundle: &Arc<TrustBundle>,
        now: SystemTime,
        verify: impl FnOnce(&[CertificateDer<'static>]) -> Result<VerifiedSvid, SvidError>,
    ) -> Result<VerifiedSvid, SvidError> {
        let remembered = self
            .verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(v) = remembered
            && Weak::ptr_eq(&v.bundle, &Arc::downgrade(bundle))
            && v.valid_from <= now
            && now <= v.valid_until
        {
            return Ok(v.svid);
        }
        let svid = verify(&self.certs)?;
        if let Some((valid_from, valid_until)) = validity_window(&self.certs) {
            *self.verified.lock().unwrap_or_else(|p| p.into_inner()) = Some(Verified {
                bundle: Arc::downgrade(bundle),
                valid_from,
                valid_until,
                svid: svid.clone(),
            });
        }
        Ok(svid)
    }
}

/// The time span in which every certificate of `chain` is valid; `None` if one fails to
/// parse (then nothing is remembered).
fn validity_window(chain: &[CertificateDer<'_>]) -> Option<(SystemTime, SystemTime)> {
    let mut window: Option<(SystemTime, SystemTime)> = None;
    for cert in chain {
        let info = CertInfo::parse(cert).ok()?;
        window = Some(match window {
            None => (info.not_before, info.not_after),
            Some((from, until)) => (from.max(info.not_before), until.min(info.not_after)),
        });
    }
    window
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::time::Duration;

    use trellis_identity::bundle::Usage;
    use trellis_identity::profile::{self, LeafSpec, SigningCa};
    use trellis_identity::{TrustDomain, WorkloadKey};

    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    /// A bundle of one root, and a chain (leaf valid one hour from `now`, intermediate).
    fn setup(now: SystemTime) -> (Arc<TrustBundle>, PeerChain) {
        let td = TrustDomain::new("example.org").unwrap();
        let root = profile::new_root(&td, now, 24 * HOUR).unwrap();
        let root = SigningCa::new(root.cert, root.key).unwrap();
        let inter = profile::new_intermediate(&td, &root, now, 12 * HOUR).unwrap();
        let inter = SigningCa::new(inter.cert, inter.key).unwrap();
        let key = WorkloadKey::generate().unwrap();
        let spec = LeafSpec {
            spiffe_id: td.id("/ns/prod/sa/web").unwrap(),
            dns_names: Vec::new(),
            public_point: key.key_pair().public_key_raw().to_vec(),
            lifetime: HOUR,
        };
        let leaf = inter.sign_leaf(&spec, now).unwrap().der;
        let bundle = TrustBundle::new(td, 1, vec![root.cert.clone()]).unwrap();
        (
            Arc::new(bundle),
            PeerChain::new(vec![leaf, inter.cert.clone()]),
        )
    }

    /// Verifies in full, counting how often that happens.
    fn verify<'a>(
        bundle: &'a TrustBundle,
        now: SystemTime,
        calls: &'a Cell<u32>,
    ) -> impl FnOnce(&[CertificateDer<'static>]) -> Result<VerifiedSvid, SvidError> + 'a {
        move |chain| {
            calls.set(calls.get() + 1);
            bundle.verify(chain, now, Usage::Client)
        }
    }

    #[test]
    fn a_connection_verifies_once_per_published_bundle() {
        let now = SystemTime::now();
        let (bundle, peer) = setup(now);
        let calls = Cell::new(0);
        let first = peer.verify_with(&bundle, now, verify(&bundle, now, &calls));
        let later = now + Duration::from_secs(60);
        let second = peer.verify_with(&bundle, later, verify(&bundle, later, &calls));
        assert_eq!(
            calls.get(),
            1,
            "the second request reused the first verification"
        );
        assert_eq!(first.unwrap().serial, second.unwrap().serial);

        // A newly published bundle, even with the same roots and version, verifies again.
        let republished = Arc::new((*bundle).clone());
        peer.verify_with(&republished, later, verify(&republished, later, &calls))
            .expect("same roots");
        assert_eq!(calls.get(), 2, "a new bundle verifies again");
        peer.verify_with(&republished, later, verify(&republished, later, &calls))
            .expect("same roots");
        assert_eq!(calls.get(), 2, "and is then remembered for it");
    }

    #[test]
    fn expiry_is_still_checked_on_every_request() {
        let now = SystemTime::now();
        let (bundle, peer) = setup(now);
        let calls = Cell::new(0);
        peer.verify_with(&bundle, now, verify(&bundle, now, &calls))
            .expect("valid now");
        let expired = now + 2 * HOUR;
        let refused = peer.verify_with(&bundle, expired, verify(&bundle, expired, &calls));
        assert!(
            matches!(refused, Err(SvidError::Expired { .. })),
            "{refused:?}"
        );
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn a_failure_is_not_remembered() {
        let now = SystemTime::now();
        let (bundle, peer) = setup(now);
        let (foreign, _) = setup(now);
        let calls = Cell::new(0);
        assert!(
            peer.verify_with(&foreign, now, verify(&foreign, now, &calls))
                .is_err()
        );
        assert!(
            peer.verify_with(&foreign, now, verify(&foreign, now, &calls))
                .is_err()
        );
        assert_eq!(calls.get(), 2);
        peer.verify_with(&bundle, now, verify(&bundle, now, &calls))
            .expect("the right bundle");
    }

    #[test]
    fn the_leaf_serial_is_the_certificates() {
        let (_, peer) = setup(SystemTime::now());
        let info = CertInfo::parse(&peer.certs()[0]).unwrap();
        assert_eq!(peer.leaf_serial().map(hex::encode), Some(info.serial));
        assert_eq!(PeerChain::default().leaf_serial(), None);
    }
}
