//! The authorization tables on both backends, through the store API: single
//! use decided by the database, revocations in order, signing keys sealed.

use fhirgate::store::{ClientRow, CodeRow, LaunchRow, Redeemed, RefreshRow, StoreError};

use crate::support::server::{spawn_app, Backend};

async fn authorization_state_is_single_use_and_sealed(backend: Backend) {
    let app = spawn_app(backend).await;
    let s = app.store.clone();
    let now = fhirgate::auth::now();
    let client = ClientRow {
        client_id: "c1".into(),
        name: "one".into(),
        auth_method: "none".into(),
        secret_hash: None,
        jwks: None,
        jwks_uri: None,
        redirect_uris: vec!["https://a/cb".into(), "https://b/cb".into()],
        scope: Some("patient/*.rs".into()),
        grant_types: vec!["authorization_code".into(), "refresh_token".into()],
        created: now,
    };
    s.auth_add_client(&client).unwrap();
    assert!(matches!(
        s.auth_add_client(&client),
        Err(StoreError::AlreadyExists)
    ));
    assert_eq!(s.auth_client("c1").unwrap().unwrap(), client);

    let code = CodeRow {
        client_id: "c1".into(),
        redirect_uri: "https://a/cb".into(),
        code_challenge: "x".into(),
        grant_id: "g1".into(),
        details: "{}".into(),
        expires: now + 60,
    };
    s.auth_add_code(b"h1", &code).unwrap();
    assert_eq!(
        s.auth_redeem_code(b"h1").unwrap(),
        Redeemed::Fresh(code.clone())
    );
    assert_eq!(s.auth_redeem_code(b"h1").unwrap(), Redeemed::Reused(code));
    assert_eq!(s.auth_redeem_code(b"h2").unwrap(), Redeemed::Unknown);

    let refresh = RefreshRow {
        grant_id: "g1".into(),
        client_id: "c1".into(),
        details: "{}".into(),
        expires: now + 99,
    };
    s.auth_add_refresh(b"r1", &refresh, now).unwrap();
    assert_eq!(s.auth_refresh_used(b"r1").unwrap(), Some(false));
    assert!(matches!(
        s.auth_redeem_refresh(b"r1").unwrap(),
        Redeemed::Fresh(_)
    ));
    assert!(matches!(
        s.auth_redeem_refresh(b"r1").unwrap(),
        Redeemed::Reused(_)
    ));

    s.auth_add_launch(
        b"l1",
        &LaunchRow {
            patient: "p".into(),
            encounter: None,
            username: None,
            expires: now + 300,
        },
    )
    .unwrap();
    assert!(s.auth_launch(b"l1", now).unwrap().is_some());
    assert!(s.auth_spend_launch(b"l1", now).unwrap());
    assert!(!s.auth_spend_launch(b"l1", now).unwrap());
    assert!(s.auth_launch(b"l1", now).unwrap().is_none());

    assert!(s.auth_remember_jti("c1", "j1", now + 60).unwrap());
    assert!(!s.auth_remember_jti("c1", "j1", now + 60).unwrap());
    assert!(
        s.auth_remember_jti("c2", "j1", now + 60).unwrap(),
        "per client"
    );

    s.auth_revoke("t1", now + 10, now).unwrap();
    s.auth_revoke("t1", now + 10, now).unwrap();
    s.auth_revoke("t2", now + 10, now).unwrap();
    let all = s.auth_revoked_since(0).unwrap();
    assert_eq!(
        all.iter().map(|r| r.token_id.as_str()).collect::<Vec<_>>(),
        ["t1", "t2"]
    );
    assert_eq!(s.auth_revoked_since(all[0].seq).unwrap().len(), 1);
    assert!(s.auth_is_revoked(&["x", "t2"]).unwrap());
    assert!(!s.auth_is_revoked(&["x"]).unwrap());

    // A signing key made at start; its private half is sealed in the table.
    let keys = s.auth_signing_keys().unwrap();
    assert_eq!(keys.len(), 1);
    let count = app.db.count_rows("auth_signing_keys");
    assert_eq!(count, 1);
    if let Some(path) = app.db.sqlite_path() {
        let bytes = std::fs::read(&path).unwrap();
        let wal = std::fs::read(path.with_extension("db-wal")).unwrap_or_default();
        let pkcs8 = keys[0].private_pkcs8.as_deref().unwrap();
        let needle = &pkcs8[pkcs8.len() - 32..];
        assert!(
            !bytes.windows(32).any(|w| w == needle) && !wal.windows(32).any(|w| w == needle),
            "the private key is not in the file"
        );
    }
    let kid = fhirgate::auth::jwt::rotate(&s, 3600).unwrap();
    assert_eq!(
        s.auth_signing_keys().unwrap()[0].kid,
        kid,
        "the newest signs"
    );

    // Lockout counting.
    let pw = fhirgate::auth::users::hash_password("x").unwrap();
    s.auth_add_user(&fhirgate::store::UserRow {
        username: "u".into(),
        password_hash: pw,
        fhir_user: "Patient/p".into(),
        role: "patient".into(),
        break_glass: false,
        failed_logins: 0,
        locked_until: 0,
        created: now,
    })
    .unwrap();
    assert_eq!(s.auth_login_failed("u", now, 3, 60).unwrap().failures, 1);
    assert_eq!(s.auth_login_failed("u", now, 3, 60).unwrap().failures, 2);
    assert_eq!(
        s.auth_login_failed("u", now, 3, 60).unwrap().locked_until,
        Some(now + 60)
    );
    assert!(s.auth_purge_expired(now + 10_000, 0).unwrap() > 0);
    app.stop().await;
}

crate::support::server::on_both_backends!(authorization_state_is_single_use_and_sealed);
