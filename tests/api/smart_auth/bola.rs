//! Broken object-level authorization, tried over HTTP with real tokens: patient A's
//! token goes after patient B's data by every path a FHIR API offers (read, vread,
//! search, compartment search, `_include`, `_revinclude`, chains, `_has`, history at
//! every level, paging, `$validate`, every kind of write, transactions and batches)
//! and finds nothing; then a granular token (laboratory Observations only) sees only
//! laboratory Observations through search, include, history and paging. Every
//! request, denied or not, leaves its AuditEvent.

use awc::http::{Method, StatusCode};
use fhirgate::auth::scopes::Role;
use serde_json::{json, Value};

use super::code_flow::{code_of, exchange, public_client, run_flow, user, Choices};
use super::*;
use crate::support::server::{Backend, Reply, TestApp};

const LAB: &str = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory";

fn observation(patient: &str, category: &str, code: &str, performer: Option<&str>) -> Value {
    let mut o = json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": category
        }]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "valueQuantity": {"value": 7.2, "unit": "mmol/L"}
    });
    if let Some(p) = performer {
        o["performer"] = json!([{"reference": p}]);
    }
    o
}

async fn create(app: &TestApp, token: &str, body: &Value) -> String {
    let ty = body["resourceType"].as_str().unwrap();
    let r = fhir(
        app,
        Method::POST,
        &format!("/{ty}"),
        Some(token),
        Some(body),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", text(&r));
    r.json()["id"].as_str().expect("an id").to_string()
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).to_string()
}

/// The `Type/id` of every entry of a searchset or history Bundle.
fn entry_refs(r: &Reply) -> Vec<String> {
    assert_eq!(r.status, StatusCode::OK, "{}", text(r));
    let b = r.json();
    assert_eq!(b["resourceType"], "Bundle", "{b}");
    b["entry"]
        .as_array()
        .map(|es| {
            es.iter()
                .filter_map(|e| {
                    let res = &e["resource"];
                    Some(format!(
                        "{}/{}",
                        res["resourceType"].as_str()?,
                        res["id"].as_str()?
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Resource entries of any answer (none for an OperationOutcome).
fn entry_refs_any(r: &Reply) -> Vec<String> {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|b| b["entry"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .map(|e| e["resource"]["id"].to_string())
        .collect()
}

/// A patient's token from the standalone launch, as their app gets it.
async fn patient_token(app: &TestApp, username: &str, patient: &str, scope: &str) -> String {
    let client_id = public_client(app);
    user(
        app,
        username,
        &format!("Patient/{patient}"),
        Role::Patient,
        false,
    );
    let o = run_flow(app, &client_id, scope, username, Choices::default()).await;
    let code = code_of(&o);
    let t = exchange(app, &client_id, &code, &o.pkce.verifier).await;
    assert_eq!(t.status, StatusCode::OK, "{}", text(&t));
    let t = t.json();
    assert_eq!(t["patient"], patient);
    t["access_token"].as_str().unwrap().to_string()
}

/// The relative path of a link of a Bundle (`next`, `previous`), if any.
fn link(b: &Value, relation: &str, app: &TestApp) -> Option<String> {
    b["link"]
        .as_array()?
        .iter()
        .find(|l| l["relation"] == relation)
        .and_then(|l| l["url"].as_str())
        .map(|u| u.strip_prefix(&app.base).unwrap_or(u).to_string())
}

/// Follows `next` links from `first`, collecting every entry.
async fn all_pages(app: &TestApp, token: &str, first: &str) -> (Vec<String>, usize) {
    let mut refs = Vec::new();
    let mut path = Some(first.to_string());
    let mut pages = 0;
    while let Some(p) = path {
        let r = fhir(app, Method::GET, &p, Some(token), None).await;
        refs.extend(entry_refs(&r));
        pages += 1;
        assert!(pages < 100, "paging does not end");
        path = link(&r.json(), "next", app);
    }
    (refs, pages)
}

struct World {
    admin: String,
    a: String,
    b: String,
    /// A's Observations: laboratory, vital signs, and a laboratory one with B as performer.
    a_lab: String,
    a_vital: String,
    a_lab_perf_b: String,
    /// B's Observations (the laboratory one has two versions), Condition, Encounter.
    b_lab: String,
    b_vital: String,
    b_condition: String,
}

async fn world(app: &TestApp) -> World {
    let admin = system_token(app, "system/*.cruds").await;
    let a = create_patient(app, &admin, "Aalto").await;
    let b = create_patient(app, &admin, "Bergstrom").await;
    let a_lab = create(app, &admin, &observation(&a, "laboratory", "2345-7", None)).await;
    let a_vital = create(app, &admin, &observation(&a, "vital-signs", "8867-4", None)).await;
    let a_lab_perf_b = create(
        app,
        &admin,
        &observation(&a, "laboratory", "718-7", Some(&format!("Patient/{b}"))),
    )
    .await;
    let b_lab = create(app, &admin, &observation(&b, "laboratory", "4548-4", None)).await;
    let mut v2 = observation(&b, "laboratory", "4548-4", None);
    v2["id"] = json!(b_lab);
    v2["valueQuantity"]["value"] = json!(8.1);
    let r = fhir(
        app,
        Method::PUT,
        &format!("/Observation/{b_lab}"),
        Some(&admin),
        Some(&v2),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    let b_vital = create(
        app,
        &admin,
        &observation(&b, "vital-signs", "29463-7", None),
    )
    .await;
    let b_condition = create(
        app,
        &admin,
        &json!({"resourceType": "Condition",
                "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006"}]},
                "subject": {"reference": format!("Patient/{b}")}}),
    )
    .await;
    World {
        admin,
        a,
        b,
        a_lab,
        a_vital,
        a_lab_perf_b,
        b_lab,
        b_vital,
        b_condition,
    }
}

impl World {
    /// Everything of B's: what A's token must never see.
    fn bs(&self) -> Vec<String> {
        vec![
            format!("Patient/{}", self.b),
            format!("Observation/{}", self.b_lab),
            format!("Observation/{}", self.b_vital),
            format!("Condition/{}", self.b_condition),
        ]
    }

    fn assert_none_of_b(&self, what: &str, r: &Reply) {
        self.assert_none_of_b_but(what, r, "")
    }

    /// As `assert_none_of_b`, where the answer may repeat `asked` (the id the request
    /// named: an error may echo what the client sent).
    fn assert_none_of_b_but(&self, what: &str, r: &Reply, asked: &str) {
        // A Bundle's self link repeats the query the client sent; the rest must
        // not name B.
        let body = match serde_json::from_slice::<Value>(&r.body) {
            Ok(mut v) if v["resourceType"] == "Bundle" => {
                if let Some(links) = v.get_mut("link").and_then(Value::as_array_mut) {
                    links.retain(|l| l["relation"] != "self");
                }
                v.to_string()
            }
            _ => text(r),
        };
        // A's Observation names B as its performer: that reference is A's data.
        let body = body.replace(&format!(r#""reference":"Patient/{}""#, self.b), "");
        let body = if asked.is_empty() {
            body
        } else {
            body.replace(asked, "")
        };
        for id in [&self.b, &self.b_lab, &self.b_vital, &self.b_condition] {
            assert!(
                !body.contains(id.as_str()),
                "{what}: B's {id} shows in the answer ({}): {body}",
                r.status
            );
        }
    }
}

/// An answer that reveals nothing: 404 for a resource outside the compartment (its
/// existence is not revealed: the same answer as for an id that was never used), an
/// OperationOutcome, no trace of B but the id the request named.
async fn assert_hidden(
    app: &TestApp,
    tok: &str,
    w: &World,
    what: &str,
    method: Method,
    path: &str,
    body: Option<&Value>,
) {
    let r = fhir(app, method.clone(), path, Some(tok), body).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND, "{what}: {}", text(&r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome", "{what}");
    let asked = path
        .split('/')
        .find(|seg| w.bs().iter().any(|b| b.ends_with(&format!("/{seg}"))) || *seg == w.a_vital)
        .unwrap_or("");
    w.assert_none_of_b_but(what, &r, asked);
    // The same request on an id never used answers alike.
    if !asked.is_empty() {
        let unknown = "0d5f0a8e-0000-4000-8000-00000000dead";
        let r2 = fhir(app, method, &path.replace(asked, unknown), Some(tok), body).await;
        assert_eq!(
            r2.status, r.status,
            "{what}: unknown id answers differently"
        );
        assert_eq!(
            text(&r2).replace(unknown, ""),
            text(&r).replace(asked, ""),
            "{what}: the answer tells a hidden resource from a missing one"
        );
    }
}

fn assert_forbidden(w: &World, what: &str, r: &Reply) {
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{what}: {}", text(r));
    assert_eq!(r.json()["resourceType"], "OperationOutcome", "{what}");
    w.assert_none_of_b(what, r);
}

async fn patient_a_reaches_nothing_of_patient_b(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let w = world(&app).await;
    let tok = patient_token(
        &app,
        "alice",
        &w.a,
        "launch/patient openid fhirUser patient/*.cruds",
    )
    .await;
    let get = |path: String| {
        let app = &app;
        let tok = tok.clone();
        async move { fhir(app, Method::GET, &path, Some(&tok), None).await }
    };

    // The control: A sees her own record by the same paths.
    assert_eq!(
        get(format!("/Patient/{}", w.a)).await.status,
        StatusCode::OK
    );
    let own = entry_refs(&get("/Observation".into()).await);
    let mut own_sorted = own.clone();
    own_sorted.sort();
    let mut expected = vec![
        format!("Observation/{}", w.a_lab),
        format!("Observation/{}", w.a_vital),
        format!("Observation/{}", w.a_lab_perf_b),
    ];
    expected.sort();
    assert_eq!(
        own_sorted, expected,
        "a search without parameters: A's only"
    );

    // Read and vread.
    for (what, path) in [
        ("read Patient B", format!("/Patient/{}", w.b)),
        ("read B's Observation", format!("/Observation/{}", w.b_lab)),
        (
            "read B's Condition",
            format!("/Condition/{}", w.b_condition),
        ),
        (
            "vread B's Observation",
            format!("/Observation/{}/_history/1", w.b_lab),
        ),
    ] {
        assert_hidden(&app, &tok, &w, what, Method::GET, &path, None).await;
    }
    // `$validate` takes the resource in its body (this server does not validate a
    // stored resource by id); on B's id it answers exactly as on an unused one.
    let params = json!({"resourceType": "Parameters", "parameter": [
        {"name": "mode", "valueCode": "delete"},
        {"name": "resource", "resource": observation(&w.b, "laboratory", "4548-4", None)}
    ]});
    let on_b = fhir(
        &app,
        Method::POST,
        &format!("/Observation/{}/$validate", w.b_lab),
        Some(&tok),
        Some(&params),
    )
    .await;
    let on_unused = fhir(
        &app,
        Method::POST,
        "/Observation/0d5f0a8e-0000-4000-8000-00000000beef/$validate",
        Some(&tok),
        Some(&params),
    )
    .await;
    assert_eq!(on_b.status, on_unused.status, "{}", text(&on_b));
    assert_eq!(
        text(&on_b),
        text(&on_unused),
        "$validate tells B's id from an unused one"
    );

    // Searches that name B, directly or through references.
    for q in [
        format!("/Observation?subject=Patient/{}", w.b),
        format!("/Observation?patient={}", w.b),
        format!("/Observation?_id={}", w.b_lab),
        format!("/Observation?_id={},{}", w.b_lab, w.a_lab),
        "/Observation?code=http://loinc.org|4548-4".to_string(),
        "/Observation?subject.family=Bergstrom".to_string(),
        "/Observation?subject:Patient.name=Bergstrom".to_string(),
        "/Observation?patient.family=Bergstrom".to_string(),
        "/Patient?family=Bergstrom".to_string(),
        format!("/Patient?_id={}", w.b),
        "/Patient?_has:Observation:subject:code=http://loinc.org|4548-4".to_string(),
        "/Patient?_has:Condition:subject:code=44054006".to_string(),
        "/Condition".to_string(),
        "/Condition?code=44054006".to_string(),
        "/?_type=Observation,Condition,Patient".to_string(),
        format!("/Observation?_id={}&_include=Observation:subject", w.b_lab),
    ] {
        let r = get(q.clone()).await;
        // A search answers with what may be seen: nothing of B (a 403 for a query
        // the token may never run is fine too).
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::FORBIDDEN,
            "{q}: {}",
            text(&r)
        );
        w.assert_none_of_b(&q, &r);
        if r.status == StatusCode::OK {
            for e in entry_refs(&r) {
                assert!(!w.bs().contains(&e), "{q} returned {e}");
            }
        }
    }
    // The chain back to A still works (so the empty answers above are narrowing,
    // not a broken chain).
    let chained = entry_refs(&get("/Observation?subject.family=Aalto".into()).await);
    assert_eq!(chained.len(), 3, "{chained:?}");
    let has = entry_refs(
        &get("/Patient?_has:Observation:subject:code=http://loinc.org|2345-7".into()).await,
    );
    assert_eq!(has, vec![format!("Patient/{}", w.a)]);

    // _include: A's Observation names B as performer; B is not included.
    let inc =
        get("/Observation?_include=Observation:performer&_include=Observation:subject".into())
            .await;
    w.assert_none_of_b("_include", &inc);
    assert!(entry_refs(&inc).contains(&format!("Patient/{}", w.a)));
    let inc_iter = get(
        "/Observation?_include=Observation:performer&_include:iterate=Patient:link&_revinclude:iterate=Observation:performer"
            .into(),
    )
    .await;
    w.assert_none_of_b("_include:iterate", &inc_iter);
    // _revinclude: B's Observations point at B, not at A; none comes back, even asked
    // for from A's side through the performer reference.
    let rev = get(
        "/Patient?_revinclude=Observation:subject&_revinclude=Observation:performer&_revinclude=Condition:subject"
            .into(),
    )
    .await;
    w.assert_none_of_b("_revinclude", &rev);
    assert_eq!(entry_refs(&rev).len(), 4, "A and her three Observations");

    // Compartment searches.
    // B's compartment holds A's Observation that names B as performer: A may see
    // that one (it is in her compartment too) and nothing else.
    let comp = get(format!("/Patient/{}/Observation", w.b)).await;
    assert!(
        comp.status == StatusCode::NOT_FOUND
            || comp.status == StatusCode::FORBIDDEN
            || (comp.status == StatusCode::OK
                && entry_refs(&comp)
                    .iter()
                    .all(|e| *e == format!("Observation/{}", w.a_lab_perf_b))),
        "B's compartment: {}",
        text(&comp)
    );
    w.assert_none_of_b("B's compartment", &comp);
    let comp_all = get(format!("/Patient/{}/*", w.b)).await;
    w.assert_none_of_b("B's whole compartment", &comp_all);
    assert_eq!(
        entry_refs(&get(format!("/Patient/{}/Observation", w.a)).await).len(),
        3,
        "A's own compartment"
    );

    // History at every level.
    assert_hidden(
        &app,
        &tok,
        &w,
        "history of B's Observation",
        Method::GET,
        &format!("/Observation/{}/_history", w.b_lab),
        None,
    )
    .await;
    for q in [
        "/Observation/_history",
        "/_history",
        "/Patient/_history",
        "/Condition/_history",
    ] {
        let r = get(q.into()).await;
        assert!(
            r.status == StatusCode::OK || r.status == StatusCode::FORBIDDEN,
            "{q}: {}",
            text(&r)
        );
        w.assert_none_of_b(q, &r);
    }
    let obs_history = entry_refs(&get("/Observation/_history".into()).await);
    assert_eq!(
        obs_history.len(),
        3,
        "A's three Observations, one version each: {obs_history:?}"
    );

    // Paging: one entry a page, every page narrowed, the pages add up to A's three.
    let (paged, pages) = all_pages(&app, &tok, "/Observation?_count=1").await;
    assert_eq!(paged.len(), 3, "{paged:?}");
    assert!(pages >= 3);
    for e in &paged {
        assert!(!w.bs().contains(e));
    }
    let (hist_paged, _) = all_pages(&app, &tok, "/_history?_count=1").await;
    for e in &hist_paged {
        assert!(!w.bs().contains(e), "history page showed {e}");
    }
    // B's token on A's cursor: nothing of A (a cursor belongs to its caller).
    let bob = patient_token(&app, "bob", &w.b, "launch/patient patient/*.rs").await;
    let first = get("/Observation?_count=1".into()).await;
    let next = link(&first.json(), "next", &app).expect("a next link");
    let stolen = fhir(&app, Method::GET, &next, Some(&bob), None).await;
    // A cursor works only for the caller it was issued to.
    assert_eq!(stolen.status, StatusCode::BAD_REQUEST, "{}", text(&stolen));
    assert_eq!(stolen.json()["resourceType"], "OperationOutcome");
    assert!(entry_refs_any(&stolen).is_empty());

    // Writes on B's resources: hidden, and nothing changes.
    let mut b_obs = observation(&w.b, "laboratory", "4548-4", None);
    b_obs["id"] = json!(w.b_lab);
    // An update of B's resource: 404, as if it did not exist (an update-as-create of
    // an unused id would be a different request: the body's id must match).
    let r = fhir(
        &app,
        Method::PUT,
        &format!("/Observation/{}", w.b_lab),
        Some(&tok),
        Some(&b_obs),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "update B's Observation: {}",
        text(&r)
    );
    w.assert_none_of_b_but("update B's Observation", &r, &w.b_lab);
    assert_hidden(
        &app,
        &tok,
        &w,
        "delete B's Observation",
        Method::DELETE,
        &format!("/Observation/{}", w.b_vital),
        None,
    )
    .await;
    let patch = json!([{"op": "replace", "path": "/status", "value": "cancelled"}]);
    let r = app
        .send(
            Method::PATCH,
            &format!("/Observation/{}", w.b_lab),
            &[
                ("Content-Type", "application/json-patch+json"),
                ("Authorization", &bearer(&tok)),
            ],
            Some(&serde_json::to_vec(&patch).unwrap()),
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::NOT_FOUND,
        "patch B's Observation: {}",
        text(&r)
    );
    w.assert_none_of_b_but("patch B's Observation", &r, &w.b_lab);
    // Creating or moving a resource into B's compartment: 403.
    assert_forbidden(
        &w,
        "create an Observation for B",
        &fhir(
            &app,
            Method::POST,
            "/Observation",
            Some(&tok),
            Some(&observation(&w.b, "laboratory", "1-8", None)),
        )
        .await,
    );
    let mut moved = observation(&w.b, "laboratory", "2345-7", None);
    moved["id"] = json!(w.a_lab);
    assert_forbidden(
        &w,
        "move A's Observation to B",
        &fhir(
            &app,
            Method::PUT,
            &format!("/Observation/{}", w.a_lab),
            Some(&tok),
            Some(&moved),
        )
        .await,
    );
    // Update-as-create with a new id in B's compartment.
    assert_forbidden(
        &w,
        "update-as-create for B",
        &fhir(
            &app,
            Method::PUT,
            "/Observation/made-up-for-b",
            Some(&tok),
            Some(&{
                let mut o = observation(&w.b, "laboratory", "1-8", None);
                o["id"] = json!("made-up-for-b");
                o
            }),
        )
        .await,
    );
    // Conditional writes whose criteria match only B's data match nothing for A.
    let cond_del = fhir(
        &app,
        Method::DELETE,
        "/Observation?code=http://loinc.org|29463-7",
        Some(&tok),
        None,
    )
    .await;
    assert!(
        cond_del.status.is_success() || cond_del.status == StatusCode::NOT_FOUND,
        "{}",
        text(&cond_del)
    );
    w.assert_none_of_b("conditional delete", &cond_del);
    let cond_patch = app
        .send(
            Method::PATCH,
            "/Observation?code=http://loinc.org|4548-4",
            &[
                ("Content-Type", "application/json-patch+json"),
                ("Authorization", &bearer(&tok)),
            ],
            Some(&serde_json::to_vec(&patch).unwrap()),
        )
        .await;
    assert!(
        cond_patch.status == StatusCode::NOT_FOUND
            || cond_patch.status == StatusCode::PRECONDITION_FAILED,
        "conditional patch matching only B's: {}",
        text(&cond_patch)
    );
    w.assert_none_of_b("conditional patch", &cond_patch);
    let cond_create = fhir(
        &app,
        Method::POST,
        "/Observation",
        Some(&tok),
        Some(&observation(&w.a, "laboratory", "4548-4", None)),
    )
    .await;
    assert_eq!(
        cond_create.status,
        StatusCode::CREATED,
        "{}",
        text(&cond_create)
    );
    let ifnone = app
        .send(
            Method::POST,
            "/Observation",
            &[
                ("Content-Type", "application/fhir+json"),
                ("Authorization", &bearer(&tok)),
                ("If-None-Exist", "code=http://loinc.org|29463-7"),
            ],
            Some(&serde_json::to_vec(&observation(&w.a, "vital-signs", "29463-7", None)).unwrap()),
        )
        .await;
    assert_eq!(
        ifnone.status,
        StatusCode::CREATED,
        "If-None-Exist must not see B's match: {}",
        text(&ifnone)
    );

    // A transaction with one entry on B's data fails as a whole; nothing of it is written.
    let before = entry_refs(
        &fhir(
            &app,
            Method::GET,
            "/Observation?_count=100",
            Some(&w.admin),
            None,
        )
        .await,
    )
    .len();
    let tx = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5e0f8a3c-0000-4000-8000-000000000001",
         "resource": observation(&w.a, "laboratory", "1-8", None),
         "request": {"method": "POST", "url": "Observation"}},
        {"resource": observation(&w.b, "laboratory", "1-8", None),
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = fhir(&app, Method::POST, "", Some(&tok), Some(&tx)).await;
    assert!(
        r.status == StatusCode::FORBIDDEN,
        "transaction touching B: {}",
        text(&r)
    );
    assert_eq!(r.json()["resourceType"], "OperationOutcome");
    let tx_read = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:5e0f8a3c-0000-4000-8000-000000000002",
         "resource": observation(&w.a, "laboratory", "1-8", None),
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "DELETE", "url": format!("Observation/{}", w.b_lab)}}
    ]});
    let r = fhir(&app, Method::POST, "", Some(&tok), Some(&tx_read)).await;
    assert!(
        r.status.is_client_error(),
        "transaction deleting B's: {}",
        text(&r)
    );
    w.assert_none_of_b_but("transaction deleting B's", &r, &w.b_lab);
    let after = entry_refs(
        &fhir(
            &app,
            Method::GET,
            "/Observation?_count=100",
            Some(&w.admin),
            None,
        )
        .await,
    )
    .len();
    assert_eq!(after, before, "a refused transaction writes nothing");

    // A batch: each entry decided as if sent alone.
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"request": {"method": "GET", "url": format!("Observation/{}", w.a_lab)}},
        {"request": {"method": "GET", "url": format!("Observation/{}", w.b_lab)}},
        {"request": {"method": "GET", "url": format!("Observation?subject=Patient/{}", w.b)}},
        {"resource": observation(&w.b, "laboratory", "1-8", None),
         "request": {"method": "POST", "url": "Observation"}},
        {"request": {"method": "DELETE", "url": format!("Observation/{}", w.b_vital)}},
        {"resource": observation(&w.a, "laboratory", "1-8", None),
         "request": {"method": "POST", "url": "Observation"}}
    ]});
    let r = fhir(&app, Method::POST, "", Some(&tok), Some(&batch)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", text(&r));
    // The answers echo the ids and queries the entries named; no entry carries one
    // of B's resources.
    for e in r.json()["entry"].as_array().unwrap() {
        let res = &e["resource"];
        let found = format!(
            "{}/{}",
            res["resourceType"].as_str().unwrap_or(""),
            res["id"].as_str().unwrap_or("")
        );
        assert!(!w.bs().contains(&found), "the batch answered with {found}");
        assert!(
            res["entry"].as_array().is_none_or(|es| es.is_empty()),
            "{res}"
        );
    }
    let statuses: Vec<String> = r.json()["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(statuses[0].starts_with("200"), "{statuses:?}");
    assert!(statuses[1].starts_with("404"), "{statuses:?}");
    assert!(statuses[2].starts_with("200"), "{statuses:?}");
    assert!(statuses[3].starts_with("403"), "{statuses:?}");
    assert!(statuses[4].starts_with("404"), "{statuses:?}");
    assert!(statuses[5].starts_with("201"), "{statuses:?}");

    // B's data is as it was: two versions of the laboratory Observation, the vital
    // signs one still there, nothing made for B.
    let b_now = fhir(
        &app,
        Method::GET,
        &format!("/Observation/{}", w.b_lab),
        Some(&w.admin),
        None,
    )
    .await;
    assert_eq!(b_now.status, StatusCode::OK);
    assert_eq!(b_now.json()["meta"]["versionId"], "2");
    assert_eq!(b_now.json()["status"], "final");
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            &format!("/Observation/{}", w.b_vital),
            Some(&w.admin),
            None
        )
        .await
        .status,
        StatusCode::OK
    );
    let for_b = entry_refs(
        &fhir(
            &app,
            Method::GET,
            &format!("/Observation?subject=Patient/{}", w.b),
            Some(&w.admin),
            None,
        )
        .await,
    );
    assert_eq!(for_b.len(), 2, "{for_b:?}");

    // Every request, allowed or denied, left exactly one AuditEvent with its outcome.
    app.assert_every_request_audited().await;
    // The denials name the client and the user.
    let audits = app.audits_by_request().await;
    let denied: Vec<&Value> = audits
        .values()
        .flatten()
        .filter(|e| e["outcome"] == "4" && auth_code(e).is_none())
        .collect();
    assert!(denied.len() >= 8, "{} denials audited", denied.len());
    for e in denied {
        // Alice's denials, and Bob's replay of her cursor.
        let agents = e["agent"].to_string();
        assert!(
            agents.contains(&format!("\"reference\":\"Patient/{}\"", w.a))
                || agents.contains(&format!("\"reference\":\"Patient/{}\"", w.b)),
            "the user in {e}"
        );
        assert!(agents.contains("urn:fhirgate:client"), "the client in {e}");
    }
}

async fn a_laboratory_token_sees_only_laboratory_observations(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let w = world(&app).await;
    let scope = format!("launch/patient patient/Patient.rs patient/Observation.rs?category={LAB}");
    let tok = patient_token(&app, "alice", &w.a, &scope).await;
    let get = |path: String| {
        let app = &app;
        let tok = tok.clone();
        async move { fhir(app, Method::GET, &path, Some(&tok), None).await }
    };
    let labs = {
        let mut v = vec![
            format!("Observation/{}", w.a_lab),
            format!("Observation/{}", w.a_lab_perf_b),
        ];
        v.sort();
        v
    };
    let sorted = |mut v: Vec<String>| {
        v.sort();
        v
    };

    // Search.
    assert_eq!(sorted(entry_refs(&get("/Observation".into()).await)), labs);
    assert_eq!(
        entry_refs(&get("/Observation?category=vital-signs".into()).await),
        Vec::<String>::new()
    );
    assert_eq!(
        entry_refs(&get("/Observation?code=http://loinc.org|8867-4".into()).await),
        Vec::<String>::new()
    );
    // Read: a vital-signs Observation of her own is outside the grant: 404.
    assert_hidden(
        &app,
        &tok,
        &w,
        "read a vital-signs Observation",
        Method::GET,
        &format!("/Observation/{}", w.a_vital),
        None,
    )
    .await;
    assert_eq!(
        get(format!("/Observation/{}", w.a_lab)).await.status,
        StatusCode::OK
    );
    // Other types than the granted ones: 403.
    let cond = get("/Condition".into()).await;
    assert_eq!(cond.status, StatusCode::FORBIDDEN, "{}", text(&cond));

    // Include from the Patient side: only the laboratory ones come along.
    let rev = get(format!(
        "/Patient?_id={}&_revinclude=Observation:subject",
        w.a
    ))
    .await;
    let got = entry_refs(&rev);
    assert!(
        !got.contains(&format!("Observation/{}", w.a_vital)),
        "{got:?}"
    );
    assert_eq!(
        got.len(),
        3,
        "A and her two laboratory Observations: {got:?}"
    );
    let inc = entry_refs(&get("/Observation?_include=Observation:subject".into()).await);
    assert!(inc.contains(&format!("Patient/{}", w.a)));
    assert!(!inc.contains(&format!("Observation/{}", w.a_vital)));
    assert!(
        !inc.contains(&format!("Patient/{}", w.b)),
        "the performer is not included: {inc:?}"
    );

    // History: type level and instance level.
    let hist = entry_refs(&get("/Observation/_history".into()).await);
    assert_eq!(sorted(hist), labs);
    assert_hidden(
        &app,
        &tok,
        &w,
        "history of the vital-signs one",
        Method::GET,
        &format!("/Observation/{}/_history", w.a_vital),
        None,
    )
    .await;
    let sys = entry_refs(&get("/_history".into()).await);
    assert!(
        !sys.contains(&format!("Observation/{}", w.a_vital)),
        "{sys:?}"
    );
    assert!(sys.iter().all(|e| !w.bs().contains(e)), "{sys:?}");

    // Paging.
    let (paged, pages) = all_pages(&app, &tok, "/Observation?_count=1").await;
    assert_eq!(sorted(paged), labs);
    assert!((2..=3).contains(&pages), "{pages} pages");

    // Writing is outside an .rs grant.
    let r = fhir(
        &app,
        Method::POST,
        "/Observation",
        Some(&tok),
        Some(&observation(&w.a, "laboratory", "1-8", None)),
    )
    .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN, "{}", text(&r));

    app.assert_every_request_audited().await;
}

crate::support::server::on_both_backends!(
    patient_a_reaches_nothing_of_patient_b,
    a_laboratory_token_sees_only_laboratory_observations
);
