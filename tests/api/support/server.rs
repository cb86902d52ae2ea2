//! A real fhirgate server on 127.0.0.1:0 against a fresh SQLite file or a fresh
//! PostgreSQL database, a real HTTP client, and the audit check every test ends with.

use std::collections::HashMap;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use awc::http::{Method, StatusCode};
use base64::Engine as _;
use diesel::{Connection, PgConnection, RunQueryDsl};
use fhirgate::config::Settings;
use fhirgate::store::Store;
use serde_json::Value;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs an async test body once per backend: `on_both_backends!(name)` makes the tests
/// `name::sqlite` and `name::postgres` (CI counts the latter to know PostgreSQL ran).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[actix_rt::test]
                async fn sqlite() {
                    super::$name($crate::support::server::Backend::Sqlite).await
                }
                #[actix_rt::test]
                async fn postgres() {
                    super::$name($crate::support::server::Backend::Postgres).await
                }
            }
        )*
    };
}
pub(crate) use on_both_backends;

/// The PostgreSQL server the tests use (`FHIRGATE_TEST_PG_URL`).
#[allow(clippy::disallowed_methods)]
pub fn pg_admin_url() -> String {
    std::env::var("FHIRGATE_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A fresh, empty PostgreSQL database; dropped with the guard.
pub struct PgDatabase {
    pub url: String,
    name: String,
}

impl PgDatabase {
    pub fn create() -> PgDatabase {
        // Before libpq's first connection (see store::pool: OpenSSL without an
        // exit handler).
        openssl::init();
        let admin = pg_admin_url();
        let name = format!("fhirgate_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::establish(&admin).unwrap_or_else(|e| {
            panic!("PostgreSQL tests need a server at {admin} (set FHIRGATE_TEST_PG_URL): {e}")
        });
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .expect("create test database");
        let base = admin
            .rsplit_once('/')
            .map(|(b, _)| b.to_string())
            .unwrap_or(admin.clone());
        PgDatabase {
            url: format!("{base}/{name}"),
            name,
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        if let Ok(mut conn) = PgConnection::establish(&pg_admin_url()) {
            let _ = diesel::sql_query(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .execute(&mut conn);
        }
    }
}

/// Where a test's database lives.
pub struct Database {
    pub backend: Backend,
    pub url: String,
    pub dir: tempfile::TempDir,
    pg: Option<PgDatabase>,
}

impl Database {
    pub fn new(backend: Backend) -> Database {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => Database {
                backend,
                url: format!("sqlite://{}", dir.path().join("fhirgate.db").display()),
                dir,
                pg: None,
            },
            Backend::Postgres => {
                let pg = PgDatabase::create();
                Database {
                    backend,
                    url: pg.url.clone(),
                    dir,
                    pg: Some(pg),
                }
            }
        }
    }

    pub fn sqlite_path(&self) -> Option<PathBuf> {
        (self.backend == Backend::Sqlite).then(|| self.dir.path().join("fhirgate.db"))
    }

    pub fn pg_name(&self) -> Option<&str> {
        self.pg.as_ref().map(|p| p.name.as_str())
    }

    /// Settings for a development server on this database with a key file beside it.
    pub fn settings(&self) -> Settings {
        let mut s = Settings::default();
        s.server.listen = "127.0.0.1:0".into();
        s.server.workers = 2;
        s.database.url = self.url.clone();
        s.database.pool_size = if self.backend == Backend::Sqlite {
            3
        } else {
            6
        };
        s.packages.cache = Some(super::package_cache());
        s.packages.registry = "http://127.0.0.1:9/no-registry".into();
        s.crypto.master_key_file = Some(self.key_file());
        s.auth.enabled = false;
        // Export files beside the test's database, on both backends (PostgreSQL's
        // default is a folder in the working directory).
        s.bulk.dir = Some(self.dir.path().join("bulk"));
        s
    }

    /// The rows of a table, read straight from the database (not through fhirgate).
    pub fn count_rows(&self, table: &str) -> i64 {
        #[derive(diesel::QueryableByName)]
        struct Count {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            n: i64,
        }
        let q = diesel::sql_query(format!("SELECT COUNT(*) AS n FROM {table}"));
        match self.backend {
            Backend::Sqlite => {
                let path = self.dir.path().join("fhirgate.db");
                let mut c = sqlite_connection(&path);
                q.get_result::<Count>(&mut c).expect("count").n
            }
            Backend::Postgres => {
                let mut c = PgConnection::establish(&self.url).expect("connect");
                q.get_result::<Count>(&mut c).expect("count").n
            }
        }
    }

    /// Rows of every table a resource write touches. The search index is counted
    /// for resources only (rid > 0): the audit indexer adds the rows of AuditEvents
    /// (rid < 0) in the background, whatever a write did.
    pub fn written_rows(&self) -> Vec<(&'static str, i64)> {
        [
            "resource_versions",
            "resources_current",
            "search_blind WHERE rid > 0",
            "search_date WHERE rid > 0",
            "search_number WHERE rid > 0",
            "search_reference WHERE rid > 0",
            "search_uri WHERE rid > 0",
        ]
        .into_iter()
        .map(|t| (t, self.count_rows(t)))
        .collect()
    }

    pub fn key_file(&self) -> PathBuf {
        let path = self.dir.path().join("master.key");
        if !path.exists() {
            fhirgate::crypto::MasterKey::generate()
                .unwrap()
                .write_new_file(&path)
                .unwrap();
        }
        path
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: awc::http::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
    }

    /// The OperationOutcome's first issue: (code, diagnostics, expression).
    pub fn issue(&self) -> (String, String, Option<String>) {
        let oo = self.json();
        assert_eq!(oo["resourceType"], "OperationOutcome", "{oo}");
        let i = &oo["issue"][0];
        (
            i["code"].as_str().unwrap_or_default().to_string(),
            i["diagnostics"].as_str().unwrap_or_default().to_string(),
            i["expression"][0].as_str().map(str::to_string),
        )
    }
}

/// A running server and its client.
pub struct TestApp {
    pub root: String,
    pub base: String,
    pub db: Database,
    pub store: Store,
    /// What the server's handlers share (for tests that drive the library directly).
    pub state: actix_web::web::Data<fhirgate::http::AppState>,
    client: awc::Client,
    handle: actix_web::dev::ServerHandle,
    requests: Mutex<Vec<Sent>>,
}

/// A request a test sent, for the audit check.
#[derive(Debug, Clone)]
struct Sent {
    request_id: String,
    method: Method,
    url: String,
    status: StatusCode,
    /// A Bundle posted to the base: how many entries it has.
    bundle_entries: Option<usize>,
}

pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_with(Database::new(backend), |_| {}).await
}

pub async fn spawn_with(db: Database, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = db.settings();
    tweak(&mut settings);
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().unwrap().port();
    settings.server.base_url = Some(format!("http://127.0.0.1:{port}/fhir"));
    let state = actix_web::web::Data::new(
        fhirgate::startup::build_state(&settings, true).expect("start fhirgate"),
    );
    let store = state.store.clone();
    let (server, _) =
        fhirgate::startup::build_server(&settings, state.clone(), Some(listener)).expect("server");
    let handle = server.handle();
    actix_rt::spawn(server);
    // The client keeps an idle connection for less time than the server does (actix:
    // 5 s), so it never sends on a connection the server is closing (awc then reports
    // "connector has been disconnected"; seen after a test's pause of several seconds).
    let client = awc::Client::builder()
        .connector(awc::Connector::new().conn_keep_alive(Duration::from_secs(2)))
        .timeout(Duration::from_secs(120))
        .finish();
    TestApp {
        root: format!("http://127.0.0.1:{port}"),
        base: format!("http://127.0.0.1:{port}/fhir"),
        db,
        store,
        state,
        client,
        handle,
        requests: Mutex::new(Vec::new()),
    }
}

impl TestApp {
    /// Sends a request to a path below /fhir (or an absolute URL) and records it
    /// for the audit check.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Reply {
        let url = if path.starts_with("http") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        };
        // A test may choose the request id to find its AuditEvents.
        let request_id = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-request-id"))
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), |(_, v)| v.to_string());
        let mut req = self
            .client
            .request(method.clone(), &url)
            .insert_header(("X-Request-Id", request_id.as_str()));
        for (k, v) in headers {
            req = req.insert_header((*k, *v));
        }
        let mut resp = match body {
            Some(b) => req.send_body(b.to_vec()).await,
            None => req.send().await,
        }
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let bytes = resp.body().limit(256 * 1024 * 1024).await.expect("body");
        let reply = Reply {
            status: resp.status(),
            headers: resp.headers().clone(),
            body: bytes.to_vec(),
        };
        if url.contains("/fhir") {
            let at_base = url
                .split('?')
                .next()
                .is_some_and(|p| p.trim_end_matches('/').ends_with("/fhir"));
            let bundle_entries = (method == Method::POST && at_base).then(|| {
                match body.and_then(|b| serde_json::from_slice::<Value>(b).ok()) {
                    Some(v) => v["entry"].as_array().map_or(0, Vec::len),
                    // XML: one <entry> element per entry.
                    None => {
                        body.map_or(0, |b| String::from_utf8_lossy(b).matches("<entry>").count())
                    }
                }
            });
            self.requests.lock().unwrap().push(Sent {
                request_id,
                method,
                url,
                status: reply.status,
                bundle_entries,
            });
        }
        reply
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Reply {
        let b = serde_json::to_vec(body).unwrap();
        self.send(
            Method::POST,
            path,
            &[("Content-Type", "application/fhir+json")],
            Some(&b),
        )
        .await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Reply {
        let b = serde_json::to_vec(body).unwrap();
        self.send(
            Method::PUT,
            path,
            &[("Content-Type", "application/fhir+json")],
            Some(&b),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        self.send(Method::DELETE, path, &[], None).await
    }

    /// Every AuditEvent in the store, by the request id it records.
    pub async fn audits_by_request(&self) -> HashMap<String, Vec<Value>> {
        let store = self.store.clone();
        let rows = actix_web::rt::task::spawn_blocking(move || {
            store.audit_history(None, None, None, usize::MAX / 2)
        })
        .await
        .unwrap()
        .expect("read audit events");
        let mut out: HashMap<String, Vec<Value>> = HashMap::new();
        for r in rows {
            let ev: Value = serde_json::from_slice(&r.version.body).unwrap();
            let rid = ev["entity"]
                .as_array()
                .and_then(|es| es.iter().find(|e| e["type"]["code"] == "XrequestId"))
                .and_then(|e| e["what"]["identifier"]["value"].as_str())
                .unwrap_or_default()
                .to_string();
            out.entry(rid).or_default().push(ev);
        }
        out
    }

    /// Every FHIR request this test sent left exactly one AuditEvent of its own
    /// with the right action and outcome (besides it, a search's PatientQuery
    /// events and a denial's authorization decision).
    pub async fn assert_every_request_audited(&self) {
        let mut audits = self.audits_by_request().await;
        for events in audits.values_mut() {
            events.retain(|e| !is_companion_event(e));
        }
        let requests = self.requests.lock().unwrap().clone();
        assert!(!requests.is_empty(), "the test sent no requests");
        for Sent {
            request_id: rid,
            method,
            url,
            status,
            bundle_entries,
        } in requests
        {
            let mut events = audits.get(&rid).cloned().unwrap_or_default();
            if let Some(n) = bundle_entries {
                // A Bundle: one AuditEvent for the Bundle, and one per entry once
                // the Bundle was read (always, when it was processed).
                let is_bundle_event = |e: &Value| {
                    matches!(
                        e["subtype"][0]["code"].as_str(),
                        Some("transaction" | "batch")
                    )
                };
                let entry_events = events.iter().filter(|e| !is_bundle_event(e)).count();
                assert!(
                    entry_events == n || (entry_events == 0 && !status.is_success()),
                    "{method} {url} ({status}) with {n} entries left {entry_events} entry AuditEvents"
                );
                events.retain(is_bundle_event);
            }
            assert_eq!(
                events.len(),
                1,
                "{method} {url} ({status}) left {} AuditEvents",
                events.len()
            );
            let ev = &events[0];
            let expected_outcome = if status.as_u16() < 400 {
                "0"
            } else if status.as_u16() < 500 {
                "4"
            } else {
                "8"
            };
            assert_eq!(
                ev["outcome"], expected_outcome,
                "{method} {url} ({status}): {ev}"
            );
            let path = url.split('?').next().unwrap_or("");
            // Below /fhir: Type/id and Type/id/_history/vid are reads; a query or
            // any other shape (search, compartment search, history) executes.
            let segments: Vec<&str> = path
                .split_once("/fhir")
                .map(|(_, rest)| rest.split('/').filter(|s| !s.is_empty()).collect())
                .unwrap_or_default();
            let is_read = matches!(segments.as_slice(), [t, id] | [t, id, "_history", _]
                if !t.starts_with('$') && !id.starts_with('_') && !id.starts_with('$'));
            let action = match method.as_str() {
                "POST" if status == StatusCode::CREATED => "C",
                "PUT" if status == StatusCode::CREATED => "C",
                "PUT" if status.is_success() => "U",
                "DELETE" if status.is_success() => "D",
                "PATCH" if status.is_success() => "U",
                "GET" if status.is_success() && is_read => "R",
                "GET" if status.is_success() && !path.ends_with("/metadata") => "E",
                _ => "",
            };
            if !action.is_empty() {
                assert_eq!(ev["action"], action, "{method} {url} ({status}): {ev}");
            }
            let query = url.split_once('?').map(|(_, q)| q);
            if let (Some(q), Some(entity)) = (
                query,
                ev["entity"]
                    .as_array()
                    .and_then(|es| es.iter().find(|e| e["role"]["code"] == "24")),
            ) {
                let recorded = base64::engine::general_purpose::STANDARD
                    .decode(entity["query"].as_str().unwrap())
                    .unwrap();
                assert!(
                    String::from_utf8_lossy(&recorded).ends_with(q),
                    "query entity of {url}"
                );
            }
        }
    }

    pub async fn stop(self) {
        self.handle.stop(true).await;
    }

    /// Stops the server and hands back its database for a restart.
    pub async fn stop_keep_db(self) -> Database {
        let TestApp {
            db, handle, store, ..
        } = self;
        handle.stop(true).await;
        drop(store);
        // The audit writer thread lets go of its connections once its queue closes.
        tokio::time::sleep(Duration::from_millis(300)).await;
        db
    }
}

/// An AuditEvent made beside a request's own: a PatientQuery event of a search's
/// page, or the authorization decision of a denial.
pub fn is_companion_event(e: &Value) -> bool {
    let claims = |suffix: &str| {
        e["meta"]["profile"].as_array().is_some_and(|ps| {
            ps.iter()
                .any(|p| p.as_str().is_some_and(|p| p.ends_with(suffix)))
        })
    };
    claims("IHE.BasicAudit.PatientQuery") || claims("AuditEvent.AuthZ")
}

/// A connection of a test's own to a server's SQLite file. It waits for a lock
/// (as fhirgate's connections do): the last connection of a stopping server
/// checkpoints the WAL under an exclusive lock, and a read opened meanwhile got
/// "database is locked".
pub fn sqlite_connection(path: &std::path::Path) -> diesel::SqliteConnection {
    use diesel::connection::SimpleConnection;
    let mut c = diesel::SqliteConnection::establish(&path.display().to_string())
        .expect("open the SQLite file");
    c.batch_execute("PRAGMA busy_timeout = 10000")
        .expect("set the busy timeout");
    c
}
