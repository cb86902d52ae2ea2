//! Strict reading of FHIR JSON against the structure model: unknown elements,
//! wrong JSON types, malformed primitives, empty values and bad ids are reported
//! with the element's path. This is the parser gate every write passes; profile
//! validation (cardinality, bindings, invariants) is a separate, later step.

use serde_json::{Map, Value};

use super::model::{ElementDef, JsonKind, Model, TypeDef, TypeKind};
use super::outcome::Issue;
use super::types::{truncate, Id};

/// Most issues reported for one resource; past that the client has other problems.
const MAX_ISSUES: usize = 100;

/// Parses bytes as JSON, keeping decimals and key order. Duplicate keys are refused.
pub fn parse_json(bytes: &[u8]) -> Result<Value, Issue> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| Issue::error("structure", format!("the body is not UTF-8: {e}")))?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let value: Value = serde_json::from_str(text)
        .map_err(|e| Issue::error("structure", format!("the body is not valid JSON: {e}")))?;
    if let Some(dup) = find_duplicate_key(text) {
        return Err(Issue::error(
            "structure",
            format!("the JSON object key `{}` appears twice", truncate(&dup, 80)),
        ));
    }
    Ok(value)
}

/// serde_json keeps the last of duplicate keys silently; FHIR JSON forbids them.
fn find_duplicate_key(text: &str) -> Option<String> {
    use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
    use std::collections::HashSet;
    use std::fmt;

    struct Check<'a>(&'a std::cell::RefCell<Option<String>>);
    impl<'de> DeserializeSeed<'de> for Check<'_> {
        type Value = ();
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Check<'_> {
        type Value = ();
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E>(self, _: bool) -> Result<(), E> {
            Ok(())
        }
        fn visit_i64<E>(self, _: i64) -> Result<(), E> {
            Ok(())
        }
        fn visit_u64<E>(self, _: u64) -> Result<(), E> {
            Ok(())
        }
        fn visit_f64<E>(self, _: f64) -> Result<(), E> {
            Ok(())
        }
        fn visit_str<E>(self, _: &str) -> Result<(), E> {
            Ok(())
        }
        fn visit_unit<E>(self) -> Result<(), E> {
            Ok(())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            while a.next_element_seed(Check(self.0))?.is_some() {}
            Ok(())
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<(), A::Error> {
            let mut seen = HashSet::new();
            while let Some(k) = a.next_key::<String>()? {
                if !seen.insert(k.clone()) && self.0.borrow().is_none() {
                    *self.0.borrow_mut() = Some(k);
                }
                a.next_value_seed(Check(self.0))?;
            }
            Ok(())
        }
    }
    let found = std::cell::RefCell::new(None);
    let mut de = serde_json::Deserializer::from_str(text);
    let _ = Check(&found).deserialize(&mut de);
    found.into_inner()
}

/// Checks a resource (the JSON root or a nested one) and returns every issue found.
pub fn check_resource(model: &Model, value: &Value) -> Vec<Issue> {
    let mut c = Checker {
        model,
        issues: Vec::new(),
    };
    c.resource(value, None);
    c.issues
}

/// Like [`check_resource`] for a resource that sits inside another document, with
/// issue locations under `location` (e.g. `Bundle.entry[3].resource`).
pub fn check_resource_at(model: &Model, value: &Value, location: &str) -> Vec<Issue> {
    let mut c = Checker {
        model,
        issues: Vec::new(),
    };
    c.resource(value, Some(location));
    c.issues
}

struct Checker<'a> {
    model: &'a Model,
    issues: Vec<Issue>,
}

impl Checker<'_> {
    fn push(&mut self, issue: Issue) {
        if self.issues.len() < MAX_ISSUES {
            self.issues.push(issue);
        }
    }

    fn resource(&mut self, value: &Value, path: Option<&str>) {
        let here = path.unwrap_or("$this");
        let Some(obj) = value.as_object() else {
            self.push(Issue::error("structure", "a resource must be a JSON object").at(here));
            return;
        };
        let Some(rt) = obj.get("resourceType") else {
            self.push(Issue::error("required", "the resource has no `resourceType`").at(here));
            return;
        };
        let Some(rt) = rt.as_str() else {
            self.push(Issue::error("structure", "`resourceType` must be a string").at(here));
            return;
        };
        if !self.model.is_resource_type(rt) {
            self.push(
                Issue::error(
                    "not-supported",
                    format!("`{}` is not a FHIR R4 resource type", truncate(rt, 80)),
                )
                .at(here),
            );
            return;
        }
        let td = match self.model.type_def(rt) {
            Ok(td) => td,
            Err(e) => {
                self.push(Issue::error("exception", e.to_string()).at(here));
                return;
            }
        };
        let path = path.map(str::to_string).unwrap_or_else(|| rt.to_string());
        if let Some(id) = obj.get("id") {
            match id.as_str() {
                Some(s) => {
                    if let Err(msg) = Id::parse(s) {
                        self.push(Issue::error("value", msg).at(format!("{path}.id")));
                    }
                }
                None => self.push(
                    Issue::error("structure", "`id` must be a JSON string")
                        .at(format!("{path}.id")),
                ),
            }
        }
        self.object(&td, &td.name, obj, &path, true);
    }

    fn object(
        &mut self,
        td: &TypeDef,
        node_path: &str,
        obj: &Map<String, Value>,
        path: &str,
        is_resource: bool,
    ) {
        if obj.is_empty() {
            self.push(Issue::error("structure", "an object must not be empty").at(path));
            return;
        }
        let Some(node) = td.node(node_path) else {
            self.push(Issue::error("structure", "no element definitions here").at(path));
            return;
        };
        for (key, value) in obj {
            if is_resource && key == "resourceType" {
                continue;
            }
            if is_resource && key == "id" {
                continue; // checked by `resource`
            }
            if let Some(base) = key.strip_prefix('_') {
                match node.child(base) {
                    Some((el, chosen)) if self.is_primitive(el, chosen) => {
                        self.primitive_extensions(
                            el,
                            obj.get(base),
                            value,
                            &format!("{path}.{base}"),
                        );
                    }
                    _ => self.push(
                        Issue::error(
                            "structure",
                            format!("unrecognised element `{}`", truncate(key, 80)),
                        )
                        .at(format!("{path}.{}", truncate(key, 80))),
                    ),
                }
                continue;
            }
            let Some((el, chosen)) = node.child(key) else {
                self.push(
                    Issue::error(
                        "structure",
                        format!("unrecognised element `{}`", truncate(key, 80)),
                    )
                    .at(format!("{path}.{}", truncate(key, 80))),
                );
                continue;
            };
            let el_path = format!("{path}.{key}");
            let companion = obj.get(&format!("_{key}"));
            if el.many {
                let Some(items) = value.as_array() else {
                    self.push(
                        Issue::error(
                            "structure",
                            format!("`{key}` repeats and must be a JSON array"),
                        )
                        .at(el_path),
                    );
                    continue;
                };
                if items.is_empty() {
                    self.push(Issue::error("structure", "an array must not be empty").at(el_path));
                    continue;
                }
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{el_path}[{i}]");
                    if item.is_null() {
                        let has_ext = companion
                            .and_then(|c| c.as_array())
                            .and_then(|c| c.get(i))
                            .is_some_and(|c| !c.is_null());
                        if !(has_ext && self.is_primitive(el, chosen)) {
                            self.push(
                                Issue::error(
                                    "structure",
                                    "null is only allowed where `_` extensions fill the place",
                                )
                                .at(item_path),
                            );
                        }
                        continue;
                    }
                    self.value(td, el, chosen, item, &item_path);
                }
            } else {
                if value.is_array() {
                    self.push(
                        Issue::error(
                            "structure",
                            format!("`{key}` does not repeat and must not be an array"),
                        )
                        .at(el_path),
                    );
                    continue;
                }
                if value.is_null() {
                    self.push(Issue::error("structure", "null is not a value").at(el_path));
                    continue;
                }
                self.value(td, el, chosen, value, &el_path);
            }
        }
    }

    fn is_primitive(&self, el: &ElementDef, chosen: Option<&str>) -> bool {
        if el.inline.is_some() {
            return false;
        }
        let t = chosen.or_else(|| el.types.first().map(String::as_str));
        match t {
            Some(t) => self
                .model
                .type_def(t)
                .map(|td| td.kind == TypeKind::Primitive)
                .unwrap_or(false),
            None => false,
        }
    }

    fn value(
        &mut self,
        td: &TypeDef,
        el: &ElementDef,
        chosen: Option<&str>,
        value: &Value,
        path: &str,
    ) {
        if let Some(inline) = &el.inline {
            match value.as_object() {
                Some(o) => self.object(td, inline, o, path, false),
                None => self.push(Issue::error("structure", "must be a JSON object").at(path)),
            }
            return;
        }
        let Some(t) = chosen.or_else(|| el.types.first().map(String::as_str)) else {
            self.push(Issue::error("structure", "element has no type").at(path));
            return;
        };
        if t == "Resource" || self.model.is_resource_type(t) {
            self.resource(value, Some(path));
            return;
        }
        let ctd = match self.model.type_def(t) {
            Ok(c) => c,
            Err(e) => {
                self.push(Issue::error("exception", e.to_string()).at(path));
                return;
            }
        };
        if ctd.kind == TypeKind::Primitive {
            self.primitive(&ctd, value, path);
        } else {
            match value.as_object() {
                Some(o) => self.object(&ctd, &ctd.name, o, path, false),
                None => self.push(
                    Issue::error("structure", format!("a {t} must be a JSON object")).at(path),
                ),
            }
        }
    }

    fn primitive(&mut self, td: &TypeDef, value: &Value, path: &str) {
        let Some(info) = &td.primitive else { return };
        let name = td.name.as_str();
        let text: String = match (info.json, value) {
            (JsonKind::Boolean, Value::Bool(b)) => b.to_string(),
            (JsonKind::Integer | JsonKind::Decimal, Value::Number(n)) => n.to_string(),
            (JsonKind::String, Value::String(s)) => s.clone(),
            _ => {
                let want = match info.json {
                    JsonKind::Boolean => "a JSON boolean",
                    JsonKind::Integer => "a JSON number without fraction",
                    JsonKind::Decimal => "a JSON number",
                    JsonKind::String => "a JSON string",
                };
                self.push(
                    Issue::error(
                        "structure",
                        format!("a {name} must be {want}, not {}", describe(value)),
                    )
                    .at(path),
                );
                return;
            }
        };
        if text.is_empty() {
            self.push(Issue::error("value", format!("a {name} must not be empty")).at(path));
            return;
        }
        if let Some(c) = super::types::forbidden_char(&text) {
            self.push(
                Issue::error(
                    "value",
                    format!(
                        "a {name} must not contain the control character {} (FHIR allows only tab, carriage return and line feed below U+0020)",
                        super::types::describe_char(c)
                    ),
                )
                .at(path),
            );
            return;
        }
        // A decimal beyond what a double holds cannot be indexed or compared; it is
        // refused on both backends alike rather than stored as infinity (issue 13).
        if info.json == JsonKind::Decimal && !text.parse::<f64>().is_ok_and(f64::is_finite) {
            self.push(
                Issue::error(
                    "value",
                    format!(
                        "`{}` is beyond the range of decimals this server can search (about ±1.7e308)",
                        truncate(&text, 40)
                    ),
                )
                .at(path),
            );
            return;
        }
        if name == "xhtml" {
            if let Err(e) = super::xhtml::check_div(&text) {
                self.push(
                    Issue::error(
                        "value",
                        format!("the narrative is not well-formed XHTML: {e}"),
                    )
                    .at(path),
                );
            }
            return;
        }
        if let Some(rx) = &info.regex {
            if !rx.is_match(&text) {
                self.push(
                    Issue::error(
                        "value",
                        format!("`{}` is not a valid {name}", truncate(&text, 80)),
                    )
                    .at(path),
                );
                return;
            }
        }
        let range_ok = match name {
            "integer" => text.parse::<i32>().is_ok(),
            "unsignedInt" => text.parse::<i32>().is_ok_and(|v| v >= 0),
            "positiveInt" => text.parse::<i32>().is_ok_and(|v| v >= 1),
            "date" | "dateTime" | "instant" => calendar_day_exists(&text),
            _ => true,
        };
        if !range_ok {
            self.push(
                Issue::error(
                    "value",
                    format!("`{}` is not a valid {name}", truncate(&text, 80)),
                )
                .at(path),
            );
        }
    }

    fn primitive_extensions(
        &mut self,
        el: &ElementDef,
        values: Option<&Value>,
        ext: &Value,
        path: &str,
    ) {
        let one = |c: &mut Self, v: &Value, p: &str| {
            let Some(o) = v.as_object() else {
                c.push(
                    Issue::error("structure", "a primitive's `_` companion must be an object")
                        .at(p),
                );
                return;
            };
            if o.is_empty() {
                c.push(Issue::error("structure", "an object must not be empty").at(p));
            }
            match c.model.type_def("Element") {
                Ok(element) => c.object(&element, "Element", o, p, false),
                Err(e) => c.push(Issue::error("exception", e.to_string()).at(p)),
            }
        };
        if el.many {
            let Some(exts) = ext.as_array() else {
                self.push(Issue::error("structure", "must be a JSON array").at(path));
                return;
            };
            if let Some(vals) = values.and_then(|v| v.as_array()) {
                if vals.len() != exts.len() {
                    self.push(
                        Issue::error(
                            "structure",
                            "the value array and its `_` array differ in length",
                        )
                        .at(path),
                    );
                }
            }
            for (i, e) in exts.iter().enumerate() {
                if e.is_null() {
                    let has_value = values
                        .and_then(|v| v.as_array())
                        .and_then(|v| v.get(i))
                        .is_some_and(|v| !v.is_null());
                    if !has_value {
                        self.push(
                            Issue::error("structure", "both the value and its extensions are null")
                                .at(format!("{path}[{i}]")),
                        );
                    }
                    continue;
                }
                one(self, e, &format!("{path}[{i}]"));
            }
        } else {
            one(self, ext, path);
        }
    }
}

fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The regexes of date, dateTime and instant allow 31 days in every month.
fn calendar_day_exists(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return true; // year or year-month precision
    }
    let (Ok(y), Ok(m), Ok(d)) = (
        text[0..4].parse::<i32>(),
        text[5..7].parse::<u32>(),
        text[8..10].parse::<u32>(),
    ) else {
        return false;
    };
    chrono::NaiveDate::from_ymd_opt(y, m, d).is_some()
}
