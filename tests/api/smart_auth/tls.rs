//! TLS: 1.2 and later only (a TLS 1.0 or 1.1 handshake is refused by the
//! server), and `Strict-Transport-Security` on answers under TLS.

use std::io::{Read, Write};
use std::net::TcpStream;

use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode, SslVersion};
use openssl::x509::{X509NameBuilder, X509};

use crate::support::server::{spawn_with, Backend, Database};

fn self_signed(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "127.0.0.1").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    b.set_serial_number(&BigNum::from_u32(1).unwrap().to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(2).unwrap())
        .unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, b.build().to_pem().unwrap()).unwrap();
    std::fs::write(&k, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    (c, k)
}

/// A handshake offering only `version`: Ok(answer to GET /health/live) or the error.
fn handshake(port: u16, version: SslVersion) -> Result<String, String> {
    let mut b = SslConnector::builder(SslMethod::tls_client()).unwrap();
    // Security level 0 lets this client offer the old versions at all, so a
    // failure is the server's refusal, not the client's own policy.
    b.set_cipher_list("DEFAULT:@SECLEVEL=0").unwrap();
    b.set_min_proto_version(Some(version)).unwrap();
    b.set_max_proto_version(Some(version)).unwrap();
    b.set_verify(SslVerifyMode::NONE);
    let connector = b.build();
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    let mut s = connector
        .configure()
        .unwrap()
        .verify_hostname(false)
        .connect("127.0.0.1", tcp)
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET /health/live HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Ok(out)
}

#[actix_rt::test]
async fn tls_1_0_and_1_1_handshakes_are_refused() {
    let db = Database::new(Backend::Sqlite);
    let (cert, key) = self_signed(db.dir.path());
    let app = spawn_with(db, |s| {
        s.tls.cert = Some(cert);
        s.tls.key = Some(key);
    })
    .await;
    let port: u16 = app.root.rsplit(':').next().unwrap().parse().unwrap();
    let results = actix_web::rt::task::spawn_blocking(move || {
        [
            SslVersion::TLS1,
            SslVersion::TLS1_1,
            SslVersion::TLS1_2,
            SslVersion::TLS1_3,
        ]
        .map(|v| handshake(port, v))
    })
    .await
    .unwrap();
    for (name, r) in ["TLS 1.0", "TLS 1.1"].iter().zip(&results[..2]) {
        let e = r.as_ref().expect_err(&format!("{name} must be refused"));
        // The server's alert 70 (protocol_version), read from the wire: not a
        // refusal of this client's own.
        assert!(
            e.contains("alert protocol version"),
            "{name} failed for another reason: {e}"
        );
    }
    for (name, r) in ["TLS 1.2", "TLS 1.3"].iter().zip(&results[2..]) {
        let answer = r.as_ref().unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(answer.starts_with("HTTP/1.1 200"), "{name}: {answer}");
        assert!(
            answer
                .to_ascii_lowercase()
                .contains("strict-transport-security: max-age="),
            "{name}: {answer}"
        );
    }
    app.stop().await;
}
