//! SMART authorization end to end: a real server on 127.0.0.1 with
//! `auth.enabled`, clients registered through the real CLI or the library, the
//! code flow driven through the HTML forms by a plain HTTP client, backend
//! services with keys made here, the token-attack suite, rate limits, lockout,
//! TLS versions, and two nodes on one PostgreSQL database.

mod attacks;
mod backend;
mod bola;
mod clients;
pub(crate) mod code_flow;
mod issuers;
mod limits;
mod nodes;
mod storage;
mod tls;

use std::time::Duration;

use crate::support::server::{spawn_with, Backend, Database, Reply, TestApp};
use awc::http::{Method, StatusCode};
use base64::Engine as _;
use serde_json::{json, Value};

/// A server with authorization on.
pub async fn spawn_auth(
    backend: Backend,
    tweak: impl FnOnce(&mut fhirgate::config::Settings),
) -> TestApp {
    spawn_with(Database::new(backend), |s| {
        s.auth.enabled = true;
        tweak(s);
    })
    .await
}

/// An HTTP client that does not follow redirects (the redirect URIs of the
/// tests point nowhere) and keeps no cookies.
pub fn raw_client() -> awc::Client {
    awc::Client::builder()
        .disable_redirects()
        .timeout(Duration::from_secs(60))
        .finish()
}

/// Sends a request to `url` (absolute) and reads the whole answer.
pub async fn raw(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> Reply {
    let mut req = raw_client().request(method.clone(), url);
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = match body {
        Some(b) => req.send_body(b).await,
        None => req.send().await,
    }
    .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let body = resp
        .body()
        .limit(64 * 1024 * 1024)
        .await
        .expect("body")
        .to_vec();
    Reply {
        status: resp.status(),
        headers: resp.headers().clone(),
        body,
    }
}

pub fn form_body(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    s.finish().into_bytes()
}

/// POSTs a form to a path of the server root (`/auth/token`).
pub async fn post_form(
    app: &TestApp,
    path: &str,
    fields: &[(&str, &str)],
    headers: &[(&str, &str)],
) -> Reply {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    h.extend_from_slice(headers);
    raw(
        Method::POST,
        &format!("{}{path}", app.root),
        &h,
        Some(form_body(fields)),
    )
    .await
}

pub fn basic(id: &str, secret: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{id}:{secret}"))
    )
}

/// Registers a client through the library (the CLI test registers through the binary).
pub fn client(
    app: &TestApp,
    spec: fhirgate::auth::clients::ClientSpec,
) -> (String, Option<String>) {
    let r = fhirgate::auth::clients::register(&app.store, &spec).expect("register client");
    (r.client_id, r.client_secret)
}

pub fn secret_client(app: &TestApp, scope: &str) -> (String, String) {
    let (id, secret) = client(
        app,
        fhirgate::auth::clients::ClientSpec {
            name: "backend".into(),
            redirect_uris: vec![],
            kind: fhirgate::auth::clients::ClientKind::Secret,
            scope: Some(scope.into()),
            grant_types: None,
        },
    );
    (id, secret.expect("a secret"))
}

/// A client_credentials token with a client secret (HTTP Basic).
pub async fn system_token(app: &TestApp, scope: &str) -> String {
    client_token(app, scope).await.1
}

/// A new client registered with `scope` and its client_credentials token:
/// (client_id, access token).
pub async fn client_token(app: &TestApp, scope: &str) -> (String, String) {
    let (id, secret) = secret_client(app, scope);
    let token = credentials_token(app, &id, &secret, scope).await;
    (id, token)
}

/// A client_credentials token of a registered secret client.
pub async fn credentials_token(app: &TestApp, id: &str, secret: &str, scope: &str) -> String {
    let r = post_form(
        app,
        "/auth/token",
        &[("grant_type", "client_credentials"), ("scope", scope)],
        &[("Authorization", &basic(id, secret))],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    r.json()["access_token"].as_str().unwrap().to_string()
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A FHIR request with a token, recorded for the audit check.
pub async fn fhir(
    app: &TestApp,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Reply {
    let auth = token.map(bearer);
    let mut headers: Vec<(&str, &str)> = vec![("Content-Type", "application/fhir+json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    app.send(method, path, &headers, bytes.as_deref()).await
}

/// Creates a Patient with the system token and returns its id.
pub async fn create_patient(app: &TestApp, token: &str, family: &str) -> String {
    let r = fhir(
        app,
        Method::POST,
        "/Patient",
        Some(token),
        Some(&json!({"resourceType": "Patient", "name": [{"family": family, "given": ["Test"]}]})),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let loc = r.header("location").unwrap();
    loc.split("/Patient/")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Every AuditEvent of the authorization server and every authorization
/// decision (tagged with fhirgate's event code, system urn:fhirgate:auth-event).
pub async fn auth_events(app: &TestApp) -> Vec<Value> {
    app.audits_by_request()
        .await
        .into_values()
        .flatten()
        .filter(|e| auth_code(e).is_some())
        .collect()
}

/// fhirgate's code of an authorization event (`token-issued`, `login-failed`,
/// `authz-deny`, ...).
pub fn auth_code(e: &Value) -> Option<&str> {
    e["meta"]["tag"]
        .as_array()?
        .iter()
        .find(|t| t["system"] == "urn:fhirgate:auth-event")?["code"]
        .as_str()
}

pub fn has_event(events: &[Value], code: &str, outcome: &str) -> bool {
    events
        .iter()
        .any(|e| auth_code(e) == Some(code) && e["outcome"] == outcome)
}

/// `name="x" value="y"` pairs of hidden inputs, unescaped.
pub fn hidden_inputs(html: &str) -> Vec<(String, String)> {
    let re = regex::Regex::new(r#"<input type="hidden" name="([^"]*)" value="([^"]*)">"#).unwrap();
    re.captures_iter(html)
        .map(|c| (unescape(&c[1]), unescape(&c[2])))
        .collect()
}

pub fn checkbox_values(html: &str, name: &str) -> Vec<String> {
    let re = regex::Regex::new(&format!(
        r#"<input type="checkbox" name="{name}" value="([^"]*)""#
    ))
    .unwrap();
    re.captures_iter(html).map(|c| unescape(&c[1])).collect()
}

pub fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&#x2f;", "/")
        .replace("&#x2F;", "/")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

/// The session cookie a page set (`name=value`).
pub fn session_cookie(r: &Reply) -> Option<String> {
    r.headers
        .get_all("set-cookie")
        .filter_map(|h| h.to_str().ok())
        .find(|c| c.starts_with("fhirgate_session="))
        .map(|c| c.split(';').next().unwrap().to_string())
}

/// The query parameters of a redirect's Location.
pub fn location_params(r: &Reply) -> Vec<(String, String)> {
    let loc = r.header("location").unwrap_or_else(|| {
        panic!(
            "no Location ({}): {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        )
    });
    let q = loc.split_once('?').map(|(_, q)| q).unwrap_or("");
    form_urlencoded::parse(q.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub fn param<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The claims of a JWT, unverified.
pub fn claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}
