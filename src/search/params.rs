//! The search parameters of each resource type: every SearchParameter of the loaded
//! packages (the first package defining a code for a type wins: the core comes
//! first), plus SearchParameter resources created through the API once their
//! reindex has run. Each is compiled once per resource type: its FHIRPath
//! expression reduced to the branches that can apply to that type (the core's
//! shared parameters are unions over 20-30 resource types; evaluating only the
//! applicable branch is about 4x faster, docs/benchmarks.md), its index key
//! (`pid`), its targets and composite components.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

use crate::fhir::Model;
use crate::fhirpath::{self, Expression};

/// The type of a search parameter (R4 `search-param-type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamType {
    Number,
    Date,
    String,
    Token,
    Reference,
    Composite,
    Quantity,
    Uri,
    Special,
}

impl ParamType {
    pub fn parse(s: &str) -> Option<ParamType> {
        Some(match s {
            "number" => ParamType::Number,
            "date" => ParamType::Date,
            "string" => ParamType::String,
            "token" => ParamType::Token,
            "reference" => ParamType::Reference,
            "composite" => ParamType::Composite,
            "quantity" => ParamType::Quantity,
            "uri" => ParamType::Uri,
            "special" => ParamType::Special,
            _ => return None,
        })
    }

    pub fn code(self) -> &'static str {
        match self {
            ParamType::Number => "number",
            ParamType::Date => "date",
            ParamType::String => "string",
            ParamType::Token => "token",
            ParamType::Reference => "reference",
            ParamType::Composite => "composite",
            ParamType::Quantity => "quantity",
            ParamType::Uri => "uri",
            ParamType::Special => "special",
        }
    }
}

/// One component of a composite parameter: the parameter it uses (its type) and
/// the expression relative to each item of the composite's expression.
#[derive(Debug)]
pub struct Component {
    pub param_type: ParamType,
    pub definition: String,
    pub expression: Arc<Expression>,
}

/// A search parameter compiled for one resource type.
#[derive(Debug)]
pub struct Param {
    pub code: String,
    /// The canonical URL of its SearchParameter.
    pub url: String,
    pub param_type: ParamType,
    /// The index key of (resource type, code).
    pub pid: i64,
    /// The expression, reduced to what applies to this type; None for parameters
    /// without one (`_query`, `_filter`) and the specially handled ones.
    pub expression: Option<Arc<Expression>>,
    /// Reference parameters: the resource types they may point at.
    pub targets: Vec<String>,
    pub components: Vec<Component>,
    /// Token parameters over `code` elements: the one code system their required
    /// binding draws from. A code such as `Patient.gender = male` is then indexed
    /// as `http://hl7.org/fhir/administrative-gender|male` too (R4 3.1.1.4.x: a
    /// code's system is implied by its binding), so `:in` and `system|code` work.
    pub implicit_system: Option<String>,
    /// Defined by a SearchParameter resource of the database (not a package).
    pub custom: bool,
    /// Indexed lean: without the `:contains` trigrams of strings and the `:text`
    /// prefixes of token displays and texts (see [`lean_type`]). Those modifiers
    /// are then decided after decryption, among the candidates the rest of the
    /// search selects.
    pub lean: bool,
}

/// The resource types indexed lean: AuditEvent, whose every read and write makes
/// one, so each index row costs on the hot path (the trigrams and `:text`
/// prefixes of its server-made addresses and code displays were two thirds of
/// its ~130 rows; docs/decisions.md).
pub fn lean_type(resource_type: &str) -> bool {
    resource_type == "AuditEvent"
}

impl Param {
    /// True for parameters answered from columns of the resource, not the index.
    pub fn is_builtin(&self) -> bool {
        matches!(self.code.as_str(), "_id" | "_lastUpdated")
    }
}

/// The key under which a parameter of a resource type is indexed: stable across
/// nodes and restarts without a lookup table (the first 8 bytes of a SHA-256).
pub fn pid(resource_type: &str, code: &str) -> i64 {
    let d = openssl::sha::sha256(format!("fhirgate:param:{resource_type}.{code}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&d[..8]);
    i64::from_be_bytes(b)
}

/// A SearchParameter resource from the database, with whether searches may use it.
#[derive(Debug, Clone)]
pub struct CustomParam {
    pub resource: Arc<Value>,
    pub active: bool,
}

/// The parameters of one resource type.
#[derive(Debug, Default)]
pub struct TypeParams {
    by_code: BTreeMap<String, Arc<Param>>,
    /// Custom parameters written to the index but not searchable until reindexed.
    pending: BTreeMap<String, Arc<Param>>,
}

impl TypeParams {
    pub fn get(&self, code: &str) -> Option<&Arc<Param>> {
        self.by_code.get(code)
    }

    /// A parameter that exists but is waiting for its reindex.
    pub fn pending(&self, code: &str) -> Option<&Arc<Param>> {
        self.pending.get(code)
    }

    /// Searchable parameters, by code.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Param>> {
        self.by_code.values()
    }

    /// Everything that is written to the index on each write: the searchable
    /// parameters and the pending ones.
    pub fn indexed(&self) -> impl Iterator<Item = &Arc<Param>> {
        self.by_code.values().chain(self.pending.values())
    }
}

/// Every resource type's parameters, compiled on first use.
pub struct Registry {
    model: Arc<Model>,
    terminology: Arc<crate::terminology::Terminology>,
    types: RwLock<HashMap<String, Arc<TypeParams>>>,
    custom: RwLock<Vec<CustomParam>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry").finish()
    }
}

impl Registry {
    pub fn new(model: Arc<Model>, terminology: Arc<crate::terminology::Terminology>) -> Registry {
        Registry {
            model,
            terminology,
            types: RwLock::new(HashMap::new()),
            custom: RwLock::new(Vec::new()),
        }
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    /// Replaces the custom parameters (after a reload from the database) and
    /// forgets the compiled types.
    pub fn set_custom(&self, custom: Vec<CustomParam>) {
        *self.custom.write() = custom;
        self.types.write().clear();
    }

    pub fn for_type(&self, resource_type: &str) -> Arc<TypeParams> {
        if let Some(p) = self.types.read().get(resource_type) {
            return p.clone();
        }
        let compiled = Arc::new(self.compile_type(resource_type));
        self.types
            .write()
            .insert(resource_type.to_string(), compiled.clone());
        compiled
    }

    /// The parameter `code` of a type, if searchable.
    pub fn param(&self, resource_type: &str, code: &str) -> Option<Arc<Param>> {
        self.for_type(resource_type).get(code).cloned()
    }

    fn compile_type(&self, resource_type: &str) -> TypeParams {
        let packages = self.model.packages();
        let mut out = TypeParams::default();
        let applies = |base: &[String]| {
            base.iter()
                .any(|b| b == resource_type || b == "Resource" || b == "DomainResource")
        };
        for (id, e) in packages.entries() {
            if e.resource_type != "SearchParameter" || !applies(&e.base) {
                continue;
            }
            let Some(code) = e.code.as_deref() else {
                continue;
            };
            if out.by_code.contains_key(code) {
                continue; // the first package defining a code wins
            }
            let Ok(sp) = packages.get(id) else { continue };
            if let Some(p) = self.compile_param(resource_type, &sp, false) {
                out.by_code.insert(code.to_string(), Arc::new(p));
            }
        }
        for c in self.custom.read().iter() {
            let base: Vec<String> = c
                .resource
                .get("base")
                .and_then(Value::as_array)
                .map(|b| {
                    b.iter()
                        .filter_map(|x| x.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if !applies(&base) {
                continue;
            }
            let Some(p) = self.compile_param(resource_type, &c.resource, true) else {
                continue;
            };
            let code = p.code.clone();
            if c.active {
                out.by_code.insert(code, Arc::new(p));
            } else if !out.by_code.contains_key(&code) {
                out.pending.insert(code, Arc::new(p));
            }
        }
        out
    }

    fn compile_param(&self, resource_type: &str, sp: &Value, custom: bool) -> Option<Param> {
        let code = sp.get("code")?.as_str()?.to_string();
        let param_type = ParamType::parse(sp.get("type")?.as_str()?)?;
        let url = sp
            .get("url")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let mut implicit_system = None;
        let expression = match sp.get("expression").and_then(Value::as_str) {
            Some(text) if !matches!(code.as_str(), "_id" | "_lastUpdated") => {
                let reduced = reduce_union(text, resource_type, &self.model);
                if reduced.trim().is_empty() {
                    return None; // no branch applies to this type
                }
                if param_type == ParamType::Token {
                    implicit_system = self.implicit_system(&reduced);
                }
                match fhirpath::compile(&reduced) {
                    Ok(e) => Some(e),
                    Err(err) => {
                        tracing::warn!(param = %code, resource.type = resource_type, error = %err, "a SearchParameter expression does not compile; the parameter is not available");
                        return None;
                    }
                }
            }
            _ => None,
        };
        let targets = sp
            .get("target")
            .and_then(Value::as_array)
            .map(|t| {
                t.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let mut components = Vec::new();
        if param_type == ParamType::Composite {
            for c in sp
                .get("component")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let definition = c.get("definition").and_then(Value::as_str)?.to_string();
                let expr = c.get("expression").and_then(Value::as_str)?;
                let def = self.model.packages().resolve(&definition)?;
                let ptype = ParamType::parse(def.get("type").and_then(Value::as_str)?)?;
                let expression = fhirpath::compile(expr).ok()?;
                components.push(Component {
                    param_type: ptype,
                    definition,
                    expression,
                });
            }
            if components.len() < 2 {
                return None;
            }
        }
        Some(Param {
            pid: pid(resource_type, &code),
            code,
            url,
            param_type,
            expression,
            targets,
            components,
            implicit_system,
            custom,
            lean: lean_type(resource_type),
        })
    }

    /// The code system implied for a token expression made of plain element paths
    /// (`Patient.gender`) whose elements are `code`s bound (required) to a value set
    /// drawn from one code system.
    fn implicit_system(&self, expression: &str) -> Option<String> {
        let mut found: Option<String> = None;
        for branch in split_union(expression) {
            let path = branch.trim();
            if path.is_empty()
                || !path
                    .split('.')
                    .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
            {
                return None;
            }
            let type_name = path.split('.').next()?;
            let sd = self.model.packages().resolve(&format!(
                "http://hl7.org/fhir/StructureDefinition/{type_name}"
            ))?;
            let element = sd
                .pointer("/snapshot/element")?
                .as_array()?
                .iter()
                .find(|e| e.get("path").and_then(Value::as_str) == Some(path))?;
            let is_code = element
                .get("type")
                .and_then(Value::as_array)
                .is_some_and(|t| {
                    t.len() == 1 && t[0].get("code").and_then(Value::as_str) == Some("code")
                });
            let binding = element.get("binding")?;
            if !is_code || binding.get("strength").and_then(Value::as_str) != Some("required") {
                return None;
            }
            let vs = binding.get("valueSet").and_then(Value::as_str)?;
            let exp = self.terminology.expand(vs).ok()?;
            if !exp.is_complete() {
                return None;
            }
            let mut systems: Vec<&str> = exp.iter().map(|(s, _)| s).collect();
            systems.sort();
            systems.dedup();
            let [system] = systems.as_slice() else {
                return None;
            };
            match &found {
                Some(f) if f != system => return None,
                _ => found = Some(system.to_string()),
            }
        }
        found
    }
}

/// Splits an expression at its top-level `|` (outside parentheses, brackets and
/// string literals).
fn split_union(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start, mut quote) = (0i32, 0usize, None::<char>);
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if let Some(q) = quote {
            if c == '\\' {
                chars.next();
            } else if c == q {
                quote = None;
            }
            continue;
        }
        match c {
            '\'' | '"' | '`' => quote = Some(c),
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            '|' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// The union branches of `text` that can apply to `resource_type`: a branch that
/// starts with another resource type's name selects nothing from this one.
pub fn reduce_union(text: &str, resource_type: &str, model: &Model) -> String {
    let parts = split_union(text);
    if parts.len() == 1 {
        return text.to_string();
    }
    let kept: Vec<&str> = parts
        .into_iter()
        .filter(|p| {
            let head: String = p
                .trim_start()
                .trim_start_matches('(')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric())
                .collect();
            head == resource_type
                || head == "Resource"
                || head == "DomainResource"
                || !model.is_resource_type(&head)
        })
        .map(str::trim)
        .collect();
    kept.join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions_split_at_the_top_level_only() {
        assert_eq!(
            split_union("A.x | (B.y | C.z) | D.where(a = '|')"),
            vec!["A.x ", " (B.y | C.z) ", " D.where(a = '|')"]
        );
    }

    #[test]
    fn pids_differ_by_type_and_code() {
        assert_ne!(pid("Patient", "name"), pid("Practitioner", "name"));
        assert_eq!(pid("Patient", "name"), pid("Patient", "name"));
    }
}
