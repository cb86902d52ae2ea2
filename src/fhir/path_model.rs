//! The structure model as FHIRPath sees it ([`ModelInfo`]): every type's children
//! with inline BackboneElements named by their path (`Patient.contact`), built in
//! one pass over the StructureDefinitions of the loaded packages, on first use.

use std::collections::{HashMap, HashSet};

use serde_json::Value;

use crate::fhirpath::{ChildInfo, ModelInfo};
use crate::packages::PackageSet;

struct Child {
    types: Vec<String>,
    many: bool,
    choice: bool,
}

/// Type information compiled from the StructureDefinitions of one package.
#[derive(Default)]
pub struct PathModel {
    children: HashMap<String, HashMap<String, Child>>,
    order: HashMap<String, Vec<String>>,
    base: HashMap<String, String>,
    types: HashSet<String>,
    resources: HashSet<String>,
    primitives: HashSet<String>,
}

impl PathModel {
    pub fn load(packages: &PackageSet) -> PathModel {
        let mut m = PathModel::default();
        let definitions = packages
            .entries()
            .filter(|(_, e)| {
                e.resource_type == "StructureDefinition"
                    && e.derivation.as_deref() != Some("constraint")
            })
            .filter_map(|(id, _)| packages.get(id).ok());
        for sd in definitions {
            if sd.get("resourceType").and_then(Value::as_str) != Some("StructureDefinition") {
                continue;
            }
            let kind = sd.get("kind").and_then(Value::as_str).unwrap_or("");
            if !matches!(kind, "primitive-type" | "complex-type" | "resource") {
                continue;
            }
            if sd.get("derivation").and_then(Value::as_str) == Some("constraint") {
                continue;
            }
            let Some(ty) = sd.get("type").and_then(Value::as_str) else {
                continue;
            };
            let ty = ty.to_string();
            m.types.insert(ty.clone());
            if kind == "resource" {
                m.resources.insert(ty.clone());
            }
            if kind == "primitive-type" {
                m.primitives.insert(ty.clone());
            }
            if let Some(base) = sd.get("baseDefinition").and_then(Value::as_str) {
                if let Some(b) = base.rsplit('/').next() {
                    m.base.insert(ty.clone(), b.to_string());
                }
            }
            let elements = sd
                .get("snapshot")
                .and_then(|s| s.get("element"))
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for e in &elements {
                let Some(path) = e.get("path").and_then(Value::as_str) else {
                    continue;
                };
                let Some((parent, name)) = path.rsplit_once('.') else {
                    continue;
                };
                let parent_type = if parent == ty {
                    ty.clone()
                } else {
                    parent.to_string()
                };
                let (name, choice) = match name.strip_suffix("[x]") {
                    Some(n) => (n.to_string(), true),
                    None => (name.to_string(), false),
                };
                let many = e
                    .get("max")
                    .and_then(Value::as_str)
                    .is_some_and(|m| m != "1" && m != "0");
                let types: Vec<String> =
                    if let Some(r) = e.get("contentReference").and_then(Value::as_str) {
                        vec![r.trim_start_matches('#').to_string()]
                    } else {
                        e.get("type")
                            .and_then(Value::as_array)
                            .map(|ts| {
                                // System types are named by the same rule the
                                // structure model uses (`model::type_code`).
                                ts.iter()
                                    .filter_map(super::model::type_code)
                                    .map(|code| {
                                        if code == "BackboneElement" || code == "Element" {
                                            m.base.insert(path.to_string(), code.to_string());
                                            m.types.insert(path.to_string());
                                            path.to_string()
                                        } else {
                                            code
                                        }
                                    })
                                    .collect()
                            })
                            .unwrap_or_default()
                    };
                m.order
                    .entry(parent_type.clone())
                    .or_default()
                    .push(name.clone());
                m.children.entry(parent_type).or_default().insert(
                    name,
                    Child {
                        types,
                        many,
                        choice,
                    },
                );
            }
        }
        m
    }
}

impl ModelInfo for PathModel {
    fn child(&self, parent_type: &str, name: &str) -> Option<ChildInfo<'_>> {
        let mut t = parent_type;
        for _ in 0..16 {
            if let Some(c) = self.children.get(t).and_then(|m| m.get(name)) {
                return Some(ChildInfo {
                    types: &c.types,
                    many: c.many,
                    choice: c.choice,
                });
            }
            t = self.base.get(t)?;
        }
        None
    }
    fn base_type(&self, type_name: &str) -> Option<&str> {
        self.base.get(type_name).map(String::as_str)
    }
    fn is_type(&self, name: &str) -> bool {
        self.types.contains(name)
    }
    fn is_resource_type(&self, name: &str) -> bool {
        self.resources.contains(name)
    }
    fn is_primitive(&self, name: &str) -> bool {
        self.primitives.contains(name)
    }
    fn child_names(&self, type_name: &str) -> Vec<&str> {
        self.order
            .get(type_name)
            .map(|v| v.iter().map(String::as_str).collect())
            .unwrap_or_default()
    }
}
