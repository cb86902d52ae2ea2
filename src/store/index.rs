//! The search index rows of resource versions and how they are written: in the
//! write transaction of the versions, replacing the rows of the previous ones.
//! Values arrive in clear from the search module; strings, tokens and unit keys
//! are blinded here with the index key, so no clear text reaches the tables.
//!
//! Each table gets one statement however many rows and resources: on SQLite the
//! rows travel as one JSON array unpacked by `json_each`, on PostgreSQL as array
//! parameters unpacked by `unnest` (every table in one statement: one round trip).
//! The statement text depends only on the table, so it stays prepared. Rows go in
//! the order of each table's key, so consecutive rows land on the same index pages
//! (measured with benches/bundle/run.sh, docs/benchmarks.md).

use super::conn::AnyConn;
use super::pool::Backend;
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

/// The index rows of one resource as stored: strings, tokens and unit keys
/// blinded with the index key (computed before a write takes the writer's turn),
/// the rest as given. The resource's `rid` is joined in when the rows are written.
#[derive(Debug, Default, Clone)]
pub(crate) struct Blinded {
    /// (pid, h)
    blind: Vec<(i64, i64)>,
    /// (pid, lo, hi)
    dates: Vec<(i64, i64, i64)>,
    /// (pid, k, lo, hi)
    numbers: Vec<(i64, i64, f64, f64)>,
    references: Vec<(i64, RefValue)>,
    uris: Vec<(i64, String)>,
}

impl Blinded {
    /// True when one of the blind rows is `(pid, h)`.
    pub fn has_blind(&self, key: (i64, i64)) -> bool {
        self.blind.contains(&key)
    }

    /// The reference rows (pid, target).
    pub fn references(&self) -> &[(i64, RefValue)] {
        &self.references
    }

    /// The blind rows (pid, h).
    pub fn blinds(&self) -> &[(i64, i64)] {
        &self.blind
    }

    /// The date rows (pid, lo, hi).
    pub fn dates(&self) -> &[(i64, i64, i64)] {
        &self.dates
    }

    /// The number rows (pid, k, lo, hi).
    pub fn numbers(&self) -> &[(i64, i64, f64, f64)] {
        &self.numbers
    }

    /// The URI rows (pid, uri).
    pub fn uris(&self) -> &[(i64, String)] {
        &self.uris
    }

    pub fn is_empty(&self) -> bool {
        self.blind.is_empty()
            && self.dates.is_empty()
            && self.numbers.is_empty()
            && self.references.is_empty()
            && self.uris.is_empty()
    }
}

/// Blinds the strings, tokens and unit keys of a resource's index rows.
pub(crate) fn blind(ring: &Keyring, rows: &IndexRows) -> Result<Blinded, StoreError> {
    blind_with(rows, &mut |v| blind_key(ring, v))
}

/// Blinds the index rows of many resources that share most of their values (the
/// audit indexer's batches: server-made AuditEvents repeat their codes and
/// addresses), computing each distinct value's key once.
pub(crate) fn blind_many<'a>(
    ring: &Keyring,
    all: impl IntoIterator<Item = &'a IndexRows>,
) -> Result<Vec<Blinded>, StoreError> {
    let mut memo: std::collections::HashMap<&'a str, i64> = std::collections::HashMap::new();
    all.into_iter()
        .map(|rows| {
            blind_with(rows, &mut |v: &'a str| {
                if let Some(h) = memo.get(v) {
                    return Ok(*h);
                }
                let h = blind_key(ring, v)?;
                memo.insert(v, h);
                Ok(h)
            })
        })
        .collect()
}

fn blind_with<'a>(
    rows: &'a IndexRows,
    blind_of: &mut impl FnMut(&'a str) -> Result<i64, StoreError>,
) -> Result<Blinded, StoreError> {
    let mut b = Blinded {
        blind: Vec::with_capacity(rows.blind.len()),
        dates: rows.dates.clone(),
        numbers: Vec::with_capacity(rows.numbers.len()),
        references: rows.references.clone(),
        uris: rows.uris.clone(),
    };
    let mut seen = std::collections::HashSet::with_capacity(rows.blind.len());
    for (pid, value) in &rows.blind {
        let h = blind_of(value)?;
        // Two values may blind alike only by collision; the key must stay unique.
        if seen.insert((*pid, h)) {
            b.blind.push((*pid, h));
        }
    }
    for (pid, key, lo, hi) in &rows.numbers {
        let k = match key {
            Some(k) => blind_of(k)?,
            None => 0,
        };
        b.numbers.push((*pid, k, *lo, *hi));
    }
    Ok(b)
}

/// The rows of many resources, each table's rows sorted by its index key.
#[derive(Default)]
struct Table {
    /// (pid, h, rid)
    blind: Vec<(i64, i64, i64)>,
    /// (pid, lo, rid, hi)
    dates: Vec<(i64, i64, i64, i64)>,
    /// (pid, k, lo, rid, hi)
    numbers: Vec<(i64, i64, f64, i64, f64)>,
    /// (pid, target_id, target_type, rid, url)
    references: Vec<(i64, String, String, i64, String)>,
    /// (pid, uri, rid)
    uris: Vec<(i64, String, i64)>,
}

fn tables(of: &[(i64, &Blinded)]) -> Table {
    let mut p = Table::default();
    for &(rid, rows) in of {
        p.blind
            .extend(rows.blind.iter().map(|(pid, h)| (*pid, *h, rid)));
        p.dates
            .extend(rows.dates.iter().map(|(pid, lo, hi)| (*pid, *lo, rid, *hi)));
        p.numbers.extend(
            rows.numbers
                .iter()
                .map(|(pid, k, lo, hi)| (*pid, *k, *lo, rid, *hi)),
        );
        p.references.extend(rows.references.iter().map(|(pid, r)| {
            (
                *pid,
                r.target_id.clone(),
                r.target_type.clone(),
                rid,
                r.url.clone(),
            )
        }));
        p.uris
            .extend(rows.uris.iter().map(|(pid, u)| (*pid, u.clone(), rid)));
    }
    p.blind.sort_unstable();
    p.dates.sort_unstable();
    p.numbers
        .sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)).then(a.2.total_cmp(&b.2)));
    p.references.sort_unstable();
    p.uris.sort_unstable();
    p
}

/// The tables of the search index.
pub(crate) const TABLES: [&str; 5] = [
    "search_blind",
    "search_date",
    "search_number",
    "search_reference",
    "search_uri",
];

/// Removes every index row of a resource.
pub(crate) fn delete(c: &mut AnyConn, rid: i64) -> Result<(), StoreError> {
    match c.backend() {
        Backend::Postgres => {
            // One statement, one round trip.
            let mut sql = c.sql();
            sql.push("WITH b AS (DELETE FROM search_blind WHERE rid = ")
                .i64(rid);
            sql.push("), d AS (DELETE FROM search_date WHERE rid = ")
                .i64(rid);
            sql.push("), n AS (DELETE FROM search_number WHERE rid = ")
                .i64(rid);
            sql.push("), r AS (DELETE FROM search_reference WHERE rid = ")
                .i64(rid);
            sql.push(") DELETE FROM search_uri WHERE rid = ").i64(rid);
            c.execute(sql)?;
        }
        Backend::Sqlite => {
            for table in TABLES {
                let mut sql = c.sql();
                sql.push(&format!("DELETE FROM {table} WHERE rid = "))
                    .i64(rid);
                c.execute(sql)?;
            }
        }
    }
    Ok(())
}

/// Inserts the index rows of resources: multi-row `VALUES` statements on SQLite
/// ([`sqlite_rows`]), one statement for every table on PostgreSQL (array
/// parameters unpacked by `unnest`).
pub(crate) fn insert(c: &mut AnyConn, of: &[(i64, &Blinded)]) -> Result<(), StoreError> {
    if of.iter().all(|(_, b)| b.is_empty()) {
        return Ok(());
    }
    let p = tables(of);
    match c.backend() {
        Backend::Postgres => {
            let mut sql = c.sql();
            sql.push("WITH ");
            pg_index_ctes(&mut sql, p, None);
            sql.push(" SELECT 1");
            c.execute(sql)?;
        }
        Backend::Sqlite => sqlite_insert(c, p)?,
    }
    Ok(())
}

/// Rows per multi-row `INSERT ... VALUES` on SQLite. A table's rows go in chunks
/// of a power of two up to this, so each table has at most eight statement
/// shapes, each prepared once per connection; 128 rows of five columns stay under
/// SQLite's oldest limit of 999 parameters.
const SQLITE_CHUNK: usize = 128;

/// One statement per chunk of rows, every value a bound parameter. (Before: one
/// statement per table with the rows as one JSON array unpacked by `json_each` and
/// `json_extract`: SQLite's JSON functions were a fifth of the audit indexer's
/// time: `perf` during benches/audit/catchup.sh.)
fn sqlite_insert(c: &mut AnyConn, p: Table) -> Result<(), StoreError> {
    use Bind::{Text, F64, I64};
    sqlite_rows(
        c,
        "search_blind",
        &["pid", "h", "rid"],
        p.blind
            .into_iter()
            .flat_map(|(pid, h, rid)| [I64(pid), I64(h), I64(rid)])
            .collect(),
    )?;
    sqlite_rows(
        c,
        "search_date",
        &["pid", "lo", "rid", "hi"],
        p.dates
            .into_iter()
            .flat_map(|(pid, lo, rid, hi)| [I64(pid), I64(lo), I64(rid), I64(hi)])
            .collect(),
    )?;
    sqlite_rows(
        c,
        "search_number",
        &["pid", "k", "lo", "rid", "hi"],
        p.numbers
            .into_iter()
            .flat_map(|(pid, k, lo, rid, hi)| [I64(pid), I64(k), F64(lo), I64(rid), F64(hi)])
            .collect(),
    )?;
    sqlite_rows(
        c,
        "search_reference",
        &["pid", "target_id", "target_type", "rid", "url"],
        p.references
            .into_iter()
            .flat_map(|(pid, ti, tt, rid, url)| [I64(pid), Text(ti), Text(tt), I64(rid), Text(url)])
            .collect(),
    )?;
    sqlite_rows(
        c,
        "search_uri",
        &["pid", "uri", "rid"],
        p.uris
            .into_iter()
            .flat_map(|(pid, u, rid)| [I64(pid), Text(u), I64(rid)])
            .collect(),
    )
}

/// Inserts `values` (one row's columns after another, `cols.len()` each) into
/// `table` in chunks of a power of two rows.
fn sqlite_rows(
    c: &mut AnyConn,
    table: &str,
    cols: &[&str],
    values: Vec<Bind>,
) -> Result<(), StoreError> {
    let width = cols.len();
    let mut values = values.into_iter();
    let mut left = values.len() / width;
    while left > 0 {
        // The largest power of two not above what is left, at most the chunk.
        let rows = if left >= SQLITE_CHUNK {
            SQLITE_CHUNK
        } else {
            1 << left.ilog2()
        };
        let mut sql = c.sql();
        sql.push(&format!(
            "INSERT INTO {table} ({}) VALUES ",
            cols.join(", ")
        ));
        for row in 0..rows {
            sql.push(if row == 0 { "(" } else { ", (" });
            for col in 0..width {
                if col > 0 {
                    sql.push(", ");
                }
                if let Some(v) = values.next() {
                    sql.bind(v);
                }
            }
            sql.push(")");
        }
        c.execute(sql)?;
        left -= rows;
    }
    Ok(())
}

/// The data-modifying CTEs (`b AS (...), d AS (...), ...`, no `WITH`) inserting
/// prepared rows with `unnest` over array parameters. With `rid_of` = Some(cte),
/// the rows belong to the one resource inserted by that CTE of the same statement
/// (its `rid` column), whatever rid they were prepared with.
fn pg_index_ctes(sql: &mut Sql, p: Table, rid_of: Option<&str>) {
    let rid = |sql: &mut Sql| {
        sql.push(&match rid_of {
            Some(c) => format!("{c}.rid"),
            None => "t.rid".to_string(),
        });
    };
    let from = |sql: &mut Sql| {
        if let Some(c) = rid_of {
            sql.push(&format!(" FROM {c}, unnest("));
        } else {
            sql.push(" FROM unnest(");
        }
    };
    // blind
    let (pid, h, rids): (Vec<i64>, Vec<i64>, Vec<i64>) = unzip3(p.blind.into_iter());
    sql.push("b AS (INSERT INTO search_blind (pid, h, rid) SELECT t.pid, t.h, ");
    rid(sql);
    from(sql);
    sql.bind(Bind::I64s(pid))
        .push(", ")
        .bind(Bind::I64s(h))
        .push(", ")
        .bind(Bind::I64s(rids));
    sql.push(") AS t(pid, h, rid))");
    // dates
    let (mut pid, mut lo, mut rids, mut hi) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b, c, d) in p.dates {
        pid.push(a);
        lo.push(b);
        rids.push(c);
        hi.push(d);
    }
    sql.push(", d AS (INSERT INTO search_date (pid, lo, hi, rid) SELECT t.pid, t.lo, t.hi, ");
    rid(sql);
    from(sql);
    sql.bind(Bind::I64s(pid))
        .push(", ")
        .bind(Bind::I64s(lo))
        .push(", ")
        .bind(Bind::I64s(hi));
    sql.push(", ")
        .bind(Bind::I64s(rids))
        .push(") AS t(pid, lo, hi, rid))");
    // numbers
    let (mut pid, mut k, mut lo, mut rids, mut hi) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b, c, d, e) in p.numbers {
        pid.push(a);
        k.push(b);
        lo.push(c);
        rids.push(d);
        hi.push(e);
    }
    sql.push(
        ", n AS (INSERT INTO search_number (pid, k, lo, hi, rid) SELECT t.pid, t.k, t.lo, t.hi, ",
    );
    rid(sql);
    from(sql);
    sql.bind(Bind::I64s(pid))
        .push(", ")
        .bind(Bind::I64s(k))
        .push(", ")
        .bind(Bind::F64s(lo));
    sql.push(", ")
        .bind(Bind::F64s(hi))
        .push(", ")
        .bind(Bind::I64s(rids));
    sql.push(") AS t(pid, k, lo, hi, rid))");
    // references
    let (mut pid, mut ti, mut tt, mut rids, mut url) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (a, b, c, d, e) in p.references {
        pid.push(a);
        ti.push(b);
        tt.push(c);
        rids.push(d);
        url.push(e);
    }
    sql.push(
        ", r AS (INSERT INTO search_reference (pid, target_id, target_type, url, rid) SELECT t.pid, t.ti, t.tt, t.u, ",
    );
    rid(sql);
    from(sql);
    sql.bind(Bind::I64s(pid))
        .push(", ")
        .bind(Bind::Texts(ti))
        .push(", ")
        .bind(Bind::Texts(tt));
    sql.push(", ")
        .bind(Bind::Texts(url))
        .push(", ")
        .bind(Bind::I64s(rids));
    sql.push(") AS t(pid, ti, tt, u, rid))");
    // uris
    let (mut pid, mut uri, mut rids) = (Vec::new(), Vec::new(), Vec::new());
    for (a, b, c) in p.uris {
        pid.push(a);
        uri.push(b);
        rids.push(c);
    }
    sql.push(", u AS (INSERT INTO search_uri (pid, uri, rid) SELECT t.pid, t.uri, ");
    rid(sql);
    from(sql);
    sql.bind(Bind::I64s(pid))
        .push(", ")
        .bind(Bind::Texts(uri))
        .push(", ")
        .bind(Bind::I64s(rids));
    sql.push(") AS t(pid, uri, rid))");
}

/// The index CTEs of one resource whose row another CTE of the statement inserts
/// (the one-statement create on PostgreSQL).
pub(crate) fn pg_index_ctes_of(sql: &mut Sql, cte: &str, rows: &Blinded) {
    pg_index_ctes(sql, tables(&[(0, rows)]), Some(cte));
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
