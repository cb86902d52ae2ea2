//! Graceful shutdown: SIGTERM while transactions are in flight (the server's own
//! in-flight gauge says so) lets every one of them finish and answer, then the
//! process exits 0; after a restart every resource they wrote is there.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support;
use crate::support::server::{Backend, Database};

const CLIENTS: usize = 3;
const ENTRIES: usize = 300;

fn transaction(client: usize) -> Value {
    let entries: Vec<Value> = (0..ENTRIES)
        .map(|i| {
            json!({"fullUrl": format!("urn:uuid:00000000-0000-4000-8000-{client:04}{i:08}"),
                   "resource": {"resourceType": "Patient", "name": [{"family": format!("Shutdown{client}x{i}")}]},
                   "request": {"method": "POST", "url": "Patient"}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn in_flight(root: &str) -> i64 {
    let body = ureq::get(&format!("{root}/metrics"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .unwrap_or_default();
    body.lines()
        .find(|l| l.starts_with("fhirgate_http_requests_in_flight "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn sigterm_lets_in_flight_requests_finish() {
    let db = Database::new(Backend::Sqlite);
    let key = db.key_file();
    let log = db.dir.path().join("server.log");
    // The clients wait up to 300 s; so does the server's shutdown, on a loaded machine.
    let mut server = support::process::start(
        &db.url,
        &key,
        &log,
        &[("FHIRGATE_SERVER__SHUTDOWN_TIMEOUT_SECS", "300")],
    );
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let url = server.base.clone();
            std::thread::spawn(move || {
                let body = serde_json::to_vec(&transaction(c)).unwrap();
                ureq::post(&url)
                    .header("Content-Type", "application/fhir+json")
                    .config()
                    .timeout_global(Some(Duration::from_secs(300)))
                    .build()
                    .send(&body[..])
                    .map(|mut r| {
                        (
                            r.status().as_u16(),
                            r.body_mut().read_to_string().unwrap_or_default(),
                        )
                    })
                    .map_err(|e| e.to_string())
            })
        })
        .collect();
    // Until the server says the transactions are being served (not a timing assertion:
    // the deadline only keeps a broken build from hanging the suite).
    let deadline = Instant::now() + Duration::from_secs(120);
    while in_flight(&server.root) < CLIENTS as i64 {
        assert!(Instant::now() < deadline, "the transactions never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = server.child.id().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    for c in clients {
        let (status, body) = c
            .join()
            .unwrap()
            .expect("the in-flight request was answered");
        assert_eq!(status, 200, "{body}");
        let b: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(b["type"], "transaction-response");
        let entries = b["entry"].as_array().unwrap();
        assert_eq!(entries.len(), ENTRIES);
        assert!(entries.iter().all(|e| e["response"]["status"]
            .as_str()
            .unwrap_or("")
            .starts_with("201")));
    }
    let exit = server.child.wait().expect("wait");
    assert!(
        exit.success(),
        "exit {exit:?}; log: {}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    // Everything answered is stored.
    let again = support::process::start(&db.url, &key, &db.dir.path().join("again.log"), &[]);
    let mut r = ureq::get(&format!("{}/Patient?_summary=count", again.base))
        .call()
        .expect("count");
    let counted: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    assert_eq!(counted["total"], (CLIENTS * ENTRIES) as i64);
}
