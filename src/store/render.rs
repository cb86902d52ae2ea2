//! Rendering search queries to SQL for either backend: each [`Filter`] becomes a
//! semi-join on the surrogate key (`rid IN (...)`), sort keys become correlated
//! aggregates over the index rows (the lowest value ascending, the highest
//! descending), and the page continues after its position (keyset, NULLs last).
//! Blind values are hashed with the index key while the SQL is written; every
//! value is a bound parameter.

use super::pool::Backend;
use super::query::{
    Bound, Filter, IndexTable, Position, Query, RefTarget, Rows, Sort, SortKey, SortValue,
    UriMatch, MAX_SQL_SORT_KEYS,
};
use super::sql::Sql;
use super::StoreError;
use crate::access::{AccessContext, Action};
use crate::crypto::Keyring;

/// The SQL value type of a sort key.
#[derive(Clone, Copy)]
pub(crate) enum KeyKind {
    Int,
    Float,
    Text,
}

pub(crate) fn key_kind(k: &SortKey) -> KeyKind {
    match k {
        SortKey::Id | SortKey::Uri(_) => KeyKind::Text,
        SortKey::LastUpdated | SortKey::Date(_) => KeyKind::Int,
        SortKey::Number { .. } => KeyKind::Float,
    }
}

/// Renders queries for one backend, hashing blind values with the index key and
/// narrowing every set of resources it reads to what the caller may see.
pub(crate) struct Renderer<'a> {
    pub sql: Sql,
    ring: &'a Keyring,
    ctx: &'a AccessContext,
    /// What the rows of the outermost resources are for (search, or read for
    /// includes); resources reached through chains and `_has` are searched.
    action: Action,
    alias: usize,
    /// Conditions on index rows are correlated with the resource (`AND x.rid =
    /// rc.rid`): for a query over a few known rids ([`Query::probe`]), each
    /// condition is a look-up by rid instead of a scan of its parameter's rows.
    probe: bool,
}

impl<'a> Renderer<'a> {
    pub fn new(
        backend: Backend,
        ring: &'a Keyring,
        ctx: &'a AccessContext,
        action: Action,
    ) -> Renderer<'a> {
        Renderer {
            sql: Sql::new(backend),
            ring,
            ctx,
            action,
            alias: 0,
            probe: false,
        }
    }

    /// ` AND <narrowing>` for the resources `t` (of `types`, None: any type), when
    /// the caller's grant narrows them for the renderer's action.
    pub fn narrow(&mut self, t: &str, types: Option<&[String]>) -> Result<(), StoreError> {
        self.narrow_for(t, types, self.action)
    }

    fn narrow_for(
        &mut self,
        t: &str,
        types: Option<&[String]>,
        action: Action,
    ) -> Result<(), StoreError> {
        if let Some(f) = self.ctx.grant.narrowing(types, action) {
            self.sql.push(" AND ");
            self.filter(&f, t)?;
        }
        Ok(())
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
            Filter::Rids(rids) => {
                self.sql.in_i64s(&rid, rids);
            }
            Filter::Types(types) => {
                self.sql.in_texts(&format!("{t}.resource_type"), types);
            }
            Filter::LastUpdated(ranges) => {
                self.sql.push("(1 = 1");
                let col = format!("{t}.last_updated");
                self.ranges(&col, &col, ranges, |s, v| {
                    s.i64(v);
                });
                self.sql.push(")");
            }
            Filter::Blind { pids, .. } => self.on_rows(f, IndexTable::Blind, pids, "b", &rid)?,
            Filter::Date { pids, .. } => self.on_rows(f, IndexTable::Date, pids, "d", &rid)?,
            Filter::Number { pids, .. } => self.on_rows(f, IndexTable::Number, pids, "n", &rid)?,
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
            Filter::Present { table, pids } => self.on_rows(f, *table, pids, "p", &rid)?,
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
                self.conjunction(filters, &s)?;
                self.narrow_for(&s, Some(source_types), Action::Search)?;
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
                self.narrow_for(&s, Some(std::slice::from_ref(source_type)), Action::Read)?;
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
            Filter::All(fs) if conditions_on_rows(fs) > MERGE_ABOVE => {
                self.sql.push("(1 = 1");
                self.conjunction(fs, t)?;
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
                self.narrow_for(&t, Some(types), Action::Search)?;
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
        self.conjunction(&q.filters, "rc")?;
        self.narrow("rc", q.types.as_deref())
    }

    /// ` AND f` for each of `filters` on the resources `t`. Once more than
    /// [`MERGE_ABOVE`] of them are conditions on index rows, the conditions on each
    /// index table become one set-based condition ([`Renderer::merged`]).
    fn conjunction(&mut self, filters: &[Filter], t: &str) -> Result<(), StoreError> {
        if conditions_on_rows(filters) <= MERGE_ABOVE {
            for f in filters {
                self.sql.push(" AND ");
                self.filter(f, t)?;
            }
            return Ok(());
        }
        // Conjunctions inside (`name:contains=abc` is one of its trigrams' conditions)
        // join the merge.
        let mut flat = Vec::new();
        flatten(filters, &mut flat);
        let mut groups: Vec<(IndexTable, Vec<&Filter>)> = Vec::new();
        for f in flat {
            match on_index_rows(f) {
                Some((table, _)) => match groups.iter_mut().find(|(g, _)| *g == table) {
                    Some((_, fs)) => fs.push(f),
                    None => groups.push((table, vec![f])),
                },
                _ => {
                    self.sql.push(" AND ");
                    self.filter(f, t)?;
                }
            }
        }
        for (table, fs) in groups {
            self.sql.push(" AND ");
            match fs.as_slice() {
                [one] => self.filter(one, t)?,
                many => self.merged(table, many, t)?,
            }
        }
        Ok(())
    }

    /// `rid IN (SELECT a.rid FROM table a WHERE a.pid IN (pids) AND <the row
    /// condition>)`: one condition on rows of one index table.
    fn on_rows(
        &mut self,
        f: &Filter,
        table: IndexTable,
        pids: &[i64],
        prefix: &str,
        rid: &str,
    ) -> Result<(), StoreError> {
        let a = self.fresh(prefix);
        self.sql.push(&format!(
            "{rid} IN (SELECT {a}.rid FROM {} {a} WHERE ",
            table.name()
        ));
        self.pids(&format!("{a}.pid"), pids);
        self.row_condition(f, &a)?;
        if self.probe {
            self.sql.push(&format!(" AND {a}.rid = {rid}"));
        }
        self.sql.push(")");
        Ok(())
    }

    /// Several conditions on rows of one index table, all to hold for the resource
    /// `t`, as one set-based condition: the rows of all their parameters (and, for
    /// blind rows, values) grouped by resource, each condition met by some row:
    /// `t.rid IN (SELECT m.rid FROM table m WHERE m.pid IN (..) GROUP BY m.rid HAVING
    /// MAX(CASE WHEN <condition 1> THEN 1 ELSE 0 END) = 1 AND ...)`. PostgreSQL plans
    /// each `IN (subquery)` of a conjunction as a join: 29 took 1.0 s to plan (the
    /// issue's repeated parameter grew a server process to gigabytes), merged 0.2 ms
    /// (docs/benchmarks.md).
    fn merged(&mut self, table: IndexTable, fs: &[&Filter], t: &str) -> Result<(), StoreError> {
        let a = self.fresh("m");
        self.sql.push(&format!(
            "{t}.rid IN (SELECT {a}.rid FROM {} {a} WHERE ",
            table.name()
        ));
        let mut all_pids: Vec<i64> = fs
            .iter()
            .filter_map(|f| on_index_rows(f))
            .flat_map(|(_, pids)| pids.iter().copied())
            .collect();
        all_pids.sort_unstable();
        all_pids.dedup();
        self.pids(&format!("{a}.pid"), &all_pids);
        if self.probe {
            self.sql.push(&format!(" AND {a}.rid = {t}.rid"));
        }
        // Blind conditions only (no `Present` among them): only rows with one of
        // their values can meet one.
        if fs.iter().all(|f| matches!(f, Filter::Blind { .. })) {
            let mut hashes = Vec::new();
            for f in fs {
                if let Filter::Blind { values, .. } = f {
                    for v in values {
                        hashes.push(self.blind(v)?);
                    }
                }
            }
            hashes.sort_unstable();
            hashes.dedup();
            self.sql.push(" AND ");
            self.sql.in_i64s(&format!("{a}.h"), &hashes);
        }
        self.sql.push(&format!(" GROUP BY {a}.rid HAVING "));
        for (i, f) in fs.iter().enumerate() {
            if i > 0 {
                self.sql.push(" AND ");
            }
            self.sql.push("MAX(CASE WHEN ");
            if let Some((_, pids)) = on_index_rows(f) {
                self.pids(&format!("{a}.pid"), pids);
            }
            self.row_condition(f, &a)?;
            self.sql.push(" THEN 1 ELSE 0 END) = 1");
        }
        self.sql.push(")");
        Ok(())
    }

    /// ` AND <what a row of alias a must hold>` for a condition on index rows
    /// (its parameters aside).
    fn row_condition(&mut self, f: &Filter, a: &str) -> Result<(), StoreError> {
        match f {
            Filter::Blind { values, .. } => {
                let hashes = values
                    .iter()
                    .map(|v| self.blind(v))
                    .collect::<Result<Vec<i64>, _>>()?;
                self.sql.push(" AND ");
                self.sql.in_i64s(&format!("{a}.h"), &hashes);
            }
            Filter::Date { ranges, .. } => {
                self.ranges(&format!("{a}.lo"), &format!("{a}.hi"), ranges, |s, v| {
                    s.i64(v);
                });
            }
            Filter::Number { keys, ranges, .. } => {
                let ks = match keys {
                    None => vec![0],
                    Some(keys) => keys
                        .iter()
                        .map(|k| self.blind(k))
                        .collect::<Result<Vec<i64>, _>>()?,
                };
                self.sql.push(" AND ");
                self.sql.in_i64s(&format!("{a}.k"), &ks);
                self.ranges(&format!("{a}.lo"), &format!("{a}.hi"), ranges, |s, v| {
                    s.f64(v);
                });
            }
            // Any row of its parameters.
            Filter::Present { .. } => {}
            _ => {
                return Err(StoreError::Internal(
                    "a merged condition is not on index rows",
                ))
            }
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
        self.probe = q.probe;
        if q.sort.len() > MAX_SQL_SORT_KEYS {
            return Err(StoreError::Internal(
                "more sort keys than the database sorts by",
            ));
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
        self.rows_searched(q.rows);
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
        match q.rows {
            Rows::Resources => {
                self.sql.push(
                    ") q JOIN resource_versions rv ON rv.resource_type = q.resource_type \
                     AND rv.resource_id = q.resource_id AND rv.version_id = q.version_id",
                );
            }
            Rows::AuditLog { .. } => {
                self.sql.push(") q JOIN ");
                super::audit_log::page_bodies(&mut self.sql, "rv", "q");
            }
        }
        self.sql.push(" ORDER BY ");
        self.sql.push(&order(q.backwards, "q."));
        Ok(())
    }

    /// How many resources satisfy the query (sort and position ignored).
    pub fn count(&mut self, q: &Query) -> Result<(), StoreError> {
        let narrowed = self
            .ctx
            .grant
            .narrowing(q.types.as_deref(), self.action)
            .is_some();
        let resources = q.rows == Rows::Resources;
        if let (true, false, [f @ Filter::Blind { pids, .. }]) =
            (resources, narrowed, q.filters.as_slice())
        {
            // One string or token condition (`family=Smi`, `identifier=...`): its index rows
            // belong to live current versions only, so they are counted without visiting
            // resources_current (at 100,000 Patients a prefix matching 1,500 of them counts
            // in well under a millisecond instead of 10 ms of probes). A caller whose
            // access is narrowed is counted on resources_current, with the narrowing.
            // AuditEvents are counted on their rows: only those up to the search's
            // position in the audit log count.
            self.sql.push("SELECT COUNT(DISTINCT x.rid) AS n FROM (");
            self.blind_rows(f, pids)?;
            self.sql.push(") x");
            return Ok(());
        }
        self.sql.push("SELECT COUNT(*) AS n");
        self.rows_searched(q.rows);
        self.scope(q)
    }

    /// ` FROM <the rows searched> rc`: resources' current versions, or the
    /// AuditEvents of the audit log (with the same columns, so every filter, sort
    /// key, page position and narrowing applies to them unchanged).
    fn rows_searched(&mut self, rows: Rows) {
        match rows {
            Rows::Resources => {
                self.sql.push(" FROM resources_current rc");
            }
            Rows::AuditLog { through } => {
                self.sql.push(" FROM ");
                super::audit_log::search_rows(&mut self.sql, "rc", through);
            }
        }
    }

    /// The rids of the blind index rows of `pids` with one of `values`.
    fn blind_rows(&mut self, f: &Filter, pids: &[i64]) -> Result<(), StoreError> {
        let a = self.fresh("b");
        self.sql
            .push(&format!("SELECT {a}.rid FROM search_blind {a} WHERE "));
        self.pids(&format!("{a}.pid"), pids);
        self.row_condition(f, &a)
    }

    /// The ids (and rids) that satisfy the query, in rid order, at most `limit`.
    pub fn ids(&mut self, q: &Query) -> Result<(), StoreError> {
        self.probe = q.probe;
        self.sql.push("SELECT rc.rid, rc.resource_id");
        self.rows_searched(q.rows);
        self.scope(q)?;
        self.sql
            .push(" ORDER BY rc.rid LIMIT ")
            .i64(q.limit.min(1_000_000) as i64);
        Ok(())
    }
}

/// A conjunction with more conditions on index rows than this has those on each
/// index table merged into one ([`Renderer::conjunction`]). PostgreSQL's own join
/// search stays exhaustive up to 8 joins (`join_collapse_limit`); below that a
/// selective condition probing the others stays the better plan.
const MERGE_ABOVE: usize = 8;

/// The filters of a conjunction, with the members of conjunctions inside it (and
/// of one-alternative disjunctions) in their place.
fn flatten<'f>(filters: &'f [Filter], out: &mut Vec<&'f Filter>) {
    for f in filters {
        match f {
            Filter::All(inner) => flatten(inner, out),
            Filter::Any(one) if one.len() == 1 => flatten(one, out),
            other => out.push(other),
        }
    }
}

/// How many conditions on index rows a conjunction has, counting those of the
/// conjunctions inside it.
fn conditions_on_rows(filters: &[Filter]) -> usize {
    let mut flat = Vec::new();
    flatten(filters, &mut flat);
    flat.iter().filter(|f| on_index_rows(f).is_some()).count()
}

/// The index table and parameters of a filter that is one condition on rows of
/// one index table (merged by [`Renderer::merged`]).
fn on_index_rows(f: &Filter) -> Option<(IndexTable, &[i64])> {
    match f {
        Filter::Blind { pids, .. } => Some((IndexTable::Blind, pids)),
        Filter::Date { pids, .. } => Some((IndexTable::Date, pids)),
        Filter::Number { pids, .. } => Some((IndexTable::Number, pids)),
        Filter::Present { table, pids } if *table != IndexTable::Reference => Some((*table, pids)),
        _ => None,
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
        | Filter::Rids(_)
        | Filter::Types(_)
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
