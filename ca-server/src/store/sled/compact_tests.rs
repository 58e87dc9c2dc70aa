//! Compaction against a real sled directory: the copy holds everything the database held,
//! its log is smaller, and whatever a crash leaves between the copy and the swap opens as
//! one whole database.

use std::path::{Path, PathBuf};

use super::archive_tests::all_serials;
use super::compact::{CURRENT, CompactWhen};
use super::index_tests::{audit, cert};
use super::*;

const DAY: u64 = 86_400;
/// Compacts at every checkpoint whose log grew since the last copy.
const ALWAYS: CompactWhen = CompactWhen {
    floor: 0,
    growth: 1,
};

/// A store that checkpoints only when the test says so.
fn open(dir: &Path, when: CompactWhen) -> SledStore {
    SledStore::open_checkpointing(dir, u64::MAX, when).unwrap()
}

/// Records `n` certificates of `spiffe://td/w` from serial number `from`, each with an
/// audit entry.
fn write(store: &SledStore, from: u32, n: u32, not_after: u64) {
    for i in from..from + n {
        let mut serial = [0u8; 9];
        serial[5..].copy_from_slice(&i.to_be_bytes());
        let mut c = cert(0, "spiffe://td/w", "r1", not_after);
        c.serial = hex::encode(&serial);
        store
            .record_issuance(&c, b"der", &serial, None, &[audit()])
            .unwrap();
    }
}

/// Never compacts.
const NEVER: CompactWhen = CompactWhen {
    floor: u64::MAX,
    growth: 1,
};

/// A history most of which left the database: 3,000 certificates expired and archived,
/// 50 live, one revoked; then opened again to compact as `when` says.
fn aged(dir: &Path, when: CompactWhen) -> SledStore {
    drop(filled(dir, NEVER));
    open(dir, when)
}

fn filled(dir: &Path, when: CompactWhen) -> SledStore {
    let store = open(dir, when);
    write(&store, 0, 3_000, DAY);
    write(&store, 10_000, 50, 10 * DAY);
    let revoked = hex::encode(&[0, 0, 0, 0, 0, 0, 0, 39, 16]);
    let revocation = RevocationRecord {
        serial: revoked,
        spiffe_id: "spiffe://td/w".into(),
        revoked_at: 60,
        reason: "key compromise".into(),
        not_after: 10 * DAY,
        intermediate_id: "inter".into(),
        reason_code: None,
    };
    assert!(store.revoke(&revocation, &audit()).unwrap());
    while store.archive_expired(2 * DAY, 500).unwrap() > 0 {}
    store
}

/// Everything a caller can read, to compare across a compaction.
#[derive(Debug, PartialEq)]
struct Contents {
    serials: Vec<String>,
    live: Vec<String>,
    revocations: Vec<String>,
    audit: Vec<(u64, Vec<u8>)>,
    issued_total: Option<u64>,
}

fn contents(store: &SledStore) -> Contents {
    let mut live = Vec::new();
    store
        .for_each_live(2 * DAY, &mut |r| live.push(r.serial))
        .unwrap();
    Contents {
        serials: all_serials(store),
        live,
        revocations: store
            .revocations()
            .unwrap()
            .into_iter()
            .map(|r| r.serial)
            .collect(),
        audit: store.audit_raw_after(0, 100_000).unwrap(),
        issued_total: store.issued_total(),
    }
}

/// Runs one checkpoint (off the runtime's workers, as the store does).
async fn checkpoint(store: &SledStore) {
    let live = store.live.clone();
    tokio::task::spawn_blocking(move || checkpoint::run(&live))
        .await
        .unwrap();
}

/// sled's log file of the database the store now uses.
fn log_len(store: &SledStore) -> u64 {
    store.trees().unwrap().log_len()
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn current(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(CURRENT)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_copies_the_database_into_a_smaller_log_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = aged(dir.path(), ALWAYS);
    let before = contents(&store);
    assert_eq!(before.serials.len(), 3_050);
    assert_eq!(before.live.len(), 50);
    let grown = log_len(&store);

    checkpoint(&store).await;
    let t = store.trees().unwrap();
    assert_eq!(t.dir, dir.path().join("sled-1"), "the copy is the database");
    assert_eq!(t.generation, 2);
    drop(t);
    let copied = log_len(&store);
    assert!(
        copied * 2 < grown,
        "the copy's log ({copied} bytes) is not much smaller than the one it replaced \
         ({grown} bytes)"
    );
    assert!(current(dir.path()).starts_with("sled-1 "));
    assert_eq!(
        names_in(dir.path()),
        [CURRENT, AUDIT_HISTORY_DIR, HISTORY_DIR, "sled-1"],
        "sled's files left the store's folder for the copy's"
    );
    assert_eq!(contents(&store), before);
    // What `/metrics` reports: the copy's log, and one compaction.
    let files = store.local_files().unwrap();
    assert_eq!(files.log_bytes, Some(copied));
    assert_eq!((files.compactions, files.failed_compactions), (1, 0));

    // The copy takes writes, and the next compaction replaces it with another.
    write(&store, 20_000, 10, 10 * DAY);
    checkpoint(&store).await;
    assert!(current(dir.path()).starts_with("sled-2 "));
    assert!(!dir.path().join("sled-1").exists());
    assert_eq!(store.local_files().unwrap().compactions, 2);
    let after = contents(&store);
    assert_eq!(after.live.len(), 60);
    assert_eq!(after.audit.len(), before.audit.len() + 10);

    drop(store);
    let reopened = SledStore::open(dir.path()).unwrap();
    assert_eq!(reopened.trees().unwrap().dir, dir.path().join("sled-2"));
    assert_eq!(contents(&reopened), after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_leaves_a_log_alone_until_it_outgrows_the_last_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = aged(
        dir.path(),
        CompactWhen {
            floor: 0,
            growth: 1_000,
        },
    );
    checkpoint(&store).await;
    assert!(
        dir.path().join(CURRENT).exists(),
        "the first checkpoint copies a log over the floor"
    );
    write(&store, 20_000, 10, 10 * DAY);
    checkpoint(&store).await;
    assert!(current(dir.path()).starts_with("sled-1 "), "no second copy");

    let dir = tempfile::tempdir().unwrap();
    let store = aged(dir.path(), NEVER);
    checkpoint(&store).await;
    assert_eq!(store.trees().unwrap().generation, 2, "it checkpointed");
    assert!(
        !dir.path().join(CURRENT).exists(),
        "under the floor: no copy"
    );
}

/// An archiving pass that reaches its end (the database as small as it gets) starts the
/// compaction itself, without waiting for certificates to be written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archiving_pass_that_empties_a_grown_log_compacts_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled(dir.path(), ALWAYS);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.trees().unwrap().dir != dir.path().join("sled-1") {
        assert!(
            std::time::Instant::now() < deadline,
            "archiving did not lead to a compaction"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let now = contents(&store);
    assert_eq!((now.serials.len(), now.live.len()), (3_050, 50));
    assert!(!dir.path().join("db").exists(), "the old log is gone");

    // Within the thresholds, archiving compacts nothing.
    let dir = tempfile::tempdir().unwrap();
    drop(filled(dir.path(), NEVER));
    assert!(!dir.path().join(CURRENT).exists());
}

/// A crash after the copy was made current but before the old database was removed: the
/// next opening uses the copy and removes the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_swap_opens_the_copy_and_removes_the_old_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = aged(dir.path(), ALWAYS);
    let before = contents(&store);
    // The swap, without the checkpoint that would reopen: the old files stay where they are.
    let t = store.trees().unwrap();
    t.flushable().flush().unwrap();
    compact::copy(dir.path(), &t).unwrap();
    drop(t);
    drop(store);
    assert!(dir.path().join("db").exists(), "the old log is still there");
    std::fs::write(dir.path().join("CURRENT.partial"), "sled-7 1\n").unwrap();

    let reopened = SledStore::open(dir.path()).unwrap();
    assert_eq!(reopened.trees().unwrap().dir, dir.path().join("sled-1"));
    assert_eq!(contents(&reopened), before);
    assert_eq!(
        names_in(dir.path()),
        [CURRENT, AUDIT_HISTORY_DIR, HISTORY_DIR, "sled-1"]
    );
}

/// A crash during the copy, or before `CURRENT` named it: the next opening uses the old
/// database and removes the copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_before_the_swap_opens_the_old_database_and_removes_the_copy() {
    let dir = tempfile::tempdir().unwrap();
    let store = aged(dir.path(), ALWAYS);
    let before = contents(&store);
    checkpoint(&store).await; // now in sled-1
    // A copy into sled-2 that a crash cut short: a torn log file.
    let torn: PathBuf = dir.path().join("sled-2");
    std::fs::create_dir(&torn).unwrap();
    std::fs::write(torn.join("db"), [0xff; 1000]).unwrap();
    drop(store);

    let reopened = SledStore::open(dir.path()).unwrap();
    assert_eq!(reopened.trees().unwrap().dir, dir.path().join("sled-1"));
    assert_eq!(contents(&reopened), before);
    assert!(!torn.exists());
}

#[tokio::test]
async fn a_damaged_current_file_is_named_with_the_fix() {
    for (text, why) in [
        ("garbage", "expected `sled-<number> <bytes>`"),
        ("sled-4 100\n", "it names sled-4, which holds no database"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        drop(open(dir.path(), ALWAYS));
        std::fs::write(dir.path().join(CURRENT), text).unwrap();
        let e = SledStore::open(dir.path()).unwrap_err().to_string();
        assert!(e.contains(CURRENT), "{e}");
        assert!(e.contains(why), "{e}");
        assert!(
            e.contains("restore the store's folder from a backup"),
            "{e}"
        );
        assert!(dir.path().join("db").exists(), "nothing was removed");
    }
}

/// A disk that fills up during the copy: the copy is removed, the database is the one it
/// was, and once space is back the store takes writes again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_during_the_copy_loses_nothing_and_the_store_resumes() {
    let disk = trellis_e2e::tmpfs::Tmpfs::mount("64m");
    let dir = disk.path().join("db");
    let store = aged(&dir, ALWAYS);
    store.flush_now().unwrap();
    let before = contents(&store);
    // Room for the checkpoint's flush, not for a copy (32 KiB: 8 to 64 fail the copy here).
    let filler = disk.fill("filler");
    let filled = std::fs::metadata(&filler).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap()
        .set_len(filled - (32 << 10))
        .unwrap();

    checkpoint(&store).await;
    std::fs::remove_file(&filler).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while store.trees().is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the store did not reopen once space was back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        !dir.join(CURRENT).exists(),
        "a copy on a full disk became current"
    );
    assert!(
        !dir.join("sled-1").exists(),
        "the failed copy was left behind"
    );
    assert_eq!(contents(&store), before);
    let files = store.local_files().unwrap();
    assert_eq!((files.compactions, files.failed_compactions), (0, 1));

    write(&store, 20_000, 1, 10 * DAY);
    store.flush_now().unwrap();
    drop(store);
    let reopened = SledStore::open(&dir).unwrap();
    assert_eq!(contents(&reopened).live.len(), 51);
}
