//! What the audit tests (AuditEvent search, disclosures, the console) share: a
//! user's token from the code flow, FHIR requests under a chosen request id,
//! and the request id an AuditEvent records.

use awc::http::{Method, StatusCode};
use fhirgate::auth::scopes::Role;
use serde_json::Value;

use crate::smart_auth::code_flow::{code_of, exchange, public_client, run_flow, user, Choices};
use crate::support::server::{Reply, TestApp};

/// A user's token from the code flow.
pub async fn user_token(
    app: &TestApp,
    name: &str,
    fhir_user: &str,
    role: Role,
    scope: &str,
) -> String {
    let client_id = public_client(app);
    user(app, name, fhir_user, role, false);
    let o = run_flow(app, &client_id, scope, name, Choices::default()).await;
    let code = code_of(&o);
    let t = exchange(app, &client_id, &code, &o.pkce.verifier).await;
    assert_eq!(
        t.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&t.body)
    );
    t.json()["access_token"].as_str().unwrap().to_string()
}

/// A FHIR request with a token and a chosen request id.
pub async fn send(
    app: &TestApp,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
    request_id: &str,
) -> Reply {
    let auth = format!("Bearer {token}");
    let headers = [
        ("Content-Type", "application/fhir+json"),
        ("Authorization", auth.as_str()),
        ("X-Request-Id", request_id),
    ];
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    app.send(method, path, &headers, bytes.as_deref()).await
}

/// The request id an AuditEvent records.
pub fn request_id(ev: &Value) -> String {
    ev["entity"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["type"]["code"] == "XrequestId"))
        .and_then(|e| e["what"]["identifier"]["value"].as_str())
        .unwrap_or_default()
        .to_string()
}
