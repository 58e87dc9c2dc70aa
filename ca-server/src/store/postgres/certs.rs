//! Certificates (recorded in batches, `batch.rs`): reads by serial, identity and expiry,
//! the pages of the listings, the counters and retention.

use std::collections::BTreeMap;
use std::sync::Arc;

use trellis_identity::hex;

use super::{Db, int, uint};
use crate::store::{CertPage, CertRecord, PageToken, StoreError, decode};

/// What starts a page token of the identity listing and of the expiry listing.
const IDENTITY_TOKEN: char = 'i';
const EXPIRY_TOKEN: char = 'x';
/// Rows read per query when walking many (the census, tools).
pub(super) const BATCH: i64 = 1000;
/// Seconds per row of `live_counts`.
const MINUTE: u64 = 60;

/// A certificate's record and DER.
pub(super) async fn certificate(
    db: Arc<Db>,
    serial: Vec<u8>,
) -> Result<Option<(CertRecord, Vec<u8>)>, StoreError> {
    let client = db.client().await?;
    let statement = client
        .prepare_cached("SELECT record, der FROM certificates WHERE serial = $1")
        .await
        .map_err(|e| db.err(e))?;
    let row = client
        .query_opt(&statement, &[&serial])
        .await
        .map_err(|e| db.err(e))?;
    row.map(|row| {
        let record: Vec<u8> = row.get(0);
        Ok((decode("certificates", &record)?, row.get(1)))
    })
    .transpose()
}

/// Every record of one identity, in serial order.
pub(super) async fn certificates_of(
    db: Arc<Db>,
    spiffe_id: String,
) -> Result<Vec<CertRecord>, StoreError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT record FROM certificates WHERE spiffe_id = $1 ORDER BY serial",
            &[&spiffe_id],
        )
        .await
        .map_err(|e| db.err(e))?;
    rows.iter()
        .map(|row| decode("certificates", &row.get::<_, Vec<u8>>(0)))
        .collect()
}

/// Where a listing is: the key of the last row a page read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cursor {
    /// (SPIFFE ID, serial) of the identity listing.
    Identity(String, Vec<u8>),
    /// (not-after, serial) of the expiry listing.
    Expiry(u64, Vec<u8>),
}

impl Cursor {
    pub fn token(&self) -> PageToken {
        PageToken(match self {
            Self::Identity(id, serial) => format!(
                "{IDENTITY_TOKEN}{}.{}",
                hex::encode(id.as_bytes()),
                hex::encode(serial)
            ),
            Self::Expiry(not_after, serial) => {
                format!("{EXPIRY_TOKEN}{not_after}.{}", hex::encode(serial))
            }
        })
    }

    /// The cursor a token names, if it is one of ours (either listing's).
    pub fn parse(token: &PageToken) -> Option<Self> {
        let (kind, rest) = token.0.split_at_checked(1)?;
        let (key, serial) = rest.split_once('.')?;
        let serial = hex::decode(serial)?;
        match kind.chars().next()? {
            IDENTITY_TOKEN => Some(Self::Identity(
                String::from_utf8(hex::decode(key)?).ok()?,
                serial,
            )),
            EXPIRY_TOKEN => Some(Self::Expiry(key.parse().ok()?, serial)),
            _ => None,
        }
    }
}

/// What one page query reads.
pub(super) struct PageQuery {
    pub after: Option<Cursor>,
    pub max: usize,
    pub scan: usize,
}

#[derive(Debug, Clone)]
pub(super) enum PageFilter {
    Identity(Option<String>),
    Expiring { now: u64, until: Option<u64> },
}

/// One page: reads rows in the listing's order after the cursor, in batches (each one a
/// call of `fetch`, with the cursor and how many rows), until `max` were kept or `scan`
/// were read. `keep` runs on the caller's thread.
pub(super) fn page(
    query: &PageQuery,
    keep: &dyn Fn(&CertRecord) -> bool,
    mut fetch: impl FnMut(Option<Cursor>, i64) -> Result<Vec<ListedRow>, StoreError>,
) -> Result<CertPage, StoreError> {
    let mut page = CertPage::default();
    let mut cursor = query.after.clone();
    let mut scanned = 0usize;
    while scanned < query.scan {
        let want =
            (query.scan - scanned).min(query.max.saturating_sub(page.certificates.len()) + 16);
        let rows = fetch(cursor.clone(), i64::try_from(want).unwrap_or(i64::MAX))?;
        let fetched = rows.len();
        for (key, record, der) in rows {
            scanned += 1;
            if keep(&record) {
                page.certificates.push((record, der));
            }
            if page.certificates.len() >= query.max || scanned >= query.scan {
                page.next = Some(key.token());
                return Ok(page);
            }
            cursor = Some(key);
        }
        if fetched < want {
            break;
        }
    }
    Ok(page)
}

/// A row of a listing: its cursor, its record, its DER.
pub(super) type ListedRow = (Cursor, CertRecord, Vec<u8>);

/// Up to `limit` rows of a listing after `cursor`.
pub(super) async fn fetch_page(
    db: Arc<Db>,
    filter: PageFilter,
    cursor: Option<Cursor>,
    limit: i64,
) -> Result<Vec<ListedRow>, StoreError> {
    let client = db.client().await?;
    let rows = match &filter {
        PageFilter::Identity(id) => {
            let (after_id, after_serial) = match &cursor {
                Some(Cursor::Identity(id, serial)) => (id.clone(), serial.clone()),
                _ => (String::new(), Vec::new()),
            };
            client
                .query(
                    "SELECT spiffe_id, not_after, serial, record, der FROM certificates \
                     WHERE ($1::text IS NULL OR spiffe_id = $1) \
                     AND (spiffe_id, serial) > ($2, $3) \
                     ORDER BY spiffe_id, serial LIMIT $4",
                    &[id, &after_id, &after_serial, &limit],
                )
                .await
        }
        PageFilter::Expiring { now, until } => {
            let until = int(until.unwrap_or(u64::MAX));
            match &cursor {
                Some(Cursor::Expiry(not_after, serial)) if *not_after > *now => {
                    client
                        .query(
                            "SELECT spiffe_id, not_after, serial, record, der \
                             FROM certificates \
                             WHERE (not_after, serial) > ($1, $2) AND not_after <= $3 \
                             ORDER BY not_after, serial LIMIT $4",
                            &[&int(*not_after), serial, &until, &limit],
                        )
                        .await
                }
                // A cursor that time has overtaken starts again from now.
                _ => {
                    client
                        .query(
                            "SELECT spiffe_id, not_after, serial, record, der \
                             FROM certificates WHERE not_after > $1 AND not_after <= $2 \
                             ORDER BY not_after, serial LIMIT $3",
                            &[&int(*now), &until, &limit],
                        )
                        .await
                }
            }
        }
    }
    .map_err(|e| db.err(e))?;
    rows.iter()
        .map(|row| {
            let serial: Vec<u8> = row.get(2);
            let key = match &filter {
                PageFilter::Identity(_) => Cursor::Identity(row.get(0), serial),
                PageFilter::Expiring { .. } => Cursor::Expiry(uint(row.get(1)), serial),
            };
            let record = decode("certificates", &row.get::<_, Vec<u8>>(3))?;
            Ok((key, record, row.get(4)))
        })
        .collect()
}

/// Certificates unexpired at `now` in expiry order, a batch after `after` (the not-after
/// and serial of the last one visited).
pub(super) async fn live_batch(
    db: Arc<Db>,
    now: u64,
    after: Option<(u64, Vec<u8>)>,
) -> Result<Vec<(CertRecord, u64, Vec<u8>)>, StoreError> {
    let client = db.client().await?;
    let rows = match after {
        Some((not_after, serial)) => {
            client
                .query(
                    "SELECT record, not_after, serial FROM certificates \
                     WHERE (not_after, serial) > ($1, $2) ORDER BY not_after, serial LIMIT $3",
                    &[&int(not_after), &serial, &BATCH],
                )
                .await
        }
        None => {
            client
                .query(
                    "SELECT record, not_after, serial FROM certificates WHERE not_after > $1 \
                     ORDER BY not_after, serial LIMIT $2",
                    &[&int(now), &BATCH],
                )
                .await
        }
    }
    .map_err(|e| db.err(e))?;
    rows.iter()
        .map(|row| {
            Ok((
                decode("certificates", &row.get::<_, Vec<u8>>(0))?,
                uint(row.get(1)),
                row.get(2),
            ))
        })
        .collect()
}

/// Every certificate in serial order, a batch after `after`.
pub(super) async fn all_batch(
    db: Arc<Db>,
    after: Vec<u8>,
) -> Result<Vec<(CertRecord, Vec<u8>)>, StoreError> {
    let client = db.client().await?;
    let rows = client
        .query(
            "SELECT record, serial FROM certificates WHERE serial > $1 ORDER BY serial LIMIT $2",
            &[&after, &BATCH],
        )
        .await
        .map_err(|e| db.err(e))?;
    rows.iter()
        .map(|row| {
            Ok((
                decode("certificates", &row.get::<_, Vec<u8>>(0))?,
                row.get(1),
            ))
        })
        .collect()
}

/// Certificates ever recorded.
pub(super) async fn issued_total(db: Arc<Db>) -> Result<u64, StoreError> {
    let client = db.client().await?;
    let row = client
        .query_one(
            "SELECT coalesce(sum(value), 0)::bigint FROM counters WHERE name = 'issued_total'",
            &[],
        )
        .await
        .map_err(|e| db.err(e))?;
    Ok(uint(row.get(0)))
}

/// Certificates unexpired at `now` by root: the minutes of expiry after the current one
/// from `live_counts`, the current minute from the expiry index.
pub(super) async fn live_by_root(
    db: Arc<Db>,
    now: u64,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let client = db.client().await?;
    let minute = now / MINUTE;
    let next_minute = (minute + 1).saturating_mul(MINUTE);
    let rows = client
        .query(
            "SELECT root_id, sum(n)::bigint FROM live_counts WHERE minute > $1 GROUP BY root_id \
             UNION ALL \
             SELECT root_id, count(*) FROM certificates \
             WHERE not_after > $2 AND not_after < $3 GROUP BY root_id",
            &[&int(minute), &int(now), &int(next_minute)],
        )
        .await
        .map_err(|e| db.err(e))?;
    let mut counts = BTreeMap::new();
    for row in rows {
        *counts.entry(row.get::<_, String>(0)).or_default() += uint(row.get(1));
    }
    counts.retain(|_, n| *n > 0);
    Ok(counts)
}

/// Removes up to `max` certificates that expired at or before `through`, with their
/// revocations, and the count rows of minutes wholly past it.
pub(super) async fn prune_expired(
    db: Arc<Db>,
    through: u64,
    max: usize,
) -> Result<usize, StoreError> {
    let e = |e| db.err(e);
    let mut client = db.client().await?;
    let tx = client.transaction().await.map_err(e)?;
    let limit = i64::try_from(max).unwrap_or(i64::MAX);
    // SKIP LOCKED: two passes (two replicas' retention tasks) take different rows.
    let removed: Vec<Vec<u8>> = tx
        .query(
            "DELETE FROM certificates WHERE serial IN (SELECT serial FROM certificates \
             WHERE not_after <= $1 ORDER BY not_after, serial LIMIT $2 FOR UPDATE SKIP LOCKED) \
             RETURNING serial",
            &[&int(through), &limit],
        )
        .await
        .map_err(e)?
        .iter()
        .map(|row| row.get(0))
        .collect();
    if !removed.is_empty() {
        tx.execute(
            "DELETE FROM revocations WHERE serial = ANY($1)",
            &[&removed],
        )
        .await
        .map_err(e)?;
    }
    let past = (through.saturating_add(1)) / MINUTE;
    tx.execute("DELETE FROM live_counts WHERE minute < $1", &[&int(past)])
        .await
        .map_err(e)?;
    tx.commit().await.map_err(e)?;
    Ok(removed.len())
}
