//! Running a search: a page of matches in the requested order (by the database
//! where every sort key is in clear, else after decryption within a bound), the
//! total, `_include`/`_revinclude` (iterated to a fixed point or a limit), and the
//! cursors of the next and previous pages. A cursor holds the query and the
//! position of the page edge (keyset paging: inserts never shift a page), and it
//! is sealed with a key derived from the index key before it goes into a link.

use std::collections::HashSet;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::params::ParamType;
use super::request::{Include, Limits, SearchRequest, Total};
use super::{verify, SearchEngine, SearchError};
use crate::access::AccessContext;
use crate::store::{
    Hit, Position, Query, Rows, Sort, SortKey, SortValue, Store, MAX_SQL_SORT_KEYS,
};

#[derive(Debug, Clone)]
pub struct SearchSettings {
    pub default_count: usize,
    pub max_count: usize,
    /// Most matches sorted or verified after decryption (string sorts, long
    /// prefixes, `:contains`); more is refused as too costly.
    pub max_in_memory: usize,
    /// Most resources added by `_include`/`_revinclude` to one page.
    pub max_includes: usize,
    pub default_total: Total,
    pub max_values_per_param: usize,
    pub max_params: usize,
    pub max_chain_depth: usize,
    pub max_has_depth: usize,
    /// `_include:iterate` rounds at most (R4 leaves the depth to the server).
    pub max_include_rounds: usize,
    /// Index rows one written resource may make (`search.max_index_rows`).
    pub max_index_rows: usize,
}

impl Default for SearchSettings {
    fn default() -> Self {
        SearchSettings {
            default_count: 50,
            max_count: 1000,
            max_in_memory: 5000,
            max_includes: 1000,
            default_total: Total::Accurate,
            max_values_per_param: 100,
            max_params: 30,
            max_chain_depth: 3,
            max_has_depth: 2,
            max_include_rounds: 4,
            max_index_rows: 250_000,
        }
    }
}

impl SearchSettings {
    pub fn limits(&self) -> Limits {
        Limits {
            default_count: self.default_count,
            max_count: self.max_count,
            default_total: self.default_total,
            max_values_per_param: self.max_values_per_param,
            max_params: self.max_params,
            max_chain_depth: self.max_chain_depth,
            max_has_depth: self.max_has_depth,
        }
    }
}

/// Where the next or previous page of a search starts, with the search itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The searched types (empty: every type).
    pub types: Vec<String>,
    /// The accepted parameters of the search, in order.
    pub params: Vec<(String, String)>,
    pub position: Position,
    /// A previous-page cursor: the page ends before `position`.
    pub backwards: bool,
    /// The rows searched (AuditEvents: up to the audit log position the first
    /// page saw, so every page of the search sees the same set).
    #[serde(default)]
    pub rows: Rows,
}

/// What a cursor is bound to: the search it continues (the path it was issued
/// for: type, compartment or system search) and the caller it was issued to.
/// A page link is a capability; replayed on another URL or by another caller it
/// would hand over a search its holder did not make (issue 13, item 6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CursorBinding {
    /// The searched path below the base: `/Observation`, `/Patient/1/Observation`,
    /// empty for a system search.
    scope: String,
    /// SHA-256 of the caller's client, user and subject (hex): the cursor names
    /// no identity, yet a token of another client or user does not open it.
    caller: String,
}

impl CursorBinding {
    pub fn new(scope: &str, ctx: &AccessContext) -> CursorBinding {
        let part = |v: &Option<String>| v.as_deref().unwrap_or("").to_string();
        let who = serde_json::json!([part(&ctx.client_id), part(&ctx.user), part(&ctx.subject)]);
        CursorBinding {
            scope: scope.to_string(),
            caller: hex::encode(openssl::sha::sha256(who.to_string().as_bytes())),
        }
    }
}

/// The sealed form: the cursor with its binding.
#[derive(Serialize, Deserialize)]
struct SealedCursor {
    bound: CursorBinding,
    cursor: Cursor,
}

impl Cursor {
    /// The sealed, URL-safe form for a link, bound to the search and the caller.
    pub fn seal(&self, store: &Store, bound: &CursorBinding) -> Result<String, SearchError> {
        let sealed = SealedCursor {
            bound: bound.clone(),
            cursor: self.clone(),
        };
        let plain = serde_json::to_vec(&sealed).map_err(|_| SearchError::BadCursor)?;
        let sealed = store.seal_cursor(&plain)?;
        Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed))
    }

    /// Opens a link's cursor; it must have been issued for the same search path
    /// and to the same caller as `bound` describes.
    pub fn open(token: &str, store: &Store, bound: &CursorBinding) -> Result<Cursor, SearchError> {
        let sealed = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token)
            .map_err(|_| SearchError::BadCursor)?;
        let plain = store.open_cursor(&sealed).ok_or(SearchError::BadCursor)?;
        let sealed: SealedCursor =
            serde_json::from_slice(&plain).map_err(|_| SearchError::BadCursor)?;
        if sealed.bound.scope != bound.scope {
            return Err(SearchError::CursorElsewhere);
        }
        if sealed.bound.caller != bound.caller {
            return Err(SearchError::CursorOtherCaller);
        }
        Ok(sealed.cursor)
    }
}

/// One page of a search.
#[derive(Debug, Default)]
pub struct SearchResult {
    pub matches: Vec<Hit>,
    pub included: Vec<Hit>,
    pub total: Option<i64>,
    pub next: Option<Cursor>,
    pub previous: Option<Cursor>,
    /// Things the client should know (includes cut at the limit, ...).
    pub warnings: Vec<String>,
}

pub(super) struct Runner<'a> {
    pub engine: &'a SearchEngine,
    pub store: &'a Store,
    pub ctx: &'a AccessContext,
    pub rows: Rows,
}

/// A sort key: by the database, or computed after decryption.
enum PlannedSort {
    Sql(Sort),
    Decrypted(Vec<std::sync::Arc<super::Param>>, bool),
}

impl Runner<'_> {
    fn query(&self, req: &SearchRequest) -> Query {
        Query {
            types: if req.types.is_empty() {
                None
            } else {
                Some(req.types.clone())
            },
            filters: req.filters.clone(),
            rows: self.rows,
            ..Query::default()
        }
    }

    fn sorts(&self, req: &SearchRequest) -> Vec<PlannedSort> {
        let reg = self.engine.registry();
        req.controls
            .sort
            .iter()
            .map(|(code, desc)| {
                let desc = *desc;
                let key = match code.as_str() {
                    "_id" => {
                        return PlannedSort::Sql(Sort {
                            key: SortKey::Id,
                            descending: desc,
                        })
                    }
                    "_lastUpdated" => {
                        return PlannedSort::Sql(Sort {
                            key: SortKey::LastUpdated,
                            descending: desc,
                        })
                    }
                    // AuditEvent `date` is AuditEvent.recorded, which the audit log
                    // keeps as its rows' time (one clock reading makes both): sorted
                    // by that column, not by a look-up into the date index per match
                    // (SQLite's planner walked that index by value: 161 s for 38,000
                    // matches, benches/audit/index.sh).
                    "date" if matches!(self.rows, Rows::AuditLog { .. }) => {
                        return PlannedSort::Sql(Sort {
                            key: SortKey::LastUpdated,
                            descending: desc,
                        })
                    }
                    c => c,
                };
                let types: Vec<String> = if req.types.is_empty() {
                    reg.model().resource_types().iter().cloned().collect()
                } else {
                    req.types.clone()
                };
                let params: Vec<_> = types.iter().filter_map(|t| reg.param(t, key)).collect();
                let pids: Vec<i64> = params.iter().map(|p| p.pid).collect();
                let ptype = params.first().map(|p| p.param_type);
                match ptype {
                    Some(ParamType::Date) => PlannedSort::Sql(Sort {
                        key: SortKey::Date(pids),
                        descending: desc,
                    }),
                    Some(ParamType::Number) => PlannedSort::Sql(Sort {
                        key: SortKey::Number { pids, keys: None },
                        descending: desc,
                    }),
                    Some(ParamType::Quantity) => PlannedSort::Sql(Sort {
                        key: SortKey::Number {
                            pids,
                            keys: Some(vec![super::values::tag::ANY_UNIT.to_string()]),
                        },
                        descending: desc,
                    }),
                    Some(ParamType::Uri) => PlannedSort::Sql(Sort {
                        key: SortKey::Uri(pids),
                        descending: desc,
                    }),
                    _ => PlannedSort::Decrypted(params, desc),
                }
            })
            .collect()
    }

    pub fn execute(
        &self,
        req: &SearchRequest,
        cursor: Option<&Cursor>,
    ) -> Result<SearchResult, SearchError> {
        let mut result = SearchResult::default();
        if req.controls.count_only {
            result.total = Some(self.count(req)?);
            return Ok(result);
        }
        let sorts = self.sorts(req);
        let in_memory = !req.checks.is_empty()
            || sorts.len() > MAX_SQL_SORT_KEYS
            || sorts
                .iter()
                .any(|s| matches!(s, PlannedSort::Decrypted(..)));
        let count = req.controls.count.max(1);
        let (page, more) = if in_memory {
            self.page_after_decryption(req, &sorts, cursor, count, &mut result)?
        } else {
            self.page_in_database(req, &sorts, cursor, count, &mut result)?
        };
        let backwards = cursor.is_some_and(|c| c.backwards);
        let edge = |h: &Hit, backwards: bool| Cursor {
            types: req.types.clone(),
            params: req.accepted.clone(),
            position: Position {
                keys: h.keys.clone(),
                rid: h.rid,
            },
            backwards,
            rows: self.rows,
        };
        let has_next = if backwards { !page.is_empty() } else { more };
        let has_previous = if backwards { more } else { cursor.is_some() };
        if has_next {
            result.next = page.last().map(|h| edge(h, false));
        }
        if has_previous {
            result.previous = page.first().map(|h| edge(h, true));
        }
        if result.total.is_none() && req.controls.total != Total::None {
            result.total = if cursor.is_none() && !more {
                Some(page.len() as i64)
            } else {
                Some(self.count(req)?)
            };
        }
        if !req.controls.includes.is_empty() || !req.controls.revincludes.is_empty() {
            result.included = self.includes(req, &page, &mut result.warnings)?;
        }
        result.matches = page;
        Ok(result)
    }

    /// Every match of the database's part of a search, to be checked or sorted
    /// after decryption: at most `search.max_in_memory`, else 400 `too-costly`.
    fn candidates(&self, req: &SearchRequest) -> Result<Vec<Hit>, SearchError> {
        let bound = self.engine.settings.max_in_memory;
        let mut q = self.query(req);
        q.limit = bound + 1;
        let candidates = self.store.search_page(self.ctx, &q)?;
        if candidates.len() > bound {
            return Err(SearchError::TooCostly(format!(
                "this search needs its matches sorted or checked after decryption, and it has more than {bound}; narrow it (or sort by a date, number or _lastUpdated)"
            )));
        }
        Ok(candidates)
    }

    /// How many resources match: counted by the database, or, when criteria are
    /// decided after decryption, among the candidates (at most the in-memory
    /// bound, as for a page).
    fn count(&self, req: &SearchRequest) -> Result<i64, SearchError> {
        if req.checks.is_empty() {
            return Ok(self.store.search_count(self.ctx, &self.query(req))?);
        }
        let candidates = self.candidates(req)?;
        let model = self.engine.model();
        let stubs = &self.engine.stubs;
        Ok(candidates
            .iter()
            .filter(|h| {
                serde_json::from_slice::<Value>(&h.version.body)
                    .is_ok_and(|r| verify::checks_hold(model, stubs, &req.checks, &r))
            })
            .count() as i64)
    }

    /// The query of a page sorted by the database.
    fn page_query(
        &self,
        req: &SearchRequest,
        sorts: &[PlannedSort],
        cursor: Option<&Cursor>,
        count: usize,
    ) -> Query {
        let mut q = self.query(req);
        q.sort = sorts
            .iter()
            .filter_map(|s| match s {
                PlannedSort::Sql(s) => Some(s.clone()),
                PlannedSort::Decrypted(..) => None,
            })
            .collect();
        q.limit = count + 1;
        if let Some(c) = cursor {
            q.after = Some(c.position.clone());
            q.backwards = c.backwards;
        }
        q
    }

    /// The SQL of the first page of a search and the database's plan for it.
    pub fn explain(&self, req: &SearchRequest) -> Result<String, SearchError> {
        let sorts = self.sorts(req);
        let q = self.page_query(req, &sorts, None, req.controls.count.max(1));
        Ok(self.store.explain(self.ctx, &q)?)
    }

    fn page_in_database(
        &self,
        req: &SearchRequest,
        sorts: &[PlannedSort],
        cursor: Option<&Cursor>,
        count: usize,
        _result: &mut SearchResult,
    ) -> Result<(Vec<Hit>, bool), SearchError> {
        let q = self.page_query(req, sorts, cursor, count);
        let mut hits = self.store.search_page(self.ctx, &q)?;
        let more = hits.len() > count;
        if more {
            if q.backwards {
                hits.remove(0);
            } else {
                hits.truncate(count);
            }
        }
        Ok((hits, more))
    }

    fn page_after_decryption(
        &self,
        req: &SearchRequest,
        sorts: &[PlannedSort],
        cursor: Option<&Cursor>,
        count: usize,
        result: &mut SearchResult,
    ) -> Result<(Vec<Hit>, bool), SearchError> {
        let candidates = self.candidates(req)?;
        let model = self.engine.model();
        let stubs = &self.engine.stubs;
        let descending: Vec<bool> = sorts
            .iter()
            .map(|s| match s {
                PlannedSort::Sql(s) => s.descending,
                PlannedSort::Decrypted(_, d) => *d,
            })
            .collect();
        let mut rows: Vec<Hit> = Vec::with_capacity(candidates.len());
        for mut h in candidates {
            let Ok(resource) = serde_json::from_slice::<Value>(&h.version.body) else {
                continue;
            };
            if !verify::checks_hold(model, stubs, &req.checks, &resource) {
                continue;
            }
            h.keys = sorts
                .iter()
                .map(|s| match s {
                    PlannedSort::Sql(s) => self.sql_key_value(s, &h, &resource),
                    PlannedSort::Decrypted(params, desc) => {
                        let rt = h.version.resource_type.as_str();
                        params
                            .iter()
                            .find(|p| p.pid == super::params::pid(rt, &p.code))
                            .map(|p| verify::sort_value(model, stubs, p, &resource, *desc))
                            .unwrap_or(SortValue::Null)
                    }
                })
                .collect();
            rows.push(h);
        }
        rows.sort_by(|a, b| verify::compare_rows((&a.keys, a.rid), (&b.keys, b.rid), &descending));
        result.total = Some(rows.len() as i64);
        let start = match cursor {
            None => 0,
            Some(c) => {
                let pos = (c.position.keys.as_slice(), c.position.rid);
                let after = rows
                    .iter()
                    .position(|h| {
                        verify::compare_rows((&h.keys, h.rid), pos, &descending)
                            == std::cmp::Ordering::Greater
                    })
                    .unwrap_or(rows.len());
                if c.backwards {
                    let before = rows
                        .iter()
                        .position(|h| {
                            verify::compare_rows((&h.keys, h.rid), pos, &descending)
                                != std::cmp::Ordering::Less
                        })
                        .unwrap_or(rows.len());
                    let from = before.saturating_sub(count);
                    let more = from > 0;
                    let page = rows.drain(from..before).collect();
                    return Ok((page, more));
                }
                after
            }
        };
        let end = (start + count).min(rows.len());
        let more = end < rows.len();
        Ok((rows.drain(start..end).collect(), more))
    }

    /// The value a database sort key has for a decrypted resource (in-memory mode
    /// mixes database keys with decrypted ones).
    fn sql_key_value(&self, s: &Sort, h: &Hit, resource: &Value) -> SortValue {
        let model = self.engine.model();
        let stubs = &self.engine.stubs;
        let rt = h.version.resource_type.as_str();
        let param_of = |pids: &[i64]| {
            self.engine
                .registry()
                .for_type(rt)
                .all()
                .find(|p| pids.contains(&p.pid))
                .cloned()
        };
        match &s.key {
            SortKey::Id => SortValue::Text(h.version.id.clone()),
            SortKey::LastUpdated => SortValue::Int(h.version.last_updated),
            SortKey::Date(pids) | SortKey::Uri(pids) | SortKey::Number { pids, .. } => {
                match param_of(pids) {
                    Some(p) => verify::sort_value(model, stubs, &p, resource, s.descending),
                    None => SortValue::Null,
                }
            }
        }
    }

    fn reference_pids(&self, source: &str, param: &str) -> Vec<i64> {
        let tp = self.engine.registry().for_type(source);
        if param == "*" {
            tp.all()
                .filter(|p| p.param_type == ParamType::Reference)
                .map(|p| p.pid)
                .collect()
        } else {
            tp.get(param).map(|p| vec![p.pid]).unwrap_or_default()
        }
    }

    fn includes(
        &self,
        req: &SearchRequest,
        page: &[Hit],
        warnings: &mut Vec<String>,
    ) -> Result<Vec<Hit>, SearchError> {
        let limit = self.engine.settings.max_includes;
        let mut seen: HashSet<i64> = page.iter().map(|h| h.rid).collect();
        let mut out: Vec<Hit> = Vec::new();
        let mut frontier: Vec<(i64, String, String)> = page
            .iter()
            .map(|h| (h.rid, h.version.resource_type.clone(), h.version.id.clone()))
            .collect();
        let rounds = self.engine.settings.max_include_rounds.max(1);
        // One round more than allowed only looks whether iterating would have
        // found more, so that the answer can say so.
        for round in 0..=rounds {
            let applies = |i: &&Include| round == 0 || i.iterate;
            let mut found: Vec<i64> = Vec::new();
            for inc in req.controls.includes.iter().filter(applies) {
                let sources: Vec<&(i64, String, String)> = frontier
                    .iter()
                    .filter(|(_, t, _)| inc.source == "*" || *t == inc.source)
                    .collect();
                let mut types_seen: Vec<&str> =
                    sources.iter().map(|(_, t, _)| t.as_str()).collect();
                types_seen.sort();
                types_seen.dedup();
                let pids: Vec<i64> = types_seen
                    .iter()
                    .flat_map(|t| self.reference_pids(t, &inc.param))
                    .collect();
                let rids: Vec<i64> = sources.iter().map(|(r, _, _)| *r).collect();
                let target = inc.target.clone().map(|t| vec![t]);
                found.extend(self.store.include_targets(
                    self.ctx,
                    &rids,
                    &pids,
                    target.as_deref(),
                    limit + 1,
                )?);
            }
            for rev in req.controls.revincludes.iter().filter(applies) {
                let targets: Vec<(String, String)> = frontier
                    .iter()
                    .filter(|(_, t, _)| rev.target.as_ref().is_none_or(|x| x == t))
                    .map(|(_, t, id)| (t.clone(), id.clone()))
                    .collect();
                let (pids, types) = if rev.source == "*" {
                    let all: Vec<String> = self
                        .engine
                        .model()
                        .resource_types()
                        .iter()
                        .cloned()
                        .collect();
                    let pids = all
                        .iter()
                        .flat_map(|t| self.reference_pids(t, "*"))
                        .collect();
                    (pids, None)
                } else {
                    (
                        self.reference_pids(&rev.source, &rev.param),
                        Some(vec![rev.source.clone()]),
                    )
                };
                found.extend(self.store.revinclude_sources(
                    self.ctx,
                    &targets,
                    &pids,
                    types.as_deref(),
                    limit + 1,
                )?);
            }
            let fresh: Vec<i64> = found.into_iter().filter(|r| seen.insert(*r)).collect();
            if fresh.is_empty() {
                break;
            }
            if round == rounds {
                warnings.push(format!(
                    "_include:iterate/_revinclude:iterate stopped after {rounds} rounds (setting search.max_include_rounds); more resources are reachable"
                ));
                break;
            }
            let room = limit.saturating_sub(out.len());
            if fresh.len() > room {
                warnings.push(format!(
                    "_include/_revinclude found more than {limit} resources; only the first {limit} are included"
                ));
            }
            let take: Vec<i64> = fresh.into_iter().take(room).collect();
            let hits = self.store.read_rids(self.ctx, &take)?;
            frontier = hits
                .iter()
                .map(|h| (h.rid, h.version.resource_type.clone(), h.version.id.clone()))
                .collect();
            out.extend(hits);
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
