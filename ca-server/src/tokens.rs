//! Join tokens: random secrets shown once, stored only as SHA-256 hashes.

use std::time::Duration;

use trellis_identity::{SpiffeId, hex};

use crate::error::CaError;
use crate::grantable::check_grantable;
use crate::state::CaState;
use crate::store::{AuditRecord, TokenRecord};

/// Default token lifetime.
pub const DEFAULT_TTL: Duration = Duration::from_secs(600);
/// Longest token lifetime.
pub const MAX_TTL: Duration = Duration::from_secs(24 * 3600);
/// Every token starts with this, so secret scanners and people recognise one.
pub const PREFIX: &str = "trellis-jt-";

/// What a client is told when the token could not be stored: its secret is dropped, so
/// whatever reached the disk can never be redeemed.
const TOKEN_NOT_CREATED: &str = "no join token was created";

/// The hash under which a token is stored.
pub fn hash(secret: &str) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// A freshly created token.
#[derive(Clone)]
pub struct NewToken {
    pub secret: String,
    pub spiffe_id: SpiffeId,
    pub expires_at: u64,
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

impl CaState {
    /// Creates a single-use token for `spiffe_id`, durably, and returns its secret once.
    pub async fn create_join_token(
        &self,
        spiffe_id: SpiffeId,
        ttl: Option<Duration>,
        created_by: &str,
    ) -> Result<NewToken, CaError> {
        check_grantable(&self.config.trust_domain, &spiffe_id)?;
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
        let now = self.now_unix();
        let expires_at = now + ttl.as_secs();
        let mark = self.store.mark();
        self.store
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
        self.store
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
