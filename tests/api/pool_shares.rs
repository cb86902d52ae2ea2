//! Expensive work cannot starve cheap work (issue 13 item 2): searches, history and
//! Bundles take database connections only from their shares (`database.*_connections`,
//! `database.reserved_connections`), so reads by id keep being answered while the worst
//! searches run; a full share answers 503 with `Retry-After` and an OperationOutcome that
//! names the share, audited like any request; `/health/ready` tells a saturated pool from a
//! database that is down. Both backends (the saturated pool and the database that is down:
//! PostgreSQL, where a test can hold the database's locks and connections).

use std::time::{Duration, Instant};

use awc::http::StatusCode;
use diesel::{Connection, PgConnection, RunQueryDsl};
use futures_util::future::join_all;
use serde_json::{json, Value};

use crate::support::server::{
    on_both_backends, pg_admin_url, spawn_with, Backend, Database, Reply, TestApp,
};

/// The issue's worst search: `_has` nested four deep over 130 Observations (37 s on
/// SQLite before the request deadline), allowed here by raising `search.max_has_depth`.
pub(crate) const COSTLY: &str = "/Patient?_has:Observation:subject:_has:Observation:has-member:_has:Observation:has-member:_has:Observation:has-member:status=final";

/// Five Patients and 130 Observations that refer to each other (the costly search's data).
pub(crate) async fn load_costly_data(app: &TestApp) {
    let mut entries = Vec::new();
    for p in 0..5 {
        entries.push(
            json!({"resource": {"resourceType": "Patient", "id": format!("p{p}")},
            "request": {"method": "PUT", "url": format!("Patient/p{p}")}}),
        );
    }
    for i in 0..130 {
        let members: Vec<Value> = (1..=6)
            .map(|k| json!({"reference": format!("Observation/o{}", (i + k * 7) % 130)}))
            .collect();
        entries.push(
            json!({"resource": {"resourceType": "Observation", "id": format!("o{i}"),
            "status": "final", "code": {"text": "x"},
            "subject": {"reference": format!("Patient/p{}", i % 5)},
            "hasMember": members},
            "request": {"method": "PUT", "url": format!("Observation/o{i}")}}),
        );
    }
    let r = app
        .post_json(
            "",
            &json!({"resourceType": "Bundle", "type": "transaction", "entry": entries}),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
}

/// `/health/ready` as JSON (whatever its status).
async fn ready(app: &TestApp) -> (StatusCode, Value) {
    let r = app
        .send(
            awc::http::Method::GET,
            &format!("{}/health/ready", app.root),
            &[],
            None,
        )
        .await;
    (r.status, r.json())
}

/// The share `work` of the ready document's connections: (connections, in use).
fn share(doc: &Value, work: &str) -> (u64, u64) {
    let s = doc["connections"]["shares"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["work"] == work))
        .unwrap_or_else(|| panic!("no share {work} in {doc}"));
    (
        s["connections"].as_u64().unwrap_or(0),
        s["in_use"].as_u64().unwrap_or(0),
    )
}

/// A costly search's answer: stopped at its deadline (400 too-costly), or refused
/// because its share stayed full (503, `Retry-After`, an OperationOutcome naming the
/// share's setting, not the audit trail). Returns true for the 503.
fn stopped_or_refused(r: &Reply) -> bool {
    let (code, diagnostics, _) = r.issue();
    match r.status {
        StatusCode::BAD_REQUEST => {
            assert_eq!(code, "too-costly", "{diagnostics}");
            false
        }
        StatusCode::SERVICE_UNAVAILABLE => {
            assert_refused_for_share(r, &code, &diagnostics);
            true
        }
        other => panic!("a costly search answered {other}: {diagnostics}"),
    }
}

fn assert_refused_for_share(r: &Reply, code: &str, diagnostics: &str) {
    assert_eq!(code, "transient", "{diagnostics}");
    assert!(
        r.header("retry-after")
            .is_some_and(|v| v.parse::<u64>().is_ok()),
        "503 without Retry-After"
    );
    assert!(
        diagnostics.contains("database.search_connections")
            || diagnostics.contains("database.reserved_connections"),
        "the 503 does not name the share: {diagnostics}"
    );
    assert!(
        !diagnostics.contains("AuditEvent") && !diagnostics.contains("audit trail"),
        "the 503 blames the audit trail: {diagnostics}"
    );
}

/// Eight of the worst searches at once: while they run (the search share is seen full
/// in `/health/ready`), reads by id are answered 200, one after another, and the
/// searches are still running after them; each search ends at its deadline or is
/// refused with 503 for its share. Every request is audited, the 503s included.
async fn cheap_reads_are_answered_while_eight_costly_searches_run(backend: Backend) {
    let app = spawn_with(Database::new(backend), |s| {
        s.server.request_timeout_secs = 4;
        s.search.max_has_depth = 4;
    })
    .await;
    load_costly_data(&app).await;
    let finished = std::sync::atomic::AtomicUsize::new(0);
    let searches = join_all((0..8).map(|_| async {
        let r = app.get(COSTLY).await;
        finished.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        r
    }));
    let reads = async {
        // The searches take seconds (their deadline is 4 s); the reads start among them.
        actix_rt::time::sleep(Duration::from_millis(500)).await;
        let mut slowest = Duration::ZERO;
        for _ in 0..20 {
            let t = Instant::now();
            let r = app.get("/Patient/p1").await;
            slowest = slowest.max(t.elapsed());
            assert_eq!(
                r.status,
                StatusCode::OK,
                "{}",
                String::from_utf8_lossy(&r.body)
            );
        }
        // No search has ended: the reads did not wait for them. The search share is
        // full meanwhile.
        let (status, doc) = ready(&app).await;
        assert_eq!(
            finished.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "a search ended before the reads did (slowest read {slowest:?})"
        );
        assert_eq!(status, StatusCode::OK, "{doc}");
        let (connections, in_use) = share(&doc, "search");
        assert!(in_use >= connections, "{doc}");
        let full = doc["connections"]["shares_full"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        assert!(full.contains(&json!("search")), "{doc}");
    };
    let (answers, ()) = futures_util::join!(searches, reads);
    for r in &answers {
        stopped_or_refused(r);
    }
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(cheap_reads_are_answered_while_eight_costly_searches_run);

/// A search share of one connection and a short wait: of three costly searches at once,
/// one runs and the others are refused with 503, `Retry-After` and an OperationOutcome
/// that names `database.search_connections`; reads are answered meanwhile, and the
/// refusals are audited as failures.
async fn a_full_search_share_answers_503_naming_its_setting(backend: Backend) {
    let app = spawn_with(Database::new(backend), |s| {
        s.server.request_timeout_secs = 3;
        s.search.max_has_depth = 4;
        s.database.search_connections = 1;
        s.database.pool_timeout_ms = 300;
    })
    .await;
    load_costly_data(&app).await;
    let searches = join_all((0..3).map(|_| app.get(COSTLY)));
    let read = async {
        actix_rt::time::sleep(Duration::from_millis(100)).await;
        app.get("/Patient/p2").await
    };
    let (answers, read) = futures_util::join!(searches, read);
    assert_eq!(read.status, StatusCode::OK);
    let refused = answers.iter().filter(|r| stopped_or_refused(r)).count();
    assert!(
        refused >= 1,
        "no search was refused: {:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    for r in answers
        .iter()
        .filter(|r| r.status == StatusCode::SERVICE_UNAVAILABLE)
    {
        let (_, diagnostics, _) = r.issue();
        assert!(
            diagnostics.contains("database.search_connections"),
            "{diagnostics}"
        );
    }
    let (status, doc) = ready(&app).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    let refused_count = doc["connections"]["shares"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["work"] == "search"))
        .and_then(|s| s["refused"].as_u64())
        .unwrap_or(0);
    assert!(refused_count >= 1, "{doc}");
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(a_full_search_share_answers_503_naming_its_setting);

/// Runs `sql` on the PostgreSQL server as the administrator (not through fhirgate).
fn pg_admin(sql: &str) {
    let mut c = PgConnection::establish(&pg_admin_url()).expect("connect as administrator");
    diesel::sql_query(sql)
        .execute(&mut c)
        .expect("administrator statement");
}

/// `/health/ready` says "pool saturated" when every connection is held (a test's own
/// connection holds a lock that every read waits for) and "database down" when the
/// database refuses connections; requests meanwhile are answered 503 with a reason that
/// is the database's state, not the audit trail; afterwards everything is served again.
#[actix_rt::test]
async fn ready_tells_a_saturated_pool_from_a_database_that_is_down() {
    let app = spawn_with(Database::new(Backend::Postgres), |s| {
        s.database.pool_size = 3;
        s.database.pool_timeout_ms = 500;
    })
    .await;
    let name = app.db.pg_name().expect("a PostgreSQL database").to_string();
    let r = app
        .put_json(
            "/Patient/p1",
            &json!({"resourceType": "Patient", "id": "p1"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);

    // Saturated: reads wait for a lock held by the test, holding every connection.
    let mut locker = PgConnection::establish(&app.db.url).expect("connect to the test database");
    diesel::sql_query("BEGIN").execute(&mut locker).unwrap();
    diesel::sql_query("LOCK TABLE resources_current IN ACCESS EXCLUSIVE MODE")
        .execute(&mut locker)
        .unwrap();
    let reads = join_all((0..6).map(|_| app.get("/Patient/p1")));
    let probe = async {
        actix_rt::time::sleep(Duration::from_millis(300)).await;
        let answer = ready(&app).await;
        diesel::sql_query("ROLLBACK").execute(&mut locker).unwrap();
        answer
    };
    let (reads, (status, doc)) = futures_util::join!(reads, probe);
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc}");
    assert_eq!(doc["reason"], "pool saturated", "{doc}");
    assert_eq!(doc["database"], "up", "{doc}");
    let busy: Vec<&Reply> = reads
        .iter()
        .filter(|r| r.status != StatusCode::OK)
        .collect();
    assert!(!busy.is_empty(), "every read found a connection");
    for r in busy {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(r.header("retry-after").is_some());
        let (code, diagnostics, _) = r.issue();
        assert_eq!(code, "transient");
        assert!(
            diagnostics.contains("every database connection of this node is busy"),
            "{diagnostics}"
        );
    }
    let (status, doc) = ready(&app).await;
    assert_eq!(status, StatusCode::OK, "{doc}");

    // Down: the database refuses connections and its sessions are ended.
    pg_admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false"));
    pg_admin(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
    ));
    let (status, doc) = ready(&app).await;
    let r = app.get("/Patient/p1").await;
    let (status2, doc2) = ready(&app).await;
    pg_admin(&format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true"));
    // The first look may find a pooled connection whose session was ended: 503 too.
    for (status, doc) in [(status, &doc), (status2, &doc2)] {
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{doc}");
        assert_eq!(doc["reason"], "database down", "{doc}");
        assert_eq!(doc["database"], "down", "{doc}");
    }
    assert_eq!(
        r.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert!(r.header("retry-after").is_some());
    let (_, diagnostics, _) = r.issue();
    assert!(diagnostics.contains("database"), "{diagnostics}");
    assert!(!diagnostics.contains("AuditEvent"), "{diagnostics}");
    // Back: served again without a restart (a pooled connection whose session ended may
    // answer one more 503; never a 500).
    let start = Instant::now();
    loop {
        let r = app.get("/Patient/p1").await;
        if r.status == StatusCode::OK {
            break;
        }
        assert_eq!(
            r.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "not served again after the database came back"
        );
    }
    let (status, doc) = ready(&app).await;
    assert_eq!(status, StatusCode::OK, "{doc}");
    app.stop().await;
}
