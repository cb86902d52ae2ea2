//! Two fhirgate processes on one PostgreSQL database: a token issued by one
//! works on the other, a revocation on one holds on the other, and a client
//! assertion's `jti` replayed on the other node is refused.

use std::process::Command;
use std::time::{Duration, Instant};

use awc::http::{Method, StatusCode};
use serde_json::json;

use super::backend::rsa_key;
use super::*;
use crate::support::process::{start, ServerProcess};
use crate::support::server::PgDatabase;

const PUBLIC: &str = "http://fhirgate.test/fhir";

fn register(db: &PgDatabase, key: &std::path::Path, args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(args)
        .env("FHIRGATE_DATABASE__URL", &db.url)
        .env("FHIRGATE_CRYPTO__MASTER_KEY_FILE", key)
        .env("FHIRGATE_PACKAGES__CACHE", crate::support::package_cache())
        .env("FHIRGATE_LOG__LEVEL", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

async fn form(
    node: &ServerProcess,
    path: &str,
    fields: &[(&str, &str)],
    auth: Option<&str>,
) -> crate::support::server::Reply {
    let mut h = vec![("Content-Type", "application/x-www-form-urlencoded")];
    if let Some(a) = auth {
        h.push(("Authorization", a));
    }
    raw(
        Method::POST,
        &format!("{}{path}", node.root),
        &h,
        Some(form_body(fields)),
    )
    .await
}

#[actix_rt::test]
async fn tokens_revocations_and_jti_replays_hold_across_two_nodes() {
    let db = PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    fhirgate::crypto::MasterKey::generate()
        .unwrap()
        .write_new_file(&key)
        .unwrap();
    // One node migrates and makes the signing key before the second starts.
    // Both nodes behind one public base URL (as behind a load balancer).
    let env = [
        ("FHIRGATE_AUTH__ENABLED", "true"),
        ("FHIRGATE_SERVER__BASE_URL", PUBLIC),
    ];
    let a = start(&db.url, &key, &dir.path().join("a.log"), &env);
    let b = start(&db.url, &key, &dir.path().join("b.log"), &env);
    let reg = register(
        &db,
        &key,
        &[
            "clients",
            "add",
            "--name",
            "svc",
            "--secret",
            "--scope",
            "system/*.*",
        ],
    );
    let (id, secret) = (
        reg["client_id"].as_str().unwrap(),
        reg["client_secret"].as_str().unwrap(),
    );
    let t = form(
        &a,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.rs"),
        ],
        Some(&basic(id, secret)),
    )
    .await;
    assert_eq!(
        t.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&t.body)
    );
    let token = t.json()["access_token"].as_str().unwrap().to_string();
    let read_on = |node: &ServerProcess, tok: String| {
        let url = format!("{}/Patient", node.base);
        async move { raw(Method::GET, &url, &[("Authorization", &bearer(&tok))], None).await }
    };
    assert_eq!(read_on(&a, token.clone()).await.status, StatusCode::OK);
    assert_eq!(
        read_on(&b, token.clone()).await.status,
        StatusCode::OK,
        "a token of A works on B"
    );

    // Revoked on A, refused by B within its next poll.
    let r = form(
        &a,
        "/auth/revoke",
        &[("token", &token)],
        Some(&basic(id, secret)),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let i = form(
        &b,
        "/auth/introspect",
        &[("token", &token)],
        Some(&basic(id, secret)),
    )
    .await;
    assert_eq!(
        i.json()["active"],
        false,
        "introspection on B sees A's revocation at once"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let s = read_on(&b, token.clone()).await.status;
        if s == StatusCode::UNAUTHORIZED {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B still accepts a token revoked on A"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A client assertion used on A is a replay on B.
    let k = rsa_key("n1");
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, json!({"keys": [k.jwk]}).to_string()).unwrap();
    let reg = register(
        &db,
        &key,
        &[
            "clients",
            "add",
            "--name",
            "bulk",
            "--jwks-file",
            jwks.to_str().unwrap(),
            "--scope",
            "system/*.rs",
        ],
    );
    let bulk = reg["client_id"].as_str().unwrap();
    let now = fhirgate::auth::now();
    let claims = json!({"iss": bulk, "sub": bulk, "aud": "http://fhirgate.test/auth/token", "exp": now + 120, "jti": uuid::Uuid::new_v4().to_string()});
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS384);
    h.kid = Some("n1".into());
    let assertion = jsonwebtoken::encode(&h, &claims, &k.encoding).unwrap();
    let fields = [
        ("grant_type", "client_credentials"),
        ("scope", "system/*.rs"),
        (
            "client_assertion_type",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        ),
        ("client_assertion", assertion.as_str()),
    ];
    assert_eq!(
        form(&a, "/auth/token", &fields, None).await.status,
        StatusCode::OK
    );
    let replay = form(&b, "/auth/token", &fields, None).await;
    assert_eq!(
        replay.status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&replay.body)
    );
    assert!(replay.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("jti"));
    drop((a, b));
}
