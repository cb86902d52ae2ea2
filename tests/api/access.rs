//! Access is decided in the data layer: a restricted grant narrows reads, vreads,
//! searches (chains, `_has`, `_include`, `_revinclude`, totals, paging), history at
//! every level and writes in the SQL the store runs, on both backends. The grants
//! here are built from permissions as SMART scopes will build them: "only these
//! types", "only this patient's compartment", "only laboratory Observations".
//! Golden files show the restriction in the SQL of narrowed searches.

use std::collections::BTreeSet;
use std::path::PathBuf;

use fhirgate::access::{AccessContext, Action, Actions, Grant, Level, Permission};
use fhirgate::bundle::{self, Done, Entry, Method, Origin, Payload, Target};
use fhirgate::fhir::Id;
use fhirgate::http::AppState;
use fhirgate::search::SearchResult;
use fhirgate::store::HistoryScope;
use serde_json::{json, Value};

use crate::support;
use crate::support::server::{on_both_backends, spawn_app, Backend, TestApp};

const CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";

fn observation(id: &str, patient: &str, category: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
           "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "subject": {"reference": format!("Patient/{patient}")},
           "performer": [{"reference": "Practitioner/pr1"}],
           "effectiveDateTime": "2024-01-01"})
}

/// Two patients with a laboratory and a vital-signs Observation each, a shared
/// Practitioner, and a second version of one Observation (for history).
async fn load(app: &TestApp) {
    let mut puts = vec![
        (
            "/Patient/pa".to_string(),
            json!({"resourceType": "Patient", "id": "pa", "name": [{"family": "Alpha"}]}),
        ),
        (
            "/Patient/pb".to_string(),
            json!({"resourceType": "Patient", "id": "pb", "name": [{"family": "Beta"}]}),
        ),
        (
            "/Practitioner/pr1".to_string(),
            json!({"resourceType": "Practitioner", "id": "pr1", "name": [{"family": "Doc"}]}),
        ),
    ];
    for (id, patient, category, code) in [
        ("oa-lab", "pa", "laboratory", "718-7"),
        ("oa-vital", "pa", "vital-signs", "8867-4"),
        ("ob-lab", "pb", "laboratory", "718-7"),
        ("ob-vital", "pb", "vital-signs", "8867-4"),
    ] {
        puts.push((
            format!("/Observation/{id}"),
            observation(id, patient, category, code),
        ));
    }
    for (path, body) in &puts {
        let r = app.put_json(path, body).await;
        assert!(
            r.status.is_success(),
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
    }
    let mut again = observation("oa-lab", "pa", "laboratory", "718-7");
    again["status"] = json!("amended");
    assert!(app
        .put_json("/Observation/oa-lab", &again)
        .await
        .status
        .is_success());
    let mut again = observation("ob-lab", "pb", "laboratory", "718-7");
    again["status"] = json!("amended");
    assert!(app
        .put_json("/Observation/ob-lab", &again)
        .await
        .status
        .is_success());
}

fn permission(level: Level, t: Option<&str>, actions: &str, query: Option<&str>) -> Permission {
    Permission {
        level,
        resource_type: t.map(str::to_string),
        actions: Actions::parse_v2(actions).unwrap(),
        query: query.map(str::to_string),
    }
}

fn context(state: &AppState, permissions: &[Permission], patient: Option<&str>) -> AccessContext {
    let grant = Grant::compile(permissions, patient, &state.search).expect("grant");
    AccessContext::open("test", None).with_grant(grant)
}

/// `patient/*.rs` for Patient pa.
fn patient_a(state: &AppState) -> AccessContext {
    context(
        state,
        &[permission(Level::Patient, None, "rs", None)],
        Some("pa"),
    )
}

/// Laboratory Observations and every Patient (SMART v2 granular scope).
fn lab_only(state: &AppState) -> AccessContext {
    let lab = format!("category={CATEGORY}|laboratory");
    context(
        state,
        &[
            permission(Level::User, Some("Observation"), "rs", Some(&lab)),
            permission(Level::User, Some("Patient"), "rs", None),
        ],
        None,
    )
}

/// Patients only.
fn patients_only(state: &AppState) -> AccessContext {
    context(
        state,
        &[permission(Level::User, Some("Patient"), "rs", None)],
        None,
    )
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    actix_web::rt::task::spawn_blocking(f).await.unwrap()
}

fn ids(r: &SearchResult, included: bool) -> BTreeSet<String> {
    let hits = if included { &r.included } else { &r.matches };
    hits.iter()
        .map(|h| format!("{}/{}", h.version.resource_type, h.version.id))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

async fn search(app: &TestApp, ctx: &AccessContext, t: &str, q: &str) -> SearchResult {
    let state = app.state.clone();
    let ctx = ctx.clone();
    let (t, q) = (t.to_string(), q.to_string());
    blocking(move || {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let types = if t.is_empty() {
            Vec::new()
        } else {
            vec![t.clone()]
        };
        let req = state.search.parse(types, &pairs, true).expect("parse");
        state
            .search
            .execute(&state.store, &ctx, &req, None)
            .unwrap_or_else(|e| panic!("{t}?{q}: {e}"))
    })
    .await
}

/// Every page of a search, followed through its cursors.
async fn all_pages(app: &TestApp, ctx: &AccessContext, t: &str, q: &str) -> Vec<String> {
    let state = app.state.clone();
    let ctx = ctx.clone();
    let (t, q) = (t.to_string(), q.to_string());
    blocking(move || {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(q.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let req = state.search.parse(vec![t], &pairs, true).expect("parse");
        let mut out = Vec::new();
        let mut cursor = None;
        for _ in 0..20 {
            let r = state
                .search
                .execute(&state.store, &ctx, &req, cursor.as_ref())
                .expect("page");
            out.extend(r.matches.iter().map(|h| h.version.id.clone()));
            match r.next {
                Some(c) => cursor = Some(c),
                None => return out,
            }
        }
        panic!("the pages never ended")
    })
    .await
}

async fn read(app: &TestApp, ctx: &AccessContext, t: &str, id: &str, v: Option<i64>) -> bool {
    let (store, ctx, t, id) = (
        app.store.clone(),
        ctx.clone(),
        t.to_string(),
        id.to_string(),
    );
    blocking(move || store.read(&ctx, &t, &id, v).expect("read").is_some()).await
}

async fn history(app: &TestApp, ctx: &AccessContext, scope: HistoryScope) -> Vec<String> {
    let (store, ctx) = (app.store.clone(), ctx.clone());
    blocking(move || {
        store
            .history(&ctx, &scope, None, None, 100)
            .expect("history")
            .into_iter()
            .map(|h| {
                format!(
                    "{}/{}/{}",
                    h.version.resource_type, h.version.id, h.version.version
                )
            })
            .collect()
    })
    .await
}

async fn reads_searches_includes_and_history_are_narrowed_in_the_data_layer(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app).await;
    let (a, lab, patients) = (
        patient_a(&app.state),
        lab_only(&app.state),
        patients_only(&app.state),
    );

    // Read and vread: what is outside the grant does not exist for the caller.
    assert!(read(&app, &a, "Patient", "pa", None).await);
    assert!(!read(&app, &a, "Patient", "pb", None).await);
    assert!(read(&app, &a, "Observation", "oa-vital", None).await);
    assert!(!read(&app, &a, "Observation", "ob-vital", None).await);
    assert!(read(&app, &a, "Observation", "oa-lab", Some(1)).await);
    assert!(!read(&app, &a, "Observation", "ob-lab", Some(1)).await);
    assert!(
        !read(&app, &a, "Practitioner", "pr1", None).await,
        "outside the compartment"
    );
    assert!(read(&app, &lab, "Observation", "ob-lab", None).await);
    assert!(!read(&app, &lab, "Observation", "ob-vital", None).await);
    assert!(!read(&app, &patients, "Observation", "oa-lab", None).await);
    assert!(read(&app, &patients, "Patient", "pb", None).await);
    // A type outside the grant is refused before the store is asked.
    assert!(patients.decide("Observation", Action::Read).is_err());
    assert!(a.decide("Observation", Action::Create).is_err());
    assert!(
        a.decide("AuditEvent", Action::Search).is_err(),
        "a wildcard never includes AuditEvent"
    );

    // Searches, their totals, and a system search.
    let r = search(&app, &a, "Observation", "").await;
    assert_eq!(
        ids(&r, false),
        set(&["Observation/oa-lab", "Observation/oa-vital"])
    );
    assert_eq!(r.total, Some(2));
    let r = search(&app, &lab, "Observation", "_total=accurate").await;
    assert_eq!(
        ids(&r, false),
        set(&["Observation/oa-lab", "Observation/ob-lab"])
    );
    assert_eq!(r.total, Some(2));
    let r = search(&app, &a, "", "_type=Patient,Observation,Practitioner").await;
    assert_eq!(
        ids(&r, false),
        set(&["Patient/pa", "Observation/oa-lab", "Observation/oa-vital"])
    );
    let r = search(&app, &lab, "Patient", "family=Be").await;
    assert_eq!(ids(&r, false), set(&["Patient/pb"]));
    // A one-condition total takes a shortcut past resources_current when open; a
    // narrowed caller is counted with the narrowing.
    let r = search(&app, &a, "Patient", "family=Be&_total=accurate").await;
    assert_eq!(r.total, Some(0));

    // Chains and _has only see what the caller may search.
    let r = search(&app, &a, "Observation", "subject:Patient.family=Beta").await;
    assert!(r.matches.is_empty(), "{:?}", ids(&r, false));
    let r = search(
        &app,
        &lab,
        "Patient",
        "_has:Observation:subject:code=8867-4",
    )
    .await;
    assert!(
        r.matches.is_empty(),
        "the vital signs are outside the lab-only grant"
    );
    let r = search(&app, &lab, "Patient", "_has:Observation:subject:code=718-7").await;
    assert_eq!(ids(&r, false), set(&["Patient/pa", "Patient/pb"]));

    // _include and _revinclude add only what the caller may read.
    let r = search(
        &app,
        &lab,
        "Observation",
        "_include=Observation:subject&_include=Observation:performer",
    )
    .await;
    assert_eq!(
        ids(&r, true),
        set(&["Patient/pa", "Patient/pb"]),
        "no Practitioner"
    );
    let r = search(&app, &a, "Patient", "_revinclude=Observation:subject").await;
    assert_eq!(ids(&r, false), set(&["Patient/pa"]));
    assert_eq!(
        ids(&r, true),
        set(&["Observation/oa-lab", "Observation/oa-vital"])
    );
    let r = search(&app, &lab, "Patient", "_revinclude=Observation:subject").await;
    assert_eq!(
        ids(&r, true),
        set(&["Observation/oa-lab", "Observation/ob-lab"])
    );
    let r = search(
        &app,
        &patients,
        "Patient",
        "_revinclude=Observation:subject",
    )
    .await;
    assert!(r.included.is_empty());

    // Paging: every page of a narrowed search holds only what the caller may see.
    let pages = all_pages(&app, &a, "Observation", "_count=1").await;
    assert_eq!(pages, vec!["oa-lab", "oa-vital"]);
    let pages = all_pages(&app, &lab, "Observation", "_count=1&_sort=-_lastUpdated").await;
    assert_eq!(pages.iter().collect::<BTreeSet<_>>().len(), 2);
    assert!(pages.iter().all(|id| id.ends_with("-lab")), "{pages:?}");

    // History at every level.
    let h = history(
        &app,
        &a,
        HistoryScope::Instance("Observation".into(), "ob-lab".into()),
    )
    .await;
    assert!(h.is_empty(), "{h:?}");
    let h = history(
        &app,
        &a,
        HistoryScope::Instance("Observation".into(), "oa-lab".into()),
    )
    .await;
    assert_eq!(h, vec!["Observation/oa-lab/2", "Observation/oa-lab/1"]);
    let h = history(&app, &a, HistoryScope::Type("Observation".into())).await;
    assert_eq!(h.len(), 3, "{h:?}");
    assert!(h.iter().all(|e| e.starts_with("Observation/oa-")), "{h:?}");
    let h = history(&app, &lab, HistoryScope::System).await;
    assert!(
        h.iter()
            .all(|e| e.starts_with("Patient/") || e.contains("-lab/")),
        "{h:?}"
    );
    assert_eq!(h.iter().filter(|e| e.contains("-lab/")).count(), 4, "{h:?}");
    let h = history(&app, &a, HistoryScope::System).await;
    assert!(
        h.iter()
            .all(|e| e.starts_with("Patient/pa/") || e.starts_with("Observation/oa-")),
        "{h:?}"
    );

    app.stop().await;
}

/// Runs one write entry for `ctx` as the REST API does.
async fn write(app: &TestApp, ctx: &AccessContext, entry: Entry) -> Result<Done, String> {
    let (state, ctx) = (app.state.clone(), ctx.clone());
    blocking(move || {
        bundle::process_entry(&state.bundle_env(&ctx, false), &entry, None)
            .map_err(|f| f.0.to_string())
    })
    .await
}

fn put(resource: Value) -> Entry {
    let t = resource["resourceType"].as_str().unwrap().to_string();
    let id = Id::parse(resource["id"].as_str().unwrap()).unwrap();
    Entry {
        origin: Origin::Request,
        full_url: None,
        method: Method::Put,
        url: format!("{t}/{id}"),
        target: Target::Instance {
            resource_type: t,
            id,
        },
        payload: Payload::Resource(resource),
        if_match: None,
        if_none_exist: None,
        if_none_match: None,
        if_modified_since: None,
    }
}

fn post(resource: Value) -> Entry {
    let t = resource["resourceType"].as_str().unwrap().to_string();
    Entry {
        origin: Origin::Request,
        full_url: None,
        method: Method::Post,
        url: t.clone(),
        target: Target::Type(t),
        payload: Payload::Resource(resource),
        if_match: None,
        if_none_exist: None,
        if_none_match: None,
        if_modified_since: None,
    }
}

async fn writes_stay_within_the_grant(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app).await;
    let writer = context(
        &app.state,
        &[permission(
            Level::Patient,
            Some("Observation"),
            "cruds",
            None,
        )],
        Some("pa"),
    );
    // Within the compartment: created and updated.
    let mut mine = observation("new-a", "pa", "laboratory", "718-7");
    mine.as_object_mut().unwrap().remove("id");
    assert!(matches!(
        write(&app, &writer, post(mine)).await,
        Ok(Done::Stored { created: true, .. })
    ));
    let mut update = observation("oa-vital", "pa", "vital-signs", "8867-4");
    update["status"] = json!("amended");
    assert!(write(&app, &writer, put(update)).await.is_ok());
    // Into another patient's compartment: refused, nothing written.
    let mut theirs = observation("new-b", "pb", "laboratory", "718-7");
    theirs.as_object_mut().unwrap().remove("id");
    let e = write(&app, &writer, post(theirs))
        .await
        .expect_err("another patient's record");
    assert!(e.contains("outside"), "{e}");
    let moved = observation("oa-lab", "pb", "laboratory", "718-7");
    assert!(
        write(&app, &writer, put(moved)).await.is_err(),
        "moving a resource out"
    );
    // Another patient's resource is not found for the caller (its existence is not revealed).
    let mut other = observation("ob-vital", "pb", "vital-signs", "8867-4");
    other["status"] = json!("amended");
    let e = write(&app, &writer, put(other))
        .await
        .expect_err("another patient's resource");
    assert!(e.contains("does not exist"), "{e}");
    let open = AccessContext::system();
    assert!(read(&app, &open, "Observation", "ob-vital", Some(1)).await);
    assert!(
        !read(&app, &open, "Observation", "ob-vital", Some(2)).await,
        "nothing written"
    );
    assert_eq!(
        search(&app, &open, "Observation", "subject=Patient/pb")
            .await
            .matches
            .len(),
        2,
        "the refused create left nothing"
    );
    let h = history(
        &app,
        &open,
        HistoryScope::Instance("Observation".into(), "oa-lab".into()),
    )
    .await;
    assert_eq!(h.len(), 2, "the refused move left no version: {h:?}");
    app.stop().await;
}

fn golden_path(backend: Backend) -> PathBuf {
    let name = match backend {
        Backend::Sqlite => "access-narrowing-sqlite.sql",
        Backend::Postgres => "access-narrowing-postgres.sql",
    };
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

async fn narrowed_searches_show_the_restriction_in_their_sql(backend: Backend) {
    let app = spawn_app(backend).await;
    load(&app).await;
    let cases = [
        (
            "patient/*.rs for Patient pa",
            patient_a(&app.state),
            "Observation",
            "code=http://loinc.org|718-7",
        ),
        (
            "patient/*.rs for Patient pa",
            patient_a(&app.state),
            "",
            "_type=Patient,Observation",
        ),
        (
            "laboratory Observations only",
            lab_only(&app.state),
            "Observation",
            "_count=10",
        ),
        (
            "laboratory Observations only",
            lab_only(&app.state),
            "Patient",
            "_has:Observation:subject:code=718-7",
        ),
        (
            "unrestricted",
            AccessContext::system(),
            "Observation",
            "code=http://loinc.org|718-7",
        ),
    ];
    let mut rendered = String::new();
    for (who, ctx, t, q) in cases {
        let state = app.state.clone();
        let (t2, q2) = (t.to_string(), q.to_string());
        let text = blocking(move || {
            let pairs: Vec<(String, String)> = form_urlencoded::parse(q2.as_bytes())
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            let types = if t2.is_empty() { Vec::new() } else { vec![t2] };
            let req = state.search.parse(types, &pairs, true).expect("parse");
            state
                .search
                .explain(&state.store, &ctx, &req)
                .expect("explain")
        })
        .await;
        let sql = text.split_once('\n').map_or(text.as_str(), |(s, _)| s);
        rendered.push_str(&format!("-- {who}: {t}?{q}\n{sql};\n\n"));
    }
    // The restriction is in the SQL: the compartment's reference semi-join, the
    // category's blind-index semi-join.
    assert!(rendered.contains("target_type = ?") || rendered.contains("target_type ="));
    let path = golden_path(backend);
    if support::regenerate_golden() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let golden = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing; run with FHIRGATE_REGENERATE_GOLDEN=1",
            path.display()
        )
    });
    assert_eq!(
        rendered, golden,
        "the narrowed SQL changed; regenerate the golden file if that is intended"
    );
    app.stop().await;
}

on_both_backends!(
    reads_searches_includes_and_history_are_narrowed_in_the_data_layer,
    writes_stay_within_the_grant,
    narrowed_searches_show_the_restriction_in_their_sql,
);
