//! The audit benchmark's bulk loader (issue 14): fills a database with synthetic
//! AuditEvents through fhirgate's own audit path, for `benches/audit/scale.sh`.
//!
//! Nothing is written around the library: each event is an `AuditRecord` of a
//! made-up interaction (reads, searches with their PatientQuery events, creates,
//! updates, denials with their AuthZ decision, token issues), turned into BALP
//! AuditEvents by `AuditRecord::to_rows` exactly as a request's are, sealed and
//! inserted by `Store::append_audits` (the audit sink the group commit uses),
//! linked by the audit `Chainer` (a thread running beside the inserts, as the
//! server's background chainer does, with its checkpoints), and indexed by the
//! same extraction and commit as the audit indexer's (`SearchEngine::
//! stored_index_rows`, `Store::audit_index_commit`). The only differences from a
//! server's life: `recorded` is spread over the past `--days` instead of being
//! the wall clock, several events are committed per transaction, and the index
//! extraction of a batch runs on all cores (the server's indexer uses one thread).
//!
//! Usage (settings as for `fhirgate serve`: FHIRGATE_DATABASE__URL, the master key
//! or FHIRGATE_CRYPTO__DEV_KEY_FILE, FHIRGATE_PACKAGES__CACHE):
//!   cargo bench --bench audit_load -- EVENTS [--days D] [--patients P] [--users U]
//!       [--clients C] [--seed S] [--skip-index]
//! It prints one JSON line per phase (insert, chain, index) with its duration and
//! rate; patients are `Patient/p0`.., users `Practitioner/pr0`.. (queries.py).
//!
//! Users are drawn skewed (the product of two uniform draws): the busiest user,
//! `Practitioner/pr0`, makes t(1 - ln t) of the interactions for t = 1/users, about
//! ten times the average user's share (0.19 % with `--users 5000`).

#![allow(clippy::disallowed_macros)] // a benchmark tool reports on stdout

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fhirgate::access::AccessContext;
use fhirgate::audit::chain::Chainer;
use fhirgate::audit::{AuditRecord, AuthEvent, Interaction, Outcome};
use fhirgate::config::Settings;
use fhirgate::search::{audit_index, SearchEngine};
use fhirgate::store::{IndexedAudit, Store};

/// Interactions per transaction of the inserting threads.
const APPEND_BATCH: usize = 500;
/// AuditEvents per index batch (read, extracted on every core, committed).
const INDEX_BATCH: usize = 4000;

struct Args {
    events: u64,
    days: u64,
    patients: u64,
    users: u64,
    clients: u64,
    seed: u64,
    skip_index: bool,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        events: 0,
        days: 730,
        patients: 100_000,
        users: 5_000,
        clients: 40,
        seed: 1,
        skip_index: false,
    };
    let mut it = std::env::args().skip(1).filter(|s| s != "--bench");
    while let Some(s) = it.next() {
        let mut num = |name: &str| -> Result<u64, String> {
            it.next()
                .and_then(|v| v.replace('_', "").parse().ok())
                .ok_or(format!("{name} needs a number"))
        };
        match s.as_str() {
            "--days" => a.days = num("--days")?,
            "--patients" => a.patients = num("--patients")?,
            "--users" => a.users = num("--users")?,
            "--clients" => a.clients = num("--clients")?,
            "--seed" => a.seed = num("--seed")?,
            "--skip-index" => a.skip_index = true,
            n => {
                a.events = n
                    .replace('_', "")
                    .parse()
                    .map_err(|_| format!("not a number of events: {n}"))?
            }
        }
    }
    if a.events == 0 || a.patients == 0 || a.users == 0 || a.clients == 0 || a.days == 0 {
        return Err("usage: audit_load EVENTS [--days D] [--patients P] [--users U] [--clients C] [--seed S] [--skip-index]".into());
    }
    Ok(a)
}

/// splitmix64: a small deterministic generator (the loader's draws need no more).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// One made-up interaction at `recorded` (microseconds).
fn interaction(a: &Args, rng: &mut Rng) -> AuditRecord {
    let user = (a.users as f64 * rng.unit() * rng.unit()) as u64;
    let patient = format!("Patient/p{}", rng.below(a.patients));
    let mut ctx = AccessContext::open(
        uuid::Uuid::new_v4().to_string(),
        Some(format!(
            "10.{}.{}.{}",
            user % 200,
            (user / 200) % 250,
            1 + rng.below(250)
        )),
    );
    ctx.client_id = Some(format!("app-{}", user % a.clients));
    ctx.user = Some(format!("Practitioner/pr{user}"));
    ctx.subject = Some(format!("user{user}"));
    ctx.token_id = Some(uuid::Uuid::new_v4().to_string());
    let roll = rng.below(100);
    let (interaction, rtype) = match roll {
        0..=54 => (Interaction::Read, "Observation"),
        55..=74 => (Interaction::SearchType, "Observation"),
        75..=84 => (Interaction::Create, "Observation"),
        85..=91 => (Interaction::Update, "Observation"),
        92..=94 => (Interaction::Read, "Patient"),
        95..=96 => (Interaction::Read, "Condition"),
        _ => (Interaction::Auth(AuthEvent::TokenIssued), ""),
    };
    let mut r = AuditRecord::new(interaction.clone(), &ctx);
    match interaction {
        Interaction::Auth(_) => {
            r.query =
                Some("grant_type=authorization_code scope=launch/patient patient/*.rs".into());
        }
        Interaction::SearchType => {
            r.resource_type = Some(rtype.into());
            r.query = Some(format!(
                "/fhir/Observation?patient={patient}&category=vital-signs&_count=50"
            ));
            r.page_patients = vec![patient];
        }
        _ => {
            r.resource_type = Some(rtype.into());
            let id = if rtype == "Patient" {
                patient.trim_start_matches("Patient/").to_string()
            } else {
                format!("o{}", rng.below(a.patients * 20))
            };
            r.id = Some(id);
            r.version = Some(1 + rng.below(3) as i64);
            r.patients = vec![patient];
            // One read in 50 is refused by the access decision.
            if roll == 0 {
                r.outcome = Outcome::ClientError("the token does not permit this patient".into());
                r.denied = true;
            }
        }
    }
    r
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            println!("{{\"error\": {:?}}}", e.to_string());
            std::process::ExitCode::FAILURE
        }
    }
}

fn report(phase: &str, count: u64, took: Duration, extra: serde_json::Value) {
    let secs = took.as_secs_f64();
    let mut line = serde_json::json!({
        "phase": phase,
        "count": count,
        "seconds": (secs * 10.0).round() / 10.0,
        "per_second": (count as f64 / secs.max(1e-9)).round(),
    });
    if let (Some(l), Some(e)) = (line.as_object_mut(), extra.as_object()) {
        l.extend(e.clone());
    }
    println!("{line}");
}

fn run() -> anyhow::Result<()> {
    let a = Arc::new(args().map_err(anyhow::Error::msg)?);
    let settings = Settings::load(None)?;
    let store = fhirgate::startup::open_store(&settings, true)?;
    let base = settings.base_url();
    let observer = settings.audit.observer.clone();
    let now = fhirgate::fhir::now_micros();
    let span = a.days as i64 * 86_400 * 1_000_000;
    let start = now - span;

    // 1. Insert, two threads, with the chainer linking behind them.
    let chainer = Arc::new(Chainer::new(
        store.clone(),
        fhirgate::startup::chain_policy(&settings),
    ));
    let inserting = Arc::new(AtomicBool::new(true));
    let linker = {
        let (chainer, inserting) = (chainer.clone(), inserting.clone());
        std::thread::spawn(move || -> anyhow::Result<i64> {
            loop {
                let still = inserting.load(Ordering::Acquire);
                let head = chainer.catch_up()?;
                if !still {
                    return Ok(head);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let t0 = Instant::now();
    let rows_made = Arc::new(AtomicU64::new(0));
    let threads = 2u64;
    let mut handles = Vec::new();
    for t in 0..threads {
        let (a, store, base, observer, rows_made) = (
            a.clone(),
            store.clone(),
            base.clone(),
            observer.clone(),
            rows_made.clone(),
        );
        handles.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let mut rng = Rng(a.seed.wrapping_mul(1_000_003).wrapping_add(t));
            // This thread's share of the interactions, in time order.
            let mut i = t;
            let mut batch = Vec::with_capacity(APPEND_BATCH * 2);
            while i < a.events {
                for _ in 0..APPEND_BATCH {
                    if i >= a.events {
                        break;
                    }
                    let at = start + (span as f64 * i as f64 / a.events as f64) as i64;
                    batch.extend(interaction(&a, &mut rng).to_rows(&base, &observer, at));
                    i += threads;
                }
                store.append_audits(&batch)?;
                rows_made.fetch_add(batch.len() as u64, Ordering::Relaxed);
                batch.clear();
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| anyhow::anyhow!("an inserting thread panicked"))??;
    }
    let events = rows_made.load(Ordering::Relaxed);
    report(
        "insert",
        events,
        t0.elapsed(),
        serde_json::json!({"interactions": a.events}),
    );
    inserting.store(false, Ordering::Release);
    let t1 = Instant::now();
    let head = linker
        .join()
        .map_err(|_| anyhow::anyhow!("the chainer thread panicked"))??;
    report(
        "chain (after the inserts; it ran beside them)",
        events,
        t0.elapsed(),
        serde_json::json!({"head": head, "tail_seconds": t1.elapsed().as_secs_f64()}),
    );

    // 2. Index: the engine over the loaded packages, as the server builds it.
    if !a.skip_index {
        let t2 = Instant::now();
        let indexed = index(&settings, &store, &base)?;
        report("index", indexed, t2.elapsed(), serde_json::json!({}));
    }
    Ok(())
}

fn index(settings: &Settings, store: &Store, base: &str) -> anyhow::Result<u64> {
    let model = fhirgate::startup::load_model(settings)?;
    let validator = fhirgate::startup::build_validator(settings, &model)?;
    let engine = SearchEngine::new(
        model.clone(),
        validator.terminology().clone(),
        base.to_string(),
        fhirgate::startup::search_settings(settings),
    );
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let mut indexed = 0u64;
    let mut last_note = Instant::now();
    loop {
        let state = store.audit_index_state()?;
        let found = store.audit_unindexed(&state, INDEX_BATCH)?;
        if found.is_empty() {
            return Ok(indexed);
        }
        let through = audit_index::reached(&state, &found);
        let chunk = found.len().div_ceil(workers);
        let rows: Vec<IndexedAudit> = std::thread::scope(|s| {
            let parts: Vec<_> = found
                .chunks(chunk)
                .map(|part| {
                    let engine = &engine;
                    s.spawn(move || audit_index::extract(engine, part))
                })
                .collect();
            parts
                .into_iter()
                .flat_map(|p| p.join().unwrap_or_default())
                .collect()
        });
        if rows.len() != found.len() {
            anyhow::bail!("an extraction thread failed");
        }
        if !store.audit_index_commit(&state, &rows, through)? {
            anyhow::bail!("another indexer moved the audit index state: stop the servers on this database while loading");
        }
        indexed += rows.len() as u64;
        if last_note.elapsed() > Duration::from_secs(30) {
            println!("{{\"phase\": \"index (progress)\", \"count\": {indexed}}}");
            last_note = Instant::now();
        }
    }
}
