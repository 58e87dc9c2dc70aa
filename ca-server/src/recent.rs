//! The records of the certificates this CA issued or looked up lately, by serial.
//!
//! A renewal's admission must know whose certificate is presented before any cryptography
//! (`limits::certify_key`), and reads its record by serial. A record and its certificate
//! never change once written, so the ones this CA has just written or read can be found
//! here instead: with PostgreSQL that saves a round trip on every renewal whose previous
//! certificate this replica issued, which is most of them (a sidecar keeps to the replica
//! that answered last). A hit requires the presented certificate to be byte for byte the
//! one recorded (compared by SHA-256). Revocation is never answered from here.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::CertRecord;

/// Records kept at most; when full, it starts again empty (a miss only costs a read).
const CAPACITY: usize = 50_000;

/// A certificate's SHA-256 and its record.
type Remembered = ([u8; 32], CertRecord);

/// Recently written or read certificate records.
#[derive(Debug, Default)]
pub(crate) struct RecentCertificates {
    by_serial: Mutex<HashMap<Vec<u8>, Remembered>>,
}

fn digest(der: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
    let mut out = [0; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

impl RecentCertificates {
    /// Remembers the record of the certificate `der` with serial bytes `serial`.
    pub(crate) fn remember(&self, serial: &[u8], der: &[u8], record: &CertRecord) {
        let mut map = self.by_serial.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= CAPACITY {
            map.clear();
        }
        map.insert(serial.to_vec(), (digest(der), record.clone()));
    }

    /// The record of the certificate `der` with serial bytes `serial`, if remembered and
    /// `der` is exactly the certificate recorded.
    pub(crate) fn find(&self, serial: &[u8], der: &[u8]) -> Option<CertRecord> {
        let map = self.by_serial.lock().unwrap_or_else(|p| p.into_inner());
        let (recorded, record) = map.get(serial)?;
        (*recorded == digest(der)).then(|| record.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(spiffe_id: &str) -> CertRecord {
        CertRecord {
            serial: "0a".into(),
            spiffe_id: spiffe_id.into(),
            dns_names: Vec::new(),
            not_before: 1,
            not_after: 2,
            issued_at: 1,
            issued_at_ns: 1,
            root_id: "root".into(),
            intermediate_id: "inter".into(),
            issued_via: "renewal".into(),
        }
    }

    #[test]
    fn only_the_certificate_recorded_finds_its_record() {
        let recent = RecentCertificates::default();
        recent.remember(&[10], b"the certificate", &record("spiffe://td/a"));
        assert_eq!(
            recent.find(&[10], b"the certificate").map(|r| r.spiffe_id),
            Some("spiffe://td/a".to_owned())
        );
        // Same serial, other bytes (a forged certificate claiming the serial): no record.
        assert!(recent.find(&[10], b"another certificate").is_none());
        assert!(recent.find(&[11], b"the certificate").is_none());
    }

    #[test]
    fn it_stays_bounded() {
        let recent = RecentCertificates::default();
        for n in 0..=CAPACITY as u32 {
            recent.remember(&n.to_be_bytes(), b"c", &record("spiffe://td/a"));
        }
        let kept = recent.by_serial.lock().unwrap().len();
        assert!(kept <= CAPACITY, "{kept}");
    }
}
