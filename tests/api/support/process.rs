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

/// Starts `fhirgate serve` on a free loopback port against `db_url`, logging to `log`, and
/// waits until it serves: it has logged "fhirgate serving" (at info, so `extra_env` must not
/// raise `FHIRGATE_LOG__LEVEL` above it) and its `/health/ready` answers 200.
///
/// The port is found free here and bound by the child only after it has loaded its packages;
/// in between, another test of this binary (they run side by side in one process) may bind
/// it. Waiting for the log line means a health answer never comes from that other server;
/// the child, finding the port taken, stops with "cannot listen on", and the start is tried
/// again on another port.
pub fn start(
    db_url: &str,
    key_file: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> ServerProcess {
    const ATTEMPTS: usize = 3;
    let mut attempt = 1;
    loop {
        match try_start(db_url, key_file, log, extra_env) {
            Ok(server) => return server,
            Err(PortTaken) if attempt < ATTEMPTS => attempt += 1,
            Err(PortTaken) => panic!(
                "fhirgate found its port taken {ATTEMPTS} times; log: {}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
    }
}

/// The port chosen for a server process was bound by someone else first.
struct PortTaken;

fn try_start(
    db_url: &str,
    key_file: &Path,
    log: &Path,
    extra_env: &[(&str, &str)],
) -> Result<ServerProcess, PortTaken> {
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
    let mut child = cmd.spawn().expect("start fhirgate");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(exit) = child.try_wait().expect("fhirgate's exit status") {
            if text.contains("cannot listen on") {
                return Err(PortTaken);
            }
            panic!("fhirgate stopped before it was ready ({exit}); log: {text}");
        }
        if text.contains("fhirgate serving") && health_ready(port) {
            break;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("fhirgate did not become ready; log: {text}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let root = format!("http://127.0.0.1:{port}");
    Ok(ServerProcess {
        child,
        base: format!("{root}/fhir"),
        root,
    })
}

/// `GET /health/ready` on the port answers 200.
fn health_ready(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = s.write_all(b"GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
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

/// Runs the `fhirgate` command line against a test database (its key file, the
/// test package cache), in the database's folder.
pub fn cli(db: &super::server::Database, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_fhirgate"))
        .args(args)
        .env("FHIRGATE_DATABASE__URL", &db.url)
        .env("FHIRGATE_CRYPTO__MASTER_KEY_FILE", db.key_file())
        .env("FHIRGATE_PACKAGES__CACHE", super::package_cache())
        .env("FHIRGATE_LOG__LEVEL", "warn")
        .current_dir(db.dir.path())
        .output()
        .expect("run fhirgate")
}
