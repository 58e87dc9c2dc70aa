//! Join tokens: random secrets shown once, stored only as SHA-256 hashes.

use std::sync::Arc;
use std::time::Duration;

use trellis_identity::{SpiffeId, hex};

use crate::error::CaError;
use crate::grantable::check_grantable;
use crate::state::Core;
use crate::store::{AuditRecord, TokenRecord};

/// Default token lifetime.
pub(crate) const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Longest token lifetime.
pub(crate) const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Every token starts with this, so secret scanners and people recognise one.
pub(crate) const PREFIX: &str = "trellis-jt-";

/// What a client is told when the token could not be stored: its secret is dropped, so
/// whatever reached the disk can never be redeemed.
const TOKEN_NOT_CREATED: &str = "no join token was created";

/// The hash under which a token is stored.
pub(crate) fn hash(secret: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A freshly created token.
#[derive(Clone)]
pub(crate) struct NewToken {
    pub(crate) secret: String,
    pub(crate) spiffe_id: SpiffeId,
    pub(crate) expires_at: u64,
}

impl std::fmt::Debug for NewToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewToken")
            .field("secret", &"[redacted]")
            .field("spiffe_id", &self.spiffe_id)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// The join-token service.
#[derive(Debug)]
pub(crate) struct JoinTokens {
    core: Arc<Core>,
}

impl JoinTokens {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Creates a single-use token for `spiffe_id`, durably, and returns its secret once.
    pub(crate) async fn create(
        &self,
        spiffe_id: SpiffeId,
        ttl: Option<Duration>,
        created_by: &str,
    ) -> Result<NewToken, CaError> {
        check_grantable(&self.core.config.trust_domain, &spiffe_id)?;
        let ttl = ttl.unwrap_or(DEFAULT_TTL);
        if ttl.is_zero() || ttl > MAX_TTL {
            return Err(CaError::InvalidArgument(format!(
                "token ttl must be between 1s and 24h, got {}s",
                ttl.as_secs()
            )));
        }
        let mut random = [0u8; 32];
        aws_lc_rs::rand::fill(&mut random)
            .map_err(|_| CaError::Internal("system random source failed".into()))?;
        let secret = format!("{PREFIX}{}", hex::encode(&random));
        let now = self.core.now_unix();
        let expires_at = now + ttl.as_secs();
        let store = &self.core.store;
        let mark = store.mark();
        store
            .create_token(
                &hash(&secret),
                &TokenRecord {
                    spiffe_id: spiffe_id.to_string(),
                    created_at: now,
                    expires_at,
                    created_by: created_by.to_owned(),
                    used_at: None,
                    used_for_serial: None,
                },
                &AuditRecord {
                    time: now,
                    kind: "join_token_created".into(),
                    spiffe_id: spiffe_id.to_string(),
                    serial: String::new(),
                    actor: created_by.to_owned(),
                    detail: format!("expires at unix {expires_at}"),
                },
            )
            .map_err(|e| CaError::store(TOKEN_NOT_CREATED, e))?;
        store
            .durable(mark)
            .await
            .map_err(|e| CaError::store(TOKEN_NOT_CREATED, e))?;
        tracing::info!(spiffe_id = %spiffe_id, created_by, expires_at, "join token created");
        Ok(NewToken {
            secret,
            spiffe_id,
            expires_at,
        })
    }
}
