//! Tokens of an external identity provider (`auth.issuers`): verified with its
//! JWK Set (served here by a small HTTP server), its `scope`, `fhirUser` and
//! `patient` claims read; an unknown `kid` fetches the set again once.

use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::{web, App, HttpResponse, HttpServer};
use awc::http::{Method, StatusCode};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use serde_json::json;

use super::*;
use crate::support::server::Backend;

fn p256(kid: &str) -> (EncodingKey, serde_json::Value) {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let mut ctx = BigNumContext::new().unwrap();
    let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    let b = |n: &BigNum| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(n.to_vec_padded(32).unwrap())
    };
    let jwk =
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "x": b(&x), "y": b(&y)});
    let pem = PKey::from_ec_key(ec)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    (EncodingKey::from_ec_pem(&pem).unwrap(), jwk)
}

async fn external_issuer_tokens_are_accepted_with_their_claims(backend: Backend) {
    let (key, jwk) = p256("idp-1");
    let fetches = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (set, count) = (json!({"keys": [jwk]}), fetches.clone());
    let idp = HttpServer::new(move || {
        let (set, count) = (set.clone(), count.clone());
        App::new().route(
            "/jwks",
            web::get().to(move || {
                count.fetch_add(1, Ordering::SeqCst);
                let set = set.clone();
                async move { HttpResponse::Ok().json(set) }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    let idp_handle = idp.handle();
    actix_rt::spawn(idp);

    let app = spawn_auth(backend, |s| {
        s.auth.issuers = vec![fhirgate::config::IssuerSettings {
            issuer: "https://idp.test".into(),
            jwks_uri: format!("http://127.0.0.1:{port}/jwks"),
            audience: "fhirgate-api".into(),
        }];
    })
    .await;
    let now = fhirgate::auth::now();
    let token = |kid: &str, aud: &str, scope: &str| {
        let mut h = Header::new(Algorithm::ES256);
        h.kid = Some(kid.into());
        let c = json!({"iss": "https://idp.test", "aud": aud, "sub": "u-7", "exp": now + 300,
            "scope": scope, "fhirUser": "Practitioner/ext-7", "client_id": "ext-app", "jti": uuid::Uuid::new_v4().to_string()});
        jsonwebtoken::encode(&h, &c, &key).unwrap()
    };
    let good = token("idp-1", "fhirgate-api", "user/Patient.rs");
    let rid = uuid::Uuid::new_v4().to_string();
    let r = app
        .send(
            Method::GET,
            "/Patient",
            &[("Authorization", &bearer(&good)), ("X-Request-Id", &rid)],
            None,
        )
        .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    let ev = &app.audits_by_request().await[&rid][0];
    let agents = ev["agent"].as_array().unwrap();
    assert!(
        agents
            .iter()
            .any(|a| a["who"]["reference"] == "Practitioner/ext-7"),
        "{ev}"
    );
    assert_eq!(
        fhir(&app, Method::GET, "/Observation", Some(&good), None)
            .await
            .status,
        StatusCode::FORBIDDEN,
        "only its scopes"
    );
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            "/Patient",
            Some(&token("idp-1", "someone-else", "user/Patient.rs")),
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    let audit = token("idp-1", "fhirgate-api", "user/AuditEvent.rs");
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            "/AuditEvent?_count=1",
            Some(&audit),
            None
        )
        .await
        .status,
        StatusCode::FORBIDDEN,
        "an external user has no audit role"
    );
    let before = fetches.load(Ordering::SeqCst);
    assert_eq!(before, 1, "the key set is cached");
    // An unknown kid fetches the set again once; a second unknown kid at once does not.
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            "/Patient",
            Some(&token("idp-2", "fhirgate-api", "user/Patient.rs")),
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        fhir(
            &app,
            Method::GET,
            "/Patient",
            Some(&token("idp-3", "fhirgate-api", "user/Patient.rs")),
            None
        )
        .await
        .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        fetches.load(Ordering::SeqCst),
        2,
        "refreshed once, rate-limited"
    );
    app.assert_every_request_audited().await;
    app.stop().await;
    idp_handle.stop(true).await;
}

crate::support::server::on_both_backends!(external_issuer_tokens_are_accepted_with_their_claims);
