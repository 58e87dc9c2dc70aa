//! `trellis.admin.v1.Admin`. Every call has already passed `auth::admin_interceptor`.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use trellis_identity::crl_reason::CrlReason;
use trellis_identity::{SpiffeId, hex};
use trellis_proto::admin::v1::admin_server::Admin;
use trellis_proto::admin::v1::{
    ActivateJwtKeyRequest, ActivateRootRequest, AddFederationRequest, AddJwtKeyRequest,
    AddRootRequest, AuditCheckpoint, AuditEvent, CertificateRecord, CreateJoinTokenRequest,
    CreateJoinTokenResponse, FederationInfo, GetCertificateRequest, GetStatusRequest,
    GetStatusResponse, IntermediateInfo, IssueCertificateRequest, JwtKeyInfo,
    ListAuditCheckpointsRequest, ListAuditCheckpointsResponse, ListAuditEventsRequest,
    ListAuditEventsResponse, ListCertificatesRequest, ListCertificatesResponse,
    ListFederationsRequest, ListFederationsResponse, ListJwtKeysRequest, ListJwtKeysResponse,
    ListRootsRequest, ListRootsResponse, RefreshFederationRequest, RemoveFederationRequest,
    RemoveFederationResponse, RetireJwtKeyRequest, RetireRootRequest, RevokeCertificateRequest,
    RevokeCertificateResponse, RootInfo,
};
use trellis_proto::ca::v1::CertifyResponse;

use super::convert;
use crate::auth::AdminCaller;
use crate::bootstrap::store_err;
use crate::error::CaError;
use crate::issuance::Credential;
use crate::limits::ClientKey;
use crate::revocation::RevokeTarget;
use crate::services::Services;
use crate::store::{AuditRecord, ErrorKind, Listing, PageToken};

/// The admin API over the CA's services.
#[derive(Debug, Clone)]
pub struct AdminService {
    ca: Arc<Services>,
}

impl AdminService {
    pub(crate) fn new(ca: Arc<Services>) -> Self {
        Self { ca }
    }
}

const DEFAULT_LIMIT: usize = 1000;
/// Certificates per `ListCertificates` reply unless the caller asks for fewer, and the most
/// it may ask for: 1,000 records with their DER are about 1 MiB, well under gRPC's 4 MiB.
const DEFAULT_PAGE: usize = 500;
const MAX_PAGE: usize = 1000;
/// Index entries one `ListCertificates` call reads at most, matched or not.
const SCAN_PER_PAGE: usize = 10 * MAX_PAGE;
fn caller<T>(request: &Request<T>) -> Result<SpiffeId, Status> {
    request
        .extensions()
        .get::<AdminCaller>()
        .map(|c| c.0.clone())
        // Unreachable when served through the interceptor; fail closed if it ever is.
        .ok_or_else(|| CaError::Unauthenticated("admin identity missing".into()).into())
}

fn parse_id(field: &str, text: &str) -> Result<SpiffeId, Status> {
    SpiffeId::new(text)
        .map_err(|e| CaError::InvalidArgument(format!("{field} {text:?}: {e}")).into())
}

fn check_dns_name(name: &str) -> Result<(), Status> {
    let valid = !name.is_empty()
        && name.len() <= 253
        && name.split('.').enumerate().all(|(i, label)| {
            (!label.is_empty() && label.len() <= 63)
                && (label == "*" && i == 0
                    || label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                        && !label.starts_with('-')
                        && !label.ends_with('-'))
        });
    if valid {
        Ok(())
    } else {
        Err(
            CaError::InvalidArgument(format!("dns_names entry {name:?} is not a valid DNS name"))
                .into(),
        )
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_join_token(
        &self,
        request: Request<CreateJoinTokenRequest>,
    ) -> Result<Response<CreateJoinTokenResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let id = parse_id("spiffe_id", &body.spiffe_id)?;
        let token = self
            .ca
            .tokens
            .create(id, convert::ttl(body.ttl_seconds), caller.as_str())
            .await?;
        Ok(Response::new(CreateJoinTokenResponse {
            token: token.secret,
            spiffe_id: token.spiffe_id.to_string(),
            expires_at: convert::unix_timestamp(token.expires_at),
        }))
    }

    async fn issue_certificate(
        &self,
        request: Request<IssueCertificateRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let caller = caller(&request)?;
        let _permit = self
            .ca
            .limits
            .admit(&ClientKey::Admin, self.ca.core.now())?;
        let body = request.into_inner();
        let spiffe_id = parse_id("spiffe_id", &body.spiffe_id)?;
        for name in &body.dns_names {
            check_dns_name(name)?;
        }
        let issued = self
            .ca
            .issuance
            .certify(
                &body.csr_der,
                Credential::Admin {
                    caller,
                    spiffe_id,
                    dns_names: body.dns_names,
                },
                convert::ttl(body.ttl_seconds),
            )
            .await?;
        Ok(Response::new(convert::issued(issued)))
    }

    async fn list_certificates(
        &self,
        request: Request<ListCertificatesRequest>,
    ) -> Result<Response<ListCertificatesResponse>, Status> {
        let filter = request.into_inner();
        let page_size = match filter.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let now = self.ca.core.now_unix();
        let expiring_before = (filter.expiring_within_seconds > 0)
            .then(|| now.saturating_add(filter.expiring_within_seconds));
        let root_id = filter.root_id.clone();
        let include_expired = filter.include_expired;
        let keep = move |r: &crate::store::CertRecord| {
            (include_expired || r.not_after > now)
                && (root_id.is_empty() || r.root_id == root_id)
                && expiring_before.is_none_or(|t| r.not_after <= t && r.not_after > now)
        };
        let bad_token = || {
            Status::from(CaError::InvalidArgument(
                "page_token is not one this listing returned (the filters must stay the same \
                 from page to page); start again without it"
                    .into(),
            ))
        };
        // Without an identity, unexpired certificates come in expiry order (O(page), however
        // much history the store holds); with one, or with expired ones, by identity.
        let spiffe_id = match filter.spiffe_id.as_str() {
            "" => None,
            id => Some(parse_id("spiffe_id", id)?.as_str().to_owned()),
        };
        let after = (!filter.page_token.is_empty()).then(|| PageToken(filter.page_token.clone()));
        let store = self.ca.core.store.clone();
        let (page, next_page_token) = tokio::task::spawn_blocking(move || {
            let listing = if spiffe_id.is_none() && !include_expired {
                Listing::Expiring {
                    now,
                    until: expiring_before,
                }
            } else {
                Listing::ByIdentity {
                    spiffe_id: spiffe_id.as_deref(),
                    expired: include_expired,
                    now,
                }
            };
            let page = store.certificates_page(
                listing,
                after.as_ref(),
                page_size,
                SCAN_PER_PAGE,
                &keep,
            )?;
            let token = page.next.map(|t| t.0).unwrap_or_default();
            let mut with_revocations = Vec::with_capacity(page.certificates.len());
            for (record, der) in page.certificates {
                let serial = hex::decode(&record.serial).unwrap_or_default();
                let revocation = store.revocation(&serial)?;
                with_revocations.push((record, der, revocation));
            }
            Ok::<_, crate::store::StoreError>((with_revocations, token))
        })
        .await
        .map_err(|e| CaError::Internal(format!("listing task: {e}")))?
        .map_err(|e| match e.kind() {
            ErrorKind::Invalid => bad_token(),
            _ => store_err(e).into(),
        })?;
        let certificates = page
            .into_iter()
            .map(|(record, der, revocation)| convert::record(record, der, revocation))
            .collect();
        Ok(Response::new(ListCertificatesResponse {
            certificates,
            truncated: !next_page_token.is_empty(),
            next_page_token,
        }))
    }
    async fn get_certificate(
        &self,
        request: Request<GetCertificateRequest>,
    ) -> Result<Response<CertificateRecord>, Status> {
        let text = request.into_inner().serial;
        let serial = hex::decode(text.trim())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                CaError::InvalidArgument(format!("serial {text:?} is not hex (e.g. 4f3a...)"))
            })?;
        let store = &self.ca.core.store;
        let found = store.certificate(&serial).map_err(store_err)?;
        match found {
            Some((record, der)) => {
                let revocation = store.revocation(&serial).map_err(store_err)?;
                Ok(Response::new(convert::record(record, der, revocation)))
            }
            None => Err(CaError::NotFound(format!(
                "no certificate with serial {} is recorded by this CA, or it expired: expired \
                 certificates are archived after {} and then found only by listing them \
                 (`trellis cert list --include-expired --identity ID`), until [store] \
                 certificate_retention removes them",
                hex::encode(&serial),
                trellis_identity::duration::format(crate::retention::ARCHIVE_AFTER),
            ))
            .into()),
        }
    }

    async fn list_audit_events(
        &self,
        request: Request<ListAuditEventsRequest>,
    ) -> Result<Response<ListAuditEventsResponse>, Status> {
        let body = request.into_inner();
        let limit = match body.limit {
            0 => DEFAULT_LIMIT,
            n => n as usize,
        };
        let entries = self
            .ca
            .core
            .store
            .audit_chain_after(body.after_sequence, limit)
            .map_err(store_err)?;
        let mut events = Vec::with_capacity(entries.len());
        for entry in entries {
            // An entry that no longer decodes is still listed, with its bytes, so that a
            // verifier can name it rather than the whole listing failing.
            let e = serde_json::from_slice::<AuditRecord>(&entry.body).unwrap_or_else(|e| {
                AuditRecord {
                    time: 0,
                    kind: "undecodable".into(),
                    spiffe_id: String::new(),
                    serial: String::new(),
                    actor: String::new(),
                    detail: format!("the stored entry is not valid JSON: {e}"),
                }
            });
            events.push(AuditEvent {
                sequence: entry.sequence,
                time: convert::unix_timestamp(e.time),
                kind: e.kind,
                spiffe_id: e.spiffe_id,
                serial: e.serial,
                actor: e.actor,
                detail: e.detail,
                prev_hash: entry.prev.to_vec(),
                hash: entry.hash.to_vec(),
                body: entry.body,
            });
        }
        Ok(Response::new(ListAuditEventsResponse { events }))
    }

    async fn list_audit_checkpoints(
        &self,
        request: Request<ListAuditCheckpointsRequest>,
    ) -> Result<Response<ListAuditCheckpointsResponse>, Status> {
        let body = request.into_inner();
        let limit = match body.limit {
            0 => DEFAULT_LIMIT,
            n => n as usize,
        };
        let checkpoints = self
            .ca
            .core
            .store
            .audit_checkpoints_after(body.after_sequence, limit)
            .map_err(store_err)?
            .into_iter()
            .map(|c| AuditCheckpoint {
                trust_domain: c.trust_domain,
                sequence: c.sequence,
                head: c.head.to_vec(),
                time: c.time,
                signer: c.signer,
                signature: c.signature,
            })
            .collect();
        Ok(Response::new(ListAuditCheckpointsResponse { checkpoints }))
    }

    async fn get_status(
        &self,
        _request: Request<GetStatusRequest>,
    ) -> Result<Response<GetStatusResponse>, Status> {
        let (ca, core) = (&self.ca, &self.ca.core);
        let census = ca.roots.census().await?;
        let root_infos: Vec<RootInfo> = ca
            .roots
            .list(&census)?
            .into_iter()
            .map(convert::root)
            .collect();
        let crl = ca.crls.active_next_update().await;
        let signer = core.signer();
        let inter = trellis_identity::CertInfo::parse(&signer.cert)
            .map_err(|e| CaError::Internal(e.to_string()))?;
        Ok(Response::new(GetStatusResponse {
            trust_domain: core.config.trust_domain.to_string(),
            bundle: Some(convert::bundle(&core.bundle())),
            roots: root_infos,
            intermediate: Some(IntermediateInfo {
                root_id: signer.root_id.clone(),
                subject: inter.subject,
                not_before: convert::timestamp(inter.not_before),
                not_after: convert::timestamp(inter.not_after),
            }),
            // Only `None` if the store failed since the census above read it.
            issued_total: core.store.issued_total().unwrap_or_default(),
            live_total: census.live_total,
            version: env!("CARGO_PKG_VERSION").into(),
            current_time: convert::timestamp(core.now()),
            store_failure: core
                .store
                .failure()
                .map(|f| f.to_string())
                .unwrap_or_default(),
            crl_next_update: crl.as_ref().ok().and_then(|t| convert::timestamp(*t)),
            crl_error: crl.err().map(|e| e.to_string()).unwrap_or_default(),
        }))
    }

    async fn revoke_certificate(
        &self,
        request: Request<RevokeCertificateRequest>,
    ) -> Result<Response<RevokeCertificateResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let target = match (body.serial.trim(), body.spiffe_id.trim()) {
            (serial, "") if !serial.is_empty() => {
                RevokeTarget::Serial(hex::decode(serial).filter(|s| !s.is_empty()).ok_or_else(
                    || CaError::InvalidArgument(format!("serial {serial:?} is not hex")),
                )?)
            }
            ("", id) if !id.is_empty() => RevokeTarget::Identity(parse_id("spiffe_id", id)?),
            _ => {
                return Err(CaError::InvalidArgument(
                    "set exactly one of serial and spiffe_id".into(),
                )
                .into());
            }
        };
        let code = match body.reason_code {
            0 => CrlReason::from_text(&body.reason),
            n => Some(CrlReason::from_code(n).ok_or_else(|| {
                let known: Vec<String> = CrlReason::ALL.iter().map(|r| r.to_string()).collect();
                CaError::InvalidArgument(format!(
                    "reason_code {n} is not a CRLReason a revocation can carry; use one of {}",
                    known.join(", ")
                ))
            })?),
        };
        let reason = if body.reason.trim().is_empty() {
            code.map_or("unspecified", CrlReason::rfc_name).to_owned()
        } else {
            body.reason
        };
        let serials = self
            .ca
            .revocations
            .revoke(target, &reason, code, caller.as_str())
            .await?;
        Ok(Response::new(RevokeCertificateResponse { serials }))
    }

    async fn list_roots(
        &self,
        _request: Request<ListRootsRequest>,
    ) -> Result<Response<ListRootsResponse>, Status> {
        let roots = &self.ca.roots;
        let version = self.ca.core.bundle().version();
        let census = roots.census().await?;
        let convergence = roots.convergence(&census, version);
        Ok(Response::new(ListRootsResponse {
            roots: roots
                .list(&census)?
                .into_iter()
                .map(convert::root)
                .collect(),
            bundle_version: version,
            live_workloads: convergence.live,
            unconverged_workloads: convergence.unconverged,
        }))
    }

    async fn add_root(
        &self,
        request: Request<AddRootRequest>,
    ) -> Result<Response<RootInfo>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let record = if body.certificate_pem.is_empty() {
            if !body.private_key_pem.is_empty() {
                return Err(CaError::InvalidArgument(
                    "private_key_pem without certificate_pem: import both, or neither to generate"
                        .into(),
                )
                .into());
            }
            self.ca.roots.add(caller.as_str()).await?
        } else {
            let key = (!body.private_key_pem.is_empty()).then_some(body.private_key_pem.as_slice());
            self.ca
                .roots
                .import(&body.certificate_pem, key, caller.as_str())
                .await?
        };
        self.root_info(&record.id).await
    }

    async fn activate_root(
        &self,
        request: Request<ActivateRootRequest>,
    ) -> Result<Response<RootInfo>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let record = self
            .ca
            .roots
            .activate(body.root_id.trim(), body.force, caller.as_str())
            .await?;
        self.root_info(&record.id).await
    }

    async fn retire_root(
        &self,
        request: Request<RetireRootRequest>,
    ) -> Result<Response<RootInfo>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let record = self
            .ca
            .roots
            .retire(body.root_id.trim(), body.force, caller.as_str())
            .await?;
        self.root_info(&record.id).await
    }

    async fn add_federation(
        &self,
        request: Request<AddFederationRequest>,
    ) -> Result<Response<FederationInfo>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let federation = self
            .ca
            .federations
            .add(
                &body.trust_domain,
                &body.endpoint_url,
                &body.endpoint_spiffe_id,
                &body.bundle,
                caller.as_str(),
            )
            .await?;
        Ok(Response::new(convert::federation(federation)))
    }

    async fn list_federations(
        &self,
        _request: Request<ListFederationsRequest>,
    ) -> Result<Response<ListFederationsResponse>, Status> {
        let federations = self
            .ca
            .federations
            .list()?
            .into_iter()
            .map(convert::federation)
            .collect();
        Ok(Response::new(ListFederationsResponse { federations }))
    }

    async fn refresh_federation(
        &self,
        request: Request<RefreshFederationRequest>,
    ) -> Result<Response<FederationInfo>, Status> {
        let body = request.into_inner();
        let federation = self.ca.federations.refresh(&body.trust_domain).await?;
        Ok(Response::new(convert::federation(federation)))
    }

    async fn remove_federation(
        &self,
        request: Request<RemoveFederationRequest>,
    ) -> Result<Response<RemoveFederationResponse>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        self.ca
            .federations
            .remove(&body.trust_domain, caller.as_str())
            .await?;
        Ok(Response::new(RemoveFederationResponse {}))
    }

    async fn list_jwt_keys(
        &self,
        _request: Request<ListJwtKeysRequest>,
    ) -> Result<Response<ListJwtKeysResponse>, Status> {
        let roots = &self.ca.roots;
        let version = self.ca.core.bundle().version();
        let convergence = roots.convergence(&roots.census().await?, version);
        Ok(Response::new(ListJwtKeysResponse {
            keys: self
                .ca
                .jwt_keys
                .list()?
                .into_iter()
                .map(convert::jwt_key)
                .collect(),
            bundle_version: version,
            live_workloads: convergence.live,
            unconverged_workloads: convergence.unconverged,
        }))
    }

    async fn add_jwt_key(
        &self,
        request: Request<AddJwtKeyRequest>,
    ) -> Result<Response<JwtKeyInfo>, Status> {
        let caller = caller(&request)?;
        let view = self.ca.jwt_keys.add(caller.as_str()).await?;
        Ok(Response::new(convert::jwt_key(view)))
    }

    async fn activate_jwt_key(
        &self,
        request: Request<ActivateJwtKeyRequest>,
    ) -> Result<Response<JwtKeyInfo>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let view = self
            .ca
            .jwt_keys
            .activate(body.key_id.trim(), body.force, caller.as_str())
            .await?;
        Ok(Response::new(convert::jwt_key(view)))
    }

    async fn retire_jwt_key(
        &self,
        request: Request<RetireJwtKeyRequest>,
    ) -> Result<Response<JwtKeyInfo>, Status> {
        let caller = caller(&request)?;
        let body = request.into_inner();
        let view = self
            .ca
            .jwt_keys
            .retire(body.key_id.trim(), body.force, caller.as_str())
            .await?;
        Ok(Response::new(convert::jwt_key(view)))
    }
}

impl AdminService {
    async fn root_info(&self, id: &str) -> Result<Response<RootInfo>, Status> {
        let roots = &self.ca.roots;
        let view = roots
            .list(&roots.census().await?)?
            .into_iter()
            .find(|r| r.record.id == id)
            .ok_or_else(|| CaError::Internal(format!("root {id} vanished")))?;
        Ok(Response::new(convert::root(view)))
    }
}
