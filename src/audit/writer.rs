//! Group commit of AuditEvents for reads: requests hand their event to a writer
//! thread and wait; the writer commits everything that queued up while the
//! previous commit ran, in one transaction, then wakes the waiters. No fixed
//! gather window (DESIGN section 9: a 2 ms window halved throughput). SQLite has
//! one writer (one write lock); PostgreSQL has two, so that a group never waits
//! for the previous group's WAL flush (the flushes of concurrent commits overlap).

use std::sync::mpsc;
use std::thread;

use tokio::sync::oneshot;

use super::AuditRecord;
use std::sync::Arc;

use crate::store::{AuditRow, Store, StoreError, Unavailable};

struct Job {
    rows: Vec<AuditRow>,
    done: oneshot::Sender<Result<(), Arc<StoreError>>>,
}

/// Handle to the group-commit writer. Cloning shares the same writer.
#[derive(Clone)]
pub struct AuditWriter {
    tx: mpsc::Sender<Job>,
    server_base: String,
    observer: String,
}

impl std::fmt::Debug for AuditWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditWriter")
    }
}

impl AuditWriter {
    /// Starts the writer thread. It ends when every handle is dropped, after
    /// committing what is queued (so shutdown loses no acknowledged event).
    pub fn start(
        store: Store,
        server_base: String,
        observer: String,
        max_batch: usize,
    ) -> AuditWriter {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(parking_lot::Mutex::new(rx));
        let max_batch = max_batch.max(1);
        let writers = match store.backend() {
            crate::store::Backend::Sqlite => 1,
            crate::store::Backend::Postgres => 2,
        };
        for i in 0..writers {
            let (store, rx) = (store.clone(), rx.clone());
            let spawned = thread::Builder::new()
                .name(format!("audit-writer-{i}"))
                .spawn(move || run(store, rx, max_batch));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start an audit writer thread");
            }
        }
        AuditWriter {
            tx,
            server_base,
            observer,
        }
    }

    pub fn server_base(&self) -> &str {
        &self.server_base
    }

    pub fn observer(&self) -> &str {
        &self.observer
    }

    /// The row of the interaction's own event recorded now (a write stores it
    /// with its data).
    pub fn row(&self, record: &AuditRecord) -> AuditRow {
        record.to_row(&self.server_base, &self.observer, crate::fhir::now_micros())
    }

    /// Every event of the interaction recorded now: its own, a search's
    /// PatientQuery events, an authorization decision ([`AuditRecord::to_rows`]).
    pub fn rows(&self, record: &AuditRecord) -> Vec<AuditRow> {
        record.to_rows(&self.server_base, &self.observer, crate::fhir::now_micros())
    }

    /// Queues the interaction's events and waits until they are committed (in
    /// one group: a search and its PatientQuery events commit together).
    pub async fn record(&self, record: &AuditRecord) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        let rows = self.rows(record);
        self.tx
            .send(Job { rows, done })
            .map_err(|_| StoreError::from(Unavailable::AuditWriterStopped))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::from(Unavailable::AuditCommit(e))),
            Err(_) => Err(StoreError::from(Unavailable::AuditWriterStopped)),
        }
    }
}

fn run(
    store: Store,
    rx: std::sync::Arc<parking_lot::Mutex<mpsc::Receiver<Job>>>,
    max_batch: usize,
) {
    let mut batch: Vec<Job> = Vec::with_capacity(max_batch);
    loop {
        {
            // One writer gathers at a time; the other is committing meanwhile.
            let rx = rx.lock();
            let Ok(first) = rx.recv() else { return };
            batch.push(first);
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        let mut rows: Vec<AuditRow> = Vec::with_capacity(batch.len());
        let mut waiters = Vec::with_capacity(batch.len());
        for j in batch.drain(..) {
            rows.extend(j.rows);
            waiters.push(j.done);
        }
        let result = store.append_audits(&rows).map_err(Arc::new);
        if let Err(e) = &result {
            tracing::error!(error = %e, events = rows.len(), "audit group commit failed");
        }
        for done in waiters {
            let _ = done.send(result.clone());
        }
    }
}
