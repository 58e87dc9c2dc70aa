//! The audit log's tamper evidence: a hash chain over its entries and checkpoints the CA
//! signs, and the verification that finds the first entry that does not fit.
//!
//! Entry `n` (numbered 1, 2, … without gaps) is stored as `prev ‖ hash ‖ body`, where `body`
//! is the entry's bytes as written, `prev` the hash of entry `n − 1` (for entry 1, a genesis
//! hash bound to the trust domain) and `hash = SHA-256(label ‖ prev ‖ n ‖ body)`. Because
//! `n` is in the hash, an entry moved to another position no longer matches; because `prev`
//! is, an entry removed, inserted or reordered breaks the link of the one after it.
//!
//! Whoever can write the store could recompute every hash after an entry they changed. A
//! **checkpoint** defeats that: the CA signs (entry number, head hash, time) with its
//! signing intermediate, periodically and on every root change. Verification recomputes the
//! chain and compares it with every checkpoint, whose signature must chain to a root of the
//! verifier's anchors. Removing entries behind the last checkpoint is then detected too;
//! entries written after the last checkpoint are covered only by the chain (reported).
//!
//! Retention removes the oldest entries only up to a checkpoint (the *cut*), which is kept:
//! its head is where verification of the remaining entries starts.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::digest;
use rcgen::{KeyPair, SigningKey};
use rustls_pki_types::CertificateDer;

use crate::bundle::{ECDSA_SHA256, KnownIssuer, TrustBundle, signed_by};
use crate::hex;

/// A SHA-256 hash of the chain.
pub type Hash = [u8; 32];

const GENESIS_LABEL: &[u8] = b"trellis audit log v1 genesis\0";
const ENTRY_LABEL: &[u8] = b"trellis audit log v1 entry\0";
const CHECKPOINT_LABEL: &[u8] = b"trellis audit log v1 checkpoint\0";

/// The hash entry 1 links to: bound to the trust domain, so that a log cannot be passed off
/// as another CA's.
pub fn genesis(trust_domain: &str) -> Hash {
    sha256(&[GENESIS_LABEL, trust_domain.as_bytes()])
}

/// The hash of entry `sequence` with `body`, following `prev`.
pub fn link(prev: &Hash, sequence: u64, body: &[u8]) -> Hash {
    sha256(&[ENTRY_LABEL, prev, &sequence.to_be_bytes(), body])
}

fn sha256(parts: &[&[u8]]) -> Hash {
    let mut context = digest::Context::new(&digest::SHA256);
    for part in parts {
        context.update(part);
    }
    context
        .finish()
        .as_ref()
        .try_into()
        .expect("SHA-256 is 32 bytes")
}

/// The tip of the chain: the last entry's number and hash (0 and the genesis when empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub hash: Hash,
}

impl Head {
    /// The head of an empty log.
    pub fn empty(trust_domain: &str) -> Self {
        Self {
            sequence: 0,
            hash: genesis(trust_domain),
        }
    }

    /// Chains `body` as the next entry, advancing the head; returns the entry to store.
    pub fn append(&mut self, body: Vec<u8>) -> ChainedEntry {
        let sequence = self.sequence + 1;
        let hash = link(&self.hash, sequence, &body);
        let entry = ChainedEntry {
            sequence,
            prev: self.hash,
            hash,
            body,
        };
        *self = Self { sequence, hash };
        entry
    }
}

/// One stored entry.
#[derive(Clone, PartialEq, Eq)]
pub struct ChainedEntry {
    pub sequence: u64,
    pub prev: Hash,
    pub hash: Hash,
    /// The entry as written (the CA writes JSON).
    pub body: Vec<u8>,
}

impl ChainedEntry {
    /// The stored value: `prev ‖ hash ‖ body`.
    pub fn encode(&self) -> Vec<u8> {
        let mut value = Vec::with_capacity(64 + self.body.len());
        value.extend_from_slice(&self.prev);
        value.extend_from_slice(&self.hash);
        value.extend_from_slice(&self.body);
        value
    }

    /// Reads a stored value; `None` if it is too short to hold the two hashes.
    pub fn decode(sequence: u64, value: &[u8]) -> Option<Self> {
        if value.len() < 64 {
            return None;
        }
        Some(Self {
            sequence,
            prev: value[..32].try_into().ok()?,
            hash: value[32..64].try_into().ok()?,
            body: value[64..].to_vec(),
        })
    }
}

impl fmt::Debug for ChainedEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainedEntry")
            .field("sequence", &self.sequence)
            .field("hash", &hex::encode(&self.hash))
            .field("body", &String::from_utf8_lossy(&self.body))
            .finish()
    }
}

/// A signed statement that the log's first `sequence` entries end in `head`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub trust_domain: String,
    pub sequence: u64,
    pub head: Hash,
    /// Unix seconds.
    pub time: u64,
    /// The certificate of the CA key that signed (DER).
    pub signer: Vec<u8>,
    /// ECDSA P-256 with SHA-256, ASN.1 DER.
    pub signature: Vec<u8>,
}

impl Checkpoint {
    /// Signs `head` with `key`, whose certificate is `signer`.
    pub fn sign(
        trust_domain: &str,
        head: Head,
        time: SystemTime,
        key: &KeyPair,
        signer: &CertificateDer<'_>,
    ) -> Result<Self, rcgen::Error> {
        let time = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_secs();
        let message = signed_message(trust_domain, head.sequence, &head.hash, time);
        Ok(Self {
            trust_domain: trust_domain.to_owned(),
            sequence: head.sequence,
            head: head.hash,
            time,
            signer: signer.to_vec(),
            signature: key.sign(&message)?,
        })
    }

    /// Checks the signature, and that the signer chains to a root of `anchors`.
    fn verify(&self, anchors: &TrustBundle) -> Result<(), String> {
        KnownIssuer::new(CertificateDer::from(self.signer.clone()), anchors).map_err(|e| {
            format!("its signer is not a CA certificate under the anchors given ({e})")
        })?;
        let message = signed_message(&self.trust_domain, self.sequence, &self.head, self.time);
        let signer = CertificateDer::from(self.signer.as_slice());
        match signed_by(&signer, ECDSA_SHA256, &message, &self.signature) {
            Ok(true) => Ok(()),
            Ok(false) => Err("its signature does not verify with its signer's key".into()),
            Err(e) => Err(format!("its signer certificate cannot be read ({e})")),
        }
    }
}

fn signed_message(trust_domain: &str, sequence: u64, head: &Hash, time: u64) -> Vec<u8> {
    let mut message = Vec::with_capacity(CHECKPOINT_LABEL.len() + trust_domain.len() + 49);
    message.extend_from_slice(CHECKPOINT_LABEL);
    message.extend_from_slice(trust_domain.as_bytes());
    message.push(0);
    message.extend_from_slice(&sequence.to_be_bytes());
    message.extend_from_slice(head);
    message.extend_from_slice(&time.to_be_bytes());
    message
}

/// What is wrong with a log, naming the first entry (or checkpoint) that shows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Tamper {
    #[error("entry {sequence} was altered: its content does not match the hash stored with it")]
    Altered { sequence: u64 },
    #[error(
        "entry {sequence} is missing: the log jumps from entry {before} to entry {after} \
         (an entry was deleted)"
    )]
    Missing {
        sequence: u64,
        before: u64,
        after: u64,
    },
    #[error(
        "entry {sequence} does not follow entry {before}: the entry before it was removed, \
         replaced or reordered"
    )]
    BrokenLink { sequence: u64, before: u64 },
    #[error(
        "entries 1 to {last_missing} are missing and no signed checkpoint marks a retention cut \
         there (the oldest entries were deleted)"
    )]
    MissingStart { last_missing: u64 },
    #[error(
        "the chain at entry {sequence} does not match the checkpoint the CA signed there: an \
         entry up to {sequence} was rewritten (hashes recomputed after it)"
    )]
    CheckpointMismatch { sequence: u64 },
    #[error(
        "the log ends at entry {last} but the CA signed a checkpoint at entry {sequence}: \
         entries {first_missing} to {sequence} were removed"
    )]
    Truncated {
        last: u64,
        first_missing: u64,
        sequence: u64,
    },
    #[error("the checkpoint at entry {sequence} is not genuine: {reason}")]
    BadCheckpoint { sequence: u64, reason: String },
    #[error("the checkpoint at entry {sequence} is for trust domain {found}, not {expected}")]
    ForeignCheckpoint {
        sequence: u64,
        found: String,
        expected: String,
    },
    #[error("entry {sequence} cannot be read: {reason}")]
    Unreadable { sequence: u64, reason: String },
}

impl Tamper {
    /// The entry (or checkpoint) number the finding names.
    pub fn sequence(&self) -> u64 {
        match self {
            Tamper::Altered { sequence }
            | Tamper::Missing { sequence, .. }
            | Tamper::BrokenLink { sequence, .. }
            | Tamper::CheckpointMismatch { sequence }
            | Tamper::Truncated { sequence, .. }
            | Tamper::BadCheckpoint { sequence, .. }
            | Tamper::ForeignCheckpoint { sequence, .. }
            | Tamper::Unreadable { sequence, .. } => *sequence,
            Tamper::MissingStart { last_missing } => *last_missing,
        }
    }
}

/// What a successful verification covered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The first and last entry present (0, 0 for an empty log).
    pub first: u64,
    pub last: u64,
    pub entries: u64,
    pub checkpoints: u64,
    /// The newest checkpoint, if any: (entry, unix time).
    pub last_checkpoint: Option<(u64, u64)>,
    /// Entries after the newest checkpoint: protected by the chain only, not yet signed.
    pub unsigned_tail: u64,
}

/// Verifies a log: `entries` in increasing sequence order (as stored, each decoded or the
/// reason it could not be), `checkpoints` in any order, against `anchors` (the roots whose
/// intermediates may sign checkpoints). Stops at the first finding, in log order.
pub fn verify(
    trust_domain: &str,
    entries: impl IntoIterator<Item = Result<ChainedEntry, (u64, String)>>,
    checkpoints: &[Checkpoint],
    anchors: &TrustBundle,
) -> Result<Verified, Tamper> {
    let mut checkpoints: Vec<&Checkpoint> = checkpoints.iter().collect();
    checkpoints.sort_by_key(|c| c.sequence);
    for checkpoint in &checkpoints {
        if checkpoint.trust_domain != trust_domain {
            return Err(Tamper::ForeignCheckpoint {
                sequence: checkpoint.sequence,
                found: checkpoint.trust_domain.clone(),
                expected: trust_domain.to_owned(),
            });
        }
        checkpoint
            .verify(anchors)
            .map_err(|reason| Tamper::BadCheckpoint {
                sequence: checkpoint.sequence,
                reason,
            })?;
    }
    let mut pending = checkpoints.iter().peekable();
    let mut head: Option<Head> = None;
    let mut first = 0;
    let mut count = 0;
    for entry in entries {
        let entry = entry.map_err(|(sequence, reason)| Tamper::Unreadable { sequence, reason })?;
        let expected_prev = match head {
            Some(head) => {
                if entry.sequence != head.sequence + 1 {
                    return Err(Tamper::Missing {
                        sequence: head.sequence + 1,
                        before: head.sequence,
                        after: entry.sequence,
                    });
                }
                head.hash
            }
            None => {
                first = entry.sequence;
                start_of(trust_domain, entry.sequence, &checkpoints)?
            }
        };
        if link(&entry.prev, entry.sequence, &entry.body) != entry.hash {
            return Err(Tamper::Altered {
                sequence: entry.sequence,
            });
        }
        if entry.prev != expected_prev {
            return Err(Tamper::BrokenLink {
                sequence: entry.sequence,
                before: entry.sequence - 1,
            });
        }
        let current = Head {
            sequence: entry.sequence,
            hash: entry.hash,
        };
        // Checkpoints below the first entry are the retention cut (checked by `start_of`).
        while let Some(checkpoint) = pending.next_if(|c| c.sequence <= current.sequence) {
            if checkpoint.sequence == current.sequence && checkpoint.head != current.hash {
                return Err(Tamper::CheckpointMismatch {
                    sequence: checkpoint.sequence,
                });
            }
        }
        head = Some(current);
        count += 1;
    }
    let last = head.map_or(0, |h| h.sequence);
    if let Some(checkpoint) = pending.next()
        && checkpoint.sequence > last
    {
        return Err(Tamper::Truncated {
            last,
            first_missing: last + 1,
            sequence: checkpoint.sequence,
        });
    }
    let newest = checkpoints.last();
    Ok(Verified {
        first,
        last,
        entries: count,
        checkpoints: checkpoints.len() as u64,
        last_checkpoint: newest.map(|c| (c.sequence, c.time)),
        unsigned_tail: last - newest.map_or(0, |c| c.sequence.min(last)),
    })
}

/// The hash the first present entry must link to: the genesis for entry 1, else the head
/// of the checkpoint right before it (the retention cut).
fn start_of(trust_domain: &str, first: u64, checkpoints: &[&Checkpoint]) -> Result<Hash, Tamper> {
    if first <= 1 {
        return Ok(genesis(trust_domain));
    }
    checkpoints
        .iter()
        .find(|c| c.sequence == first - 1)
        .map(|c| c.head)
        .ok_or(Tamper::MissingStart {
            last_missing: first - 1,
        })
}

#[cfg(test)]
mod tests;
