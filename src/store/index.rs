//! The search index rows of one resource version and how they are written: in the
//! write transaction of the version, replacing the rows of the previous one. Values
//! arrive in clear from the search module; strings, tokens and unit keys are
//! blinded here with the index key, so no clear text reaches the tables.

use diesel::prelude::*;

use super::schema::{search_blind, search_date, search_number, search_reference, search_uri};
use super::StoreError;
use crate::crypto::Keyring;

/// Rows of one insert statement at most (SQLite binds at most 32,766 values).
const CHUNK: usize = 2_000;

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

/// Removes the index rows of a resource.
macro_rules! delete_index_rows {
    ($c:ident, $rid:expr) => {{
        use $crate::store::schema::{
            search_blind, search_date, search_number, search_reference, search_uri,
        };
        let rid: i64 = $rid;
        diesel::delete(search_blind::table.filter(search_blind::rid.eq(rid))).execute($c)?;
        diesel::delete(search_date::table.filter(search_date::rid.eq(rid))).execute($c)?;
        diesel::delete(search_number::table.filter(search_number::rid.eq(rid))).execute($c)?;
        diesel::delete(search_reference::table.filter(search_reference::rid.eq(rid)))
            .execute($c)?;
        diesel::delete(search_uri::table.filter(search_uri::rid.eq(rid))).execute($c)?;
    }};
}
pub(crate) use delete_index_rows;

/// Inserts the index rows of a resource (after [`IndexRows::dedup`]).
macro_rules! insert_index_rows {
    ($c:ident, $ring:expr, $rid:expr, $rows:expr) => {{
        let one: &$crate::store::index::IndexRows = $rows;
        insert_index_rows!($c, $ring, &[($rid, one)])
    }};
    ($c:ident, $ring:expr, $many:expr) => {{
        use $crate::store::index::IndexSink as _;
        $crate::store::index::insert_rows($ring, $many, |batch| $c.insert_batch(batch))?;
    }};
}
pub(crate) use insert_index_rows;

type BlindRow = (
    diesel::dsl::Eq<search_blind::rid, i64>,
    diesel::dsl::Eq<search_blind::pid, i64>,
    diesel::dsl::Eq<search_blind::h, i64>,
);
type DateRow = (
    diesel::dsl::Eq<search_date::rid, i64>,
    diesel::dsl::Eq<search_date::pid, i64>,
    diesel::dsl::Eq<search_date::lo, i64>,
    diesel::dsl::Eq<search_date::hi, i64>,
);
type NumberRow = (
    diesel::dsl::Eq<search_number::rid, i64>,
    diesel::dsl::Eq<search_number::pid, i64>,
    diesel::dsl::Eq<search_number::k, i64>,
    diesel::dsl::Eq<search_number::lo, f64>,
    diesel::dsl::Eq<search_number::hi, f64>,
);
type ReferenceRow = (
    diesel::dsl::Eq<search_reference::rid, i64>,
    diesel::dsl::Eq<search_reference::pid, i64>,
    diesel::dsl::Eq<search_reference::target_type, String>,
    diesel::dsl::Eq<search_reference::target_id, String>,
    diesel::dsl::Eq<search_reference::url, String>,
);
type UriRow = (
    diesel::dsl::Eq<search_uri::rid, i64>,
    diesel::dsl::Eq<search_uri::pid, i64>,
    diesel::dsl::Eq<search_uri::uri, String>,
);

/// Where index rows go: a multi-row INSERT on SQLite; COPY on PostgreSQL, which
/// spares parsing and planning a statement of thousands of values per table (a
/// transaction Bundle writes hundreds of resources with ~150 index rows each;
/// measured with benches/bundle/run.sh, docs/benchmarks.md).
pub(crate) trait IndexSink {
    fn insert_batch(&mut self, batch: Batch<'_>) -> Result<usize, diesel::result::Error>;
}

/// `$batch` as one multi-row statement of `$verb` (`insert_into` with `values`, or
/// `copy_from` with `from_insertable`) on connection `$c`.
macro_rules! to_table {
    ($c:expr, $batch:expr, $verb:ident, $rows:ident) => {
        match $batch {
            Batch::Blind(v) => diesel::$verb(search_blind::table).$rows(v).execute($c),
            Batch::Date(v) => diesel::$verb(search_date::table).$rows(v).execute($c),
            Batch::Number(v) => diesel::$verb(search_number::table).$rows(v).execute($c),
            Batch::Reference(v) => diesel::$verb(search_reference::table).$rows(v).execute($c),
            Batch::Uri(v) => diesel::$verb(search_uri::table).$rows(v).execute($c),
        }
    };
}

impl IndexSink for diesel::SqliteConnection {
    fn insert_batch(&mut self, batch: Batch<'_>) -> Result<usize, diesel::result::Error> {
        to_table!(self, batch, insert_into, values)
    }
}

impl IndexSink for diesel::PgConnection {
    fn insert_batch(&mut self, batch: Batch<'_>) -> Result<usize, diesel::result::Error> {
        // A few rows (one resource's) go faster as a plain INSERT.
        if batch.len() < COPY_FROM {
            to_table!(self, batch, insert_into, values)
        } else {
            to_table!(self, batch, copy_from, from_insertable)
        }
    }
}

/// Rows from which PostgreSQL gets them by COPY.
const COPY_FROM: usize = 200;

/// One multi-row insert into one index table.
pub enum Batch<'a> {
    Blind(&'a [BlindRow]),
    Date(&'a [DateRow]),
    Number(&'a [NumberRow]),
    Reference(&'a [ReferenceRow]),
    Uri(&'a [UriRow]),
}

impl Batch<'_> {
    fn len(&self) -> usize {
        match self {
            Batch::Blind(v) => v.len(),
            Batch::Date(v) => v.len(),
            Batch::Number(v) => v.len(),
            Batch::Reference(v) => v.len(),
            Batch::Uri(v) => v.len(),
        }
    }
}

/// Builds the rows of the resources `of` (surrogate key, rows; blinding what must be
/// blind) and hands them to `exec` in multi-row batches, one table at a time, the
/// rows of all resources together (a transaction Bundle writes hundreds at once);
/// tables without rows are skipped.
pub fn insert_rows(
    ring: &Keyring,
    of: &[(i64, &IndexRows)],
    mut exec: impl FnMut(Batch<'_>) -> Result<usize, diesel::result::Error>,
) -> Result<(), StoreError> {
    let mut blind: Vec<(i64, i64, i64)> = Vec::new();
    let mut dates: Vec<DateRow> = Vec::new();
    let mut numbers: Vec<(i64, i64, i64, f64, f64)> = Vec::new();
    let mut references: Vec<(i64, &str, i64, &RefValue)> = Vec::new();
    let mut uris: Vec<UriRow> = Vec::new();
    for &(rid, rows) in of {
        let mut seen = std::collections::HashSet::with_capacity(rows.blind.len());
        for (pid, value) in &rows.blind {
            let h = blind_key(ring, value)?;
            // Two values may blind alike only by collision; the key must stay unique.
            if seen.insert((*pid, h)) {
                blind.push((*pid, h, rid));
            }
        }
        dates.extend(rows.dates.iter().map(|(pid, lo, hi)| {
            (
                search_date::rid.eq(rid),
                search_date::pid.eq(*pid),
                search_date::lo.eq(*lo),
                search_date::hi.eq(*hi),
            )
        }));
        for (pid, key, lo, hi) in &rows.numbers {
            let k = match key {
                Some(k) => blind_key(ring, k)?,
                None => 0,
            };
            numbers.push((*pid, k, rid, *lo, *hi));
        }
        references.extend(
            rows.references
                .iter()
                .map(|(pid, r)| (*pid, r.target_id.as_str(), rid, r)),
        );
        uris.extend(rows.uris.iter().map(|(pid, uri)| {
            (
                search_uri::rid.eq(rid),
                search_uri::pid.eq(*pid),
                search_uri::uri.eq(uri.clone()),
            )
        }));
    }
    // In the order of the tables' keys: consecutive inserts land on the same index
    // pages (measured: benches/bundle/run.sh).
    blind.sort_unstable();
    numbers.sort_unstable_by_key(|n| (n.0, n.1, n.2));
    references.sort_unstable_by_key(|r| (r.0, r.1, r.2));
    let blind: Vec<BlindRow> = blind
        .into_iter()
        .map(|(pid, h, rid)| {
            (
                search_blind::rid.eq(rid),
                search_blind::pid.eq(pid),
                search_blind::h.eq(h),
            )
        })
        .collect();
    let numbers: Vec<NumberRow> = numbers
        .into_iter()
        .map(|(pid, k, rid, lo, hi)| {
            (
                search_number::rid.eq(rid),
                search_number::pid.eq(pid),
                search_number::k.eq(k),
                search_number::lo.eq(lo),
                search_number::hi.eq(hi),
            )
        })
        .collect();
    let references: Vec<ReferenceRow> = references
        .into_iter()
        .map(|(pid, _, rid, r)| {
            (
                search_reference::rid.eq(rid),
                search_reference::pid.eq(pid),
                search_reference::target_type.eq(r.target_type.clone()),
                search_reference::target_id.eq(r.target_id.clone()),
                search_reference::url.eq(r.url.clone()),
            )
        })
        .collect();
    for chunk in blind.chunks(CHUNK) {
        exec(Batch::Blind(chunk))?;
    }
    for chunk in dates.chunks(CHUNK) {
        exec(Batch::Date(chunk))?;
    }
    for chunk in numbers.chunks(CHUNK) {
        exec(Batch::Number(chunk))?;
    }
    for chunk in references.chunks(CHUNK) {
        exec(Batch::Reference(chunk))?;
    }
    for chunk in uris.chunks(CHUNK) {
        exec(Batch::Uri(chunk))?;
    }
    Ok(())
}
