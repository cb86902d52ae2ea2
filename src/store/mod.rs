//! The repository: every version of every resource, sealed, on SQLite or
//! PostgreSQL through one codebase; the current version by primary key; history;
//! writes that commit with their AuditEvent; the data keys.
//!
//! Architecture invariant: store never sees HTTP types and never builds FHIR
//! content; a resource body is never written unencrypted; every diesel call,
//! pool checkout included, runs through [`Store::call`] inside the caller's span.

mod auth;
mod index;
mod jobs;
pub(crate) mod pool;
mod query;
mod render;
mod repo;
mod schema;
mod sql;
mod txn;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::crypto::{KeyError, Keyring, MasterKey};

pub use auth::{
    ClientRow, CodeRow, LaunchRow, LoginFailures, Redeemed, RefreshRow, RevokedRow, SigningKeyRow,
    UserRow,
};
pub use index::{IndexRows, RefValue};
pub use jobs::{CustomParamRow, ReindexJob};
pub use pool::Backend;
use pool::DbPool;
pub use query::{
    Bound, Filter, Hit, IndexTable, Position, Query, Ranges, RefTarget, Sort, SortKey, SortValue,
    UriMatch, MAX_SQL_SORT_KEYS,
};
pub use repo::{
    AuditRow, Condition, HistoryRow, HistoryScope, StoredVersion, Verify, WriteKind, WriteRequest,
    WriteResult,
};
pub use txn::{Lookup, Txn, TxnError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("`{0}` is not a database URL fhirgate knows (sqlite://FILE or postgres://...)")]
    BadUrl(String),
    #[error("database migration failed: {0}")]
    Migration(String),
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
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("this database holds data but no master key was configured")]
    MissingKey,
    #[error("database error: {0}")]
    Database(diesel::result::Error),
    #[error("{0}")]
    Prepare(String),
}

impl From<diesel::result::Error> for StoreError {
    fn from(e: diesel::result::Error) -> Self {
        use diesel::result::{DatabaseErrorKind, Error};
        match e {
            Error::DatabaseError(DatabaseErrorKind::ClosedConnection, info) => {
                StoreError::Unavailable(info.message().to_string())
            }
            Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, info) => {
                StoreError::Unavailable(info.message().to_string())
            }
            Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
            | Error::DatabaseError(DatabaseErrorKind::SerializationFailure, _) => {
                StoreError::Contention
            }
            // Two PostgreSQL transactions that update the same rows in opposite order
            // (transaction Bundles): the database aborts one; it runs again.
            Error::DatabaseError(_, ref info) if info.message().contains("deadlock detected") => {
                StoreError::Contention
            }
            other => StoreError::Database(other),
        }
    }
}

impl StoreError {
    /// True for failures that are the database's state, not the request's.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::Database(diesel::result::Error::DatabaseError(_, info)) => {
                let m = info.message();
                m.contains("database is locked")
                    || m.contains("terminating connection")
                    || m.contains("connection")
            }
            _ => false,
        }
    }
}

/// The repository handle: a connection pool and the unwrapped data keys.
#[derive(Clone)]
pub struct Store {
    pool: Arc<DbPool>,
    backend: Backend,
    keyring: Arc<RwLock<Option<Arc<Keyring>>>>,
}

/// A handle that does not keep the store alive (background workers).
#[derive(Clone)]
pub struct WeakStore {
    pool: std::sync::Weak<DbPool>,
    backend: Backend,
    keyring: std::sync::Weak<RwLock<Option<Arc<Keyring>>>>,
}

impl WeakStore {
    pub fn upgrade(&self) -> Option<Store> {
        Some(Store {
            pool: self.pool.upgrade()?,
            backend: self.backend,
            keyring: self.keyring.upgrade()?,
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
        let (pool, backend) = DbPool::connect(url, pool_size, timeout)?;
        Ok(Store {
            pool: Arc::new(pool),
            backend,
            keyring: Arc::new(RwLock::new(None)),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn downgrade(&self) -> WeakStore {
        WeakStore {
            pool: Arc::downgrade(&self.pool),
            backend: self.backend,
            keyring: Arc::downgrade(&self.keyring),
        }
    }

    pub fn migrate(&self) -> Result<usize, StoreError> {
        self.pool.migrate()
    }

    /// Runs blocking store work on the blocking pool, inside the caller's span.
    pub async fn call<F, R>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let store = self.clone();
        let span = tracing::Span::current();
        tokio::task::spawn_blocking(move || span.in_scope(|| f(&store)))
            .await
            .map_err(|e| StoreError::Unavailable(format!("worker failed: {e}")))?
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
                if let Err(e) = repo::checkpoint(&pool) {
                    tracing::debug!(error = %e, "WAL checkpoint skipped");
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "could not start the WAL checkpoint thread; SQLite checkpoints on commit instead");
        }
    }

    /// A round trip to the database (readiness).
    pub fn ping(&self) -> Result<(), StoreError> {
        repo::ping(&self.pool)
    }

    /// Opens the data keys with the master key. A new database gets its key check
    /// and first data key; a database with data refuses a different key.
    pub fn unlock(&self, master: &MasterKey) -> Result<(), StoreError> {
        let ring = repo::unlock(&self.pool, master)?;
        *self.keyring.write() = Some(Arc::new(ring));
        Ok(())
    }

    /// True when the database holds a key check (was initialised with a master key).
    pub fn has_keys(&self) -> Result<bool, StoreError> {
        repo::has_keys(&self.pool)
    }

    /// Adds a new data key for future writes and, with `new_master`, re-wraps
    /// every data key under it; rows are not rewritten. Returns the new key's id.
    pub fn rotate_keys(
        &self,
        master: &MasterKey,
        new_master: Option<&MasterKey>,
    ) -> Result<i64, StoreError> {
        let (ring, id) = repo::rotate(&self.pool, master, new_master)?;
        *self.keyring.write() = Some(Arc::new(ring));
        Ok(id)
    }

    fn keyring(&self) -> Result<Arc<Keyring>, StoreError> {
        self.keyring
            .read()
            .clone()
            .ok_or(StoreError::Keys(KeyError::UnknownDataKey(0)))
    }

    pub fn read(
        &self,
        ctx: &crate::access::AccessContext,
        resource_type: &str,
        id: &str,
        version: Option<i64>,
    ) -> Result<Option<StoredVersion>, StoreError> {
        let ring = self.keyring()?;
        repo::read(&self.pool, &ring, ctx, resource_type, id, version)
    }

    /// Reads a resource from an async context. On SQLite, when a connection is idle,
    /// the point read (a primary-key lookup served from the page cache) runs right
    /// here instead of hopping to the blocking pool and back: two thread switches
    /// cost more than the read (measured: benches/load). Otherwise as [`Store::call`].
    pub async fn read_now(
        &self,
        ctx: &crate::access::AccessContext,
        resource_type: &str,
        id: &str,
        version: Option<i64>,
    ) -> Result<Option<StoredVersion>, StoreError> {
        if let Some(conn) = self.pool.try_get_local() {
            let ring = self.keyring()?;
            return repo::read_on(conn, &ring, ctx, resource_type, id, version);
        }
        let (ctx, t, i) = (ctx.clone(), resource_type.to_string(), id.to_string());
        self.call(move |s| s.read(&ctx, &t, &i, version)).await
    }

    pub fn write(
        &self,
        ctx: &crate::access::AccessContext,
        req: WriteRequest<'_>,
    ) -> Result<WriteResult, StoreError> {
        let ring = self.keyring()?;
        repo::write(&self.pool, &ring, ctx, req)
    }

    pub fn history(
        &self,
        ctx: &crate::access::AccessContext,
        scope: &HistoryScope,
        since: Option<i64>,
        before_seq: Option<i64>,
        count: usize,
    ) -> Result<Vec<HistoryRow>, StoreError> {
        let ring = self.keyring()?;
        repo::history(&self.pool, &ring, ctx, scope, since, before_seq, count)
    }

    /// A page of current versions that satisfy a search query.
    pub fn search_page(
        &self,
        _ctx: &crate::access::AccessContext,
        q: &Query,
    ) -> Result<Vec<Hit>, StoreError> {
        let ring = self.keyring()?;
        let mut conn = self.pool.get()?;
        pool::with_conn!(conn, |c| query::run_page(c, &ring, q))
    }

    /// How many current resources satisfy a search query.
    pub fn search_count(
        &self,
        _ctx: &crate::access::AccessContext,
        q: &Query,
    ) -> Result<i64, StoreError> {
        let ring = self.keyring()?;
        let mut conn = self.pool.get()?;
        pool::with_conn!(conn, |c| query::run_count(c, &ring, q))
    }

    /// The (rid, id) of current resources that satisfy a query, in rid order.
    pub fn search_ids(
        &self,
        _ctx: &crate::access::AccessContext,
        q: &Query,
    ) -> Result<Vec<(i64, String)>, StoreError> {
        let ring = self.keyring()?;
        let mut conn = self.pool.get()?;
        pool::with_conn!(conn, |c| query::run_ids(c, &ring, q))
    }

    /// Current versions by surrogate key (deleted ones are left out).
    pub fn read_rids(
        &self,
        _ctx: &crate::access::AccessContext,
        rids: &[i64],
    ) -> Result<Vec<Hit>, StoreError> {
        let ring = self.keyring()?;
        let mut conn = self.pool.get()?;
        pool::with_conn!(conn, |c| query::run_by_rids(c, &ring, rids))
    }

    /// `_include`: the rids of live resources that the reference parameters `pids`
    /// of the resources `rids` point at (only of `types`, when given).
    pub fn include_targets(
        &self,
        _ctx: &crate::access::AccessContext,
        rids: &[i64],
        pids: &[i64],
        types: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.pool.get()?;
        pool::with_conn!(conn, |c| query::run_include_targets(
            c, rids, pids, types, limit
        ))
    }

    /// `_revinclude`: the rids of live resources whose reference parameters `pids`
    /// point at one of `targets` (type, id) (only sources of `types`, when given).
    pub fn revinclude_sources(
        &self,
        _ctx: &crate::access::AccessContext,
        targets: &[(String, String)],
        pids: &[i64],
        types: Option<&[String]>,
        limit: usize,
    ) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.pool.get()?;
        pool::with_conn!(conn, |c| query::run_revinclude_sources(
            c, targets, pids, types, limit
        ))
    }

    /// The SQL of a search query and the database's plan for it.
    pub fn explain(&self, q: &Query) -> Result<String, StoreError> {
        let ring = self.keyring()?;
        let mut conn = self.pool.get()?;
        query::explain(&mut conn, self.backend, &ring, q)
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

    /// Rewrites a batch's index rows and moves the job on; false if the lease was lost.
    pub fn reindex_commit(
        &self,
        job: &ReindexJob,
        owner: &str,
        lease_ms: i64,
        rows: &[(i64, IndexRows)],
        last_rid: i64,
    ) -> Result<bool, StoreError> {
        let ring = self.keyring()?;
        jobs::commit_batch(&self.pool, &ring, job, owner, lease_ms, rows, last_rid)
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

    /// The SearchParameters of the database, with their status.
    pub fn custom_search_params(&self) -> Result<Vec<(CustomParamRow, StoredVersion)>, StoreError> {
        let ring = self.keyring()?;
        jobs::custom_params(&self.pool, &ring)
    }

    pub fn activate_search_params(&self, ids: &[String]) -> Result<(), StoreError> {
        jobs::activate(&self.pool, ids)
    }

    /// Runs `body` in one write transaction (see [`Txn`]); a lost race runs it again
    /// from the start, so `body` must not keep effects outside the transaction.
    pub fn transaction<R, E: TxnError>(
        &self,
        body: &mut dyn FnMut(&mut dyn Txn) -> Result<R, E>,
    ) -> Result<R, E> {
        let ring = self.keyring()?;
        txn::transaction(&self.pool, &ring, body)
    }

    /// Runs `body` on a connection outside any transaction (reads only).
    pub fn lookup<R>(
        &self,
        body: &mut dyn FnMut(&mut dyn Lookup) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let ring = self.keyring()?;
        txn::lookup(&self.pool, &ring, body)
    }

    /// The parts of an import unit that are already stored (`fhirgate import` resumes).
    pub fn imported_parts(&self, unit: &str) -> Result<Vec<i64>, StoreError> {
        txn::imported_parts(&self.pool, unit)
    }

    /// Commits a group of AuditEvents in one transaction.
    pub fn insert_audits(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let ring = self.keyring()?;
        repo::insert_audits(&self.pool, &ring, rows)
    }
}
