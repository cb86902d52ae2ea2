//! Patient compartment membership, from the core CompartmentDefinition and the
//! SearchParameters it names: which patients a resource belongs to. Used to put
//! the patient into AuditEvents. The SearchParameter expressions are followed as
//! plain paths (`Observation.subject`, `.where(resolve() is Patient)` filters
//! applied by reference type); the FHIRPath engine will take this over.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

use super::model::Model;

const PATIENT_COMPARTMENT: &str = "http://hl7.org/fhir/CompartmentDefinition/patient";

pub struct PatientCompartment {
    model: Arc<Model>,
    /// resource type -> element paths (below the resource) that hold patient references.
    paths: RwLock<HashMap<String, Arc<Vec<Vec<String>>>>>,
    params: HashMap<String, Vec<String>>,
}

impl PatientCompartment {
    pub fn new(model: Arc<Model>) -> PatientCompartment {
        let mut params = HashMap::new();
        if let Some(cd) = model.packages().resolve(PATIENT_COMPARTMENT) {
            for r in cd
                .get("resource")
                .and_then(|r| r.as_array())
                .into_iter()
                .flatten()
            {
                let Some(code) = r.get("code").and_then(|c| c.as_str()) else {
                    continue;
                };
                let ps: Vec<String> = r
                    .get("param")
                    .and_then(|p| p.as_array())
                    .map(|p| {
                        p.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default();
                params.insert(code.to_string(), ps);
            }
        }
        PatientCompartment {
            model,
            paths: RwLock::new(HashMap::new()),
            params,
        }
    }

    /// `Patient/<id>` references of the patients whose compartment holds the resource.
    pub fn patients_of(
        &self,
        resource_type: &str,
        id: Option<&str>,
        resource: Option<&Value>,
    ) -> Vec<String> {
        if resource_type == "Patient" {
            return id.map(|i| vec![format!("Patient/{i}")]).unwrap_or_default();
        }
        let Some(resource) = resource else {
            return Vec::new();
        };
        let paths = self.paths_for(resource_type);
        let mut out: Vec<String> = Vec::new();
        for path in paths.iter() {
            collect_refs(resource, path, &mut out);
        }
        out.retain(|r| r.starts_with("Patient/"));
        out.sort();
        out.dedup();
        out
    }

    fn paths_for(&self, resource_type: &str) -> Arc<Vec<Vec<String>>> {
        if let Some(p) = self.paths.read().get(resource_type) {
            return p.clone();
        }
        let mut paths = Vec::new();
        for code in self.params.get(resource_type).into_iter().flatten() {
            let sp = self.model.packages().entries().find(|(_, e)| {
                e.resource_type == "SearchParameter"
                    && e.code.as_deref() == Some(code.as_str())
                    && e.base.iter().any(|b| b == resource_type)
            });
            let Some((id, _)) = sp else { continue };
            let Ok(sp) = self.model.packages().get(id) else {
                continue;
            };
            let Some(expr) = sp.get("expression").and_then(|e| e.as_str()) else {
                continue;
            };
            for part in expr.split('|') {
                let part = part.trim();
                let Some(rest) = part.strip_prefix(&format!("{resource_type}.")) else {
                    continue;
                };
                let rest = rest.split(".where(").next().unwrap_or(rest);
                let segs: Vec<String> = rest.split('.').map(str::to_string).collect();
                if segs
                    .iter()
                    .all(|s| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()))
                {
                    paths.push(segs);
                }
            }
        }
        let paths = Arc::new(paths);
        self.paths
            .write()
            .insert(resource_type.to_string(), paths.clone());
        paths
    }
}

fn collect_refs(v: &Value, path: &[String], out: &mut Vec<String>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| collect_refs(i, path, out)),
        Value::Object(o) => match path.split_first() {
            None => {
                if let Some(r) = o.get("reference").and_then(|r| r.as_str()) {
                    out.push(r.to_string());
                }
            }
            Some((head, rest)) => {
                if let Some(child) = o.get(head.as_str()) {
                    collect_refs(child, rest, out);
                }
            }
        },
        _ => {}
    }
}
