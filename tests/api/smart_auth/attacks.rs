//! The token-attack suite: every forged, stale or malformed credential is a 401
//! (or the OAuth error the specification names), audited, never a 500.

use awc::http::{Method, StatusCode};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

use super::backend::{assertion, assertion_token, jwks_client, rsa_key};
use super::*;
use crate::support::server::{Backend, TestApp};

fn b64(v: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
}

/// Claims like a real token of the server's, with `overrides`.
fn claims_like(app: &TestApp, overrides: Value) -> Value {
    let now = fhirgate::auth::now();
    let mut c = json!({"iss": app.base, "aud": app.base, "sub": "attacker", "client_id": "attacker",
        "scope": "system/*.cruds", "exp": now + 300, "iat": now, "nbf": now, "jti": uuid::Uuid::new_v4().to_string()});
    for (k, v) in overrides.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// Signs with the server's own signing key (read from its database, as an
/// insider with the master key could): only `iss`/`aud`/times can be wrong then.
fn server_signed(app: &TestApp, claims: &Value) -> String {
    let key = app.store.auth_signing_keys().unwrap().remove(0);
    let mut h = Header::new(Algorithm::ES256);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(
        &h,
        claims,
        &EncodingKey::from_ec_der(key.private_pkcs8.as_deref().unwrap()),
    )
    .unwrap()
}

async fn forged_and_stale_tokens_are_refused_with_401(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let good = system_token(&app, "system/*.rs").await;
    assert_eq!(
        fhir(&app, Method::GET, "/Patient", Some(&good), None)
            .await
            .status,
        StatusCode::OK
    );
    let (h, p, s) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    let payload: Value = claims(&good);
    let mut widened = payload.clone();
    widened["scope"] = json!("system/*.cruds");
    let kid = serde_json::from_slice::<Value>(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&h)
            .unwrap(),
    )
    .unwrap()["kid"]
        .clone();
    let now = fhirgate::auth::now();
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), p),
        ),
        (
            "alg none with kid",
            format!("{}.{}.", b64(&json!({"alg": "none", "kid": kid})), p),
        ),
        ("HS256 signed with the public key", {
            let jwks = raw(Method::GET, &format!("{}/auth/jwks", app.root), &[], None)
                .await
                .json();
            let mut hd = Header::new(Algorithm::HS256);
            hd.kid = kid.as_str().map(str::to_string);
            jsonwebtoken::encode(
                &hd,
                &payload,
                &EncodingKey::from_secret(jwks.to_string().as_bytes()),
            )
            .unwrap()
        }),
        ("changed payload", format!("{h}.{}.{s}", b64(&widened))),
        (
            "wrong signature",
            format!("{h}.{p}.{}", s.chars().rev().collect::<String>()),
        ),
        ("unknown kid", {
            let key = app.store.auth_signing_keys().unwrap().remove(0);
            let mut hd = Header::new(Algorithm::ES256);
            hd.kid = Some("not-a-key".into());
            jsonwebtoken::encode(
                &hd,
                &payload,
                &EncodingKey::from_ec_der(key.private_pkcs8.as_deref().unwrap()),
            )
            .unwrap()
        }),
        (
            "wrong aud",
            server_signed(
                &app,
                &claims_like(&app, json!({"aud": "https://other.example/fhir"})),
            ),
        ),
        (
            "wrong iss",
            server_signed(
                &app,
                &claims_like(&app, json!({"iss": "https://evil.example/fhir"})),
            ),
        ),
        (
            "expired",
            server_signed(
                &app,
                &claims_like(
                    &app,
                    json!({"exp": now - 30, "iat": now - 400, "nbf": now - 400}),
                ),
            ),
        ),
        (
            "not yet valid",
            server_signed(
                &app,
                &claims_like(&app, json!({"nbf": now + 120, "exp": now + 400})),
            ),
        ),
        ("no exp", {
            let mut c = claims_like(&app, json!({}));
            c.as_object_mut().unwrap().remove("exp");
            server_signed(&app, &c)
        }),
        ("oversized", format!("{h}.{}.{s}", "A".repeat(9_000))),
        ("malformed", "not a token at all".into()),
        ("two parts", format!("{h}.{p}")),
        ("bad base64", "@@@.###.$$$".into()),
        (
            "JSON that is not claims",
            format!("{h}.{}.{s}", b64(&json!([1, 2, 3]))),
        ),
    ];
    for (what, token) in &cases {
        let r = fhir(&app, Method::GET, "/Patient", Some(token), None).await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.header("www-authenticate").unwrap().starts_with("Bearer"),
            "{what}"
        );
        assert_eq!(r.issue().0, "login", "{what}");
    }
    // Just inside the 5 s leeway is still accepted; no token, another scheme: 401.
    let leeway = server_signed(&app, &claims_like(&app, json!({"exp": now - 2})));
    assert_eq!(
        fhir(&app, Method::GET, "/Patient", Some(&leeway), None)
            .await
            .status,
        StatusCode::OK
    );
    let none = fhir(&app, Method::GET, "/Patient", None, None).await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    let basic_scheme = app
        .send(
            Method::GET,
            "/Patient",
            &[("Authorization", "Basic YTpi")],
            None,
        )
        .await;
    assert_eq!(basic_scheme.status, StatusCode::UNAUTHORIZED);
    // metadata needs no token.
    assert_eq!(app.get("/metadata").await.status, StatusCode::OK);

    // Every refusal is audited with the reason.
    let audits = app.audits_by_request().await;
    let refused: Vec<&Value> = audits
        .values()
        .flatten()
        .filter(|e| e["outcome"] == "4")
        .collect();
    assert!(
        refused.len() >= cases.len() + 2,
        "{} refusals audited",
        refused.len()
    );
    assert!(refused
        .iter()
        .any(|e| e["outcomeDesc"].as_str().unwrap_or("").contains("expired")));
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn forged_client_assertions_get_invalid_client(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let key = rsa_key("k1");
    let id = jwks_client(&app, &[&key], "system/*.rs");
    let good = assertion(&app, &key, &id, json!({}));
    let (h, p) = {
        let mut parts = good.split('.');
        (
            parts.next().unwrap().to_string(),
            parts.next().unwrap().to_string(),
        )
    };
    let _ = h;
    let cases: Vec<(&str, String)> = vec![
        (
            "alg none",
            format!("{}.{p}.", b64(&json!({"alg": "none", "kid": "k1"}))),
        ),
        ("HS256", {
            let mut hd = Header::new(Algorithm::HS256);
            hd.kid = Some("k1".into());
            jsonwebtoken::encode(&hd, &claims(&good), &EncodingKey::from_secret(b"k1")).unwrap()
        }),
        ("RS256 (unlisted)", {
            let mut hd = Header::new(Algorithm::RS256);
            hd.kid = Some("k1".into());
            jsonwebtoken::encode(
                &hd,
                &claims(&assertion(&app, &key, &id, json!({}))),
                &key.encoding,
            )
            .unwrap()
        }),
        ("garbage", "x.y.z".into()),
        ("oversized", "a".repeat(40_000)),
    ];
    for (what, a) in cases {
        let r = assertion_token(&app, &a, "system/*.rs").await;
        assert_eq!(
            r.status,
            StatusCode::UNAUTHORIZED,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.json()["error"], "invalid_client", "{what}");
    }
    // Malformed token requests are 400s with an OAuth error, never a 500.
    for body in [
        &b"grant_type"[..],
        b"%%%",
        b"grant_type=authorization_code",
        b"grant_type=refresh_token&client_id=nobody",
    ] {
        let r = raw(
            Method::POST,
            &format!("{}/auth/token", app.root),
            &[("Content-Type", "application/x-www-form-urlencoded")],
            Some(body.to_vec()),
        )
        .await;
        assert!(
            r.status == StatusCode::BAD_REQUEST || r.status == StatusCode::UNAUTHORIZED,
            "{}: {}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        assert!(r.json()["error"].is_string());
    }
    let get = raw(Method::GET, &format!("{}/auth/token", app.root), &[], None).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(get.json()["error"], "invalid_request");
    let nowhere = raw(
        Method::GET,
        &format!("{}/auth/nowhere", app.root),
        &[],
        None,
    )
    .await;
    assert_eq!(nowhere.status, StatusCode::NOT_FOUND);
    let events = auth_events(&app).await;
    assert!(
        events
            .iter()
            .filter(|e| auth_code(e) == Some("token-refused"))
            .count()
            >= 5
    );
    app.stop().await;
}

crate::support::server::on_both_backends!(
    forged_and_stale_tokens_are_refused_with_401,
    forged_client_assertions_get_invalid_client
);
