//! Rate limits (429 with Retry-After), login throttling and lockout, discovery,
//! CORS and the cache headers.

use awc::http::{Method, StatusCode};
use fhirgate::auth::scopes::Role;
use serde_json::Value;

use super::code_flow::{public_client, run_flow, user, Choices};
use super::*;
use crate::support::server::Backend;

async fn token_and_fhir_requests_over_their_rate_get_429(backend: Backend) {
    let app = spawn_auth(backend, |s| {
        s.ratelimit.auth_per_addr_per_min = 3;
        s.ratelimit.per_client_per_sec = 1;
        s.ratelimit.burst = 2;
    })
    .await;
    let (id, secret) = secret_client(&app, "system/*.rs");
    let auth = basic(&id, &secret);
    let fields = [
        ("grant_type", "client_credentials"),
        ("scope", "system/*.rs"),
    ];
    let headers = [("Authorization", auth.as_str())];
    let ask = || post_form(&app, "/auth/token", &fields, &headers);
    let first = ask().await;
    assert_eq!(first.status, StatusCode::OK);
    let token = first.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(ask().await.status, StatusCode::OK);
    assert_eq!(ask().await.status, StatusCode::OK);
    let limited = ask().await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = limited.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert_eq!(limited.json()["error"], "slow_down");

    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(fhir(&app, Method::GET, "/Patient", Some(&token), None).await);
    }
    let throttled = statuses
        .iter()
        .find(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .expect("a burst of 5 at 1/s with burst 2 is limited");
    assert!(
        throttled
            .header("retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(throttled.issue().0, "throttled");
    assert!(has_event(&auth_events(&app).await, "rate-limited", "4"));
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn failed_logins_slow_down_then_lock_the_account(backend: Backend) {
    let app = spawn_auth(backend, |s| {
        s.auth.max_failed_logins = 2;
        s.auth.lockout_secs = 600;
    })
    .await;
    let client_id = public_client(&app);
    user(&app, "pat", "Patient/p1", Role::Patient, false);
    for _ in 0..2 {
        let o = run_flow(
            &app,
            &client_id,
            "patient/*.rs",
            "pat",
            Choices {
                password: Some("wrong"),
                ..Choices::default()
            },
        )
        .await;
        assert_eq!(o.last.status, StatusCode::UNAUTHORIZED);
        assert!(
            String::from_utf8_lossy(&o.last.body).contains(r#"name="password""#),
            "the login page again"
        );
    }
    // Locked: the right password does not get in.
    let o = run_flow(&app, &client_id, "patient/*.rs", "pat", Choices::default()).await;
    assert_eq!(o.last.status, StatusCode::UNAUTHORIZED);
    assert!(String::from_utf8_lossy(&o.last.body).contains("locked"));
    let events = auth_events(&app).await;
    assert!(has_event(&events, "login-failed", "4"));
    assert!(has_event(&events, "account-locked", "4"));
    let row = app.store.auth_user("pat").unwrap().unwrap();
    assert!(row.locked_until > fhirgate::auth::now());
    app.stop().await;
}

async fn discovery_cors_and_cache_headers(backend: Backend) {
    let app = spawn_auth(backend, |s| {
        s.server.cors_origins = vec!["https://app.example".into()]
    })
    .await;
    let smart = raw(
        Method::GET,
        &format!("{}/.well-known/smart-configuration", app.base),
        &[("Accept", "text/html"), ("Origin", "https://any.example")],
        None,
    )
    .await;
    assert_eq!(smart.status, StatusCode::OK);
    assert_eq!(
        smart.header("access-control-allow-origin").as_deref(),
        Some("*")
    );
    let s: Value = smart.json();
    for field in [
        "issuer",
        "authorization_endpoint",
        "token_endpoint",
        "capabilities",
        "code_challenge_methods_supported",
        "grant_types_supported",
        "token_endpoint_auth_methods_supported",
        "scopes_supported",
        "response_types_supported",
        "jwks_uri",
        "introspection_endpoint",
        "revocation_endpoint",
    ] {
        assert!(!s[field].is_null(), "smart-configuration lacks {field}");
    }
    assert_eq!(s["issuer"], app.base.as_str());
    assert_eq!(
        s["code_challenge_methods_supported"],
        serde_json::json!(["S256"])
    );
    let oidc = raw(
        Method::GET,
        &format!("{}/.well-known/openid-configuration", app.base),
        &[],
        None,
    )
    .await
    .json();
    assert_eq!(oidc["issuer"], app.base.as_str());
    let jwks = raw(Method::GET, oidc["jwks_uri"].as_str().unwrap(), &[], None)
        .await
        .json();
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");

    // Clients that read the endpoints from the CapabilityStatement (Python fhirclient).
    let cs = app.get("/metadata").await.json();
    let security = &cs["rest"][0]["security"];
    assert_eq!(security["service"][0]["coding"][0]["code"], "SMART-on-FHIR");
    let uris = security["extension"][0]["extension"].as_array().unwrap();
    for (name, path) in [("authorize", "/auth/authorize"), ("token", "/auth/token")] {
        let uri = uris.iter().find(|u| u["url"] == name).unwrap();
        assert_eq!(uri["valueUri"], format!("{}{path}", app.root));
    }
    let token = system_token(&app, "system/*.rs").await;
    let auth = bearer(&token);
    let allowed = app
        .send(
            Method::GET,
            "/Patient",
            &[("Authorization", &auth), ("Origin", "https://app.example")],
            None,
        )
        .await;
    assert_eq!(
        allowed.header("access-control-allow-origin").as_deref(),
        Some("https://app.example")
    );
    assert_eq!(allowed.header("cache-control").as_deref(), Some("no-store"));
    let other = app
        .send(
            Method::GET,
            "/Patient",
            &[("Authorization", &auth), ("Origin", "https://evil.example")],
            None,
        )
        .await;
    assert!(other.header("access-control-allow-origin").is_none());
    let preflight = raw(
        Method::OPTIONS,
        &format!("{}/auth/token", app.root),
        &[
            ("Origin", "https://app.example"),
            ("Access-Control-Request-Method", "POST"),
        ],
        None,
    )
    .await;
    assert_eq!(preflight.status, StatusCode::NO_CONTENT);
    assert!(preflight
        .header("access-control-allow-headers")
        .unwrap()
        .contains("Authorization"));
    assert!(app.get("/metadata").await.header("cache-control").is_none());
    assert!(
        allowed.header("strict-transport-security").is_none(),
        "no HSTS without TLS"
    );
    app.stop().await;
}

async fn auth_disabled_keeps_the_open_development_mode(backend: Backend) {
    let app = crate::support::server::spawn_app(backend).await;
    assert_eq!(app.get("/Patient").await.status, StatusCode::OK);
    let mut s = app.db.settings();
    s.server.listen = "0.0.0.0:0".into();
    assert!(
        fhirgate::startup::build_state(&s, false).is_err(),
        "development mode is loopback only"
    );
    app.stop().await;
}

crate::support::server::on_both_backends!(
    token_and_fhir_requests_over_their_rate_get_429,
    failed_logins_slow_down_then_lock_the_account
);

mod sqlite_only {
    use super::*;
    #[actix_rt::test]
    async fn discovery_cors_and_cache_headers_sqlite() {
        discovery_cors_and_cache_headers(Backend::Sqlite).await
    }
    #[actix_rt::test]
    async fn auth_disabled_keeps_the_open_development_mode_sqlite() {
        auth_disabled_keeps_the_open_development_mode(Backend::Sqlite).await
    }
}
