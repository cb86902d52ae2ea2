//! A search request as the engine runs it: the criteria planned as filters, the
//! result controls (`_count`, `_sort`, `_include`, `_revinclude`, `_total`,
//! `_summary`, `_elements`), the parameters that were ignored (lenient handling)
//! and the accepted parameters in their order, for the `self` link.

use super::plan::{split_escaped, Check, Planner};
use super::SearchError;
use crate::store::Filter;

/// `_total` (R4 3.1.1.5.x): whether and how the total is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Total {
    None,
    Estimate,
    Accurate,
}

/// One `_include` or `_revinclude`: `Source:param[:Target]`, or `*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Include {
    pub source: String,
    /// A reference parameter code of `source`, or `*` for all of them.
    pub param: String,
    pub target: Option<String>,
    pub iterate: bool,
}

/// The result controls of a request.
#[derive(Debug, Clone)]
pub struct Controls {
    pub count: usize,
    /// (parameter code or `_id`/`_lastUpdated`, descending)
    pub sort: Vec<(String, bool)>,
    pub includes: Vec<Include>,
    pub revincludes: Vec<Include>,
    pub total: Total,
    /// `_summary=count`, or `_count=0`: only the total.
    pub count_only: bool,
    pub summary: Option<String>,
    pub elements: Option<String>,
}

/// A parameter left out of the search, and why (reported as an OperationOutcome
/// entry with `search.mode = outcome`).
#[derive(Debug, Clone)]
pub struct Ignored {
    pub name: String,
    pub reason: String,
}

#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub types: Vec<String>,
    pub filters: Vec<Filter>,
    pub checks: Vec<Check>,
    pub controls: Controls,
    pub ignored: Vec<Ignored>,
    /// The accepted parameters, in request order (criteria and controls).
    pub accepted: Vec<(String, String)>,
}

/// Parameters that never are criteria: formats and paging are the HTTP layer's.
pub fn is_transport_param(name: &str) -> bool {
    matches!(name, "_format" | "_pretty" | "_cursor")
}

/// Limits the parser applies.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub default_count: usize,
    pub max_count: usize,
    pub default_total: Total,
    /// `search.max_values_per_param`: values of one parameter (repeats and
    /// comma-separated alternatives together).
    pub max_values_per_param: usize,
    /// `search.max_params`: parameters of one request (repeats counted).
    pub max_params: usize,
    /// `search.max_chain_depth`: links of one chain.
    pub max_chain_depth: usize,
    /// `search.max_has_depth`: `_has` nested in one parameter.
    pub max_has_depth: usize,
}

impl Limits {
    /// Refuses a request that asks more than the limits allow, before anything is
    /// planned (issue 13: one short URL must not cost the database minutes). Each
    /// refusal names its limit and the setting that raises it.
    fn check(&self, pairs: &[(String, String)]) -> Result<(), SearchError> {
        let criteria: Vec<&(String, String)> = pairs
            .iter()
            .filter(|(n, _)| !is_transport_param(n))
            .collect();
        if criteria.len() > self.max_params {
            return Err(SearchError::TooCostly(format!(
                "the search has {} parameters; at most {} are allowed (setting search.max_params)",
                criteria.len(),
                self.max_params
            )));
        }
        let mut values: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for (name, value) in &criteria {
            let n = values.entry(name.as_str()).or_default();
            *n += split_escaped(value, ',').len();
            if *n > self.max_values_per_param {
                return Err(SearchError::TooCostly(format!(
                    "`{}` has more than {} values (its repeats and comma-separated values together; setting search.max_values_per_param)",
                    crate::fhir::types::truncate(name, 60),
                    self.max_values_per_param
                )));
            }
            let has = name.matches("_has:").count();
            if has > self.max_has_depth {
                return Err(SearchError::TooCostly(format!(
                    "`{}` nests _has {has} deep; at most {} is allowed (setting search.max_has_depth)",
                    crate::fhir::types::truncate(name, 60),
                    self.max_has_depth
                )));
            }
            let links = name.matches('.').count();
            if links > self.max_chain_depth {
                return Err(SearchError::TooCostly(format!(
                    "`{}` chains {links} links; at most {} are allowed (setting search.max_chain_depth)",
                    crate::fhir::types::truncate(name, 60),
                    self.max_chain_depth
                )));
            }
        }
        Ok(())
    }
}

impl Planner<'_> {
    /// Parses the parameters of a search on `types`. `strict`: unknown or
    /// unsupported parameters are errors instead of being ignored.
    pub fn request(
        &self,
        types: Vec<String>,
        pairs: &[(String, String)],
        strict: bool,
        limits: Limits,
    ) -> Result<SearchRequest, SearchError> {
        let mut req = SearchRequest {
            types,
            filters: Vec::new(),
            checks: Vec::new(),
            controls: Controls {
                count: limits.default_count,
                sort: Vec::new(),
                includes: Vec::new(),
                revincludes: Vec::new(),
                total: limits.default_total,
                count_only: false,
                summary: None,
                elements: None,
            },
            ignored: Vec::new(),
            accepted: Vec::new(),
        };
        limits.check(pairs)?;
        for (name, value) in pairs {
            // What no resource may hold, no search can match: refused before it
            // reaches SQL (PostgreSQL rejects NUL in text parameters).
            if let Some(c) = crate::fhir::types::forbidden_char(name)
                .or_else(|| crate::fhir::types::forbidden_char(value))
            {
                return Err(SearchError::BadValue {
                    name: name.chars().filter(|c| !c.is_control()).collect(),
                    reason: format!(
                        "it contains the control character {}, which FHIR text never holds",
                        crate::fhir::types::describe_char(c)
                    ),
                });
            }
            if is_transport_param(name) || name == "_type" {
                continue;
            }
            match self.control(&mut req, name, value, limits) {
                Ok(true) => {
                    req.accepted.push((name.clone(), value.clone()));
                    continue;
                }
                Ok(false) => {}
                Err(e) => return Err(e),
            }
            // R4 3.1.1: a parameter without a value is ignored.
            if value.is_empty() {
                continue;
            }
            match self
                .plan(&req.types, name, value, 0)
                .map_err(|e| e.named(name))
            {
                Ok(p) => {
                    req.filters.push(p.filter);
                    req.checks.extend(p.checks);
                    req.accepted.push((name.clone(), value.clone()));
                }
                Err(
                    e @ (SearchError::UnknownParameter { .. } | SearchError::Unsupported { .. }),
                ) if !strict => {
                    req.ignored.push(Ignored {
                        name: name.clone(),
                        reason: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        if req.controls.count == 0 {
            req.controls.count_only = true;
        }
        Ok(req)
    }

    /// Handles a result control; false when `name` is not one.
    fn control(
        &self,
        req: &mut SearchRequest,
        name: &str,
        value: &str,
        limits: Limits,
    ) -> Result<bool, SearchError> {
        let bad = |reason: String| SearchError::BadValue {
            name: name.to_string(),
            reason,
        };
        match name {
            "_count" => {
                let n: usize = value
                    .parse()
                    .map_err(|_| bad(format!("`{value}` is not a count")))?;
                req.controls.count = n.min(limits.max_count);
            }
            "_sort" => {
                for key in value.split(',').filter(|k| !k.is_empty()) {
                    let (code, desc) = match key.strip_prefix('-') {
                        Some(c) => (c, true),
                        None => (key, false),
                    };
                    if !matches!(code, "_id" | "_lastUpdated") {
                        let known = req
                            .types
                            .iter()
                            .any(|t| self.registry.for_type(t).get(code).is_some());
                        if !known {
                            return Err(bad(format!(
                                "`{code}` is not a search parameter of {} to sort by",
                                req.types.join(", ")
                            )));
                        }
                    }
                    req.controls.sort.push((code.to_string(), desc));
                }
            }
            "_include"
            | "_include:iterate"
            | "_include:recurse"
            | "_revinclude"
            | "_revinclude:iterate"
            | "_revinclude:recurse" => {
                let iterate = name.contains(':');
                let rev = name.starts_with("_revinclude");
                let inc = self.include(name, value, iterate, rev, &req.types)?;
                if rev {
                    req.controls.revincludes.push(inc);
                } else {
                    req.controls.includes.push(inc);
                }
            }
            "_total" => {
                req.controls.total = match value {
                    "none" => Total::None,
                    "estimate" => Total::Estimate,
                    "accurate" => Total::Accurate,
                    _ => return Err(bad("use none, estimate or accurate".into())),
                };
            }
            "_summary" => match value {
                "count" => req.controls.count_only = true,
                "true" | "text" | "data" | "false" => req.controls.summary = Some(value.into()),
                _ => return Err(bad("use true, text, data, count or false".into())),
            },
            "_elements" => req.controls.elements = Some(value.to_string()),
            "_contained" => {
                if value != "false" {
                    return Err(SearchError::Unsupported {
                        name: name.to_string(),
                        reason:
                            "searching contained resources (_contained=true|both) is not supported"
                                .into(),
                    });
                }
            }
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn include(
        &self,
        name: &str,
        value: &str,
        iterate: bool,
        rev: bool,
        types: &[String],
    ) -> Result<Include, SearchError> {
        let bad = |reason: String| SearchError::BadValue {
            name: name.to_string(),
            reason,
        };
        let model = self.registry.model();
        if value == "*" {
            return Ok(Include {
                source: "*".into(),
                param: "*".into(),
                target: None,
                iterate,
            });
        }
        let parts = split_escaped(value, ':');
        let (source, param, target) = match parts.as_slice() {
            [s, p] => (s.clone(), p.clone(), None),
            [s, p, t] => (s.clone(), p.clone(), Some(t.clone())),
            _ => return Err(bad("use Source:parameter or Source:parameter:Target".into())),
        };
        if !model.is_resource_type(&source) {
            return Err(bad(format!("`{source}` is not a resource type")));
        }
        if let Some(t) = &target {
            if !model.is_resource_type(t) {
                return Err(bad(format!("`{t}` is not a resource type")));
            }
        }
        if !rev && !iterate && !types.contains(&source) {
            return Err(bad(format!(
                "_include names {source}, but the search is for {}",
                types.join(", ")
            )));
        }
        if param != "*" {
            match self.registry.param(&source, &param) {
                Some(p) if p.param_type == super::params::ParamType::Reference => {}
                Some(_) => {
                    return Err(bad(format!(
                        "{source}:{param} is not a reference parameter"
                    )))
                }
                None => return Err(bad(format!("{source} has no search parameter {param}"))),
            }
        }
        Ok(Include {
            source,
            param,
            target,
            iterate,
        })
    }
}
