//! Index extraction on write: each search parameter's FHIRPath expression is
//! evaluated on the resource, and the values it selects are turned into index rows
//! by the parameter's type (R4 search 3.1.1.4: which data types each parameter type
//! indexes and how). The rows are in clear; the store blinds strings and tokens.

use std::collections::HashMap;

use serde_json::Value;

use super::params::{Param, ParamType, TypeParams};
use super::values::{self, tag, RefParts};
use crate::fhir::Model;
use crate::fhirpath::{EvalContext, Item, Services};
use crate::store::{IndexRows, RefValue};

/// Most combinations a composite parameter indexes per item (a cartesian product
/// of component values could otherwise grow without bound).
const MAX_COMPOSITE_COMBINATIONS: usize = 64;

/// `resolve()` during extraction: expressions such as `subject.where(resolve() is
/// Patient)` only need the type of the target, which the reference names.
pub struct TypeStubs {
    stubs: HashMap<String, Value>,
}

impl TypeStubs {
    pub fn new(model: &Model) -> TypeStubs {
        TypeStubs {
            stubs: model
                .resource_types()
                .iter()
                .map(|t| (t.clone(), serde_json::json!({ "resourceType": t })))
                .collect(),
        }
    }

    /// The resource type a reference names (`Type/id`, `.../Type/id/_history/v`).
    pub fn type_of<'a>(&self, reference: &'a str) -> Option<&'a str> {
        let path = reference.split(['?', '#']).next().unwrap_or(reference);
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let n = segments.len();
        let candidates = [
            n.checked_sub(2).map(|i| segments[i]),
            n.checked_sub(4).map(|i| segments[i]),
        ];
        candidates
            .into_iter()
            .flatten()
            .find(|t| self.stubs.contains_key(*t))
    }
}

impl Services for TypeStubs {
    fn resolve(&self, reference: &str) -> Option<&Value> {
        self.stubs.get(self.type_of(reference)?)
    }
}

/// Turns resources into index rows.
pub struct Extractor<'a> {
    pub model: &'a Model,
    pub stubs: &'a TypeStubs,
    /// This server's base URL: absolute references under it are local.
    pub base_url: &'a str,
}

impl Extractor<'_> {
    /// Every index row of `resource` for the parameters of its type; Err with the
    /// count reached once there would be more than `limit` (counted before
    /// duplicates are removed, and checked as they are made, so a resource far
    /// beyond it costs no more than the limit).
    pub fn rows(
        &self,
        params: &TypeParams,
        resource: &Value,
        limit: usize,
    ) -> Result<IndexRows, usize> {
        let mut rows = IndexRows::default();
        let model = self.model.path_model();
        let mut ctx = EvalContext::new(model);
        ctx.resource = Some(resource);
        ctx.services = self.stubs;
        for p in params.indexed() {
            if p.is_builtin() {
                continue;
            }
            let Some(expr) = &p.expression else { continue };
            let items = match expr.evaluate(&ctx, resource) {
                Ok(items) => items,
                Err(err) => {
                    tracing::debug!(param = %p.code, error = %err, "index extraction failed for a parameter");
                    continue;
                }
            };
            if p.param_type == ParamType::Composite {
                self.composite(p, &ctx, &items, &mut rows);
            } else {
                for item in &items {
                    self.item(p, item, &mut rows, limit);
                    if rows.len() > limit {
                        return Err(rows.len());
                    }
                }
            }
            if rows.len() > limit {
                return Err(rows.len());
            }
        }
        rows.dedup();
        Ok(rows)
    }

    fn item(&self, p: &Param, item: &Item<'_>, rows: &mut IndexRows, limit: usize) {
        let (ty, owned);
        let json: &Value = match item {
            Item::Node(n) => {
                ty = n.ty;
                match n.json {
                    Some(j) => j,
                    None => return,
                }
            }
            other => {
                ty = "";
                owned = other.to_json();
                &owned
            }
        };
        match p.param_type {
            ParamType::String => {
                let mut forms = Vec::new();
                if p.code == "phonetic" {
                    phonetic_forms(json, &mut forms);
                } else {
                    // One more than the room left: enough to tell it is exceeded.
                    let room = limit.saturating_sub(rows.len()).saturating_add(1);
                    for s in string_parts(ty, json) {
                        values::string_forms(s, &mut forms, p.lean, room);
                    }
                }
                rows.blind.extend(forms.into_iter().map(|f| (p.pid, f)));
            }
            ParamType::Token => {
                let mut forms = Vec::new();
                match (&p.implicit_system, json) {
                    (Some(system), Value::String(code)) => {
                        let coding = serde_json::json!({"system": system, "code": code});
                        token_forms("Coding", &coding, &mut forms, false);
                    }
                    _ => token_forms(ty, json, &mut forms, !p.lean),
                }
                rows.blind.extend(forms.into_iter().map(|f| (p.pid, f)));
            }
            ParamType::Reference => self.reference(p, json, rows),
            ParamType::Date => {
                for (lo, hi) in date_ranges(json) {
                    rows.dates.push((p.pid, lo, hi));
                }
            }
            ParamType::Number => {
                for (lo, hi) in number_ranges(json) {
                    rows.numbers.push((p.pid, None, lo, hi));
                }
            }
            ParamType::Quantity => {
                for (key, lo, hi) in quantity_rows(json) {
                    rows.numbers.push((p.pid, Some(key), lo, hi));
                }
            }
            ParamType::Uri => {
                if let Some(s) = json.as_str() {
                    rows.uris.push((p.pid, s.to_string()));
                    if let Some((url, _version)) = s.split_once('|') {
                        rows.uris.push((p.pid, url.to_string()));
                    }
                }
            }
            ParamType::Composite | ParamType::Special => {}
        }
    }

    fn reference(&self, p: &Param, json: &Value, rows: &mut IndexRows) {
        let is_type = |t: &str| self.model.is_resource_type(t);
        let mut push = |r: &str| {
            // A canonical reference is found with or without its version.
            let bare = r.split_once('|').map(|(u, _)| u);
            for r in std::iter::once(r).chain(bare) {
                match values::parse_reference(r, self.base_url, is_type) {
                    Some(RefParts::Local { resource_type, id }) => rows.references.push((
                        p.pid,
                        RefValue {
                            target_type: resource_type,
                            target_id: id,
                            url: String::new(),
                        },
                    )),
                    Some(RefParts::Url(url)) => rows.references.push((
                        p.pid,
                        RefValue {
                            target_type: String::new(),
                            target_id: String::new(),
                            url,
                        },
                    )),
                    None => {}
                }
            }
        };
        match json {
            Value::String(s) => push(s),
            Value::Object(o) => {
                if let Some(r) = o.get("reference").and_then(Value::as_str) {
                    push(r);
                }
                if let Some(ident) = o.get("identifier") {
                    let mut forms = Vec::new();
                    token_forms("Identifier", ident, &mut forms, false);
                    rows.blind.extend(
                        forms
                            .into_iter()
                            .map(|f| (p.pid, format!("{}{f}", tag::REF_IDENTIFIER))),
                    );
                }
            }
            _ => {}
        }
    }

    fn composite(
        &self,
        p: &Param,
        ctx: &EvalContext<'_>,
        items: &[Item<'_>],
        rows: &mut IndexRows,
    ) {
        let Some((last, init)) = p.components.split_last() else {
            return;
        };
        if init.iter().any(|c| !is_keyed(c.param_type)) {
            return; // only the last component may be a range (see `plan`)
        }
        for item in items {
            // The forms of each keyed component, then the rows of the last one.
            let mut keys: Vec<String> = vec![String::new()];
            for c in init {
                let forms = self.component_forms(c.param_type, ctx, &c.expression, item);
                keys = combine(&keys, &forms);
                if keys.is_empty() {
                    break;
                }
            }
            if keys.is_empty() {
                continue;
            }
            let Ok(values) = last
                .expression
                .evaluate_items(ctx, std::slice::from_ref(item))
            else {
                continue;
            };
            for v in &values {
                let (ty, json) = match v {
                    Item::Node(n) => match n.json {
                        Some(j) => (n.ty, j.clone()),
                        None => continue,
                    },
                    other => ("", other.to_json()),
                };
                let ranges: Vec<(String, f64, f64)> = match last.param_type {
                    ParamType::Quantity => quantity_rows(&json),
                    ParamType::Number => number_ranges(&json)
                        .into_iter()
                        .map(|(lo, hi)| (String::new(), lo, hi))
                        .collect(),
                    ParamType::Date => date_ranges(&json)
                        .into_iter()
                        .map(|(lo, hi)| (String::new(), lo as f64, hi as f64))
                        .collect(),
                    other => self
                        .keyed_forms(other, ty, &json)
                        .into_iter()
                        .map(|f| (f, 0.0, 0.0))
                        .collect(),
                };
                for k in &keys {
                    for (unit, lo, hi) in ranges.iter().take(MAX_COMPOSITE_COMBINATIONS) {
                        rows.numbers.push((
                            p.pid,
                            Some(format!("{}{k}${unit}", tag::COMPOSITE)),
                            *lo,
                            *hi,
                        ));
                    }
                }
            }
        }
    }

    fn component_forms(
        &self,
        ptype: ParamType,
        ctx: &EvalContext<'_>,
        expr: &crate::fhirpath::Expression,
        item: &Item<'_>,
    ) -> Vec<String> {
        let Ok(values) = expr.evaluate_items(ctx, std::slice::from_ref(item)) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for v in &values {
            match v {
                Item::Node(n) => {
                    if let Some(j) = n.json {
                        out.extend(self.keyed_forms(ptype, n.ty, j));
                    }
                }
                other => out.extend(self.keyed_forms(ptype, "", &other.to_json())),
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The forms a token, string, reference or uri component contributes to a
    /// composite key (exact forms only: composites match whole values).
    pub fn keyed_forms(&self, ptype: ParamType, ty: &str, json: &Value) -> Vec<String> {
        let mut out = Vec::new();
        match ptype {
            ParamType::Token => {
                // `system|` alone is not a form composite values are searched by.
                token_forms(ty, json, &mut out, false);
                out.retain(|f| !f.starts_with(tag::SYSTEM));
            }
            ParamType::String => {
                for s in string_parts(ty, json) {
                    out.push(format!("v:{}", values::fold(s)));
                }
            }
            ParamType::Uri => {
                if let Some(s) = json.as_str() {
                    out.push(format!("u:{s}"));
                }
            }
            ParamType::Reference => {
                let r = json
                    .get("reference")
                    .and_then(Value::as_str)
                    .or_else(|| json.as_str());
                if let Some(r) = r {
                    let is_type = |t: &str| self.model.is_resource_type(t);
                    match values::parse_reference(r, self.base_url, is_type) {
                        Some(RefParts::Local { resource_type, id }) => {
                            out.push(format!("r:{resource_type}/{id}"));
                            out.push(format!("r:{id}"));
                        }
                        Some(RefParts::Url(u)) => out.push(format!("r:{u}")),
                        None => {}
                    }
                }
            }
            _ => {}
        }
        out
    }
}

/// Component types folded into a composite's key (not ranges).
pub fn is_keyed(t: ParamType) -> bool {
    matches!(
        t,
        ParamType::Token | ParamType::String | ParamType::Reference | ParamType::Uri
    )
}

fn combine(prefixes: &[String], forms: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for p in prefixes {
        for f in forms {
            if out.len() >= MAX_COMPOSITE_COMBINATIONS {
                return out;
            }
            out.push(if p.is_empty() {
                f.clone()
            } else {
                format!("{p}${f}")
            });
        }
    }
    out
}

/// The strings a string parameter indexes of a value (R4: HumanName and Address
/// by their parts; other complex values by their string elements).
fn string_parts<'a>(ty: &str, json: &'a Value) -> Vec<&'a str> {
    let mut out = Vec::new();
    match json {
        Value::String(s) => out.push(s.as_str()),
        Value::Object(o) => {
            let keys: &[&str] = match ty {
                "HumanName" => &["family", "given", "prefix", "suffix", "text"],
                "Address" => &[
                    "line",
                    "city",
                    "district",
                    "state",
                    "postalCode",
                    "country",
                    "text",
                ],
                _ => &[],
            };
            let mut push = |v: &'a Value| match v {
                Value::String(s) => out.push(s.as_str()),
                Value::Array(a) => out.extend(a.iter().filter_map(Value::as_str)),
                _ => {}
            };
            if keys.is_empty() {
                for (k, v) in o {
                    if k != "id" && k != "extension" && !k.starts_with('_') {
                        push(v);
                    }
                }
            } else {
                for k in keys {
                    if let Some(v) = o.get(*k) {
                        push(v);
                    }
                }
            }
        }
        _ => {}
    }
    out
}

fn phonetic_forms(json: &Value, out: &mut Vec<String>) {
    let mut parts: Vec<&str> = Vec::new();
    match json {
        Value::String(s) => parts.push(s),
        Value::Object(o) => {
            if let Some(f) = o.get("family").and_then(Value::as_str) {
                parts.push(f);
            }
            if let Some(g) = o.get("given").and_then(Value::as_array) {
                parts.extend(g.iter().filter_map(Value::as_str));
            }
        }
        _ => {}
    }
    for p in parts {
        for word in p.split_whitespace() {
            if let Some(k) = values::soundex(word) {
                out.push(format!("{}{k}", tag::PHONETIC));
            }
        }
    }
}

/// Token forms of a value (R4 search, token: Coding, CodeableConcept, Identifier,
/// ContactPoint, code, boolean, string, uri). `text` adds the `:text` forms.
pub fn token_forms(ty: &str, json: &Value, out: &mut Vec<String>, text: bool) {
    let mut code = |system: Option<&str>, code: &str, out: &mut Vec<String>| {
        if code.is_empty() {
            return;
        }
        out.push(format!("{}{code}", tag::CODE));
        match system {
            Some(s) if !s.is_empty() => {
                out.push(format!("{}{s}|{code}", tag::SYSTEM_CODE));
                out.push(format!("{}{s}", tag::SYSTEM));
            }
            _ => out.push(format!("{}{code}", tag::NO_SYSTEM)),
        }
    };
    match json {
        Value::String(s) => code(None, s, out),
        Value::Bool(b) => code(None, if *b { "true" } else { "false" }, out),
        Value::Number(n) => code(None, &n.to_string(), out),
        Value::Object(o) => {
            let s = |k: &str| o.get(k).and_then(Value::as_str);
            if ty == "CodeableConcept" || o.contains_key("coding") {
                for c in o
                    .get("coding")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    token_forms("Coding", c, out, text);
                }
                if text {
                    if let Some(t) = s("text") {
                        values::text_forms(t, out);
                    }
                }
                return;
            }
            match ty {
                "Identifier" => identifier_forms(o, out, text, &mut code),
                "" if o.contains_key("value") && !o.contains_key("code") => {
                    identifier_forms(o, out, text, &mut code)
                }
                "ContactPoint" => {
                    if let Some(v) = s("value") {
                        code(s("system"), v, out);
                    }
                }
                _ => {
                    // Coding (and anything shaped like one)
                    if let Some(c) = s("code").or_else(|| s("value")) {
                        code(s("system"), c, out);
                    }
                    if text {
                        if let Some(d) = s("display") {
                            values::text_forms(d, out);
                        }
                    }
                }
            }
        }
        _ => {}
    }
}

/// Identifier: `system|value`, and `type-system|type-code|value` for `:of-type`.
fn identifier_forms(
    o: &serde_json::Map<String, Value>,
    out: &mut Vec<String>,
    text: bool,
    code: &mut impl FnMut(Option<&str>, &str, &mut Vec<String>),
) {
    let s = |k: &str| o.get(k).and_then(Value::as_str);
    if let Some(v) = s("value") {
        code(s("system"), v, out);
        for t in o
            .get("type")
            .and_then(|t| t.get("coding"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ts = t.get("system").and_then(Value::as_str).unwrap_or("");
            let tc = t.get("code").and_then(Value::as_str).unwrap_or("");
            out.push(format!("{}{ts}|{tc}|{v}", tag::OF_TYPE));
        }
    }
    if text {
        if let Some(t) = o
            .get("type")
            .and_then(|t| t.get("text"))
            .and_then(Value::as_str)
        {
            values::text_forms(t, out);
        }
    }
}

/// Date ranges of a value: date, dateTime, instant, Period, Timing.
pub fn date_ranges(json: &Value) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    match json {
        Value::String(s) => out.extend(values::date_range(s)),
        Value::Object(o) => {
            if o.contains_key("start") || o.contains_key("end") {
                // Period: an open end extends to the end of time.
                let lo = o
                    .get("start")
                    .and_then(Value::as_str)
                    .and_then(values::date_range)
                    .map_or(i64::MIN, |r| r.0);
                let hi = o
                    .get("end")
                    .and_then(Value::as_str)
                    .and_then(values::date_range)
                    .map_or(i64::MAX, |r| r.1);
                if lo <= hi {
                    out.push((lo, hi));
                }
            }
            // Timing: each event, and the bounds of the repeat.
            if let Some(events) = o.get("event").and_then(Value::as_array) {
                out.extend(
                    events
                        .iter()
                        .filter_map(Value::as_str)
                        .filter_map(values::date_range),
                );
            }
            if let Some(b) = o.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                out.extend(date_ranges(b));
            }
        }
        _ => {}
    }
    out
}

/// Number values: a decimal or integer as a point; a Range as its bounds.
pub fn number_ranges(json: &Value) -> Vec<(f64, f64)> {
    let num = |v: &Value| -> Option<f64> {
        match v {
            Value::Number(n) => n.to_string().parse().ok(),
            Value::String(s) => s.parse().ok(),
            _ => None,
        }
    };
    match json {
        Value::Number(_) | Value::String(_) => num(json).map(|v| vec![(v, v)]).unwrap_or_default(),
        Value::Object(o) => {
            if let Some(v) = o.get("value").and_then(num) {
                return vec![(v, v)];
            }
            let low = o.get("low").and_then(|l| l.get("value")).and_then(num);
            let high = o.get("high").and_then(|h| h.get("value")).and_then(num);
            match (low, high) {
                (None, None) => Vec::new(),
                (l, h) => vec![(l.unwrap_or(f64::MIN), h.unwrap_or(f64::MAX))],
            }
        }
        _ => Vec::new(),
    }
}

/// Quantity rows: (unit key, lo, hi) for any unit, `system|code`, the code or unit
/// alone, and the UCUM canonical form. Money counts its currency as the unit;
/// a Range is its low to its high.
pub fn quantity_rows(json: &Value) -> Vec<(String, f64, f64)> {
    let Some(o) = json.as_object() else {
        return Vec::new();
    };
    let num = |v: &Value| -> Option<f64> { v.as_number()?.to_string().parse().ok() };
    let mut out = Vec::new();
    if o.contains_key("low") || o.contains_key("high") {
        let lo_q = o.get("low");
        let hi_q = o.get("high");
        let lo = lo_q.and_then(|l| l.get("value")).and_then(num);
        let hi = hi_q.and_then(|h| h.get("value")).and_then(num);
        if lo.is_none() && hi.is_none() {
            return out;
        }
        let (lo, hi) = (lo.unwrap_or(f64::MIN), hi.unwrap_or(f64::MAX));
        let unit_of = lo_q.or(hi_q).unwrap_or(&Value::Null);
        unit_keys(unit_of, lo, hi, &mut out);
        return out;
    }
    let Some(v) = o.get("value").and_then(num) else {
        return out;
    };
    unit_keys(json, v, v, &mut out);
    out
}

fn unit_keys(q: &Value, lo: f64, hi: f64, out: &mut Vec<(String, f64, f64)>) {
    let s = |k: &str| q.get(k).and_then(Value::as_str);
    out.push((tag::ANY_UNIT.to_string(), lo, hi));
    if let Some(currency) = s("currency") {
        out.push((
            format!("{}urn:iso:std:iso:4217|{currency}", tag::UNIT_SYSTEM_CODE),
            lo,
            hi,
        ));
        out.push((format!("{}{currency}", tag::UNIT_CODE), lo, hi));
        return;
    }
    let (system, code, unit) = (s("system"), s("code"), s("unit"));
    if let (Some(system), Some(code)) = (system, code) {
        out.push((format!("{}{system}|{code}", tag::UNIT_SYSTEM_CODE), lo, hi));
    }
    for u in [code, unit].into_iter().flatten() {
        out.push((format!("{}{u}", tag::UNIT_CODE), lo, hi));
    }
    if system == Some(values::UCUM) {
        if let Some((factor, dims)) = code.and_then(values::ucum_canonical) {
            let scale = |v: f64| {
                if v == f64::MIN || v == f64::MAX {
                    v
                } else {
                    // A value near the bound of a double may leave it in base
                    // units: indexed at the bound (an infinity is not stored).
                    (v * factor).clamp(f64::MIN, f64::MAX)
                }
            };
            out.push((
                format!("{}{dims}", tag::UNIT_CANONICAL),
                scale(lo),
                scale(hi),
            ));
        }
    }
}
