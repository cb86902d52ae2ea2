//! AuditEvent search over HTTP, on both backends, with authorization on: a known
//! set of requests (creates, a read, an update, a search, a denied read, a delete)
//! made with a backend client's token, then searched by every parameter family
//! (patient, agent, date with prefixes, action, outcome, entity, entity-type,
//! entity-role, subtype, type, site, address, `_id`, `_sort` both ways, paging
//! with `_count`, `_total`, `Patient/{id}/AuditEvent`) by a `system/AuditEvent.rs`
//! client and a compliance user, each answer compared with the exact set of
//! requests it must find. The parameters the server's own events leave empty
//! (agent-name, agent-role, altid, policy, entity-name, source) are checked on an
//! AuditEvent committed through the audit sink with those elements. A search never
//! finds its own AuditEvent but finds every one committed before it (the
//! background indexer is off: only the search's catch-up indexes); a granular
//! `system/AuditEvent.rs?outcome=4` token sees only failures; a patient's token
//! is refused.

use std::collections::BTreeSet;

use awc::http::{Method, StatusCode};
use fhirgate::auth::scopes::Role;
use serde_json::{json, Value};

use crate::smart_auth::{client_token, spawn_auth};
use crate::support::audit::{request_id, send, user_token};
use crate::support::server::{on_both_backends, Backend, Reply, TestApp};

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

/// A GET with a token and a chosen request id.
async fn get(app: &TestApp, token: &str, path: &str, request_id: &str) -> Reply {
    send(app, Method::GET, path, token, None, request_id).await
}

/// The AuditEvents of a searchset page (matches only), in order.
fn matches(r: &Reply) -> Vec<Value> {
    assert_eq!(r.status, StatusCode::OK, "{}", text(r));
    let b = r.json();
    assert_eq!(b["resourceType"], "Bundle", "{b}");
    b["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter(|e| e["search"]["mode"] == "match")
                .map(|e| {
                    assert_eq!(e["resource"]["resourceType"], "AuditEvent", "{e}");
                    e["resource"].clone()
                })
                .collect()
        })
        .unwrap_or_default()
}

fn next_link(app: &TestApp, b: &Value) -> Option<String> {
    b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .map(|u| u.strip_prefix(&app.base).unwrap_or(u).to_string())
}

/// The requests a set of labels stands for.
fn ids(labels: &[&str], run: &str) -> BTreeSet<String> {
    labels.iter().map(|l| format!("{run}-{l}")).collect()
}

struct Known {
    run: String,
    /// The search window: after the tokens were issued, before the searches.
    window: String,
    p1: String,
    p2: String,
    o1: String,
    writer: String,
    /// `recorded` of the read's AuditEvent, and its id.
    read_recorded: String,
    read_event: String,
}

/// The requests every search below is about, made by the writer client, each
/// with request id `<run>-<label>` and a few milliseconds apart (distinct
/// `recorded` instants).
async fn known_requests(app: &TestApp, writer: &str, writer_token: &str) -> Known {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let rid = |l: &str| format!("{run}-{l}");
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(5));
    pause().await;
    let start = fhirgate::fhir::instant(fhirgate::fhir::now_micros());
    pause().await;
    let created = |r: &Reply| -> String {
        assert_eq!(r.status, StatusCode::CREATED, "{}", text(r));
        r.json()["id"].as_str().unwrap().to_string()
    };
    let patient = json!({"resourceType": "Patient", "name": [{"family": "Audited"}]});
    let p1 = created(
        &send(
            app,
            Method::POST,
            "/Patient",
            writer_token,
            Some(&patient),
            &rid("create-p1"),
        )
        .await,
    );
    pause().await;
    let p2 = created(
        &send(
            app,
            Method::POST,
            "/Patient",
            writer_token,
            Some(&patient),
            &rid("create-p2"),
        )
        .await,
    );
    pause().await;
    let obs = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
        "subject": {"reference": format!("Patient/{p1}")}});
    let o1 = created(
        &send(
            app,
            Method::POST,
            "/Observation",
            writer_token,
            Some(&obs),
            &rid("create-o1"),
        )
        .await,
    );
    pause().await;
    let r = get(
        app,
        writer_token,
        &format!("/Patient/{p1}"),
        &rid("read-p1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    pause().await;
    let mut updated = patient.clone();
    updated["id"] = json!(p1);
    updated["name"][0]["given"] = json!(["Again"]);
    let r = send(
        app,
        Method::PUT,
        &format!("/Patient/{p1}"),
        writer_token,
        Some(&updated),
        &rid("update-p1"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    pause().await;
    let r = get(
        app,
        writer_token,
        &format!("/Observation?subject=Patient/{p1}"),
        &rid("search-obs"),
    )
    .await;
    assert_eq!(r.json()["total"], 1, "{}", text(&r));
    pause().await;
    let r = get(
        app,
        writer_token,
        "/Encounter/nowhere",
        &rid("denied-encounter"),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    pause().await;
    let r = send(
        app,
        Method::DELETE,
        &format!("/Observation/{o1}"),
        writer_token,
        None,
        &rid("delete-o1"),
    )
    .await;
    assert!(r.status.is_success(), "{}", text(&r));
    pause().await;
    let end = fhirgate::fhir::instant(fhirgate::fhir::now_micros());
    pause().await;
    // The read's AuditEvent, found in the store directly (not by search).
    let events = app.audits_by_request().await;
    let read = &events[&rid("read-p1")][0];
    Known {
        window: format!("date=gt{start}&date=lt{end}"),
        p1,
        p2,
        o1,
        writer: writer.to_string(),
        read_recorded: read["recorded"].as_str().unwrap().to_string(),
        read_event: read["id"].as_str().unwrap().to_string(),
        run,
    }
}

const ALL: [&str; 8] = [
    "create-p1",
    "create-p2",
    "create-o1",
    "read-p1",
    "update-p1",
    "search-obs",
    "denied-encounter",
    "delete-o1",
];

/// Searches AuditEvents with `query` (plus the window unless `whole_log`) and
/// returns the request ids of the matches of the first page.
async fn found(app: &TestApp, token: &str, k: &Known, query: &str) -> BTreeSet<String> {
    let q = if query.is_empty() {
        k.window.clone()
    } else {
        format!("{query}&{}", k.window)
    };
    let own = uuid::Uuid::new_v4().to_string();
    let r = get(app, token, &format!("/AuditEvent?{q}&_count=100"), &own).await;
    let evs = matches(&r);
    evs.iter().map(request_id).collect()
}

async fn audit_event_search_by_every_parameter(backend: Backend) {
    let app = spawn_auth(backend, |s| s.audit.index_interval_ms = 0).await;
    let (writer, writer_token) =
        client_token(&app, "system/Patient.cruds system/Observation.cruds").await;
    let (_, auditor) = client_token(&app, "system/AuditEvent.rs").await;
    let k = known_requests(&app, &writer, &writer_token).await;
    let run = k.run.clone();
    let (p1, p2, o1) = (&k.p1, &k.p2, &k.o1);
    let every = ids(&ALL, &run);
    let check = |query: &'static str, labels: &'static [&'static str]| {
        (query.to_string(), ids(labels, &run))
    };
    let mut cases: Vec<(String, BTreeSet<String>)> = vec![
        check("", &ALL),
        // action and outcome (tokens on codes)
        check("action=C", &["create-p1", "create-p2", "create-o1"]),
        check("action=R", &["read-p1", "denied-encounter"]),
        check("action=U", &["update-p1"]),
        check("action=D", &["delete-o1"]),
        // A denial also makes an authorization decision (action E).
        check("action=E", &["search-obs", "denied-encounter"]),
        check("action=U,D", &["update-p1", "delete-o1"]),
        check(
            "action:not=C",
            &[
                "read-p1",
                "update-p1",
                "search-obs",
                "denied-encounter",
                "delete-o1",
            ],
        ),
        check("outcome=4", &["denied-encounter"]),
        check(
            "outcome=0",
            &[
                "create-p1",
                "create-p2",
                "create-o1",
                "read-p1",
                "update-p1",
                "search-obs",
                "delete-o1",
            ],
        ),
        // subtype and type (Codings)
        check("subtype=read", &["read-p1", "denied-encounter"]),
        check(
            "subtype=http://hl7.org/fhir/restful-interaction|create",
            &["create-p1", "create-p2", "create-o1"],
        ),
        check("subtype=search-type", &["search-obs"]),
        check("subtype=urn:other|read", &[]),
        check(
            "type=http://terminology.hl7.org/CodeSystem/audit-event-type|rest",
            &ALL,
        ),
        check("type=110114", &[]),
        // entity role and type
        check("entity-role=24", &["search-obs"]),
        check(
            "entity-role=http://terminology.hl7.org/CodeSystem/object-role|4",
            &[
                "create-p1",
                "create-p2",
                "create-o1",
                "read-p1",
                "update-p1",
                "denied-encounter",
                "delete-o1",
            ],
        ),
        check(
            "entity-type=http://terminology.hl7.org/CodeSystem/audit-entity-type|1",
            &[
                "create-p1",
                "create-p2",
                "create-o1",
                "read-p1",
                "update-p1",
                "search-obs",
            ],
        ),
        // addresses and site (strings and tokens, blind)
        check("address=127.0.0.1", &ALL),
        check("address=127.0", &ALL),
        check("address=10.9", &[]),
        check("agent:missing=false", &ALL),
    ];
    let mut with = |query: String, labels: &[&str]| cases.push((query, ids(labels, &run)));
    // references: the patient, the entity (every version), the agent
    with(
        format!("patient=Patient/{p1}"),
        &[
            "create-p1",
            "create-o1",
            "read-p1",
            "update-p1",
            "search-obs",
        ],
    );
    with(format!("patient={p2}"), &["create-p2"]);
    with(
        format!("patient=Patient/{p1},Patient/{p2}"),
        &[
            "create-p1",
            "create-p2",
            "create-o1",
            "read-p1",
            "update-p1",
            "search-obs",
        ],
    );
    with(
        format!("entity=Observation/{o1}"),
        &["create-o1", "delete-o1"],
    );
    with(format!("entity=Patient/{p2}"), &["create-p2"]);
    with("entity=Encounter/nowhere".into(), &["denied-encounter"]);
    with(
        format!("agent:identifier=urn:fhirgate:client|{}", k.writer),
        &ALL,
    );
    with(
        "agent:identifier=urn:fhirgate:client|someone-else".into(),
        &[],
    );
    with(format!("site={}", app.base), &ALL);
    // dates with prefixes, at the read's instant (millisecond precision)
    let t = &k.read_recorded;
    with(format!("date=eq{t}"), &["read-p1"]);
    with(format!("date={t}"), &["read-p1"]);
    with(
        format!("date=ge{t}"),
        &[
            "read-p1",
            "update-p1",
            "search-obs",
            "denied-encounter",
            "delete-o1",
        ],
    );
    with(
        format!("date=gt{t}"),
        &["update-p1", "search-obs", "denied-encounter", "delete-o1"],
    );
    with(
        format!("date=le{t}"),
        &["create-p1", "create-p2", "create-o1", "read-p1"],
    );
    with(
        format!("date=lt{t}"),
        &["create-p1", "create-p2", "create-o1"],
    );
    with(
        format!("date=sa{t}"),
        &["update-p1", "search-obs", "denied-encounter", "delete-o1"],
    );
    with(
        format!("date=eb{t}"),
        &["create-p1", "create-p2", "create-o1"],
    );
    with(
        format!("date=ne{t}"),
        &[
            "create-p1",
            "create-p2",
            "create-o1",
            "update-p1",
            "search-obs",
            "denied-encounter",
            "delete-o1",
        ],
    );
    with(format!("_id={}", k.read_event), &["read-p1"]);
    with(
        format!("_lastUpdated=le{t}"),
        &["create-p1", "create-p2", "create-o1", "read-p1"],
    );
    // combinations
    with(format!("patient=Patient/{p1}&action=R"), &["read-p1"]);
    with(
        format!("patient=Patient/{p1}&date=gt{t}"),
        &["update-p1", "search-obs"],
    );
    for (query, expected) in &cases {
        let got = found(&app, &auditor, &k, query).await;
        assert_eq!(&got, expected, "AuditEvent?{query} ({backend:?})");
    }
    assert_eq!(cases[0].1, every);

    // The patient compartment.
    let r = get(
        &app,
        &auditor,
        &format!("/Patient/{p1}/AuditEvent?{}", k.window),
        "compartment",
    )
    .await;
    let got: BTreeSet<String> = matches(&r).iter().map(request_id).collect();
    assert_eq!(
        got,
        ids(
            &[
                "create-p1",
                "create-o1",
                "read-p1",
                "update-p1",
                "search-obs"
            ],
            &run
        ),
        "Patient/{p1}/AuditEvent"
    );

    // _sort by date both ways, and the default order (newest first).
    let order = |r: &Reply| -> Vec<String> { matches(r).iter().map(request_id).collect() };
    // The search also made a PatientQuery event (its page holds Patient p1's
    // Observation) and the denial an authorization decision: 10 events.
    let expected: Vec<String> = ALL
        .iter()
        .flat_map(|l| {
            let n = if matches!(*l, "search-obs" | "denied-encounter") {
                2
            } else {
                1
            };
            std::iter::repeat_n(format!("{run}-{l}"), n)
        })
        .collect();
    let asc = get(
        &app,
        &auditor,
        &format!("/AuditEvent?{}&_sort=date", k.window),
        "sort-asc",
    )
    .await;
    assert_eq!(order(&asc), expected, "_sort=date");
    let desc = get(
        &app,
        &auditor,
        &format!("/AuditEvent?{}&_sort=-date", k.window),
        "sort-desc",
    )
    .await;
    let mut reversed = expected.clone();
    reversed.reverse();
    assert_eq!(order(&desc), reversed, "_sort=-date");
    let plain = get(
        &app,
        &auditor,
        &format!("/AuditEvent?{}", k.window),
        "default-order",
    )
    .await;
    assert_eq!(order(&plain), reversed, "newest first without _sort");

    // Paging with _count and _total, ascending and descending.
    for (sort, want) in [("date", &expected), ("-date", &reversed)] {
        let mut path = Some(format!(
            "/AuditEvent?{}&_sort={sort}&_count=3&_total=accurate",
            k.window
        ));
        let (mut seen, mut pages) = (Vec::new(), 0);
        while let Some(p) = path {
            let r = get(&app, &auditor, &p, &format!("page-{sort}-{pages}")).await;
            let b = r.json();
            assert_eq!(b["total"], 10, "_total on page {pages}: {b}");
            let page = order(&r);
            assert!(page.len() <= 3, "_count=3 gave {}", page.len());
            seen.extend(page);
            pages += 1;
            assert!(pages <= 5, "paging does not end");
            path = next_link(&app, &b);
        }
        assert_eq!(pages, 4, "10 events in pages of 3");
        assert_eq!(&seen, want, "every page, in order, _sort={sort}");
    }
    let count_only = get(
        &app,
        &auditor,
        &format!("/AuditEvent?{}&_summary=count", k.window),
        "count",
    )
    .await;
    assert_eq!(count_only.json()["total"], 10);

    // A compliance user sees the same; its own events name it as agent.
    let carol = user_token(
        &app,
        "carol",
        "Practitioner/carol",
        Role::Compliance,
        "user/AuditEvent.rs",
    )
    .await;
    assert_eq!(
        found(&app, &carol, &k, "action=C").await,
        ids(&["create-p1", "create-p2", "create-o1"], &run)
    );
    let r = get(&app, &carol, "/AuditEvent?action=E&_count=1", "carol-first").await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let mine = get(
        &app,
        &carol,
        "/AuditEvent?agent=Practitioner/carol&_count=100",
        "carol-own",
    )
    .await;
    let mine = matches(&mine);
    let names_carol = |e: &Value| {
        e["agent"].as_array().is_some_and(|a| {
            a.iter()
                .any(|a| a["who"]["reference"] == "Practitioner/carol")
        })
    };
    assert!(mine.iter().all(names_carol), "{mine:?}");
    let mine: Vec<String> = mine.iter().map(request_id).collect();
    assert!(mine.contains(&"carol-first".to_string()), "{mine:?}");
    assert!(!mine.contains(&"carol-own".to_string()), "{mine:?}");
    assert!(
        !mine.iter().any(|m| m.starts_with(&run)),
        "the writer's requests name no user: {mine:?}"
    );

    // A patient's token is refused (wildcards never reach AuditEvent).
    let pat = user_token(
        &app,
        "pat",
        &format!("Patient/{p1}"),
        Role::Patient,
        "launch/patient patient/*.rs",
    )
    .await;
    let r = get(&app, &pat, "/AuditEvent?_count=1", "patient-denied").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    let r = get(
        &app,
        &pat,
        &format!("/Patient/{p1}/AuditEvent"),
        "patient-denied-compartment",
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));
    // A writer without AuditEvent in its scopes too.
    let r = get(&app, &writer_token, "/AuditEvent", "writer-denied").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));

    // A granular scope narrows in SQL: this client sees only failures.
    let (_, failures) = client_token(&app, "system/AuditEvent.rs?outcome=4").await;
    let r = get(&app, &failures, "/AuditEvent?_count=1000", "failures-only").await;
    let evs = matches(&r);
    assert!(evs
        .iter()
        .any(|e| request_id(e) == format!("{run}-denied-encounter")));
    assert!(
        evs.iter().all(|e| e["outcome"] == "4"),
        "only failures: {evs:?}"
    );
    assert_eq!(r.json()["total"], evs.len() as i64);
    let r = get(
        &app,
        &failures,
        &format!("/AuditEvent?_id={}", k.read_event),
        "failures-only-id",
    )
    .await;
    assert!(
        matches(&r).is_empty(),
        "a success is outside the granular scope"
    );

    app.assert_every_request_audited().await;
    app.stop().await;
}

/// A search finds every AuditEvent committed before it (the one of the search
/// just before included) and never its own, across every page of it; a page
/// link keeps the set the first page saw.
async fn a_search_never_finds_its_own_audit_event(backend: Backend) {
    let app = spawn_auth(backend, |s| s.audit.index_interval_ms = 0).await;
    let (_, auditor) = client_token(&app, "system/AuditEvent.rs").await;
    let (writer, writer_token) = client_token(&app, "system/Patient.cruds").await;
    for i in 0..4 {
        let body = json!({"resourceType": "Patient", "name": [{"family": format!("P{i}")}]});
        let r = send(
            &app,
            Method::POST,
            "/Patient",
            &writer_token,
            Some(&body),
            &format!("write-{i}"),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED);
    }
    let _ = writer;
    let before: BTreeSet<String> = app
        .audits_by_request()
        .await
        .into_values()
        .flatten()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    // Every page of one search, ascending, so later events would come last.
    let mut path = Some("/AuditEvent?_sort=date&_count=2".to_string());
    let (mut seen, mut totals, mut n) = (BTreeSet::new(), BTreeSet::new(), 0);
    while let Some(p) = path {
        let r = get(&app, &auditor, &p, &format!("own-page-{n}")).await;
        let b = r.json();
        for e in matches(&r) {
            assert!(
                !request_id(&e).starts_with("own-page-"),
                "page {n} found the AuditEvent of a page of its own search: {e}"
            );
            assert!(
                seen.insert(e["id"].as_str().unwrap().to_string()),
                "twice: {e}"
            );
        }
        totals.insert(b["total"].as_i64());
        n += 1;
        assert!(n < 50, "paging does not end");
        path = next_link(&app, &b);
    }
    assert_eq!(
        seen, before,
        "exactly the AuditEvents committed before the search"
    );
    assert_eq!(totals.len(), 1, "one total on every page: {totals:?}");
    // The next search finds the last page's AuditEvent: read-your-writes.
    let last = format!("own-page-{}", n - 1);
    let r = get(
        &app,
        &auditor,
        "/AuditEvent?subtype=search-type&_count=100",
        "after",
    )
    .await;
    let found: Vec<String> = matches(&r).iter().map(request_id).collect();
    assert!(found.contains(&last), "{last} in {found:?}");
    assert!(!found.contains(&"after".to_string()));
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// The parameters whose elements fhirgate's own AuditEvents do not carry
/// (agent.name, agent.role, agent.altId, agent.policy, entity.name,
/// source.observer as a reference) are indexed and searched like the rest: an
/// AuditEvent with them is committed through the audit sink, as the server commits
/// its own, and found by each of them; the background indexer indexes it without a
/// search asking.
async fn every_parameter_reaches_the_elements_it_names(backend: Backend) {
    let app = spawn_auth(backend, |s| s.audit.index_interval_ms = 20).await;
    let (_, auditor) = client_token(&app, "system/AuditEvent.rs").await;
    let id = uuid::Uuid::new_v4().to_string();
    let recorded = fhirgate::fhir::instant(fhirgate::fhir::now_micros());
    let ev = json!({
        "resourceType": "AuditEvent", "id": id,
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110", "display": "Patient Record"},
        "action": "R", "recorded": recorded, "outcome": "0",
        "agent": [{
            "role": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV"}]}],
            "who": {"reference": "Practitioner/alice"},
            "altId": "alt-77", "name": "Alice Zebra", "requestor": true,
            "policy": ["urn:ietf:params:oauth:jti:jti-123"],
            "network": {"address": "10.1.2.3", "type": "2"}
        }],
        "source": {"site": "ward-9", "observer": {"reference": "Device/dev-1"}},
        "entity": [{"what": {"reference": "Patient/zp"}, "name": "Grocery List"}]
    });
    let row = fhirgate::store::AuditRow {
        id: id.clone(),
        recorded: fhirgate::fhir::now_micros(),
        action: "R",
        outcome: "0",
        body: serde_json::to_vec(&ev).unwrap(),
    };
    let store = app.store.clone();
    actix_web::rt::task::spawn_blocking(move || store.append_audits(&[row]))
        .await
        .unwrap()
        .expect("append");
    // The background indexer reaches it without a search.
    wait_until_indexed(&app).await;
    for (query, hit) in [
        ("agent-name=alice", true),
        ("agent-name=Alice%20Z", true),
        ("agent-name:exact=Alice%20Zebra", true),
        ("agent-name=bob", false),
        (
            "agent-role=http://terminology.hl7.org/CodeSystem/v3-RoleClass|PROV",
            true,
        ),
        ("agent-role=PROV", true),
        ("altid=alt-77", true),
        ("altid=alt-7", false),
        ("policy=urn:ietf:params:oauth:jti:jti-123", true),
        ("policy=urn:ietf:params:oauth:jti:other", false),
        ("entity-name=groc", true),
        ("entity-name:contains=list", true),
        ("entity-name:contains=cery%20l", true),
        ("entity-name:contains=listing", false),
        ("entity-name=list", false),
        // `:text` and `:contains` on AuditEvents are decided after decryption
        // (no trigram or display-prefix rows: they are indexed lean).
        ("type:text=patient%20rec", true),
        ("type:text=record", false),
        ("address:contains=1.2.3", true),
        ("address:contains=1.2.4", false),
        ("source=Device/dev-1", true),
        ("source=Device/dev-2", false),
        ("site=ward-9", true),
        ("address=10.1.2", true),
        ("address=10.1.3", false),
        ("agent=Practitioner/alice", true),
        ("patient=Patient/zp", true),
        ("type=110110", true),
        ("entity=Patient/zp&action=C", false),
    ] {
        let r = get(&app, &auditor, &format!("/AuditEvent?{query}"), "crafted").await;
        let got: Vec<String> = matches(&r)
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_string())
            .collect();
        let want = if hit { vec![id.clone()] } else { Vec::new() };
        assert_eq!(got, want, "AuditEvent?{query} ({backend:?})");
        // The count agrees (criteria decided after decryption are counted so too).
        let r = get(
            &app,
            &auditor,
            &format!("/AuditEvent?{query}&_summary=count"),
            "crafted-count",
        )
        .await;
        assert_eq!(
            r.json()["total"],
            json!(want.len()),
            "AuditEvent?{query}&_summary=count ({backend:?})"
        );
    }
    // The CapabilityStatement lists every R4 AuditEvent parameter and the search.
    let cs = app.get("/metadata").await.json();
    let audit = cs["rest"][0]["resource"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["type"] == "AuditEvent")
        .unwrap()
        .clone();
    assert!(audit["interaction"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["code"] == "search-type"));
    let names: BTreeSet<&str> = audit["searchParam"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for p in [
        "action",
        "address",
        "agent",
        "agent-name",
        "agent-role",
        "altid",
        "date",
        "entity",
        "entity-name",
        "entity-role",
        "entity-type",
        "outcome",
        "patient",
        "policy",
        "site",
        "source",
        "subtype",
        "type",
        "_id",
    ] {
        assert!(names.contains(p), "{p} in {names:?}");
    }
    app.stop().await;
}

/// Many requests at once (writes, reads through the group commit's writers, audit
/// searches) while the background indexer runs every few milliseconds: on
/// PostgreSQL positions commit out of order and the indexer passes gaps. In the
/// end every AuditEvent is indexed exactly once (one `date` row each), and a
/// search finds every AuditEvent committed before it.
async fn concurrent_traffic_is_indexed_exactly_once(backend: Backend) {
    use futures_util::future::join_all;
    let app = spawn_auth(backend, |s| s.audit.index_interval_ms = 3).await;
    let (_, auditor) = client_token(&app, "system/AuditEvent.rs").await;
    let (_, writer) = client_token(&app, "system/Patient.cruds").await;
    let body = json!({"resourceType": "Patient", "name": [{"family": "Busy"}]});
    let r = send(&app, Method::POST, "/Patient", &writer, Some(&body), "seed").await;
    let seed = r.json()["id"].as_str().unwrap().to_string();
    let work = (0..8).map(|t| {
        let (app, writer, auditor, body, seed) = (&app, &writer, &auditor, &body, &seed);
        async move {
            for i in 0..20 {
                let rid = format!("busy-{t}-{i}");
                let r = match (t + i) % 4 {
                    0 => send(app, Method::POST, "/Patient", writer, Some(body), &rid).await,
                    1 => get(app, auditor, "/AuditEvent?action=C&_count=5", &rid).await,
                    _ => get(app, writer, &format!("/Patient/{seed}"), &rid).await,
                };
                assert!(r.status.is_success(), "{rid}: {}", text(&r));
            }
        }
    });
    join_all(work).await;
    let r = get(
        &app,
        &auditor,
        "/AuditEvent?date=gt2000-01-01&_summary=count",
        "final",
    )
    .await;
    let total = r.json()["total"].as_i64().unwrap();
    let logged = app.db.count_rows("audit_log");
    assert_eq!(
        total,
        logged - 1,
        "every AuditEvent but the final search's own"
    );
    wait_until_indexed(&app).await;
    let date_rows = app.db.count_rows("search_date WHERE rid < 0");
    assert_eq!(
        date_rows, logged,
        "one date row per AuditEvent: none indexed twice"
    );
    app.assert_every_request_audited().await;
    app.stop().await;
}

/// Two server processes on one PostgreSQL database, each with its background
/// indexer running every 2 ms, under writes, reads and AuditEvent searches sent to
/// both: their batches race for the same AuditEvents, and every AuditEvent is
/// indexed exactly once (the losing batch commits nothing); a search on either
/// node finds every AuditEvent committed before it, whichever node wrote it.
#[actix_rt::test]
async fn two_nodes_index_each_audit_event_once() {
    use crate::smart_auth::raw;
    use crate::support::process::start;
    use futures_util::future::join_all;
    let db = crate::support::server::PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    fhirgate::crypto::MasterKey::generate()
        .unwrap()
        .write_new_file(&key)
        .unwrap();
    let env = [
        ("FHIRGATE_AUDIT__INDEX_INTERVAL_MS", "2"),
        ("FHIRGATE_AUDIT__CHAIN_INTERVAL_MS", "10"),
    ];
    let a = start(&db.url, &key, &dir.path().join("a.log"), &env);
    let b = start(&db.url, &key, &dir.path().join("b.log"), &env);
    let json = [("Content-Type", "application/fhir+json")];
    let body = serde_json::to_vec(&json!({"resourceType": "Patient"})).unwrap();
    let work = (0..8).map(|t| {
        let (node, body) = (if t % 2 == 0 { &a } else { &b }, &body);
        async move {
            for i in 0..15 {
                let r = match i % 3 {
                    0 => {
                        raw(
                            Method::POST,
                            &format!("{}/Patient", node.base),
                            &json,
                            Some(body.clone()),
                        )
                        .await
                    }
                    1 => {
                        raw(
                            Method::GET,
                            &format!("{}/AuditEvent?action=C&_count=5", node.base),
                            &[],
                            None,
                        )
                        .await
                    }
                    _ => {
                        raw(
                            Method::GET,
                            &format!("{}/Patient?_count=1", node.base),
                            &[],
                            None,
                        )
                        .await
                    }
                };
                assert!(r.status.is_success(), "{}", text(&r));
            }
        }
    });
    join_all(work).await;
    let count = |url: &str, table: &str| -> i64 {
        #[derive(diesel::QueryableByName)]
        struct N {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let mut c = <diesel::PgConnection as diesel::Connection>::establish(url).unwrap();
        diesel::RunQueryDsl::get_result::<N>(
            diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}")),
            &mut c,
        )
        .unwrap()
        .n
    };
    let writes = count(&db.url, "audit_log WHERE action = 'C'");
    assert_eq!(writes, 8 * 5, "eight tasks' five creates");
    for node in [&a, &b] {
        let r = raw(
            Method::GET,
            &format!("{}/AuditEvent?action=C&_summary=count", node.base),
            &[],
            None,
        )
        .await;
        assert_eq!(r.json()["total"], writes, "{}", text(&r));
    }
    // Both background indexers settle; then one date row per AuditEvent.
    let mut settled = false;
    for _ in 0..500 {
        let logged = count(&db.url, "audit_log");
        let dated = count(&db.url, "search_date WHERE rid < 0");
        assert!(
            dated <= logged,
            "{dated} date rows for {logged} AuditEvents: one indexed twice"
        );
        if dated == logged {
            settled = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(settled, "the indexers did not index every AuditEvent");
    // Both chainers linked into one chain, which verifies whole.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(["audit", "verify"])
        .env("FHIRGATE_DATABASE__URL", &db.url)
        .env("FHIRGATE_CRYPTO__MASTER_KEY_FILE", &key)
        .env("FHIRGATE_PACKAGES__CACHE", crate::support::package_cache())
        .env("FHIRGATE_LOG__LEVEL", "warn")
        .current_dir(dir.path())
        .output()
        .expect("run fhirgate");
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "audit verify: {e}: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{v}");
    let verified = v["verified"].as_i64().unwrap_or_default();
    assert_eq!(
        verified,
        count(&db.url, "audit_log"),
        "one chain of every AuditEvent: {v}"
    );
    assert_eq!(count(&db.url, "audit_chain"), verified, "each linked once");
}

/// Waits until the background indexer has indexed every AuditEvent committed.
async fn wait_until_indexed(app: &TestApp) {
    for _ in 0..1000 {
        let store = app.store.clone();
        let pending = actix_web::rt::task::spawn_blocking(move || {
            let state = store.audit_index_state()?;
            store.audit_unindexed(&state, 10)
        })
        .await
        .unwrap()
        .expect("the indexer's state");
        if pending.is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the background indexer did not index the log");
}

on_both_backends!(
    concurrent_traffic_is_indexed_exactly_once,
    audit_event_search_by_every_parameter,
    a_search_never_finds_its_own_audit_event,
    every_parameter_reaches_the_elements_it_names,
);
