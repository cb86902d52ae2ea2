//! Navigation over FHIR JSON: children by element name with FHIR's JSON conventions (choice
//! elements `value[x]` stored as `valueQuantity` and reached as `value`; primitives split into
//! `name` and `_name` holding id/extension; arrays flattened; contained and bundled resources
//! typed by their `resourceType`), all children, and type tests for `is`/`as`/`ofType`.

use serde_json::{Map, Value};

use super::compile::TypeRef;
use super::model::{is_a, ModelInfo};
use super::value::{Collection, Item, Node, Text};

/// A node for a JSON value of declared type `ty`; objects carrying `resourceType` take it.
pub fn node<'a>(json: Option<&'a Value>, ext: Option<&'a Value>, ty: &'a str) -> Node<'a> {
    let ty = match json {
        Some(Value::Object(o)) => match o.get("resourceType") {
            Some(Value::String(rt)) => rt.as_str(),
            _ => ty,
        },
        _ => ty,
    };
    Node { json, ext, ty }
}

/// Whether a JSON key suffix (`Quantity`, `String`) names type code `ty` (`Quantity`,
/// `string`): equal except for the case of the first letter.
fn suffix_matches(suffix: &str, ty: &str) -> bool {
    let (mut a, mut b) = (suffix.chars(), ty.chars());
    match (a.next(), b.next()) {
        (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y) => a.as_str() == b.as_str(),
        _ => false,
    }
}

/// Pushes the values stored under `key` (and `_key`) as nodes of type `ty`. The `_key`
/// companion is looked up even when it is the object's only property: a primitive may have an
/// extension and no value (`"timingTiming": {"_event": [{"extension": [...]}]}`).
fn push_key<'a>(obj: &'a Map<String, Value>, key: &str, ty: &'a str, out: &mut Collection<'a>) {
    let value = obj.get(key);
    let mut k = String::with_capacity(key.len() + 1);
    k.push('_');
    k.push_str(key);
    let ext = obj.get(&k);
    push_values(value, ext, ty, out);
}

fn push_values<'a>(
    value: Option<&'a Value>,
    ext: Option<&'a Value>,
    ty: &'a str,
    out: &mut Collection<'a>,
) {
    match (value, ext) {
        (Some(Value::Array(vs)), e) => {
            let es = e.and_then(Value::as_array);
            for (i, v) in vs.iter().enumerate() {
                let e = es.and_then(|es| es.get(i)).filter(|e| !e.is_null());
                if v.is_null() && e.is_none() {
                    continue;
                }
                let v = if v.is_null() { None } else { Some(v) };
                out.push(Item::Node(node(v, e, ty)));
            }
        }
        (None, Some(Value::Array(es))) => {
            for e in es.iter().filter(|e| !e.is_null()) {
                out.push(Item::Node(node(None, Some(e), ty)));
            }
        }
        (Some(Value::Null), None) | (None, None) => {}
        (v, e) => {
            let v = v.filter(|v| !v.is_null());
            out.push(Item::Node(node(v, e, ty)));
        }
    }
}

/// The object holding a node's children: the JSON object itself, or for a primitive the `_x`
/// companion (which holds `id` and `extension`).
fn children_object<'a>(n: &Node<'a>) -> Option<&'a Map<String, Value>> {
    match n.json {
        Some(Value::Object(o)) => Some(o),
        _ => n.ext.and_then(Value::as_object),
    }
}

/// Appends the children called `name` of `item` to `out`.
pub fn child<'a>(model: &'a dyn ModelInfo, item: &Item<'a>, name: &str, out: &mut Collection<'a>) {
    let n = match item {
        Item::Node(n) => n,
        Item::TypeInfo(ns, tn) => {
            match name {
                "namespace" => out.push(Item::String(Text::Borrowed(ns))),
                "name" => out.push(Item::String(tn.clone())),
                _ => {}
            }
            return;
        }
        _ => return,
    };
    let Some(obj) = children_object(n) else {
        return;
    };
    if !n.ty.is_empty() {
        if let Some(info) = model.child(n.ty, name) {
            if info.choice {
                // `out` already holds the children of earlier items of the input collection
                let start = out.len();
                for (k, v) in obj {
                    if let Some(suffix) = k.strip_prefix(name) {
                        if let Some(t) = info.types.iter().find(|t| suffix_matches(suffix, t)) {
                            let ext = obj.get(&format!("_{k}"));
                            push_values(Some(v), ext, t, out);
                        }
                    }
                }
                // a choice primitive with only an extension (`_valueString`)
                if out.len() == start {
                    for (k, e) in obj {
                        if let Some(suffix) = k.strip_prefix('_').and_then(|k| k.strip_prefix(name))
                        {
                            if let Some(t) = info.types.iter().find(|t| suffix_matches(suffix, t)) {
                                if !obj.contains_key(&k[1..]) {
                                    push_values(None, Some(e), t, out);
                                }
                            }
                        }
                    }
                }
                return;
            }
            let ty = info.types.first().map(String::as_str).unwrap_or("");
            push_key(obj, name, ty, out);
            return;
        }
        if model.is_type(n.ty) || model.base_type(n.ty).is_some() {
            // known type without this child: nothing (FHIRPath: empty, not an error)
            return;
        }
    }
    // no type information: navigate by key
    if obj.contains_key(name) || obj.contains_key(&format!("_{name}")) {
        push_key(obj, name, "", out);
        return;
    }
    for (k, v) in obj {
        if let Some(suffix) = k.strip_prefix(name) {
            if suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                push_values(Some(v), obj.get(&format!("_{k}")), "", out);
            }
        }
    }
}

/// Appends all children of `item` (every element, choice elements typed) to `out`.
pub fn children<'a>(model: &'a dyn ModelInfo, item: &Item<'a>, out: &mut Collection<'a>) {
    let Item::Node(n) = item else {
        return;
    };
    let Some(obj) = children_object(n) else {
        return;
    };
    for (k, v) in obj {
        if k == "resourceType" {
            continue;
        }
        if let Some(base) = k.strip_prefix('_') {
            if obj.contains_key(base) {
                continue;
            }
            let ty = element_type(model, n.ty, base);
            push_values(None, Some(v), ty, out);
            continue;
        }
        let ext = obj.get(&format!("_{k}"));
        let ty = element_type(model, n.ty, k);
        push_values(Some(v), ext, ty, out);
    }
}

/// The type of the element stored under JSON key `key` of a value of type `parent`.
fn element_type<'a>(model: &'a dyn ModelInfo, parent: &str, key: &str) -> &'a str {
    if parent.is_empty() {
        return "";
    }
    if let Some(info) = model.child(parent, key) {
        if !info.choice {
            return info.types.first().map(String::as_str).unwrap_or("");
        }
    }
    // choice: split at each upper-case letter
    for (i, c) in key.char_indices().skip(1) {
        if c.is_ascii_uppercase() {
            if let Some(info) = model.child(parent, &key[..i]) {
                if info.choice {
                    let suffix = &key[i..];
                    if let Some(t) = info.types.iter().find(|t| suffix_matches(suffix, t)) {
                        return t;
                    }
                }
            }
        }
    }
    ""
}

/// The FHIR type name of a node as `type()` reports it. Inline backbone elements carry their
/// element path (`Patient.contact`) as internal type name, so that navigation finds their
/// children; their FHIR type is the `BackboneElement` or `Element` that path derives from.
pub fn node_type<'a>(model: &'a dyn ModelInfo, n: &Node<'a>) -> &'a str {
    let mut t = n.ty;
    for _ in 0..8 {
        if !t.contains('.') {
            break;
        }
        match model.base_type(t) {
            Some(b) => t = b,
            None => break,
        }
    }
    t
}

/// `is` test of one item against a type. `exact` (for `as`/`ofType` on primitive types) does
/// not accept derived types.
pub fn type_matches(model: &dyn ModelInfo, item: &Item, t: &TypeRef, exact: bool) -> bool {
    match item {
        Item::Node(n) => {
            if t.namespace.as_deref() == Some("System") {
                return false;
            }
            if n.ty.is_empty() {
                // no type information: only resource types can be recognised
                return false;
            }
            if n.ty == t.name {
                return true;
            }
            if exact && model.is_primitive(&t.name) {
                return false;
            }
            is_a(model, n.ty, &t.name)
        }
        other => {
            if t.namespace.as_deref() == Some("FHIR") {
                return false;
            }
            match (other.sys_type(), t.system) {
                (Some(a), Some(b)) => a == b,
                _ => false,
            }
        }
    }
}

/// Whether a type name is known (System type or model type).
pub fn type_known(model: &dyn ModelInfo, t: &TypeRef) -> bool {
    match t.namespace.as_deref() {
        Some("System") => true,
        Some("FHIR") => model.is_type(&t.name) || !model.is_type("Element"),
        _ => t.system.is_some() || model.is_type(&t.name) || !model.is_type("Element"),
    }
}
