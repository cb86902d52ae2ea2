//! Search queries over the index tables: the typed query the search module plans
//! ([`Query`], [`Filter`]) rendered to SQL for either backend, and its execution
//! (a page of current versions, a count, includes). Values arrive in clear; blind
//! values are hashed here with the index key while the SQL is rendered.
//!
//! Every filter is a semi-join on the resource's surrogate key (`rid IN (...)`),
//! so each filter uses its own index and the planner picks the most selective.
//! Results are ordered by the sort keys and then by `rid`, and pages continue after
//! a position (keyset paging): a page never shifts when resources are added.

use diesel::sql_types::{BigInt, Binary, Double, Nullable, Text};
use diesel::{QueryableByName, RunQueryDsl};

use diesel::pg::Pg;
use diesel::sqlite::Sqlite;

use super::pool::{Backend, DbConn};
use super::sql::Sql;
use super::{StoreError, StoredVersion};
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
    fn name(self) -> &'static str {
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

#[derive(Debug, Clone, Default)]
pub struct Query {
    /// The resource types searched; None for every type (system search).
    pub types: Option<Vec<String>>,
    pub filters: Vec<Filter>,
    pub sort: Vec<Sort>,
    pub limit: usize,
    pub after: Option<Position>,
    /// Walk backwards from `after` (a previous page); rows come back in page order.
    pub backwards: bool,
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

/// The SQL value type of a sort key.
#[derive(Clone, Copy)]
enum KeyKind {
    Int,
    Float,
    Text,
}

fn key_kind(k: &SortKey) -> KeyKind {
    match k {
        SortKey::Id | SortKey::Uri(_) => KeyKind::Text,
        SortKey::LastUpdated | SortKey::Date(_) => KeyKind::Int,
        SortKey::Number { .. } => KeyKind::Float,
    }
}

/// Renders queries for one backend, hashing blind values with the index key.
pub(crate) struct Renderer<'a> {
    pub sql: Sql,
    ring: &'a Keyring,
    alias: usize,
}

impl<'a> Renderer<'a> {
    pub fn new(backend: Backend, ring: &'a Keyring) -> Renderer<'a> {
        Renderer {
            sql: Sql::new(backend),
            ring,
            alias: 0,
        }
    }

    fn fresh(&mut self, base: &str) -> String {
        self.alias += 1;
        format!("{base}{}", self.alias)
    }

    fn blind(&self, value: &str) -> Result<i64, StoreError> {
        super::index::blind_key(self.ring, value)
    }

    fn pids(&mut self, col: &str, pids: &[i64]) {
        self.sql.in_i64s(col, pids);
    }

    fn ranges<T: Copy>(
        &mut self,
        lo: &str,
        hi: &str,
        ranges: &[Vec<Bound<T>>],
        bind: fn(&mut Sql, T),
    ) {
        if ranges.is_empty() {
            return;
        }
        self.sql.push(" AND (");
        for (i, conj) in ranges.iter().enumerate() {
            if i > 0 {
                self.sql.push(" OR ");
            }
            self.sql.push("(");
            if conj.is_empty() {
                self.sql.push("1 = 1");
            }
            for (j, b) in conj.iter().enumerate() {
                if j > 0 {
                    self.sql.push(" AND ");
                }
                let (col, op, v) = match *b {
                    Bound::LoGe(v) => (lo, " >= ", v),
                    Bound::LoGt(v) => (lo, " > ", v),
                    Bound::LoLe(v) => (lo, " <= ", v),
                    Bound::LoLt(v) => (lo, " < ", v),
                    Bound::HiGe(v) => (hi, " >= ", v),
                    Bound::HiGt(v) => (hi, " > ", v),
                    Bound::HiLe(v) => (hi, " <= ", v),
                    Bound::HiLt(v) => (hi, " < ", v),
                };
                self.sql.push(col).push(op);
                bind(&mut self.sql, v);
            }
            self.sql.push(")");
        }
        self.sql.push(")");
    }

    /// The resource's columns are `{t}.rid`, `{t}.resource_id`, `{t}.last_updated`.
    pub fn filter(&mut self, f: &Filter, t: &str) -> Result<(), StoreError> {
        let rid = format!("{t}.rid");
        match f {
            Filter::Nothing => {
                self.sql.push("1 = 0");
            }
            Filter::Ids(ids) => {
                self.sql.in_texts(&format!("{t}.resource_id"), ids);
            }
            Filter::LastUpdated(ranges) => {
                self.sql.push("(1 = 1");
                let col = format!("{t}.last_updated");
                self.ranges(&col, &col, ranges, |s, v| {
                    s.i64(v);
                });
                self.sql.push(")");
            }
            Filter::Blind { pids, values } => {
                let a = self.fresh("b");
                self.sql.push(&format!(
                    "{rid} IN (SELECT {a}.rid FROM search_blind {a} WHERE "
                ));
                self.pids(&format!("{a}.pid"), pids);
                self.sql.push(" AND ");
                let hashes = values
                    .iter()
                    .map(|v| self.blind(v))
                    .collect::<Result<Vec<i64>, _>>()?;
                self.sql.in_i64s(&format!("{a}.h"), &hashes);
                self.sql.push(")");
            }
            Filter::Date { pids, ranges } => {
                let a = self.fresh("d");
                self.sql.push(&format!(
                    "{rid} IN (SELECT {a}.rid FROM search_date {a} WHERE "
                ));
                self.pids(&format!("{a}.pid"), pids);
                self.ranges(&format!("{a}.lo"), &format!("{a}.hi"), ranges, |s, v| {
                    s.i64(v);
                });
                self.sql.push(")");
            }
            Filter::Number { pids, keys, ranges } => {
                let a = self.fresh("n");
                self.sql.push(&format!(
                    "{rid} IN (SELECT {a}.rid FROM search_number {a} WHERE "
                ));
                self.pids(&format!("{a}.pid"), pids);
                self.sql.push(" AND ");
                let ks = match keys {
                    None => vec![0],
                    Some(keys) => keys
                        .iter()
                        .map(|k| self.blind(k))
                        .collect::<Result<Vec<i64>, _>>()?,
                };
                self.sql.in_i64s(&format!("{a}.k"), &ks);
                self.ranges(&format!("{a}.lo"), &format!("{a}.hi"), ranges, |s, v| {
                    s.f64(v);
                });
                self.sql.push(")");
            }
            Filter::Reference { pids, targets } => {
                self.sql.push("(");
                for (i, target) in targets.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(" OR ");
                    }
                    self.reference(&rid, pids, target)?;
                }
                if targets.is_empty() {
                    self.sql.push("1 = 0");
                }
                self.sql.push(")");
            }
            Filter::Uri { pids, matches } => {
                self.sql.push("(");
                for (i, m) in matches.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(" OR ");
                    }
                    let a = self.fresh("u");
                    self.sql.push(&format!(
                        "{rid} IN (SELECT {a}.rid FROM search_uri {a} WHERE "
                    ));
                    self.pids(&format!("{a}.pid"), pids);
                    self.sql.push(" AND ");
                    let col = format!("{a}.uri");
                    match m {
                        UriMatch::Exact(u) => {
                            self.sql.push(&col).push(" = ").text(u);
                        }
                        UriMatch::Any(us) => {
                            self.sql.in_texts(&col, us);
                        }
                        UriMatch::Below(u) => {
                            // The value itself, or anything below it after a `/`.
                            let below = format!("{}/", u.trim_end_matches('/'));
                            self.sql.push("(").push(&col).push(" = ").text(u);
                            self.sql.push(" OR (").push(&col).push(" >= ").text(&below);
                            self.sql
                                .push(" AND ")
                                .push(&col)
                                .push(" < ")
                                .text(&prefix_end(&below));
                            self.sql.push("))");
                        }
                    }
                    self.sql.push(")");
                }
                if matches.is_empty() {
                    self.sql.push("1 = 0");
                }
                self.sql.push(")");
            }
            Filter::Present { table, pids } => {
                let a = self.fresh("p");
                self.sql.push(&format!(
                    "{rid} IN (SELECT {a}.rid FROM {} {a} WHERE ",
                    table.name()
                ));
                self.pids(&format!("{a}.pid"), pids);
                self.sql.push(")");
            }
            Filter::ReferencedBy {
                pids,
                source_types,
                filters,
            } => {
                let (r, s) = (self.fresh("r"), self.fresh("s"));
                self.sql.push(&format!(
                    "{t}.resource_id IN (SELECT {r}.target_id FROM search_reference {r} \
                     JOIN resources_current {s} ON {s}.rid = {r}.rid WHERE "
                ));
                self.pids(&format!("{r}.pid"), pids);
                self.sql
                    .push(&format!(" AND {r}.target_type = {t}.resource_type AND "));
                self.sql
                    .in_texts(&format!("{s}.resource_type"), source_types);
                for f in filters {
                    self.sql.push(" AND ");
                    self.filter(f, &s)?;
                }
                self.sql.push(")");
            }
            Filter::TargetOf {
                pids,
                source_type,
                source_ids,
            } => {
                let (r, s) = (self.fresh("r"), self.fresh("s"));
                self.sql.push(&format!(
                    "{t}.resource_id IN (SELECT {r}.target_id FROM search_reference {r} \
                     JOIN resources_current {s} ON {s}.rid = {r}.rid WHERE "
                ));
                self.pids(&format!("{r}.pid"), pids);
                self.sql
                    .push(&format!(" AND {r}.target_type = {t}.resource_type AND "));
                self.sql
                    .push(&format!("{s}.resource_type = "))
                    .text(source_type);
                self.sql.push(" AND ");
                self.sql.in_texts(&format!("{s}.resource_id"), source_ids);
                self.sql.push(")");
            }
            Filter::Not(inner) => {
                self.sql.push("NOT (");
                self.filter(inner, t)?;
                self.sql.push(")");
            }
            Filter::Any(alts) => {
                self.sql.push("(");
                if alts.is_empty() {
                    self.sql.push("1 = 0");
                }
                for (i, f) in alts.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(" OR ");
                    }
                    self.filter(f, t)?;
                }
                self.sql.push(")");
            }
            Filter::All(fs) => {
                self.sql.push("(");
                if fs.is_empty() {
                    self.sql.push("1 = 1");
                }
                for (i, f) in fs.iter().enumerate() {
                    if i > 0 {
                        self.sql.push(" AND ");
                    }
                    self.filter(f, t)?;
                }
                self.sql.push(")");
            }
        }
        Ok(())
    }

    fn reference(&mut self, rid: &str, pids: &[i64], target: &RefTarget) -> Result<(), StoreError> {
        let a = self.fresh("r");
        self.sql.push(&format!(
            "{rid} IN (SELECT {a}.rid FROM search_reference {a} WHERE "
        ));
        self.pids(&format!("{a}.pid"), pids);
        match target {
            RefTarget::Local { types, id } => {
                self.sql.push(&format!(" AND {a}.target_id = ")).text(id);
                if !types.is_empty() {
                    self.sql.push(" AND ");
                    self.sql.in_texts(&format!("{a}.target_type"), types);
                } else {
                    self.sql.push(&format!(" AND {a}.target_type <> ''"));
                }
            }
            RefTarget::Url(url) => {
                self.sql.push(&format!(" AND {a}.url = ")).text(url);
            }
            RefTarget::Matching { types, filters } => {
                let t = self.fresh("t");
                self.sql.push(" AND ");
                self.sql.in_texts(&format!("{a}.target_type"), types);
                self.sql.push(&format!(
                    " AND {a}.target_id IN (SELECT {t}.resource_id FROM resources_current {t} WHERE "
                ));
                self.sql.in_texts(&format!("{t}.resource_type"), types);
                let f = self.sql.false_literal();
                self.sql.push(&format!(" AND {t}.deleted = {f}"));
                for filter in filters {
                    self.sql.push(" AND ");
                    self.filter(filter, &t)?;
                }
                self.sql.push(")");
            }
        }
        self.sql.push(")");
        Ok(())
    }

    /// Renders into a separate statement (for fragments used more than once).
    fn fragment(
        &mut self,
        build: impl FnOnce(&mut Self) -> Result<(), StoreError>,
    ) -> Result<Sql, StoreError> {
        let mut sub = Sql::new(self.sql.backend());
        std::mem::swap(&mut sub, &mut self.sql);
        let r = build(self);
        std::mem::swap(&mut sub, &mut self.sql);
        r.map(|()| sub)
    }

    /// The SQL expression of a sort key for the resource `rc`: over several values,
    /// the lowest for an ascending sort and the highest for a descending one (R4
    /// search 3.1.1.5.x: "the lowest/highest value").
    fn sort_expr(&mut self, s: &Sort) -> Result<Sql, StoreError> {
        let agg = if s.descending { "MAX" } else { "MIN" };
        let col = if s.descending { "hi" } else { "lo" };
        let key = s.key.clone();
        self.fragment(|r| {
            match &key {
                SortKey::Id => {
                    r.sql.push("rc.resource_id");
                }
                SortKey::LastUpdated => {
                    r.sql.push("rc.last_updated");
                }
                SortKey::Date(pids) => {
                    let a = r.fresh("sd");
                    r.sql.push(&format!(
                        "(SELECT {agg}({a}.{col}) FROM search_date {a} WHERE {a}.rid = rc.rid AND "
                    ));
                    r.pids(&format!("{a}.pid"), pids);
                    r.sql.push(")");
                }
                SortKey::Number { pids, keys } => {
                    let a = r.fresh("sn");
                    r.sql.push(&format!(
                        "(SELECT {agg}({a}.{col}) FROM search_number {a} WHERE {a}.rid = rc.rid AND "
                    ));
                    r.pids(&format!("{a}.pid"), pids);
                    r.sql.push(" AND ");
                    let ks = match keys {
                        None => vec![0],
                        Some(keys) => keys
                            .iter()
                            .map(|k| r.blind(k))
                            .collect::<Result<Vec<i64>, _>>()?,
                    };
                    r.sql.in_i64s(&format!("{a}.k"), &ks);
                    r.sql.push(")");
                }
                SortKey::Uri(pids) => {
                    let a = r.fresh("su");
                    r.sql.push(&format!(
                        "(SELECT {agg}({a}.uri) FROM search_uri {a} WHERE {a}.rid = rc.rid AND "
                    ));
                    r.pids(&format!("{a}.pid"), pids);
                    r.sql.push(")");
                }
            }
            Ok(())
        })
    }

    /// `WHERE` of the searched resources `rc`: types, not deleted, every filter.
    /// A filter on index rows already implies both (index rows exist only for live
    /// current versions, and a `pid` names one type), and leaving the redundant
    /// conditions out lets the planner start from the index.
    fn scope(&mut self, q: &Query) -> Result<(), StoreError> {
        self.sql.push(" WHERE ");
        let pinned = q.filters.iter().any(pins_type);
        if !pinned {
            if let Some(types) = &q.types {
                self.sql.in_texts("rc.resource_type", types);
                self.sql.push(" AND ");
            }
            let f = self.sql.false_literal();
            self.sql.push(&format!("rc.deleted = {f}"));
        } else {
            self.sql.push("1 = 1");
        }
        for filter in &q.filters {
            self.sql.push(" AND ");
            self.filter(filter, "rc")?;
        }
        Ok(())
    }

    fn sort_value(&mut self, kind: KeyKind, v: &SortValue) {
        match (kind, v) {
            (KeyKind::Int, SortValue::Int(i)) => {
                self.sql.i64(*i);
            }
            (KeyKind::Float, SortValue::Float(x)) => {
                self.sql.f64(*x);
            }
            (KeyKind::Float, SortValue::Int(i)) => {
                self.sql.f64(*i as f64);
            }
            (_, SortValue::Text(t)) => {
                self.sql.text(t);
            }
            // A cursor of another shape: compare with a value that sorts nowhere.
            (KeyKind::Int, _) => {
                self.sql.i64(0);
            }
            (KeyKind::Float, _) => {
                self.sql.f64(0.0);
            }
            (KeyKind::Text, _) => {
                self.sql.text("");
            }
        }
    }

    /// Rows strictly after (or, walking backwards, before) `pos` in the order of
    /// the sort keys (NULLs last) and then `rid` ascending.
    fn keyset(&mut self, exprs: &[(Sql, KeyKind, bool)], pos: &Position, backwards: bool) {
        self.sql.push(" AND (");
        let n = exprs.len();
        for i in 0..=n {
            if i > 0 {
                self.sql.push(" OR ");
            }
            self.sql.push("(1 = 1");
            // Equal on every earlier key.
            for (j, (e, kind, _)) in exprs.iter().enumerate().take(i) {
                self.sql.push(" AND ");
                match pos.keys.get(j) {
                    None | Some(SortValue::Null) => {
                        self.sql.append(e).push(" IS NULL");
                    }
                    Some(v) => {
                        self.sql.append(e).push(" = ");
                        self.sort_value(*kind, v);
                    }
                }
            }
            self.sql.push(" AND ");
            if i == n {
                self.sql
                    .push(if backwards { "rc.rid < " } else { "rc.rid > " })
                    .i64(pos.rid);
            } else {
                let (e, kind, desc) = &exprs[i];
                let v = pos.keys.get(i).cloned().unwrap_or(SortValue::Null);
                match (&v, backwards) {
                    // Nothing sorts after NULL (NULLs are last); everything else before it.
                    (SortValue::Null, false) => {
                        self.sql.push("1 = 0");
                    }
                    (SortValue::Null, true) => {
                        self.sql.append(e).push(" IS NOT NULL");
                    }
                    (v, false) => {
                        let op = if *desc { " < " } else { " > " };
                        self.sql.push("(").append(e).push(op);
                        self.sort_value(*kind, v);
                        self.sql.push(" OR ").append(e).push(" IS NULL)");
                    }
                    (v, true) => {
                        let op = if *desc { " > " } else { " < " };
                        self.sql.append(e).push(op);
                        self.sort_value(*kind, v);
                    }
                }
            }
            self.sql.push(")");
        }
        self.sql.push(")");
    }

    /// A page of current versions: sorted, after the position, at most `limit`.
    pub fn page(&mut self, q: &Query) -> Result<(), StoreError> {
        if q.sort.len() > MAX_SQL_SORT_KEYS {
            return Err(StoreError::Prepare(format!(
                "at most {MAX_SQL_SORT_KEYS} sort keys are sorted by the database"
            )));
        }
        let mut exprs = Vec::new();
        for s in &q.sort {
            exprs.push((self.sort_expr(s)?, key_kind(&s.key), s.descending));
        }
        let pg = self.sql.backend() == Backend::Postgres;
        let null_of = |k: KeyKind| -> &'static str {
            match (pg, k) {
                (false, _) => "NULL",
                (true, KeyKind::Int) => "CAST(NULL AS BIGINT)",
                (true, KeyKind::Float) => "CAST(NULL AS DOUBLE PRECISION)",
                (true, KeyKind::Text) => "CAST(NULL AS TEXT)",
            }
        };
        self.sql.push(
            "SELECT q.rid, rv.resource_type, rv.resource_id, rv.version_id, rv.last_updated, \
             rv.key_id, rv.body, q.k0i, q.k0f, q.k0t, q.k1i, q.k1f, q.k1t, q.k2i, q.k2f, q.k2t \
             FROM (SELECT rc.rid, rc.resource_type, rc.resource_id, rc.version_id",
        );
        for j in 0..MAX_SQL_SORT_KEYS {
            for (kind, suffix) in [
                (KeyKind::Int, "i"),
                (KeyKind::Float, "f"),
                (KeyKind::Text, "t"),
            ] {
                self.sql.push(", ");
                match exprs.get(j) {
                    Some((e, k, _))
                        if std::mem::discriminant(k) == std::mem::discriminant(&kind) =>
                    {
                        self.sql.append(e);
                    }
                    _ => {
                        self.sql.push(null_of(kind));
                    }
                }
                self.sql.push(&format!(" AS k{j}{suffix}"));
            }
        }
        self.sql.push(" FROM resources_current rc");
        self.scope(q)?;
        if let Some(pos) = &q.after {
            self.keyset(&exprs, pos, q.backwards);
        }
        let order = |backwards: bool, prefix: &str| -> String {
            let mut parts: Vec<String> = Vec::new();
            for (j, s) in q.sort.iter().enumerate() {
                let suffix = match key_kind(&s.key) {
                    KeyKind::Int => "i",
                    KeyKind::Float => "f",
                    KeyKind::Text => "t",
                };
                let desc = s.descending != backwards;
                let nulls = if backwards {
                    "NULLS FIRST"
                } else {
                    "NULLS LAST"
                };
                parts.push(format!(
                    "{prefix}k{j}{suffix} {} {nulls}",
                    if desc { "DESC" } else { "ASC" }
                ));
            }
            parts.push(format!(
                "{prefix}rid {}",
                if backwards { "DESC" } else { "ASC" }
            ));
            parts.join(", ")
        };
        self.sql.push(" ORDER BY ");
        self.sql.push(&order(q.backwards, ""));
        self.sql.push(" LIMIT ").i64(q.limit.min(1_000_000) as i64);
        self.sql.push(
            ") q JOIN resource_versions rv ON rv.resource_type = q.resource_type \
             AND rv.resource_id = q.resource_id AND rv.version_id = q.version_id ORDER BY ",
        );
        self.sql.push(&order(q.backwards, "q."));
        Ok(())
    }

    /// How many resources satisfy the query (sort and position ignored).
    pub fn count(&mut self, q: &Query) -> Result<(), StoreError> {
        self.sql
            .push("SELECT COUNT(*) AS n FROM resources_current rc");
        self.scope(q)
    }

    /// The ids (and rids) that satisfy the query, in rid order, at most `limit`.
    pub fn ids(&mut self, q: &Query) -> Result<(), StoreError> {
        self.sql
            .push("SELECT rc.rid, rc.resource_id FROM resources_current rc");
        self.scope(q)?;
        self.sql
            .push(" ORDER BY rc.rid LIMIT ")
            .i64(q.limit.min(1_000_000) as i64);
        Ok(())
    }
}

/// True when every resource a filter admits is a live current version of a type
/// named by its parameter keys (the filter reads index rows of those pids).
fn pins_type(f: &Filter) -> bool {
    match f {
        Filter::Blind { .. }
        | Filter::Date { .. }
        | Filter::Number { .. }
        | Filter::Uri { .. }
        | Filter::Present { .. } => true,
        Filter::Reference { targets, .. } => !targets.is_empty(),
        Filter::All(fs) => fs.iter().any(pins_type),
        Filter::Any(fs) => !fs.is_empty() && fs.iter().all(pins_type),
        Filter::Nothing => true,
        Filter::Ids(_)
        | Filter::LastUpdated(_)
        | Filter::ReferencedBy { .. }
        | Filter::TargetOf { .. }
        | Filter::Not(_) => false,
    }
}

/// The least string greater than every string starting with `prefix`.
fn prefix_end(prefix: &str) -> String {
    let mut s = prefix.to_string();
    s.push(char::MAX);
    s
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

/// A connection of either backend that runs the search statements.
pub(crate) trait SearchConn {
    const BACKEND: Backend;
    fn load_rows<R>(&mut self, sql: Sql) -> Result<Vec<R>, StoreError>
    where
        R: diesel::QueryableByName<Sqlite> + diesel::QueryableByName<Pg> + 'static;
}

impl SearchConn for diesel::SqliteConnection {
    const BACKEND: Backend = Backend::Sqlite;
    fn load_rows<R>(&mut self, sql: Sql) -> Result<Vec<R>, StoreError>
    where
        R: diesel::QueryableByName<Sqlite> + diesel::QueryableByName<Pg> + 'static,
    {
        Ok(sql.load::<R>(self)?)
    }
}

impl SearchConn for diesel::PgConnection {
    const BACKEND: Backend = Backend::Postgres;
    fn load_rows<R>(&mut self, sql: Sql) -> Result<Vec<R>, StoreError>
    where
        R: diesel::QueryableByName<Sqlite> + diesel::QueryableByName<Pg> + 'static,
    {
        Ok(sql.load::<R>(self)?)
    }
}

/// Runs the page query of `q` on a connection.
pub(crate) fn run_page<C: SearchConn>(
    c: &mut C,
    ring: &Keyring,
    q: &Query,
) -> Result<Vec<Hit>, StoreError> {
    let mut r = Renderer::new(C::BACKEND, ring);
    r.page(q)?;
    let rows: Vec<HitRow> = c.load_rows(r.sql.finish())?;
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

pub(crate) fn run_count<C: SearchConn>(
    c: &mut C,
    ring: &Keyring,
    q: &Query,
) -> Result<i64, StoreError> {
    let mut r = Renderer::new(C::BACKEND, ring);
    r.count(q)?;
    let rows: Vec<CountRow> = c.load_rows(r.sql.finish())?;
    Ok(rows.first().map_or(0, |r| r.n))
}

/// The (rid, id) of resources that satisfy the query (conditional interactions).
pub(crate) fn run_ids<C: SearchConn>(
    c: &mut C,
    ring: &Keyring,
    q: &Query,
) -> Result<Vec<(i64, String)>, StoreError> {
    let mut r = Renderer::new(C::BACKEND, ring);
    r.ids(q)?;
    let rows: Vec<IdRow> = c.load_rows(r.sql.finish())?;
    Ok(rows.into_iter().map(|r| (r.rid, r.resource_id)).collect())
}

/// Current versions of the given rids (includes, sorting after decryption).
pub(crate) fn run_by_rids<C: SearchConn>(
    c: &mut C,
    ring: &Keyring,
    rids: &[i64],
) -> Result<Vec<Hit>, StoreError> {
    if rids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(C::BACKEND);
    let f = sql.false_literal();
    sql.push(
        "SELECT rc.rid, rv.resource_type, rv.resource_id, rv.version_id, rv.last_updated, \
         rv.key_id, rv.body, NULL AS k0i, NULL AS k0f, NULL AS k0t, NULL AS k1i, NULL AS k1f, \
         NULL AS k1t, NULL AS k2i, NULL AS k2f, NULL AS k2t \
         FROM resources_current rc JOIN resource_versions rv ON rv.resource_type = rc.resource_type \
         AND rv.resource_id = rc.resource_id AND rv.version_id = rc.version_id WHERE ",
    );
    sql.in_i64s("rc.rid", rids);
    sql.push(&format!(" AND rc.deleted = {f} ORDER BY rc.rid"));
    let rows: Vec<HitRow> = c.load_rows(typed_nulls(sql).finish())?;
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
/// at (`_include`), optionally only targets of `types`.
pub(crate) fn run_include_targets<C: SearchConn>(
    c: &mut C,
    rids: &[i64],
    pids: &[i64],
    types: Option<&[String]>,
    limit: usize,
) -> Result<Vec<i64>, StoreError> {
    if rids.is_empty() || pids.is_empty() {
        return Ok(Vec::new());
    }
    let mut sql = Sql::new(C::BACKEND);
    let f = sql.false_literal();
    sql.push(
        "SELECT DISTINCT t.rid AS rid, t.resource_id AS resource_id FROM search_reference r \
         JOIN resources_current t ON t.resource_type = r.target_type AND t.resource_id = r.target_id WHERE ",
    );
    sql.in_i64s("r.rid", rids);
    sql.push(" AND ");
    sql.in_i64s("r.pid", pids);
    if let Some(types) = types {
        sql.push(" AND ");
        sql.in_texts("r.target_type", types);
    }
    sql.push(&format!(" AND t.deleted = {f} ORDER BY t.rid LIMIT "))
        .i64(limit as i64);
    let rows: Vec<IdRow> = c.load_rows(sql.finish())?;
    Ok(rows.into_iter().map(|r| r.rid).collect())
}

/// The rids of resources whose references `pids` point at one of `targets`
/// (`_revinclude`), optionally only sources of `types`.
pub(crate) fn run_revinclude_sources<C: SearchConn>(
    c: &mut C,
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
    let mut sql = Sql::new(C::BACKEND);
    let f = sql.false_literal();
    sql.push(
        "SELECT DISTINCT s.rid AS rid, s.resource_id AS resource_id FROM search_reference r \
         JOIN resources_current s ON s.rid = r.rid WHERE ",
    );
    sql.in_i64s("r.pid", pids);
    sql.push(" AND (");
    for (i, (t, ids)) in by_type.iter().enumerate() {
        if i > 0 {
            sql.push(" OR ");
        }
        sql.push("(r.target_type = ").text(t).push(" AND ");
        sql.in_texts("r.target_id", ids);
        sql.push(")");
    }
    sql.push(")");
    if let Some(types) = types {
        sql.push(" AND ");
        sql.in_texts("s.resource_type", types);
    }
    sql.push(&format!(" AND s.deleted = {f} ORDER BY s.rid LIMIT "))
        .i64(limit as i64);
    let rows: Vec<IdRow> = c.load_rows(sql.finish())?;
    Ok(rows.into_iter().map(|r| r.rid).collect())
}

/// The page query's text and the database's plan for it (`EXPLAIN`), for the plan
/// tests and operators.
pub(crate) fn explain(
    conn: &mut DbConn,
    backend: Backend,
    ring: &Keyring,
    q: &Query,
) -> Result<String, StoreError> {
    let mut r = Renderer::new(backend, ring);
    r.page(q)?;
    let text = r.sql.display();
    let mut sql = Sql::new(backend);
    sql.push(match backend {
        Backend::Postgres => "EXPLAIN ",
        Backend::Sqlite => "EXPLAIN QUERY PLAN ",
    });
    sql.append(&r.sql);
    let sql = sql.finish();
    let plan: Vec<String> = match conn {
        DbConn::Pg(c) => {
            #[derive(QueryableByName)]
            struct PlanLine {
                #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
                line: String,
            }
            let c: &mut diesel::PgConnection = &mut *c;
            sql.load::<PlanLine>(c)?
                .into_iter()
                .map(|l| l.line)
                .collect()
        }
        DbConn::Sqlite(c, _) => {
            #[derive(QueryableByName)]
            struct PlanLine {
                #[diesel(sql_type = Text)]
                detail: String,
            }
            let c: &mut diesel::SqliteConnection = &mut *c;
            sql.load::<PlanLine>(c)?
                .into_iter()
                .map(|l| l.detail)
                .collect()
        }
    };
    Ok(format!("{text}\n{}", plan.join("\n")))
}
