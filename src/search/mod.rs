//! FHIR search (R4 3.1.1) over blind-indexed, encrypted data: the search
//! parameters of the loaded packages and of the database ([`params`]), index
//! extraction on write ([`extract`]), query parsing and planning ([`request`],
//! [`plan`]) into the store's typed filters, and execution ([`run`]): a page by
//! keyset, includes, totals, checks after decryption, paging cursors sealed so
//! that links carry no clear values.
//!
//! Architecture invariant: search knows nothing of HTTP; it hands the store clear
//! values and the store blinds strings and tokens with the index key, so no clear
//! text of a string or token parameter reaches the database.

pub mod audit_index;
pub mod extract;
pub mod params;
pub mod plan;
pub mod reindex;
pub mod request;
pub mod run;
pub mod syntax;
pub mod values;
pub mod verify;

use std::sync::Arc;

use serde_json::Value;

use crate::fhir::Model;
use crate::store::{Condition, IndexRows, Query, StoreError};
pub use params::{Param, ParamType, Registry};
pub use request::{Controls, Ignored, Include, Limits, SearchRequest, Total};
pub use run::{SearchResult, SearchSettings};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("`{name}` is not a search parameter of {resource_type}")]
    UnknownParameter { name: String, resource_type: String },
    #[error("`{name}` is not supported: {reason}")]
    Unsupported { name: String, reason: String },
    #[error("the value of `{name}` is not valid: {reason}")]
    BadValue { name: String, reason: String },
    #[error("`{name}` has the modifier `:{modifier}`, which this parameter does not take")]
    BadModifier { name: String, modifier: String },
    #[error("{0}")]
    TooCostly(String),
    #[error("the paging link is not valid here (it may be from another server or damaged)")]
    BadCursor,
    #[error("the paging link continues another search (another type, compartment or URL); follow it at the URL it came with")]
    CursorElsewhere,
    #[error("the paging link was issued to another client or user; run the search again")]
    CursorOtherCaller,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl SearchError {
    /// The same error, naming the parameter as the request wrote it (a chain or
    /// `_has` fails deep inside; the client needs the name it sent).
    pub fn named(self, full: &str) -> SearchError {
        match self {
            SearchError::UnknownParameter {
                resource_type,
                name,
            } => SearchError::UnknownParameter {
                name: if full.contains(&name) {
                    full.to_string()
                } else {
                    name
                },
                resource_type,
            },
            SearchError::Unsupported { reason, .. } => SearchError::Unsupported {
                name: full.to_string(),
                reason,
            },
            SearchError::BadValue { reason, .. } => SearchError::BadValue {
                name: full.to_string(),
                reason,
            },
            SearchError::BadModifier { modifier, .. } => SearchError::BadModifier {
                name: full.to_string(),
                modifier,
            },
            other => other,
        }
    }
}

/// The search engine of a server: parameters, extraction, planning, execution.
pub struct SearchEngine {
    registry: Arc<Registry>,
    terminology: Arc<crate::terminology::Terminology>,
    stubs: extract::TypeStubs,
    base_url: String,
    pub settings: SearchSettings,
    /// This node's audit indexer runs one round at a time (the background round
    /// and the catch-up of a search wait for each other instead of racing).
    audit_indexing: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for SearchEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchEngine").finish()
    }
}

impl SearchEngine {
    /// The engine over a model; `terminology` expands value sets and walks code
    /// system hierarchies for `:in`, `:not-in`, `:above` and `:below`.
    pub fn new(
        model: Arc<Model>,
        terminology: Arc<crate::terminology::Terminology>,
        base_url: String,
        settings: SearchSettings,
    ) -> SearchEngine {
        SearchEngine {
            stubs: extract::TypeStubs::new(&model),
            registry: Arc::new(Registry::new(model, terminology.clone())),
            terminology,
            base_url,
            settings,
            audit_indexing: parking_lot::Mutex::new(()),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn model(&self) -> &Arc<Model> {
        self.registry.model()
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn planner(&self) -> plan::Planner<'_> {
        plan::Planner {
            registry: &self.registry,
            terminology: &self.terminology,
            base_url: &self.base_url,
            now: crate::fhir::now_micros(),
        }
    }

    fn extractor(&self) -> extract::Extractor<'_> {
        extract::Extractor {
            model: self.registry.model(),
            stubs: &self.stubs,
            base_url: &self.base_url,
        }
    }

    /// The index rows of a resource being written (its type from `resourceType`);
    /// more than `search.max_index_rows`: [`SearchError::TooCostly`] (a valid 15 MiB
    /// Patient of 50,000 long names made tens of millions of rows and ran for 17
    /// minutes at 13 GB before this bound).
    pub fn index_rows(&self, resource: &Value) -> Result<IndexRows, SearchError> {
        let limit = self.settings.max_index_rows;
        self.rows_within(resource, limit).map_err(|reached| {
            SearchError::TooCostly(format!(
                "the resource would make more than {limit} search index rows (at least {reached}: its strings make an exact form, prefixes and a trigram per character for each parameter that reads them; setting search.max_index_rows)"
            ))
        })
    }

    /// The index rows of a stored resource (reindexing, the audit indexer): it was
    /// accepted when written, so no bound applies.
    pub fn stored_index_rows(&self, resource: &Value) -> IndexRows {
        self.rows_within(resource, usize::MAX).unwrap_or_default()
    }

    fn rows_within(&self, resource: &Value, limit: usize) -> Result<IndexRows, usize> {
        let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
            return Ok(IndexRows::default());
        };
        let params = self.registry.for_type(rt);
        self.extractor().rows(&params, resource, limit)
    }

    /// What a write of `resource_type` changes in the database besides its
    /// version: a SearchParameter created through the API is pending until
    /// reindexed, and every node reloads its registry.
    pub fn write_effects(&self, resource_type: &str) -> crate::store::Effects {
        crate::store::Effects {
            registers_search_param: resource_type == "SearchParameter",
            subscription: None,
        }
    }

    /// Parses a search on `types` (one for a type search; several or all for a
    /// system search).
    pub fn parse(
        &self,
        types: Vec<String>,
        pairs: &[(String, String)],
        strict: bool,
    ) -> Result<SearchRequest, SearchError> {
        self.planner()
            .request(types, pairs, strict, self.settings.limits())
    }

    /// The criteria of a conditional interaction (`If-None-Exist`, conditional
    /// update, delete and patch): a search on one type, strict, without result
    /// controls.
    pub fn condition(&self, resource_type: &str, criteria: &str) -> Result<Condition, SearchError> {
        let criteria = criteria.trim_start_matches('?');
        let pairs: Vec<(String, String)> = form_urlencoded::parse(criteria.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        if pairs.iter().all(|(_, v)| v.is_empty()) {
            return Err(SearchError::BadValue {
                name: "criteria".into(),
                reason: "the conditional criteria are empty".into(),
            });
        }
        let req = self.parse(vec![resource_type.to_string()], &pairs, true)?;
        if let Some((name, _)) = req
            .accepted
            .iter()
            .find(|(n, _)| n.starts_with('_') && is_control(n))
        {
            return Err(SearchError::BadValue {
                name: name.clone(),
                reason: "result parameters have no place in conditional criteria".into(),
            });
        }
        let mut normalised: Vec<String> = req
            .accepted
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        normalised.sort();
        let digest =
            openssl::sha::sha256(format!("{resource_type}?{}", normalised.join("&")).as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest[..8]);
        let verify: Option<Arc<crate::store::Verify>> = if req.checks.is_empty() {
            None
        } else {
            let checks = req.checks.clone();
            let model = self.registry.model().clone();
            let stubs = Arc::new(extract::TypeStubs::new(&model));
            Some(Arc::new(move |v: &crate::store::StoredVersion| {
                serde_json::from_slice::<Value>(&v.body)
                    .map(|r| verify::checks_hold(&model, &stubs, &checks, &r))
                    .unwrap_or(false)
            }))
        };
        Ok(Condition {
            query: Query {
                types: Some(vec![resource_type.to_string()]),
                filters: req.filters,
                ..Query::default()
            },
            lock_key: i64::from_be_bytes(key),
            verify,
        })
    }

    /// Runs a parsed search (blocking: call it on the store's blocking pool).
    pub fn execute(
        &self,
        store: &crate::store::Store,
        ctx: &crate::access::AccessContext,
        req: &SearchRequest,
        cursor: Option<&run::Cursor>,
    ) -> Result<SearchResult, SearchError> {
        run::Runner {
            engine: self,
            store,
            ctx,
            rows: self.rows(store, &req.types, cursor)?,
        }
        .execute(req, cursor)
    }

    /// The rows a search of `types` reads: resources, or, for AuditEvents (which
    /// live in the audit log and are searched on their own), the audit log up to
    /// the position a page link carries or, for a first page, up to where the
    /// audit indexer stands after catching up: every AuditEvent committed before
    /// the search is found, and the search's own, committed after, is not.
    fn rows(
        &self,
        store: &crate::store::Store,
        types: &[String],
        cursor: Option<&run::Cursor>,
    ) -> Result<crate::store::Rows, SearchError> {
        use crate::store::Rows;
        let audit = crate::audit::RESOURCE_TYPE;
        if !types.iter().any(|t| t == audit) {
            return Ok(Rows::Resources);
        }
        if types.len() > 1 {
            return Err(SearchError::Unsupported {
                name: "_type".into(),
                reason: "AuditEvents are searched on their own (AuditEvent?..., or _type=AuditEvent alone)".into(),
            });
        }
        if let Some(rows @ Rows::AuditLog { .. }) = cursor.map(|c| c.rows) {
            return Ok(rows);
        }
        let through = audit_index::catch_up(self, store)?;
        Ok(Rows::AuditLog { through })
    }
}

impl SearchEngine {
    /// The SQL of a search's first page and the database's plan for it (the plan
    /// tests; operators looking at a slow search).
    pub fn explain(
        &self,
        store: &crate::store::Store,
        ctx: &crate::access::AccessContext,
        req: &SearchRequest,
    ) -> Result<String, SearchError> {
        run::Runner {
            engine: self,
            store,
            ctx,
            rows: self.rows(store, &req.types, None)?,
        }
        .explain(req)
    }
}

fn is_control(name: &str) -> bool {
    matches!(
        name,
        "_count"
            | "_sort"
            | "_include"
            | "_include:iterate"
            | "_revinclude"
            | "_revinclude:iterate"
            | "_total"
            | "_summary"
            | "_elements"
            | "_contained"
    )
}

/// The CompartmentDefinitions of the loaded packages (R4 3.1.1.6: compartment
/// search `GET [base]/Patient/123/Observation`).
impl SearchEngine {
    /// The filter "in the compartment `compartment`/`id`" for resources of `types`
    /// (the parameters the CompartmentDefinition names, OR-ed). Types outside the
    /// compartment are an error.
    pub fn compartment_filter(
        &self,
        compartment: &str,
        id: &str,
        types: &[String],
    ) -> Result<crate::store::Filter, SearchError> {
        use crate::store::{Filter, RefTarget};
        self.compartment_filter_of(
            compartment,
            types,
            Filter::Ids(vec![id.to_string()]),
            RefTarget::Local {
                types: vec![compartment.to_string()],
                id: id.to_string(),
            },
        )
    }

    /// The filter "in the compartment of some `compartment` resource" (or of one
    /// of `members`, when given) for resources of `types`: a patient-level
    /// `$export` and a group's. The compartment resources must exist (and be
    /// visible to the caller); so must the members.
    pub fn compartment_members_filter(
        &self,
        compartment: &str,
        types: &[String],
        members: Option<&[String]>,
    ) -> Result<crate::store::Filter, SearchError> {
        use crate::store::{Filter, RefTarget};
        let chosen: Vec<Filter> = members
            .map(|m| vec![Filter::Ids(m.to_vec())])
            .unwrap_or_default();
        let own = match members {
            Some(m) => Filter::Ids(m.to_vec()),
            None => Filter::All(Vec::new()),
        };
        self.compartment_filter_of(
            compartment,
            types,
            own,
            RefTarget::Matching {
                types: vec![compartment.to_string()],
                filters: chosen,
            },
        )
    }

    /// The compartment's parameters of `types` OR-ed, each pointing at `target`;
    /// `own` selects the compartment's own resources (for its own type).
    fn compartment_filter_of(
        &self,
        compartment: &str,
        types: &[String],
        own: crate::store::Filter,
        target: crate::store::RefTarget,
    ) -> Result<crate::store::Filter, SearchError> {
        use crate::store::Filter;
        let url = format!(
            "http://hl7.org/fhir/CompartmentDefinition/{}",
            compartment_code(compartment)
        );
        let cd = self
            .model()
            .packages()
            .resolve(&url)
            .ok_or_else(|| SearchError::BadValue {
                name: compartment.to_string(),
                reason: format!("{compartment} is not a compartment this server knows"),
            })?;
        let mut alternatives = Vec::new();
        for t in types {
            let entry = cd
                .get("resource")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| r.get("code").and_then(Value::as_str) == Some(t.as_str()));
            let codes: Vec<&str> = entry
                .and_then(|e| e.get("param"))
                .and_then(Value::as_array)
                .map(|p| p.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            if t == compartment {
                alternatives.push(own.clone());
            }
            for code in codes {
                if let Some(p) = self.registry.param(t, code) {
                    alternatives.push(Filter::Reference {
                        pids: vec![p.pid],
                        targets: vec![target.clone()],
                    });
                }
            }
        }
        if alternatives.is_empty() {
            return Err(SearchError::BadValue {
                name: compartment.to_string(),
                reason: format!(
                    "{} not in the {compartment} compartment",
                    if types.len() == 1 {
                        format!("{} is", types[0])
                    } else {
                        "these resource types are".to_string()
                    }
                ),
            });
        }
        Ok(Filter::Any(alternatives))
    }

    /// The resource types of a compartment.
    pub fn compartment_types(&self, compartment: &str) -> Vec<String> {
        let url = format!(
            "http://hl7.org/fhir/CompartmentDefinition/{}",
            compartment_code(compartment)
        );
        let Some(cd) = self.model().packages().resolve(&url) else {
            return Vec::new();
        };
        cd.get("resource")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|r| {
                r.get("param")
                    .and_then(Value::as_array)
                    .is_some_and(|p| !p.is_empty())
                    || r.get("code").and_then(Value::as_str) == Some(compartment)
            })
            .filter_map(|r| r.get("code").and_then(Value::as_str).map(str::to_string))
            .collect()
    }
}

/// The id part of a CompartmentDefinition's URL (`RelatedPerson` -> `relatedPerson`).
fn compartment_code(compartment: &str) -> String {
    let mut c = compartment.chars();
    match c.next() {
        Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

impl SearchEngine {
    /// The rules a SearchParameter resource must follow before it is stored: a
    /// code, a known type, base resource types this server knows, and an
    /// expression that compiles (R4 SearchParameter; a parameter whose expression
    /// cannot run would silently index nothing).
    pub fn check_search_parameter(&self, sp: &Value) -> Vec<crate::fhir::Issue> {
        use crate::fhir::Issue;
        let mut issues = Vec::new();
        let code = sp.get("code").and_then(Value::as_str).unwrap_or("");
        if code.is_empty() || code.contains([':', '.', '=', '&', ',', '$']) || code.starts_with('_')
        {
            issues.push(
                Issue::error(
                    "invariant",
                    "a SearchParameter needs a code without `:`, `.`, `=`, `&`, `,`, `$` that does not start with `_`",
                )
                .at("SearchParameter.code"),
            );
        }
        let ptype = sp
            .get("type")
            .and_then(Value::as_str)
            .and_then(ParamType::parse);
        if ptype.is_none() {
            issues.push(
                Issue::error("value", "the type is not a search parameter type")
                    .at("SearchParameter.type"),
            );
        }
        for (i, b) in sp
            .get("base")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            let ok = b.as_str().is_some_and(|t| {
                self.model().is_resource_type(t) || t == "Resource" || t == "DomainResource"
            });
            if !ok {
                issues.push(
                    Issue::error("value", "not a resource type this server knows")
                        .at(format!("SearchParameter.base[{i}]")),
                );
            }
        }
        match sp.get("expression").and_then(Value::as_str) {
            Some(e) => {
                if let Err(err) = crate::fhirpath::compile(e) {
                    issues.push(
                        Issue::error("invalid", format!("the expression does not compile: {err}"))
                            .at("SearchParameter.expression"),
                    );
                }
            }
            None if ptype != Some(ParamType::Special) => issues.push(
                Issue::error(
                    "required",
                    "fhirgate indexes SearchParameters by their expression, so one is needed",
                )
                .at("SearchParameter.expression"),
            ),
            None => {}
        }
        if ptype == Some(ParamType::Composite) {
            let n = sp
                .get("component")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            if n < 2 {
                issues.push(
                    Issue::error("required", "a composite needs at least two components")
                        .at("SearchParameter.component"),
                );
            }
        }
        issues
    }
}

impl SearchEngine {
    /// The parameters of a type that searches answer (for the CapabilityStatement):
    /// every searchable one but the special parameters and the composites whose
    /// shape the index cannot hold.
    pub fn supported_params(&self, resource_type: &str) -> Vec<Arc<Param>> {
        self.registry
            .for_type(resource_type)
            .all()
            .filter(|p| match p.param_type {
                ParamType::Special => false,
                ParamType::Composite => p
                    .components
                    .split_last()
                    .is_some_and(|(_, init)| init.iter().all(|c| extract::is_keyed(c.param_type))),
                _ => true,
            })
            .filter(|p| p.is_builtin() || p.expression.is_some())
            .cloned()
            .collect()
    }

    /// Every reference parameter of every type: (source type, code, targets).
    pub fn reference_params(&self) -> Vec<(String, String, Vec<String>)> {
        let mut out = Vec::new();
        for t in self.model().resource_types() {
            for p in self.registry.for_type(t).all() {
                if p.param_type == ParamType::Reference && p.expression.is_some() {
                    out.push((t.clone(), p.code.clone(), p.targets.clone()));
                }
            }
        }
        out
    }
}
