//! Search queries over the index tables: the typed query the search module plans
//! ([`Query`], [`Filter`]), and its execution on either backend (a page of current
//! versions, a count, ids, includes). `render` writes the SQL; values arrive in
//! clear and blind values are hashed with the index key while it is written.
//!
//! Every filter is a semi-join on the resource's surrogate key (`rid IN (...)`),
//! so each filter uses its own index and the planner picks the most selective.
//! Results are ordered by the sort keys and then by `rid`, and pages continue after
//! a position (keyset paging): a page never shifts when resources are added.

use diesel::sql_types::{BigInt, Binary, Double, Nullable, Text};
use diesel::QueryableByName;

use super::conn::AnyConn;
use super::pool::Backend;
use super::render::Renderer;
use super::sql::Sql;
use super::{StoreError, StoredVersion};
use crate::access::{AccessContext, Action};
use crate::crypto::Keyring;

/// One comparison on the range columns (`lo`, `hi`) of an index row.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Bound<T> {
    LoGe(T),
    LoGt(T),
    LoLe(T),
    LoLt(T),
    HiGe(T),
    HiGt(T),
    HiLe(T),
    HiLt(T),
}

/// Alternatives (OR) of conjunctions (AND) of bounds; empty matches any row.
pub type Ranges<T> = Vec<Vec<Bound<T>>>;

/// The index table of a search parameter type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexTable {
    Blind,
    Date,
    Number,
    Reference,
    Uri,
}

impl IndexTable {
    pub(crate) fn name(self) -> &'static str {
        match self {
            IndexTable::Blind => "search_blind",
            IndexTable::Date => "search_date",
            IndexTable::Number => "search_number",
            IndexTable::Reference => "search_reference",
            IndexTable::Uri => "search_uri",
        }
    }
}

/// What a reference parameter must point at (one alternative).
#[derive(Debug, Clone)]
pub enum RefTarget {
    /// A local resource by id, of one of `types` (any type when empty).
    Local { types: Vec<String>, id: String },
    /// An absolute or canonical URL, as written in the reference.
    Url(String),
    /// Local resources of `types` that satisfy `filters` (chained parameters).
    Matching {
        types: Vec<String>,
        filters: Vec<Filter>,
    },
}

#[derive(Debug, Clone)]
pub enum UriMatch {
    Exact(String),
    /// `:below`: the value or anything under it.
    Below(String),
    /// `:above`: any of these (the value and its ancestors).
    Any(Vec<String>),
}

/// One criterion on a resource; a query ANDs its filters.
#[derive(Debug, Clone)]
pub enum Filter {
    /// `_id`: any of these ids.
    Ids(Vec<String>),
    /// The resources with these surrogate keys (a subscription's matching runs
    /// on the rows a write just made: a primary-key look-up first).
    Rids(Vec<i64>),
    /// `_lastUpdated`, on the current version's time (a point, in microseconds).
    LastUpdated(Ranges<i64>),
    /// Any of the tagged values (blinded here) under any of the parameters.
    Blind {
        pids: Vec<i64>,
        values: Vec<String>,
    },
    Date {
        pids: Vec<i64>,
        ranges: Ranges<i64>,
    },
    /// Numbers and quantities: rows whose key is one of `keys` (None: plain
    /// numbers, key 0) and whose range satisfies `ranges`.
    Number {
        pids: Vec<i64>,
        keys: Option<Vec<String>>,
        ranges: Ranges<f64>,
    },
    Reference {
        pids: Vec<i64>,
        targets: Vec<RefTarget>,
    },
    Uri {
        pids: Vec<i64>,
        matches: Vec<UriMatch>,
    },
    /// The resource has some value for one of the parameters (`:missing=false`).
    Present {
        table: IndexTable,
        pids: Vec<i64>,
    },
    /// `_has`: some resource of `source_types` satisfying `filters` refers to this
    /// resource through one of the reference parameters `pids`.
    ReferencedBy {
        pids: Vec<i64>,
        source_types: Vec<String>,
        filters: Vec<Filter>,
    },
    /// `_list`: the resource is a target of `pids` (List.item) of these sources.
    TargetOf {
        pids: Vec<i64>,
        source_type: String,
        source_ids: Vec<String>,
    },
    Not(Box<Filter>),
    Any(Vec<Filter>),
    All(Vec<Filter>),
    /// The resource is of one of these types.
    Types(Vec<String>),
    /// Never true (a criterion that can match nothing, e.g. an unknown target).
    Nothing,
}

/// A sort key the database can order by (values in clear).
#[derive(Debug, Clone, PartialEq)]
pub enum SortKey {
    Id,
    LastUpdated,
    Date(Vec<i64>),
    Number {
        pids: Vec<i64>,
        keys: Option<Vec<String>>,
    },
    Uri(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Sort {
    pub key: SortKey,
    pub descending: bool,
}

/// A sort key's value for one resource.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum SortValue {
    Null,
    Int(i64),
    Float(f64),
    Text(String),
}

/// Where a page starts: after (or, for a previous page, before) this row.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Position {
    pub keys: Vec<SortValue>,
    pub rid: i64,
}

/// At most this many database sort keys (more are sorted after decryption).
pub const MAX_SQL_SORT_KEYS: usize = 3;

/// Where the rows a query searches come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Rows {
    /// The current versions of resources (`resources_current`, bodies in
    /// `resource_versions`).
    #[default]
    Resources,
    /// The AuditEvents of the audit log up to position `through` (`rid` = -`seq`,
    /// bodies in `audit_log`): what the audit indexer had indexed when the search
    /// began, so the pages of one search see one set and the search's own
    /// AuditEvent, committed after it, is never among its results.
    AuditLog { through: i64 },
}

#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The resource types searched; None for every type (system search).
    pub types: Option<Vec<String>>,
    pub rows: Rows,
    pub filters: Vec<Filter>,
    pub sort: Vec<Sort>,
    pub limit: usize,
    pub after: Option<Position>,
    /// Walk backwards from `after` (a previous page); rows come back in page order.
    pub backwards: bool,
    /// The query names its few resources by rid ([`Filter::Rids`]): conditions
    /// on index rows are looked up per resource (store::render), not scanned.
    pub probe: bool,
}

/// A current version found by a search, with its sort key values.
#[derive(Debug, Clone)]
pub struct Hit {
    pub rid: i64,
    pub keys: Vec<SortValue>,
    pub version: StoredVersion,
}

#[derive(QueryableByName)]
struct HitRow {
    #[diesel(sql_type = BigInt)]
    rid: i64,
    #[diesel(sql_type = Text)]
    resource_type: String,
    #[diesel(sql_type = Text)]
    resource_id: String,
    #[diesel(sql_type = BigInt)]
    version_id: i64,
    #[diesel(sql_type = BigInt)]
    last_updated: i64,
    #[diesel(sql_type = BigInt)]
    key_id: i64,
    #[diesel(sql_type = Binary)]
    body: Vec<u8>,
    #[diesel(sql_type = Nullable<BigInt>)]
    k0i: Option<i64>,
    #[diesel(sql_type = Nullable<Double>)]
    k0f: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    k0t: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    k1i: Option<i64>,
    #[diesel(sql_type = Nullable<Double>)]
    k1f: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    k1t: Option<String>,
    #[diesel(sql_type = Nullable<BigInt>)]
    k2i: Option<i64>,
    #[diesel(sql_type = Nullable<Double>)]
    k2f: Option<f64>,
    #[diesel(sql_type = Nullable<Text>)]
    k2t: Option<String>,
}

#[derive(QueryableByName)]
struct CountRow {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

#[derive(QueryableByName)]
struct IdRow {
    #[diesel(sql_type = BigInt)]
    rid: i64,
    #[diesel(sql_type = Text)]
    resource_id: String,
}

fn hit(ring: &Keyring, row: HitRow) -> Result<Hit, StoreError> {
    let keys = [
        (row.k0i, row.k0f, row.k0t),
        (row.k1i, row.k1f, row.k1t),
        (row.k2i, row.k2f, row.k2t),
    ]
    .into_iter()
    .map(|(i, f, t)| match (i, f, t) {
        (Some(i), _, _) => SortValue::Int(i),
        (_, Some(f), _) => SortValue::Float(f),
        (_, _, Some(t)) => SortValue::Text(t),
        _ => SortValue::Null,
    })
    .collect();
    let aad = format!(
        "{}/{}/{}",
        row.resource_type, row.resource_id, row.version_id
    );
    let body = ring.open_box(row.key_id, &row.body, aad.as_bytes())?;
    Ok(Hit {
        rid: row.rid,
        keys,
        version: StoredVersion {
            resource_type: row.resource_type,
            id: row.resource_id,
            version: row.version_id,
            last_updated: row.last_updated,
            deleted: false,
            body,
        },
    })
}

/// Runs the page query of `q` on a connection.
pub(crate) fn run_page(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    q: &Query,
) -> Result<Vec<Hit>, StoreError> {
    let mut r = Renderer::new(c.backend(), ring, ctx, Action::Search);
    r.page(q)?;
    let rows: Vec<HitRow> = c.load(r.sql)?;
    let n = q.sort.len();
    let mut hits = rows
        .into_iter()
        .map(|row| hit(ring, row))
        .collect::<Result<Vec<Hit>, _>>()?;
    for h in &mut hits {
        h.keys.truncate(n);
    }
    if q.backwards {
        hits.reverse();
    }
    Ok(hits)
}

pub(crate) fn run_count(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    q: &Query,
) -> Result<i64, StoreError> {
    let mut r = Renderer::new(c.backend(), ring, ctx, Action::Search);
    r.count(q)?;
    let rows: Vec<CountRow> = c.load(r.sql)?;
    Ok(rows.first().map_or(0, |r| r.n))
}

/// The (rid, id) of resources that satisfy the query (conditional interactions).
pub(crate) fn run_ids(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    q: &Query,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut r = Renderer::new(c.backend(), ring, ctx, Action::Search);
    r.ids(q)?;
    let rows: Vec<IdRow> = c.load(r.sql)?;
    Ok(rows.into_iter().map(|r| (r.rid, r.resource_id)).collect())
}

/// Current versions of the given rids (includes), those the caller may read.
pub(crate) fn run_by_rids(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    rids: &[i64],
) -> Result<Vec<Hit>, StoreError> {
    if rids.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Renderer::new(c.backend(), ring, ctx, Action::Read);
    let f = r.sql.false_literal();
    r.sql.push(
        "SELECT rc.rid, rv.resource_type, rv.resource_id, rv.version_id, rv.last_updated, \
         rv.key_id, rv.body, NULL AS k0i, NULL AS k0f, NULL AS k0t, NULL AS k1i, NULL AS k1f, \
         NULL AS k1t, NULL AS k2i, NULL AS k2f, NULL AS k2t \
         FROM resources_current rc JOIN resource_versions rv ON rv.resource_type = rc.resource_type \
         AND rv.resource_id = rc.resource_id AND rv.version_id = rc.version_id WHERE ",
    );
    r.sql.in_i64s("rc.rid", rids);
    r.sql.push(&format!(" AND rc.deleted = {f}"));
    r.narrow("rc", None)?;
    r.sql.push(" ORDER BY rc.rid");
    let rows: Vec<HitRow> = c.load(typed_nulls(r.sql))?;
    rows.into_iter().map(|row| hit(ring, row)).collect()
}

/// PostgreSQL needs typed NULL columns where a row type is decoded by name.
fn typed_nulls(sql: Sql) -> Sql {
    if sql.backend() != Backend::Postgres {
        return sql;
    }
    sql.replace_text(&[
        ("NULL AS k0i", "CAST(NULL AS BIGINT) AS k0i"),
        ("NULL AS k1i", "CAST(NULL AS BIGINT) AS k1i"),
        ("NULL AS k2i", "CAST(NULL AS BIGINT) AS k2i"),
        ("NULL AS k0f", "CAST(NULL AS DOUBLE PRECISION) AS k0f"),
        ("NULL AS k1f", "CAST(NULL AS DOUBLE PRECISION) AS k1f"),
        ("NULL AS k2f", "CAST(NULL AS DOUBLE PRECISION) AS k2f"),
        ("NULL AS k0t", "CAST(NULL AS TEXT) AS k0t"),
        ("NULL AS k1t", "CAST(NULL AS TEXT) AS k1t"),
        ("NULL AS k2t", "CAST(NULL AS TEXT) AS k2t"),
    ])
}

/// The rids of resources that the references `pids` of the resources `rids` point
/// at (`_include`), optionally only targets of `types`; only targets the caller
/// may read.
pub(crate) fn run_include_targets(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    rids: &[i64],
    pids: &[i64],
    types: Option<&[String]>,
    limit: usize,
) -> Result<Vec<i64>, StoreError> {
    if rids.is_empty() || pids.is_empty() {
        return Ok(Vec::new());
    }
    let mut r = Renderer::new(c.backend(), ring, ctx, Action::Read);
    let f = r.sql.false_literal();
    r.sql.push(
        "SELECT DISTINCT t.rid AS rid, t.resource_id AS resource_id FROM search_reference r \
         JOIN resources_current t ON t.resource_type = r.target_type AND t.resource_id = r.target_id WHERE ",
    );
    r.sql.in_i64s("r.rid", rids);
    r.sql.push(" AND ");
    r.sql.in_i64s("r.pid", pids);
    if let Some(types) = types {
        r.sql.push(" AND ");
        r.sql.in_texts("r.target_type", types);
    }
    r.sql.push(&format!(" AND t.deleted = {f}"));
    r.narrow("t", types)?;
    r.sql.push(" ORDER BY t.rid LIMIT ").i64(limit as i64);
    let rows: Vec<IdRow> = c.load(r.sql)?;
    Ok(rows.into_iter().map(|r| r.rid).collect())
}

/// The rids of resources whose references `pids` point at one of `targets`
/// (`_revinclude`), optionally only sources of `types`; only sources the caller
/// may read.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run_revinclude_sources(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    targets: &[(String, String)],
    pids: &[i64],
    types: Option<&[String]>,
    limit: usize,
) -> Result<Vec<i64>, StoreError> {
    if targets.is_empty() || pids.is_empty() {
        return Ok(Vec::new());
    }
    let mut by_type: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for (t, id) in targets {
        by_type.entry(t.as_str()).or_default().push(id.clone());
    }
    let mut r = Renderer::new(c.backend(), ring, ctx, Action::Read);
    let f = r.sql.false_literal();
    r.sql.push(
        "SELECT DISTINCT s.rid AS rid, s.resource_id AS resource_id FROM search_reference r \
         JOIN resources_current s ON s.rid = r.rid WHERE ",
    );
    r.sql.in_i64s("r.pid", pids);
    r.sql.push(" AND (");
    for (i, (t, ids)) in by_type.iter().enumerate() {
        if i > 0 {
            r.sql.push(" OR ");
        }
        r.sql.push("(r.target_type = ").text(t).push(" AND ");
        r.sql.in_texts("r.target_id", ids);
        r.sql.push(")");
    }
    r.sql.push(")");
    if let Some(types) = types {
        r.sql.push(" AND ");
        r.sql.in_texts("s.resource_type", types);
    }
    r.sql.push(&format!(" AND s.deleted = {f}"));
    r.narrow("s", types)?;
    r.sql.push(" ORDER BY s.rid LIMIT ").i64(limit as i64);
    let rows: Vec<IdRow> = c.load(r.sql)?;
    Ok(rows.into_iter().map(|r| r.rid).collect())
}

/// The page query's text and the database's plan for it (`EXPLAIN`), for the plan
/// tests and operators.
pub(crate) fn explain(
    c: &mut AnyConn,
    ring: &Keyring,
    ctx: &AccessContext,
    q: &Query,
) -> Result<String, StoreError> {
    let backend = c.backend();
    let mut r = Renderer::new(backend, ring, ctx, Action::Search);
    r.page(q)?;
    let text = r.sql.display();
    let mut sql = Sql::new(backend);
    sql.push(match backend {
        Backend::Postgres => "EXPLAIN ",
        Backend::Sqlite => "EXPLAIN QUERY PLAN ",
    });
    sql.append(&r.sql);
    #[derive(QueryableByName)]
    struct PgPlanLine {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    #[derive(QueryableByName)]
    struct SqlitePlanLine {
        #[diesel(sql_type = Text)]
        detail: String,
    }
    let plan: Vec<String> = match backend {
        Backend::Postgres => c
            .load::<PgPlanLine>(sql)?
            .into_iter()
            .map(|l| l.line)
            .collect(),
        Backend::Sqlite => c
            .load::<SqlitePlanLine>(sql)?
            .into_iter()
            .map(|l| l.detail)
            .collect(),
    };
    Ok(format!("{text}\n{}", plan.join("\n")))
}
