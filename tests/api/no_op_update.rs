//! An update that changes nothing (the same content, `meta.versionId` and
//! `meta.lastUpdated` aside) makes no new version, as HAPI FHIR does: the answer is
//! 200 with the current version, and the interaction is audited all the same. One
//! write path: a REST PUT, a transaction entry and a batch entry behave alike (the
//! import's rerun is in `import`), on both backends.

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

fn patient(family: &str) -> Value {
    json!({"resourceType": "Patient", "id": "same", "active": true,
           "name": [{"family": family, "given": ["Ann"]}], "birthDate": "1970-01-01"})
}

fn etag(r: &crate::support::server::Reply) -> String {
    r.headers
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

async fn history_len(app: &TestApp, path: &str) -> usize {
    let h = app.get(&format!("{path}/_history")).await;
    assert_eq!(h.status, StatusCode::OK);
    h.json()["entry"].as_array().map_or(0, Vec::len)
}

async fn a_put_that_changes_nothing_keeps_the_current_version(backend: Backend) {
    let app = spawn_app(backend).await;
    let first = app.put_json("/Patient/same", &patient("Doe")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(etag(&first), "W/\"1\"");

    // The same body again: 200 with version 1, nothing written.
    let again = app.put_json("/Patient/same", &patient("Doe")).await;
    assert_eq!(
        again.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
    assert_eq!(etag(&again), "W/\"1\"");
    assert_eq!(again.json()["meta"]["versionId"], "1");
    assert_eq!(history_len(&app, "/Patient/same").await, 1);

    // What a read gave back, sent again (its meta says version 1) and with a
    // client's own stale meta: still version 1.
    let read = app.get("/Patient/same").await.json();
    let r = app.put_json("/Patient/same", &read).await;
    assert_eq!((r.status, etag(&r)), (StatusCode::OK, "W/\"1\"".into()));
    let mut stale = patient("Doe");
    stale["meta"] = json!({"versionId": "9", "lastUpdated": "2001-01-01T00:00:00Z"});
    let r = app.put_json("/Patient/same", &stale).await;
    assert_eq!((r.status, etag(&r)), (StatusCode::OK, "W/\"1\"".into()));

    // A real change is a new version; repeating it is not.
    let changed = app.put_json("/Patient/same", &patient("Roe")).await;
    assert_eq!(
        (changed.status, etag(&changed)),
        (StatusCode::OK, "W/\"2\"".into())
    );
    let r = app.put_json("/Patient/same", &patient("Roe")).await;
    assert_eq!(etag(&r), "W/\"2\"");
    // A change of meta beyond versionId/lastUpdated is a change.
    let mut tagged = patient("Roe");
    tagged["meta"] = json!({"tag": [{"system": "urn:t", "code": "x"}]});
    let r = app.put_json("/Patient/same", &tagged).await;
    assert_eq!(etag(&r), "W/\"3\"");
    assert_eq!(history_len(&app, "/Patient/same").await, 3);
    // If-Match naming the current version with nothing changed: 200, version 3.
    let b = serde_json::to_vec(&tagged).unwrap();
    let r = app
        .send(
            awc::http::Method::PUT,
            "/Patient/same",
            &[
                ("Content-Type", "application/fhir+json"),
                ("If-Match", "W/\"3\""),
            ],
            Some(&b),
        )
        .await;
    assert_eq!((r.status, etag(&r)), (StatusCode::OK, "W/\"3\"".into()));

    // A deleted resource written again with its old content is a new version.
    assert_eq!(app.delete("/Patient/same").await.status, StatusCode::OK);
    let r = app.put_json("/Patient/same", &tagged).await;
    assert_eq!(
        (r.status, etag(&r)),
        (StatusCode::CREATED, "W/\"5\"".into())
    );
    // Every request, the unchanged updates included, left its AuditEvent.
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn bundle_entries_that_change_nothing_keep_the_current_version(backend: Backend) {
    let app = spawn_app(backend).await;
    let bundle = |kind: &str, family: &str| {
        json!({"resourceType": "Bundle", "type": kind, "entry": [
            {"resource": patient(family), "request": {"method": "PUT", "url": "Patient/same"}},
            {"resource": {"resourceType": "Patient", "id": "other", "active": false},
             "request": {"method": "PUT", "url": "Patient/other"}}]})
    };
    let statuses = |r: &crate::support::server::Reply| -> Vec<(String, String)> {
        r.json()["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["response"]["status"].as_str().unwrap_or("").to_string(),
                    e["response"]["etag"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let created = app.post_json("", &bundle("transaction", "Doe")).await;
    assert_eq!(created.status, StatusCode::OK);
    assert!(statuses(&created).iter().all(|(s, _)| s.starts_with("201")));
    for kind in ["transaction", "batch"] {
        let r = app.post_json("", &bundle(kind, "Doe")).await;
        assert_eq!(r.status, StatusCode::OK, "{kind}");
        for (status, etag) in statuses(&r) {
            assert!(status.starts_with("200"), "{kind}: {status}");
            assert_eq!(etag, "W/\"1\"", "{kind}");
        }
    }
    // One entry changes, the other does not.
    let r = app.post_json("", &bundle("transaction", "Roe")).await;
    let s = statuses(&r);
    assert_eq!(s[0].1, "W/\"2\"");
    assert_eq!(s[1].1, "W/\"1\"");
    assert_eq!(history_len(&app, "/Patient/same").await, 2);
    assert_eq!(history_len(&app, "/Patient/other").await, 1);
    app.assert_every_request_audited().await;
    app.stop().await;
}

on_both_backends!(
    a_put_that_changes_nothing_keeps_the_current_version,
    bundle_entries_that_change_nothing_keep_the_current_version,
);
