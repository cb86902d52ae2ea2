//! Search parameters as far as this build needs them: token values extracted on
//! write (every token SearchParameter of the loaded packages, by its FHIRPath
//! expression) into the blind index, and the criteria of conditional create
//! (`If-None-Exist`: `_id` and token parameters).
//!
//! Architecture invariant: search knows nothing of HTTP; it hands the store
//! plain values ([`TokenValue`], [`Condition`]) and the store blinds them.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

use crate::fhir::Model;
use crate::fhirpath::{self, EvalContext, Expression};
use crate::store::{Condition, TokenValue};

/// A token search parameter of one resource type, compiled.
struct TokenParam {
    code: String,
    expression: Arc<Expression>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CriteriaError {
    #[error("the criteria are empty")]
    Empty,
    #[error("`{0}` is not a search parameter of {1} that conditional create supports in this build (it supports _id and token parameters)")]
    Unsupported(String, String),
    #[error("modifiers (`{0}`) are not supported in conditional criteria")]
    Modifier(String),
    #[error("`{0}` has no value")]
    NoValue(String),
}

/// Token parameters per resource type, compiled on first use.
pub struct TokenIndex {
    model: Arc<Model>,
    params: RwLock<HashMap<String, Arc<Vec<TokenParam>>>>,
}

impl TokenIndex {
    pub fn new(model: Arc<Model>) -> TokenIndex {
        TokenIndex {
            model,
            params: RwLock::new(HashMap::new()),
        }
    }

    fn params_for(&self, resource_type: &str) -> Arc<Vec<TokenParam>> {
        if let Some(p) = self.params.read().get(resource_type) {
            return p.clone();
        }
        let packages = self.model.packages();
        let mut out: Vec<TokenParam> = Vec::new();
        for (id, e) in packages.entries() {
            if e.resource_type != "SearchParameter"
                || e.type_.as_deref() != Some("token")
                || !e
                    .base
                    .iter()
                    .any(|b| b == resource_type || b == "Resource" || b == "DomainResource")
            {
                continue;
            }
            let Some(code) = e.code.clone() else { continue };
            if out.iter().any(|p| p.code == code) {
                continue; // the first package defining a code wins
            }
            let Ok(sp) = packages.get(id) else { continue };
            let Some(text) = sp.get("expression").and_then(|x| x.as_str()) else {
                continue;
            };
            match fhirpath::compile(text) {
                Ok(expression) => out.push(TokenParam { code, expression }),
                Err(err) => {
                    tracing::warn!(param = %code, error = %err, "a token SearchParameter does not compile; it is not indexed")
                }
            }
        }
        let out = Arc::new(out);
        self.params
            .write()
            .insert(resource_type.to_string(), out.clone());
        out
    }

    /// The token values of a resource, for the blind index.
    pub fn extract(&self, resource_type: &str, resource: &Value) -> Vec<TokenValue> {
        let params = self.params_for(resource_type);
        let model = self.model.path_model();
        let ctx = EvalContext::new(model);
        let mut out = Vec::new();
        for p in params.iter() {
            let items = match p.expression.evaluate(&ctx, resource) {
                Ok(items) => items,
                Err(err) => {
                    tracing::debug!(param = %p.code, error = %err, "token extraction failed");
                    continue;
                }
            };
            for item in items.iter() {
                tokens_of(&p.code, &item.to_json(), &mut out);
            }
        }
        out.sort_by(|a, b| (&a.param, &a.system, &a.code).cmp(&(&b.param, &b.system, &b.code)));
        out.dedup();
        out
    }

    /// Parses `If-None-Exist` criteria (`identifier=sys|val&_id=x`).
    pub fn criteria(&self, resource_type: &str, query: &str) -> Result<Condition, CriteriaError> {
        let query = query.trim_start_matches('?');
        let params = self.params_for(resource_type);
        let mut cond = Condition::default();
        let mut normalised: Vec<String> = Vec::new();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            if name.contains(':') {
                return Err(CriteriaError::Modifier(name.into_owned()));
            }
            if value.is_empty() {
                return Err(CriteriaError::NoValue(name.into_owned()));
            }
            normalised.push(format!("{name}={value}"));
            if name == "_id" {
                let ids: Vec<String> = value.split(',').map(str::to_string).collect();
                cond.ids = Some(match cond.ids.take() {
                    Some(prev) => prev.into_iter().filter(|i| ids.contains(i)).collect(),
                    None => ids,
                });
                continue;
            }
            if !params.iter().any(|p| p.code == name) {
                return Err(CriteriaError::Unsupported(
                    name.into_owned(),
                    resource_type.to_string(),
                ));
            }
            let group = split_escaped(&value, ',')
                .into_iter()
                .map(|v| {
                    let parts = split_escaped(&v, '|');
                    match parts.as_slice() {
                        [system, code] if !system.is_empty() => TokenValue {
                            param: name.to_string(),
                            system: Some(system.clone()),
                            code: code.clone(),
                        },
                        [_, code] => TokenValue {
                            param: name.to_string(),
                            system: None,
                            code: code.clone(),
                        },
                        _ => TokenValue {
                            param: name.to_string(),
                            system: None,
                            code: v.clone(),
                        },
                    }
                })
                .collect();
            cond.tokens.push(group);
        }
        if normalised.is_empty() {
            return Err(CriteriaError::Empty);
        }
        normalised.sort();
        let digest =
            openssl::sha::sha256(format!("{resource_type}?{}", normalised.join("&")).as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest[..8]);
        cond.lock_key = i64::from_be_bytes(key);
        Ok(cond)
    }
}

/// Splits on `sep` unless escaped with `\` (FHIR search escaping), unescaping.
fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if let Some(last) = out.last_mut() {
                        last.push(n);
                    }
                }
            }
            c if c == sep => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// The tokens one FHIRPath result item stands for (FHIR search, token: Coding,
/// CodeableConcept, Identifier, ContactPoint, code, boolean, string, uri).
fn tokens_of(param: &str, v: &Value, out: &mut Vec<TokenValue>) {
    let push = |out: &mut Vec<TokenValue>, system: Option<&str>, code: &str| {
        if !code.is_empty() {
            out.push(TokenValue {
                param: param.to_string(),
                system: system.map(str::to_string),
                code: code.to_string(),
            });
        }
    };
    match v {
        Value::String(s) => push(out, None, s),
        Value::Bool(b) => push(out, None, if *b { "true" } else { "false" }),
        Value::Object(o) => {
            if let Some(codings) = o.get("coding").and_then(|c| c.as_array()) {
                for c in codings {
                    tokens_of(param, c, out);
                }
                return;
            }
            let system = o.get("system").and_then(|s| s.as_str());
            let code = o
                .get("code")
                .or_else(|| o.get("value"))
                .and_then(|c| c.as_str());
            if let Some(code) = code {
                // A token with a system is found both by `system|code` and by `code`.
                push(out, system, code);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaped_separators_stay_in_the_value() {
        assert_eq!(split_escaped(r"a\|b|c", '|'), vec!["a|b", "c"]);
        assert_eq!(split_escaped("x,y", ','), vec!["x", "y"]);
    }
}
