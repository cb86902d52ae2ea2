//! Terminology from the loaded packages: ValueSet expansion (compose include/exclude by
//! concept list, whole code system, the filters `is-a`, `descendent-of`, `is-not-a`, `=` on
//! properties and `regex` on codes, imported value sets), membership tests, and CodeSystem
//! look-ups (`lookup`, `subsumes`, `descendants`). Expansions and code-system indexes are
//! built on first use and cached for the life of the process.
//!
//! "Not a member" and "cannot tell" are different answers: a value set that includes a code
//! system the packages do not carry in full (SNOMED CT, LOINC, a `fragment` CodeSystem) or
//! uses a filter this module does not evaluate answers [`Membership::Unknown`] for codes of
//! that system, never [`Membership::NotMember`]. Callers decide what unknown means to them
//! (validation reports nothing; a search would fall back or refuse).
//!
//! ```
//! # fn demo(t: &fhirgate::terminology::Terminology) -> Result<(), fhirgate::terminology::TerminologyError> {
//! use fhirgate::terminology::Membership;
//! let m = t.contains("http://hl7.org/fhir/ValueSet/administrative-gender",
//!                    Some("http://hl7.org/fhir/administrative-gender"), "female")?;
//! assert_eq!(m, Membership::Member);
//! # Ok(()) }
//! ```
//!
//! Architecture invariant: terminology reads packages only through `PackageSet`; it does no
//! network I/O (no external terminology server), knows nothing of HTTP, storage or validation.

mod codesystem;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

pub use codesystem::{CodeSystemIndex, Concept, Content};

use crate::packages::PackageSet;

/// The answer to "is this code in the value set?".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    Member,
    NotMember,
    /// The value set could not be expanded for this code's system; the reason says why.
    Unknown(String),
}

/// How two codes of one system relate (the `$subsumes` outcomes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subsumption {
    Equivalent,
    /// The first code subsumes the second.
    Subsumes,
    /// The first code is subsumed by the second.
    SubsumedBy,
    NotSubsumed,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TerminologyError {
    #[error("the value set {0} is not in the loaded packages")]
    UnknownValueSet(String),
    #[error("the code system {0} is not in the loaded packages")]
    UnknownCodeSystem(String),
    #[error(
        "the code system {0} is not complete in the loaded packages (content is not `complete`)"
    )]
    IncompleteCodeSystem(String),
    #[error("`{code}` is not a code of {system}")]
    UnknownCode { system: String, code: String },
    #[error("the value set {url} cannot be expanded: {reason}")]
    BadValueSet { url: String, reason: String },
}

/// The codes of an expanded value set.
#[derive(Debug, Default)]
pub struct Expansion {
    /// system -> codes known to be members.
    codes: HashMap<String, HashSet<String>>,
    /// Systems (partly) included but not enumerable, with the reason.
    open: HashMap<String, String>,
    /// Codes excluded from open systems (exclude lists still apply to them).
    excluded: HashMap<String, HashSet<String>>,
    /// An imported value set that is not available: any code not enumerated may belong.
    missing_import: Option<String>,
}

impl Expansion {
    /// Number of enumerated codes (open systems not counted).
    pub fn len(&self) -> usize {
        self.codes.values().map(HashSet::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0 && self.open.is_empty()
    }

    /// Whether every member is enumerated (no open system, no missing import).
    pub fn is_complete(&self) -> bool {
        self.open.is_empty() && self.missing_import.is_none()
    }

    /// The enumerated (system, code) pairs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.codes
            .iter()
            .flat_map(|(s, cs)| cs.iter().map(move |c| (s.as_str(), c.as_str())))
    }

    /// Membership of a code; `system` None means "any system" (a bare `code` element).
    pub fn contains(&self, system: Option<&str>, code: &str) -> Membership {
        let answer = self.contains_enumerated(system, code);
        match (&answer, &self.missing_import) {
            (Membership::NotMember, Some(vs)) => {
                Membership::Unknown(format!("the imported value set {vs} is not available"))
            }
            _ => answer,
        }
    }

    fn contains_enumerated(&self, system: Option<&str>, code: &str) -> Membership {
        match system {
            Some(s) => {
                if self.codes.get(s).is_some_and(|c| c.contains(code)) {
                    return Membership::Member;
                }
                match self.open.get(s) {
                    Some(_) if self.excluded.get(s).is_some_and(|c| c.contains(code)) => {
                        Membership::NotMember
                    }
                    Some(reason) => Membership::Unknown(reason.clone()),
                    None => Membership::NotMember,
                }
            }
            None => {
                if self.codes.values().any(|c| c.contains(code)) {
                    return Membership::Member;
                }
                match self.open.values().next() {
                    Some(reason) => Membership::Unknown(reason.clone()),
                    None => Membership::NotMember,
                }
            }
        }
    }

    fn add(&mut self, system: &str, code: &str) {
        self.codes
            .entry(system.to_string())
            .or_default()
            .insert(code.to_string());
    }

    fn open_system(&mut self, system: &str, reason: String) {
        self.open.entry(system.to_string()).or_insert(reason);
    }

    fn merge(&mut self, other: &Expansion) {
        for (s, cs) in &other.codes {
            self.codes
                .entry(s.clone())
                .or_default()
                .extend(cs.iter().cloned());
        }
        for (s, r) in &other.open {
            self.open_system(s, r.clone());
        }
        if self.missing_import.is_none() {
            self.missing_import = other.missing_import.clone();
        }
    }

    /// Keeps only the members that `other` also has (an include naming several sources).
    fn intersect(&mut self, other: &Expansion) {
        if other.missing_import.is_some() {
            return; // cannot narrow by what is not available
        }
        for (s, cs) in self.codes.iter_mut() {
            if other.open.contains_key(s) {
                continue; // cannot narrow by what cannot be listed
            }
            match other.codes.get(s) {
                Some(keep) => cs.retain(|c| keep.contains(c)),
                None => cs.clear(),
            }
        }
        self.codes.retain(|_, cs| !cs.is_empty());
        let own_open: Vec<String> = self.open.keys().cloned().collect();
        for s in own_open {
            if !other.open.contains_key(&s) && !other.codes.contains_key(&s) {
                self.open.remove(&s);
            }
        }
    }

    fn remove(&mut self, system: &str, code: &str) {
        if let Some(cs) = self.codes.get_mut(system) {
            cs.remove(code);
        }
        if self.open.contains_key(system) {
            self.excluded
                .entry(system.to_string())
                .or_default()
                .insert(code.to_string());
        }
    }
}

type Cached<T> = Result<Arc<T>, TerminologyError>;

/// Deepest chain of value sets importing value sets; deeper is taken as a cycle.
const MAX_IMPORT_DEPTH: usize = 16;

/// Terminology services over one package set.
pub struct Terminology {
    packages: Arc<PackageSet>,
    expansions: RwLock<HashMap<String, Cached<Expansion>>>,
    systems: RwLock<HashMap<String, Cached<CodeSystemIndex>>>,
}

impl std::fmt::Debug for Terminology {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminology")
            .field("expansions", &self.expansions.read().len())
            .finish()
    }
}

/// The canonical URL without a `|version` suffix.
fn unversioned(canonical: &str) -> &str {
    canonical.split('|').next().unwrap_or(canonical)
}

impl Terminology {
    pub fn new(packages: Arc<PackageSet>) -> Terminology {
        Terminology {
            packages,
            expansions: RwLock::new(HashMap::new()),
            systems: RwLock::new(HashMap::new()),
        }
    }

    fn resource(&self, canonical: &str, resource_type: &str) -> Option<Arc<Value>> {
        let found = self
            .packages
            .find(canonical)
            .or_else(|| self.packages.find(unversioned(canonical)))?;
        if self.packages.entry(found).resource_type != resource_type {
            return None;
        }
        self.packages.get(found).ok()
    }

    /// The indexed CodeSystem (any content), cached.
    pub fn code_system(&self, url: &str) -> Result<Arc<CodeSystemIndex>, TerminologyError> {
        if let Some(c) = self.systems.read().get(url) {
            return c.clone();
        }
        let result = match self.resource(url, "CodeSystem") {
            Some(cs) => Ok(Arc::new(CodeSystemIndex::from_resource(&cs))),
            None => Err(TerminologyError::UnknownCodeSystem(url.to_string())),
        };
        self.systems.write().insert(url.to_string(), result.clone());
        result
    }

    /// The CodeSystem when the packages list all of its concepts.
    fn complete_code_system(&self, url: &str) -> Result<Arc<CodeSystemIndex>, TerminologyError> {
        let cs = self.code_system(url)?;
        if cs.content != Content::Complete {
            return Err(TerminologyError::IncompleteCodeSystem(url.to_string()));
        }
        Ok(cs)
    }

    /// Whether `code` is a code of `system`: Ok(Some(concept)) when it is, Ok(None) when the
    /// complete code system does not have it, Err when the system is absent or incomplete.
    pub fn lookup(
        &self,
        system: &str,
        code: &str,
    ) -> Result<Option<Arc<CodeSystemIndex>>, TerminologyError> {
        let cs = self.complete_code_system(system)?;
        Ok(cs.concept(code).is_some().then_some(cs))
    }

    /// How `a` and `b` of `system` relate.
    pub fn subsumes(
        &self,
        system: &str,
        a: &str,
        b: &str,
    ) -> Result<Subsumption, TerminologyError> {
        let cs = self.complete_code_system(system)?;
        let unknown = |code: &str| TerminologyError::UnknownCode {
            system: system.to_string(),
            code: code.to_string(),
        };
        if cs.concept(a).is_none() {
            return Err(unknown(a));
        }
        if cs.concept(b).is_none() {
            return Err(unknown(b));
        }
        if a == b {
            return Ok(Subsumption::Equivalent);
        }
        Ok(if cs.is_a(b, a) == Some(true) {
            Subsumption::Subsumes
        } else if cs.is_a(a, b) == Some(true) {
            Subsumption::SubsumedBy
        } else {
            Subsumption::NotSubsumed
        })
    }

    /// The codes below `code` in `system` (not `code` itself).
    pub fn descendants(&self, system: &str, code: &str) -> Result<Vec<String>, TerminologyError> {
        let cs = self.complete_code_system(system)?;
        if cs.concept(code).is_none() {
            return Err(TerminologyError::UnknownCode {
                system: system.to_string(),
                code: code.to_string(),
            });
        }
        Ok(cs
            .self_and_descendants(code)
            .into_iter()
            .filter(|c| *c != code)
            .map(str::to_string)
            .collect())
    }

    /// Is the code in the value set? Err when the value set itself is not available.
    pub fn contains(
        &self,
        value_set: &str,
        system: Option<&str>,
        code: &str,
    ) -> Result<Membership, TerminologyError> {
        Ok(self.expand(value_set)?.contains(system, code))
    }

    /// The expansion of a value set (canonical, optionally `|version`), cached.
    pub fn expand(&self, value_set: &str) -> Result<Arc<Expansion>, TerminologyError> {
        self.expand_depth(value_set, 0)
    }

    fn expand_depth(&self, url: &str, depth: usize) -> Result<Arc<Expansion>, TerminologyError> {
        if let Some(e) = self.expansions.read().get(url) {
            return e.clone();
        }
        if depth > MAX_IMPORT_DEPTH {
            return Err(TerminologyError::BadValueSet {
                url: url.to_string(),
                reason: "value sets import each other in a cycle".into(),
            });
        }
        let result = match self.resource(url, "ValueSet") {
            None => Err(TerminologyError::UnknownValueSet(url.to_string())),
            Some(vs) => self.expand_resource(url, &vs, depth).map(Arc::new),
        };
        self.expansions
            .write()
            .insert(url.to_string(), result.clone());
        result
    }

    fn expand_resource(
        &self,
        url: &str,
        vs: &Value,
        depth: usize,
    ) -> Result<Expansion, TerminologyError> {
        let mut out = Expansion::default();
        let Some(compose) = vs.get("compose") else {
            // A value set shipped expanded only.
            let contains = vs
                .pointer("/expansion/contains")
                .and_then(Value::as_array)
                .ok_or_else(|| TerminologyError::BadValueSet {
                    url: url.to_string(),
                    reason: "it has neither compose nor expansion".into(),
                })?;
            add_contains(&mut out, contains);
            return Ok(out);
        };
        for inc in compose
            .get("include")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let part = self.include(inc, depth)?;
            out.merge(&part);
        }
        for exc in compose
            .get("exclude")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let part = self.include(exc, depth)?;
            for (s, c) in part.iter() {
                out.remove(s, c);
            }
        }
        Ok(out)
    }

    /// The codes one `compose.include` (or `exclude`) entry names.
    fn include(&self, inc: &Value, depth: usize) -> Result<Expansion, TerminologyError> {
        let system = inc.get("system").and_then(Value::as_str);
        let imported: Vec<&str> = inc
            .get("valueSet")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let mut part = match system {
            Some(system) => self.include_system(system, inc),
            None => Expansion::default(),
        };
        for (n, vs) in imported.iter().enumerate() {
            let other = match self.expand_depth(vs, depth + 1) {
                Ok(o) => o,
                Err(TerminologyError::UnknownValueSet(_)) => Arc::new(Expansion {
                    missing_import: Some(vs.to_string()),
                    ..Expansion::default()
                }),
                Err(e) => return Err(e),
            };
            if n == 0 && system.is_none() {
                part.merge(&other);
            } else {
                part.intersect(&other);
            }
        }
        Ok(part)
    }

    fn include_system(&self, system: &str, inc: &Value) -> Expansion {
        let mut part = Expansion::default();
        if let Some(concepts) = inc.get("concept").and_then(Value::as_array) {
            for c in concepts {
                if let Some(code) = c.get("code").and_then(Value::as_str) {
                    part.add(system, code);
                }
            }
            return part;
        }
        let cs = match self.complete_code_system(system) {
            Ok(cs) => cs,
            Err(e) => {
                part.open_system(system, e.to_string());
                return part;
            }
        };
        let filters: Vec<&Value> = inc
            .get("filter")
            .and_then(Value::as_array)
            .map(|f| f.iter().collect())
            .unwrap_or_default();
        let mut selected: Option<HashSet<&str>> = None;
        for f in filters {
            match filter_codes(&cs, f) {
                Some(codes) => {
                    selected = Some(match selected {
                        None => codes,
                        Some(prev) => prev.intersection(&codes).copied().collect(),
                    })
                }
                None => {
                    let op = f.get("op").and_then(Value::as_str).unwrap_or("?");
                    let prop = f.get("property").and_then(Value::as_str).unwrap_or("?");
                    part.open_system(
                        system,
                        format!(
                            "the filter `{prop} {op}` on {system} is not evaluated by this server"
                        ),
                    );
                    return part;
                }
            }
        }
        match selected {
            Some(codes) => codes.into_iter().for_each(|c| part.add(system, c)),
            None => cs.codes().for_each(|c| part.add(system, c)),
        }
        part
    }
}

/// The codes of a complete code system that one filter selects; None for an unsupported
/// filter.
fn filter_codes<'c>(cs: &'c CodeSystemIndex, f: &Value) -> Option<HashSet<&'c str>> {
    let op = f.get("op").and_then(Value::as_str)?;
    let property = f.get("property").and_then(Value::as_str)?;
    let value = f.get("value").and_then(Value::as_str)?;
    let hierarchy = matches!(property, "concept" | "code");
    Some(match op {
        "is-a" if hierarchy => cs.self_and_descendants(value).into_iter().collect(),
        "descendent-of" if hierarchy => cs
            .self_and_descendants(value)
            .into_iter()
            .filter(|c| *c != value)
            .collect(),
        "is-not-a" if hierarchy => {
            let below: HashSet<&str> = cs.self_and_descendants(value).into_iter().collect();
            cs.codes().filter(|c| !below.contains(c)).collect()
        }
        "=" if hierarchy => cs.codes().filter(|c| *c == value).collect(),
        "=" => cs
            .codes()
            .filter(|c| {
                cs.concept(c)
                    .and_then(|k| k.properties.get(property))
                    .is_some_and(|vs| vs.iter().any(|v| v == value))
            })
            .collect(),
        "regex" if hierarchy => {
            let rx = regex::Regex::new(&format!("^(?:{value})$")).ok()?;
            cs.codes().filter(|c| rx.is_match(c)).collect()
        }
        _ => return None,
    })
}

fn add_contains(out: &mut Expansion, contains: &[Value]) {
    for c in contains {
        if let (Some(s), Some(code)) = (
            c.get("system").and_then(Value::as_str),
            c.get("code").and_then(Value::as_str),
        ) {
            out.add(s, code);
        }
        if let Some(nested) = c.get("contains").and_then(Value::as_array) {
            add_contains(out, nested);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cs() -> CodeSystemIndex {
        CodeSystemIndex::from_resource(&json!({
            "url": "urn:cs", "content": "complete",
            "concept": [
                {"code": "animal", "concept": [
                    {"code": "dog", "property": [{"code": "legs", "valueInteger": 4}]},
                    {"code": "bird", "property": [{"code": "legs", "valueInteger": 2}],
                     "concept": [{"code": "owl"}]}]},
                {"code": "stone"}
            ]
        }))
    }

    fn codes(f: Value) -> Vec<String> {
        let c = cs();
        let mut v: Vec<String> = filter_codes(&c, &f)
            .expect("supported filter")
            .into_iter()
            .map(str::to_string)
            .collect();
        v.sort();
        v
    }

    #[test]
    fn filters_select_by_hierarchy_property_and_regex() {
        let f = |op: &str, property: &str, value: &str| json!({"op": op, "property": property, "value": value});
        assert_eq!(codes(f("is-a", "concept", "bird")), ["bird", "owl"]);
        assert_eq!(
            codes(f("descendent-of", "concept", "animal")),
            ["bird", "dog", "owl"]
        );
        assert_eq!(codes(f("is-not-a", "concept", "animal")), ["stone"]);
        assert_eq!(codes(f("=", "legs", "2")), ["bird"]);
        assert_eq!(
            codes(f("regex", "code", "[a-d].*")),
            ["animal", "bird", "dog"]
        );
        assert!(filter_codes(&cs(), &f("exists", "legs", "true")).is_none());
    }

    #[test]
    fn open_systems_and_missing_imports_answer_unknown_not_no() {
        let mut e = Expansion::default();
        e.add("urn:a", "1");
        e.open_system("urn:big", "not loaded".into());
        assert_eq!(e.contains(Some("urn:a"), "1"), Membership::Member);
        assert_eq!(e.contains(Some("urn:a"), "2"), Membership::NotMember);
        assert!(matches!(
            e.contains(Some("urn:big"), "x"),
            Membership::Unknown(_)
        ));
        e.remove("urn:big", "x");
        assert_eq!(e.contains(Some("urn:big"), "x"), Membership::NotMember);
        assert!(matches!(e.contains(None, "zzz"), Membership::Unknown(_)));
        let missing = Expansion {
            missing_import: Some("urn:vs".into()),
            ..Expansion::default()
        };
        let mut m = Expansion::default();
        m.add("urn:a", "1");
        m.merge(&missing);
        assert!(matches!(
            m.contains(Some("urn:a"), "2"),
            Membership::Unknown(_)
        ));
        assert!(!m.is_complete());
    }

    #[test]
    fn an_include_naming_two_value_sets_keeps_what_both_have() {
        let mut a = Expansion::default();
        a.add("urn:a", "1");
        a.add("urn:a", "2");
        let mut b = Expansion::default();
        b.add("urn:a", "2");
        a.intersect(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), [("urn:a", "2")]);
    }
}
