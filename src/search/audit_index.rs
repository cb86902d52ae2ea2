//! The audit indexer: AuditEvents get their search index rows after they commit,
//! not in the transaction that writes them, so the hot paths (the group commit of
//! read AuditEvents, write transactions) do no extraction and write no index rows
//! for them. The indexer tails the audit log by position (`seq`) from the state
//! the store keeps (`store::AuditIndexState`), in batches: each AuditEvent opened,
//! its index rows extracted by the same code and parameters as every resource's
//! (the loaded packages' AuditEvent SearchParameters), blinded by the store, and
//! written with the indexer's new position in one transaction.
//!
//! It runs in a background thread of every node, and synchronously before every
//! AuditEvent search ([`catch_up`]), so a search finds every AuditEvent committed
//! before it began. Rounds of one node take turns; rounds of several nodes are
//! kept apart by the store (a batch commits only over the state it was read from).

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde_json::Value;

use super::SearchEngine;
use crate::store::{AuditIndexState, IndexedAudit, Store, StoreError, StoredVersion, WeakStore};

/// AuditEvents read, extracted and committed per batch by a search's catch-up.
const BATCH: usize = 1000;

/// Per batch of the background indexer: smaller, so that on SQLite it holds the
/// one writer (which the group commit of reads waits for) briefly; and it rests
/// as long as each batch took, so it never takes more than half of a core or of
/// the writer from the requests (measured: benches/audit/index.sh).
const BACKGROUND_BATCH: usize = 200;

/// Indexes every AuditEvent visible now and returns the position the index has
/// reached: every AuditEvent up to it that is visible is indexed (a position in
/// a gap turns up later, then the next round indexes it).
///
/// It stops once a batch has read the end of the log, so a search waits for
/// what was committed before it, not for the writes that keep arriving; and it
/// gives up with `Unavailable::AuditIndexBehind` (503, Retry-After) once half of
/// the request's budget is spent.
pub fn catch_up(engine: &SearchEngine, store: &Store) -> Result<i64, StoreError> {
    run(engine, store, BATCH, false)
}

fn run(engine: &SearchEngine, store: &Store, size: usize, pace: bool) -> Result<i64, StoreError> {
    loop {
        let started = std::time::Instant::now();
        if let Some(through) = batch(engine, store, size)? {
            return Ok(through);
        }
        if pace {
            std::thread::sleep(started.elapsed());
        } else if crate::store::request_half_spent() {
            // A search's catch-up after heavy load: what it indexed is committed,
            // the next try goes on from there; a 503 now rather than a 400 at the
            // deadline.
            return Err(StoreError::Unavailable(
                crate::store::Unavailable::AuditIndexBehind,
            ));
        }
    }
}

/// One batch: Some(position) when it read the end of the log (and committed).
fn batch(engine: &SearchEngine, store: &Store, size: usize) -> Result<Option<i64>, StoreError> {
    // Batches of one node take turns (a search's catch-up waits for the
    // background batch in progress, then finds less to do).
    let _turn = engine.audit_indexing.lock();
    let state = store.audit_index_state()?;
    let found = store.audit_unindexed(&state, size)?;
    let tail = found.iter().filter(|(s, _)| *s > state.after_seq).count();
    if found.is_empty() {
        return Ok(Some(state.after_seq));
    }
    let through = reached(&state, &found);
    let rows = extract(engine, &found);
    // Lost to another indexer: it moved the state; the next batch reads it again.
    let committed = store.audit_index_commit(&state, &rows, through)?;
    Ok((committed && tail < size).then_some(through))
}

/// The position the index reaches once `found` (a batch read over `state`) is
/// committed.
pub fn reached(state: &AuditIndexState, found: &[(i64, Option<StoredVersion>)]) -> i64 {
    found
        .iter()
        .map(|(s, _)| *s)
        .max()
        .unwrap_or(state.after_seq)
        .max(state.after_seq)
}

/// The index rows of a batch's AuditEvents. A row that does not open or parse
/// gets no index rows: the indexer passes it instead of stopping every
/// AuditEvent search.
pub fn extract(engine: &SearchEngine, found: &[(i64, Option<StoredVersion>)]) -> Vec<IndexedAudit> {
    found
        .iter()
        .map(|(seq, v)| IndexedAudit {
            seq: *seq,
            rows: v
                .as_ref()
                .and_then(|v| serde_json::from_slice::<Value>(&v.body).ok())
                .map(|r| engine.stored_index_rows(&r))
                .unwrap_or_default(),
        })
        .collect()
}

/// Starts the background indexer of this node (`interval` between rounds; zero:
/// none, searches still catch up). The thread ends with the server's store.
pub fn start(store: &Store, engine: &Arc<SearchEngine>, interval: Duration) {
    if interval.is_zero() {
        return;
    }
    let weak_store = store.downgrade();
    let weak_engine = Arc::downgrade(engine);
    let spawned = std::thread::Builder::new()
        .name("audit-indexer".into())
        .spawn(move || worker(weak_store, weak_engine, interval));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the audit indexer; AuditEvents are indexed when searched");
    }
}

fn worker(store: WeakStore, engine: Weak<SearchEngine>, interval: Duration) {
    loop {
        std::thread::sleep(interval);
        let (Some(store), Some(engine)) = (store.upgrade(), engine.upgrade()) else {
            return;
        };
        if let Err(e) = run(&engine, &store, BACKGROUND_BATCH, true) {
            tracing::warn!(error = %e, "audit indexing round failed; the next round resumes");
        }
    }
}
