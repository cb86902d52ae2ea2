//! The structure model: each FHIR type compiled from its StructureDefinition
//! snapshot (from the loaded packages) into a tree of element definitions that
//! JSON checking, XML conversion and `_summary` walk. Types are compiled on first
//! use and cached, so start-up reads no StructureDefinition.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use parking_lot::RwLock;
use regex::Regex;
use serde_json::Value;

use crate::packages::{EntryId, PackageSet};

/// What a type is, from `StructureDefinition.kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeKind {
    Primitive,
    Complex,
    Resource,
    Logical,
}

/// How a primitive type is written in JSON (FHIR JSON, section "Primitive types").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Boolean,
    Integer,
    Decimal,
    String,
}

#[derive(Debug)]
pub struct PrimitiveInfo {
    pub json: JsonKind,
    /// The `regex` extension of the value element, anchored.
    pub regex: Option<Regex>,
}

/// One element of a type, as a child of its parent node.
#[derive(Debug, Clone)]
pub struct ElementDef {
    /// Name without `[x]`.
    pub name: String,
    pub min: u32,
    /// `max` is not "1": a JSON array.
    pub many: bool,
    /// A choice element (`value[x]`).
    pub choice: bool,
    /// Type codes, System types mapped to their FHIR names.
    pub types: Vec<String>,
    pub summary: bool,
    pub modifier: bool,
    /// Written as an XML attribute (`Element.id`, `Extension.url`).
    pub xml_attr: bool,
    /// Children defined inline (BackboneElement) or by `contentReference`: the path of
    /// the node in the same type that holds them.
    pub inline: Option<String>,
}

/// The children of one element path.
#[derive(Debug, Default)]
pub struct Node {
    pub elements: Vec<ElementDef>,
    /// JSON/XML name -> (element index, the type a choice name selects).
    lookup: HashMap<String, (usize, Option<String>)>,
}

impl Node {
    /// Resolves a JSON property or XML element name.
    pub fn child(&self, name: &str) -> Option<(&ElementDef, Option<&str>)> {
        self.lookup
            .get(name)
            .map(|(i, t)| (&self.elements[*i], t.as_deref()))
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.lookup.get(name).map(|(i, _)| *i)
    }
}

/// A compiled type.
#[derive(Debug)]
pub struct TypeDef {
    pub name: String,
    pub url: String,
    pub kind: TypeKind,
    pub is_abstract: bool,
    pub base: Option<String>,
    pub primitive: Option<PrimitiveInfo>,
    nodes: HashMap<String, Node>,
}

impl TypeDef {
    pub fn root(&self) -> &Node {
        // Every compiled type has its root node (possibly empty).
        self.nodes.get(&self.name).unwrap_or(&EMPTY_NODE)
    }

    pub fn node(&self, path: &str) -> Option<&Node> {
        self.nodes.get(path)
    }
}

static EMPTY_NODE: once_cell::sync::Lazy<Node> = once_cell::sync::Lazy::new(Node::default);

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("no StructureDefinition for type `{0}` in the loaded packages")]
    UnknownType(String),
    #[error("StructureDefinition {url}: {reason}")]
    BadDefinition { url: String, reason: String },
}

/// The FHIR types of the loaded packages.
pub struct Model {
    packages: Arc<PackageSet>,
    /// type name -> its defining StructureDefinition (derivation = specialization).
    definitions: HashMap<String, EntryId>,
    resource_types: BTreeSet<String>,
    compiled: RwLock<HashMap<String, Arc<TypeDef>>>,
    path_model: once_cell::sync::OnceCell<super::path_model::PathModel>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("types", &self.definitions.len())
            .finish()
    }
}

const FHIR_TYPE_EXT: &str = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type";
const REGEX_EXT: &str = "http://hl7.org/fhir/StructureDefinition/regex";

impl Model {
    pub fn new(packages: Arc<PackageSet>) -> Model {
        let mut definitions = HashMap::new();
        let mut resource_types = BTreeSet::new();
        for (id, e) in packages.entries() {
            // Base, Element and Resource have no derivation: they are the roots.
            if e.resource_type != "StructureDefinition"
                || !matches!(e.derivation.as_deref(), Some("specialization") | None)
            {
                continue;
            }
            let Some(t) = &e.type_ else { continue };
            // First loaded package wins: the core defines the core types.
            if definitions.contains_key(t) {
                continue;
            }
            definitions.insert(t.clone(), id);
            if e.kind.as_deref() == Some("resource") && !e.is_abstract {
                resource_types.insert(t.clone());
            }
        }
        Model {
            packages,
            definitions,
            resource_types,
            compiled: RwLock::new(HashMap::new()),
            path_model: once_cell::sync::OnceCell::new(),
        }
    }

    pub fn packages(&self) -> &Arc<PackageSet> {
        &self.packages
    }

    /// The model as the FHIRPath engine sees it, built on first use (it reads every
    /// StructureDefinition once, so start-up does not pay for it).
    pub fn path_model(&self) -> &super::path_model::PathModel {
        self.path_model
            .get_or_init(|| super::path_model::PathModel::load(&self.packages))
    }

    /// Concrete resource types (what may appear as `resourceType`).
    pub fn resource_types(&self) -> &BTreeSet<String> {
        &self.resource_types
    }

    pub fn is_resource_type(&self, name: &str) -> bool {
        self.resource_types.contains(name)
    }

    /// `name` as a checked resource type, if the model defines it.
    pub fn resource_type(&self, name: &str) -> Option<super::types::ResourceType> {
        self.is_resource_type(name)
            .then(|| super::types::ResourceType::known(name))
    }

    pub fn has_type(&self, name: &str) -> bool {
        self.definitions.contains_key(name)
    }

    /// The compiled type, compiling it on first use.
    pub fn type_def(&self, name: &str) -> Result<Arc<TypeDef>, ModelError> {
        if let Some(t) = self.compiled.read().get(name) {
            return Ok(t.clone());
        }
        let id = self
            .definitions
            .get(name)
            .ok_or_else(|| ModelError::UnknownType(name.to_string()))?;
        let sd = self
            .packages
            .get(*id)
            .map_err(|e| ModelError::BadDefinition {
                url: name.to_string(),
                reason: e.to_string(),
            })?;
        let compiled = Arc::new(compile(name, &sd)?);
        self.compiled
            .write()
            .insert(name.to_string(), compiled.clone());
        Ok(compiled)
    }
}

fn bad(url: &str, reason: impl Into<String>) -> ModelError {
    ModelError::BadDefinition {
        url: url.to_string(),
        reason: reason.into(),
    }
}

/// The FHIR name of an element type code; System types (on `id`, `value`, `url`)
/// are named by their `structuredefinition-fhir-type` extension.
pub(crate) fn type_code(t: &Value) -> Option<String> {
    let code = t.get("code")?.as_str()?;
    if let Some(system) = code.strip_prefix("http://hl7.org/fhirpath/System.") {
        let from_ext = t
            .get("extension")
            .and_then(|x| x.as_array())
            .and_then(|exts| {
                exts.iter().find_map(|e| {
                    (e.get("url")?.as_str()? == FHIR_TYPE_EXT)
                        .then(|| {
                            e.get("valueUrl")
                                .or_else(|| e.get("valueUri"))
                                .and_then(|v| v.as_str())
                        })
                        .flatten()
                })
            });
        return Some(match from_ext {
            Some(t) => t.to_string(),
            None => {
                let mut c = system.chars();
                match c.next() {
                    Some(f) => f.to_lowercase().collect::<String>() + c.as_str(),
                    None => return None,
                }
            }
        });
    }
    Some(code.to_string())
}

fn upper_first(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn compile(name: &str, sd: &Value) -> Result<TypeDef, ModelError> {
    let url = sd
        .get("url")
        .and_then(|v| v.as_str())
        .unwrap_or(name)
        .to_string();
    let kind = match sd.get("kind").and_then(|v| v.as_str()) {
        Some("primitive-type") => TypeKind::Primitive,
        Some("complex-type") => TypeKind::Complex,
        Some("resource") => TypeKind::Resource,
        Some("logical") => TypeKind::Logical,
        other => return Err(bad(&url, format!("unknown kind {other:?}"))),
    };
    let base = sd
        .get("baseDefinition")
        .and_then(|v| v.as_str())
        .and_then(|b| b.rsplit('/').next())
        .map(str::to_string);
    let elements = sd
        .pointer("/snapshot/element")
        .and_then(|v| v.as_array())
        .ok_or_else(|| bad(&url, "no snapshot"))?;

    let paths: BTreeSet<&str> = elements
        .iter()
        .filter_map(|e| e.get("path").and_then(|p| p.as_str()))
        .collect();
    let has_children = |path: &str| -> bool {
        paths
            .range(path..)
            .nth(1)
            .is_some_and(|p| p.starts_with(&format!("{path}.")))
    };

    let mut nodes: HashMap<String, Node> = HashMap::new();
    nodes.insert(name.to_string(), Node::default());
    let mut primitive_regex: Option<Regex> = None;
    for e in elements {
        let Some(path) = e.get("path").and_then(|p| p.as_str()) else {
            continue;
        };
        if e.get("sliceName").is_some() {
            continue;
        }
        let Some((parent, last)) = path.rsplit_once('.') else {
            continue; // the root
        };
        let types: Vec<String> = e
            .get("type")
            .and_then(|t| t.as_array())
            .map(|ts| ts.iter().filter_map(type_code).collect())
            .unwrap_or_default();
        if kind == TypeKind::Primitive && path == format!("{name}.value") {
            let rx = e
                .pointer("/type/0/extension")
                .and_then(|x| x.as_array())
                .and_then(|exts| {
                    exts.iter().find_map(|x| {
                        (x.get("url")?.as_str()? == REGEX_EXT)
                            .then(|| x.get("valueString").and_then(|v| v.as_str()))
                            .flatten()
                    })
                });
            if let Some(rx) = rx {
                primitive_regex = Some(
                    Regex::new(&format!("^(?:{})$", java_classes(rx)))
                        .map_err(|err| bad(&url, format!("regex of {path}: {err}")))?,
                );
            }
        }
        let choice = last.ends_with("[x]");
        let el_name = last.trim_end_matches("[x]").to_string();
        let max = e.get("max").and_then(|m| m.as_str()).unwrap_or("1");
        let inline = if let Some(cr) = e.get("contentReference").and_then(|c| c.as_str()) {
            Some(cr.trim_start_matches('#').to_string())
        } else if has_children(path) {
            Some(path.to_string())
        } else {
            None
        };
        let xml_attr = e
            .get("representation")
            .and_then(|r| r.as_array())
            .is_some_and(|r| r.iter().any(|x| x.as_str() == Some("xmlAttr")));
        let def = ElementDef {
            name: el_name.clone(),
            min: e.get("min").and_then(|m| m.as_u64()).unwrap_or(0) as u32,
            many: max != "1" && max != "0",
            choice,
            types,
            summary: e
                .get("isSummary")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            modifier: e
                .get("isModifier")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            xml_attr,
            inline,
        };
        let node = nodes.entry(parent.to_string()).or_default();
        let index = node.elements.len();
        if choice {
            for t in &def.types {
                node.lookup.insert(
                    format!("{el_name}{}", upper_first(t)),
                    (index, Some(t.clone())),
                );
            }
        } else {
            node.lookup.insert(el_name, (index, None));
        }
        node.elements.push(def);
    }
    let primitive = (kind == TypeKind::Primitive).then(|| PrimitiveInfo {
        json: match name {
            "boolean" => JsonKind::Boolean,
            "integer" | "positiveInt" | "unsignedInt" => JsonKind::Integer,
            "decimal" => JsonKind::Decimal,
            _ => JsonKind::String,
        },
        regex: primitive_regex,
    });
    Ok(TypeDef {
        name: name.to_string(),
        url,
        kind,
        is_abstract: sd
            .get("abstract")
            .and_then(|v| v.as_bool())
            .unwrap_or(false),
        base,
        primitive,
        nodes,
    })
}

/// The StructureDefinition regexes are written for Java (XML Schema) engines, where
/// `\s`, `\S`, `\d` and `\w` are ASCII classes; in the `regex` crate they are
/// Unicode classes (a no-break space would count as white space). Spell them out.
fn java_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('s') => out.push_str("[ \\t\\n\\x0B\\f\\r]"),
            Some('S') => out.push_str("[^ \\t\\n\\x0B\\f\\r]"),
            Some('d') => out.push_str("[0-9]"),
            Some('D') => out.push_str("[^0-9]"),
            Some('w') => out.push_str("[A-Za-z0-9_]"),
            Some('W') => out.push_str("[^A-Za-z0-9_]"),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_white_space_classes_are_ascii_only() {
        let rx = Regex::new(&format!("^(?:{})$", java_classes(r"[ \r\n\t\S]+"))).unwrap();
        assert!(rx.is_match("a\u{a0}b"));
        assert!(rx.is_match("a b"));
        let rx = Regex::new(&format!("^(?:{})$", java_classes(r"\S*"))).unwrap();
        assert!(rx.is_match("x\u{a0}y"));
        assert!(!rx.is_match("x y"));
    }
}
