//! The PostgreSQL the tests start: a real server that psql (its own client) reaches on the
//! loopback port, that keeps committed data across a restart, and that stops with the test.

use std::process::Command;

use trellis_e2e::Postgres;

fn psql(db: &Postgres, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .arg(db.url())
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .map_err(|e| format!("psql does not run ({e}): run scripts/install-test-deps.sh"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn committed_rows_survive_a_restart_and_the_server_stops_with_the_test() {
    let mut db = Postgres::start();
    psql(
        &db,
        "create table t (n int primary key); insert into t values (1), (2)",
    )
    .expect("create and insert");
    db.restart();
    assert_eq!(psql(&db, "select sum(n) from t").expect("select"), "3");
    db.stop();
    let refused = psql(&db, "select 1").expect_err("the server is stopped");
    assert!(
        refused.contains("Connection refused") || refused.contains("connection"),
        "{refused}"
    );
}
