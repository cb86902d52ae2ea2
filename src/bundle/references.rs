//! References between the entries of a Bundle (R4 bundle.html "Resolving
//! references in Bundles", http.html "Transaction processing rules"): every
//! `Reference.reference` and every `uri`, `url` and `canonical` element of a
//! resource, found by walking the JSON with the structure model (so contained
//! resources, extensions and primitive extensions are covered), and rewritten to
//! the identities the server gave the entries they point at.

use std::collections::HashMap;

use serde_json::{Map, Value};

use crate::fhir::model::{ElementDef, TypeDef};
use crate::fhir::Model;

/// What kind of element holds a value the walk visits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    /// `Reference.reference`.
    Reference,
    /// An element of type `uri`, `url` or `canonical`.
    Uri,
}

/// Visits every reference and uri-typed value of `resource` with its FHIRPath
/// location under `location`; `visit` returns a replacement for the value, or
/// `None` to leave it.
pub fn walk(
    model: &Model,
    resource: &mut Value,
    location: &str,
    visit: &mut dyn FnMut(Site, &str, &str) -> Option<String>,
) {
    let mut w = Walker {
        model,
        visit,
        path: location.to_string(),
    };
    w.resource(resource);
}

struct Walker<'a, 'v> {
    model: &'a Model,
    visit: &'v mut dyn FnMut(Site, &str, &str) -> Option<String>,
    /// The location of the element being walked; pushed and truncated.
    path: String,
}

impl Walker<'_, '_> {
    fn resource(&mut self, value: &mut Value) {
        let Some(obj) = value.as_object_mut() else {
            return;
        };
        let Some(rt) = obj.get("resourceType").and_then(Value::as_str) else {
            return;
        };
        let Ok(td) = self.model.type_def(rt) else {
            return;
        };
        self.object(&td, &td.name, obj);
    }

    fn object(&mut self, td: &TypeDef, node_path: &str, obj: &mut Map<String, Value>) {
        let Some(node) = td.node(node_path) else {
            return;
        };
        let is_reference = td.name == "Reference" && node_path == "Reference";
        for (key, value) in obj.iter_mut() {
            if key == "resourceType" {
                continue;
            }
            let len = self.path.len();
            self.path.push('.');
            self.path.push_str(key);
            if is_reference && key == "reference" {
                if let Value::String(r) = value {
                    if let Some(new) = (self.visit)(Site::Reference, r, &self.path) {
                        *r = new;
                    }
                }
            } else if key.starts_with('_') {
                // A primitive's extensions (`_birthDate`): an Element, or a list of them.
                if let Ok(element) = self.model.type_def("Element") {
                    self.each(value, &mut |w, item| {
                        if let Some(o) = item.as_object_mut() {
                            w.object(&element, "Element", o);
                        }
                    });
                }
            } else if let Some((el, chosen)) = node.child(key) {
                self.each(value, &mut |w, item| w.value(td, el, chosen, item));
            }
            self.path.truncate(len);
        }
    }

    /// Calls `f` on the value, or on each item of an array with its index in the path.
    fn each(&mut self, value: &mut Value, f: &mut dyn FnMut(&mut Self, &mut Value)) {
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter_mut().enumerate() {
                    let len = self.path.len();
                    self.path.push_str(&format!("[{i}]"));
                    f(self, item);
                    self.path.truncate(len);
                }
            }
            other => f(self, other),
        }
    }

    fn value(&mut self, td: &TypeDef, el: &ElementDef, chosen: Option<&str>, value: &mut Value) {
        if let Some(inline) = &el.inline {
            if let Some(o) = value.as_object_mut() {
                self.object(td, inline, o);
            }
            return;
        }
        let Some(t) = chosen.or_else(|| el.types.first().map(String::as_str)) else {
            return;
        };
        match t {
            "uri" | "url" | "canonical" => {
                if let Value::String(s) = value {
                    if let Some(new) = (self.visit)(Site::Uri, s, &self.path) {
                        *s = new;
                    }
                }
            }
            _ if t == "Resource" || self.model.is_resource_type(t) => self.resource(value),
            _ => {
                let Some(o) = value.as_object_mut() else {
                    return; // another primitive
                };
                if let Ok(ctd) = self.model.type_def(t) {
                    self.object(&ctd, &ctd.name, o);
                }
            }
        }
    }
}

/// A reference as written, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefForm<'a> {
    /// `#id`: a contained resource.
    Contained,
    /// `urn:uuid:...` or `urn:oid:...`: an entry of this Bundle, or nothing.
    Placeholder(&'a str),
    /// `Patient?identifier=...`: the one resource the criteria match.
    Conditional {
        resource_type: &'a str,
        criteria: &'a str,
    },
    /// `Patient/123` (possibly with `/_history/2`).
    Relative { resource_type: &'a str, id: &'a str },
    /// Anything else (an absolute URL, a logical reference by URL).
    Other,
}

/// Classifies a `Reference.reference` value.
pub fn classify<'a>(model: &Model, value: &'a str) -> RefForm<'a> {
    if value.starts_with('#') {
        return RefForm::Contained;
    }
    if value.starts_with("urn:uuid:") || value.starts_with("urn:oid:") {
        return RefForm::Placeholder(value);
    }
    if let Some((t, criteria)) = value.split_once('?') {
        if !t.contains('/') && model.is_resource_type(t) {
            return RefForm::Conditional {
                resource_type: t,
                criteria,
            };
        }
        return RefForm::Other;
    }
    let mut parts = value.split('/');
    match (parts.next(), parts.next()) {
        (Some(t), Some(id)) if model.is_resource_type(t) && !id.is_empty() => RefForm::Relative {
            resource_type: t,
            id,
        },
        _ => RefForm::Other,
    }
}

/// The base of a RESTful URL `[base]/[type]/[id]` (`http://a/fhir` of
/// `http://a/fhir/Patient/1`); None for placeholders and other URLs.
pub fn restful_base<'a>(model: &Model, url: &'a str) -> Option<&'a str> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return None;
    }
    let (rest, id) = url.rsplit_once('/')?;
    let (base, t) = rest.rsplit_once('/')?;
    (!id.is_empty() && model.is_resource_type(t)).then_some(base)
}

/// The identities of a Bundle's entries by their `fullUrl`, and the targets of
/// its conditional references, once the server has decided them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Identities {
    /// fullUrl -> (type, id).
    pub by_full_url: HashMap<String, (String, String)>,
    /// `Type?criteria` as written -> id of the one match.
    pub conditional: HashMap<String, String>,
}

/// Why a reference could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unresolved {
    /// A `urn:uuid:`/`urn:oid:` that is no entry's fullUrl.
    Placeholder(String),
    /// A conditional reference left unresolved (the caller reports why).
    Conditional(String),
}

impl Identities {
    /// The new value of a `Reference.reference` (None: keep it) in an entry whose
    /// fullUrl has the RESTful base `entry_base` (or the server's base).
    pub fn rewrite_reference(
        &self,
        model: &Model,
        value: &str,
        entry_base: &str,
    ) -> Result<Option<String>, Unresolved> {
        match classify(model, value) {
            RefForm::Contained | RefForm::Other => Ok(self
                .by_full_url
                .get(value)
                .map(|(t, id)| format!("{t}/{id}"))),
            RefForm::Placeholder(p) => match self.by_full_url.get(p) {
                Some((t, id)) => Ok(Some(format!("{t}/{id}"))),
                None => Err(Unresolved::Placeholder(p.to_string())),
            },
            RefForm::Conditional { resource_type, .. } => match self.conditional.get(value) {
                Some(id) => Ok(Some(format!("{resource_type}/{id}"))),
                None => Err(Unresolved::Conditional(value.to_string())),
            },
            RefForm::Relative { resource_type, id } => {
                // Only `Type/id`: a version-specific reference names a version that
                // exists elsewhere, not one this Bundle creates.
                if value.len() != resource_type.len() + 1 + id.len() {
                    return Ok(None);
                }
                let absolute = format!("{entry_base}/{value}");
                Ok(self
                    .by_full_url
                    .get(&absolute)
                    .filter(|(t, new_id)| t != resource_type || new_id != id)
                    .map(|(t, new_id)| format!("{t}/{new_id}")))
            }
        }
    }

    /// The new value of a `uri`/`url`/`canonical` element: the absolute URL of the
    /// entry it names (uri elements hold absolute URLs), or None to keep it.
    pub fn rewrite_uri(&self, value: &str, server_base: &str) -> Option<String> {
        self.by_full_url
            .get(value)
            .map(|(t, id)| format!("{server_base}/{t}/{id}"))
    }
}
