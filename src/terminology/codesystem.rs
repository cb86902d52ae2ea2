//! One CodeSystem of the loaded packages, indexed for look-ups: every concept by code
//! with its display, properties and place in the hierarchy. The hierarchy comes from
//! nested `concept` entries and from the `parent`, `child` and `subsumedBy` properties
//! (R4 CodeSystem, "Concept hierarchy": both forms are used by the core code systems).

use std::collections::{HashMap, HashSet};

use serde_json::Value;

/// What `CodeSystem.content` says about the concepts in the package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Every concept is listed: "not in the list" means "not a code of the system".
    Complete,
    /// Only some concepts (`fragment`, `example`) or none (`not-present`, `supplement`).
    Partial,
}

/// A concept as the index keeps it.
#[derive(Debug, Default)]
pub struct Concept {
    pub display: Option<String>,
    /// Property code -> values as text (codes, strings, booleans written out).
    pub properties: HashMap<String, Vec<String>>,
    parents: Vec<usize>,
    children: Vec<usize>,
}

/// An indexed CodeSystem.
#[derive(Debug)]
pub struct CodeSystemIndex {
    pub url: String,
    pub content: Content,
    pub case_sensitive: bool,
    codes: Vec<String>,
    concepts: Vec<Concept>,
    by_code: HashMap<String, usize>,
}

impl CodeSystemIndex {
    pub fn from_resource(cs: &Value) -> CodeSystemIndex {
        let url = cs
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let content = match cs.get("content").and_then(Value::as_str) {
            Some("complete") => Content::Complete,
            _ => Content::Partial,
        };
        let case_sensitive = cs
            .get("caseSensitive")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        let mut index = CodeSystemIndex {
            url,
            content,
            case_sensitive,
            codes: Vec::new(),
            concepts: Vec::new(),
            by_code: HashMap::new(),
        };
        // Named relations are resolved after every code is known.
        let mut named: Vec<(usize, &'static str, String)> = Vec::new();
        if let Some(list) = cs.get("concept").and_then(Value::as_array) {
            index.add_concepts(list, None, &mut named);
        }
        for (i, relation, other) in named {
            let Some(&j) = index.by_code.get(&other) else {
                continue;
            };
            let (parent, child) = if relation == "child" { (i, j) } else { (j, i) };
            index.link(parent, child);
        }
        index
    }

    fn link(&mut self, parent: usize, child: usize) {
        if parent != child && !self.concepts[child].parents.contains(&parent) {
            self.concepts[child].parents.push(parent);
            self.concepts[parent].children.push(child);
        }
    }

    fn add_concepts(
        &mut self,
        list: &[Value],
        parent: Option<usize>,
        named: &mut Vec<(usize, &'static str, String)>,
    ) {
        for c in list {
            let Some(code) = c.get("code").and_then(Value::as_str) else {
                continue;
            };
            let i = match self.by_code.get(code) {
                Some(&i) => i,
                None => {
                    self.codes.push(code.to_string());
                    self.concepts.push(Concept {
                        display: c.get("display").and_then(Value::as_str).map(str::to_string),
                        ..Concept::default()
                    });
                    self.by_code.insert(code.to_string(), self.codes.len() - 1);
                    self.codes.len() - 1
                }
            };
            if let Some(p) = parent {
                self.link(p, i);
            }
            for p in c
                .get("property")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let Some(pcode) = p.get("code").and_then(Value::as_str) else {
                    continue;
                };
                let Some(text) = property_text(p) else {
                    continue;
                };
                match pcode {
                    "parent" | "subsumedBy" => named.push((i, "parent", text.clone())),
                    "child" => named.push((i, "child", text.clone())),
                    _ => {}
                }
                self.concepts[i]
                    .properties
                    .entry(pcode.to_string())
                    .or_default()
                    .push(text);
            }
            if let Some(sub) = c.get("concept").and_then(Value::as_array) {
                self.add_concepts(sub, Some(i), named);
            }
        }
    }

    fn index_of(&self, code: &str) -> Option<usize> {
        if let Some(&i) = self.by_code.get(code) {
            return Some(i);
        }
        if self.case_sensitive {
            return None;
        }
        self.codes.iter().position(|c| c.eq_ignore_ascii_case(code))
    }

    /// The concept with this code, if the package lists it.
    pub fn concept(&self, code: &str) -> Option<&Concept> {
        self.index_of(code).map(|i| &self.concepts[i])
    }

    /// Every code, in definition order.
    pub fn codes(&self) -> impl Iterator<Item = &str> {
        self.codes.iter().map(String::as_str)
    }

    /// `code` and every concept below it (`is-a` semantics).
    pub fn self_and_descendants(&self, code: &str) -> Vec<&str> {
        let Some(start) = self.index_of(code) else {
            return Vec::new();
        };
        let mut seen = HashSet::new();
        let mut stack = vec![start];
        let mut out = Vec::new();
        while let Some(i) = stack.pop() {
            if !seen.insert(i) {
                continue;
            }
            out.push(self.codes[i].as_str());
            stack.extend(self.concepts[i].children.iter().copied());
        }
        out
    }

    /// Whether `ancestor` subsumes `code` (is the same concept or above it).
    pub fn is_a(&self, code: &str, ancestor: &str) -> Option<bool> {
        let target = self.index_of(ancestor)?;
        let start = self.index_of(code)?;
        let mut seen = HashSet::new();
        let mut stack = vec![start];
        while let Some(i) = stack.pop() {
            if i == target {
                return Some(true);
            }
            if seen.insert(i) {
                stack.extend(self.concepts[i].parents.iter().copied());
            }
        }
        Some(false)
    }
}

/// A concept property value as text, for `=` filters.
fn property_text(p: &Value) -> Option<String> {
    for key in ["valueCode", "valueString", "valueUri", "valueDateTime"] {
        if let Some(s) = p.get(key).and_then(Value::as_str) {
            return Some(s.to_string());
        }
    }
    if let Some(b) = p.get("valueBoolean").and_then(Value::as_bool) {
        return Some(b.to_string());
    }
    if let Some(n) = p.get("valueInteger").or_else(|| p.get("valueDecimal")) {
        return Some(n.to_string());
    }
    p.get("valueCoding")
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_and_named_hierarchies_both_count() {
        let cs = CodeSystemIndex::from_resource(&json!({
            "url": "urn:cs", "content": "complete",
            "concept": [
                {"code": "a", "concept": [{"code": "b"}]},
                {"code": "c", "property": [{"code": "parent", "valueCode": "b"}]}
            ]
        }));
        assert_eq!(cs.is_a("c", "a"), Some(true));
        assert_eq!(cs.is_a("a", "c"), Some(false));
        assert_eq!(cs.is_a("x", "a"), None);
        let mut d = cs.self_and_descendants("a");
        d.sort();
        assert_eq!(d, vec!["a", "b", "c"]);
    }
}
