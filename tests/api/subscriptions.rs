//! FHIR Subscriptions (issue 15) on both backends, with a real HTTP receiver on
//! loopback (allowed by `subscriptions.allowed_hosts`): a rest-hook subscription
//! hears exactly the creates, updates and deletes that match its criteria, in
//! order, numbered 1, 2, 3, ..., each signed with the secret shown once at
//! creation; a transaction that rolls back notifies nothing and uses no number;
//! a receiver that fails three times gets everything, in order, once it
//! recovers; `$events` replays what was stored; unsafe endpoints and unsupported
//! channels are refused with 422 and store nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::http::StatusCode;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use crate::support::server::{on_both_backends, spawn_with, Backend, Database, TestApp};

/// One POST the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn event_number(&self) -> i64 {
        self.header("x-fhirgate-event-number")
            .and_then(|n| n.parse().ok())
            .expect("X-Fhirgate-Event-Number")
    }

    fn bundle(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// A rest-hook receiver on 127.0.0.1: it records every POST and answers 500 to
/// the first `fail_first` of them.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    refused: Arc<Mutex<usize>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let refused: Arc<Mutex<usize>> = Arc::default();
        let (g, r) = (got.clone(), refused.clone());
        let server = HttpServer::new(move || {
            let (g, r) = (g.clone(), r.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (g, r) = (g.clone(), r.clone());
                async move {
                    {
                        let mut refused = r.lock().unwrap();
                        if *refused < fail_first {
                            *refused += 1;
                            return HttpResponse::InternalServerError().finish();
                        }
                    }
                    g.lock().unwrap().push(Received {
                        headers: req
                            .headers()
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                            .collect(),
                        body: body.to_vec(),
                    });
                    HttpResponse::Ok().finish()
                }
            }))
        })
        .workers(1)
        .bind("127.0.0.1:0")
        .expect("bind the receiver");
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        actix_rt::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hook"),
            got,
            refused,
            handle,
        }
    }

    /// What arrived once `n` notifications did (or what did after a minute,
    /// for the assertion to report).
    async fn wait_for(&self, n: usize) -> Vec<Received> {
        for _ in 0..600 {
            if self.got.lock().unwrap().len() >= n {
                break;
            }
            actix_rt::time::sleep(Duration::from_millis(100)).await;
        }
        self.got.lock().unwrap().clone()
    }
}

async fn spawn(backend: Backend) -> TestApp {
    spawn_with(Database::new(backend), |s| {
        s.subscriptions.allow_http = true;
        s.subscriptions.allowed_hosts = vec!["127.0.0.1".into()];
        s.subscriptions.first_retry_ms = 200;
        s.subscriptions.poll_interval_ms = 100;
    })
    .await
}

fn subscription(endpoint: &str, criteria: &str) -> Value {
    json!({
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "lab results",
        "criteria": criteria,
        "channel": {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "header": ["Authorization: Bearer receiver-token"]
        }
    })
}

fn observation(code: &str, value: f64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "valueQuantity": {"value": value, "unit": "mg/dL"}
    })
}

const GLUCOSE: &str = "2339-0";
const CRITERIA: &str = "Observation?code=http://loinc.org|2339-0";

/// Creates a subscription; its id and secret.
async fn subscribe(app: &TestApp, endpoint: &str) -> (String, String) {
    let r = app
        .post_json("/Subscription", &subscription(endpoint, CRITERIA))
        .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let secret = r
        .header("x-fhirgate-subscription-secret")
        .expect("the secret is shown at creation");
    let id = r.json()["id"].as_str().unwrap().to_string();
    let read = app.get(&format!("/Subscription/{id}")).await;
    assert_eq!(read.json()["status"], "active", "the server activates it");
    assert!(
        read.header("x-fhirgate-subscription-secret").is_none(),
        "the secret is shown once"
    );
    (id, secret)
}

fn assert_signed(r: &Received, secret: &str) {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(&r.body);
    let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    assert_eq!(r.header("x-fhirgate-signature"), Some(expected.as_str()));
}

/// (method, type/id) of a notification's one entry, with its resource if any.
fn entry(r: &Received) -> (String, String, Option<Value>) {
    let b = r.bundle();
    assert_eq!(b["resourceType"], "Bundle", "{b}");
    assert_eq!(b["type"], "history", "{b}");
    let e = &b["entry"][0];
    (
        e["request"]["method"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        e["request"]["url"].as_str().unwrap_or_default().to_string(),
        e.get("resource").cloned(),
    )
}

async fn create(app: &TestApp, o: &Value) -> String {
    let r = app.post_json("/Observation", o).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["id"].as_str().unwrap().to_string()
}

async fn a_subscription_hears_exactly_its_matches_in_order(backend: Backend) {
    let receiver = Receiver::start(0).await;
    let app = spawn(backend).await;
    let (sub, secret) = subscribe(&app, &receiver.url).await;

    // 1: a matching create. (Not: another code.)
    let o1 = create(&app, &observation(GLUCOSE, 95.0)).await;
    create(&app, &observation("718-7", 13.0)).await;
    // 2: an update that still matches.
    let mut changed = observation(GLUCOSE, 101.0);
    changed["id"] = json!(o1);
    let r = app.put_json(&format!("/Observation/{o1}"), &changed).await;
    assert_eq!(r.status, StatusCode::OK);
    // A transaction that rolls back (its second entry's If-Match is stale):
    // nothing is told, no number is used.
    let tx = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": observation(GLUCOSE, 1.0), "request": {"method": "POST", "url": "Observation"}},
            {"resource": changed, "request": {"method": "PUT", "url": format!("Observation/{o1}"), "ifMatch": "W/\"1\""}}
        ]
    });
    let r = app.post_json("", &tx).await;
    assert_eq!(
        r.status,
        StatusCode::PRECONDITION_FAILED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    // 3 and 4: a matching create and its delete.
    let o3 = create(&app, &observation(GLUCOSE, 140.0)).await;
    let r = app.delete(&format!("/Observation/{o3}")).await;
    assert!(r.status.is_success());
    // An update after which it no longer matches: not told.
    let mut other = observation("718-7", 12.0);
    other["id"] = json!(o1);
    let r = app.put_json(&format!("/Observation/{o1}"), &other).await;
    assert_eq!(r.status, StatusCode::OK);
    // 5: a last matching create (after everything above was committed).
    let o5 = create(&app, &observation(GLUCOSE, 88.0)).await;

    let got = receiver.wait_for(5).await;
    // Nothing more comes (the worker is woken by every write; give it a moment).
    actix_rt::time::sleep(Duration::from_millis(1500)).await;
    let got_after = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 5, "{got:#?}");
    assert_eq!(
        got_after.len(),
        5,
        "more notifications than changes: {got_after:#?}"
    );
    let expected = [
        ("POST", format!("Observation/{o1}")),
        ("PUT", format!("Observation/{o1}")),
        ("POST", format!("Observation/{o3}")),
        ("DELETE", format!("Observation/{o3}")),
        ("POST", format!("Observation/{o5}")),
    ];
    for (i, (r, (method, url))) in got.iter().zip(expected.iter()).enumerate() {
        assert_eq!(r.event_number(), i as i64 + 1, "{r:?}");
        assert_signed(r, &secret);
        assert_eq!(r.header("authorization"), Some("Bearer receiver-token"));
        assert_eq!(r.header("content-type"), Some("application/fhir+json"));
        let (m, u, resource) = entry(r);
        assert_eq!((m.as_str(), &u), (*method, url), "event {}", i + 1);
        match *method {
            "DELETE" => assert!(resource.is_none()),
            _ => assert_eq!(resource.unwrap()["code"]["coding"][0]["code"], GLUCOSE),
        }
    }

    // $events replays what was stored, from any point.
    let r = app
        .get(&format!("/Subscription/{sub}/$events?since=3"))
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let b = r.json();
    let status = &b["entry"][0]["resource"];
    assert_eq!(status["resourceType"], "Parameters", "{b}");
    let numbers: Vec<String> = status["parameter"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["name"] == "notification-event")
        .map(|p| p["part"][0]["valueString"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(numbers, ["4", "5"], "{b}");
    assert_eq!(b["entry"].as_array().unwrap().len(), 3, "{b}");
    let r = app
        .get(&format!("/Subscription/{sub}/$events?since=x"))
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = app.get("/Subscription/nope/$events").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    app.assert_every_request_audited().await;
    app.stop().await;
    receiver.handle.stop(false).await;
}

async fn a_failing_receiver_gets_everything_in_order_once_it_recovers(backend: Backend) {
    let receiver = Receiver::start(3).await;
    let app = spawn(backend).await;
    let (sub, secret) = subscribe(&app, &receiver.url).await;
    let mut ids = Vec::new();
    for v in [1.0, 2.0, 3.0, 4.0] {
        ids.push(create(&app, &observation(GLUCOSE, v)).await);
    }
    let got = receiver.wait_for(4).await;
    assert_eq!(*receiver.refused.lock().unwrap(), 3);
    assert_eq!(got.len(), 4, "{got:#?}");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.event_number(), i as i64 + 1);
        assert_signed(r, &secret);
        assert_eq!(entry(r).1, format!("Observation/{}", ids[i]));
    }
    // The failures are recorded and the subscription stays active.
    let state = app.store.subscription_state(&sub).unwrap().unwrap();
    assert_eq!(
        (state.status.as_str(), state.delivered, state.attempts),
        ("active", 4, 0)
    );
    assert_eq!(app.db.count_rows("subscription_attempts"), 7);
    // Each attempt is an AuditEvent naming the subscription, its outcome and the
    // endpoint's host, and meets the profile it claims.
    let events = crate::audit_balp::validate_all(&app).await;
    let deliveries: Vec<&Value> = events
        .iter()
        .filter(|e| e["subtype"].to_string().contains("subscription-delivery"))
        .collect();
    assert_eq!(deliveries.len(), 7, "{deliveries:#?}");
    let failed = deliveries.iter().filter(|e| e["outcome"] != "0").count();
    assert_eq!(failed, 3, "{deliveries:#?}");
    for e in &deliveries {
        let text = e.to_string();
        assert!(text.contains(&format!("Subscription/{sub}")), "{e}");
        assert!(
            !text.contains("receiver-token"),
            "a header value in the audit trail: {e}"
        );
    }
    app.stop().await;
    receiver.handle.stop(false).await;
}

async fn unsafe_or_unsupported_subscriptions_are_refused(backend: Backend) {
    // No host allowed: private, loopback and link-local targets are refused,
    // also behind a name (localhost).
    let guarded = spawn_with(Database::new(backend), |s| {
        s.subscriptions.allow_http = true;
    })
    .await;
    for endpoint in [
        "http://127.0.0.1:9/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]:9/hook",
        "http://localhost:9/hook",
        "http://10.1.2.3/hook",
        "http://user:secret@127.0.0.1:9/hook",
    ] {
        let r = guarded
            .post_json("/Subscription", &subscription(endpoint, CRITERIA))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{endpoint}");
        let (code, diagnostics, expression) = r.issue();
        assert_eq!(code, "security", "{endpoint}: {diagnostics}");
        assert_eq!(expression.as_deref(), Some("Subscription.channel.endpoint"));
        assert!(!diagnostics.contains("secret"), "{diagnostics}");
    }
    // The receiver's host allowed: criteria and channels are judged.
    let app = spawn(backend).await;
    let hook = "http://127.0.0.1:9/hook";
    for criteria in [
        "Observation?no-such-parameter=1",
        "NotAType?code=1",
        "Observation?_sort=date",
    ] {
        let r = app
            .post_json("/Subscription", &subscription(hook, criteria))
            .await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{criteria}");
        let (code, diagnostics, expression) = r.issue();
        assert_eq!(code, "invalid", "{criteria}: {diagnostics}");
        assert_eq!(expression.as_deref(), Some("Subscription.criteria"));
    }
    for channel in ["email", "sms", "message", "websocket"] {
        let mut s = subscription(hook, CRITERIA);
        s["channel"]["type"] = json!(channel);
        let r = app.post_json("/Subscription", &s).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{channel}");
        assert_eq!(r.issue().0, "not-supported", "{channel}");
    }
    let mut s = subscription(hook, CRITERIA);
    s["channel"]["header"] = json!(["X-Fhirgate-Event-Number: 7"]);
    let r = app.post_json("/Subscription", &s).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    // Without subscriptions.allow_http an http endpoint is refused, whatever its host.
    let strict = spawn_with(Database::new(backend), |s| {
        s.subscriptions.allowed_hosts = vec!["127.0.0.1".into()];
    })
    .await;
    let r = strict
        .post_json("/Subscription", &subscription(hook, CRITERIA))
        .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        r.issue().1.contains("subscriptions.allow_http"),
        "{:?}",
        r.issue()
    );
    for a in [&guarded, &app, &strict] {
        assert_eq!(a.db.count_rows("subscriptions"), 0);
        assert_eq!(a.db.count_rows("resources_current"), 0);
        a.assert_every_request_audited().await;
    }
    guarded.stop().await;
    app.stop().await;
    strict.stop().await;
}

on_both_backends!(
    a_subscription_hears_exactly_its_matches_in_order,
    a_failing_receiver_gets_everything_in_order_once_it_recovers,
    unsafe_or_unsupported_subscriptions_are_refused,
);
