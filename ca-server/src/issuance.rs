//! The issuance pipeline, one path for every way a certificate is asked for:
//! authenticate the credential → check the CSR → decide identity and lifetime → sign →
//! record (consuming a join token in the same transaction) → wait for durability → reply.
//!
//! Nothing is written for a refused request: every check runs before the one transaction.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls_pki_types::CertificateDer;
use trellis_identity::profile::LeafSpec;
use trellis_identity::spiffe::reserved;
use trellis_identity::{SpiffeId, TrustBundle, hex};

use trellis_proto::metrics::Histogram;

use crate::attest::kubernetes::{AttestError, Attestor};
use crate::config::MIN_TTL;
use crate::csr;
use crate::error::CaError;
use crate::grantable::check_grantable;
use crate::peer::PeerChain;
use crate::state::{Core, unix};
use crate::store::{AuditRecord, CertRecord, RecordError, TokenUse};
use crate::tokens;

/// How the requester proved who it is.
#[derive(Debug, Clone)]
pub(crate) enum Credential {
    /// A join token (the secret as sent by the client).
    JoinToken(String),
    /// A Kubernetes projected service-account token (a JWT), verified by
    /// [`crate::attest::kubernetes`]. Not consumed: the kubelet rotates it.
    ServiceAccountToken(String),
    /// The TLS client chain of the connection (leaf first); empty if none was presented.
    Renewal {
        chain: Arc<PeerChain>,
        /// The CA's record of exactly this leaf, if the caller already read it (admission
        /// control does); read here otherwise.
        record: Option<CertRecord>,
    },
    /// An authenticated admin asking for a certificate for someone else.
    Admin {
        caller: SpiffeId,
        spiffe_id: SpiffeId,
        dns_names: Vec<String>,
    },
    /// The CA itself (its serving and admin certificates); may exceed `max_ttl`.
    Internal {
        spiffe_id: SpiffeId,
        lifetime: Duration,
        /// DNS names and IP addresses for the SAN.
        names: Vec<String>,
    },
}

/// An issued certificate, as returned to the requester.
#[derive(Debug, Clone)]
pub(crate) struct Issued {
    pub(crate) spiffe_id: SpiffeId,
    /// Leaf, then intermediate.
    pub(crate) chain: Vec<CertificateDer<'static>>,
    pub(crate) serial: String,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    pub(crate) bundle: Arc<TrustBundle>,
}

/// Who gets which certificate, decided from the credential.
struct Grant {
    spiffe_id: SpiffeId,
    dns_names: Vec<String>,
    via: &'static str,
    actor: String,
    token: Option<[u8; 32]>,
    /// A renewal's presented certificate (serial bytes): refused if revoked, in the same
    /// step that records the new one (`Store::record_renewal`).
    renewing: Option<Vec<u8>>,
    lifetime_override: Option<Duration>,
}

/// The issuance service.
#[derive(Debug)]
pub(crate) struct Issuance {
    core: Arc<Core>,
    /// Verifies Kubernetes service-account tokens, if `[kubernetes]` is configured.
    kubernetes: Option<Arc<Attestor>>,
    /// How long issuances took, for `/metrics`.
    pub(crate) seconds: Histogram,
}

impl Issuance {
    pub(crate) fn new(core: Arc<Core>, kubernetes: Option<Arc<Attestor>>) -> Self {
        Self {
            core,
            kubernetes,
            seconds: Histogram::default(),
        }
    }

    /// The core this service issues from (the CA's own certificates need its config).
    pub(crate) fn core(&self) -> &Core {
        &self.core
    }

    /// Runs the whole pipeline for one request; a certificate issued counts its duration
    /// (credential check to durable record) in `seconds`.
    pub(crate) async fn certify(
        &self,
        csr_der: &[u8],
        credential: Credential,
        requested_ttl: Option<Duration>,
    ) -> Result<Issued, CaError> {
        let started = std::time::Instant::now();
        let issued = self.pipeline(csr_der, credential, requested_ttl).await?;
        self.seconds.observe(started.elapsed());
        Ok(issued)
    }

    async fn pipeline(
        &self,
        csr_der: &[u8],
        credential: Credential,
        requested_ttl: Option<Duration>,
    ) -> Result<Issued, CaError> {
        let core = &*self.core;
        let now = core.now();
        let grant = self.authenticate(credential, now).await?;
        let csr = csr::check(csr_der)?;
        if let Some(uri) = &csr.requested_uri
            && uri != grant.spiffe_id.as_str()
        {
            return Err(CaError::PermissionDenied(format!(
                "CSR asks for {uri}, but the credential grants {}; send a CSR without a URI SAN \
                 or with exactly that ID",
                grant.spiffe_id
            )));
        }
        let lifetime = grant.lifetime_override.unwrap_or_else(|| {
            requested_ttl
                .unwrap_or(core.config.default_ttl)
                .clamp(MIN_TTL, core.config.max_ttl)
        });
        let spec = LeafSpec {
            spiffe_id: grant.spiffe_id.clone(),
            dns_names: grant.dns_names.clone(),
            public_point: csr.public_point,
            lifetime,
        };
        let signer = core.signer();
        // A serial collision is astronomically unlikely, but the store refuses reuse; retry.
        for _ in 0..3 {
            let leaf = signer.sign_leaf(&spec, now)?;
            let record = CertRecord {
                serial: leaf.serial_hex(),
                spiffe_id: grant.spiffe_id.to_string(),
                dns_names: grant.dns_names.clone(),
                not_before: unix(leaf.not_before),
                not_after: unix(leaf.not_after),
                issued_at: unix(now),
                issued_at_ns: now
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0),
                root_id: signer.root_id.clone(),
                intermediate_id: signer.id.clone(),
                issued_via: grant.via.to_owned(),
            };
            let mut audit = vec![AuditRecord {
                time: unix(now),
                kind: "certificate_issued".into(),
                spiffe_id: record.spiffe_id.clone(),
                serial: record.serial.clone(),
                actor: grant.actor.clone(),
                detail: format!("via {}, expires at unix {}", grant.via, record.not_after),
            }];
            if grant.token.is_some() {
                audit.push(AuditRecord {
                    kind: "join_token_used".into(),
                    detail: String::new(),
                    ..audit[0].clone()
                });
            }
            let token = grant.token.map(|hash| TokenUse {
                hash,
                now: unix(now),
            });
            let mark = core.store.mark();
            let recorded = match &grant.renewing {
                Some(renewing) => {
                    core.store
                        .record_renewal(&record, &leaf.der, &leaf.serial, renewing, &audit)
                }
                None => core
                    .store
                    .record_issuance(&record, &leaf.der, &leaf.serial, token, &audit),
            };
            match recorded {
                Ok(()) => {}
                Err(RecordError::Revoked) => return Err(self.revoked(grant.renewing.as_deref())),
                Err(RecordError::SerialTaken) => continue,
                Err(RecordError::Token(refusal)) => {
                    return Err(CaError::Unauthenticated(format!(
                        "{refusal}; create a new one with `trellis token create`"
                    )));
                }
                Err(RecordError::Store(e)) => return Err(CaError::store("nothing was issued", e)),
            }
            core.store
                .durable(mark)
                .await
                .map_err(|e| CaError::store("nothing was issued", e))?;
            core.recent.remember(&leaf.serial, &leaf.der, &record);
            tracing::info!(
                spiffe_id = %grant.spiffe_id,
                serial = %record.serial,
                via = grant.via,
                not_after = %trellis_identity::bundle::format_time(leaf.not_after),
                "certificate issued"
            );
            return Ok(Issued {
                spiffe_id: grant.spiffe_id,
                chain: vec![leaf.der, signer.cert.clone()],
                serial: record.serial,
                not_before: leaf.not_before,
                not_after: leaf.not_after,
                bundle: core.bundle(),
            });
        }
        Err(CaError::Internal(
            "could not find an unused serial number in 3 attempts".into(),
        ))
    }

    /// Why a renewal was refused: the certificate it presented (`serial`) is revoked,
    /// read back for the message.
    fn revoked(&self, serial: Option<&[u8]>) -> CaError {
        let serial = serial.unwrap_or_default();
        let detail = match self.core.store.revocation(serial) {
            Ok(Some(r)) => format!(" at unix {} ({})", r.revoked_at, r.reason),
            _ => String::new(),
        };
        CaError::Unauthenticated(format!(
            "renewal refused: certificate {} was revoked{detail}; bootstrap again with a new \
             join token",
            hex::encode(serial)
        ))
    }

    async fn authenticate(
        &self,
        credential: Credential,
        now: SystemTime,
    ) -> Result<Grant, CaError> {
        match credential {
            Credential::ServiceAccountToken(token) => {
                let attestor = self.kubernetes.as_ref().ok_or_else(|| {
                    CaError::Unauthenticated(
                        "service-account tokens are not accepted: this CA has no [kubernetes] \
                         configuration"
                            .into(),
                    )
                })?;
                let attested = attestor
                    .attest(&token, now, &self.core.config.trust_domain)
                    .await
                    .map_err(|e| match e {
                        AttestError::Refused(_) => CaError::Unauthenticated(e.to_string()),
                        AttestError::Unavailable(_) => {
                            CaError::Unavailable(format!("nothing was issued: {e}"))
                        }
                    })?;
                let actor = match &attested.pod {
                    Some(pod) => format!(
                        "system:serviceaccount:{}:{} (pod {pod})",
                        attested.namespace, attested.service_account
                    ),
                    None => format!(
                        "system:serviceaccount:{}:{}",
                        attested.namespace, attested.service_account
                    ),
                };
                Ok(Grant {
                    spiffe_id: attested.spiffe_id,
                    dns_names: Vec::new(),
                    via: "service_account_token",
                    actor,
                    token: None,
                    renewing: None,
                    lifetime_override: None,
                })
            }
            Credential::JoinToken(secret) => {
                let hash = tokens::hash(&secret);
                let token = self
                    .core
                    .store
                    .check_token(&hash, unix(now))
                    .map_err(|e| match e {
                        RecordError::Token(refusal) => CaError::Unauthenticated(format!(
                            "{refusal}; create a new one with `trellis token create`"
                        )),
                        other => CaError::store("nothing was issued", other),
                    })?;
                let spiffe_id = SpiffeId::new(&token.spiffe_id)
                    .map_err(|e| CaError::Internal(format!("stored token identity: {e}")))?;
                Ok(Grant {
                    spiffe_id,
                    dns_names: Vec::new(),
                    via: "join_token",
                    actor: "join_token".into(),
                    token: Some(hash),
                    renewing: None,
                    lifetime_override: None,
                })
            }
            Credential::Renewal { chain, record } => {
                if chain.is_empty() {
                    return Err(CaError::Unauthenticated(
                        "no credential: send a join_token to bootstrap, or present your current \
                         certificate as the TLS client certificate to renew"
                            .into(),
                    ));
                }
                let verified = self
                    .core
                    .verify_peer(&chain, now)
                    .map_err(|e| CaError::Unauthenticated(format!("renewal refused: {e}")))?;
                let td = self.core.config.trust_domain.as_str();
                if verified.spiffe_id.is_under(td, reserved::PREFIX) {
                    return Err(CaError::PermissionDenied(format!(
                        "{} is a reserved identity and is not renewed over the workload API",
                        verified.spiffe_id
                    )));
                }
                // The record was read for the same leaf that just verified, if at all.
                let record = match record {
                    Some(record) => record,
                    None => {
                        let serial = hex::decode(&verified.serial).unwrap_or_default();
                        self.core
                            .store
                            .certificate(&serial)
                            .map_err(|e| CaError::store("nothing was issued", e))?
                            .ok_or_else(|| {
                                CaError::Unauthenticated(format!(
                                    "renewal refused: certificate {} is not in this CA's records",
                                    verified.serial
                                ))
                            })?
                            .0
                    }
                };
                Ok(Grant {
                    actor: verified.spiffe_id.to_string(),
                    spiffe_id: verified.spiffe_id,
                    dns_names: record.dns_names,
                    via: "renewal",
                    token: None,
                    renewing: Some(hex::decode(&verified.serial).unwrap_or_default()),
                    lifetime_override: None,
                })
            }
            Credential::Admin {
                caller,
                spiffe_id,
                dns_names,
            } => {
                check_grantable(&self.core.config.trust_domain, &spiffe_id)?;
                Ok(Grant {
                    spiffe_id,
                    dns_names,
                    via: "admin",
                    actor: caller.to_string(),
                    token: None,
                    renewing: None,
                    lifetime_override: None,
                })
            }
            Credential::Internal {
                spiffe_id,
                lifetime,
                names,
            } => Ok(Grant {
                spiffe_id,
                dns_names: names,
                via: "ca",
                actor: "trellis-ca".into(),
                token: None,
                renewing: None,
                lifetime_override: Some(lifetime),
            }),
        }
    }
}
