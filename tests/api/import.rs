//! `fhirgate import` as a user runs it (the built binary) on SQLite and PostgreSQL:
//! NDJSON and Bundle files from a folder, bad lines reported by file and line and
//! skipped (or stopping the import with --fail-fast), and an import killed halfway
//! that resumes without storing anything twice. What was imported is checked through
//! the API of a server on the same database, and in its tables.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use awc::http::StatusCode;
use serde_json::{json, Value};

use crate::support;
use crate::support::server::{on_both_backends, spawn_with, Backend, Database};

fn import_command(db: &Database, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fhirgate"));
    cmd.arg("import")
        .args(args)
        .env("FHIRGATE_DATABASE__URL", &db.url)
        .env("FHIRGATE_CRYPTO__MASTER_KEY_FILE", db.key_file())
        .env("FHIRGATE_PACKAGES__CACHE", support::package_cache())
        .env("FHIRGATE_LOG__LEVEL", "warn")
        .current_dir(db.dir.path())
        .stdin(Stdio::null());
    cmd
}

fn import(db: &Database, args: &[&str]) -> Output {
    import_command(db, args)
        .output()
        .expect("run fhirgate import")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn write_lines(path: &Path, lines: &[Value]) {
    let body: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, body).unwrap();
}

async fn ndjson_and_bundle_files_are_imported_through_the_write_path(backend: Backend) {
    let db = Database::new(backend);
    let data = db.dir.path().join("data");
    std::fs::create_dir_all(data.join("nested")).unwrap();
    write_lines(
        &data.join("Patient.ndjson"),
        &(0..3)
            .map(|i| json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": format!("Imported{i}")}]}))
            .collect::<Vec<_>>(),
    );
    write_lines(
        &data.join("nested/Observation.ndjson"),
        &(0..5)
            .map(|i| {
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                             "subject": {"reference": format!("Patient/p{}", i % 3)}})
            })
            .collect::<Vec<_>>(),
    );
    let pat = "urn:uuid:0c7a7c6e-0000-4000-8000-000000000001";
    std::fs::write(
        data.join("transaction.json"),
        serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "transaction", "entry": [
            {"fullUrl": pat, "resource": {"resourceType": "Patient", "name": [{"family": "FromBundle"}]},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": {"resourceType": "Encounter", "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "subject": {"reference": pat}},
             "request": {"method": "POST", "url": "Encounter"}}]}))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(
        data.join("batch.json"),
        serde_json::to_vec(&json!({"resourceType": "Bundle", "type": "batch", "entry": [
            {"resource": {"resourceType": "Patient", "id": "batch1"}, "request": {"method": "PUT", "url": "Patient/batch1"}},
            {"resource": {"resourceType": "Patient", "id": "batch2"}, "request": {"method": "PUT", "url": "Patient/batch2"}}]}))
        .unwrap(),
    )
    .unwrap();
    std::fs::write(data.join("ignored.txt"), "not FHIR").unwrap();
    let out = import(&db, &[data.to_str().unwrap(), "--quiet"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains("imported 12 resources from 4 files"),
        "{}",
        text(&out.stdout)
    );
    // Audited like API writes: one AuditEvent per resource.
    assert_eq!(db.count_rows("audit_log"), 12);
    let again = import(&db, &[data.to_str().unwrap(), "--quiet"]);
    assert!(again.status.success());
    assert!(
        text(&again.stdout).contains("imported 0 resources"),
        "{}",
        text(&again.stdout)
    );

    let app = spawn_with(db, |_| {}).await;
    let p = app.get("/Patient/p1").await;
    assert_eq!(p.status, StatusCode::OK);
    assert_eq!(p.json()["name"][0]["family"], "Imported1");
    let obs = app.get("/Observation?subject=Patient/p0").await.json();
    assert_eq!(obs["total"], 2);
    let enc = app.get("/Encounter").await.json();
    let subject = enc["entry"][0]["resource"]["subject"]["reference"]
        .as_str()
        .unwrap()
        .to_string();
    let from_bundle = app.get(&format!("/{subject}")).await.json();
    assert_eq!(from_bundle["name"][0]["family"], "FromBundle");
    assert_eq!(app.get("/Patient/batch2").await.status, StatusCode::OK);
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn bad_lines_are_reported_by_file_and_line(backend: Backend) {
    let db = Database::new(backend);
    let file = db.dir.path().join("Patient.ndjson");
    std::fs::write(
        &file,
        [
            r#"{"resourceType":"Patient","id":"ok1"}"#,
            r#"{"resourceType":"Patient","id":"bad" "#,
            r#"{"resourceType":"Patient","id":"ok2","birthDate":"1970-02-30"}"#,
            "",
            r#"{"resourceType":"AuditEvent","id":"a1"}"#,
            r#"{"resourceType":"Patient","id":"ok3"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let out = import(&db, &[f, "--quiet", "--batch-size", "2"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("{f}:2: ")), "{err}");
    assert!(
        err.contains(&format!("{f}:3: ")) && err.contains("Patient.birthDate"),
        "{err}"
    );
    assert!(
        err.contains(&format!("{f}:5: ")) && err.contains("AuditEvent"),
        "{err}"
    );
    assert!(!err.contains(":1: ") && !err.contains(":6: "), "{err}");
    assert!(
        text(&out.stdout).contains("imported 2 resources") && text(&out.stdout).contains("3 bad")
    );
    // --fail-fast stops at the first bad line: batch 1 (lines 1-2) is refused whole
    // after reporting, nothing after it runs.
    let db2 = Database::new(backend);
    let out = import(
        &db2,
        &[
            f,
            "--quiet",
            "--batch-size",
            "2",
            "--jobs",
            "1",
            "--fail-fast",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stdout).contains("stopped at the first bad item"),
        "{}",
        text(&out.stdout)
    );
    assert!(text(&out.stderr).contains(&format!("{f}:2: ")));
    assert_eq!(db2.count_rows("resources_current"), 0);
}

async fn an_interrupted_import_resumes_without_storing_anything_twice(backend: Backend) {
    let db = Database::new(backend);
    let file = db.dir.path().join("Observation.ndjson");
    const LINES: usize = 3000;
    write_lines(
        &file,
        &(0..LINES)
            .map(|i| {
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "load"},
                             "identifier": [{"system": "urn:line", "value": i.to_string()}]})
            })
            .collect::<Vec<_>>(),
    );
    let f = file.to_str().unwrap();
    // Make sure the schema exists before polling it.
    let out = import(
        &db,
        &[
            db.dir.path().join("none.ndjson").to_str().unwrap(),
            "--quiet",
        ],
    );
    assert!(!out.status.success());
    let mut child = import_command(&db, &[f, "--quiet", "--batch-size", "50", "--jobs", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the import");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = std::panic::catch_unwind(|| db.count_rows("import_progress")).unwrap_or(0);
        if done >= 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the import made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let stored = db.count_rows("resources_current");
    let batches = db.count_rows("import_progress");
    assert_eq!(
        stored,
        batches * 50,
        "every stored batch is recorded with its data"
    );
    assert!(
        stored < LINES as i64,
        "the kill came too late to test resuming"
    );
    let out = import(&db, &[f, "--quiet", "--batch-size", "50"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains(&format!("imported {} resources", LINES as i64 - stored))
            && summary.contains(&format!("{batches} units already imported")),
        "{summary}"
    );
    assert_eq!(db.count_rows("resources_current"), LINES as i64);
    assert_eq!(db.count_rows("resource_versions"), LINES as i64);
    let app = spawn_with(db, |_| {}).await;
    for i in [0, LINES / 2, LINES - 1] {
        let r = app
            .get(&format!("/Observation?identifier=urn:line|{i}"))
            .await
            .json();
        assert_eq!(r["total"], 1, "line {i}");
    }
    app.assert_every_request_audited().await;
    app.stop().await;
}

async fn a_rerun_retries_the_lines_that_failed_before(backend: Backend) {
    let db = Database::new(backend);
    let file = db.dir.path().join("Patient.ndjson");
    // Lines 2 and 3 break the core invariant pat-1 (a contact with neither name,
    // telecom, address nor organization): refused under validation.mode = full,
    // stored under structure. Line 3 and 4 have no id (POST): a retry must not
    // store line 4 twice.
    std::fs::write(
        &file,
        [
            r#"{"resourceType":"Patient","id":"ok1"}"#,
            r#"{"resourceType":"Patient","id":"contact1","contact":[{"gender":"male"}]}"#,
            r#"{"resourceType":"Patient","contact":[{"gender":"female"}]}"#,
            r#"{"resourceType":"Patient","name":[{"family":"Once"}]}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    let f = file.to_str().unwrap();
    let run = |mode: &str| {
        import_command(&db, &[f, "--quiet", "--batch-size", "10"])
            .env("FHIRGATE_VALIDATION__MODE", mode)
            .output()
            .expect("run fhirgate import")
    };
    let first = run("full");
    assert_eq!(first.status.code(), Some(1), "{}", text(&first.stderr));
    let (err, out) = (text(&first.stderr), text(&first.stdout));
    assert!(
        err.contains(&format!("{f}:2: ")) && err.contains(&format!("{f}:3: ")),
        "{err}"
    );
    assert!(out.contains("imported 2 resources"), "{out}");
    assert_eq!(db.count_rows("import_failures"), 2);

    // Nothing changed: the same two lines are tried again and reported again.
    let second = run("full");
    assert_eq!(second.status.code(), Some(1));
    let (err, out) = (text(&second.stderr), text(&second.stdout));
    assert!(
        err.contains(&format!("{f}:2: ")) && err.contains(&format!("{f}:3: ")),
        "{err}"
    );
    assert!(!err.contains(":1: ") && !err.contains(":4: "), "{err}");
    assert!(
        out.contains("imported 0 resources") && out.contains("2 lines retried"),
        "{out}"
    );
    assert_eq!(db.count_rows("resources_current"), 2);

    // What refused them is lifted: the rerun stores exactly those two lines.
    let third = run("structure");
    assert!(third.status.success(), "{}", text(&third.stderr));
    let out = text(&third.stdout);
    assert!(
        out.contains("imported 2 resources") && out.contains("2 lines retried"),
        "{out}"
    );
    assert_eq!(db.count_rows("resources_current"), 4);
    assert_eq!(db.count_rows("resource_versions"), 4);
    assert_eq!(db.count_rows("import_failures"), 0);

    let fourth = run("structure");
    assert!(fourth.status.success());
    let out = text(&fourth.stdout);
    assert!(
        out.contains("imported 0 resources")
            && out.contains("0 lines retried")
            && out.contains("1 units already imported"),
        "{out}"
    );
    assert_eq!(db.count_rows("resources_current"), 4);
}

async fn a_changed_file_imported_again_stores_only_what_changed(backend: Backend) {
    let db = Database::new(backend);
    let file = db.dir.path().join("Patient.ndjson");
    let lines = |last: &str| {
        (0..3)
            .map(|i| {
                let family = if i == 2 { last } else { "Same" };
                json!({"resourceType": "Patient", "id": format!("p{i}"), "name": [{"family": family}]})
            })
            .collect::<Vec<_>>()
    };
    let f = file.to_str().unwrap();
    write_lines(&file, &lines("Same"));
    let out = import(&db, &[f, "--quiet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(db.count_rows("audit_log"), 3);
    // The same content in a file that is new to the import (another modification
    // time): every line is written again through the write path, and none makes a
    // version; each is audited.
    let touch = |secs: u64| {
        std::fs::File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_modified(std::time::SystemTime::now() + Duration::from_secs(secs))
            .unwrap();
    };
    touch(60);
    let out = import(&db, &[f, "--quiet"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(
        summary.contains("imported 0 resources") && summary.contains("3 unchanged"),
        "{summary}"
    );
    assert_eq!(db.count_rows("resource_versions"), 3);
    assert_eq!(db.count_rows("audit_log"), 6);
    // One line changed: one new version.
    write_lines(&file, &lines("Changed"));
    touch(120);
    let out = import(&db, &[f, "--quiet"]);
    let summary = text(&out.stdout);
    assert!(
        summary.contains("imported 1 resources") && summary.contains("2 unchanged"),
        "{summary}"
    );
    assert_eq!(db.count_rows("resource_versions"), 4);
}

on_both_backends!(
    a_rerun_retries_the_lines_that_failed_before,
    a_changed_file_imported_again_stores_only_what_changed,
    ndjson_and_bundle_files_are_imported_through_the_write_path,
    bad_lines_are_reported_by_file_and_line,
    an_interrupted_import_resumes_without_storing_anything_twice,
);
