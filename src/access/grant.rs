//! Grants: what a caller may do, compiled from permissions into per-type rules
//! whose conditions are store filters, so the store can narrow its SQL to them.

use std::collections::HashMap;
use std::sync::Arc;

use super::Denied;
use crate::search::SearchEngine;
use crate::store::Filter;

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

/// Per resource type: the actions of each permission that reaches it, with the
/// condition (None: every resource of the type) under which it applies.
#[derive(Debug, Default, Clone)]
pub struct Rules {
    by_type: HashMap<String, Vec<(Actions, Option<Filter>)>>,
    /// May run operator work (`$reindex`, package and SearchParameter changes).
    pub operator: bool,
    /// What the grant was compiled from (for logs and introspection).
    pub permissions: Vec<Permission>,
    pub patient: Option<String>,
}

impl Grant {
    /// Compiles permissions: each type a permission names (every type but
    /// AuditEvent for `*`) gets the permission's actions under its condition, the
    /// patient compartment of `patient` for `patient/` permissions and the
    /// granular search, both as store filters.
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
                    .filter(|t| t.as_str() != "AuditEvent")
                    .cloned()
                    .collect(),
            };
            for t in types {
                let mut parts = Vec::new();
                if p.level == Level::Patient {
                    let id = patient.ok_or(GrantError::NoPatient)?;
                    // A type outside the patient compartment holds nothing of the
                    // patient's: a patient-level permission reaches none of it.
                    parts.push(
                        engine
                            .compartment_filter("Patient", id, std::slice::from_ref(&t))
                            .unwrap_or(Filter::Nothing),
                    );
                }
                if let Some(q) = &p.query {
                    parts.extend(granular_filters(engine, &t, q)?);
                }
                let condition = match parts.len() {
                    0 => None,
                    1 => parts.pop(),
                    _ => Some(Filter::All(parts)),
                };
                rules
                    .by_type
                    .entry(t)
                    .or_default()
                    .push((p.actions, condition));
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
        let mut conditions: Vec<&Filter> = Vec::new();
        let mut any = false;
        for (actions, condition) in rules.by_type.get(resource_type).into_iter().flatten() {
            if !actions.contains(action) {
                continue;
            }
            any = true;
            match condition {
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
        Ok(Visibility::Where(match conditions.as_slice() {
            [one] => (*one).clone(),
            many => Filter::Any(many.iter().map(|f| (*f).clone()).collect()),
        }))
    }

    /// The types the caller may do `action` on, each with its visibility; None
    /// when every type is open (a system search needs no narrowing).
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
            vec![(Actions::parse_v2("rs").unwrap(), None)],
        );
        rules.by_type.insert(
            "Patient".into(),
            vec![(
                Actions::parse_v2("r").unwrap(),
                Some(Filter::Ids(vec!["a".into()])),
            )],
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
