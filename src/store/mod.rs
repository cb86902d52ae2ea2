//! The repository: every version of every resource, sealed, on SQLite or
//! PostgreSQL through one codebase; the current version by primary key; history;
//! writes that commit with their AuditEvent; the data keys.
//!
//! Architecture invariant: store never sees HTTP types and never builds FHIR
//! content; a resource body is never written unencrypted; every diesel call,
//! pool checkout included, runs through [`Store::call`] inside the caller's span.

mod audit_chain;
mod audit_index;
mod audit_log;
mod auth;
pub mod backup;
mod cancel;
mod conn;
mod deadline;
mod exports;
mod index;
mod jobs;
mod keys;
pub(crate) mod pool;
mod query;
mod read;
mod render;
mod share;
mod sql;
mod subscriptions;
mod tables;
mod txn;
mod write;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::access::{AccessContext, Action};
use crate::crypto::{KeyError, Keyring, MasterKey};

pub use audit_chain::{ChainState, Checkpoint, Link, PurgePlan, RawAudit, StoredLink};
pub use audit_index::{AuditIndexState, IndexedAudit, GAP_PATIENCE_MICROS};
pub use audit_log::AuditRow;
pub use auth::{
    ClientRow, CodeRow, LaunchRow, LoginFailures, Redeemed, RefreshRow, RevokedRow, SigningKeyRow,
    UserRow,
};
pub use backup::{SealedCount, TableDigest};
pub use exports::{ExportFile, ExportJob, NewExportFile};
pub use index::{IndexRows, RefValue};
pub use jobs::{CustomParamRow, ReindexJob, Reindexed};
use pool::DbPool;
pub use pool::{Backend, PoolState};
pub use query::{
    Bound, Filter, Hit, IndexTable, Position, Query, Ranges, RefTarget, Rows, Sort, SortKey,
    SortValue, UriMatch, MAX_SQL_SORT_KEYS,
};
pub use read::{HistoryRow, HistoryScope, StoredVersion, WriteMethod};
pub use share::{Full, ShareSizes, ShareState, Work, WorkGuard};
pub use subscriptions::{
    Attempt, CompileCriteria, Criteria, DeliveryRow, EventRow, Registered, SubscriptionEffect,
};
pub use txn::{Lookup, Txn, TxnError};
pub use write::{AuditOf, Effects, Prepare, WriteKind, WriteRequest, WriteResult};

/// Checks a candidate found by a conditional query after decryption (criteria the
/// blind index can only approximate, such as long string prefixes).
pub type Verify = dyn Fn(&StoredVersion) -> bool + Send + Sync;

/// The criteria of a conditional interaction (`If-None-Exist`, conditional update
/// and delete), evaluated inside the write transaction.
pub struct Condition {
    /// The search (its type and filters; sort and paging are ignored).
    pub query: Query,
    /// Serialises conditional writes with the same criteria across nodes.
    pub lock_key: i64,
    pub verify: Option<Arc<Verify>>,
}

impl std::fmt::Debug for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Condition")
            .field("query", &self.query)
            .field("lock_key", &self.lock_key)
            .finish()
    }
}

/// Why the database cannot serve a request now (503): the state of the
/// database or of this node's connections, not the request.
#[derive(Debug, thiserror::Error)]
pub enum Unavailable {
    #[error("every database connection of this node is busy (setting database.pool_size)")]
    PoolExhausted,
    /// The share of connections that a kind of expensive work may hold is in
    /// use (store::share); cheap requests are still served.
    #[error("{}", describe_full(.0))]
    ShareExhausted(share::Full),
    #[error("the database cannot be reached")]
    Unreachable(#[source] diesel::r2d2::PoolError),
    #[error("the connection to the database was lost")]
    ConnectionLost(#[source] diesel::result::Error),
    #[error("a database worker thread failed")]
    Worker(#[source] tokio::task::JoinError),
    #[error("the audit writer has stopped")]
    AuditWriterStopped,
    #[error("the audit group commit failed")]
    AuditCommit(#[source] Arc<StoreError>),
    #[error("the SQLite database file cannot be created")]
    File(#[source] std::io::Error),
    #[error("the AuditEvent search index is still catching up with the audit log after heavy load (each try indexes more)")]
    AuditIndexBehind,
}

/// Tells whether a request's client has hung up ([`Store::call_as`]).
pub type Hangup = Box<dyn Fn() -> bool>;

/// How often [`Store::call_as`] looks whether the client of running expensive work
/// has hung up.
pub const HANGUP_POLL: std::time::Duration = std::time::Duration::from_millis(250);

/// True when the request whose store work runs on this thread has used half of
/// its budget (`server.request_timeout_secs`): work that can stop and resume
/// later (the audit index's catch-up) stops there.
pub fn request_half_spent() -> bool {
    deadline::half_spent()
}

fn describe_full(full: &share::Full) -> String {
    match *full {
        share::Full::Kind { work, connections } => format!(
            "this node is running as many {} as it gives database connections to ({connections}, setting {}); reads and writes are still served",
            work.describe(),
            work.setting()
        ),
        share::Full::Expensive {
            work,
            connections,
            reserved,
        } => format!(
            "the {connections} database connections this node gives to searches, history and Bundles together are busy, so the {} waited in vain ({reserved} more are kept for reads and writes, setting database.reserved_connections); reads and writes are still served",
            match work {
                Work::Search => "search",
                Work::History => "history request",
                Work::Bundle => "Bundle",
            }
        ),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(#[from] Unavailable),
    #[error("`{0}` is not a database URL fhirgate knows (sqlite://FILE or postgres://...)")]
    BadUrl(String),
    #[error("database migration failed")]
    Migration(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("the resource was changed by someone else (current version {current})")]
    VersionConflict { current: i64 },
    #[error("the resource does not exist")]
    NotFound,
    #[error("a resource with this id already exists")]
    AlreadyExists,
    #[error("the conditional criteria match {0} resources")]
    MultipleMatches(usize),
    #[error("too many concurrent writes to the same resource; try again")]
    Contention,
    /// A write would leave a resource outside what the caller may write.
    #[error("{0}")]
    Forbidden(crate::access::Denied),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("this database holds data but no master key was configured")]
    MissingKey,
    #[error("database error")]
    Database(#[source] diesel::result::Error),
    /// The caller's body could not be stamped for storage (version, lastUpdated).
    #[error("the resource could not be prepared for storage: {0}")]
    Body(String),
    /// A broken promise between fhirgate's own parts (a bug, not the request).
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The request's deadline passed while the database worked on it; the
    /// statement was stopped (SQLite interrupt, PostgreSQL statement_timeout).
    #[error("the request ran past its deadline of {budget_secs} s in the database")]
    Timeout { budget_secs: u64 },
    /// The client hung up and its work was stopped (store::cancel).
    #[error("the client closed the connection; its work was stopped")]
    Cancelled,
    /// A backup or restore step failed (a file, `pg_dump`, a refused target).
    #[error("{0}")]
    Backup(String),
    /// A write would make more subscriptions active than `subscriptions.max_active`.
    #[error("this server allows at most {max} active subscriptions (subscriptions.max_active)")]
    TooManySubscriptions { max: u64 },
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(
                DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand,
                _,
            ) => StoreError::Unavailable(Unavailable::ConnectionLost(e)),
            // A lost race: another writer inserted the same row first, or PostgreSQL
            // could not serialise the two. The transaction runs again.
            Error::DatabaseError(
                DatabaseErrorKind::UniqueViolation | DatabaseErrorKind::SerializationFailure,
                _,
            ) => StoreError::Contention,
            // SQLite's interrupt and PostgreSQL's statement_timeout have no kind of
            // their own: an unclassified error once the deadline has passed is the
            // deadline's (store::deadline).
            Error::DatabaseError(DatabaseErrorKind::Unknown, _) if cancel::cancelled() => {
                StoreError::Cancelled
            }
            Error::DatabaseError(DatabaseErrorKind::Unknown, _) if deadline::passed() => {
                StoreError::Timeout {
                    budget_secs: deadline::budget().map_or(0, |b| b.as_secs()),
                }
            }
            other => StoreError::Database(other),
        }
    }
}

impl StoreError {
    /// True for failures that are the database's state, not the request's.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// The repository handle: a connection pool and the unwrapped data keys.
#[derive(Clone)]
pub struct Store {
    pool: Arc<DbPool>,
    /// The audit writer's own connections (store::pool::Pools).
    audit_pool: Arc<DbPool>,
    backend: Backend,
    keyring: Arc<RwLock<Option<Arc<Keyring>>>>,
    /// The budget of one request's store work ([`Store::call`]); None: unbounded.
    request_timeout: Option<Duration>,
    /// This node's compiled subscription criteria (store::subscriptions).
    subscriptions: Arc<subscriptions::Registry>,
}

/// A handle that does not keep the store alive (background workers).
#[derive(Clone)]
pub struct WeakStore {
    pool: std::sync::Weak<DbPool>,
    audit_pool: std::sync::Weak<DbPool>,
    backend: Backend,
    keyring: std::sync::Weak<RwLock<Option<Arc<Keyring>>>>,
    request_timeout: Option<Duration>,
    subscriptions: std::sync::Weak<subscriptions::Registry>,
}

impl WeakStore {
    pub fn upgrade(&self) -> Option<Store> {
        Some(Store {
            pool: self.pool.upgrade()?,
            audit_pool: self.audit_pool.upgrade()?,
            backend: self.backend,
            keyring: self.keyring.upgrade()?,
            request_timeout: self.request_timeout,
            subscriptions: self.subscriptions.upgrade()?,
        })
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend)
            .finish()
    }
}

impl Store {
    /// Connects (lazily for PostgreSQL) without touching the schema.
    pub fn connect(url: &str, pool_size: u32, timeout: Duration) -> Result<Store, StoreError> {
        Store::connect_with_deadline(url, pool_size, timeout, None, ShareSizes::default())
    }

    /// Like [`Store::connect`], for a server whose requests have a budget: every
    /// [`Store::call`] runs under a deadline `request_timeout` away, enforced in the
    /// database (store::deadline), and on PostgreSQL no statement runs longer;
    /// expensive work takes connections only from its share (store::share).
    pub fn connect_with_deadline(
        url: &str,
        pool_size: u32,
        timeout: Duration,
        request_timeout: Option<Duration>,
        shares: ShareSizes,
    ) -> Result<Store, StoreError> {
        let pools = DbPool::connect(url, pool_size, timeout, request_timeout, shares)?;
        let store = Store {
            pool: Arc::new(pools.main),
            audit_pool: Arc::new(pools.audit),
            backend: pools.backend,
            keyring: Arc::new(RwLock::new(None)),
            request_timeout,
            subscriptions: Arc::new(subscriptions::Registry::default()),
        };
        // Every process that writes tells the other nodes of its notifications
        // (a server, `fhirgate import`), whether or not it delivers any.
        store.start_announcing();
        Ok(store)
    }

    /// The budget of one request's store work, if any.
    pub fn request_timeout(&self) -> Option<Duration> {
        self.request_timeout
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn downgrade(&self) -> WeakStore {
        WeakStore {
            pool: Arc::downgrade(&self.pool),
            audit_pool: Arc::downgrade(&self.audit_pool),
            backend: self.backend,
            keyring: Arc::downgrade(&self.keyring),
            request_timeout: self.request_timeout,
            subscriptions: Arc::downgrade(&self.subscriptions),
        }
    }

    pub fn migrate(&self) -> Result<usize, StoreError> {
        self.pool.migrate()
    }

    /// Runs blocking store work on the blocking pool, inside the caller's span and
    /// under the request's deadline (`server.request_timeout_secs`).
    pub async fn call<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        self.call_cancellable(None, f).await
    }

    async fn call_cancellable<F, R>(
        &self,
        cancel: Option<Arc<cancel::Cancel>>,
        f: F,
    ) -> Result<R, StoreError>
    where
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let store = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || {
            let _deadline = deadline::Guard::new(store.request_timeout);
            let _cancel = cancel::Guard::new(cancel);
            span.in_scope(|| f(&store))
        })
        .await
        .map_err(|e| StoreError::Unavailable(Unavailable::Worker(e)))?
    }

    /// Like [`Store::call`], for expensive work: its connections come from the
    /// share of `work` (store::share); when the share stays full for
    /// `database.pool_timeout_ms`, [`Unavailable::ShareExhausted`]. `gone` tells
    /// whether the client has hung up; it is asked every [`HANGUP_POLL`] while the
    /// work runs, and once it says yes the work is stopped (store::cancel) and ends
    /// with [`StoreError::Cancelled`].
    pub async fn call_as<F, R>(
        &self,
        work: Work,
        gone: Option<Hangup>,
        f: F,
    ) -> Result<R, StoreError>
    where
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let cancel = gone.as_ref().map(|_| Arc::new(cancel::Cancel::default()));
        let task = self.call_cancellable(cancel.clone(), move |s| {
            let _work = work.enter();
            f(s)
        });
        let (Some(gone), Some(cancel)) = (gone, cancel) else {
            return task.await;
        };
        let mut task = std::pin::pin!(task);
        let start = tokio::time::Instant::now() + HANGUP_POLL;
        let mut tick = tokio::time::interval_at(start, HANGUP_POLL);
        loop {
            tokio::select! {
                r = &mut task => return r,
                _ = tick.tick() => {
                    if gone() {
                        // The work's own thread is busy in the database: the
                        // cancellation goes from another (again at each tick, for a
                        // statement that started after the last one).
                        let (pool, cancel) = (self.pool.clone(), cancel.clone());
                        let _ = tokio::task::spawn_blocking(move || cancel.trigger(&pool)).await;
                    }
                }
            }
        }
    }

    /// How the requests' pool and its shares are used now (readiness).
    pub fn pool_state(&self) -> PoolState {
        self.pool.state()
    }

    /// Starts the background work a backend needs: on SQLite, a thread that
    /// checkpoints the write-ahead log (PASSIVE: it never blocks readers or the
    /// writer), so commits do not pay for checkpoints and p99 has no checkpoint
    /// stalls. The thread ends when the last handle on this store is dropped.
    pub fn start_maintenance(&self) {
        if self.backend != Backend::Sqlite {
            return;
        }
        let pool = Arc::downgrade(&self.pool);
        let spawned = std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_millis(50));
                let Some(pool) = pool.upgrade() else { return };
                if let Some(mut conn) = pool.try_get_local() {
                    if let Err(e) = conn.any().batch("PRAGMA wal_checkpoint(PASSIVE);") {
                        tracing::debug!(error = %e, "WAL checkpoint skipped");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the WAL checkpoint thread; SQLite checkpoints on commit instead");
        }
    }

    /// A round trip to the database (readiness).
    pub fn ping(&self) -> Result<(), StoreError> {
        self.pool.read(|c| c.batch("SELECT 1"))
    }

    /// Opens the data keys with the master key. A new database gets its key check
    /// and first data key; a database with data refuses a different key.
    pub fn unlock(&self, master: &MasterKey) -> Result<(), StoreError> {
        let ring = keys::unlock(&self.pool, master)?;
        *self.keyring.write() = Some(Arc::new(ring));
        Ok(())
    }

    /// True when the database holds a key check (was initialised with a master key).
    pub fn has_keys(&self) -> Result<bool, StoreError> {
        keys::has_keys(&self.pool)
    }

    /// Adds a new data key for future writes and, with `new_master`, re-wraps
    /// every data key under it; rows are not rewritten. Returns the new key's id.
    pub fn rotate_keys(
        &self,
        master: &MasterKey,
        new_master: Option<&MasterKey>,
    ) -> Result<i64, StoreError> {
        let (ring, id) = keys::rotate(&self.pool, master, new_master)?;
        *self.keyring.write() = Some(Arc::new(ring));
        Ok(id)
    }

    fn keyring(&self) -> Result<Arc<Keyring>, StoreError> {
        self.keyring
            .read()
            .clone()
            .ok_or(StoreError::Keys(KeyError::UnknownDataKey(0)))
    }

    /// The current version of a resource, or one version, if the caller may read
    /// it (a resource outside its grant is None, as if it did not exist).
    pub fn read(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
        version: Option<i64>,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let ring = self.keyring()?;
        self.pool
            .read(|c| read::version(c, &ring, ctx, Action::Read, resource_type, id, version))
    }

    /// Reads a resource from an async context. On SQLite, when a connection is idle,
    /// the point read (a primary-key lookup served from the page cache) runs right
    /// here instead of hopping to the blocking pool and back: two thread switches
    /// cost more than the read (measured: benches/load). Otherwise as [`Store::call`].
    pub async fn read_now(
        &self,
        ctx: &AccessContext,
        resource_type: &str,
        id: &str,
        version: Option<i64>,
    ) -> Result<Option<StoredVersion>, StoreError> {
        if let Some(mut conn) = self.pool.try_get_local() {
            let ring = self.keyring()?;
            return read::version(
                &mut conn.any(),
                &ring,
                ctx,
                Action::Read,
                resource_type,
                id,
                version,
            );
        }
        let (ctx, t, i) = (ctx.clone(), resource_type.to_string(), id.to_string());
        self.call(move |s| s.read(&ctx, &t, &i, version)).await
    }

    /// One AuditEvent by id (AuditEvents live in the audit log, not among versions).
    pub fn audit_event(&self, id: &str) -> Result<Option<StoredVersion>, StoreError> {
        let ring = self.keyring()?;
        self.pool.read(|c| audit_log::read(c, &ring, id))
    }

    /// Where the audit indexer stands (see [`AuditIndexState`]).
    pub fn audit_index_state(&self) -> Result<AuditIndexState, StoreError> {
        audit_index::state(&self.pool)
    }

    /// The AuditEvents the audit indexer has not indexed yet, from `state`: the
    /// next `limit` in `seq` order and those of its gaps now visible, as
    /// (seq, AuditEvent; None for a row that does not open, logged).
    pub fn audit_unindexed(
        &self,
        state: &AuditIndexState,
        limit: usize,
    ) -> Result<Vec<(i64, Option<StoredVersion>)>, StoreError> {
        let ring = self.keyring()?;
        audit_index::unindexed(&self.pool, &ring, state, limit)
    }

    /// Writes the index rows of a batch of AuditEvents read from `read` and moves
    /// the indexer past `through`; false (nothing written) when another indexer
    /// committed meanwhile.
    pub fn audit_index_commit(
        &self,
        read: &AuditIndexState,
        batch: &[IndexedAudit],
        through: i64,
    ) -> Result<bool, StoreError> {
        let ring = self.keyring()?;
        audit_index::commit(&self.pool, &ring, read, batch, through)
    }

    /// Where the audit chainer stands (see [`ChainState`]).
    pub fn audit_chain_state(&self) -> Result<ChainState, StoreError> {
        audit_chain::state(&self.pool)
    }

    /// The AuditEvent rows, as stored, that the chainer has not chained yet.
    pub fn audit_unchained(
        &self,
        state: &ChainState,
        limit: usize,
    ) -> Result<Vec<RawAudit>, StoreError> {
        audit_chain::unchained(&self.pool, state, limit)
    }

    /// Appends links to the chain and moves the chainer past `through`; false
    /// (nothing written) when another chainer committed since `read`.
    pub fn audit_chain_commit(
        &self,
        read: &ChainState,
        links: &[Link],
        through: i64,
    ) -> Result<bool, StoreError> {
        audit_chain::commit(&self.pool, read, links, through)
    }

    /// The chain's links from position `from`, with their rows as stored now.
    pub fn audit_chain_links(
        &self,
        from: i64,
        limit: usize,
    ) -> Result<Vec<StoredLink>, StoreError> {
        audit_chain::links(&self.pool, from, limit)
    }

    /// The first AuditEvent row behind the chainer that is not in the chain
    /// (`seq`, and the position of the first link after it).
    pub fn audit_unchained_behind(
        &self,
        state: &ChainState,
    ) -> Result<Option<(i64, Option<i64>)>, StoreError> {
        audit_chain::first_unchained_behind(&self.pool, state)
    }

    /// The signed checkpoints stored in the database, by position.
    pub fn audit_checkpoints(&self) -> Result<Vec<Checkpoint>, StoreError> {
        audit_chain::checkpoints(&self.pool)
    }

    /// The newest signed checkpoint.
    pub fn audit_last_checkpoint(&self) -> Result<Option<Checkpoint>, StoreError> {
        audit_chain::last_checkpoint(&self.pool)
    }

    /// Stores a checkpoint; false when one at its position exists.
    pub fn audit_add_checkpoint(&self, cp: &Checkpoint) -> Result<bool, StoreError> {
        audit_chain::add_checkpoint(&self.pool, cp)
    }

    /// The prefix of the audit chain whose events were all recorded before
    /// `before` (Unix microseconds).
    pub fn audit_purge_plan(&self, before: i64) -> Result<Option<PurgePlan>, StoreError> {
        audit_chain::purge_plan(&self.pool, before)
    }

    /// Removes the events of `plan` and stores its signed purge checkpoint; the
    /// number removed, None when another purge moved the chain's start.
    pub fn audit_purge(
        &self,
        plan: &PurgePlan,
        cp: &Checkpoint,
    ) -> Result<Option<i64>, StoreError> {
        audit_chain::purge(&self.pool, plan, cp)
    }

    /// The audit signing keys, oldest first: (kid, the private key (PKCS#8 DER)
    /// where this node can open it, the public key as PEM).
    pub fn audit_signing_keys(&self) -> Result<Vec<AuditSigningKey>, StoreError> {
        let ring = self.keyring().ok();
        Ok(audit_chain::signing_keys(&self.pool)?
            .into_iter()
            .map(|k| {
                let private = ring
                    .as_ref()
                    .and_then(|r| r.open_box(k.key_id, &k.sealed, &audit_key_aad(&k.kid)).ok());
                (k.kid, private, k.public_pem)
            })
            .collect())
    }

    /// Stores an audit signing key, its private half sealed under the active
    /// data key (which the master key wraps).
    pub fn audit_add_signing_key(
        &self,
        kid: &str,
        private_der: &[u8],
        public_pem: &str,
    ) -> Result<(), StoreError> {
        let (key_id, sealed) = self.keyring()?.seal(private_der, &audit_key_aad(kid))?;
        audit_chain::add_signing_key(
            &self.pool,
            &audit_chain::AuditKeyRow {
                kid: kid.to_string(),
                key_id,
                sealed,
                public_pem: public_pem.to_string(),
            },
        )
    }

    /// The history of resources the caller may see, newest first.
    pub fn history(
        &self,
        ctx: &AccessContext,
        scope: &HistoryScope,
        since: Option<i64>,
        before_seq: Option<i64>,
        count: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let ring = self.keyring()?;
        let limit = count.min(1_000_000) as i64;
        self.pool
            .read(|c| read::history(c, &ring, ctx, scope, since, before_seq, limit))
    }

    /// AuditEvents newest first (one id: its history), as history rows.
    pub fn audit_history(
        &self,
        only_id: Option<&str>,
        since: Option<i64>,
        before_seq: Option<i64>,
        count: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let ring = self.keyring()?;
        let limit = count.min(1_000_000) as i64;
        let rows = self
            .pool
            .read(|c| audit_log::history(c, &ring, only_id, since, before_seq, limit))?;
        Ok(rows
            .into_iter()
            .map(|(seq, version)| HistoryRow {
                seq,
                method: WriteMethod::Post,
                version,
            })
            .collect())
    }

    /// A page of current versions that satisfy a search query, narrowed to what
    /// the caller may search.
    pub fn search_page(&self, ctx: &AccessContext, q: &Query) -> Result<Vec<Hit>, StoreError> {
        let ring = self.keyring()?;
        self.pool.read(|c| query::run_page(c, &ring, ctx, q))
    }

    /// How many current resources the caller may search satisfy a query.
    pub fn search_count(&self, ctx: &AccessContext, q: &Query) -> Result<i64, StoreError> {
        let ring = self.keyring()?;
        self.pool.read(|c| query::run_count(c, &ring, ctx, q))
    }

    /// The (rid, id) of current resources that satisfy a query, in rid order.
    pub fn search_ids(
        &self,
        ctx: &AccessContext,
        q: &Query,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let ring = self.keyring()?;
        self.pool.read(|c| query::run_ids(c, &ring, ctx, q))
    }

    /// Current versions by surrogate key, those the caller may read (deleted ones
    /// are left out).
    pub fn read_rids(&self, ctx: &AccessContext, rids: &[i64]) -> Result<Vec<Hit>, StoreError> {
        let ring = self.keyring()?;
        self.pool.read(|c| query::run_by_rids(c, &ring, ctx, rids))
    }

    /// `_include`: the rids of live resources that the reference parameters `pids`
    /// of the resources `rids` point at (only of `types`, when given), that the
    /// caller may read.
    pub fn include_targets(
        &self,
        ctx: &AccessContext,
        rids: &[i64],
        pids: &[i64],
        types: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let ring = self.keyring()?;
        self.pool
            .read(|c| query::run_include_targets(c, &ring, ctx, rids, pids, types, limit))
    }

    /// `_revinclude`: the rids of live resources whose reference parameters `pids`
    /// point at one of `targets` (type, id) (only sources of `types`, when given),
    /// that the caller may read.
    pub fn revinclude_sources(
        &self,
        ctx: &AccessContext,
        targets: &[(String, String)],
        pids: &[i64],
        types: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let ring = self.keyring()?;
        self.pool
            .read(|c| query::run_revinclude_sources(c, &ring, ctx, targets, pids, types, limit))
    }

    /// The SQL of a search query and the database's plan for it.
    pub fn explain(&self, ctx: &AccessContext, q: &Query) -> Result<String, StoreError> {
        let ring = self.keyring()?;
        self.pool.read(|c| query::explain(c, &ring, ctx, q))
    }

    /// Seals a page cursor with a key derived from the index key (every node of a
    /// database has it, so any node can continue a search).
    pub fn seal_cursor(&self, plaintext: &[u8]) -> Result<Vec<u8>, StoreError> {
        Ok(self.keyring()?.seal_cursor(plaintext)?)
    }

    /// Opens a page cursor; None when it is not one of this database's.
    pub fn open_cursor(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        self.keyring().ok()?.open_cursor(sealed)
    }

    /// Queues a reindex of one resource type (`*`: every type).
    pub fn reindex_enqueue(&self, resource_type: &str) -> Result<ReindexJob, StoreError> {
        let ring = self.keyring()?;
        jobs::enqueue(&self.pool, &ring, resource_type)
    }

    pub fn reindex_job(&self, id: &str) -> Result<Option<ReindexJob>, StoreError> {
        jobs::job(&self.pool, id)
    }

    /// Takes an unfinished job whose lease expired, for `lease_ms`.
    pub fn reindex_claim(
        &self,
        owner: &str,
        lease_ms: i64,
    ) -> Result<Option<ReindexJob>, StoreError> {
        jobs::claim(&self.pool, owner, lease_ms)
    }

    /// The next `size` current versions of a job.
    pub fn reindex_batch(&self, job: &ReindexJob, size: usize) -> Result<Vec<Hit>, StoreError> {
        let ring = self.keyring()?;
        jobs::next_batch(&self.pool, &ring, job, size)
    }

    /// Rewrites a batch's index rows (of the resources still at the version read)
    /// and moves the job on; false if the lease was lost.
    pub fn reindex_commit(
        &self,
        job: &ReindexJob,
        owner: &str,
        lease_ms: i64,
        batch: &[Reindexed],
        last_rid: i64,
    ) -> Result<bool, StoreError> {
        let ring = self.keyring()?;
        jobs::commit_batch(&self.pool, &ring, job, owner, lease_ms, batch, last_rid)
    }

    pub fn reindex_finish(&self, job: &ReindexJob, error: Option<&str>) -> Result<(), StoreError> {
        jobs::finish(&self.pool, job, error)
    }

    /// Finished reindex jobs: (resource type, created).
    pub fn reindex_done(&self) -> Result<Vec<(String, i64)>, StoreError> {
        jobs::done_jobs(&self.pool)
    }

    /// Changes whenever a SearchParameter of the database is written or activated.
    pub fn search_registry_generation(&self) -> Result<i64, StoreError> {
        jobs::registry_generation(&self.pool)
    }

    /// The resources of `resource_type` registered as search parameters (by
    /// writes that declared [`Effects::registers_search_param`]), with their status.
    pub fn custom_search_params(
        &self,
        resource_type: &str,
    ) -> Result<Vec<(CustomParamRow, StoredVersion)>, StoreError> {
        let ring = self.keyring()?;
        jobs::custom_params(&self.pool, &ring, resource_type)
    }

    pub fn activate_search_params(&self, ids: &[String]) -> Result<(), StoreError> {
        jobs::activate(&self.pool, ids)
    }

    /// Runs `body` in one write transaction for `ctx` (see [`Txn`]); a lost race
    /// runs it again from the start, so `body` must not keep effects outside the
    /// transaction.
    pub fn transaction<R, E: TxnError>(
        &self,
        ctx: &AccessContext,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<R, E>,
    ) -> Result<R, E> {
        let ring = self.keyring()?;
        txn::transaction(&self.pool, &ring, ctx, &self.subscriptions, body)
    }

    /// Runs `body` on a connection outside any transaction (reads only), for `ctx`.
    pub fn lookup<R>(
        &self,
        ctx: &AccessContext,
        body: &mut dyn FnMut(&mut dyn Lookup) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let ring = self.keyring()?;
        txn::lookup(&self.pool, &ring, ctx, &self.subscriptions, body)
    }

    /// One new resource with a server-assigned id, written on its own: its rows
    /// (sealed body, blinded index rows, sealed AuditEvent) are made before the
    /// write takes the database (SQLite: the writer's turn); on PostgreSQL, for a
    /// caller whose writes need no check afterwards, in one statement. The same
    /// rows a [`Txn`] would write.
    pub fn create_alone(
        &self,
        ctx: &AccessContext,
        req: &WriteRequest<'_>,
    ) -> Result<WriteResult, StoreError> {
        let ring = self.keyring()?;
        let rows = match write::rows_of(&ring, req, None, None, crate::fhir::now_micros())? {
            write::Planned::Write(rows) => *rows,
            write::Planned::Unchanged(r) => return Ok(r),
        };
        let mut rows = Some(rows);
        if self.backend == Backend::Postgres
            && rows
                .as_ref()
                .is_some_and(|r| write::alone_is_possible(ctx, r))
        {
            // Alone only when no subscription could be told of it (the
            // generation is read first, as a transaction would).
            let subs = &self.subscriptions;
            let alone = self.pool.read(|c| {
                if !subs.none_for(c, &ring, req.resource_type)? {
                    return Ok(None);
                }
                let r = rows
                    .take()
                    .ok_or(StoreError::Internal("a create ran twice"))?;
                write::apply_alone(c, r).map(Some)
            })?;
            if let Some(done) = alone {
                return Ok(done);
            }
        }
        let subs = &self.subscriptions;
        let mut told = false;
        let mut written = self.pool.write(|c| {
            let rows = rows
                .take()
                .ok_or(StoreError::Internal("a create ran twice"))?;
            let mut pending = Vec::new();
            let written = write::apply(c, &ring, ctx, subs, &mut pending, vec![rows])?;
            if !pending.is_empty() {
                subscriptions::store_notifications(c, &pending, crate::fhir::now_micros())?;
                told = true;
            }
            Ok::<_, StoreError>(written)
        })?;
        if told {
            subs.committed();
        }
        written
            .pop()
            .ok_or(StoreError::Internal("a create wrote nothing"))
    }

    /// The parts of an import unit that are already stored (`fhirgate import` resumes).
    pub fn imported_parts(&self, unit: &str) -> Result<Vec<i64>, StoreError> {
        #[derive(diesel::QueryableByName)]
        struct Part {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            part: i64,
        }
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push("SELECT part FROM import_progress WHERE unit = ")
                .text(unit)
                .push(" ORDER BY part");
            Ok(c.load::<Part>(sql)?.into_iter().map(|p| p.part).collect())
        })
    }

    /// The lines of an import unit that an earlier run could not store.
    pub fn import_failures(&self, unit: &str) -> Result<Vec<i64>, StoreError> {
        #[derive(diesel::QueryableByName)]
        struct Line {
            #[diesel(sql_type = diesel::sql_types::BigInt)]
            line: i64,
        }
        self.pool.read(|c| {
            let mut sql = c.sql();
            sql.push("SELECT line FROM import_failures WHERE unit = ")
                .text(unit)
                .push(" ORDER BY line");
            Ok(c.load::<Line>(sql)?.into_iter().map(|l| l.line).collect())
        })
    }

    /// Commits AuditEvents in one transaction through the audit sink (the group
    /// commit of reads).
    pub fn append_audits(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let ring = self.keyring()?;
        let sealed = rows
            .iter()
            .map(|r| audit_log::seal(&ring, r))
            .collect::<Result<Vec<_>, _>>()?;
        self.audit_pool.write(|c| audit_log::append(c, &sealed))
    }
}

/// An audit signing key: (kid, the private key (PKCS#8 DER) where this node can
/// open it, the public key as PEM).
pub type AuditSigningKey = (String, Option<Vec<u8>>, String);

/// The associated data of a sealed audit signing key.
fn audit_key_aad(kid: &str) -> Vec<u8> {
    format!("fhirgate:audit-signing-key:{kid}").into_bytes()
}
