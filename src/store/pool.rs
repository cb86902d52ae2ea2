//! The two backends behind one pool type, their connection settings, embedded
//! migrations, and the macros that run one diesel body on either backend.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool, PooledConnection};
use diesel::{PgConnection, RunQueryDsl, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::StoreError;

const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Advisory lock key that serialises migrations across nodes ("fhirgate" in ASCII, truncated).
const MIGRATION_LOCK: i64 = 0x6668_6972_6761_7465;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One process-wide queue for SQLite writers. SQLite admits one writer at a
/// time; without the queue, waiting writers poll with the busy handler's growing
/// sleeps, which put hundreds of milliseconds on p99 (measured: benches/load, POST).
pub type WriterQueue = std::sync::Arc<parking_lot::Mutex<()>>;

#[derive(Clone)]
pub enum DbPool {
    Sqlite(Pool<ConnectionManager<SqliteConnection>>, WriterQueue),
    Pg(Pool<ConnectionManager<PgConnection>>),
}

pub enum DbConn {
    Sqlite(
        PooledConnection<ConnectionManager<SqliteConnection>>,
        WriterQueue,
    ),
    Pg(PooledConnection<ConnectionManager<PgConnection>>),
}

/// Runs `$body` with `$c` bound to the backend's connection (`&mut SqliteConnection`
/// or `&mut PgConnection`); the body is compiled once per backend.
macro_rules! with_conn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::pool::DbConn::Sqlite(ref mut pooled, _) => {
                let $c: &mut diesel::SqliteConnection = &mut *pooled;
                $body
            }
            $crate::store::pool::DbConn::Pg(ref mut pooled) => {
                let $c: &mut diesel::PgConnection = &mut *pooled;
                $body
            }
        }
    };
}

/// Like `with_conn!`, inside a write transaction. SQLite takes the write lock at
/// BEGIN (IMMEDIATE): a deferred transaction that reads, then writes, fails with
/// SQLITE_BUSY_SNAPSHOT under concurrency instead of waiting.
macro_rules! write_txn {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::pool::DbConn::Sqlite(ref mut pooled, ref queue) => {
                let _turn = queue.lock();
                let conn: &mut diesel::SqliteConnection = &mut *pooled;
                conn.immediate_transaction(|$c| $body)
            }
            $crate::store::pool::DbConn::Pg(ref mut pooled) => {
                let conn: &mut diesel::PgConnection = &mut *pooled;
                diesel::Connection::transaction(conn, |$c| $body)
            }
        }
    };
}

/// `write_txn!` for a connection from [`DbPool::get_for_write`], whose SQLite
/// writer turn is already held.
macro_rules! write_txn_held {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::store::pool::DbConn::Sqlite(ref mut pooled, _) => {
                let conn: &mut diesel::SqliteConnection = &mut *pooled;
                conn.immediate_transaction(|$c| $body)
            }
            $crate::store::pool::DbConn::Pg(ref mut pooled) => {
                let conn: &mut diesel::PgConnection = &mut *pooled;
                diesel::Connection::transaction(conn, |$c| $body)
            }
        }
    };
}

pub(crate) use {with_conn, write_txn, write_txn_held};

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        // WAL lets readers run beside the writer; NORMAL sync is durable across
        // process crashes (only an OS crash may lose the last commits).
        // A 64 MiB page cache per connection keeps the hot pages in memory
        // (mmap was tried: remapping a growing file stalled reads). Checkpoints run in the
        // background (`Store::start_maintenance`); the automatic one, inside a
        // commit, is only a safety net (measured: benches/load, POST p99).
        // busy_timeout first: connections opened together on a new file all switch
        // it to WAL, and without the timeout all but one fail ("database is locked").
        conn.batch_execute(
            "PRAGMA busy_timeout = 15000; PRAGMA journal_mode = WAL; \
             PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON; \
             PRAGMA cache_size = -65536; \
             PRAGMA temp_store = MEMORY; PRAGMA wal_autocheckpoint = 50000;",
        )
        .map_err(diesel::r2d2::Error::QueryError)
    }
}

/// Prepared statements on PostgreSQL use one generic plan: the search statements
/// are few shapes executed very often, and PostgreSQL's default keeps planning
/// them per execution (measured: 1.2 ms of planning against 0.15 ms of execution
/// for an identifier search; docs/benchmarks.md). The generic plans were checked
/// with EXPLAIN for the common searches (tests/api/search_plans.rs).
#[derive(Debug)]
struct PgSession;

impl CustomizeConnection<PgConnection, diesel::r2d2::Error> for PgSession {
    fn on_acquire(&self, conn: &mut PgConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute("SET plan_cache_mode = force_generic_plan")
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

impl DbPool {
    pub fn connect(
        url: &str,
        size: u32,
        timeout: Duration,
    ) -> Result<(DbPool, Backend), StoreError> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            // The HTTP workers read inline (one connection each) beside the audit
            // writer and the write transactions.
            let size = if size == 0 { cores + 4 } else { size };
            let pool = Pool::builder()
                .max_size(size)
                .connection_timeout(timeout)
                // A checkout test is a `SELECT 1` round trip on every request;
                // a broken SQLite connection shows as an error on use instead.
                .test_on_check_out(false)
                .connection_customizer(Box::new(SqlitePragmas))
                .build(ConnectionManager::<SqliteConnection>::new(path))
                .map_err(|e| StoreError::Unavailable(e.to_string()))?;
            Ok((
                DbPool::Sqlite(pool, WriterQueue::default()),
                Backend::Sqlite,
            ))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let size = if size == 0 { cores * 4 } else { size };
            // build_unchecked: the server starts (and reports not-ready) while the
            // database is down, and recovers when it comes back.
            let pool = Pool::builder()
                .max_size(size)
                .min_idle(Some(1))
                .connection_timeout(timeout)
                .test_on_check_out(false)
                .connection_customizer(Box::new(PgSession))
                .build_unchecked(ConnectionManager::<PgConnection>::new(url));
            Ok((DbPool::Pg(pool), Backend::Postgres))
        } else {
            Err(StoreError::BadUrl(
                url.split('@').next_back().unwrap_or(url).to_string(),
            ))
        }
    }

    pub fn get(&self) -> Result<DbConn, StoreError> {
        match self {
            DbPool::Sqlite(p, q) => p
                .get()
                .map(|c| DbConn::Sqlite(c, q.clone()))
                .map_err(|e| StoreError::Unavailable(e.to_string())),
            DbPool::Pg(p) => p
                .get()
                .map(DbConn::Pg)
                .map_err(|e| StoreError::Unavailable(e.to_string())),
        }
    }

    /// A connection for a long write transaction (a transaction Bundle). On SQLite
    /// the writer's turn is taken first and held by the guard: writers waiting for
    /// their turn hold no pooled connection, so reads and the audit writer still get
    /// one while a long transaction runs. Use it with `write_txn_held!`.
    pub fn get_for_write(
        &self,
    ) -> Result<(Option<parking_lot::MutexGuard<'_, ()>>, DbConn), StoreError> {
        match self {
            DbPool::Sqlite(_, q) => {
                let turn = q.lock();
                Ok((Some(turn), self.get()?))
            }
            DbPool::Pg(_) => Ok((None, self.get()?)),
        }
    }

    /// An idle SQLite connection, without waiting; None for PostgreSQL (its queries
    /// wait on the network and belong on the blocking pool).
    pub fn try_get_local(&self) -> Option<DbConn> {
        match self {
            DbPool::Sqlite(p, q) => p.try_get().map(|c| DbConn::Sqlite(c, q.clone())),
            DbPool::Pg(_) => None,
        }
    }

    /// Applies pending migrations; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.get()?;
        let applied = match &mut conn {
            DbConn::Sqlite(c, _) => c.run_pending_migrations(SQLITE_MIGRATIONS).map(|v| v.len()),
            DbConn::Pg(c) => {
                // Several nodes may start at once on one database: one migrates,
                // the others wait for it and then find nothing pending.
                let conn: &mut PgConnection = c;
                diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                    .execute(conn)
                    .map_err(|e| StoreError::Migration(e.to_string()))?;
                let r = conn
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|v| v.len());
                let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
                    .execute(conn);
                r
            }
        };
        applied.map_err(|e| StoreError::Migration(e.to_string()))
    }
}
