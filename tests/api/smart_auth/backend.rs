//! Backend services: client_credentials with a client secret (Basic and form)
//! and with signed assertions (RS384 and ES384 keys made here with openssl,
//! assertions signed with a JWT library), introspection, revocation, and the
//! real `fhirgate clients|users|launch` commands.

use crate::support::process::cli;

use awc::http::{Method, StatusCode};
use base64::Engine as _;
use fhirgate::auth::clients::{ClientKind, ClientSpec};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use openssl::bn::BigNumContext;
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde_json::{json, Value};

use super::*;
use crate::support::server::{Backend, Reply, TestApp};

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A client key pair: the signing key and its public JWK.
pub struct ClientKey {
    pub alg: Algorithm,
    pub kid: String,
    pub encoding: EncodingKey,
    pub jwk: Value,
}

pub fn rsa_key(kid: &str) -> ClientKey {
    let rsa = Rsa::generate(2048).unwrap();
    let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
        "n": b64(&rsa.n().to_vec()), "e": b64(&rsa.e().to_vec())});
    let pem = PKey::from_rsa(rsa)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    ClientKey {
        alg: Algorithm::RS384,
        kid: kid.into(),
        encoding: EncodingKey::from_rsa_pem(&pem).unwrap(),
        jwk,
    }
}

pub fn ec384_key(kid: &str) -> ClientKey {
    let group = EcGroup::from_curve_name(Nid::SECP384R1).unwrap();
    let ec = EcKey::generate(&group).unwrap();
    let mut ctx = BigNumContext::new().unwrap();
    let (mut x, mut y) = (
        openssl::bn::BigNum::new().unwrap(),
        openssl::bn::BigNum::new().unwrap(),
    );
    ec.public_key()
        .affine_coordinates(&group, &mut x, &mut y, &mut ctx)
        .unwrap();
    let jwk = json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384", "use": "sig",
        "x": b64(&x.to_vec_padded(48).unwrap()), "y": b64(&y.to_vec_padded(48).unwrap())});
    let pem = PKey::from_ec_key(ec)
        .unwrap()
        .private_key_to_pem_pkcs8()
        .unwrap();
    ClientKey {
        alg: Algorithm::ES384,
        kid: kid.into(),
        encoding: EncodingKey::from_ec_pem(&pem).unwrap(),
        jwk,
    }
}

pub fn jwks_client(app: &TestApp, keys: &[&ClientKey], scope: &str) -> String {
    let file = app
        .db
        .dir
        .path()
        .join(format!("jwks-{}.json", uuid::Uuid::new_v4()));
    let set = json!({"keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>()});
    std::fs::write(&file, set.to_string()).unwrap();
    client(
        app,
        ClientSpec {
            name: "bulk exporter".into(),
            redirect_uris: vec![],
            kind: ClientKind::JwksFile(file),
            scope: Some(scope.into()),
            grant_types: None,
        },
    )
    .0
}

/// A client assertion with these claims over the defaults (iss = sub = client,
/// aud = the token endpoint, exp in 4 minutes, a fresh jti).
pub fn assertion(app: &TestApp, key: &ClientKey, client_id: &str, overrides: Value) -> String {
    let now = fhirgate::auth::now();
    let mut c = json!({"iss": client_id, "sub": client_id, "aud": format!("{}/auth/token", app.root),
        "exp": now + 240, "iat": now, "jti": uuid::Uuid::new_v4().to_string()});
    for (k, v) in overrides.as_object().unwrap() {
        c[k] = v.clone();
    }
    let mut h = Header::new(key.alg);
    h.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&h, &c, &key.encoding).unwrap()
}

pub async fn assertion_token(app: &TestApp, assertion: &str, scope: &str) -> Reply {
    post_form(
        app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", scope),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", assertion),
        ],
        &[],
    )
    .await
}

async fn client_credentials_with_a_secret_introspection_and_revocation(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let (id, secret) = secret_client(&app, "system/Patient.cruds system/Observation.rs");
    // Basic.
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.cruds system/Encounter.rs"),
        ],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.header("cache-control").as_deref(), Some("no-store"));
    let t = r.json();
    assert_eq!(
        t["scope"], "system/Patient.cruds",
        "only what the registration allows"
    );
    assert!(t["expires_in"].as_i64().unwrap() <= 300);
    assert!(t.get("refresh_token").is_none());
    let token = t["access_token"].as_str().unwrap().to_string();
    // Form (client_secret_post).
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Observation.rs"),
            ("client_id", &id),
            ("client_secret", &secret),
        ],
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    // Wrong secret, unknown grant type, a scope outside the registration.
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Patient.rs"),
        ],
        &[("Authorization", &basic(&id, "wrong"))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.json()["error"], "invalid_client");
    assert!(r.header("www-authenticate").unwrap().starts_with("Basic"));
    let r = post_form(
        &app,
        "/auth/token",
        &[("grant_type", "password")],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(r.json()["error"], "unsupported_grant_type");
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/Encounter.rs"),
        ],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(r.json()["error"], "invalid_scope");

    let created = fhir(
        &app,
        Method::POST,
        "/Patient",
        Some(&token),
        Some(&json!({"resourceType": "Patient"})),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let enc = fhir(&app, Method::GET, "/Encounter", Some(&token), None).await;
    assert_eq!(enc.status, StatusCode::FORBIDDEN);
    assert_eq!(enc.issue().0, "forbidden");

    // Introspection: by the client, and by a system/ bearer token.
    let i = post_form(
        &app,
        "/auth/introspect",
        &[("token", &token)],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(i.status, StatusCode::OK);
    let i = i.json();
    assert_eq!(i["active"], true);
    assert_eq!(i["client_id"], id.as_str());
    assert_eq!(i["scope"], "system/Patient.cruds");
    assert!(i["exp"].is_i64() && i["sub"].is_string() && i["iss"] == app.base.as_str());
    let i = post_form(
        &app,
        "/auth/introspect",
        &[("token", "garbage")],
        &[("Authorization", &bearer(&token))],
    )
    .await;
    assert_eq!(i.json(), json!({"active": false}));
    let i = post_form(&app, "/auth/introspect", &[("token", &token)], &[]).await;
    assert_eq!(
        i.status,
        StatusCode::UNAUTHORIZED,
        "introspection needs a caller"
    );

    // Revocation by another client is refused; by its own client it holds.
    let (other, other_secret) = secret_client(&app, "system/*.rs");
    let r = post_form(
        &app,
        "/auth/revoke",
        &[("token", &token)],
        &[("Authorization", &basic(&other, &other_secret))],
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let r = post_form(
        &app,
        "/auth/revoke",
        &[("token", &token), ("token_type_hint", "access_token")],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = post_form(
        &app,
        "/auth/revoke",
        &[("token", "not-a-token")],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "RFC 7009: unknown tokens answer 200"
    );
    let i = post_form(
        &app,
        "/auth/introspect",
        &[("token", &token)],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(i.json()["active"], false);
    let after = fhir(&app, Method::GET, "/Patient", Some(&token), None).await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    assert!(after.issue().1.contains("revoked"));

    let events = auth_events(&app).await;
    assert!(has_event(&events, "token-issued", "0"));
    assert!(has_event(&events, "token-refused", "4"));
    assert!(has_event(&events, "token-revoked", "0"));
    let text = serde_json::to_string(&events).unwrap();
    assert!(!text.contains(&secret) && !text.contains(&token));
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn client_credentials_with_signed_assertions(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let (rsa, ec) = (rsa_key("rsa-1"), ec384_key("ec-1"));
    let id = jwks_client(&app, &[&rsa, &ec], "system/*.rs");
    for key in [&rsa, &ec] {
        let r = assertion_token(&app, &assertion(&app, key, &id, json!({})), "system/*.rs").await;
        assert_eq!(
            r.status,
            StatusCode::OK,
            "{:?}: {}",
            key.alg,
            String::from_utf8_lossy(&r.body)
        );
        let t = r.json();
        assert!(t["expires_in"].as_i64().unwrap() <= 300);
        let token = t["access_token"].as_str().unwrap();
        assert_eq!(
            fhir(&app, Method::GET, "/Patient", Some(token), None)
                .await
                .status,
            StatusCode::OK
        );
    }
    // The same assertion twice: its jti is replayed.
    let a = assertion(&app, &rsa, &id, json!({}));
    assert_eq!(
        assertion_token(&app, &a, "system/*.rs").await.status,
        StatusCode::OK
    );
    let replay = assertion_token(&app, &a, "system/*.rs").await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED);
    assert_eq!(replay.json()["error"], "invalid_client");
    assert!(replay.json()["error_description"]
        .as_str()
        .unwrap()
        .contains("jti"));
    // Wrong audience, too long a life, another client's key, no jti, unknown kid.
    let cases: Vec<(&str, String)> = vec![
        (
            "aud",
            assertion(&app, &rsa, &id, json!({"aud": "https://elsewhere/token"})),
        ),
        (
            "exp",
            assertion(
                &app,
                &rsa,
                &id,
                json!({"exp": fhirgate::auth::now() + 3600}),
            ),
        ),
        (
            "expired",
            assertion(&app, &rsa, &id, json!({"exp": fhirgate::auth::now() - 60})),
        ),
        (
            "sub",
            assertion(&app, &rsa, &id, json!({"sub": "someone-else"})),
        ),
        ("jti", {
            let now = fhirgate::auth::now();
            let c = json!({"iss": id, "sub": id, "aud": format!("{}/auth/token", app.root), "exp": now + 60});
            let mut h = Header::new(Algorithm::RS384);
            h.kid = Some("rsa-1".into());
            jsonwebtoken::encode(&h, &c, &rsa.encoding).unwrap()
        }),
        (
            "foreign key",
            assertion(&app, &rsa_key("rsa-1"), &id, json!({})),
        ),
        (
            "unknown kid",
            assertion(&app, &rsa_key("rsa-9"), &id, json!({})),
        ),
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
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn the_cli_registers_clients_users_and_launches(backend: Backend) {
    let app = spawn_auth(backend, |_| {}).await;
    let out = cli(
        &app.db,
        &[
            "clients",
            "add",
            "--name",
            "cli",
            "--secret",
            "--scope",
            "system/*.*",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reg: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let (id, secret) = (
        reg["client_id"].as_str().unwrap().to_string(),
        reg["client_secret"].as_str().unwrap().to_string(),
    );
    // The README's curl: client_credentials with HTTP Basic.
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.*"),
        ],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    assert_eq!(r.json()["scope"], "system/*.*");

    let public = cli(
        &app.db,
        &[
            "clients",
            "add",
            "--name",
            "app",
            "--public",
            "--redirect-uri",
            super::code_flow::REDIRECT,
        ],
    );
    assert!(public.status.success());
    let public: Value = serde_json::from_slice(&public.stdout).unwrap();
    assert!(public.get("client_secret").is_none());
    let list = cli(&app.db, &["clients", "list"]);
    let lines: Vec<Value> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&secret),
        "no secrets listed"
    );
    let bad = cli(&app.db, &["clients", "add", "--name", "x", "--public"]);
    assert!(
        !bad.status.success(),
        "a public client without a redirect URI"
    );

    let pw = app.db.dir.path().join("pw.txt");
    std::fs::write(&pw, "s3cret pass\r\n").unwrap();
    let u = cli(
        &app.db,
        &[
            "users",
            "add",
            "--username",
            "alice",
            "--password-file",
            pw.to_str().unwrap(),
            "--fhir-user",
            "Practitioner/a1",
            "--role",
            "clinician",
            "--break-glass",
        ],
    );
    assert!(u.status.success(), "{}", String::from_utf8_lossy(&u.stderr));
    let users = String::from_utf8_lossy(&cli(&app.db, &["users", "list"]).stdout).to_string();
    assert!(users.contains("\"alice\"") && !users.contains("argon2"));
    let wrong_role = cli(
        &app.db,
        &[
            "users",
            "add",
            "--username",
            "bob",
            "--password-file",
            pw.to_str().unwrap(),
            "--fhir-user",
            "Practitioner/b1",
            "--role",
            "nurse",
        ],
    );
    assert!(!wrong_role.status.success());
    // The password file's trailing line break is not part of the password.
    let o = super::code_flow::run_flow(
        &app,
        public["client_id"].as_str().unwrap(),
        "user/*.rs",
        "alice",
        super::code_flow::Choices {
            password: Some("s3cret pass"),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        o.last.status,
        StatusCode::FOUND,
        "{}",
        String::from_utf8_lossy(&o.last.body)
    );

    let launch = cli(
        &app.db,
        &[
            "launch",
            "--patient",
            "Patient/p1",
            "--encounter",
            "Encounter/e1",
            "--user",
            "alice",
        ],
    );
    assert!(
        launch.status.success(),
        "{}",
        String::from_utf8_lossy(&launch.stderr)
    );
    assert!(String::from_utf8_lossy(&launch.stdout).trim().len() >= 40);
    assert!(!cli(&app.db, &["launch", "--patient", "p1"])
        .status
        .success());

    // Key rotation: a second signing key; both are kept for the tokens they signed.
    let rotate = cli(&app.db, &["keys", "rotate"]);
    assert!(
        rotate.status.success(),
        "{}",
        String::from_utf8_lossy(&rotate.stderr)
    );
    assert!(String::from_utf8_lossy(&rotate.stdout).contains("signing key"));
    assert_eq!(app.store.auth_signing_keys().unwrap().len(), 2);
    // The running node (which does not hold the new data key yet) still issues
    // and accepts tokens.
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.*"),
        ],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let t = r.json()["access_token"].as_str().unwrap().to_string();
    assert_eq!(
        fhir(&app, Method::GET, "/Patient", Some(&t), None)
            .await
            .status,
        StatusCode::OK
    );
    let removed = cli(&app.db, &["users", "remove", "alice"]);
    assert!(
        removed.status.success(),
        "{:?}: {} {}",
        removed.status,
        String::from_utf8_lossy(&removed.stdout),
        String::from_utf8_lossy(&removed.stderr)
    );
    let removed = cli(&app.db, &["clients", "remove", &id]);
    assert!(
        removed.status.success(),
        "{:?}: {} {}",
        removed.status,
        String::from_utf8_lossy(&removed.stdout),
        String::from_utf8_lossy(&removed.stderr)
    );
    assert!(!cli(&app.db, &["clients", "remove", &id]).status.success());
    let r = post_form(
        &app,
        "/auth/token",
        &[
            ("grant_type", "client_credentials"),
            ("scope", "system/*.*"),
        ],
        &[("Authorization", &basic(&id, &secret))],
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "a removed client");
    app.stop().await;
}

crate::support::server::on_both_backends!(
    client_credentials_with_a_secret_introspection_and_revocation,
    client_credentials_with_signed_assertions,
    the_cli_registers_clients_users_and_launches,
);
