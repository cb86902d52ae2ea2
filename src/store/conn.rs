//! A connection of either backend as one type: [`AnyConn`] runs the store's
//! statements (built with [`Sql`], bound parameters only) on SQLite or
//! PostgreSQL, so every query, read and write of the store is written once, as a
//! plain function over `&mut AnyConn`, with no per-backend copies and no macros.
//! Where the backends need different SQL (array parameters, advisory locks), the
//! difference is a `match` on [`AnyConn::backend`] in one place.

use diesel::connection::SimpleConnection;
use diesel::pg::Pg;
use diesel::sqlite::Sqlite;
use diesel::{PgConnection, QueryableByName, RunQueryDsl, SqliteConnection};

use super::pool::Backend;
use super::sql::Sql;
use super::StoreError;

/// A borrowed connection of either backend.
pub(crate) enum AnyConn<'a> {
    Sqlite(&'a mut SqliteConnection),
    Pg(&'a mut PgConnection),
}

/// A row type both backends can decode by column name.
pub(crate) trait Row: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static {}

impl<T: QueryableByName<Sqlite> + QueryableByName<Pg> + 'static> Row for T {}

impl AnyConn<'_> {
    pub fn backend(&self) -> Backend {
        match self {
            AnyConn::Sqlite(_) => Backend::Sqlite,
            AnyConn::Pg(_) => Backend::Postgres,
        }
    }

    /// A new statement for this connection's backend.
    pub fn sql(&self) -> Sql {
        Sql::new(self.backend())
    }

    /// Runs a query and decodes its rows.
    pub fn load<R: Row>(&mut self, sql: Sql) -> Result<Vec<R>, StoreError> {
        let sql = sql.finish();
        Ok(match self {
            AnyConn::Sqlite(c) => sql.load::<R>(*c)?,
            AnyConn::Pg(c) => sql.load::<R>(*c)?,
        })
    }

    /// Runs a statement; the number of rows it changed.
    pub fn execute(&mut self, sql: Sql) -> Result<usize, StoreError> {
        let sql = sql.finish();
        Ok(match self {
            AnyConn::Sqlite(c) => sql.execute(*c)?,
            AnyConn::Pg(c) => sql.execute(*c)?,
        })
    }

    /// Runs statements without parameters (pragmas, checkpoints).
    pub fn batch(&mut self, text: &str) -> Result<(), StoreError> {
        match self {
            AnyConn::Sqlite(c) => c.batch_execute(text)?,
            AnyConn::Pg(c) => c.batch_execute(text)?,
        }
        Ok(())
    }

    /// Serialises this transaction with every other that takes the same keys,
    /// until commit: PostgreSQL transaction-scoped advisory locks, taken in
    /// ascending order so that two transactions cannot wait for each other in a
    /// cycle. SQLite's `BEGIN IMMEDIATE` already serialises all writers.
    pub fn lock(&mut self, keys: &[i64], shared: bool) -> Result<(), StoreError> {
        if keys.is_empty() || self.backend() == Backend::Sqlite {
            return Ok(());
        }
        let mut sorted = keys.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let function = if shared {
            "pg_advisory_xact_lock_shared"
        } else {
            "pg_advisory_xact_lock"
        };
        let mut sql = self.sql();
        // unnest yields the array in order, so the locks are taken ascending.
        sql.push(&format!("SELECT {function}(k) FROM unnest("))
            .bind(super::sql::Bind::I64s(sorted))
            .push(") AS t(k)");
        self.execute(sql)?;
        Ok(())
    }
}

/// Decodes a `SELECT COUNT(*) AS n`.
#[derive(QueryableByName)]
pub(crate) struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub n: i64,
}
