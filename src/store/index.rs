//! The search index rows of one resource version and how they are written: in the
//! write transaction of the version, replacing the rows of the previous one. Values
//! arrive in clear from the search module; strings, tokens and unit keys are
//! blinded here with the index key, so no clear text reaches the tables.

use diesel::prelude::*;

use super::pool::Backend;
use super::schema::{search_blind, search_date, search_number, search_reference, search_uri};
use super::sql::{Bind, Sql};
use super::StoreError;
use crate::crypto::Keyring;

/// A referenced target as the index keeps it: local resources by type and id, the
/// others by URL (absolute, or canonical without its version).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RefValue {
    pub target_type: String,
    pub target_id: String,
    pub url: String,
}

/// The index entries of a resource, in clear. `pid` identifies (resource type,
/// search parameter); blind values carry a tag saying which form they are
/// (`p:` prefix, `c:` code, ...), chosen by the search module.
#[derive(Debug, Default, Clone)]
pub struct IndexRows {
    pub blind: Vec<(i64, String)>,
    pub dates: Vec<(i64, i64, i64)>,
    /// (pid, key to blind or None for 0, lo, hi)
    pub numbers: Vec<(i64, Option<String>, f64, f64)>,
    pub references: Vec<(i64, RefValue)>,
    pub uris: Vec<(i64, String)>,
}

impl IndexRows {
    pub fn is_empty(&self) -> bool {
        self.blind.is_empty()
            && self.dates.is_empty()
            && self.numbers.is_empty()
            && self.references.is_empty()
            && self.uris.is_empty()
    }

    pub fn len(&self) -> usize {
        self.blind.len()
            + self.dates.len()
            + self.numbers.len()
            + self.references.len()
            + self.uris.len()
    }

    /// Sorts and removes duplicates (the blind table's key is unique per resource).
    pub fn dedup(&mut self) {
        self.blind.sort();
        self.blind.dedup();
        self.dates.sort();
        self.dates.dedup();
        self.numbers.sort_by(|a, b| {
            (a.0, &a.1)
                .cmp(&(b.0, &b.1))
                .then(a.2.total_cmp(&b.2))
                .then(a.3.total_cmp(&b.3))
        });
        self.numbers.dedup();
        self.references.sort();
        self.references.dedup();
        self.uris.sort();
        self.uris.dedup();
    }
}

/// The blind hash of a tagged value (0 is reserved for "no key" in `search_number.k`).
pub fn blind_key(ring: &Keyring, value: &str) -> Result<i64, StoreError> {
    let h = ring.blind64(value)?;
    Ok(if h == 0 { 1 } else { h })
}

/// A connection inside a write transaction that maintains index rows. SQLite
/// runs in process, so a statement per table costs little; on PostgreSQL every
/// statement is a round trip, so each operation is one statement with array
/// parameters (the same text whatever the row count: a cached prepared statement).
pub(crate) trait IndexConn {
    /// Removes every index row of a resource.
    fn delete_index(&mut self, rid: i64) -> Result<(), StoreError>;
    /// Inserts the rows of a resource (deduplicated first: [`IndexRows::dedup`]).
    fn insert_index(
        &mut self,
        ring: &Keyring,
        rid: i64,
        rows: &IndexRows,
    ) -> Result<(), StoreError>;
}

impl IndexConn for diesel::SqliteConnection {
    fn delete_index(&mut self, rid: i64) -> Result<(), StoreError> {
        let c = self;
        diesel::delete(search_blind::table.filter(search_blind::rid.eq(rid))).execute(c)?;
        diesel::delete(search_date::table.filter(search_date::rid.eq(rid))).execute(c)?;
        diesel::delete(search_number::table.filter(search_number::rid.eq(rid))).execute(c)?;
        diesel::delete(search_reference::table.filter(search_reference::rid.eq(rid))).execute(c)?;
        diesel::delete(search_uri::table.filter(search_uri::rid.eq(rid))).execute(c)?;
        Ok(())
    }

    /// One statement per table that has rows: the rows travel as one JSON array
    /// parameter unpacked by `json_each`, so the statement text is the same for any
    /// row count and stays prepared (a multi-row VALUES list would be parsed anew
    /// for every count: measured 1.6x slower creates, docs/benchmarks.md).
    fn insert_index(
        &mut self,
        ring: &Keyring,
        rid: i64,
        rows: &IndexRows,
    ) -> Result<(), StoreError> {
        let json = |v: serde_json::Value| serde_json::to_string(&v).unwrap_or_else(|_| "[]".into());
        let mut run = |table: &str, cols: &str, n: usize, data: String| -> Result<(), StoreError> {
            let mut sql = Sql::new(Backend::Sqlite);
            sql.push(&format!("INSERT INTO {table} (rid, {cols}) SELECT "));
            sql.i64(rid);
            for i in 0..n {
                sql.push(&format!(", json_extract(value, '$[{i}]')"));
            }
            sql.push(" FROM json_each(").text(&data).push(")");
            sql.finish().execute(&mut *self)?;
            Ok(())
        };
        if !rows.blind.is_empty() {
            let mut seen = std::collections::HashSet::with_capacity(rows.blind.len());
            let mut v = Vec::with_capacity(rows.blind.len());
            for (pid, value) in &rows.blind {
                let h = blind_key(ring, value)?;
                if seen.insert((*pid, h)) {
                    v.push(serde_json::json!([pid, h]));
                }
            }
            run(
                "search_blind",
                "pid, h",
                2,
                json(serde_json::Value::Array(v)),
            )?;
        }
        if !rows.dates.is_empty() {
            let v: Vec<_> = rows
                .dates
                .iter()
                .map(|(p, lo, hi)| serde_json::json!([p, lo, hi]))
                .collect();
            run(
                "search_date",
                "pid, lo, hi",
                3,
                json(serde_json::Value::Array(v)),
            )?;
        }
        if !rows.numbers.is_empty() {
            let mut v = Vec::with_capacity(rows.numbers.len());
            for (pid, key, lo, hi) in &rows.numbers {
                let k = match key {
                    Some(k) => blind_key(ring, k)?,
                    None => 0,
                };
                v.push(serde_json::json!([pid, k, lo, hi]));
            }
            run(
                "search_number",
                "pid, k, lo, hi",
                4,
                json(serde_json::Value::Array(v)),
            )?;
        }
        if !rows.references.is_empty() {
            let v: Vec<_> = rows
                .references
                .iter()
                .map(|(p, r)| serde_json::json!([p, r.target_type, r.target_id, r.url]))
                .collect();
            run(
                "search_reference",
                "pid, target_type, target_id, url",
                4,
                json(serde_json::Value::Array(v)),
            )?;
        }
        if !rows.uris.is_empty() {
            let v: Vec<_> = rows
                .uris
                .iter()
                .map(|(p, u)| serde_json::json!([p, u]))
                .collect();
            run(
                "search_uri",
                "pid, uri",
                2,
                json(serde_json::Value::Array(v)),
            )?;
        }
        Ok(())
    }
}

impl IndexConn for diesel::PgConnection {
    fn delete_index(&mut self, rid: i64) -> Result<(), StoreError> {
        let mut sql = Sql::new(Backend::Postgres);
        sql.push("WITH b AS (DELETE FROM search_blind WHERE rid = ")
            .i64(rid);
        sql.push("), d AS (DELETE FROM search_date WHERE rid = ")
            .i64(rid);
        sql.push("), n AS (DELETE FROM search_number WHERE rid = ")
            .i64(rid);
        sql.push("), r AS (DELETE FROM search_reference WHERE rid = ")
            .i64(rid);
        sql.push(") DELETE FROM search_uri WHERE rid = ").i64(rid);
        sql.finish().execute(self)?;
        Ok(())
    }

    fn insert_index(
        &mut self,
        ring: &Keyring,
        rid: i64,
        rows: &IndexRows,
    ) -> Result<(), StoreError> {
        let mut sql = Sql::new(Backend::Postgres);
        sql.push("WITH ");
        pg_index_ctes(&mut sql, ring, RidOf::Value(rid), rows)?;
        sql.push(" SELECT 1");
        sql.finish().execute(self)?;
        Ok(())
    }
}

/// Where the rid of new index rows comes from in a PostgreSQL statement.
pub(crate) enum RidOf<'a> {
    Value(i64),
    /// The `rid` column of a CTE of the same statement (a resource inserted by it).
    Cte(&'a str),
}

/// The data-modifying CTEs (`b AS (...), d AS (...), ...`, no `WITH`) that insert the
/// index rows of one resource with array parameters: one text whatever the row
/// count, so one cached prepared statement.
pub(crate) fn pg_index_ctes(
    sql: &mut Sql,
    ring: &Keyring,
    rid: RidOf<'_>,
    rows: &IndexRows,
) -> Result<(), StoreError> {
    let mut seen = std::collections::HashSet::with_capacity(rows.blind.len());
    let (mut bp, mut bh) = (Vec::new(), Vec::new());
    for (pid, value) in &rows.blind {
        let h = blind_key(ring, value)?;
        if seen.insert((*pid, h)) {
            bp.push(*pid);
            bh.push(h);
        }
    }
    let (dp, dlo, dhi): (Vec<i64>, Vec<i64>, Vec<i64>) = unzip3(rows.dates.iter().copied());
    let (mut np, mut nk, mut nlo, mut nhi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (pid, key, lo, hi) in &rows.numbers {
        np.push(*pid);
        nk.push(match key {
            Some(k) => blind_key(ring, k)?,
            None => 0,
        });
        nlo.push(*lo);
        nhi.push(*hi);
    }
    let rp: Vec<i64> = rows.references.iter().map(|(p, _)| *p).collect();
    let rt: Vec<String> = rows
        .references
        .iter()
        .map(|(_, r)| r.target_type.clone())
        .collect();
    let ri: Vec<String> = rows
        .references
        .iter()
        .map(|(_, r)| r.target_id.clone())
        .collect();
    let ru: Vec<String> = rows.references.iter().map(|(_, r)| r.url.clone()).collect();
    let up: Vec<i64> = rows.uris.iter().map(|(p, _)| *p).collect();
    let uu: Vec<String> = rows.uris.iter().map(|(_, u)| u.clone()).collect();
    // `SELECT <rid>, cols FROM [cte,] unnest(arrays) AS t(cols)`
    let select = |sql: &mut Sql, cols: &str| {
        sql.push(" SELECT ");
        match rid {
            RidOf::Value(v) => {
                sql.i64(v).push(&format!(", {cols} FROM unnest("));
            }
            RidOf::Cte(c) => {
                sql.push(&format!("{c}.rid, {cols} FROM {c}, unnest("));
            }
        }
    };
    sql.push("b AS (INSERT INTO search_blind (rid, pid, h)");
    select(sql, "p, h");
    sql.bind(Bind::I64s(bp)).push(", ").bind(Bind::I64s(bh));
    sql.push(") AS t(p, h)), d AS (INSERT INTO search_date (rid, pid, lo, hi)");
    select(sql, "p, lo, hi");
    sql.bind(Bind::I64s(dp))
        .push(", ")
        .bind(Bind::I64s(dlo))
        .push(", ")
        .bind(Bind::I64s(dhi));
    sql.push(") AS t(p, lo, hi)), n AS (INSERT INTO search_number (rid, pid, k, lo, hi)");
    select(sql, "p, k, lo, hi");
    sql.bind(Bind::I64s(np)).push(", ").bind(Bind::I64s(nk));
    sql.push(", ")
        .bind(Bind::F64s(nlo))
        .push(", ")
        .bind(Bind::F64s(nhi));
    sql.push(
        ") AS t(p, k, lo, hi)), r AS (INSERT INTO search_reference (rid, pid, target_type, target_id, url)",
    );
    select(sql, "p, tt, ti, u");
    sql.bind(Bind::I64s(rp)).push(", ").bind(Bind::Texts(rt));
    sql.push(", ")
        .bind(Bind::Texts(ri))
        .push(", ")
        .bind(Bind::Texts(ru));
    sql.push(") AS t(p, tt, ti, u)), u AS (INSERT INTO search_uri (rid, pid, uri)");
    select(sql, "p, u");
    sql.bind(Bind::I64s(up)).push(", ").bind(Bind::Texts(uu));
    sql.push(") AS t(p, u))");
    Ok(())
}

fn unzip3(it: impl Iterator<Item = (i64, i64, i64)>) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let (mut a, mut b, mut c) = (Vec::new(), Vec::new(), Vec::new());
    for (x, y, z) in it {
        a.push(x);
        b.push(y);
        c.push(z);
    }
    (a, b, c)
}
