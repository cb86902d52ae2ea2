//! The FHIR additions to FHIRPath (FHIR R4 "FHIRPath" section 2.1.9.1): `extension(url)`,
//! `hasExtension(url)` (non-standard, used by a core SearchParameter), `hasValue()`, `getValue()`, `resolve()` (contained resources, Bundle entries, then the host's
//! resolver), `memberOf()`, `conformsTo()`, `subsumes()`/`subsumedBy()` (host callbacks),
//! `htmlChecks()` (the narrative rules of invariant txt-1), `elementDefinition()`, `slice()`
//! and `checkModifiers()`.

use serde_json::Value;

use super::{boolean, opt_boolean, Call};
use crate::fhirpath::compile::Func;
use crate::fhirpath::error::Result;
use crate::fhirpath::narrative;
use crate::fhirpath::nav;
use crate::fhirpath::value::{Collection, Item, Node};

pub fn call<'a>(func: Func, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    let ev = c.ev;
    match func {
        // `hasExtension(url)` is not in FHIRPath, but a core R4 SearchParameter
        // (questionnaireresponse-extensions-QuestionnaireResponse-item-subject) uses it; it is
        // read as `extension(url).exists()`.
        Func::HasExtension => {
            let found = call(Func::Extension, c)?;
            boolean(!found.is_empty())
        }
        Func::Extension => {
            let Some(url) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            let mut exts = Vec::new();
            for it in c.input {
                nav::child(ev.model, it, "extension", &mut exts);
            }
            Ok(exts
                .into_iter()
                .filter(|e| match e {
                    Item::Node(n) => {
                        n.json.and_then(|j| j.get("url")).and_then(Value::as_str)
                            == Some(url.as_str())
                    }
                    _ => false,
                })
                .collect())
        }
        Func::HasValue => boolean(match c.input {
            [Item::Node(n)] => primitive_value(n).is_some(),
            _ => false,
        }),
        Func::GetValue => Ok(match c.input {
            [Item::Node(n)] if primitive_value(n).is_some() => {
                n.primitive(ev.model).into_iter().collect()
            }
            _ => Vec::new(),
        }),
        Func::Resolve => {
            let mut out = Vec::new();
            for it in c.input {
                let reference = match it {
                    Item::String(s) => Some(s.as_str().to_string()),
                    Item::Node(n) => match n.json {
                        Some(Value::String(s)) => Some(s.clone()),
                        Some(Value::Object(o)) => o
                            .get("reference")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        _ => None,
                    },
                    _ => None,
                };
                if let Some(r) = reference {
                    if let Some(v) = resolve(c, &r) {
                        out.push(Item::Node(nav::node(Some(v), None, "")));
                    }
                }
            }
            Ok(out)
        }
        Func::MemberOf => {
            let Some(vs) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            let [Item::Node(n)] = c.input else {
                return Ok(Vec::new());
            };
            let Some(json) = n.json else {
                return Ok(Vec::new());
            };
            let r = ev
                .ctx
                .services
                .member_of(json, n.ty, vs.as_str())
                .map_err(|m| c.error(m))?;
            opt_boolean(r)
        }
        Func::ConformsTo => {
            let Some(url) = c.arg_string(0)? else {
                return Ok(Vec::new());
            };
            let mut result = Vec::new();
            for it in c.input {
                if let Item::Node(Node {
                    json: Some(json),
                    ty,
                    ..
                }) = it
                {
                    let ok = ev
                        .ctx
                        .services
                        .conforms_to(json, ty, url.as_str())
                        .map_err(|m| c.error(m))?;
                    result.push(ok);
                }
            }
            match result.as_slice() {
                [] => Ok(Vec::new()),
                r => boolean(r.iter().all(|b| *b)),
            }
        }
        Func::Subsumes | Func::SubsumedBy => {
            let (Some(a), Some(b)) = (
                c.input.first().and_then(|i| coding(ev, i)),
                c.arg(0)?.first().and_then(|i| coding(ev, i)),
            ) else {
                return Ok(Vec::new());
            };
            if a.0 != b.0 && !a.0.is_empty() && !b.0.is_empty() {
                return boolean(false);
            }
            let system = if a.0.is_empty() { &b.0 } else { &a.0 };
            let (x, y) = if func == Func::Subsumes {
                (&a.1, &b.1)
            } else {
                (&b.1, &a.1)
            };
            if x == y {
                return boolean(true);
            }
            let r = ev
                .ctx
                .services
                .subsumes(system, x, y)
                .map_err(|m| c.error(m))?;
            opt_boolean(r)
        }
        Func::HtmlChecks | Func::HtmlChecks2 => {
            let [it] = c.input else {
                return if c.input.is_empty() {
                    Ok(Vec::new())
                } else {
                    Err(c.error("htmlChecks() expects a single narrative div"))
                };
            };
            let Some(text) = it.as_text(ev.model) else {
                return boolean(false);
            };
            boolean(narrative::html_checks(text.as_str()).is_ok())
        }
        Func::ElementDefinition => {
            let mut out = Vec::new();
            for it in c.input {
                if let Item::Node(n) = it {
                    if let Some(ed) = ev.ctx.services.element_definition(n.ty) {
                        out.push(Item::Node(nav::node(Some(ed), None, "ElementDefinition")));
                    }
                }
            }
            Ok(out)
        }
        Func::Slice => {
            let (Some(structure), Some(name)) = (c.arg_string(0)?, c.arg_string(1)?) else {
                return Ok(Vec::new());
            };
            let mut out = Vec::new();
            for it in c.input {
                if let Item::Node(Node {
                    json: Some(json),
                    ty,
                    ..
                }) = it
                {
                    if ev
                        .ctx
                        .services
                        .slice_matches(json, ty, structure.as_str(), name.as_str())
                        .map_err(|m| c.error(m))?
                    {
                        out.push(it.clone());
                    }
                }
            }
            Ok(out)
        }
        Func::CheckModifiers => {
            let allowed: Vec<String> = c
                .arg(0)?
                .iter()
                .filter_map(|i| i.as_text(ev.model).map(|t| t.as_str().to_string()))
                .collect();
            for it in c.input {
                if let Item::Node(Node {
                    json: Some(Value::Object(o)),
                    ..
                }) = it
                {
                    if let Some(Value::Array(mods)) = o.get("modifierExtension") {
                        for m in mods {
                            let url = m.get("url").and_then(Value::as_str).unwrap_or("");
                            if !allowed.iter().any(|a| a == url) {
                                return Err(c.error(format!("unknown modifier extension '{url}'")));
                            }
                        }
                    }
                }
            }
            Ok(c.input.to_vec())
        }
        _ => Err(c.error("internal: not a FHIR function")),
    }
}

/// The value of a primitive node (None for complex nodes and extension-only primitives).
fn primitive_value<'a>(n: &Node<'a>) -> Option<&'a Value> {
    match n.json {
        Some(Value::Object(_)) | Some(Value::Array(_)) | Some(Value::Null) | None => None,
        Some(v) => Some(v),
    }
}

/// (system, code) of a code, Coding or CodeableConcept item.
fn coding(ev: &crate::fhirpath::eval::Evaluator, it: &Item) -> Option<(String, String)> {
    match it {
        Item::Node(Node {
            json: Some(Value::Object(o)),
            ..
        }) => {
            let o = match o
                .get("coding")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
            {
                Some(Value::Object(first)) => first,
                _ => o,
            };
            Some((
                o.get("system")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
                o.get("code").and_then(Value::as_str)?.to_string(),
            ))
        }
        other => other
            .as_text(ev.model)
            .map(|t| (String::new(), t.as_str().to_string())),
    }
}

/// Finds the target of a reference: `#id` in the containing resource, an entry of the
/// enclosing Bundle (by fullUrl or `Type/id`), else the host resolver.
fn resolve<'a>(c: &Call<'_, 'a, '_>, reference: &str) -> Option<&'a Value> {
    let ev = c.ev;
    let resource: Option<&'a Value> = ev.ctx.resource.or_else(|| match ev.input.first() {
        Some(Item::Node(n)) => n.json,
        _ => None,
    });
    if let Some(id) = reference.strip_prefix('#') {
        let res = resource?;
        if id.is_empty() {
            return Some(res);
        }
        return res
            .get("contained")
            .and_then(Value::as_array)?
            .iter()
            .find(|r| r.get("id").and_then(Value::as_str) == Some(id));
    }
    let bundle = ev
        .ctx
        .root_resource
        .or(resource)
        .filter(|r| r.get("resourceType").and_then(Value::as_str) == Some("Bundle"));
    if let Some(entries) = bundle
        .and_then(|b| b.get("entry"))
        .and_then(Value::as_array)
    {
        for e in entries {
            let full = e.get("fullUrl").and_then(Value::as_str).unwrap_or("");
            let res = e.get("resource");
            if !full.is_empty() && full == reference {
                return res;
            }
            if let Some(r) = res {
                let rt = r.get("resourceType").and_then(Value::as_str).unwrap_or("");
                let id = r.get("id").and_then(Value::as_str).unwrap_or("");
                if !rt.is_empty() && !id.is_empty() {
                    let wanted = format!("{rt}/{id}");
                    if reference == wanted || reference.ends_with(&format!("/{wanted}")) {
                        return Some(r);
                    }
                }
            }
        }
    }
    ev.ctx.services.resolve(reference)
}
