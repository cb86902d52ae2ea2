//! The repository: every version of every resource, sealed, on SQLite or
//! PostgreSQL through one codebase; the current version by primary key; history;
//! writes that commit with their AuditEvent; the data keys.
//!
//! Architecture invariant: store never sees HTTP types and never builds FHIR
//! content; a resource body is never written unencrypted; every diesel call,
//! pool checkout included, runs through [`Store::call`] inside the caller's span.

pub(crate) mod pool;
mod repo;
mod schema;

use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use crate::crypto::{KeyError, Keyring, MasterKey};

pub use pool::Backend;
use pool::DbPool;
pub use repo::{
    AuditRow, Condition, HistoryRow, HistoryScope, StoredVersion, TokenValue, WriteKind,
    WriteRequest, WriteResult,
};

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
    keyring: Arc<RwLock<Option<Keyring>>>,
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
        *self.keyring.write() = Some(ring);
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
        *self.keyring.write() = Some(ring);
        Ok(id)
    }

    fn keyring(&self) -> Result<Keyring, StoreError> {
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

    /// Commits a group of AuditEvents in one transaction.
    pub fn insert_audits(&self, rows: &[AuditRow]) -> Result<(), StoreError> {
        let ring = self.keyring()?;
        repo::insert_audits(&self.pool, &ring, rows)
    }
}
