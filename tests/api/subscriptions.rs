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
use fhirgate::config::Settings;

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
    /// How many POSTs are answered 500 before the receiver "recovers".
    fail_first: Arc<Mutex<usize>>,
    handle: actix_web::dev::ServerHandle,
}

impl Receiver {
    async fn start(fail_first: usize) -> Receiver {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let refused: Arc<Mutex<usize>> = Arc::default();
        let limit = Arc::new(Mutex::new(fail_first));
        let (g, r, l) = (got.clone(), refused.clone(), limit.clone());
        let server = HttpServer::new(move || {
            let (g, r, l) = (g.clone(), r.clone(), l.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (g, r, l) = (g.clone(), r.clone(), l.clone());
                async move {
                    {
                        let mut refused = r.lock().unwrap();
                        if *refused < *l.lock().unwrap() {
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
            fail_first: limit,
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
    spawn_tuned(backend, |_| {}).await
}

/// A server whose subscriptions may reach the loopback receiver, retry after
/// 200 ms and poll every 100 ms, with `tune`'s settings on top.
async fn spawn_tuned(backend: Backend, tune: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_with(Database::new(backend), |s| {
        s.subscriptions.allow_http = true;
        s.subscriptions.allowed_hosts = vec!["127.0.0.1".into()];
        s.subscriptions.first_retry_ms = 200;
        s.subscriptions.poll_interval_ms = 100;
        tune(s);
    })
    .await
}

/// Every request audited, then the server and the receiver stopped.
async fn finish(app: TestApp, receiver: Receiver) {
    app.assert_every_request_audited().await;
    app.stop().await;
    receiver.handle.stop(false).await;
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

    finish(app, receiver).await;
}

async fn a_failing_receiver_gets_everything_in_order_once_it_recovers(backend: Backend) {
    let receiver = Receiver::start(3).await;
    let app = spawn(backend).await;
    let (sub, secret) = subscribe(&app, &receiver.url).await;
    let mut ids = Vec::new();
    for v in [1.0, 2.0, 3.0, 4.0] {
        let mut o = observation(GLUCOSE, v);
        o["subject"] = json!({"reference": "Patient/p-disclosed"});
        ids.push(create(&app, &o).await);
    }
    let got = receiver.wait_for(4).await;
    assert_eq!(*receiver.refused.lock().unwrap(), 3);
    assert_eq!(got.len(), 4, "{got:#?}");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.event_number(), i as i64 + 1);
        assert_signed(r, &secret);
        assert_eq!(entry(r).1, format!("Observation/{}", ids[i]));
    }
    // The failures are recorded and the subscription stays active (attempts
    // are recorded in batches after the posts: the state follows).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let state = loop {
        let state = app.store.subscription_state(&sub).unwrap().unwrap();
        if state.delivered == 4 || std::time::Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        (state.status.as_str(), state.delivered, state.attempts),
        ("active", 4, 0)
    );
    assert_eq!(app.db.count_rows("subscription_attempts"), 7);
    // The metrics say the same.
    let metrics = app.get(&format!("{}/metrics", app.root)).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    for line in [
        "fhirgate_subscription_deliveries_total{outcome=\"delivered\"} 4",
        "fhirgate_subscription_deliveries_total{outcome=\"failed\"} 3",
        "fhirgate_subscription_outbox_depth 0",
        "fhirgate_subscription_delivery_latency_seconds_count 4",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no `{line}` in the metrics:\n{text}"
        );
    }
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
        // The payload carried the patient's Observation: a disclosure of it.
        assert!(text.contains("Patient/p-disclosed"), "{e}");
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
    for channel in ["email", "sms", "message"] {
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

/// A websocket client of `GET /fhir/$websocket`.
struct Socket {
    conn: actix_codec::Framed<awc::BoxedSocket, awc::ws::Codec>,
}

impl Socket {
    async fn open(app: &TestApp) -> Socket {
        Socket::open_with(app, None).await
    }

    /// With `Authorization: Bearer TOKEN` on the handshake when given.
    async fn open_with(app: &TestApp, bearer: Option<&str>) -> Socket {
        let url = format!("{}/$websocket", app.base.replace("http://", "ws://"));
        let mut ws = awc::Client::new().ws(url);
        if let Some(token) = bearer {
            ws = ws.header("Authorization", format!("Bearer {token}"));
        }
        let (_, conn) = ws.connect().await.expect("websocket handshake");
        Socket { conn }
    }

    async fn send(&mut self, text: &str) {
        use futures_util::SinkExt;
        self.conn
            .send(awc::ws::Message::Text(text.to_string().into()))
            .await
            .expect("send");
    }

    /// The next text message (websocket pings are answered and skipped), or
    /// None when none comes within `wait`.
    async fn next_text(&mut self, wait: Duration) -> Option<String> {
        use futures_util::{SinkExt, StreamExt};
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.conn.next())
                .await
                .ok()??;
            match frame.expect("a websocket frame") {
                awc::ws::Frame::Text(b) => return Some(String::from_utf8_lossy(&b).to_string()),
                awc::ws::Frame::Ping(b) => {
                    let _ = self.conn.send(awc::ws::Message::Pong(b)).await;
                }
                _ => {}
            }
        }
    }
}

const WAIT: Duration = Duration::from_secs(20);
const QUIET: Duration = Duration::from_millis(1500);

async fn a_websocket_binds_hears_pings_and_catches_up_after_reconnecting(backend: Backend) {
    let app = spawn(backend).await;
    let mut ws_sub = subscription("", CRITERIA);
    ws_sub["channel"] = json!({"type": "websocket"});
    let r = app.post_json("/Subscription", &ws_sub).await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json()["id"].as_str().unwrap().to_string();

    let mut socket = Socket::open(&app).await;
    socket.send(&format!("bind {id}")).await;
    assert_eq!(
        socket.next_text(WAIT).await.as_deref(),
        Some(format!("bound {id}").as_str())
    );
    create(&app, &observation(GLUCOSE, 90.0)).await;
    create(&app, &observation("718-7", 13.0)).await;
    create(&app, &observation(GLUCOSE, 91.0)).await;
    for _ in 0..2 {
        assert_eq!(
            socket.next_text(WAIT).await.as_deref(),
            Some(format!("ping {id}").as_str())
        );
    }
    assert_eq!(
        socket.next_text(QUIET).await,
        None,
        "a ping for a change that does not match"
    );
    drop(socket);
    // The server notices the close first. (Known race, not fixed: an event
    // pinged in the moment a socket closes counts as delivered to it, and the
    // next bind does not ping it again; `$events` still replays it.)
    tokio::time::sleep(Duration::from_millis(1000)).await;

    // Closed: the notifications wait for the next bind.
    create(&app, &observation(GLUCOSE, 92.0)).await;
    create(&app, &observation(GLUCOSE, 93.0)).await;
    let mut socket = Socket::open(&app).await;
    socket.send(&format!("bind {id}")).await;
    assert_eq!(
        socket.next_text(WAIT).await.as_deref(),
        Some(format!("bound {id}").as_str())
    );
    for _ in 0..2 {
        assert_eq!(
            socket.next_text(WAIT).await.as_deref(),
            Some(format!("ping {id}").as_str())
        );
    }
    assert_eq!(
        socket.next_text(QUIET).await,
        None,
        "a notification pinged twice"
    );
    // $events says what happened.
    let b = app.get(&format!("/Subscription/{id}/$events")).await.json();
    assert_eq!(b["entry"].as_array().map(Vec::len), Some(5), "{b}");

    socket.send(&format!("unbind {id}")).await;
    assert_eq!(
        socket.next_text(WAIT).await.as_deref(),
        Some(format!("unbound {id}").as_str())
    );
    create(&app, &observation(GLUCOSE, 94.0)).await;
    assert_eq!(socket.next_text(QUIET).await, None, "a ping after unbind");
    socket.send("bind no-such-subscription").await;
    let answer = socket.next_text(WAIT).await.unwrap_or_default();
    assert!(
        answer.starts_with("error no-such-subscription:"),
        "{answer}"
    );
    let (rest_hook, _) = {
        let receiver = Receiver::start(0).await;
        let made = subscribe(&app, &receiver.url).await;
        receiver.handle.stop(false).await;
        made
    };
    socket.send(&format!("bind {rest_hook}")).await;
    let answer = socket.next_text(WAIT).await.unwrap_or_default();
    assert!(answer.contains("not a websocket subscription"), "{answer}");
    socket.send("subscribe everything").await;
    let answer = socket.next_text(WAIT).await.unwrap_or_default();
    assert!(answer.starts_with("error:"), "{answer}");
    app.stop().await;
}

on_both_backends!(a_websocket_binds_hears_pings_and_catches_up_after_reconnecting);

/// Starts a fhirgate process on `url` allowed to deliver to loopback; `poll_ms`
/// its delivery worker's poll.
fn node(
    url: &str,
    dir: &std::path::Path,
    name: &str,
    poll_ms: &str,
) -> crate::support::process::ServerProcess {
    let key = dir.join("master.key");
    if !key.exists() {
        fhirgate::crypto::MasterKey::generate()
            .unwrap()
            .write_new_file(&key)
            .unwrap();
    }
    crate::support::process::start(
        url,
        &key,
        &dir.join(format!("{name}.log")),
        &[
            ("FHIRGATE_SUBSCRIPTIONS__ALLOW_HTTP", "true"),
            ("FHIRGATE_SUBSCRIPTIONS__ALLOWED_HOSTS", "[\"127.0.0.1\"]"),
            ("FHIRGATE_SUBSCRIPTIONS__FIRST_RETRY_MS", "200"),
            ("FHIRGATE_SUBSCRIPTIONS__POLL_INTERVAL_MS", poll_ms),
        ],
    )
}

async fn post_to(
    client: &awc::Client,
    base: &str,
    path: &str,
    body: &Value,
) -> (StatusCode, Value, Option<String>) {
    let mut r = client
        .post(format!("{base}{path}"))
        .insert_header(("Content-Type", "application/fhir+json"))
        .send_json(body)
        .await
        .expect("POST");
    let b = r.body().await.expect("body");
    let secret = r
        .headers()
        .get("x-fhirgate-subscription-secret")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (
        r.status(),
        serde_json::from_slice(&b).unwrap_or(Value::Null),
        secret,
    )
}

/// Two nodes on one PostgreSQL database, each polling only once a minute: a
/// write on node A reaches a websocket bound on node B (woken by LISTEN/NOTIFY),
/// and rest-hook notifications written on both nodes arrive exactly once each,
/// in order, though both nodes' workers run.
#[actix_rt::test]
async fn two_nodes_deliver_every_event_once_and_wake_each_other() {
    let receiver = Receiver::start(0).await;
    let db = crate::support::server::PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let a = node(&db.url, dir.path(), "a", "60000");
    let b = node(&db.url, dir.path(), "b", "60000");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let (status, made, secret) = post_to(
        &client,
        &a.base,
        "/Subscription",
        &subscription(&receiver.url, CRITERIA),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let secret = secret.expect("secret");
    let mut ws_sub = subscription("", CRITERIA);
    ws_sub["channel"] = json!({"type": "websocket"});
    let (status, ws_made, _) = post_to(&client, &a.base, "/Subscription", &ws_sub).await;
    assert_eq!(status, StatusCode::CREATED, "{ws_made}");
    let ws_id = ws_made["id"].as_str().unwrap().to_string();

    let url = format!("{}/$websocket", b.base.replace("http://", "ws://"));
    let (_, conn) = awc::Client::new()
        .ws(url)
        .connect()
        .await
        .expect("websocket on node B");
    let mut socket = Socket { conn };
    socket.send(&format!("bind {ws_id}")).await;
    assert_eq!(
        socket.next_text(WAIT).await.as_deref(),
        Some(format!("bound {ws_id}").as_str())
    );

    let mut written = Vec::new();
    for i in 0..20 {
        let base = if i % 2 == 0 { &a.base } else { &b.base };
        let (status, o, _) = post_to(
            &client,
            base,
            "/Observation",
            &observation(GLUCOSE, i as f64),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{o}");
        written.push(o["id"].as_str().unwrap().to_string());
        if i == 0 {
            // Written on node A, heard on node B (its poll is a minute away).
            assert_eq!(
                socket.next_text(WAIT).await.as_deref(),
                Some(format!("ping {ws_id}").as_str())
            );
        }
    }
    for _ in 1..20 {
        assert_eq!(
            socket.next_text(WAIT).await.as_deref(),
            Some(format!("ping {ws_id}").as_str())
        );
    }
    let got = receiver.wait_for(20).await;
    actix_rt::time::sleep(QUIET).await;
    let got_after = receiver.got.lock().unwrap().clone();
    assert_eq!(got.len(), 20, "{got:#?}");
    assert_eq!(
        got_after.len(),
        20,
        "an event delivered twice: {got_after:#?}"
    );
    let numbers: Vec<i64> = got.iter().map(Received::event_number).collect();
    assert_eq!(numbers, (1..=20).collect::<Vec<i64>>());
    let mut ids: Vec<String> = got.iter().map(|r| entry(r).1).collect();
    ids.sort();
    let mut expected: Vec<String> = written
        .iter()
        .map(|id| format!("Observation/{id}"))
        .collect();
    expected.sort();
    assert_eq!(ids, expected);
    for r in &got {
        assert_signed(r, &secret);
    }
    drop((a, b));
    receiver.handle.stop(false).await;
}

/// SIGKILL while notifications wait (the receiver refuses them): after a
/// restart on the same database every committed change is delivered, in
/// order, none lost (the dead node's lease runs out first).
async fn notifications_survive_sigkill(backend: Backend) {
    let receiver = Receiver::start(usize::MAX).await;
    let db = Database::new(backend);
    let dir = tempfile::tempdir().unwrap();
    let url = db.settings().database.url;
    let first = node(&url, dir.path(), "first", "100");
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish();
    let (status, made, secret) = post_to(
        &client,
        &first.base,
        "/Subscription",
        &subscription(&receiver.url, CRITERIA),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    let mut written = Vec::new();
    for v in 0..5 {
        let (status, o, _) = post_to(
            &client,
            &first.base,
            "/Observation",
            &observation(GLUCOSE, v as f64),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        written.push(format!("Observation/{}", o["id"].as_str().unwrap()));
    }
    // Refused at least once: the deliveries were under way.
    for _ in 0..100 {
        if *receiver.refused.lock().unwrap() > 0 {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(*receiver.refused.lock().unwrap() > 0);
    let mut first = first;
    first.child.kill().expect("SIGKILL");
    first.child.wait().unwrap();
    assert!(receiver.got.lock().unwrap().is_empty());
    *receiver.fail_first.lock().unwrap() = 0;
    let second = node(&url, dir.path(), "second", "100");
    let got = receiver.wait_for(5).await;
    assert_eq!(got.len(), 5, "{got:#?}");
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.event_number(), i as i64 + 1);
        assert_eq!(entry(r).1, written[i]);
        assert_signed(r, secret.as_deref().unwrap());
    }
    drop(second);
    receiver.handle.stop(false).await;
}

on_both_backends!(notifications_survive_sigkill);

/// Past `subscriptions.retry_hours` of failures (0 here: the first failure),
/// the server writes a new version of the Subscription with status `error` and
/// the reason; its owner restarts it with a PUT of status `active`, and what
/// waited is delivered.
async fn a_subscription_that_cannot_deliver_turns_to_error_and_can_be_restarted(backend: Backend) {
    let receiver = Receiver::start(usize::MAX).await;
    let app = spawn_tuned(backend, |s| s.subscriptions.retry_hours = 0).await;
    let (id, _) = subscribe(&app, &receiver.url).await;
    create(&app, &observation(GLUCOSE, 1.0)).await;
    let mut read = Value::Null;
    for _ in 0..200 {
        read = app.get(&format!("/Subscription/{id}")).await.json();
        if read["status"] == "error" {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(read["status"], "error", "{read}");
    assert_eq!(read["meta"]["versionId"], "2", "{read}");
    assert!(
        read["error"].as_str().unwrap_or_default().contains("500"),
        "{read}"
    );
    let events = app.get(&format!("/Subscription/{id}/$events")).await.json();
    assert!(
        events.to_string().contains("\"valueCode\":\"error\""),
        "{events}"
    );
    // Nothing is matched for a subscription in error.
    create(&app, &observation(GLUCOSE, 2.0)).await;
    // The owner restarts it.
    *receiver.fail_first.lock().unwrap() = 0;
    let mut restart = read.clone();
    restart["status"] = json!("active");
    restart.as_object_mut().unwrap().remove("error");
    let r = app.put_json(&format!("/Subscription/{id}"), &restart).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    create(&app, &observation(GLUCOSE, 3.0)).await;
    let got = receiver.wait_for(2).await;
    assert_eq!(got.len(), 2, "{got:#?}");
    assert_eq!(got[0].event_number(), 1);
    assert_eq!(got[1].event_number(), 2);
    // Attempts are recorded in batches after the posts: the state follows.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let state = loop {
        let state = app.store.subscription_state(&id).unwrap().unwrap();
        if state.delivered == 2 || std::time::Instant::now() > deadline {
            break state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((state.status.as_str(), state.delivered), ("active", 2));
    finish(app, receiver).await;
}

on_both_backends!(a_subscription_that_cannot_deliver_turns_to_error_and_can_be_restarted);

/// With authorization on, a subscription hears only what its owner may search:
/// a clinician whose token reads only laboratory Observations subscribes to a
/// code; an Observation of that code in another category is not told. A
/// websocket bind needs a token that may read the Subscription.
async fn a_subscription_hears_only_what_its_owner_may_search(backend: Backend) {
    use crate::smart_auth::{client_token, spawn_auth};
    use crate::support::audit::{send, user_token};
    use awc::http::Method;
    let receiver = Receiver::start(0).await;
    let app = spawn_auth(backend, |s| {
        s.subscriptions.allow_http = true;
        s.subscriptions.allowed_hosts = vec!["127.0.0.1".into()];
        s.subscriptions.poll_interval_ms = 100;
    })
    .await;
    let (_, admin) = client_token(&app, "system/*.*").await;
    let doc = user_token(
        &app,
        "doc",
        "Practitioner/d1",
        fhirgate::auth::scopes::Role::Clinician,
        "user/Observation.rs?category=laboratory user/Subscription.cruds",
    )
    .await;
    let r = send(
        &app,
        Method::POST,
        "/Subscription",
        &doc,
        Some(&subscription(&receiver.url, CRITERIA)),
        "doc-subscribes",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json()["id"].as_str().unwrap().to_string();
    let in_category = |category: &str, v: f64| {
        let mut o = observation(GLUCOSE, v);
        o["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}]);
        o
    };
    let mut lab = Vec::new();
    for (i, category) in ["laboratory", "vital-signs", "laboratory"]
        .iter()
        .enumerate()
    {
        let r = send(
            &app,
            Method::POST,
            "/Observation",
            &admin,
            Some(&in_category(category, i as f64)),
            &format!("admin-{i}"),
        )
        .await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        if *category == "laboratory" {
            lab.push(format!("Observation/{}", r.json()["id"].as_str().unwrap()));
        }
    }
    receiver.wait_for(2).await;
    actix_rt::time::sleep(QUIET).await;
    let got = receiver.got.lock().unwrap().clone();
    let told: Vec<String> = got.iter().map(|r| entry(r).1).collect();
    assert_eq!(told, lab, "the owner may not search vital signs");
    for r in &got {
        let (_, _, resource) = entry(r);
        assert_eq!(
            resource.unwrap()["category"][0]["coding"][0]["code"],
            "laboratory"
        );
    }

    let mut ws_sub = subscription("", CRITERIA);
    ws_sub["channel"] = json!({"type": "websocket"});
    let r = send(
        &app,
        Method::POST,
        "/Subscription",
        &doc,
        Some(&ws_sub),
        "doc-ws",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let ws_id = r.json()["id"].as_str().unwrap().to_string();
    let mut socket = Socket::open(&app).await;
    socket.send(&format!("bind {ws_id}")).await;
    let answer = socket.next_text(WAIT).await.unwrap_or_default();
    assert!(
        answer.starts_with(&format!("error {ws_id}:")),
        "a bind without a token: {answer}"
    );
    socket.send(&format!("bind {ws_id} not-a-token")).await;
    let answer = socket.next_text(WAIT).await.unwrap_or_default();
    assert!(answer.starts_with(&format!("error {ws_id}:")), "{answer}");
    let (_, reader) = client_token(&app, "system/Observation.rs").await;
    socket.send(&format!("bind {ws_id} {reader}")).await;
    let answer = socket.next_text(WAIT).await.unwrap_or_default();
    assert!(
        answer.starts_with(&format!("error {ws_id}:")),
        "a token without Subscription: {answer}"
    );
    // Another client that may read Subscriptions is not the owner: no bind, no events.
    let (_, other) = client_token(&app, "system/Subscription.rs").await;
    socket.send(&format!("bind {ws_id} {other}")).await;
    let answer = socket.next_text(WAIT).await.unwrap_or_default();
    assert!(answer.contains("only the client and user"), "{answer}");
    let events = format!("/Subscription/{ws_id}/$events");
    let r = send(&app, Method::GET, &events, &other, None, "other-events").await;
    assert_eq!(
        r.status,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let r = send(&app, Method::GET, &events, &doc, None, "doc-events").await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    socket.send(&format!("bind {ws_id} {doc}")).await;
    assert_eq!(
        socket.next_text(WAIT).await.as_deref(),
        Some(format!("bound {ws_id}").as_str())
    );
    let r = send(
        &app,
        Method::POST,
        "/Observation",
        &admin,
        Some(&in_category("laboratory", 9.0)),
        "admin-ws",
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(
        socket.next_text(WAIT).await.as_deref(),
        Some(format!("ping {ws_id}").as_str())
    );
    let _ = id;
    app.stop().await;
    receiver.handle.stop(false).await;
}

on_both_backends!(a_subscription_hears_only_what_its_owner_may_search);

/// Criteria of every kind (tokens, numbers, dates, references, a chain, `:not`,
/// `:missing`, string prefixes, decided in memory or in SQL) notify exactly the
/// resources the same search finds: each subscription's `$events` lists the
/// creates that the search `Observation?<criteria>` returns afterwards.
async fn criteria_of_every_kind_notify_what_the_search_finds(backend: Backend) {
    let app = spawn(backend).await;
    let r = app
        .post_json(
            "/Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Kowalczykowska"}]}),
        )
        .await;
    let patient = r.json()["id"].as_str().unwrap().to_string();
    let criteria = [
        "Observation?value-quantity=gt100".to_string(),
        "Observation?value-quantity=le50&code=http://loinc.org|2339-0".to_string(),
        "Observation?date=ge2021-01-01".to_string(),
        "Observation?date=lt2020".to_string(),
        format!("Observation?subject=Patient/{patient}"),
        "Observation?subject.name=Kowalczyk".to_string(),
        "Observation?subject.name=Kowalczykowska".to_string(),
        "Observation?code:not=http://loinc.org|2339-0".to_string(),
        "Observation?value-quantity:missing=true".to_string(),
        "Observation?status=final,amended&category=laboratory".to_string(),
        "Observation".to_string(),
    ];
    let mut subs = Vec::new();
    for c in &criteria {
        let mut s = subscription("", c);
        s["channel"] = json!({"type": "websocket"});
        let r = app.post_json("/Subscription", &s).await;
        assert_eq!(
            r.status,
            StatusCode::CREATED,
            "{c}: {}",
            String::from_utf8_lossy(&r.body)
        );
        subs.push(r.json()["id"].as_str().unwrap().to_string());
    }
    let with = |code: &str,
                value: Option<f64>,
                date: &str,
                subject: bool,
                status: &str,
                category: Option<&str>| {
        let mut o = json!({"resourceType": "Observation", "status": status,
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
            "effectiveDateTime": date});
        if let Some(v) = value {
            o["valueQuantity"] = json!({"value": v, "unit": "mg/dL", "system": "http://unitsofmeasure.org", "code": "mg/dL"});
        }
        if subject {
            o["subject"] = json!({"reference": format!("Patient/{patient}")});
        }
        if let Some(c) = category {
            o["category"] = json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": c}]}]);
        }
        o
    };
    for o in [
        with(
            GLUCOSE,
            Some(120.0),
            "2022-03-04",
            true,
            "final",
            Some("laboratory"),
        ),
        with(GLUCOSE, Some(40.0), "2019-06-01", false, "final", None),
        with(
            "718-7",
            Some(13.0),
            "2021-01-01T10:00:00Z",
            true,
            "amended",
            Some("laboratory"),
        ),
        with(
            "718-7",
            None,
            "2020-05-05",
            false,
            "preliminary",
            Some("vital-signs"),
        ),
        with(
            GLUCOSE,
            Some(100.0),
            "2020",
            true,
            "final",
            Some("laboratory"),
        ),
    ] {
        create(&app, &o).await;
    }
    let mut matched = 0;
    for (c, id) in criteria.iter().zip(&subs) {
        let query = c.split_once('?').map_or("", |(_, q)| q);
        let found = app.get(&format!("/Observation?{query}&_count=100")).await;
        assert_eq!(found.status, StatusCode::OK, "{c}");
        let mut expected: Vec<String> = found.json()["entry"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .iter()
            .filter_map(|e| {
                e["resource"]["id"]
                    .as_str()
                    .map(|i| format!("Observation/{i}"))
            })
            .collect();
        expected.sort();
        let events = app.get(&format!("/Subscription/{id}/$events")).await.json();
        let mut told: Vec<String> = events["entry"]
            .as_array()
            .unwrap()
            .iter()
            .skip(1)
            .filter_map(|e| e["request"]["url"].as_str().map(str::to_string))
            .collect();
        told.sort();
        assert_eq!(told, expected, "{c}");
        matched += usize::from(!expected.is_empty() && expected.len() < 5);
    }
    // Not a vacuous agreement: most criteria pick some of the five, not all.
    assert!(matched >= 8, "only {matched} criteria pick a proper subset");
    app.stop().await;
}

on_both_backends!(criteria_of_every_kind_notify_what_the_search_finds);

/// `subscriptions.max_active` bounds the subscriptions that are active at once:
/// one more is refused (422 `business-rule`, nothing stored, also inside a
/// transaction, which then stores nothing at all); turning one off makes room;
/// turning one back on counts; an update of an active one is never refused.
async fn max_active_bounds_the_active_subscriptions(backend: Backend) {
    let receiver = Receiver::start(0).await;
    let app = spawn_tuned(backend, |s| s.subscriptions.max_active = 2).await;
    let (first, _) = subscribe(&app, &receiver.url).await;
    let (second, _) = subscribe(&app, &receiver.url).await;
    let count = |b: Value| b["total"].as_i64().unwrap_or(-1);
    let refused = |r: &crate::support::server::Reply| {
        assert_eq!(
            r.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{}",
            String::from_utf8_lossy(&r.body)
        );
        let oo = r.json();
        assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
        let issue = oo["issue"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["code"] == "business-rule")
            .cloned()
            .unwrap_or_else(|| panic!("a business-rule issue: {oo}"));
        assert!(
            issue["diagnostics"]
                .as_str()
                .unwrap_or_default()
                .contains("subscriptions.max_active"),
            "{oo}"
        );
    };

    let r = app
        .post_json("/Subscription", &subscription(&receiver.url, CRITERIA))
        .await;
    refused(&r);
    assert!(r.header("x-fhirgate-subscription-secret").is_none());
    // In a transaction: its Observation is not stored either.
    let observations = count(app.get("/Observation?_summary=count").await.json());
    let tx = json!({
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": observation(GLUCOSE, 1.0), "request": {"method": "POST", "url": "Observation"}},
            {"resource": subscription(&receiver.url, CRITERIA), "request": {"method": "POST", "url": "Subscription"}}
        ]
    });
    refused(&app.post_json("", &tx).await);
    assert_eq!(
        count(app.get("/Observation?_summary=count").await.json()),
        observations
    );
    assert_eq!(
        count(app.get("/Subscription?_summary=count").await.json()),
        2
    );

    // An update of an active one is not refused.
    let mut changed = app.get(&format!("/Subscription/{second}")).await.json();
    changed["reason"] = json!("lab results, all of them");
    let r = app
        .put_json(&format!("/Subscription/{second}"), &changed)
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );

    // Turning one off makes room for another.
    let mut off = app.get(&format!("/Subscription/{first}")).await.json();
    off["status"] = json!("off");
    let r = app.put_json(&format!("/Subscription/{first}"), &off).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let (third, _) = subscribe(&app, &receiver.url).await;
    // Turning it on again would make three.
    let mut on = app.get(&format!("/Subscription/{first}")).await.json();
    on["status"] = json!("requested");
    refused(&app.put_json(&format!("/Subscription/{first}"), &on).await);
    assert_eq!(
        app.get(&format!("/Subscription/{first}")).await.json()["status"],
        "off"
    );
    // Deleting one makes room too.
    assert!(app
        .delete(&format!("/Subscription/{third}"))
        .await
        .status
        .is_success());
    let r = app.put_json(&format!("/Subscription/{first}"), &on).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["status"], "active");

    finish(app, receiver).await;
}

on_both_backends!(max_active_bounds_the_active_subscriptions);

/// Events and delivery attempts older than the retention are removed (oldest
/// first, a bounded batch per transaction; the delivery worker does this every
/// minute with `subscriptions.retention_hours`); the subscription's numbers go
/// on where they were.
async fn events_and_attempts_past_the_retention_are_removed(backend: Backend) {
    let receiver = Receiver::start(0).await;
    let app = spawn(backend).await;
    let (sub, _) = subscribe(&app, &receiver.url).await;
    for v in [1.0, 2.0, 3.0] {
        create(&app, &observation(GLUCOSE, v)).await;
    }
    assert_eq!(receiver.wait_for(3).await.len(), 3);
    let numbers = |b: &Value| -> Vec<String> {
        b["entry"][0]["resource"]["parameter"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["name"] == "notification-event")
            .map(|p| p["part"][0]["valueString"].as_str().unwrap().to_string())
            .collect()
    };
    let events = app
        .get(&format!("/Subscription/{sub}/$events"))
        .await
        .json();
    assert_eq!(numbers(&events), ["1", "2", "3"], "{events}");
    // Wait for the worker to record the third attempt (it records in batches).
    for _ in 0..100 {
        if app
            .store
            .subscription_state(&sub)
            .unwrap()
            .unwrap()
            .delivered
            == 3
        {
            break;
        }
        actix_rt::time::sleep(Duration::from_millis(50)).await;
    }
    let now = fhirgate::fhir::now_micros();
    // Nothing is older than an hour.
    assert_eq!(
        app.store
            .prune_subscription_history(now - 3_600_000_000, 1000)
            .unwrap(),
        0
    );
    // Everything is older than now: two of each table, then the rest.
    assert_eq!(app.store.prune_subscription_history(now + 1, 2).unwrap(), 4);
    let events = app
        .get(&format!("/Subscription/{sub}/$events"))
        .await
        .json();
    assert_eq!(numbers(&events), ["3"], "{events}");
    assert_eq!(app.store.prune_subscription_history(now + 1, 2).unwrap(), 2);
    assert_eq!(app.store.prune_subscription_history(now + 1, 2).unwrap(), 0);
    let events = app
        .get(&format!("/Subscription/{sub}/$events"))
        .await
        .json();
    assert!(numbers(&events).is_empty(), "{events}");

    create(&app, &observation(GLUCOSE, 4.0)).await;
    let got = receiver.wait_for(4).await;
    assert_eq!(got.len(), 4, "{got:#?}");
    assert_eq!(got[3].event_number(), 4);
    app.stop().await;
    receiver.handle.stop(false).await;
}

on_both_backends!(events_and_attempts_past_the_retention_are_removed);

/// A bind without a token of its own is decided by the handshake's token,
/// verified again at every bind: once the token is revoked, the same socket
/// binds nothing more.
async fn a_bind_on_the_handshakes_token_checks_it_again(backend: Backend) {
    use crate::smart_auth::{basic, credentials_token, post_form, secret_client, spawn_auth};
    use crate::support::audit::send;
    use awc::http::Method;
    let app = spawn_auth(backend, |_| {}).await;
    let scope = "system/Subscription.cruds system/Observation.rs";
    let (client, secret) = secret_client(&app, scope);
    let token = credentials_token(&app, &client, &secret, scope).await;
    let mut ws = subscription("", CRITERIA);
    ws["channel"] = json!({"type": "websocket"});
    let r = send(
        &app,
        Method::POST,
        "/Subscription",
        &token,
        Some(&ws),
        "ws-subscribes",
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let id = r.json()["id"].as_str().unwrap().to_string();

    let mut socket = Socket::open_with(&app, Some(&token)).await;
    socket.send(&format!("bind {id}")).await;
    assert_eq!(
        socket.next_text(WAIT).await.as_deref(),
        Some(format!("bound {id}").as_str())
    );
    socket.send(&format!("unbind {id}")).await;
    assert_eq!(
        socket.next_text(WAIT).await.as_deref(),
        Some(format!("unbound {id}").as_str())
    );
    let r = post_form(
        &app,
        "/auth/revoke",
        &[("token", &token)],
        &[("Authorization", &basic(&client, &secret))],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    socket.send(&format!("bind {id}")).await;
    let answer = socket.next_text(WAIT).await.unwrap_or_default();
    assert!(
        answer.starts_with(&format!("error {id}:")),
        "a bind on a revoked handshake token: {answer}"
    );
    app.stop().await;
}

on_both_backends!(a_bind_on_the_handshakes_token_checks_it_again);
