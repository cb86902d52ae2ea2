//! From search parameters to store filters: each `name[:modifier]=value[,value]`
//! of a request is checked against the parameters of the searched types and
//! planned as a [`Filter`] (R4 search 3.1.1: prefixes, modifiers, chaining,
//! reverse chaining). Values are normalised exactly as extraction normalises the
//! indexed values ([`super::values`]); criteria the blind index can only
//! approximate carry a [`Check`] that is verified after decryption.

use std::sync::Arc;

use super::extract::is_keyed;
use super::params::{Param, ParamType, Registry};
use super::syntax::{
    keyed_query_form, number_bounds, quantity_value, range_bounds, split_prefix, to_f64_bound,
    token_query_form,
};
pub use super::syntax::{split_escaped, Modifier, Prefix};
use super::values::{self, tag, RefParts, PREFIX_CAP};
use super::SearchError;
use crate::store::{Filter, IndexTable, Ranges, RefTarget, UriMatch};
use crate::terminology::Terminology;

/// Chains and `_has` nest at most this deep.
const MAX_DEPTH: usize = 4;

/// Most codes a `:in`, `:not-in`, `:above` or `:below` search looks up.
const MAX_EXPANSION: usize = 10_000;

/// A string test verified on the decrypted resource.
#[derive(Debug, Clone, PartialEq)]
pub enum StringTest {
    /// The folded value starts with this.
    Prefix(String),
    /// The folded value contains this.
    Contains(String),
    /// The folded display or text starts with this.
    TextPrefix(String),
}

/// A criterion verified after decryption: some value of `param` passes one of
/// the tests.
#[derive(Debug, Clone)]
pub struct Check {
    pub param: Arc<Param>,
    pub tests: Vec<StringTest>,
}

/// A planned criterion.
#[derive(Debug, Clone)]
pub struct Planned {
    pub filter: Filter,
    pub checks: Vec<Check>,
}

/// Plans the criteria of one request against its resource types.
pub struct Planner<'a> {
    pub registry: &'a Registry,
    pub terminology: &'a Terminology,
    pub base_url: &'a str,
    /// "now", for `ap` on dates (microseconds since the epoch).
    pub now: i64,
}

/// A parameter of the searched types, with the types that define it.
struct Resolved {
    params: Vec<Arc<Param>>,
}

impl Resolved {
    fn pids(&self) -> Vec<i64> {
        self.params.iter().map(|p| p.pid).collect()
    }

    /// The pids of the lean parameters (no trigrams, no `:text` forms) and of
    /// the others.
    fn pids_by_leanness(&self) -> (Vec<i64>, Vec<i64>) {
        let (lean, full): (Vec<&Arc<Param>>, Vec<&Arc<Param>>) =
            self.params.iter().partition(|p| p.lean);
        (
            lean.iter().map(|p| p.pid).collect(),
            full.iter().map(|p| p.pid).collect(),
        )
    }

    fn param_type(&self) -> ParamType {
        self.params[0].param_type
    }

    fn first(&self) -> &Arc<Param> {
        &self.params[0]
    }
}

impl Planner<'_> {
    fn resolve(&self, types: &[String], code: &str) -> Result<Resolved, SearchError> {
        let mut params = Vec::new();
        let mut pending = None;
        for t in types {
            let tp = self.registry.for_type(t);
            if let Some(p) = tp.get(code) {
                params.push(p.clone());
            } else if let Some(p) = tp.pending(code) {
                pending = Some(p.url.clone());
            }
        }
        if params.is_empty() {
            if let Some(url) = pending {
                return Err(SearchError::Unsupported {
                    name: code.to_string(),
                    reason: format!(
                        "the SearchParameter {url} is waiting for a $reindex of {} to finish",
                        types.join(", ")
                    ),
                });
            }
            return Err(SearchError::UnknownParameter {
                name: code.to_string(),
                resource_type: types.join(", "),
            });
        }
        let t0 = params[0].param_type;
        if params.iter().any(|p| p.param_type != t0) {
            return Err(SearchError::Unsupported {
                name: code.to_string(),
                reason: "the parameter has different types in the searched resource types".into(),
            });
        }
        Ok(Resolved { params })
    }

    /// Plans `name=value` (name with modifier, chain or `_has`) on `types`.
    pub fn plan(
        &self,
        types: &[String],
        name: &str,
        value: &str,
        depth: usize,
    ) -> Result<Planned, SearchError> {
        if depth > MAX_DEPTH {
            return Err(SearchError::BadValue {
                name: name.to_string(),
                reason: format!("chains and _has nest at most {MAX_DEPTH} levels"),
            });
        }
        if let Some(rest) = name.strip_prefix("_has:") {
            return self.has(types, name, rest, value, depth);
        }
        if let Some((head, chained)) = name.split_once('.') {
            return self.chain(types, name, head, chained, value, depth);
        }
        let (code, modifier) = match name.split_once(':') {
            Some((c, m)) => (c, Some(Modifier::parse(m))),
            None => (name, None),
        };
        let modifier = modifier.as_ref();
        match code {
            "_id" => return self.ids(name, modifier, value),
            "_lastUpdated" => return self.last_updated(name, modifier, value),
            "_list" => return self.list(name, modifier, value),
            "_text" | "_content" | "_query" | "_filter" | "_contained" | "_containedType" => {
                return Err(SearchError::Unsupported {
                    name: code.to_string(),
                    reason: format!("{code} is not supported by this server"),
                })
            }
            _ => {}
        }
        let r = self.resolve(types, code)?;
        if modifier == Some(&Modifier::Missing) {
            return self.missing(name, &r, value);
        }
        let alternatives = split_escaped(value, ',');
        match r.param_type() {
            ParamType::String => self.string(name, &r, modifier, &alternatives),
            ParamType::Token => self.token(name, &r, modifier, &alternatives),
            ParamType::Reference => self.reference(name, &r, modifier, &alternatives),
            ParamType::Date => {
                no_modifier(name, modifier)?;
                let mut ranges = Vec::new();
                for v in &alternatives {
                    ranges.extend(self.date_value(name, v)?);
                }
                Ok(planned(Filter::Date {
                    pids: r.pids(),
                    ranges,
                }))
            }
            ParamType::Number => {
                no_modifier(name, modifier)?;
                let mut ranges = Vec::new();
                for v in &alternatives {
                    let (p, n) = split_prefix(v);
                    let (value, half) =
                        values::decimal(n).ok_or_else(|| bad(name, v, "a number"))?;
                    ranges.extend(number_bounds(p, value, half));
                }
                Ok(planned(Filter::Number {
                    pids: r.pids(),
                    keys: None,
                    ranges,
                }))
            }
            ParamType::Quantity => {
                no_modifier(name, modifier)?;
                let mut alts = Vec::new();
                for v in &alternatives {
                    let (key, ranges) = quantity_value(name, v)?;
                    alts.push(Filter::Number {
                        pids: r.pids(),
                        keys: Some(vec![key]),
                        ranges,
                    });
                }
                Ok(planned(any(alts)))
            }
            ParamType::Uri => self.uri(name, &r, modifier, &alternatives),
            ParamType::Composite => self.composite(name, &r, modifier, &alternatives),
            ParamType::Special => Err(SearchError::Unsupported {
                name: code.to_string(),
                reason: format!(
                    "the special parameter {code} ({}) is not supported",
                    r.first().url
                ),
            }),
        }
    }

    fn ids(
        &self,
        name: &str,
        modifier: Option<&Modifier>,
        value: &str,
    ) -> Result<Planned, SearchError> {
        let ids: Vec<String> = split_escaped(value, ',')
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect();
        for id in &ids {
            crate::fhir::Id::parse(id).map_err(|m| SearchError::BadValue {
                name: name.to_string(),
                reason: m,
            })?;
        }
        match modifier {
            None => Ok(planned(Filter::Ids(ids))),
            Some(Modifier::Not) => Ok(planned(Filter::Not(Box::new(Filter::Ids(ids))))),
            Some(Modifier::Missing) => Ok(planned(if value == "true" {
                Filter::Nothing
            } else {
                Filter::All(Vec::new())
            })),
            Some(m) => Err(bad_modifier(name, m)),
        }
    }

    fn last_updated(
        &self,
        name: &str,
        modifier: Option<&Modifier>,
        value: &str,
    ) -> Result<Planned, SearchError> {
        no_modifier(name, modifier)?;
        let mut ranges = Vec::new();
        for v in split_escaped(value, ',') {
            // The stored time is a point (millisecond precision).
            let (p, d) = split_prefix(&v);
            let (slo, shi) = values::date_range(d).ok_or_else(|| bad(name, &v, "a date"))?;
            let ap = self.approx(slo, shi);
            ranges.extend(range_bounds(p, slo, shi, ap));
        }
        Ok(planned(Filter::LastUpdated(ranges)))
    }

    fn list(
        &self,
        name: &str,
        modifier: Option<&Modifier>,
        value: &str,
    ) -> Result<Planned, SearchError> {
        no_modifier(name, modifier)?;
        let ids: Vec<String> = split_escaped(value, ',');
        for id in &ids {
            if id.starts_with('$') {
                return Err(SearchError::Unsupported {
                    name: name.to_string(),
                    reason: format!("the functional list {id} is not supported"),
                });
            }
            crate::fhir::Id::parse(id).map_err(|m| SearchError::BadValue {
                name: name.to_string(),
                reason: m,
            })?;
        }
        Ok(planned(Filter::TargetOf {
            pids: vec![super::params::pid("List", "item")],
            source_type: "List".into(),
            source_ids: ids,
        }))
    }

    fn missing(&self, name: &str, r: &Resolved, value: &str) -> Result<Planned, SearchError> {
        let table = match r.param_type() {
            ParamType::String | ParamType::Token => IndexTable::Blind,
            ParamType::Reference => IndexTable::Reference,
            ParamType::Date => IndexTable::Date,
            ParamType::Number | ParamType::Quantity | ParamType::Composite => IndexTable::Number,
            ParamType::Uri => IndexTable::Uri,
            ParamType::Special => {
                return Err(SearchError::Unsupported {
                    name: name.to_string(),
                    reason: "special parameters have no :missing".into(),
                })
            }
        };
        let present = Filter::Present {
            table,
            pids: r.pids(),
        };
        // A reference parameter may hold only an identifier (a blind row).
        let present = if r.param_type() == ParamType::Reference {
            Filter::Any(vec![
                present,
                Filter::Present {
                    table: IndexTable::Blind,
                    pids: r.pids(),
                },
            ])
        } else {
            present
        };
        match value {
            "true" => Ok(planned(Filter::Not(Box::new(present)))),
            "false" => Ok(planned(present)),
            _ => Err(bad(name, value, "true or false")),
        }
    }

    fn string(
        &self,
        name: &str,
        r: &Resolved,
        modifier: Option<&Modifier>,
        alternatives: &[String],
    ) -> Result<Planned, SearchError> {
        let pids = r.pids();
        let mut blind = Vec::new();
        let (mut present_lean, mut present_full, mut by_grams) = (None, None, Vec::new());
        let mut tests = Vec::new();
        for v in alternatives {
            match modifier {
                None if r.first().code == "phonetic" => {
                    if let Some(k) = values::soundex(v) {
                        blind.push(format!("{}{k}", tag::PHONETIC));
                    }
                }
                None => {
                    let f = values::fold(v);
                    if f.is_empty() {
                        return Err(bad(name, v, "a non-empty string"));
                    }
                    let capped = values::first_chars(&f, PREFIX_CAP);
                    blind.push(format!("{}{capped}", tag::PREFIX));
                    tests.push(StringTest::Prefix(f.clone()));
                }
                Some(Modifier::Exact) => blind.push(format!("{}{v}", tag::EXACT)),
                Some(Modifier::Contains) => {
                    let f = values::fold(v);
                    if f.is_empty() {
                        return Err(bad(name, v, "a non-empty string"));
                    }
                    let grams = values::trigrams(&f);
                    let (lean, full) = r.pids_by_leanness();
                    // No trigrams (a lean parameter, a value under three characters):
                    // every resource with a value is a candidate, the check decides;
                    // once, whatever the number of such values (30 copies of one
                    // condition took PostgreSQL 0.7 s).
                    if !lean.is_empty() {
                        present_lean.get_or_insert(lean);
                    }
                    if !full.is_empty() {
                        if grams.is_empty() {
                            present_full.get_or_insert(full);
                        } else {
                            by_grams.push(Filter::All(
                                grams
                                    .into_iter()
                                    .map(|g| Filter::Blind {
                                        pids: full.clone(),
                                        values: vec![g],
                                    })
                                    .collect(),
                            ));
                        }
                    }
                    tests.push(StringTest::Contains(f));
                }
                Some(m) => return Err(bad_modifier(name, m)),
            }
        }
        let mut alts: Vec<Filter> = present_lean
            .into_iter()
            .map(|pids| Filter::Present {
                table: IndexTable::Blind,
                pids,
            })
            .collect();
        match present_full {
            // Every resource with a value of the full parameters: the trigram
            // conditions on them admit nothing more.
            Some(pids) => alts.push(Filter::Present {
                table: IndexTable::Blind,
                pids,
            }),
            None => alts.extend(by_grams),
        }
        if !blind.is_empty() {
            alts.push(Filter::Blind {
                pids,
                values: blind,
            });
        }
        // Only prefixes longer than the indexed ones and :contains need checking.
        let needs_check = tests.iter().any(|t| match t {
            StringTest::Prefix(p) => p.chars().count() > PREFIX_CAP,
            _ => true,
        });
        let checks = if needs_check {
            r.params
                .iter()
                .map(|p| Check {
                    param: p.clone(),
                    tests: tests.clone(),
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Planned {
            filter: any(alts),
            checks,
        })
    }

    fn token(
        &self,
        name: &str,
        r: &Resolved,
        modifier: Option<&Modifier>,
        alternatives: &[String],
    ) -> Result<Planned, SearchError> {
        let pids = r.pids();
        let mut forms = Vec::new();
        let mut tests = Vec::new();
        for v in alternatives {
            match modifier {
                None | Some(Modifier::Not) => forms.push(token_query_form(v)),
                Some(Modifier::Text) => {
                    let f = values::fold(v);
                    if f.is_empty() {
                        return Err(bad(name, v, "a non-empty text"));
                    }
                    forms.push(format!(
                        "{}{}",
                        tag::TEXT,
                        values::first_chars(&f, PREFIX_CAP)
                    ));
                    // Lean parameters have no `:text` forms: the check decides.
                    if f.chars().count() > PREFIX_CAP || r.params.iter().any(|p| p.lean) {
                        tests.push(StringTest::TextPrefix(f));
                    }
                }
                Some(Modifier::OfType) => {
                    let parts = split_escaped(v, '|');
                    if parts.len() != 3 || parts[2].is_empty() {
                        return Err(bad(name, v, "type-system|type-code|value"));
                    }
                    forms.push(format!(
                        "{}{}|{}|{}",
                        tag::OF_TYPE,
                        parts[0],
                        parts[1],
                        parts[2]
                    ));
                }
                Some(Modifier::In | Modifier::NotIn) => {
                    forms.extend(self.value_set_forms(name, v)?)
                }
                Some(m @ (Modifier::Above | Modifier::Below)) => {
                    forms.extend(self.hierarchy_forms(name, v, *m == Modifier::Above)?);
                }
                Some(m) => return Err(bad_modifier(name, m)),
            }
        }
        let filter = match modifier {
            Some(Modifier::Text) => {
                let (lean, full) = r.pids_by_leanness();
                let mut alts = Vec::new();
                if !lean.is_empty() {
                    alts.push(Filter::Present {
                        table: IndexTable::Blind,
                        pids: lean,
                    });
                }
                if !full.is_empty() {
                    alts.push(Filter::Blind {
                        pids: full,
                        values: forms,
                    });
                }
                any(alts)
            }
            _ => Filter::Blind {
                pids,
                values: forms,
            },
        };
        let filter = if matches!(modifier, Some(Modifier::Not | Modifier::NotIn)) {
            Filter::Not(Box::new(filter))
        } else {
            filter
        };
        let checks = if tests.is_empty() {
            Vec::new()
        } else {
            r.params
                .iter()
                .map(|p| Check {
                    param: p.clone(),
                    tests: tests.clone(),
                })
                .collect()
        };
        Ok(Planned { filter, checks })
    }

    /// `:in`/`:not-in`: the `system|code` forms of every code of the value set, when
    /// the loaded packages enumerate it completely (else the modifier is unsupported
    /// for that value set: answering from part of it would be wrong).
    fn value_set_forms(&self, name: &str, url: &str) -> Result<Vec<String>, SearchError> {
        let unsupported = |reason: String| SearchError::Unsupported {
            name: name.to_string(),
            reason,
        };
        let exp = self
            .terminology
            .expand(url)
            .map_err(|e| unsupported(e.to_string()))?;
        if !exp.is_complete() {
            return Err(unsupported(format!(
                "the value set {url} is not enumerable from the loaded packages"
            )));
        }
        if exp.len() > MAX_EXPANSION {
            return Err(SearchError::TooCostly(format!(
                "the value set {url} has {} codes; at most {MAX_EXPANSION} are searched",
                exp.len()
            )));
        }
        Ok(exp
            .iter()
            .map(|(system, code)| format!("{}{system}|{code}", tag::SYSTEM_CODE))
            .collect())
    }

    /// `:below`/`:above` on `system|code`: the code and its descendants (or
    /// ancestors) in a code system the loaded packages hold completely.
    fn hierarchy_forms(
        &self,
        name: &str,
        v: &str,
        above: bool,
    ) -> Result<Vec<String>, SearchError> {
        let parts = split_escaped(v, '|');
        let (system, code) = match parts.as_slice() {
            [s, c] if !s.is_empty() && !c.is_empty() => (s.as_str(), c.as_str()),
            _ => {
                return Err(bad(
                    name,
                    v,
                    "system|code (a hierarchy needs its code system)",
                ))
            }
        };
        let unsupported = |e: crate::terminology::TerminologyError| SearchError::Unsupported {
            name: name.to_string(),
            reason: e.to_string(),
        };
        let codes: Vec<String> = if above {
            let cs = self.terminology.code_system(system).map_err(unsupported)?;
            if cs.concept(code).is_none() {
                return Err(unsupported(
                    crate::terminology::TerminologyError::UnknownCode {
                        system: system.to_string(),
                        code: code.to_string(),
                    },
                ));
            }
            cs.codes()
                .filter(|c| *c == code || cs.is_a(code, c) == Some(true))
                .map(str::to_string)
                .collect()
        } else {
            let mut d = self
                .terminology
                .descendants(system, code)
                .map_err(unsupported)?;
            d.push(code.to_string());
            d
        };
        if codes.len() > MAX_EXPANSION {
            return Err(SearchError::TooCostly(format!(
                "{v} has {} codes below it; at most {MAX_EXPANSION} are searched",
                codes.len()
            )));
        }
        Ok(codes
            .into_iter()
            .map(|c| format!("{}{system}|{c}", tag::SYSTEM_CODE))
            .collect())
    }

    fn reference(
        &self,
        name: &str,
        r: &Resolved,
        modifier: Option<&Modifier>,
        alternatives: &[String],
    ) -> Result<Planned, SearchError> {
        let pids = r.pids();
        let model = self.registry.model();
        if modifier == Some(&Modifier::Identifier) {
            let forms = alternatives
                .iter()
                .map(|v| format!("{}{}", tag::REF_IDENTIFIER, token_query_form(v)))
                .collect();
            return Ok(planned(Filter::Blind {
                pids,
                values: forms,
            }));
        }
        let type_modifier = match modifier {
            None => None,
            Some(Modifier::Type(t)) if model.is_resource_type(t) => Some(t.clone()),
            Some(Modifier::Above | Modifier::Below) => {
                return Err(SearchError::Unsupported {
                    name: name.to_string(),
                    reason: "the :above and :below modifiers on references are not supported"
                        .into(),
                })
            }
            Some(m) => return Err(bad_modifier(name, m)),
        };
        let targets_of = |r: &Resolved| -> Vec<String> {
            let mut t: Vec<String> = r.params.iter().flat_map(|p| p.targets.clone()).collect();
            t.sort();
            t.dedup();
            t
        };
        let mut targets = Vec::new();
        for v in alternatives {
            if v.is_empty() {
                return Err(bad(name, v, "a reference"));
            }
            let is_type = |t: &str| model.is_resource_type(t);
            match values::parse_reference(v, self.base_url, is_type) {
                Some(RefParts::Local { resource_type, id }) => {
                    // `subject:Patient=Group/1` names a target of another type:
                    // nothing can match it.
                    if type_modifier.as_ref().is_some_and(|t| *t != resource_type) {
                        continue;
                    }
                    targets.push(RefTarget::Local {
                        types: vec![resource_type],
                        id,
                    });
                }
                Some(RefParts::Url(url)) => {
                    // A bare id (no '/', no ':') names a local resource of the
                    // parameter's target types (or the type modifier).
                    if !url.contains('/') && !url.contains(':') {
                        crate::fhir::Id::parse(&url).map_err(|m| SearchError::BadValue {
                            name: name.to_string(),
                            reason: m,
                        })?;
                        let types = match &type_modifier {
                            Some(t) => vec![t.clone()],
                            None => targets_of(r),
                        };
                        targets.push(RefTarget::Local { types, id: url });
                    } else {
                        targets.push(RefTarget::Url(url));
                    }
                }
                None => return Err(bad(name, v, "a reference (Type/id, id or URL)")),
            }
        }
        Ok(planned(Filter::Reference { pids, targets }))
    }

    fn uri(
        &self,
        name: &str,
        r: &Resolved,
        modifier: Option<&Modifier>,
        alternatives: &[String],
    ) -> Result<Planned, SearchError> {
        let mut matches = Vec::new();
        for v in alternatives {
            if v.is_empty() {
                return Err(bad(name, v, "a URI"));
            }
            matches.push(match modifier {
                None => UriMatch::Exact(v.clone()),
                Some(Modifier::Below) => UriMatch::Below(v.clone()),
                Some(Modifier::Above) => {
                    // The value and every ancestor path of it.
                    let mut ancestors = vec![v.clone()];
                    let mut cur = v.as_str();
                    while let Some((parent, _)) = cur.rsplit_once('/') {
                        if parent.ends_with('/') || parent.ends_with(':') || parent.is_empty() {
                            break;
                        }
                        ancestors.push(parent.to_string());
                        cur = parent;
                    }
                    UriMatch::Any(ancestors)
                }
                Some(m) => return Err(bad_modifier(name, m)),
            });
        }
        Ok(planned(Filter::Uri {
            pids: r.pids(),
            matches,
        }))
    }

    fn composite(
        &self,
        name: &str,
        r: &Resolved,
        modifier: Option<&Modifier>,
        alternatives: &[String],
    ) -> Result<Planned, SearchError> {
        no_modifier(name, modifier)?;
        let p = r.first();
        let Some((last, init)) = p.components.split_last() else {
            return Err(SearchError::Unsupported {
                name: name.to_string(),
                reason: "the composite has no components".into(),
            });
        };
        if init.iter().any(|c| !is_keyed(c.param_type)) {
            return Err(SearchError::Unsupported {
                name: name.to_string(),
                reason: "composites with a number, date or quantity before their last component are not supported".into(),
            });
        }
        let mut alts = Vec::new();
        for v in alternatives {
            let parts = split_escaped(v, '$');
            if parts.len() != p.components.len() {
                return Err(bad(
                    name,
                    v,
                    &format!("{} values separated by $", p.components.len()),
                ));
            }
            let mut key = String::new();
            for (i, c) in init.iter().enumerate() {
                if i > 0 {
                    key.push('$');
                }
                key.push_str(&keyed_query_form(c.param_type, &parts[i]));
            }
            let lastv = &parts[parts.len() - 1];
            let (unit, ranges) = match last.param_type {
                ParamType::Quantity => quantity_value(name, lastv)?,
                ParamType::Number => {
                    let (pf, n) = split_prefix(lastv);
                    let (value, half) =
                        values::decimal(n).ok_or_else(|| bad(name, lastv, "a number"))?;
                    (String::new(), number_bounds(pf, value, half))
                }
                ParamType::Date => {
                    let ranges: Ranges<f64> = self
                        .date_value(name, lastv)?
                        .into_iter()
                        .map(|conj| conj.into_iter().map(to_f64_bound).collect())
                        .collect();
                    (String::new(), ranges)
                }
                other => (keyed_query_form(other, lastv), Vec::new()),
            };
            alts.push(Filter::Number {
                pids: r.pids(),
                keys: Some(vec![format!("{}{key}${unit}", tag::COMPOSITE)]),
                ranges,
            });
        }
        Ok(planned(any(alts)))
    }

    fn date_value(&self, name: &str, v: &str) -> Result<Ranges<i64>, SearchError> {
        let (p, d) = split_prefix(v);
        let (slo, shi) = values::date_range(d).ok_or_else(|| bad(name, v, "a date"))?;
        Ok(range_bounds(p, slo, shi, self.approx(slo, shi)))
    }

    /// `ap` on dates: widened by 10% of the distance to now (R4 recommends 10%),
    /// and at least by the value's precision.
    fn approx(&self, lo: i64, hi: i64) -> (i64, i64) {
        let gap = (self.now - lo).unsigned_abs() / 10;
        let gap = i64::try_from(gap).unwrap_or(i64::MAX / 4).max(hi - lo);
        (lo.saturating_sub(gap), hi.saturating_add(gap))
    }

    fn chain(
        &self,
        types: &[String],
        name: &str,
        head: &str,
        chained: &str,
        value: &str,
        depth: usize,
    ) -> Result<Planned, SearchError> {
        let (code, type_modifier) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let r = self.resolve(types, code)?;
        if r.param_type() != ParamType::Reference {
            return Err(SearchError::BadValue {
                name: name.to_string(),
                reason: format!("{code} is not a reference parameter, so it cannot be chained"),
            });
        }
        let model = self.registry.model();
        let mut targets: Vec<String> = match type_modifier {
            Some(t) if model.is_resource_type(t) => vec![t.to_string()],
            Some(t) => return Err(bad_modifier(name, &Modifier::parse(t))),
            None => {
                let mut t: Vec<String> = r.params.iter().flat_map(|p| p.targets.clone()).collect();
                t.sort();
                t.dedup();
                t
            }
        };
        // Only the targets that define the chained parameter take part.
        let chained_code = chained
            .split(['.', ':'])
            .next()
            .unwrap_or(chained)
            .to_string();
        if !chained.starts_with("_has") && !matches!(chained_code.as_str(), "_id" | "_lastUpdated")
        {
            targets.retain(|t| self.registry.for_type(t).get(&chained_code).is_some());
        }
        if targets.is_empty() {
            return Err(SearchError::UnknownParameter {
                name: name.to_string(),
                resource_type: format!("the targets of {code}"),
            });
        }
        let inner = self.plan(&targets, chained, value, depth + 1)?;
        Ok(Planned {
            filter: Filter::Reference {
                pids: r.pids(),
                targets: vec![RefTarget::Matching {
                    types: targets,
                    filters: vec![inner.filter],
                }],
            },
            // Checks of the chained resource are not verified (see docs/decisions.md).
            checks: Vec::new(),
        })
    }

    fn has(
        &self,
        types: &[String],
        name: &str,
        rest: &str,
        value: &str,
        depth: usize,
    ) -> Result<Planned, SearchError> {
        // _has:Type:param:criterion (the criterion may itself be a _has).
        let mut it = rest.splitn(3, ':');
        let (Some(source), Some(code), Some(criterion)) = (it.next(), it.next(), it.next()) else {
            return Err(SearchError::BadValue {
                name: name.to_string(),
                reason: "_has needs the form _has:Type:parameter:criterion".into(),
            });
        };
        let model = self.registry.model();
        if !model.is_resource_type(source) {
            return Err(SearchError::BadValue {
                name: name.to_string(),
                reason: format!("`{source}` is not a resource type"),
            });
        }
        let sources = vec![source.to_string()];
        let r = self.resolve(&sources, code)?;
        if r.param_type() != ParamType::Reference {
            return Err(SearchError::BadValue {
                name: name.to_string(),
                reason: format!("{source}.{code} is not a reference parameter"),
            });
        }
        let points_here = r
            .params
            .iter()
            .any(|p| p.targets.is_empty() || p.targets.iter().any(|t| types.contains(t)));
        if !points_here {
            return Err(SearchError::BadValue {
                name: name.to_string(),
                reason: format!("{source}.{code} does not refer to {}", types.join(" or ")),
            });
        }
        let inner = self.plan(&sources, criterion, value, depth + 1)?;
        Ok(Planned {
            filter: Filter::ReferencedBy {
                pids: r.pids(),
                source_types: sources,
                filters: vec![inner.filter],
            },
            checks: Vec::new(),
        })
    }
}

fn planned(filter: Filter) -> Planned {
    Planned {
        filter,
        checks: Vec::new(),
    }
}

fn any(mut alts: Vec<Filter>) -> Filter {
    if alts.len() == 1 {
        alts.remove(0)
    } else {
        Filter::Any(alts)
    }
}

pub(crate) fn bad(name: &str, value: &str, expected: &str) -> SearchError {
    SearchError::BadValue {
        name: name.to_string(),
        reason: format!(
            "`{}` is not {expected}",
            crate::fhir::types::truncate(value, 80)
        ),
    }
}

fn bad_modifier(name: &str, modifier: &Modifier) -> SearchError {
    SearchError::BadModifier {
        name: name.to_string(),
        modifier: modifier.as_str().to_string(),
    }
}

fn no_modifier(name: &str, modifier: Option<&Modifier>) -> Result<(), SearchError> {
    match modifier {
        None => Ok(()),
        Some(m) => Err(bad_modifier(name, m)),
    }
}
