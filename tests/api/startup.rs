//! Start-up and operations: master keys (missing, wrong, development, rotation),
//! the package registry path, readiness while the database is away and back.

use std::io::Write;
use std::time::Duration;

use awc::http::StatusCode;
use fhirgate::crypto::MasterKey;
use fhirgate::packages::{PackageCache, PackageRef, PackageSet};
use fhirgate::startup::{self, StartupError};
use serde_json::json;

use crate::support;
use crate::support::server::{spawn_with, Backend, Database};

fn sha(bytes: &[u8]) -> Vec<u8> {
    openssl::sha::sha256(bytes).to_vec()
}

#[actix_rt::test]
async fn a_database_with_data_refuses_a_wrong_or_missing_key_and_stays_unchanged() {
    let db = Database::new(Backend::Sqlite);
    let app = spawn_with(db, |_| {}).await;
    let created = app
        .post_json(
            "/Patient",
            &json!({"resourceType": "Patient", "active": true}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let db = app.stop_keep_db().await;
    let path = db.sqlite_path().unwrap();
    let before = settled_hash(&path);

    let mut wrong = db.settings();
    let other_key = db.dir.path().join("other.key");
    MasterKey::generate()
        .unwrap()
        .write_new_file(&other_key)
        .unwrap();
    wrong.crypto.master_key_file = Some(other_key);
    let err = startup::build_state(&wrong, true)
        .err()
        .expect("a wrong key is refused");
    assert!(
        err.to_string()
            .contains("not the key this database was created with"),
        "{err}"
    );

    let mut missing = db.settings();
    missing.crypto.master_key_file = None;
    let dev = db.dir.path().join("dev.key");
    missing.crypto.dev_key_file = Some(dev.clone());
    let err = startup::build_state(&missing, true)
        .err()
        .expect("a missing key is refused");
    assert!(matches!(err, StartupError::MissingKeyForData(_)), "{err}");
    assert!(!dev.exists(), "no key is invented for existing data");
    assert_eq!(settled_hash(&path), before, "the database was not changed");

    // The right key still opens it.
    let right = db.settings();
    assert!(startup::build_state(&right, true).is_ok());
}

/// The database file's hash once its write-ahead log is folded in.
fn settled_hash(path: &std::path::Path) -> Vec<u8> {
    use diesel::connection::SimpleConnection;
    use diesel::Connection;
    let mut c = diesel::SqliteConnection::establish(&path.display().to_string()).unwrap();
    // A refused start's pool or checkpoint thread may still hold the file for a moment.
    c.batch_execute("PRAGMA busy_timeout = 30000; PRAGMA wal_checkpoint(TRUNCATE);")
        .unwrap();
    drop(c);
    sha(&std::fs::read(path).unwrap())
}

#[cfg(unix)]
#[actix_rt::test]
async fn without_a_configured_key_a_development_key_file_is_created_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let db = Database::new(Backend::Sqlite);
    let mut s = db.settings();
    s.crypto.master_key_file = None;
    let dev = db.dir.path().join("dev.key");
    s.crypto.dev_key_file = Some(dev.clone());
    startup::build_state(&s, true).expect("starts with a development key");
    let mode = std::fs::metadata(&dev).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(MasterKey::read_file(&dev).is_ok());
}

/// The built server creates its SQLite database and the `-wal` and `-shm` files
/// beside it readable by their owner only (0600), whatever the umask (the test
/// process's is the usual 022). The development key file: the test above.
#[cfg(unix)]
#[actix_rt::test]
async fn the_sqlite_database_and_its_wal_and_shm_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fhirgate.db");
    let key = dir.path().join("master.key");
    MasterKey::generate().unwrap().write_new_file(&key).unwrap();
    let log = dir.path().join("server.log");
    let server = support::process::start(&format!("sqlite://{}", db.display()), &key, &log, &[]);
    let r = awc::Client::default()
        .post(format!("{}/Patient", server.base))
        .insert_header(("Content-Type", "application/fhir+json"))
        .send_body(json!({"resourceType": "Patient", "active": true}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // While the server runs, the write-ahead log and its index exist.
    for path in [
        db.clone(),
        dir.path().join("fhirgate.db-wal"),
        dir.path().join("fhirgate.db-shm"),
    ] {
        let meta = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{} is missing: {e}", path.display()));
        assert_eq!(
            meta.permissions().mode() & 0o777,
            0o600,
            "{} is not owner-only",
            path.display()
        );
    }
    drop(server);
}

#[actix_rt::test]
async fn key_rotation_rewraps_data_keys_and_old_data_stays_readable() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        let db = Database::new(backend);
        let app = spawn_with(db, |_| {}).await;
        let created = app
            .post_json(
                "/Patient",
                &json!({"resourceType": "Patient", "active": true}),
            )
            .await
            .json();
        let id = created["id"].as_str().unwrap().to_string();
        let db = app.stop_keep_db().await;

        let settings = db.settings();
        let store = startup::open_store(&settings, false).unwrap();
        let old = MasterKey::read_file(settings.crypto.master_key_file.as_ref().unwrap()).unwrap();
        let new_file = db.dir.path().join("new.key");
        let new = MasterKey::generate().unwrap();
        new.write_new_file(&new_file).unwrap();
        let key_id = store.rotate_keys(&old, Some(&new)).unwrap();
        // Key 1 seals data, key 2 makes blind index values; 3 is the new data key.
        assert_eq!(key_id, 3);

        let mut rotated = db.settings();
        rotated.crypto.master_key_file = Some(new_file);
        let app = spawn_with(db, |s| *s = rotated.clone()).await;
        let read = app.get(&format!("/Patient/{id}")).await;
        assert_eq!(read.status, StatusCode::OK, "{backend:?}");
        let again = app
            .post_json(
                "/Patient",
                &json!({"resourceType": "Patient", "active": false}),
            )
            .await;
        assert_eq!(again.status, StatusCode::CREATED);
        let db = app.stop_keep_db().await;
        let mut with_old = db.settings();
        with_old.crypto.master_key_file = None;
        with_old.crypto.master_key = Some(old.encoded());
        assert!(
            startup::build_state(&with_old, false).is_err(),
            "the old master key no longer opens the database"
        );
    }
}

/// A package tarball in npm layout, built in the test.
fn tiny_package(name: &str, version: &str) -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let mut add = |path: &str, body: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        tar.append_data(&mut h, path, body).unwrap();
    };
    add(
        "package/package.json",
        json!({"name": name, "version": version})
            .to_string()
            .as_bytes(),
    );
    add(
        "package/ValueSet-tiny.json",
        json!({"resourceType": "ValueSet", "id": "tiny", "url": "http://example.org/ValueSet/tiny", "version": version, "status": "active"}).to_string().as_bytes(),
    );
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

#[actix_rt::test]
async fn missing_packages_are_downloaded_from_the_registry_and_indexed() {
    use actix_web::{web, App, HttpResponse, HttpServer};
    let good = tiny_package("example.tiny", "1.0.0");
    let liar = tiny_package("example.other", "9.9.9");
    let server = HttpServer::new(move || {
        let good = good.clone();
        let liar = liar.clone();
        App::new()
            .route(
                "/example.tiny/1.0.0",
                web::get().to(move || {
                    let b = good.clone();
                    async move {
                        HttpResponse::Ok()
                            .content_type("application/tar+gzip")
                            .body(b)
                    }
                }),
            )
            .route(
                "/example.liar/1.0.0",
                web::get().to(move || {
                    let b = liar.clone();
                    async move { HttpResponse::Ok().body(b) }
                }),
            )
            .route(
                "/example.junk/1.0.0",
                web::get().to(|| async { HttpResponse::Ok().body("not a tarball") }),
            )
    })
    .workers(1)
    .bind("127.0.0.1:0")
    .unwrap();
    let port = server.addrs()[0].port();
    let running = server.run();
    let handle = running.handle();
    actix_rt::spawn(running);

    let dir = tempfile::tempdir().unwrap();
    let cache = PackageCache::new(dir.path(), format!("http://127.0.0.1:{port}"));
    let tiny: PackageRef = "example.tiny#1.0.0".parse().unwrap();
    let c2 = cache.clone();
    let t2 = tiny.clone();
    let set = actix_web::rt::task::spawn_blocking(move || PackageSet::load(&c2, &[t2]))
        .await
        .unwrap()
        .expect("downloaded");
    assert!(set.resolve("http://example.org/ValueSet/tiny").is_some());
    assert!(set
        .resolve("http://example.org/ValueSet/tiny|1.0.0")
        .is_some());
    assert!(
        dir.path()
            .join("example.tiny#1.0.0/package/.fhirgate.index.json")
            .is_file(),
        "the index is kept for the next start"
    );
    assert_eq!(cache.list().unwrap(), vec![tiny]);

    for bad in [
        "example.liar#1.0.0",
        "example.junk#1.0.0",
        "example.absent#1.0.0",
    ] {
        let c = cache.clone();
        let r: PackageRef = bad.parse().unwrap();
        let result = actix_web::rt::task::spawn_blocking(move || c.install(&r))
            .await
            .unwrap();
        assert!(result.is_err(), "{bad}");
    }
    assert_eq!(
        cache.list().unwrap().len(),
        1,
        "nothing half-installed is left"
    );
    handle.stop(true).await;
}

/// A TCP relay to PostgreSQL on its own threads, that the test can cut and restore.
///
/// It keeps its port for its whole life: while cut, it closes each connection it accepts
/// (and it has closed the ones it was relaying). Giving the port up and binding it again
/// to restore would race with every other test of the binary binding ports.
struct Relay {
    port: u16,
    /// Relaying (true) or cut (false).
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set when the relay is dropped: its accepting thread ends.
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    streams: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Relay {
    fn start() -> Relay {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicBool::new(true));
        let stop = Arc::new(AtomicBool::new(false));
        let streams = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, stop2, streams2) = (up.clone(), stop.clone(), streams.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((inbound, _)) if !up2.load(Ordering::SeqCst) => {
                        let _ = inbound.shutdown(std::net::Shutdown::Both);
                    }
                    Ok((inbound, _)) => {
                        inbound.set_nonblocking(false).unwrap();
                        let Ok(outbound) = std::net::TcpStream::connect("127.0.0.1:5432") else {
                            continue;
                        };
                        let mut all = streams2.lock().unwrap();
                        all.push(inbound.try_clone().unwrap());
                        all.push(outbound.try_clone().unwrap());
                        for (mut from, mut to) in [
                            (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                            (outbound, inbound),
                        ] {
                            std::thread::spawn(move || {
                                let _ = std::io::copy(&mut from, &mut to);
                                let _ = to.shutdown(std::net::Shutdown::Both);
                            });
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay {
            port,
            up,
            stop,
            streams,
        }
    }

    fn cut(&mut self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for s in self.streams.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    fn restore(&mut self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut();
    }
}

#[actix_rt::test]
async fn readiness_follows_the_database_and_the_server_recovers_by_itself() {
    let pg = support::server::PgDatabase::create();
    let mut relay = Relay::start();
    let relayed = pg
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", relay.port));
    let mut db = Database::new(Backend::Sqlite);
    db.url = relayed;
    db.backend = Backend::Postgres;
    let app = spawn_with(db, |s| s.database.pool_timeout_ms = 1000).await;
    let created = app
        .post_json(
            "/Patient",
            &json!({"resourceType": "Patient", "active": true}),
        )
        .await
        .json();
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(
        app.get(&format!("{}/health/ready", app.root)).await.status,
        StatusCode::OK
    );

    relay.cut();
    // Open pooled connections notice the loss on their next use.
    let mut saw_unavailable = false;
    for _ in 0..20 {
        let r = app.get(&format!("/Patient/{id}")).await;
        assert!(
            r.status == StatusCode::SERVICE_UNAVAILABLE || r.status == StatusCode::OK,
            "{:?}",
            r.status
        );
        if r.status == StatusCode::SERVICE_UNAVAILABLE {
            assert_eq!(r.issue().0, "transient");
            assert!(r.header("retry-after").is_some());
            saw_unavailable = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_unavailable,
        "requests fail with 503 while the database is away"
    );
    assert_eq!(
        app.get(&format!("{}/health/ready", app.root)).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    relay.restore();
    let mut recovered = false;
    for _ in 0..50 {
        if app.get(&format!("{}/health/ready", app.root)).await.status == StatusCode::OK {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(recovered, "ready again once the database is back");
    assert_eq!(
        app.get(&format!("/Patient/{id}")).await.status,
        StatusCode::OK
    );
    drop(pg);
}
