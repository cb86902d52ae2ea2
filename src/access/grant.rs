//! Grants: what a caller may do, compiled from permissions into per-type rules
//! whose conditions are store filters, so the store can narrow its SQL to them.

use std::collections::HashMap;
use std::sync::Arc;

use super::Denied;
use crate::search::SearchEngine;
use crate::store::{Filter, RefTarget};

/// The kinds of interaction a permission allows: SMART v2's `c r u d s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `c`: create (also an update that creates).
    Create,
    /// `r`: read, vread, instance history, `$validate` of a stored resource.
    Read,
    /// `u`: update, patch.
    Update,
    /// `d`: delete.
    Delete,
    /// `s`: search (type, system, compartment), type and system history.
    Search,
}

impl Action {
    fn bit(self) -> u8 {
        match self {
            Action::Create => 1,
            Action::Read => 2,
            Action::Update => 4,
            Action::Delete => 8,
            Action::Search => 16,
        }
    }

    /// The SMART v2 letter.
    pub fn letter(self) -> char {
        match self {
            Action::Create => 'c',
            Action::Read => 'r',
            Action::Update => 'u',
            Action::Delete => 'd',
            Action::Search => 's',
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Action::Create => "creating",
            Action::Read => "reading",
            Action::Update => "updating",
            Action::Delete => "deleting",
            Action::Search => "searching",
        }
    }
}

/// A set of [`Action`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(31);

    /// From SMART v2 letters in their order (`cruds`, `rs`, `cud`); None when the
    /// text is not such a sequence.
    pub fn parse_v2(letters: &str) -> Option<Actions> {
        let order = ['c', 'r', 'u', 'd', 's'];
        let mut last = None;
        let mut out = Actions::NONE;
        for ch in letters.chars() {
            let at = order.iter().position(|o| *o == ch)?;
            if last.is_some_and(|l| at <= l) {
                return None;
            }
            last = Some(at);
            out = out.with(match ch {
                'c' => Action::Create,
                'r' => Action::Read,
                'u' => Action::Update,
                'd' => Action::Delete,
                _ => Action::Search,
            });
        }
        (!letters.is_empty()).then_some(out)
    }

    pub fn with(self, a: Action) -> Actions {
        Actions(self.0 | a.bit())
    }

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::fmt::Display for Actions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for a in [
            Action::Create,
            Action::Read,
            Action::Update,
            Action::Delete,
            Action::Search,
        ] {
            if self.contains(a) {
                write!(f, "{}", a.letter())?;
            }
        }
        Ok(())
    }
}

/// Whose data a permission reaches (SMART's scope prefix).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Level {
    /// `patient/`: only the patient compartment of the patient in context.
    Patient,
    /// `user/`: what the user may see (fhirgate does not narrow it further).
    User,
    /// `system/`: a backend service.
    System,
}

/// One permission: `level/Type.actions?query`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permission {
    pub level: Level,
    /// None: every type (`*`), which never includes AuditEvent.
    pub resource_type: Option<String>,
    pub actions: Actions,
    /// A granular SMART v2 scope's search (`category=...|laboratory`), as sent.
    pub query: Option<String>,
}

/// Why a grant could not be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("`{0}` is not a resource type this server knows")]
    UnknownType(String),
    #[error("a patient-level permission needs a patient in context")]
    NoPatient,
    #[error("the search of a granular permission on {resource_type} cannot be used: {reason}")]
    BadQuery {
        resource_type: String,
        reason: String,
    },
}

/// Which resources of a type a caller may touch.
#[derive(Debug, Clone)]
pub enum Visibility {
    All,
    /// Only the current resources that satisfy the filter.
    Where(Filter),
}

impl Visibility {
    /// The filter the store adds, None when nothing is narrowed.
    pub fn filter(&self) -> Option<&Filter> {
        match self {
            Visibility::All => None,
            Visibility::Where(f) => Some(f),
        }
    }
}

/// What a caller may do: everything, or the compiled rules of its permissions.
#[derive(Debug, Clone)]
pub enum Grant {
    Open,
    Restricted(Arc<Rules>),
}

/// One permission as it applies to one type: its actions, whether it is bound to
/// the patient compartment, and its granular search (None: no further condition).
#[derive(Debug, Clone)]
struct Rule {
    actions: Actions,
    in_compartment: bool,
    granular: Option<Filter>,
}

/// The patient compartment of the patient in context: per type, the reference
/// parameters (`pid`s) that place a resource in it (R4 CompartmentDefinition
/// `patient`), and the patient's id (the Patient itself is in its compartment).
#[derive(Debug, Clone, Default)]
struct Compartment {
    patient: String,
    pids: HashMap<String, Vec<i64>>,
}

impl Compartment {
    /// "In the compartment" for resources of `t`: Nothing for a type outside it.
    fn filter(&self, t: &str) -> Filter {
        let mut alternatives = Vec::new();
        if t == "Patient" {
            alternatives.push(Filter::Ids(vec![self.patient.clone()]));
        }
        if let Some(pids) = self.pids.get(t).filter(|p| !p.is_empty()) {
            alternatives.push(self.reference(pids.clone()));
        }
        match alternatives.len() {
            0 => Filter::Nothing,
            1 => alternatives.remove(0),
            _ => Filter::Any(alternatives),
        }
    }

    fn reference(&self, pids: Vec<i64>) -> Filter {
        Filter::Reference {
            pids,
            targets: vec![RefTarget::Local {
                types: vec!["Patient".into()],
                id: self.patient.clone(),
            }],
        }
    }
}

/// Per resource type, the rules of the permissions that reach it.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    by_type: HashMap<String, Vec<Rule>>,
    compartment: Option<Compartment>,
    /// May run operator work (`$reindex`, package and SearchParameter changes).
    pub operator: bool,
    /// What the grant was compiled from (for logs and introspection).
    pub permissions: Vec<Permission>,
    pub patient: Option<String>,
}

impl Rules {
    fn condition(&self, t: &str, rule: &Rule) -> Option<Filter> {
        let mut parts = Vec::new();
        if rule.in_compartment {
            parts.push(
                self.compartment
                    .as_ref()
                    .map_or(Filter::Nothing, |c| c.filter(t)),
            );
        }
        parts.extend(rule.granular.clone());
        match parts.len() {
            0 => None,
            1 => parts.pop(),
            _ => Some(Filter::All(parts)),
        }
    }
}

impl Grant {
    /// Compiles permissions: each type a permission names (every type but
    /// AuditEvent for `*`) gets the permission's actions under its condition: the
    /// patient compartment of `patient` for `patient/` permissions, and the
    /// granular search; both become store filters.
    pub fn compile(
        permissions: &[Permission],
        patient: Option<&str>,
        engine: &SearchEngine,
    ) -> Result<Grant, GrantError> {
        let model = engine.model();
        let mut rules = Rules {
            permissions: permissions.to_vec(),
            patient: patient.map(str::to_string),
            ..Rules::default()
        };
        if permissions.iter().any(|p| p.level == Level::Patient) {
            let id = patient.ok_or(GrantError::NoPatient)?;
            let mut compartment = Compartment {
                patient: id.to_string(),
                pids: HashMap::new(),
            };
            for t in engine.compartment_types("Patient") {
                if let Ok(f) = engine.compartment_filter("Patient", id, std::slice::from_ref(&t)) {
                    compartment.pids.insert(t, reference_pids(&f));
                }
            }
            rules.compartment = Some(compartment);
        }
        for p in permissions {
            if p.actions.is_empty() {
                continue;
            }
            let types: Vec<String> = match &p.resource_type {
                Some(t) => {
                    if !model.is_resource_type(t) {
                        return Err(GrantError::UnknownType(t.clone()));
                    }
                    vec![t.clone()]
                }
                None => model
                    .resource_types()
                    .iter()
                    .filter(|t| t.as_str() != crate::audit::RESOURCE_TYPE)
                    .cloned()
                    .collect(),
            };
            for t in types {
                let granular = match &p.query {
                    Some(q) => {
                        let mut fs = granular_filters(engine, &t, q)?;
                        match fs.len() {
                            0 => None,
                            1 => fs.pop(),
                            _ => Some(Filter::All(fs)),
                        }
                    }
                    None => None,
                };
                rules.by_type.entry(t).or_default().push(Rule {
                    actions: p.actions,
                    in_compartment: p.level == Level::Patient,
                    granular,
                });
            }
        }
        Ok(Grant::Restricted(Arc::new(rules)))
    }

    /// The same grant, allowed operator work too (the `admin` role).
    pub fn with_operator(self) -> Grant {
        match self {
            Grant::Open => Grant::Open,
            Grant::Restricted(r) => {
                let mut rules = (*r).clone();
                rules.operator = true;
                Grant::Restricted(Arc::new(rules))
            }
        }
    }

    /// May the caller run operator work (`$reindex`)?
    pub fn is_operator(&self) -> bool {
        match self {
            Grant::Open => true,
            Grant::Restricted(r) => r.operator,
        }
    }

    /// May `action` be done on `resource_type`, and on which resources.
    pub fn decide(&self, resource_type: &str, action: Action) -> Result<Visibility, Denied> {
        let rules = match self {
            Grant::Open => return Ok(Visibility::All),
            Grant::Restricted(r) => r,
        };
        let mut conditions: Vec<Filter> = Vec::new();
        let mut any = false;
        for rule in rules.by_type.get(resource_type).into_iter().flatten() {
            if !rule.actions.contains(action) {
                continue;
            }
            any = true;
            match rules.condition(resource_type, rule) {
                None => return Ok(Visibility::All),
                Some(c) => conditions.push(c),
            }
        }
        if !any {
            return Err(Denied(format!(
                "the granted scopes do not permit {} {resource_type}",
                action.describe()
            )));
        }
        Ok(Visibility::Where(match conditions.len() {
            1 => conditions.remove(0),
            _ => Filter::Any(conditions),
        }))
    }

    /// The types the caller may do `action` on, each with its visibility; None
    /// when every type is open.
    pub fn permitted_types(&self, action: Action) -> Option<Vec<(String, Visibility)>> {
        let rules = match self {
            Grant::Open => return None,
            Grant::Restricted(r) => r,
        };
        let mut types: Vec<&String> = rules.by_type.keys().collect();
        types.sort();
        Some(
            types
                .into_iter()
                .filter_map(|t| self.decide(t, action).ok().map(|v| (t.clone(), v)))
                .collect(),
        )
    }

    /// What a query over `types` (None: every type) must add to see only what the
    /// caller may `action`: None when nothing is narrowed, else one filter over
    /// the resource row that names the types it admits. The compartment
    /// conditions of many types are merged into one condition on the union of
    /// their reference parameters (a parameter key names its type, so the union
    /// admits each type only through its own parameters): a `patient/*.rs`
    /// system search is one semi-join, not one per type.
    pub fn narrowing(&self, types: Option<&[String]>, action: Action) -> Option<Filter> {
        let rules = match self {
            Grant::Open => return None,
            Grant::Restricted(r) => r,
        };
        let mut candidates: Vec<&str> = match types {
            Some(ts) => ts.iter().map(String::as_str).collect(),
            None => rules.by_type.keys().map(String::as_str).collect(),
        };
        candidates.sort_unstable();
        candidates.dedup();
        let mut open: Vec<String> = Vec::new();
        let mut merged_pids: Vec<i64> = Vec::new();
        let mut patient_self = false;
        let mut other: Vec<Filter> = Vec::new();
        for t in &candidates {
            let matching: Vec<&Rule> = rules
                .by_type
                .get(*t)
                .into_iter()
                .flatten()
                .filter(|r| r.actions.contains(action))
                .collect();
            if matching.is_empty() {
                continue;
            }
            if matching
                .iter()
                .any(|r| !r.in_compartment && r.granular.is_none())
            {
                open.push(t.to_string());
                continue;
            }
            for r in matching {
                match (&r.granular, &rules.compartment) {
                    (None, Some(c)) => {
                        merged_pids.extend(c.pids.get(*t).into_iter().flatten());
                        patient_self |= *t == "Patient";
                    }
                    _ => {
                        if let Some(cond) = rules.condition(t, r) {
                            other.push(Filter::All(vec![Filter::Types(vec![t.to_string()]), cond]));
                        }
                    }
                }
            }
        }
        if types.is_some()
            && other.is_empty()
            && merged_pids.is_empty()
            && !patient_self
            && open.len() == candidates.len()
        {
            return None;
        }
        let mut alternatives = Vec::new();
        if !open.is_empty() {
            alternatives.push(Filter::Types(open));
        }
        if let Some(c) = &rules.compartment {
            if !merged_pids.is_empty() {
                merged_pids.sort_unstable();
                merged_pids.dedup();
                alternatives.push(c.reference(merged_pids));
            }
            if patient_self {
                alternatives.push(Filter::All(vec![
                    Filter::Types(vec!["Patient".into()]),
                    Filter::Ids(vec![c.patient.clone()]),
                ]));
            }
        }
        alternatives.extend(other);
        Some(match alternatives.len() {
            0 => Filter::Nothing,
            1 => alternatives.remove(0),
            _ => Filter::Any(alternatives),
        })
    }
}

/// The reference parameter keys of a compartment filter.
fn reference_pids(f: &Filter) -> Vec<i64> {
    match f {
        Filter::Reference { pids, .. } => pids.clone(),
        Filter::Any(fs) | Filter::All(fs) => fs.iter().flat_map(reference_pids).collect(),
        _ => Vec::new(),
    }
}

/// The filters of a granular permission's search on one type: strict (an
/// unknown parameter is an error), only criteria the SQL can decide (a check
/// after decryption cannot narrow a query), no result parameters.
fn granular_filters(
    engine: &SearchEngine,
    resource_type: &str,
    query: &str,
) -> Result<Vec<Filter>, GrantError> {
    let bad = |reason: String| GrantError::BadQuery {
        resource_type: resource_type.to_string(),
        reason,
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if pairs.is_empty() {
        return Ok(Vec::new());
    }
    if let Some((k, _)) = pairs.iter().find(|(k, _)| k.starts_with('_') && k != "_id") {
        return Err(bad(format!("`{k}` is not a criterion")));
    }
    let req = engine
        .parse(vec![resource_type.to_string()], &pairs, true)
        .map_err(|e| bad(e.to_string()))?;
    if !req.checks.is_empty() {
        return Err(bad(
            "it needs a check after decryption (a long string prefix or :contains), which cannot narrow a query"
                .into(),
        ));
    }
    Ok(req.filters)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_v2_letters_parse_in_order_only() {
        let a = Actions::parse_v2("cruds").unwrap();
        assert!(a.contains(Action::Create) && a.contains(Action::Search));
        assert_eq!(Actions::parse_v2("rs").unwrap().to_string(), "rs");
        assert!(Actions::parse_v2("sr").is_none());
        assert!(Actions::parse_v2("rr").is_none());
        assert!(Actions::parse_v2("x").is_none());
        assert!(Actions::parse_v2("").is_none());
    }

    #[test]
    fn an_open_grant_decides_everything_visible() {
        assert!(matches!(
            Grant::Open.decide("Patient", Action::Delete),
            Ok(Visibility::All)
        ));
        assert!(Grant::Open.permitted_types(Action::Read).is_none());
    }

    #[test]
    fn a_restricted_grant_refuses_what_no_rule_allows() {
        let mut rules = Rules::default();
        rules.by_type.insert(
            "Observation".into(),
            vec![Rule {
                actions: Actions::parse_v2("rs").unwrap(),
                in_compartment: false,
                granular: None,
            }],
        );
        rules.by_type.insert(
            "Patient".into(),
            vec![Rule {
                actions: Actions::parse_v2("r").unwrap(),
                in_compartment: false,
                granular: Some(Filter::Ids(vec!["a".into()])),
            }],
        );
        let g = Grant::Restricted(Arc::new(rules));
        assert!(matches!(
            g.decide("Observation", Action::Search),
            Ok(Visibility::All)
        ));
        assert!(g.decide("Observation", Action::Create).is_err());
        assert!(g.decide("Encounter", Action::Read).is_err());
        assert!(matches!(
            g.decide("Patient", Action::Read),
            Ok(Visibility::Where(Filter::Ids(_)))
        ));
        let types = g.permitted_types(Action::Read).unwrap();
        assert_eq!(types.len(), 2);
    }
}
