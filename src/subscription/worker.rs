//! The delivery worker: one per node. It leases subscriptions with undelivered
//! events from the database (two nodes never deliver one subscription at once; a
//! dead node's lease runs out after [`LEASE`]), sends each subscription's events
//! in order over its rest-hook, and records every attempt. A failure waits before
//! the next try (the first within 5 s, then doubling up to 10 minutes, with
//! jitter); after `subscriptions.retry_hours` of failures the subscription's
//! status becomes `error`. Each subscription is delivered on a thread of its own
//! (at most [`PARALLEL`] at once), so a slow endpoint holds up only itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use serde_json::{json, Value};

use super::deliver::{self, Outcome};
use super::rules::{self, Payload};
use crate::access::{AccessContext, Owner};
use crate::audit::{AuditRecord, AuditWriter, Interaction};
use crate::config::SubscriptionSettings;
use crate::search::SearchEngine;
use crate::store::{Attempt, AuditRow, DeliveryRow, EventRow, Store, WeakStore};

/// How long a node holds a subscription without renewing (each attempt renews).
pub const LEASE: Duration = Duration::from_secs(20);
/// Subscriptions delivered at once by one node.
pub const PARALLEL: usize = 8;
/// Events read from the outbox at a time.
const EVENTS_PER_READ: i64 = 100;
/// A subscription's turn: its events are sent until none is left or this has
/// passed; then the lease is given back (others get the thread).
const TURN: Duration = Duration::from_secs(2);
/// Attempts recorded in one transaction at most...
const RECORD_EVERY: usize = 50;
/// ...and at the latest this long after the first of them was made (a node
/// that dies before recording re-sends at most these: at-least-once).
const RECORD_AFTER: Duration = Duration::from_millis(100);
/// The first retry comes within this at the latest (DESIGN section 13;
/// `subscriptions.first_retry_ms`)...
const FIRST_RETRY: Duration = Duration::from_secs(5);
/// ...then the wait doubles up to this.
const MAX_RETRY: Duration = Duration::from_secs(600);

/// A sender (its kept-alive connection) idle this long is dropped...
const KEEP_SENDER: Duration = Duration::from_secs(10);
/// ...and at most these are kept.
const KEPT_SENDERS: usize = 256;
/// How often a node removes events and attempts past the retention.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// Rows of each table removed per transaction when pruning.
const PRUNE_BATCH: i64 = 5000;

/// Wakes the delivery workers of this process at once (a write that stored
/// notifications); without it they look every `poll_interval_ms`.
static WAKE: Mutex<u64> = Mutex::new(0);
static WOKEN: Condvar = Condvar::new();

/// The same wake-ups for async waiters (bound websockets).
static ASYNC_WAKE: std::sync::OnceLock<tokio::sync::watch::Sender<u64>> =
    std::sync::OnceLock::new();

fn async_wake() -> &'static tokio::sync::watch::Sender<u64> {
    ASYNC_WAKE.get_or_init(|| tokio::sync::watch::channel(0).0)
}

/// Woken whenever [`wake`] is called (a websocket session waits on it).
pub fn wakes() -> tokio::sync::watch::Receiver<u64> {
    async_wake().subscribe()
}

pub fn wake() {
    let n = {
        let mut n = WAKE.lock();
        *n += 1;
        *n
    };
    WOKEN.notify_all();
    async_wake().send_replace(n);
}

fn wait(last: &mut u64, timeout: Duration) {
    let mut n = WAKE.lock();
    if *n == *last {
        WOKEN.wait_for(&mut n, timeout);
    }
    *last = *n;
}

/// The delivery metrics (registered with the server's Prometheus registry).
#[derive(Clone)]
pub struct DeliveryMetrics {
    /// Attempts by outcome: `delivered`, `failed` (the endpoint's answer or a
    /// network error), `refused` (the endpoint's addresses are not allowed).
    pub deliveries: prometheus::IntCounterVec,
    /// From the change's commit to the receiver's 2xx, in seconds.
    pub latency: prometheus::Histogram,
}

impl DeliveryMetrics {
    pub fn new() -> DeliveryMetrics {
        DeliveryMetrics {
            deliveries: prometheus::IntCounterVec::new(
                prometheus::Opts::new(
                    "fhirgate_subscription_deliveries_total",
                    "rest-hook delivery attempts of this node by outcome (delivered, failed, refused)",
                ),
                &["outcome"],
            )
            .expect("static metric definition"),
            latency: prometheus::Histogram::with_opts(
                prometheus::HistogramOpts::new(
                    "fhirgate_subscription_delivery_latency_seconds",
                    "From a change's commit to its notification's delivery (rest-hook, this node)",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0,
                ]),
            )
            .expect("static metric definition"),
        }
    }

    pub fn register(&self, registry: &prometheus::Registry) {
        let _ = registry.register(Box::new(self.deliveries.clone()));
        let _ = registry.register(Box::new(self.latency.clone()));
    }
}

impl Default for DeliveryMetrics {
    fn default() -> Self {
        DeliveryMetrics::new()
    }
}

/// What the worker needs to write a Subscription's new status through the one
/// write path (bundle) as the server itself.
#[derive(Clone)]
pub struct WritePath {
    pub model: Arc<crate::fhir::Model>,
    pub compartment: Arc<crate::fhir::compartment::PatientCompartment>,
    pub gate: Arc<crate::validation::WriteGate>,
}

/// What a delivery needs, shared by the worker's threads.
struct Worker {
    store: WeakStore,
    engine: Weak<SearchEngine>,
    write_path: WritePath,
    audit: AuditWriter,
    settings: SubscriptionSettings,
    node: String,
    base_url: String,
    busy: AtomicUsize,
    metrics: DeliveryMetrics,
    /// The subscriptions' generation as read at the latest round.
    generation: std::sync::atomic::AtomicI64,
    /// What turns need of each subscription, under a generation.
    profiles: Mutex<std::collections::HashMap<String, Arc<Profile>>>,
    /// The senders of recent turns by subscription: the next turn reuses the
    /// kept-alive connection (no new TCP and TLS handshake per event when events
    /// come one at a time).
    senders: Mutex<std::collections::HashMap<String, (deliver::Sender, std::time::Instant)>>,
}

/// Starts this node's delivery worker (nothing when subscriptions are off).
pub fn start(
    store: &Store,
    engine: &Arc<SearchEngine>,
    audit: &AuditWriter,
    settings: &SubscriptionSettings,
    base_url: &str,
    metrics: &DeliveryMetrics,
    write_path: WritePath,
) {
    if !settings.enabled {
        return;
    }
    let worker = Arc::new(Worker {
        store: store.downgrade(),
        engine: Arc::downgrade(engine),
        write_path,
        audit: audit.clone(),
        settings: settings.clone(),
        node: format!("node-{}", uuid::Uuid::new_v4()),
        base_url: base_url.trim_end_matches('/').to_string(),
        busy: AtomicUsize::new(0),
        metrics: metrics.clone(),
        senders: Mutex::new(std::collections::HashMap::new()),
        generation: std::sync::atomic::AtomicI64::new(-1),
        profiles: Mutex::new(std::collections::HashMap::new()),
    });
    // Other nodes' commits wake this one (PostgreSQL LISTEN/NOTIFY).
    store.on_notifications(wake);
    let poll = Duration::from_millis(settings.poll_interval_ms.max(10));
    let spawned = std::thread::Builder::new()
        .name("subscription-delivery".into())
        .spawn(move || {
            let mut seen = 0;
            let mut pruned = std::time::Instant::now();
            loop {
                let Some(store) = worker.store.upgrade() else {
                    return;
                };
                worker.round(&store);
                if pruned.elapsed() >= PRUNE_EVERY {
                    worker.prune(&store);
                    pruned = std::time::Instant::now();
                }
                drop(store);
                wait(&mut seen, poll);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the subscription delivery worker could not start");
    }
}

impl Worker {
    /// Leases what is due and hands each subscription to a thread of its own.
    fn round(self: &Arc<Self>, store: &Store) {
        // Idle kept connections close even when no turn comes to keep another.
        let now = std::time::Instant::now();
        self.senders
            .lock()
            .retain(|_, (_, at)| now.duration_since(*at) < KEEP_SENDER);
        let free = PARALLEL.saturating_sub(self.busy.load(Ordering::SeqCst));
        if free == 0 {
            return;
        }
        let now = crate::fhir::now_micros();
        let until = now + LEASE.as_micros() as i64;
        // Read before the lease: a write of a Subscription committed after this
        // read moves the generation, and the next round reads it again.
        match store.subscription_generation() {
            Ok(g) => self.generation.store(g, Ordering::SeqCst),
            Err(e) => {
                tracing::warn!(error = %e, "the subscriptions' generation could not be read; trying again");
                return;
            }
        }
        let due = match store.claim_subscriptions(&self.node, now, until, free as i64) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "subscriptions due could not be read; trying again");
                return;
            }
        };
        for row in due {
            self.busy.fetch_add(1, Ordering::SeqCst);
            let me = self.clone();
            let leased_id = row.subscription_id.clone();
            let store_of_thread = store.clone();
            let spawned = std::thread::Builder::new()
                .name("subscription-send".into())
                .spawn(move || {
                    let store = store_of_thread;
                    let id = row.subscription_id.clone();
                    if let Err(e) = me.deliver(&store, row) {
                        tracing::warn!(subscription.id = %id, error = %e, "a subscription's delivery stopped; it is tried again");
                        // Not at once: what failed may fail again (no spinning).
                        let later = crate::fhir::now_micros()
                            + backoff(1, me.first_retry()).as_micros() as i64;
                        let _ = store.postpone_subscription(&me.node, &id, later);
                    }
                    me.busy.fetch_sub(1, Ordering::SeqCst);
                    wake();
                });
            if spawned.is_err() {
                self.busy.fetch_sub(1, Ordering::SeqCst);
                let _ = store.release_subscription(&self.node, &leased_id);
            }
        }
    }

    /// Removes events and attempts older than `subscriptions.retention_hours`
    /// (0: kept for ever), a batch per transaction, up to 20 batches a time.
    fn prune(&self, store: &Store) {
        if self.settings.retention_hours == 0 {
            return;
        }
        let cutoff = crate::fhir::now_micros()
            - (self.settings.retention_hours as i64).saturating_mul(3_600_000_000);
        // Bounded: deliveries wait meanwhile; the rest goes at the next prune.
        for _ in 0..20 {
            match store.prune_subscription_history(cutoff, PRUNE_BATCH) {
                Ok(n) if n > 0 => {
                    tracing::debug!(
                        removed = n,
                        "subscription events and attempts past the retention removed"
                    );
                }
                Ok(_) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "subscription events past the retention could not be removed; trying again later");
                    return;
                }
            }
        }
    }

    /// A leased subscription's turn: sends its events in order over one kept
    /// connection until one fails, none is left, or [`TURN`] has passed; records
    /// the attempts in batches; gives the lease back at the end.
    fn deliver(&self, store: &Store, leased: DeliveryRow) -> Result<(), String> {
        let mut batch = Batch::default();
        let done = self.turn(store, leased, &mut batch);
        if done.is_err() && !batch.audits.is_empty() {
            // Posts were made but could not be recorded: their AuditEvents
            // (disclosures among them) are kept all the same.
            if let Err(e) = store.append_audits(&batch.audits) {
                tracing::error!(error = %e, "the AuditEvents of subscription deliveries could not be stored");
            }
        }
        done
    }

    /// What a turn needs of a subscription that only a write of it changes:
    /// kept while the generation read at the round stays (every such write moves
    /// it), so a turn of one event reads nothing but its events.
    fn profile(
        &self,
        store: &Store,
        engine: &SearchEngine,
        row: &DeliveryRow,
        generation: i64,
    ) -> Result<Arc<Profile>, String> {
        let id = row.subscription_id.as_str();
        if let Some(p) = self.profiles.lock().get(id) {
            if p.generation == generation && p.created_version == row.created_version {
                return Ok(p.clone());
            }
        }
        let (resource_type, owner) = store
            .subscription_owner(id)
            .map_err(|e| e.to_string())?
            .ok_or("the subscription is gone")?;
        let owner: Owner = serde_json::from_slice(&owner).map_err(|e| e.to_string())?;
        let owner = owner.context(engine, &format!("subscription-{id}"));
        let system = AccessContext::system();
        let current = store
            .read(&system, &resource_type, id, None)
            .map_err(|e| e.to_string())?
            .ok_or("the subscription's resource is gone")?;
        let subscription: Value =
            serde_json::from_slice(&current.body).map_err(|e| e.to_string())?;
        let secret = store
            .subscription_secret_of(id, row.created_version)
            .map_err(|e| e.to_string())?;
        let profile = Arc::new(Profile {
            generation,
            created_version: row.created_version,
            channel: rules::channel(&subscription, &self.settings),
            resource_type,
            owner,
            secret,
        });
        let mut kept = self.profiles.lock();
        kept.retain(|_, p| p.generation == generation);
        kept.insert(id.to_string(), profile.clone());
        Ok(profile)
    }

    /// The turn itself; the attempts made and not yet recorded are in `batch`.
    fn turn(&self, store: &Store, leased: DeliveryRow, batch: &mut Batch) -> Result<(), String> {
        // The state as the lease left it (the lease returns the row).
        let row = leased;
        let id = row.subscription_id.as_str();
        let engine = self.engine.upgrade().ok_or("the server is stopping")?;
        let generation = self.generation.load(Ordering::SeqCst);
        let profile = self.profile(store, &engine, &row, generation)?;
        let Profile {
            resource_type,
            owner,
            channel,
            secret,
            ..
        } = &*profile;
        let (resource_type, owner, channel, secret) =
            (resource_type.as_str(), owner, channel, secret.as_str());
        let mut sender = self.take_sender(id);
        let turn = std::time::Instant::now();
        let mut delivered_up_to = row.delivered;
        let mut attempts = row.attempts;
        let mut failing_since = row.failing_since;
        let mut first_read = true;
        'turn: while turn.elapsed() < TURN {
            let events = store
                .subscription_events(id, delivered_up_to, EVENTS_PER_READ)
                .map_err(|e| e.to_string())?;
            if events.is_empty() {
                if first_read && row.last_event > row.delivered {
                    // Its undelivered events were removed (retention): nothing
                    // is left to send up to the number read with the lease
                    // (an event committed since has a higher one). The receiver
                    // sees the gap.
                    store
                        .advance_delivered(id, row.last_event)
                        .map_err(|e| e.to_string())?;
                }
                break;
            }
            first_read = false;
            for event in events {
                if turn.elapsed() >= TURN {
                    break 'turn;
                }
                let now = crate::fhir::now_micros();
                let (outcome, host, patients) =
                    self.send(store, owner, channel, &mut sender, secret, &event);
                let delivered = matches!(outcome, Outcome::Delivered { .. });
                let label = match &outcome {
                    Outcome::Delivered { .. } => "delivered",
                    Outcome::Failed { .. } => "failed",
                    Outcome::Refused(_) => "refused",
                };
                self.metrics.deliveries.with_label_values(&[label]).inc();
                if delivered {
                    self.metrics
                        .latency
                        .observe((crate::fhir::now_micros() - event.recorded).max(0) as f64 / 1e6);
                }
                let (status_code, detail) = match &outcome {
                    Outcome::Delivered { status } => (Some(*status), String::new()),
                    Outcome::Failed { status, detail } => (*status, detail.clone()),
                    Outcome::Refused(e) => (None, e.to_string()),
                };
                let (next_attempt, error) = if delivered {
                    delivered_up_to = event.event_number;
                    (0, None)
                } else {
                    attempts += 1;
                    let since = *failing_since.get_or_insert(now);
                    let give_up = now - since
                        >= (self.settings.retry_hours as i64).saturating_mul(3_600_000_000);
                    let error = give_up.then(|| {
                        format!(
                            "event {} could not be delivered for {} hours: {detail}",
                            event.event_number, self.settings.retry_hours
                        )
                    });
                    (
                        now + backoff(attempts, self.first_retry()).as_micros() as i64,
                        error,
                    )
                };
                let mut record =
                    self.audit_record(owner, id, &event, host.as_deref(), delivered, &detail);
                // A payload with a patient's data is a disclosure of it (the
                // accounting of disclosures lists it).
                record.patients = patients;
                batch.add(
                    Attempt {
                        node: self.node.clone(),
                        event_number: event.event_number,
                        at: now,
                        delivered,
                        status_code,
                        detail,
                        next_attempt,
                        error: error.clone(),
                        lease_until: crate::fhir::now_micros() + LEASE.as_micros() as i64,
                    },
                    self.audit.rows(&record),
                );
                if !delivered {
                    // A failed post left no connection worth keeping.
                    self.record(store, id, batch, true)?;
                    if let Some(e) = error {
                        tracing::warn!(subscription.id = %id, "a subscription is in error: {e}");
                        self.write_status(store, &engine, owner, resource_type, id, &e);
                    }
                    return Ok(());
                }
                if batch.due() {
                    self.record(store, id, batch, false)?;
                }
            }
        }
        self.keep_sender(id, sender);
        self.record(store, id, batch, true)
    }

    /// The sender kept from the subscription's last turn, or a new one.
    fn take_sender(&self, id: &str) -> deliver::Sender {
        match self.senders.lock().remove(id) {
            Some((sender, _)) => sender,
            None => deliver::Sender::new(&rules::endpoint_rules(&self.settings)),
        }
    }

    /// Keeps a turn's sender for the next; those idle for [`KEEP_SENDER`] are
    /// dropped (their connections closed), and at most [`KEPT_SENDERS`] are kept.
    fn keep_sender(&self, id: &str, sender: deliver::Sender) {
        let mut kept = self.senders.lock();
        let now = std::time::Instant::now();
        kept.retain(|_, (_, at)| now.duration_since(*at) < KEEP_SENDER);
        if kept.len() < KEPT_SENDERS {
            kept.insert(id.to_string(), (sender, now));
        }
    }

    /// Records the batch's attempts (one transaction), giving the lease back
    /// when `release`; an error when the lease ran out meanwhile.
    fn record(
        &self,
        store: &Store,
        id: &str,
        batch: &mut Batch,
        release: bool,
    ) -> Result<(), String> {
        let recorded = store
            .record_deliveries(&self.node, id, &batch.attempts, &batch.audits, release)
            .map_err(|e| e.to_string())?;
        *batch = Batch::default();
        if recorded {
            Ok(())
        } else {
            Err("the lease ran out".into())
        }
    }

    /// Sends one event over the channel: the outcome, the endpoint's host (for
    /// the audit trail) and the patients whose data the payload carried.
    fn send(
        &self,
        store: &Store,
        owner: &AccessContext,
        channel: &Result<rules::Channel, crate::fhir::outcome::Issue>,
        sender: &mut deliver::Sender,
        secret: &str,
        event: &EventRow,
    ) -> (Outcome, Option<String>, Vec<String>) {
        let ch = match channel {
            Ok(ch) => ch,
            Err(issue) => {
                return (
                    Outcome::Failed {
                        status: None,
                        detail: issue.diagnostics.clone(),
                    },
                    None,
                    Vec::new(),
                )
            }
        };
        let (body, patients) = self.payload(store, owner, ch.payload, event);
        let mut headers = ch.headers.clone();
        headers.push((
            "X-Fhirgate-Signature".into(),
            deliver::signature(secret, &body),
        ));
        headers.push((
            "X-Fhirgate-Event-Number".into(),
            event.event_number.to_string(),
        ));
        let request = deliver::Request {
            url: &ch.endpoint,
            headers: &headers,
            body: &body,
            content_type: (!body.is_empty()).then_some("application/fhir+json"),
            // Well inside the lease, which each recorded batch renews: a
            // delivery never outlives it (another node would take over).
            timeout: Duration::from_secs(self.settings.delivery_timeout_secs.max(1)).min(LEASE / 3),
        };
        (sender.post(&request), host_of(&ch.endpoint), patients)
    }

    /// Writes the Subscription's new version with `status` `error` and the
    /// reason (R4 `Subscription.error`), on behalf of its owner, through the one
    /// write path (audited with the data; its delivery row follows the status).
    /// A version written meanwhile by its owner wins: the update names the
    /// version it read (`If-Match`). An owner who may not update it keeps the
    /// resource as it is (the delivery row and `$events` say `error`).
    fn write_status(
        &self,
        store: &Store,
        engine: &SearchEngine,
        owner: &AccessContext,
        resource_type: &str,
        id: &str,
        error: &str,
    ) {
        use crate::bundle::{Entry, Env, Method, Origin, Payload};
        // Read as the server; written as the owner, so the Subscription keeps its
        // owner (a write records its writer as the owner).
        let system = AccessContext::open(format!("subscription-{id}"), None);
        let Ok(Some(current)) = store.read(&system, resource_type, id, None) else {
            return;
        };
        let Ok(mut resource) = serde_json::from_slice::<Value>(&current.body) else {
            return;
        };
        if let Some(o) = resource.as_object_mut() {
            o.insert("status".into(), Value::String("error".into()));
            o.insert("error".into(), Value::String(error.to_string()));
        }
        let url = format!("{resource_type}/{id}");
        let target = match crate::bundle::parse_target(&self.write_path.model, &self.base_url, &url)
        {
            Ok(t) => t,
            Err(e) => {
                tracing::warn!(subscription.id = %id, "the error status could not be written: {e}");
                return;
            }
        };
        let entry = Entry {
            origin: Origin::Request,
            full_url: None,
            method: Method::Put,
            url,
            target,
            payload: Payload::Resource(resource),
            if_match: Some(current.version),
            if_none_exist: None,
            if_none_match: None,
            if_modified_since: None,
        };
        let env = Env {
            model: &self.write_path.model,
            search: engine,
            store,
            audit: &self.audit,
            compartment: &self.write_path.compartment,
            gate: &self.write_path.gate,
            ctx: owner,
            base_url: &self.base_url,
            return_bodies: false,
            subscriptions: &self.settings,
        };
        if let Err(failed) = crate::bundle::process_entry(&env, &entry, None) {
            let (e, record) = *failed;
            tracing::warn!(subscription.id = %id, error = %e, "the error status could not be written");
            let _ = store.append_audits(&self.audit.rows(&record));
        }
    }

    fn first_retry(&self) -> Duration {
        Duration::from_millis(self.settings.first_retry_ms).min(FIRST_RETRY)
    }

    /// The body of one notification (empty for a ping) and the patients whose
    /// data it carries (a full resource in a patient's compartment).
    fn payload(
        &self,
        store: &Store,
        owner: &AccessContext,
        payload: Payload,
        e: &EventRow,
    ) -> (Vec<u8>, Vec<String>) {
        if payload == Payload::Empty {
            return (Vec::new(), Vec::new());
        }
        let resource = match (payload, e.action.as_str()) {
            (Payload::FullResource, "create" | "update") => store
                .read(owner, &e.resource_type, &e.resource_id, Some(e.version_id))
                .ok()
                .flatten()
                .and_then(|v| serde_json::from_slice::<Value>(&v.body).ok()),
            _ => None,
        };
        let url = format!("{}/{}", e.resource_type, e.resource_id);
        let (method, status) = match e.action.as_str() {
            "create" => ("POST", "201 Created"),
            "delete" => ("DELETE", "204 No Content"),
            _ => ("PUT", "200 OK"),
        };
        let mut entry = json!({
            "fullUrl": format!("{}/{url}/_history/{}", self.base_url, e.version_id),
            "request": {"method": method, "url": url},
            "response": {
                "status": status,
                "etag": format!("W/\"{}\"", e.version_id),
                "lastModified": crate::fhir::instant(e.recorded),
            },
        });
        let mut patients = Vec::new();
        if let (Some(r), Some(o)) = (resource, entry.as_object_mut()) {
            patients = self.write_path.compartment.patients_of(
                &e.resource_type,
                Some(&e.resource_id),
                Some(&r),
            );
            o.insert("resource".into(), r);
        }
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "history",
            "timestamp": crate::fhir::instant(crate::fhir::now_micros()),
            "entry": [entry],
        });
        (serde_json::to_vec(&bundle).unwrap_or_default(), patients)
    }

    /// Each attempt is an AuditEvent: the subscription, the endpoint's host, the
    /// event number and the outcome (never the payload or header values).
    fn audit_record(
        &self,
        owner: &AccessContext,
        id: &str,
        e: &EventRow,
        host: Option<&str>,
        delivered: bool,
        detail: &str,
    ) -> AuditRecord {
        let mut ctx = owner.clone();
        ctx.remote_addr = host.map(str::to_string);
        let mut record =
            AuditRecord::new(Interaction::Operation("subscription-delivery".into()), &ctx);
        record.resource_type = Some(rules::RESOURCE_TYPE.to_string());
        record.id = Some(id.to_string());
        record.query = Some(format!("event={}", e.event_number));
        if !delivered {
            record.outcome = crate::audit::Outcome::ServerError(format!(
                "delivery of event {} failed: {detail}",
                e.event_number
            ));
        }
        record
    }
}

/// What a turn needs of a subscription (see `Worker::profile`).
struct Profile {
    generation: i64,
    created_version: i64,
    /// The type its resource is stored under.
    resource_type: String,
    owner: AccessContext,
    channel: Result<rules::Channel, crate::fhir::outcome::Issue>,
    secret: String,
}

/// Attempts made and not yet recorded, with their AuditEvents.
#[derive(Default)]
struct Batch {
    attempts: Vec<Attempt>,
    audits: Vec<AuditRow>,
    since: Option<std::time::Instant>,
}

impl Batch {
    fn add(&mut self, attempt: Attempt, audits: Vec<AuditRow>) {
        self.since.get_or_insert_with(std::time::Instant::now);
        self.attempts.push(attempt);
        self.audits.extend(audits);
    }

    /// Time to record: enough attempts, or the first waited long enough.
    fn due(&self) -> bool {
        self.attempts.len() >= RECORD_EVERY
            || self.since.is_some_and(|t| t.elapsed() >= RECORD_AFTER)
    }
}

/// The host of an endpoint URL, for the audit trail.
fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    Some(authority.rsplit('@').next()?.to_string())
}

/// The wait before the next try after `attempts` failures: `first` at most,
/// then doubling up to 10 minutes, less a random quarter (jitter: receivers that
/// come back are not hit by every subscription at once).
pub fn backoff(attempts: i64, first: Duration) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 16) as u32;
    let full = first
        .saturating_mul(2u32.saturating_pow(doublings))
        .min(MAX_RETRY);
    let mut r = [0u8; 2];
    let jitter = if openssl::rand::rand_bytes(&mut r).is_ok() {
        f64::from(u16::from_be_bytes(r)) / f64::from(u16::MAX) * 0.25
    } else {
        0.0
    };
    full.mul_f64(1.0 - jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_start_within_five_seconds_and_double_up_to_ten_minutes() {
        for (attempts, max) in [(1, 5), (2, 10), (3, 20), (4, 40), (8, 600), (40, 600)] {
            let w = backoff(attempts, FIRST_RETRY);
            assert!(w <= Duration::from_secs(max), "{attempts}: {w:?}");
            assert!(
                w >= Duration::from_secs(max).mul_f64(0.75) - Duration::from_millis(1),
                "{attempts}: {w:?}"
            );
        }
    }

    #[test]
    fn the_audited_host_has_no_credentials_or_path() {
        assert_eq!(
            host_of("https://u:p@example.org:8443/hook?x=1").as_deref(),
            Some("example.org:8443")
        );
        assert_eq!(
            host_of("http://127.0.0.1:9/").as_deref(),
            Some("127.0.0.1:9")
        );
        assert_eq!(host_of("nonsense"), None);
    }
}
