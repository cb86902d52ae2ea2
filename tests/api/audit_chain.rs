//! The audit log's tamper-evident chain (issue 14, item 3): `AuditEvent/$verify`
//! and `fhirgate audit verify` (the real binary) pass on an untouched log and
//! catch each kind of tampering made straight in the database (a changed byte, a
//! deleted row, two rows swapped, a forged row slipped in, a cut tail) at the
//! right position, on SQLite and PostgreSQL; checkpoints are signed by the key
//! `fhirgate audit public-key` prints, and a key that did not sign them fails; a
//! purge (only past the six-year retention) keeps a chain that verifies from its
//! signed purge checkpoint.
//! Two nodes on one PostgreSQL make one valid chain (tests/api/audit_search.rs,
//! `two_nodes_index_each_audit_event_once`).

use std::path::Path;
use std::process::Command;

use awc::http::StatusCode;
use diesel::{Connection, PgConnection, RunQueryDsl};
use serde_json::{json, Value};

use crate::support::process::cli;
use crate::support::server::{on_both_backends, spawn_with, sqlite_connection, Backend, Database};

/// `fhirgate audit verify` with `args`: (exit code, its JSON line).
fn verify(db: &Database, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["audit", "verify"];
    all.extend_from_slice(args);
    let out = cli(db, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "audit verify printed no JSON ({e}): {stdout}; stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// Runs SQL straight on the database (the tampering), statements separated by `;`.
fn sql(db: &Database, statements: &str) {
    for s in statements
        .split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        let q = diesel::sql_query(s);
        match db.sqlite_path() {
            Some(p) => {
                let mut c = sqlite_connection(&p);
                q.execute(&mut c)
            }
            None => {
                let mut c = PgConnection::establish(&db.url).unwrap();
                q.execute(&mut c)
            }
        }
        .unwrap_or_else(|e| panic!("{s}: {e}"));
    }
}

/// The `seq` of the AuditEvent linked at `pos`.
fn seq_at(db: &Database, pos: i64) -> i64 {
    #[derive(diesel::QueryableByName)]
    struct S {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        seq: i64,
    }
    let q = diesel::sql_query(format!("SELECT seq FROM audit_chain WHERE pos = {pos}"));
    match db.sqlite_path() {
        Some(p) => {
            let mut c = sqlite_connection(&p);
            q.get_result::<S>(&mut c)
        }
        None => {
            let mut c = PgConnection::establish(&db.url).unwrap();
            q.get_result::<S>(&mut c)
        }
    }
    .expect("a link at that position")
    .seq
}

fn assert_broken(db: &Database, args: &[&str], at: i64, problem: &str, what: &str) {
    let (code, v) = verify(db, args);
    assert_eq!(code, 1, "{what}: exit 1 when tampered: {v}");
    assert_eq!(v["brokenAt"], json!(at), "{what}: {v}");
    let said = v["problem"].as_str().unwrap_or_default();
    assert!(said.starts_with(problem), "{what}: `{problem}` in {v}");
}

fn last_file_checkpoint(file: &Path) -> i64 {
    std::fs::read_to_string(file)
        .expect("the checkpoint file")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["position"].as_i64())
        .max()
        .expect("a checkpoint in the file")
}

async fn tampering_is_caught_at_its_position(backend: Backend) {
    let db = Database::new(backend);
    let file = db.dir.path().join("checkpoints.jsonl");
    let file_arg = file.display().to_string();
    let app = spawn_with(db, |s| {
        s.audit.checkpoint_every = 4;
        s.audit.checkpoint_file = Some(file.clone());
        s.audit.chain_interval_ms = 20;
    })
    .await;
    let body = json!({"resourceType": "Patient", "name": [{"family": "Chain"}]});
    for _ in 0..10 {
        let r = app.post_json("/Patient", &body).await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let r = app.get("/AuditEvent/$verify").await;
    assert_eq!(r.status, StatusCode::OK);
    let p = r.json();
    let param = |n: &str| {
        p["parameter"]
            .as_array()
            .and_then(|ps| ps.iter().find(|x| x["name"] == n).cloned())
    };
    let verified = param("verified").and_then(|v| v["valueInteger"].as_i64());
    assert!(verified >= Some(10), "every create linked: {p}");
    assert!(param("brokenAt").is_none(), "{p}");
    app.assert_every_request_audited().await;
    let db = app.stop_keep_db().await;

    // Untouched: it verifies, with the file's checkpoints and the printed key.
    let (code, v) = verify(&db, &["--checkpoint-file", &file_arg]);
    assert_eq!(code, 0, "{v}");
    let n = v["verified"].as_i64().expect("verified");
    assert!(n >= 11, "the creates and the $verify: {v}");
    assert_eq!(v["head"].as_str().map(str::len), Some(64), "{v}");
    let key = cli(&db, &["audit", "public-key"]);
    let pem = String::from_utf8_lossy(&key.stdout).to_string();
    assert!(pem.contains("BEGIN PUBLIC KEY"), "{pem}");
    let key_file = db.dir.path().join("audit.pub");
    std::fs::write(&key_file, &pem).unwrap();
    let key_arg = key_file.display().to_string();
    let (code, v) = verify(
        &db,
        &["--public-key", &key_arg, "--checkpoint-file", &file_arg],
    );
    assert_eq!(code, 0, "{v}");
    // A key that did not sign the checkpoints: they do not hold.
    let other = openssl::ec::EcKey::generate(
        &openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap(),
    )
    .unwrap();
    let other_file = db.dir.path().join("other.pub");
    std::fs::write(&other_file, other.public_key_to_pem().unwrap()).unwrap();
    let (code, v) = verify(&db, &["--public-key", &other_file.display().to_string()]);
    assert_eq!(code, 1, "checkpoints signed by another key: {v}");
    assert!(
        v["problem"]
            .as_str()
            .unwrap_or_default()
            .starts_with("forged checkpoint"),
        "{v}"
    );

    // One byte of a stored row changed (the recorded time), then put back.
    let s3 = seq_at(&db, 3);
    sql(
        &db,
        &format!("UPDATE audit_log SET recorded = recorded + 1 WHERE seq = {s3}"),
    );
    assert_broken(&db, &[], 3, "changed", "a changed row");
    sql(
        &db,
        &format!("UPDATE audit_log SET recorded = recorded - 1 WHERE seq = {s3}"),
    );
    assert_eq!(verify(&db, &[]).0, 0, "put back");

    // A row deleted, then put back.
    let s5 = seq_at(&db, 5);
    sql(
        &db,
        &format!(
            "CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq = {s5}; \
             DELETE FROM audit_log WHERE seq = {s5}"
        ),
    );
    assert_broken(&db, &[], 5, "missing", "a deleted row");
    sql(
        &db,
        "INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved",
    );
    assert_eq!(verify(&db, &[]).0, 0, "put back");

    // Two rows swapped (their ids and sealed bodies), then put back.
    let (s6, s7) = (seq_at(&db, 6), seq_at(&db, 7));
    let swap = |a: i64, b: i64| {
        format!(
            "UPDATE audit_log SET audit_id = (SELECT audit_id FROM saved WHERE seq = {b}), \
             body = (SELECT body FROM saved WHERE seq = {b}) WHERE seq = {a}"
        )
    };
    sql(
        &db,
        &format!(
            "CREATE TABLE saved AS SELECT * FROM audit_log WHERE seq IN ({s6}, {s7}); {}; {}",
            swap(s6, s7),
            swap(s7, s6)
        ),
    );
    assert_broken(&db, &[], 6, "changed", "two rows swapped");
    sql(
        &db,
        &format!("DELETE FROM audit_log WHERE seq IN ({s6}, {s7}); INSERT INTO audit_log SELECT * FROM saved; DROP TABLE saved"),
    );
    assert_eq!(verify(&db, &[]).0, 0, "put back");

    // A forged row slipped in behind the chain (a copy of a real one), then removed.
    let s2 = seq_at(&db, 2);
    sql(
        &db,
        &format!(
            "INSERT INTO audit_log (seq, audit_id, recorded, action, outcome, key_id, body) \
             SELECT 0, 'forged', recorded, action, outcome, key_id, body FROM audit_log WHERE seq = {s2}"
        ),
    );
    assert_broken(&db, &[], 1, "inserted", "a forged row");
    sql(&db, "DELETE FROM audit_log WHERE seq = 0");
    assert_eq!(verify(&db, &[]).0, 0, "removed");

    // The tail cut below the file's last checkpoint, with the database's
    // checkpoints and the chainer's state made to agree: the file catches it.
    let last = last_file_checkpoint(&file);
    assert!(last >= 4, "checkpoints every 4 links: {last}");
    let cut = last - 1;
    let s_cut = seq_at(&db, cut);
    sql(
        &db,
        &format!(
            "DELETE FROM audit_log WHERE seq >= {s_cut}; DELETE FROM audit_chain WHERE pos >= {cut}; \
             DELETE FROM audit_checkpoints WHERE pos >= {cut}; \
             UPDATE audit_chain_state SET head_pos = {}, after_seq = {}, head_hash = NULL",
            cut - 1,
            s_cut - 1
        ),
    );
    assert_broken(
        &db,
        &["--checkpoint-file", &file_arg],
        cut,
        "truncated",
        "a cut tail",
    );
}

/// AuditEvents recorded in 2010, appended through the audit sink as the server
/// appends its own, before any request: the first positions of the chain.
async fn old_events(app: &crate::support::server::TestApp, n: usize) {
    let recorded = 1_275_350_400_000_000i64; // 2010-06-01
    let rows: Vec<fhirgate::store::AuditRow> = (0..n)
        .map(|i| {
            let id = uuid::Uuid::new_v4().to_string();
            let ev = json!({
                "resourceType": "AuditEvent", "id": id,
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
                "action": "R", "recorded": "2010-06-01T00:00:00Z", "outcome": "0",
                "agent": [{"who": {"display": "old"}, "requestor": true}],
                "source": {"observer": {"display": "fhirgate"}}
            });
            fhirgate::store::AuditRow {
                id,
                recorded: recorded + i as i64,
                action: "R",
                outcome: "0",
                body: serde_json::to_vec(&ev).unwrap(),
            }
        })
        .collect();
    let store = app.store.clone();
    actix_web::rt::task::spawn_blocking(move || store.append_audits(&rows))
        .await
        .unwrap()
        .expect("append");
}

async fn a_purge_keeps_a_verifiable_chain(backend: Backend) {
    let app = spawn_with(Database::new(backend), |s| s.audit.chain_interval_ms = 20).await;
    old_events(&app, 3).await;
    let body = json!({"resourceType": "Patient"});
    for _ in 0..3 {
        assert_eq!(
            app.post_json("/Patient", &body).await.status,
            StatusCode::CREATED
        );
    }
    let db = app.stop_keep_db().await;
    let total = db.count_rows("audit_log");
    assert!(total >= 6, "{total}");

    // Inside the retention period (six years): refused, nothing removed.
    let out = cli(&db, &["audit", "purge", "--before", "2025-01-01"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit.retention_days"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(db.count_rows("audit_log"), total);
    // A retention below six years is refused at start, whatever the command.
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["audit", "verify"])
        .env("FHIRGATE_DATABASE__URL", &db.url)
        .env("FHIRGATE_CRYPTO__MASTER_KEY_FILE", db.key_file())
        .env("FHIRGATE_AUDIT__RETENTION_DAYS", "30")
        .current_dir(db.dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("retention_days"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The 2010 events go; the chain verifies from the purge checkpoint on.
    let out = cli(&db, &["audit", "purge", "--before", "2011-01-01"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v, json!({"purged": 3, "keptFrom": 4}));
    assert_eq!(db.count_rows("audit_log"), total - 3);
    assert_eq!(
        db.count_rows("search_date WHERE rid < 0 AND -rid NOT IN (SELECT seq FROM audit_log)"),
        0,
        "no index rows of removed events"
    );
    let (code, v) = verify(&db, &[]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["keptFrom"], 4, "{v}");
    assert_eq!(v["verified"], json!(total - 3), "{v}");
    // Nothing more to purge.
    let out = cli(&db, &["audit", "purge", "--before", "2011-01-01"]);
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["purged"], 0, "{v}");
    // Without the signed purge checkpoint, the missing start shows.
    sql(
        &db,
        "DELETE FROM audit_checkpoints WHERE purged_before IS NOT NULL",
    );
    assert_broken(&db, &[], 1, "missing", "a purge without its checkpoint");
}

on_both_backends!(
    tampering_is_caught_at_its_position,
    a_purge_keeps_a_verifiable_chain
);
