//! fhirgate as a separate process (the built binary), for tests that need two
//! server processes on one database or the process's own log output.

use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ServerProcess {
    pub child: Child,
    pub base: String,
    pub root: String,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts `fhirgate serve` on a free loopback port against `db_url`, logging to `log`.
pub fn start(
    db_url: &str,
    key_file: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> ServerProcess {
    let port = free_port();
    let log_file = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    cmd.arg("serve")
        .env("FHIRGATE_SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("FHIRGATE_SERVER__WORKERS", "2")
        .env("FHIRGATE_DATABASE__URL", db_url)
        .env("FHIRGATE_CRYPTO__MASTER_KEY_FILE", key_file)
        .env("FHIRGATE_PACKAGES__CACHE", super::package_cache())
        .env("FHIRGATE_AUTH__ENABLED", "false")
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file));
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("start fhirgate");
    let root = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            let _ =
                s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut buf = String::new();
            let _ = s.read_to_string(&mut buf);
            if buf.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "fhirgate did not become ready; log: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    ServerProcess {
        child,
        base: format!("{root}/fhir"),
        root,
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two fhirgate processes on one fresh PostgreSQL database with one master key.
pub fn two_pg_nodes() -> (
    super::server::PgDatabase,
    tempfile::TempDir,
    ServerProcess,
    ServerProcess,
) {
    let db = super::server::PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("master.key");
    fhirgate::crypto::MasterKey::generate()
        .unwrap()
        .write_new_file(&key)
        .unwrap();
    let a = start(&db.url, &key, &dir.path().join("a.log"), &[]);
    let b = start(&db.url, &key, &dir.path().join("b.log"), &[]);
    (db, dir, a, b)
}
