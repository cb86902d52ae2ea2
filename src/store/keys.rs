//! The keys of a database: the key check that tells a wrong master key from the
//! right one, and the data keys (purpose `data` for bodies, `index` for blind
//! index hashes and cursors) wrapped by the master key. Rotation adds a data key
//! for new writes and may re-wrap every key under a new master key; rows are
//! never rewritten.

use diesel::QueryableByName;

use super::conn::{AnyConn, Count};
use super::pool::DbPool;
use super::StoreError;
use crate::crypto::{Keyring, MasterKey, WrappedKey};
use crate::fhir::now_micros;

#[derive(QueryableByName)]
struct KeyRow {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    key_id: i64,
    #[diesel(sql_type = diesel::sql_types::Binary)]
    wrapped: Vec<u8>,
}

#[derive(QueryableByName)]
struct Sealed {
    #[diesel(sql_type = diesel::sql_types::Binary)]
    sealed: Vec<u8>,
}

/// Whose keys: resource bodies and AuditEvents, or the blind index and cursors.
#[derive(Debug, Clone, Copy)]
enum Purpose {
    Data,
    Index,
}

impl Purpose {
    fn as_str(self) -> &'static str {
        match self {
            Purpose::Data => "data",
            Purpose::Index => "index",
        }
    }
}

fn load_keys(c: &mut AnyConn, purpose: Purpose) -> Result<Vec<WrappedKey>, StoreError> {
    let mut sql = c.sql();
    sql.push("SELECT key_id, wrapped FROM data_keys WHERE purpose = ")
        .text(purpose.as_str())
        .push(" ORDER BY key_id");
    Ok(c.load::<KeyRow>(sql)?
        .into_iter()
        .map(|k| WrappedKey {
            id: k.key_id,
            wrapped: k.wrapped,
        })
        .collect())
}

/// Stores a new wrapped key of a purpose under the next free id.
fn add_key(
    c: &mut AnyConn,
    master: &MasterKey,
    purpose: Purpose,
) -> Result<WrappedKey, StoreError> {
    let mut sql = c.sql();
    sql.push("SELECT COALESCE(MAX(key_id), 0) AS n FROM data_keys");
    let max = c.load::<Count>(sql)?.first().map_or(0, |r| r.n);
    let w = Keyring::new_data_key(master, max + 1)?;
    let mut sql = c.sql();
    sql.push("INSERT INTO data_keys (key_id, purpose, wrapped, created) VALUES (")
        .i64(w.id)
        .push(", ")
        .text(purpose.as_str())
        .push(", ")
        .bind(super::sql::Bind::Bytes(w.wrapped.clone()))
        .push(", ")
        .i64(now_micros())
        .push(")");
    c.execute(sql)?;
    Ok(w)
}

/// Opens the data keys and the index key; creates what a new database lacks.
fn open_ring(c: &mut AnyConn, master: &MasterKey) -> Result<Keyring, StoreError> {
    let mut data = load_keys(c, Purpose::Data)?;
    if data.is_empty() {
        data.push(add_key(c, master, Purpose::Data)?);
    }
    let index = match load_keys(c, Purpose::Index)?.pop() {
        Some(k) => k,
        None => add_key(c, master, Purpose::Index)?,
    };
    Ok(Keyring::open(master, &data)?.with_index_key(master, &index)?)
}

fn key_check(c: &mut AnyConn) -> Result<Option<Vec<u8>>, StoreError> {
    let mut sql = c.sql();
    sql.push("SELECT sealed FROM key_check");
    Ok(c.load::<Sealed>(sql)?.into_iter().next().map(|s| s.sealed))
}

pub fn has_keys(pool: &DbPool) -> Result<bool, StoreError> {
    pool.read(|c| Ok(key_check(c)?.is_some()))
}

/// Opens the keyring with the master key. A new database gets its key check and
/// first keys; a database that holds data but no key check refuses any key.
pub fn unlock(pool: &DbPool, master: &MasterKey) -> Result<Keyring, StoreError> {
    pool.write(|c| {
        match key_check(c)? {
            Some(sealed) => master.verify(&sealed)?,
            None => {
                let mut sql = c.sql();
                sql.push("SELECT COUNT(*) AS n FROM resource_versions");
                if c.load::<Count>(sql)?.first().is_some_and(|r| r.n > 0) {
                    return Err(StoreError::MissingKey);
                }
                let mut sql = c.sql();
                sql.push("INSERT INTO key_check (id, sealed, created) VALUES (1, ")
                    .bind(super::sql::Bind::Bytes(master.key_check()?))
                    .push(", ")
                    .i64(now_micros())
                    .push(")");
                c.execute(sql)?;
            }
        }
        open_ring(c, master)
    })
}

/// Adds a data key for new writes and, with `new_master`, re-wraps every key under
/// it. Returns the opened keyring and the new data key's id.
pub fn rotate(
    pool: &DbPool,
    master: &MasterKey,
    new_master: Option<&MasterKey>,
) -> Result<(Keyring, i64), StoreError> {
    pool.write(|c| {
        let sealed = key_check(c)?.ok_or(StoreError::MissingKey)?;
        master.verify(&sealed)?;
        let ring = open_ring(c, master)?;
        let kek = new_master.unwrap_or(master);
        if let Some(new) = new_master {
            for w in ring.rewrap(new)? {
                let mut sql = c.sql();
                sql.push("UPDATE data_keys SET wrapped = ")
                    .bind(super::sql::Bind::Bytes(w.wrapped))
                    .push(" WHERE key_id = ")
                    .i64(w.id);
                c.execute(sql)?;
            }
            let mut sql = c.sql();
            sql.push("UPDATE key_check SET sealed = ")
                .bind(super::sql::Bind::Bytes(new.key_check()?));
            c.execute(sql)?;
        }
        let fresh = add_key(c, kek, Purpose::Data)?;
        Ok((open_ring(c, kek)?, fresh.id))
    })
}
