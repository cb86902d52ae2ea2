//! The two backends behind one pool type, their connection settings, embedded
//! migrations, and the macros that run one diesel body on either backend.

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{
    ConnectionManager, CustomizeConnection, ManageConnection, Pool, PooledConnection,
    R2D2Connection,
};
use diesel::{Connection, PgConnection, RunQueryDsl, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::conn::AnyConn;
use super::share::{ShareSizes, ShareState, Shares, Slot};
use super::{StoreError, Unavailable};

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
///
/// The audit group commit goes first: reads wait for their AuditEvents to be
/// durable, and behind eight queued 16 MiB creates a GET waited 30-45 s
/// (benches/memory). With the priority a read waits for at most the write that
/// holds the lock, not for every write queued before its AuditEvent.
#[derive(Default)]
pub struct WriterQueue {
    lock: parking_lot::Mutex<()>,
    /// Writers with the priority waiting for their turn.
    first_waiting: std::sync::atomic::AtomicUsize,
}

impl WriterQueue {
    /// The writer's turn; `first`: before every writer without the priority that
    /// is still waiting.
    fn turn(&self, first: bool) -> parking_lot::MutexGuard<'_, ()> {
        use std::sync::atomic::Ordering::SeqCst;
        if first {
            self.first_waiting.fetch_add(1, SeqCst);
            let turn = self.lock.lock();
            self.first_waiting.fetch_sub(1, SeqCst);
            return turn;
        }
        loop {
            let turn = self.lock.lock();
            if self.first_waiting.load(SeqCst) == 0 {
                return turn;
            }
            // A priority writer waits: give the turn back until it has taken it.
            drop(turn);
            while self.first_waiting.load(SeqCst) > 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }
}

/// The pool of one backend, with the shares of its connections that expensive
/// work may take (store::share).
#[derive(Clone)]
pub struct DbPool {
    conns: Conns,
    /// None: no shares (the audit writer's own pool).
    shares: Option<std::sync::Arc<Shares>>,
    timeout: Duration,
    /// PostgreSQL: the URL, for a connection of its own that LISTENs.
    listen_url: Option<String>,
}

#[derive(Clone)]
enum Conns {
    Sqlite(Pool<Manager<SqliteConnection>>, std::sync::Arc<WriterQueue>),
    Pg(Pool<Manager<PgConnection>>),
}

/// A pooled connection and the share slot it was taken with (released after
/// the connection is back in the pool: fields drop in order).
pub struct DbConn {
    conn: Pooled,
    /// When it was taken: a connection held long served a query that may have
    /// grown it, and is closed instead of pooled again ([`RESET_AFTER`]).
    taken: std::time::Instant,
    /// The request's cancellation, with this connection's server process
    /// registered in it (PostgreSQL) until the connection is given back.
    cancel: Option<std::sync::Arc<super::cancel::Cancel>>,
    _slot: Option<Slot>,
}

enum Pooled {
    Sqlite(PooledConnection<Manager<SqliteConnection>>),
    Pg(PooledConnection<Manager<PgConnection>>),
}

/// A connection held longer than this (a long search, a large Bundle, a request
/// stopped at its deadline or by its client's hang-up) is closed when it is given
/// back instead of pooled again (issue 13: a PostgreSQL server process keeps the
/// memory a large query made it take; one that ran 50 s on 100 values held 1.7-7.9
/// GB). Opening a replacement costs a few milliseconds, next to at least this.
pub const RESET_AFTER: Duration = Duration::from_secs(2);

/// diesel's connection manager, with connections that can be marked to be closed
/// when given back ([`Managed::discard`]) and, on PostgreSQL, know their server
/// process (for `pg_cancel_backend`, store::cancel).
struct Manager<C: R2D2Connection + Send + 'static>(ConnectionManager<C>);

/// A pooled connection of a [`Manager`].
struct Managed<C> {
    conn: C,
    /// PostgreSQL: the server process of this connection (`pg_backend_pid()`).
    pid: Option<i32>,
    /// Closed instead of pooled again when given back.
    discard: bool,
}

impl<C: R2D2Connection + Send + 'static> ManageConnection for Manager<C> {
    type Connection = Managed<C>;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Managed<C>, diesel::r2d2::Error> {
        Ok(Managed {
            conn: self.0.connect()?,
            pid: None,
            discard: false,
        })
    }

    fn is_valid(&self, c: &mut Managed<C>) -> Result<(), diesel::r2d2::Error> {
        self.0.is_valid(&mut c.conn)
    }

    fn has_broken(&self, c: &mut Managed<C>) -> bool {
        c.discard || self.0.has_broken(&mut c.conn)
    }
}

impl DbConn {
    /// The connection as the store's backend-neutral [`AnyConn`].
    pub fn any(&mut self) -> AnyConn<'_> {
        match &mut self.conn {
            Pooled::Sqlite(c) => AnyConn::Sqlite(&mut c.conn),
            Pooled::Pg(c) => AnyConn::Pg(&mut c.conn),
        }
    }

    /// Runs `body` in a write transaction on this connection; the caller holds the
    /// SQLite writer's turn ([`DbPool::write`] takes it). SQLite begins IMMEDIATE:
    /// a deferred transaction that reads, then writes, fails with
    /// SQLITE_BUSY_SNAPSHOT under concurrency instead of waiting.
    fn transaction<R, E>(&mut self, body: impl FnOnce(&mut AnyConn) -> Result<R, E>) -> Result<R, E>
    where
        E: From<diesel::result::Error>,
    {
        match &mut self.conn {
            Pooled::Sqlite(c) => c
                .conn
                .immediate_transaction(|c| body(&mut AnyConn::Sqlite(c))),
            Pooled::Pg(c) => {
                diesel::Connection::transaction(&mut c.conn, |c| body(&mut AnyConn::Pg(c)))
            }
        }
    }
}

impl Drop for DbConn {
    fn drop(&mut self) {
        let pid = match &mut self.conn {
            Pooled::Sqlite(c) => {
                c.discard |= self.taken.elapsed() > RESET_AFTER;
                None
            }
            Pooled::Pg(c) => {
                c.discard |= self.taken.elapsed() > RESET_AFTER
                    || self.cancel.as_ref().is_some_and(|k| k.is_cancelled());
                c.pid
            }
        };
        if let (Some(cancel), Some(pid)) = (&self.cancel, pid) {
            // Waits while a cancellation is being sent to this process, so that it
            // never reaches the connection's next user.
            cancel.unregister(pid);
        }
    }
}

#[derive(Debug)]
struct SqlitePragmas;

impl CustomizeConnection<Managed<SqliteConnection>, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut Managed<SqliteConnection>) -> Result<(), diesel::r2d2::Error> {
        // WAL lets readers run beside the writer; NORMAL sync is durable across
        // process crashes (only an OS crash may lose the last commits).
        // A 64 MiB page cache per connection keeps the hot pages in memory
        // (mmap was tried: remapping a growing file stalled reads). Checkpoints run in the
        // background (`Store::start_maintenance`); the automatic one, inside a
        // commit, is only a safety net (measured: benches/load, POST p99).
        // busy_timeout first: connections opened together on a new file all switch
        // it to WAL, and without the timeout all but one fail ("database is locked").
        conn.conn
            .batch_execute(
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
///
/// With a request budget, no statement runs longer than it (`statement_timeout`,
/// store::deadline): the database stops a runaway query itself, also when the
/// request that started it is gone.
#[derive(Debug)]
struct PgSession {
    statement_timeout: Option<Duration>,
}

impl CustomizeConnection<Managed<PgConnection>, diesel::r2d2::Error> for PgSession {
    fn on_acquire(&self, conn: &mut Managed<PgConnection>) -> Result<(), diesel::r2d2::Error> {
        let mut sql = String::from("SET plan_cache_mode = force_generic_plan;");
        if let Some(t) = self.statement_timeout {
            sql.push_str(&format!(
                " SET statement_timeout = {};",
                t.as_millis().max(1)
            ));
        }
        conn.conn
            .batch_execute(&sql)
            .map_err(diesel::r2d2::Error::QueryError)?;
        // The server process, for cancelling a hung-up client's statement.
        conn.pid = Some(
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Integer>(
                "pg_backend_pid()",
            ))
            .get_result(&mut conn.conn)
            .map_err(diesel::r2d2::Error::QueryError)?,
        );
        Ok(())
    }
}

/// Creates a SQLite database file that does not exist yet readable and writable by
/// its owner only (0600), whatever the umask: it holds sealed bodies, but also the
/// audit trail's order and clear dates. SQLite gives the `-wal` and `-shm` files it
/// creates beside it the database file's permissions. An existing file is left as
/// the operator made it; `:memory:` and `file:` URIs are SQLite's to open.
fn create_private(path: &str) -> std::io::Result<()> {
    if path.is_empty() || path == ":memory:" || path.starts_with("file:") {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The pools [`DbPool::connect`] makes: the requests' pool and the audit
/// writer's own.
pub struct Pools {
    pub main: DbPool,
    /// The group commit of read audits: connections of its own, so that an
    /// AuditEvent can be committed whatever the requests hold (a 503 for a
    /// saturated pool is then audited and says why, instead of "the AuditEvent
    /// could not be recorded").
    pub audit: DbPool,
    pub backend: Backend,
}

/// The audit writer's connections: its threads (store::audit: one on SQLite, two
/// on PostgreSQL).
const AUDIT_CONNECTIONS: [u32; 2] = [1, 2];

impl DbPool {
    /// The pools for `url`; `request_timeout`: the budget of a request's store
    /// work (store::deadline), None for none; `shares`: the shares of expensive
    /// work (store::share).
    pub fn connect(
        url: &str,
        size: u32,
        timeout: Duration,
        request_timeout: Option<Duration>,
        shares: ShareSizes,
    ) -> Result<Pools, StoreError> {
        // OpenSSL is initialised by the openssl crate, without an exit handler,
        // before libpq can initialise it with one: that handler freed OpenSSL's
        // state while pool threads still closed TLS connections to PostgreSQL,
        // and a process exiting then crashed with SIGSEGV now and then.
        openssl::init();
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get() as u32);
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            // The HTTP workers read inline (one connection each) beside the audit
            // writer and the write transactions.
            let size = if size == 0 { cores + 4 } else { size };
            create_private(path).map_err(|e| StoreError::Unavailable(Unavailable::File(e)))?;
            if request_timeout.is_some() {
                // Before the first connection: the handler is installed as each opens.
                super::deadline::install_sqlite_interrupt();
            }
            let build = |size: u32| {
                Pool::builder()
                    .max_size(size)
                    .connection_timeout(timeout)
                    // A checkout test is a `SELECT 1` round trip on every request;
                    // a broken SQLite connection shows as an error on use instead.
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(SqlitePragmas))
                    .build(Manager(ConnectionManager::<SqliteConnection>::new(path)))
                    .map_err(|e| StoreError::Unavailable(Unavailable::Unreachable(e)))
            };
            // SQLite's statements run on this process's cores, beside the reads: a
            // search share as large as the expensive share (4 on 2 cores) put reads'
            // p99 at 205 ms beside the worst searches, one search connection
            // at 56 ms, no search at 31-49 ms (benches/shares, docs/benchmarks.md).
            // So by default searches get half the cores' worth of connections.
            let mut shares = shares;
            if shares.search == 0 {
                shares.search = (cores / 2).max(1);
            }
            // One writer queue for both pools: the audit writer's commits take
            // SQLite's write lock like any write.
            let queue = std::sync::Arc::new(WriterQueue::default());
            Ok(Pools {
                main: DbPool {
                    conns: Conns::Sqlite(build(size)?, queue.clone()),
                    shares: Some(std::sync::Arc::new(Shares::new(size, shares))),
                    timeout,
                    listen_url: None,
                },
                audit: DbPool {
                    conns: Conns::Sqlite(build(AUDIT_CONNECTIONS[0])?, queue),
                    shares: None,
                    timeout,
                    listen_url: None,
                },
                backend: Backend::Sqlite,
            })
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let url = &without_gss_encryption(url);
            let size = if size == 0 { cores * 4 } else { size };
            // build_unchecked: the server starts (and reports not-ready) while the
            // database is down, and recovers when it comes back.
            // No idle minimum: with one, r2d2 opens a replacement connection in its
            // own thread whenever the idle count drops, also while a short-lived
            // command-line process exits; libpq's TLS set-up racing the process's exit
            // handlers crashed `fhirgate clients add` (SIGSEGV) now and then. Used
            // connections stay pooled (until r2d2's idle timeout) all the same.
            let build = |size: u32| {
                Pool::builder()
                    .max_size(size)
                    .min_idle(Some(0))
                    .connection_timeout(timeout)
                    .test_on_check_out(false)
                    .connection_customizer(Box::new(PgSession {
                        statement_timeout: request_timeout,
                    }))
                    .build_unchecked(Manager(ConnectionManager::<PgConnection>::new(url)))
            };
            Ok(Pools {
                main: DbPool {
                    conns: Conns::Pg(build(size)),
                    shares: Some(std::sync::Arc::new(Shares::new(size, shares))),
                    timeout,
                    listen_url: Some(url.to_string()),
                },
                audit: DbPool {
                    conns: Conns::Pg(build(AUDIT_CONNECTIONS[1])),
                    shares: None,
                    timeout,
                    listen_url: None,
                },
                backend: Backend::Postgres,
            })
        } else {
            Err(StoreError::BadUrl(
                url.split('@').next_back().unwrap_or(url).to_string(),
            ))
        }
    }

    /// PostgreSQL: a connection of its own (not pooled) that LISTENs on
    /// `channel`; None for SQLite.
    pub fn listener(&self, channel: &str) -> Option<Result<PgConnection, StoreError>> {
        self.dedicated(Some(channel))
    }

    /// PostgreSQL: a connection of its own outside the pool that LISTENs on
    /// `channel` when given (None: only sends); None on SQLite.
    pub fn dedicated(&self, listen: Option<&str>) -> Option<Result<PgConnection, StoreError>> {
        let url = self.listen_url.as_deref()?;
        Some((|| {
            let mut c = PgConnection::establish(url).map_err(|e| {
                StoreError::Unavailable(Unavailable::ConnectionLost(
                    diesel::result::Error::DatabaseError(
                        diesel::result::DatabaseErrorKind::ClosedConnection,
                        Box::new(e.to_string()),
                    ),
                ))
            })?;
            if let Some(channel) = listen {
                c.batch_execute(&format!("LISTEN {channel}"))?;
            }
            Ok(c)
        })())
    }

    /// A connection; for a thread doing expensive work (store::share), only with
    /// a slot of its share.
    pub fn get(&self) -> Result<DbConn, StoreError> {
        self.get_with(true)
    }

    fn get_with(&self, take_share: bool) -> Result<DbConn, StoreError> {
        let cancel = super::cancel::current();
        if cancel.as_ref().is_some_and(|c| c.is_cancelled()) {
            return Err(StoreError::Cancelled);
        }
        let until = super::share::until(self.timeout);
        let slot = match (&self.shares, take_share) {
            (Some(s), true) => s
                .enter(until)
                .map_err(|full| StoreError::Unavailable(Unavailable::ShareExhausted(full)))?,
            _ => None,
        };
        let left = until.saturating_duration_since(std::time::Instant::now());
        let conn = match &self.conns {
            Conns::Sqlite(p, _) => p
                .get_timeout(left)
                .map(Pooled::Sqlite)
                .map_err(|e| unavailable(e, p.state(), p.max_size()))?,
            // A connection whose server went away (restart, terminated backend) is
            // not handed out again: libpq then reports its transaction status as
            // unknown, diesel calls the connection broken and r2d2 drops it on
            // return (tests/api/crash.rs: full service after the database is back).
            Conns::Pg(p) => p
                .get_timeout(left)
                .map(Pooled::Pg)
                .map_err(|e| unavailable(e, p.state(), p.max_size()))?,
        };
        if let (Some(cancel), Pooled::Pg(c)) = (&cancel, &conn) {
            if let Some(pid) = c.pid {
                cancel.register(pid);
            }
        }
        Ok(DbConn {
            conn,
            taken: std::time::Instant::now(),
            cancel,
            _slot: slot,
        })
    }

    /// Runs `body` in one write transaction. On SQLite the writer's turn is taken
    /// first, before a pooled connection: writers waiting for their turn hold no
    /// connection, so reads and the audit writer still get one while a long
    /// transaction runs; and a SQLite write takes no share slot, as the one writer
    /// holds at most one connection (store::share). Everything a write can compute
    /// without the database (sealing, blinding, AuditEvent JSON) is computed
    /// before this is called.
    pub fn write<R, E>(&self, body: impl FnOnce(&mut AnyConn) -> Result<R, E>) -> Result<R, E>
    where
        E: From<diesel::result::Error> + From<StoreError>,
    {
        let turn = match &self.conns {
            // The audit writer's pool is the one without shares: its group commits
            // go first (WriterQueue).
            Conns::Sqlite(_, q) => Some((
                q.turn(self.shares.is_none()),
                super::deadline::Guard::restart(),
            )),
            Conns::Pg(_) => None,
        };
        let mut conn = self.get_with(turn.is_none())?;
        conn.transaction(|c| {
            // A write that starts late in its request gets what is left of the
            // budget (the session's statement_timeout is the whole budget).
            if let (AnyConn::Pg(_), Some(ms)) = (
                &*c,
                super::deadline::statement_timeout_after(Duration::from_secs(1)),
            ) {
                c.batch(&format!("SET LOCAL statement_timeout = {ms}"))?;
            }
            body(c)
        })
    }

    pub fn backend(&self) -> Backend {
        match &self.conns {
            Conns::Sqlite(..) => Backend::Sqlite,
            Conns::Pg(_) => Backend::Postgres,
        }
    }

    /// Runs `body` on a pooled connection outside any transaction.
    pub fn read<R>(
        &self,
        body: impl FnOnce(&mut AnyConn) -> Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut conn = self.get()?;
        // A PostgreSQL read that starts more than a second into its request (a
        // search's count or includes after its page) runs in a transaction limited
        // to what is left of the budget (`SET LOCAL` ends with it, so the pooled
        // connection keeps the whole budget for the next request).
        if let (Pooled::Pg(c), Some(ms)) = (
            &mut conn.conn,
            super::deadline::statement_timeout_after(Duration::from_secs(1)),
        ) {
            return diesel::Connection::transaction(&mut c.conn, |c| {
                let mut any = AnyConn::Pg(c);
                any.batch(&format!("SET LOCAL statement_timeout = {ms}"))?;
                body(&mut any)
            });
        }
        body(&mut conn.any())
    }

    /// An idle SQLite connection, without waiting; None for PostgreSQL (its queries
    /// wait on the network and belong on the blocking pool). Cheap work only: it
    /// takes no share slot.
    pub fn try_get_local(&self) -> Option<DbConn> {
        match &self.conns {
            Conns::Sqlite(p, _) => p.try_get().map(|c| DbConn {
                conn: Pooled::Sqlite(c),
                taken: std::time::Instant::now(),
                cancel: None,
                _slot: None,
            }),
            Conns::Pg(_) => None,
        }
    }

    /// The pool's size and use, and its shares' (readiness).
    pub fn state(&self) -> PoolState {
        let (state, size) = match &self.conns {
            Conns::Sqlite(p, _) => (p.state(), p.max_size()),
            Conns::Pg(p) => (p.state(), p.max_size()),
        };
        PoolState {
            size,
            open: state.connections,
            idle: state.idle_connections,
            reserved: self.shares.as_ref().map_or(0, |s| s.reserved()),
            shares: self.shares.as_ref().map(|s| s.state()).unwrap_or_default(),
        }
    }

    /// Applies pending migrations; returns how many ran.
    pub fn migrate(&self) -> Result<usize, StoreError> {
        let mut conn = self.get()?;
        let applied = match &mut conn.conn {
            Pooled::Sqlite(c) => c
                .conn
                .run_pending_migrations(SQLITE_MIGRATIONS)
                .map(|v| v.len()),
            Pooled::Pg(c) => {
                // Several nodes may start at once on one database: one migrates,
                // the others wait for it and then find nothing pending.
                let conn: &mut PgConnection = &mut c.conn;
                diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
                    .execute(conn)
                    .map_err(|e| StoreError::Migration(Box::new(e)))?;
                let r = conn
                    .run_pending_migrations(POSTGRES_MIGRATIONS)
                    .map(|v| v.len());
                let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
                    .execute(conn);
                r
            }
        };
        applied.map_err(StoreError::Migration)
    }
}

/// How a pool is used now (readiness).
#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolState {
    /// Most connections.
    pub size: u32,
    /// Connections open now.
    pub open: u32,
    /// Open connections no request holds.
    pub idle: u32,
    /// Connections no expensive work may take.
    pub reserved: u32,
    pub shares: Vec<ShareState>,
}

impl PoolState {
    /// Every connection exists and is held: a request needing one waits.
    pub fn saturated(&self) -> bool {
        self.open >= self.size && self.idle == 0
    }
}

/// Why no connection came from the pool in time: every connection of the pool
/// exists and is busy (the node is saturated), or connections could not be made
/// (the database is away).
fn unavailable(e: diesel::r2d2::PoolError, state: diesel::r2d2::State, max: u32) -> StoreError {
    if state.connections >= max && state.idle_connections == 0 {
        StoreError::Unavailable(Unavailable::PoolExhausted)
    } else {
        StoreError::Unavailable(Unavailable::Unreachable(e))
    }
}

/// The URL with libpq's GSSAPI encryption negotiation off (`gssencmode=disable`)
/// unless the URL chooses: libpq's default (`prefer`) asks Kerberos for a
/// credential cache at every connect, and a connect that ran while the process
/// exited aborted it inside libkrb5 (`k5_mutex_lock: Assertion failed`, seen once
/// in CI as the test binary ended). fhirgate's connections use TLS, not GSSAPI.
fn without_gss_encryption(url: &str) -> String {
    if url.contains("gssencmode=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}gssencmode=disable")
}

#[cfg(test)]
mod gss_tests {
    use super::without_gss_encryption;

    #[test]
    fn gss_encryption_is_off_unless_the_url_chooses() {
        assert_eq!(
            without_gss_encryption("postgres://u@h/db"),
            "postgres://u@h/db?gssencmode=disable"
        );
        assert_eq!(
            without_gss_encryption("postgres://u@h/db?sslmode=require"),
            "postgres://u@h/db?sslmode=require&gssencmode=disable"
        );
        assert_eq!(
            without_gss_encryption("postgres://u@h/db?gssencmode=prefer"),
            "postgres://u@h/db?gssencmode=prefer"
        );
    }
}
