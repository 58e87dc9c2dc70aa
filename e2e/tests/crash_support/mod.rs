//! Clients for the crash-safety tests: gRPC connections to a real `trellis-ca` as an admin
//! or as a workload, a seeded random source, and the record of what clients were given.
// Each test binary that includes this module uses only part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::CertificateDer;
use tonic::transport::Channel;
use trellis_identity::tls::{self, Identity, Versions};
use trellis_identity::{IdMatcher, TrustBundle, TrustDomain, WorkloadKey, pem};
use trellis_proto::admin::v1::admin_client::AdminClient;
use trellis_proto::admin::v1::{CertificateRecord, GetCertificateRequest};
use trellis_proto::ca::v1::CertifyResponse;
use trellis_proto::ca::v1::workload_ca_client::WorkloadCaClient;

/// The environment variable that replays a run: `TRELLIS_CRASH_SEED=<seed> cargo test ...`.
pub const SEED_VAR: &str = "TRELLIS_CRASH_SEED";

/// A small, seeded, reproducible random source (SplitMix64): the tests choose kill moments
/// and actions from it, and print the seed so a failure can be replayed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// The seed from [`SEED_VAR`], or a fresh one from the clock.
    pub fn seed_from_env() -> u64 {
        match std::env::var(SEED_VAR) {
            Ok(text) => text
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_VAR}={text:?} is not a u64")),
            Err(_) => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1),
        }
    }

    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }

    /// A new source for a sub-task, derived from this one.
    pub fn fork(&mut self) -> Self {
        Self(self.next_u64())
    }
}

/// What the CA needs to be talked to: its address, trust domain and the admin credentials.
#[derive(Clone)]
pub struct CaAccess {
    pub addr: SocketAddr,
    pub bundle: Arc<TrustBundle>,
    pub admin: Identity,
}

impl CaAccess {
    /// Reads the admin credentials and bundle the CA wrote to `admin_dir`.
    pub fn new(addr: SocketAddr, trust_domain: &str, admin_dir: &Path) -> Self {
        let read = |name: &str| {
            std::fs::read(admin_dir.join(name))
                .unwrap_or_else(|e| panic!("{}: {e}", admin_dir.join(name).display()))
        };
        let td = TrustDomain::new(trust_domain).expect("trust domain");
        Self {
            addr,
            bundle: Arc::new(TrustBundle::from_pem(td, 0, &read("bundle.pem")).expect("bundle")),
            admin: Identity {
                chain: pem::certs_from_pem(&read("admin.pem")).expect("admin chain"),
                key: pem::private_key_from_pem(&read("admin.key.pem")).expect("admin key"),
            },
        }
    }

    /// A TLS connection to the CA, presenting `identity` if given.
    pub async fn channel(
        &self,
        identity: Option<&Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let ca_id = self
            .bundle
            .trust_domain()
            .id("/trellis/ca")
            .expect("CA identity");
        let config = tls::client_config(
            self.bundle.clone(),
            IdMatcher::exact(ca_id),
            identity,
            Versions::Tls13,
            &[trellis_proto::channel::ALPN_H2],
        )
        .expect("client TLS config");
        trellis_proto::channel::connect(self.addr, Arc::new(config)).await
    }

    /// The admin API, authenticated with the admin certificate.
    pub async fn admin(&self) -> Result<AdminClient<Channel>, tonic::transport::Error> {
        Ok(AdminClient::new(self.channel(Some(&self.admin)).await?))
    }

    /// The workload API as `identity` (renewal), or anonymously (bootstrap).
    pub async fn workload(
        &self,
        identity: Option<&Identity>,
    ) -> Result<WorkloadCaClient<Channel>, tonic::transport::Error> {
        Ok(WorkloadCaClient::new(self.channel(identity).await?))
    }
}

/// A certificate a client was given, as it was given.
#[derive(Debug, Clone)]
pub struct Received {
    pub serial: String,
    pub der: Vec<u8>,
    /// "join_token", "renewal" or "admin".
    pub via: &'static str,
    pub round: usize,
}

impl Received {
    pub fn from_response(response: &CertifyResponse, via: &'static str, round: usize) -> Self {
        Self {
            serial: response.serial.clone(),
            der: response.chain_der.first().cloned().unwrap_or_default(),
            via,
            round,
        }
    }
}

/// A workload's certificate and key: what it renews with.
pub struct Held {
    pub chain: Vec<Vec<u8>>,
    pub key: WorkloadKey,
}

impl Held {
    pub fn identity(&self) -> Identity {
        Identity {
            chain: self
                .chain
                .iter()
                .map(|der| CertificateDer::from(der.clone()))
                .collect(),
            key: self.key.private_key_der(),
        }
    }
}

/// Checks that the CA's record of `received` exists and carries the same DER.
pub async fn check_recorded(
    admin: &mut AdminClient<Channel>,
    received: &Received,
) -> Result<CertificateRecord, String> {
    let record = admin
        .get_certificate(GetCertificateRequest {
            serial: received.serial.clone(),
        })
        .await
        .map_err(|s| {
            format!(
                "certificate {} ({}, round {}) was given to a client but the CA does not have \
                 it: {} {}",
                received.serial,
                received.via,
                received.round,
                s.code(),
                s.message()
            )
        })?
        .into_inner();
    if record.certificate_der != received.der {
        return Err(format!(
            "certificate {} ({}, round {}): the stored DER differs from what the client got",
            received.serial, received.via, received.round
        ));
    }
    Ok(record)
}
