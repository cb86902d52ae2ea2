//! `fhirgate backup` and `restore` (issue 16) on both backends: a backup made
//! while writes go on restores into a new database with every table as the
//! manifest says, every version identical to the source's (sealed bytes and
//! all), every write acknowledged before the backup began, every body opened
//! with the key and the audit chain verified; a wrong master key is refused
//! before anything is restored; a database with data is refused; a damaged
//! backup fails verification; the backup holds no patient name in clear.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use awc::http::StatusCode;
use diesel::{Connection, PgConnection, QueryableByName, RunQueryDsl};
use fhirgate::backup::BackupError;
use fhirgate::crypto::MasterKey;
use serde_json::json;

use crate::support::server::{on_both_backends, spawn_app, Backend, PgDatabase};
use crate::synthetic;

#[derive(QueryableByName)]
struct VersionRow {
    #[diesel(sql_type = diesel::sql_types::Text)]
    resource_type: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    resource_id: String,
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    version_id: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    body: Vec<u8>,
}

type Versions = BTreeMap<(String, String, i64), Vec<u8>>;

/// Every stored version, sealed, read straight from the database.
fn versions(url: &str) -> Versions {
    let q = diesel::sql_query(
        "SELECT resource_type, resource_id, version_id, body FROM resource_versions",
    );
    let rows: Vec<VersionRow> = match url.strip_prefix("sqlite://") {
        Some(path) => {
            let mut c = crate::support::server::sqlite_connection(std::path::Path::new(path));
            q.load(&mut c).expect("versions")
        }
        None => {
            let mut c = PgConnection::establish(url).expect("connect");
            q.load(&mut c).expect("versions")
        }
    };
    rows.into_iter()
        .map(|r| ((r.resource_type, r.resource_id, r.version_id), r.body))
        .collect()
}

async fn a_backup_taken_under_writes_restores_whole_and_proven(backend: Backend) {
    let app = spawn_app(backend).await;
    assert_eq!(
        app.post_json("", &synthetic::hospital()).await.status,
        StatusCode::OK
    );
    let mut rng = synthetic::Rng(20261205);
    for n in 0..2 {
        let r = app.post_json("", &synthetic::patient(&mut rng, n)).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    for i in 0..20 {
        let r = app
            .put_json(&format!("/Patient/before{i}"), &json!({"resourceType": "Patient", "id": format!("before{i}"), "name": [{"family": "Acknowledged"}]}))
            .await;
        assert!(r.status.is_success());
    }
    let acknowledged = versions(&app.db.url);
    // Writes go on while the backup is made.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let writer = {
        let stop = stop.clone();
        let written = written.clone();
        let base = app.base.clone();
        actix_rt::spawn(async move {
            let client = awc::Client::default();
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"resourceType": "Patient", "id": format!("during{n}"), "name": [{"family": "During"}]});
                let r = client
                    .put(format!("{base}/Patient/during{n}"))
                    .insert_header(("Content-Type", "application/fhir+json"))
                    .send_body(serde_json::to_vec(&body).unwrap())
                    .await;
                assert!(r.is_ok_and(|r| r.status().is_success()));
                n += 1;
                written.store(n, Ordering::Relaxed);
            }
            n
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let out = app.db.dir.path().join("fhirgate.backup");
    let url = app.db.url.clone();
    let out2 = out.clone();
    let before = written.load(Ordering::Relaxed);
    let manifest = tokio::task::spawn_blocking(move || fhirgate::backup::backup(&url, &out2))
        .await
        .unwrap()
        .expect("backup");
    let after = written.load(Ordering::Relaxed);
    assert!(after > before, "no write went on while the backup was made");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    stop.store(true, Ordering::Relaxed);
    let during = writer.await.unwrap();
    assert!(during > 0, "no write went on during the backup");
    assert!(manifest.tables["resource_versions"].rows >= acknowledged.len() as i64);
    // A backup is never written over.
    let again = fhirgate::backup::backup(&app.db.url, &out);
    assert!(matches!(again, Err(BackupError::Refused(_))), "{again:?}");

    // No patient name in clear anywhere in the file.
    let bytes = std::fs::read(&out).unwrap();
    for name in ["Acknowledged", "During", "Family0", "Family1"] {
        assert!(
            !bytes.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name} in clear"
        );
    }

    let master = MasterKey::read_file(&app.db.key_file()).unwrap();
    let (_, proof) = fhirgate::backup::verify(&out, &master).expect("verify");
    assert_eq!(proof.tables, manifest.tables.len());

    // A wrong master key: refused, nothing restored.
    let target_dir = tempfile::tempdir().unwrap();
    let pg = (backend == Backend::Postgres).then(PgDatabase::create);
    let target = match &pg {
        Some(pg) => pg.url.clone(),
        None => format!(
            "sqlite://{}",
            target_dir.path().join("restored.db").display()
        ),
    };
    let wrong = MasterKey::generate().unwrap();
    let refused = fhirgate::backup::restore(&out, &target, &wrong);
    match refused {
        Err(BackupError::Refused(m)) => assert!(m.contains("master key"), "{m}"),
        other => panic!("a wrong key: {other:?}"),
    }
    match &pg {
        None => assert!(!target_dir.path().join("restored.db").exists()),
        Some(pg) => {
            #[derive(QueryableByName)]
            struct N {
                #[diesel(sql_type = diesel::sql_types::BigInt)]
                n: i64,
            }
            let mut c = PgConnection::establish(&pg.url).unwrap();
            let tables = diesel::sql_query(
                "SELECT COUNT(*) AS n FROM pg_tables WHERE schemaname = 'public'",
            )
            .get_result::<N>(&mut c)
            .unwrap()
            .n;
            assert_eq!(tables, 0, "a table was restored under a wrong key");
        }
    }

    // The restore, proven.
    let (_, proof) = fhirgate::backup::restore(&out, &target, &master).expect("restore");
    let opened = proof.opened.clone().unwrap();
    assert_eq!(opened.versions, manifest.tables["resource_versions"].rows);
    assert_eq!(opened.audit_events, manifest.tables["audit_log"].rows);
    assert!(proof.chain_verified.unwrap() > 0);
    let restored = versions(&target);
    let source = versions(&app.db.url);
    assert_eq!(
        restored.len() as i64,
        manifest.tables["resource_versions"].rows
    );
    for (k, body) in &restored {
        assert_eq!(source.get(k), Some(body), "{k:?} differs from the source");
    }
    for k in acknowledged.keys() {
        assert!(
            restored.contains_key(k),
            "{k:?}, acknowledged before the backup, is missing"
        );
    }
    // A database with data is refused.
    let twice = fhirgate::backup::restore(&out, &target, &master);
    match twice {
        Err(BackupError::Refused(m)) => assert!(m.contains("holds data"), "{m}"),
        other => panic!("a full target: {other:?}"),
    }
    // A damaged backup fails verification.
    let mut damaged = std::fs::read(&out).unwrap();
    let at = damaged.len() / 2;
    damaged[at] ^= 0x55;
    let bad = app.db.dir.path().join("damaged.backup");
    std::fs::write(&bad, &damaged).unwrap();
    assert!(fhirgate::backup::verify(&bad, &master).is_err());
    drop(pg);
    app.stop().await;
}

on_both_backends!(a_backup_taken_under_writes_restores_whole_and_proven);
