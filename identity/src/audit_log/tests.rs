use std::time::{Duration, SystemTime};

use super::*;
use crate::profile::{self, SigningCa};
use crate::spiffe::TrustDomain;

const TD: &str = "example.org";
const DAY: Duration = Duration::from_secs(86_400);

/// A root (as anchors) and an intermediate under it that signs checkpoints.
fn ca() -> (TrustBundle, SigningCa) {
    let td = TrustDomain::new(TD).unwrap();
    let now = SystemTime::now();
    let root = profile::new_root(&td, now, 10 * DAY).unwrap();
    let root = SigningCa::new(root.cert, root.key).unwrap();
    let inter = profile::new_intermediate(&td, &root, now, 5 * DAY).unwrap();
    let inter = SigningCa::new(inter.cert, inter.key).unwrap();
    let anchors = TrustBundle::new(td, 1, vec![root.cert.clone()]).unwrap();
    (anchors, inter)
}

/// A log of `n` entries with a checkpoint after each entry in `checkpoint_at`.
fn log(n: u64, checkpoint_at: &[u64], signer: &SigningCa) -> (Vec<ChainedEntry>, Vec<Checkpoint>) {
    let mut head = Head::empty(TD);
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    for i in 1..=n {
        entries.push(head.append(format!("{{\"event\":{i}}}").into_bytes()));
        if checkpoint_at.contains(&i) {
            checkpoints.push(
                Checkpoint::sign(TD, head, SystemTime::now(), signer.key(), &signer.cert).unwrap(),
            );
        }
    }
    (entries, checkpoints)
}

fn check(
    entries: &[ChainedEntry],
    checkpoints: &[Checkpoint],
    anchors: &TrustBundle,
) -> Result<Verified, Tamper> {
    // Through the stored form, as a verifier reads it.
    let stored = entries
        .iter()
        .map(|e| (e.sequence, e.encode()))
        .collect::<Vec<_>>();
    verify(
        TD,
        stored.iter().map(|(seq, value)| {
            ChainedEntry::decode(*seq, value).ok_or((*seq, "too short".to_owned()))
        }),
        checkpoints,
        anchors,
    )
}

#[test]
fn an_untouched_log_verifies_and_reports_its_unsigned_tail() {
    let (anchors, signer) = ca();
    let (entries, checkpoints) = log(50, &[20, 40], &signer);
    let verified = check(&entries, &checkpoints, &anchors).unwrap();
    assert_eq!(
        (verified.first, verified.last, verified.entries),
        (1, 50, 50)
    );
    assert_eq!(verified.checkpoints, 2);
    assert_eq!(verified.last_checkpoint.map(|c| c.0), Some(40));
    assert_eq!(verified.unsigned_tail, 10);
}

#[test]
fn an_edited_entry_is_named() {
    let (anchors, signer) = ca();
    let (mut entries, checkpoints) = log(30, &[30], &signer);
    entries[11].body = b"{\"event\":999}".to_vec();
    assert_eq!(
        check(&entries, &checkpoints, &anchors),
        Err(Tamper::Altered { sequence: 12 })
    );
}

#[test]
fn an_edit_with_every_hash_recomputed_is_caught_by_the_checkpoint() {
    let (anchors, signer) = ca();
    let (entries, checkpoints) = log(30, &[10, 30], &signer);
    // Rebuild the chain from entry 15 on with one body changed, as someone who can write
    // the store but not sign would.
    let mut head = Head {
        sequence: 14,
        hash: entries[13].hash,
    };
    let mut forged = entries[..14].to_vec();
    for e in &entries[14..] {
        let body = if e.sequence == 15 {
            b"{\"event\":\"forged\"}".to_vec()
        } else {
            e.body.clone()
        };
        forged.push(head.append(body));
    }
    assert_eq!(
        check(&forged, &checkpoints, &anchors),
        Err(Tamper::CheckpointMismatch { sequence: 30 })
    );
}

#[test]
fn a_deleted_entry_is_named() {
    let (anchors, signer) = ca();
    let (mut entries, checkpoints) = log(30, &[30], &signer);
    entries.remove(6);
    assert_eq!(
        check(&entries, &checkpoints, &anchors),
        Err(Tamper::Missing {
            sequence: 7,
            before: 6,
            after: 8
        })
    );
}

#[test]
fn two_swapped_entries_are_named() {
    let (anchors, signer) = ca();
    let (mut entries, checkpoints) = log(30, &[30], &signer);
    // Swap the stored values, keeping the keys (sequence numbers) in place.
    let (a, b) = (entries[4].clone(), entries[9].clone());
    entries[4] = ChainedEntry { sequence: 5, ..b };
    entries[9] = ChainedEntry { sequence: 10, ..a };
    assert_eq!(
        check(&entries, &checkpoints, &anchors),
        Err(Tamper::Altered { sequence: 5 })
    );
}

#[test]
fn a_relinked_replacement_breaks_the_next_link() {
    let (anchors, signer) = ca();
    let (mut entries, checkpoints) = log(30, &[30], &signer);
    // Entry 8 replaced by a self-consistent one (its own hash right) that links elsewhere.
    let mut other = Head::empty(TD);
    for _ in 0..7 {
        other.append(b"{}".to_vec());
    }
    entries[7] = other.append(b"{\"event\":\"inserted\"}".to_vec());
    assert_eq!(
        check(&entries, &checkpoints, &anchors),
        Err(Tamper::BrokenLink {
            sequence: 8,
            before: 7
        })
    );
}

#[test]
fn a_tail_truncated_behind_a_checkpoint_is_detected() {
    let (anchors, signer) = ca();
    let (mut entries, checkpoints) = log(30, &[25], &signer);
    entries.truncate(20);
    assert_eq!(
        check(&entries, &checkpoints, &anchors),
        Err(Tamper::Truncated {
            last: 20,
            first_missing: 21,
            sequence: 25
        })
    );
    // Everything removed, the checkpoint kept.
    assert!(matches!(
        check(&[], &checkpoints, &anchors),
        Err(Tamper::Truncated { last: 0, .. })
    ));
}

#[test]
fn a_checkpoint_signed_by_another_key_is_refused() {
    let (anchors, signer) = ca();
    let (_, stranger) = ca();
    let (entries, mut checkpoints) = log(30, &[10, 30], &signer);
    let head = Head {
        sequence: 30,
        hash: entries[29].hash,
    };
    checkpoints[1] =
        Checkpoint::sign(TD, head, SystemTime::now(), stranger.key(), &stranger.cert).unwrap();
    assert!(matches!(
        check(&entries, &checkpoints, &anchors),
        Err(Tamper::BadCheckpoint { sequence: 30, .. })
    ));
    // The right signer's certificate with another key's signature.
    let mut borrowed = checkpoints[1].clone();
    borrowed.signer = signer.cert.to_vec();
    checkpoints[1] = borrowed;
    let err = check(&entries, &checkpoints, &anchors).unwrap_err();
    assert!(
        err.to_string().contains("does not verify"),
        "unexpected: {err}"
    );
}

#[test]
fn retention_cut_at_a_checkpoint_verifies_and_deeper_cuts_do_not() {
    let (anchors, signer) = ca();
    let (entries, checkpoints) = log(30, &[10, 20, 30], &signer);
    let kept = &entries[10..];
    let verified = check(kept, &checkpoints, &anchors).unwrap();
    assert_eq!((verified.first, verified.last), (11, 30));
    // The cut checkpoint removed too: the missing start is named.
    assert_eq!(
        check(kept, &checkpoints[1..], &anchors),
        Err(Tamper::MissingStart { last_missing: 10 })
    );
    // Cut deeper than the checkpoint.
    assert_eq!(
        check(&entries[12..], &checkpoints, &anchors),
        Err(Tamper::MissingStart { last_missing: 12 })
    );
}

#[test]
fn a_log_of_another_trust_domain_does_not_verify() {
    let (anchors, signer) = ca();
    let (entries, _) = log(5, &[], &signer);
    let stored: Vec<_> = entries.iter().map(|e| Ok(e.clone())).collect();
    assert_eq!(
        verify("other.example", stored, &[], &anchors),
        Err(Tamper::BrokenLink {
            sequence: 1,
            before: 0
        })
    );
}
