//! What is decided after decryption: string criteria the blind index only
//! approximates (starts-with beyond the indexed prefix length, `:contains`,
//! long `:text`), and the sort keys the database cannot order by because their
//! values are blind (strings, tokens, references).

use std::cmp::Ordering;

use serde_json::Value;

use super::extract::TypeStubs;
use super::params::{Param, ParamType};
use super::plan::{Check, StringTest};
use super::values;
use crate::fhir::Model;
use crate::fhirpath::{EvalContext, Item};
use crate::store::SortValue;

/// The JSON values a parameter selects from a resource, with their FHIR types.
fn selected(model: &Model, stubs: &TypeStubs, p: &Param, resource: &Value) -> Vec<(String, Value)> {
    let Some(expr) = &p.expression else {
        return Vec::new();
    };
    let mut ctx = EvalContext::new(model.path_model());
    ctx.resource = Some(resource);
    ctx.services = stubs;
    let Ok(items) = expr.evaluate(&ctx, resource) else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|i| match i {
            Item::Node(n) => n.json.map(|j| (n.ty.to_string(), j.clone())),
            other => Some((String::new(), other.to_json())),
        })
        .collect()
}

/// The strings of a value that string tests look at: HumanName and Address by
/// their parts (as extraction indexes them), the text and displays of a
/// CodeableConcept, the display of a Coding, else every string element.
fn strings_of(ty: &str, v: &Value, out: &mut Vec<String>) {
    let push = |x: &Value, out: &mut Vec<String>| match x {
        Value::String(s) => out.push(s.clone()),
        Value::Array(a) => out.extend(a.iter().filter_map(|s| s.as_str().map(str::to_string))),
        _ => {}
    };
    match (ty, v) {
        (_, Value::String(s)) => out.push(s.clone()),
        ("CodeableConcept", Value::Object(o)) => {
            if let Some(t) = o.get("text") {
                push(t, out);
            }
            for c in o
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                strings_of("Coding", c, out);
            }
        }
        (_, Value::Object(o)) => {
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
                "Coding" => &["display"],
                _ => &[],
            };
            for (k, x) in o {
                let wanted = if keys.is_empty() {
                    k != "id" && k != "extension" && !k.starts_with('_')
                } else {
                    keys.contains(&k.as_str())
                };
                if wanted {
                    push(x, out);
                }
            }
        }
        _ => {}
    }
}

fn passes(test: &StringTest, folded: &str) -> bool {
    match test {
        StringTest::Prefix(p) => folded.starts_with(p.as_str()),
        StringTest::Contains(c) => folded.contains(c.as_str()),
        StringTest::TextPrefix(p) => folded.starts_with(p.as_str()),
    }
}

/// True when every check holds for the resource (checks of parameters of other
/// resource types than this one's are skipped: their filter already applied).
pub fn checks_hold(model: &Model, stubs: &TypeStubs, checks: &[Check], resource: &Value) -> bool {
    let rt = resource
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    // Checks of one criterion are grouped per parameter pid; for a system search
    // a criterion carries one check per type.
    let mut by_criterion: Vec<&Check> = Vec::new();
    for c in checks {
        if c.param.pid == super::params::pid(rt, &c.param.code) {
            by_criterion.push(c);
        }
    }
    by_criterion.iter().all(|c| {
        let mut strings = Vec::new();
        for (ty, v) in selected(model, stubs, &c.param, resource) {
            strings_of(&ty, &v, &mut strings);
        }
        strings.iter().any(|s| {
            let f = values::fold(s);
            c.tests.iter().any(|t| passes(t, &f))
        })
    })
}

/// A sort key's value for one resource: the lowest value for ascending, the
/// highest for descending (R4 3.1.1.5.x).
pub fn sort_value(
    model: &Model,
    stubs: &TypeStubs,
    p: &Param,
    resource: &Value,
    descending: bool,
) -> SortValue {
    let mut vals: Vec<SortValue> = Vec::new();
    for (ty, v) in selected(model, stubs, p, resource) {
        match p.param_type {
            ParamType::String => {
                let mut s = Vec::new();
                strings_of(&ty, &v, &mut s);
                vals.extend(s.iter().map(|x| SortValue::Text(values::fold(x))));
            }
            ParamType::Token => {
                let code = match &v {
                    Value::String(s) => Some(s.clone()),
                    Value::Bool(b) => Some(b.to_string()),
                    Value::Object(o) => o
                        .get("coding")
                        .and_then(Value::as_array)
                        .and_then(|c| c.first())
                        .and_then(|c| c.get("code"))
                        .or_else(|| o.get("code"))
                        .or_else(|| o.get("value"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                    _ => None,
                };
                vals.extend(code.map(SortValue::Text));
            }
            ParamType::Reference => {
                let r = v
                    .get("reference")
                    .and_then(Value::as_str)
                    .or_else(|| v.as_str())
                    .map(str::to_string);
                vals.extend(r.map(SortValue::Text));
            }
            ParamType::Uri => vals.extend(v.as_str().map(|s| SortValue::Text(s.to_string()))),
            ParamType::Date => {
                for (lo, hi) in super::extract::date_ranges(&v) {
                    vals.push(SortValue::Int(if descending { hi } else { lo }));
                }
            }
            ParamType::Number => {
                for (lo, hi) in super::extract::number_ranges(&v) {
                    vals.push(SortValue::Float(if descending { hi } else { lo }));
                }
            }
            ParamType::Quantity => {
                for (k, lo, hi) in super::extract::quantity_rows(&v) {
                    if k == values::tag::ANY_UNIT {
                        vals.push(SortValue::Float(if descending { hi } else { lo }));
                    }
                }
            }
            ParamType::Composite | ParamType::Special => {}
        }
    }
    let pick = if descending {
        vals.into_iter().max_by(compare_values)
    } else {
        vals.into_iter().min_by(compare_values)
    };
    pick.unwrap_or(SortValue::Null)
}

/// Orders sort values of one key; NULL sorts after everything.
pub fn compare_values(a: &SortValue, b: &SortValue) -> Ordering {
    use SortValue::*;
    match (a, b) {
        (Null, Null) => Ordering::Equal,
        (Null, _) => Ordering::Greater,
        (_, Null) => Ordering::Less,
        (Int(x), Int(y)) => x.cmp(y),
        (Float(x), Float(y)) => x.total_cmp(y),
        (Int(x), Float(y)) => (*x as f64).total_cmp(y),
        (Float(x), Int(y)) => x.total_cmp(&(*y as f64)),
        (Text(x), Text(y)) => x.cmp(y),
        (Text(_), _) => Ordering::Greater,
        (_, Text(_)) => Ordering::Less,
    }
}

/// Orders rows by their keys (each ascending or descending, NULLs last) and then
/// by rid, as the database does for the keys it can sort.
pub fn compare_rows(
    a: (&[SortValue], i64),
    b: (&[SortValue], i64),
    descending: &[bool],
) -> Ordering {
    for (i, desc) in descending.iter().enumerate() {
        let (x, y) = (&a.0[i], &b.0[i]);
        let o = match (x, y) {
            (SortValue::Null, _) | (_, SortValue::Null) => compare_values(x, y),
            _ if *desc => compare_values(y, x),
            _ => compare_values(x, y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    a.1.cmp(&b.1)
}
