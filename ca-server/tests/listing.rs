//! `ListCertificates` pages through any number of records: every record exactly once, no
//! reply larger than a page, filters kept from page to page, a bad token refused.

mod common;

use std::collections::HashMap;
use std::time::SystemTime;

use common::*;
use tonic::Code;
use trellis_ca::store::CertRecord;
use trellis_proto::admin::v1::ListCertificatesRequest;

/// More than two of the CA's largest pages.
const RECORDS: usize = 2_500;
const IDENTITIES: usize = 50;
/// A certificate-sized value, so the pages are as large as real ones.
const FAKE_DER_LEN: usize = 700;

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// Writes `RECORDS` certificate records straight into the CA's store (signing 2,500 real
/// certificates would test issuance, not listing); one in five is expired.
fn fill(ca: &TestCa) -> HashMap<String, CertRecord> {
    let store = ca.running().store();
    let now = unix_now();
    let mut written = HashMap::new();
    for i in 0..RECORDS {
        let mut serial = [0u8; 16];
        aws_lc_rs::rand::fill(&mut serial).expect("random");
        serial[0] &= 0x7f;
        let record = CertRecord {
            serial: trellis_identity::hex::encode(&serial),
            spiffe_id: ca
                .id(&format!("/ns/list/sa/w{}", i % IDENTITIES))
                .to_string(),
            dns_names: Vec::new(),
            not_before: now - 60,
            not_after: if i % 5 == 0 { now - 1 } else { now + 3600 },
            issued_at: now - 60,
            issued_at_ns: 0,
            root_id: "r".into(),
            intermediate_id: "i".into(),
            issued_via: "admin".into(),
        };
        store
            .record_issuance(&record, &[0x30; FAKE_DER_LEN], &serial, None, &[])
            .expect("record");
        written.insert(record.serial.clone(), record);
    }
    written
}

/// Every page of a listing; panics if one is larger than `max`.
async fn all_pages(
    ca: &TestCa,
    request: ListCertificatesRequest,
    max: usize,
) -> (Vec<String>, usize) {
    let mut admin = ca.admin().await;
    let mut serials = Vec::new();
    let mut pages = 0;
    let mut token = String::new();
    loop {
        let page = admin
            .list_certificates(ListCertificatesRequest {
                page_token: token.clone(),
                ..request.clone()
            })
            .await
            .expect("list")
            .into_inner();
        pages += 1;
        assert!(
            page.certificates.len() <= max,
            "a page of {} records",
            page.certificates.len()
        );
        assert_eq!(page.truncated, !page.next_page_token.is_empty());
        serials.extend(page.certificates.into_iter().map(|c| c.serial));
        if page.next_page_token.is_empty() {
            return (serials, pages);
        }
        token = page.next_page_token;
    }
}

#[track_caller]
fn each_once(listed: &[String], expected: impl Iterator<Item = String>) {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for serial in listed {
        *counts.entry(serial.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "listed more than once: {twice:?}");
    let mut expected: Vec<String> = expected.collect();
    expected.sort();
    let mut listed = listed.to_vec();
    listed.sort();
    assert_eq!(listed, expected, "every record exactly once");
}

async fn every_certificate_is_listed_exactly_once_across_pages(backend: Backend) {
    let ca = TestCa::start_with_store(backend).await;
    let written = fill(&ca);
    // The CA's own serving and admin certificates are in the store too.
    let mut everything: Vec<String> = written.keys().cloned().collect();
    ca.running()
        .store()
        .for_each_certificate(&mut |r| {
            if !written.contains_key(&r.serial) {
                everything.push(r.serial);
            }
            true
        })
        .expect("store");
    assert_eq!(everything.len(), RECORDS + 2);

    // The default page (500), and a page size above the bound (lowered to 1,000).
    let all = ListCertificatesRequest {
        include_expired: true,
        ..Default::default()
    };
    let (listed, pages) = all_pages(&ca, all.clone(), 500).await;
    each_once(&listed, everything.iter().cloned());
    assert!(pages >= 6, "{pages} pages");
    let (listed, _) = all_pages(
        &ca,
        ListCertificatesRequest {
            page_size: 1_000_000,
            ..all
        },
        1000,
    )
    .await;
    each_once(&listed, everything.iter().cloned());

    // Filters hold from page to page: unexpired only; one identity, in pages of 7.
    let (listed, _) = all_pages(&ca, ListCertificatesRequest::default(), 500).await;
    let now = unix_now();
    each_once(
        &listed
            .into_iter()
            .filter(|s| written.contains_key(s))
            .collect::<Vec<_>>(),
        written
            .values()
            .filter(|r| r.not_after > now)
            .map(|r| r.serial.clone()),
    );
    let one = ca.id("/ns/list/sa/w7").to_string();
    let (listed, pages) = all_pages(
        &ca,
        ListCertificatesRequest {
            spiffe_id: one.clone(),
            include_expired: true,
            page_size: 7,
            ..Default::default()
        },
        7,
    )
    .await;
    each_once(
        &listed,
        written
            .values()
            .filter(|r| r.spiffe_id == one)
            .map(|r| r.serial.clone()),
    );
    assert!(pages >= RECORDS / IDENTITIES / 7, "{pages} pages");
}

async fn a_page_token_from_elsewhere_is_refused(backend: Backend) {
    let ca = TestCa::start_with_store(backend).await;
    let mut admin = ca.admin().await;
    for token in ["not hex", "00ff"] {
        let status = admin
            .list_certificates(ListCertificatesRequest {
                spiffe_id: ca.id("/ns/a/sa/x").to_string(),
                page_token: token.into(),
                ..Default::default()
            })
            .await
            .expect_err("foreign token");
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(
            status.message().contains("page_token"),
            "{}",
            status.message()
        );
    }
}

on_both_stores!(
    every_certificate_is_listed_exactly_once_across_pages,
    a_page_token_from_elsewhere_is_refused,
);
