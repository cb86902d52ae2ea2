//! Profile validation: a resource against the definition of its type, the profiles it
//! claims in `meta.profile` and the profiles a caller names. Each StructureDefinition is
//! compiled once into a [`plan::Plan`] (cached by canonical URL) and the instance is walked
//! against it ([`walk`]): cardinality, types, fixed and pattern values, bindings (through
//! [`crate::terminology`]), FHIRPath constraints, slicing, extensions, reference targets,
//! plus the rules the HL7 reference validator applies beyond the definitions (base64
//! without white space, unknown extensions in the HL7 namespace, Bundle fullUrl and id).
//!
//! ```no_run
//! # fn demo(v: &fhirgate::validation::Validator, patient: &serde_json::Value) {
//! let issues = v.validate(patient, &["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient".into()]);
//! let failed = fhirgate::fhir::outcome::has_errors(&issues);
//! # }
//! ```
//!
//! Architecture invariant: validation does no I/O of its own (packages through `Model` and
//! `Terminology`), never uses HTTP or storage types, and never copies the instance.

mod bundle;
mod gate;
pub mod plan;
mod services;
mod slicing;
mod value_rules;
mod values;
mod walk;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::RwLock;
use serde_json::Value;

pub use gate::WriteGate;

use crate::fhir::{outcome, Issue, Model, Severity};
use crate::terminology::{Expansion, Terminology};
use plan::{Binding, Plan};
use walk::{Ctx, Item, Loc, Walk};

const CORE_PREFIX: &str = "http://hl7.org/fhir/StructureDefinition/";

/// Most issues reported for one resource.
const MAX_ISSUES: usize = 500;

/// How a validator treats what it cannot check.
#[derive(Debug, Clone)]
pub struct ValidatorOptions {
    /// Severity for a profile claimed in `meta.profile` that no loaded package defines
    /// (`validation.unknown_profile`). A profile a caller names explicitly is always an error.
    pub unknown_profile: Severity,
}

impl Default for ValidatorOptions {
    fn default() -> Self {
        ValidatorOptions {
            unknown_profile: Severity::Warning,
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ValidationError {
    #[error("the profile {0} is not defined by any loaded package")]
    UnknownProfile(String),
    #[error("{0} is not a StructureDefinition")]
    NotAStructureDefinition(String),
    #[error("the profile {url} cannot be used: {reason}")]
    BadProfile { url: String, reason: String },
}

/// Validates resources against the StructureDefinitions of the loaded packages.
pub struct Validator {
    model: Arc<Model>,
    terminology: Arc<Terminology>,
    options: ValidatorOptions,
    plans: RwLock<HashMap<String, Result<Arc<Plan>, ValidationError>>>,
    type_plans: RwLock<HashMap<String, Option<Arc<Plan>>>>,
}

impl std::fmt::Debug for Validator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validator")
            .field("plans", &self.plans.read().len())
            .finish()
    }
}

impl Validator {
    pub fn new(
        model: Arc<Model>,
        terminology: Arc<Terminology>,
        options: ValidatorOptions,
    ) -> Validator {
        Validator {
            model,
            terminology,
            options,
            plans: RwLock::new(HashMap::new()),
            type_plans: RwLock::new(HashMap::new()),
        }
    }

    pub fn terminology(&self) -> &Arc<Terminology> {
        &self.terminology
    }

    /// Everything: the strict structural read, then [`Validator::validate_profiles`].
    pub fn validate(&self, resource: &Value, profiles: &[String]) -> Vec<Issue> {
        let mut issues = crate::fhir::json::check_resource(&self.model, resource);
        issues.extend(self.validate_profiles(resource, profiles));
        dedupe(issues)
    }

    /// A resource that passed the strict reader, against its type's definition, the
    /// profiles it claims and `profiles`.
    pub fn validate_profiles(&self, resource: &Value, profiles: &[String]) -> Vec<Issue> {
        let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
            return vec![Issue::error(
                "structure",
                "the resource has no resourceType",
            )];
        };
        let mut issues = Vec::new();
        let loc = Loc::root(rt);
        let plans = self.plans_for(resource, rt, profiles, &mut issues, &loc);
        let mut w = Walk::new(self);
        for plan in plans {
            w.resource(&plan, resource, &loc, resource);
        }
        issues.extend(w.issues);
        dedupe(issues)
    }

    /// The compiled plan of a StructureDefinition (canonical, optionally `|version`).
    pub fn plan(&self, canonical: &str) -> Result<Arc<Plan>, ValidationError> {
        if let Some(p) = self.plans.read().get(canonical) {
            return p.clone();
        }
        let result = self.compile(canonical);
        self.plans
            .write()
            .insert(canonical.to_string(), result.clone());
        result
    }

    fn compile(&self, canonical: &str) -> Result<Arc<Plan>, ValidationError> {
        let packages = self.model.packages();
        let unversioned = canonical.split('|').next().unwrap_or(canonical);
        let id = packages
            .find(canonical)
            .or_else(|| packages.find(unversioned))
            .ok_or_else(|| ValidationError::UnknownProfile(canonical.to_string()))?;
        if packages.entry(id).resource_type != "StructureDefinition" {
            return Err(ValidationError::NotAStructureDefinition(
                canonical.to_string(),
            ));
        }
        let sd = packages.get(id).map_err(|e| ValidationError::BadProfile {
            url: canonical.to_string(),
            reason: e.to_string(),
        })?;
        let mut plan = plan::compile(&sd).map_err(|e| ValidationError::BadProfile {
            url: canonical.to_string(),
            reason: e.to_string(),
        })?;
        slicing::compile_keys(&mut plan);
        Ok(Arc::new(plan))
    }

    /// The plan of a type's own definition (`Patient`, `HumanName`), cached by type name.
    fn type_plan(&self, ty: &str) -> Option<Arc<Plan>> {
        if let Some(p) = self.type_plans.read().get(ty) {
            return p.clone();
        }
        let p = self.plan(&format!("{CORE_PREFIX}{ty}")).ok();
        self.type_plans.write().insert(ty.to_string(), p.clone());
        p
    }

    fn is_base_plan(&self, plan: &Plan) -> bool {
        plan.url
            .strip_prefix(CORE_PREFIX)
            .is_some_and(|n| n == plan.type_name)
    }

    /// The type a profile constrains (for reference targets).
    fn profile_type(&self, canonical: &str) -> Option<String> {
        if let Some(name) = canonical.strip_prefix(CORE_PREFIX) {
            if self.model.has_type(name) {
                return Some(name.to_string());
            }
        }
        self.plan(canonical).ok().map(|p| p.type_name.clone())
    }

    /// Whether a choice-key suffix (`Quantity`, `String`) names a FHIR type.
    fn names_type(&self, suffix: &str) -> bool {
        if self.model.has_type(suffix) {
            return true;
        }
        let mut c = suffix.chars();
        match c.next() {
            Some(f) => self
                .model
                .has_type(&(f.to_ascii_lowercase().to_string() + c.as_str())),
            None => false,
        }
    }

    fn expansion(&self, b: &Binding) -> Option<Arc<Expansion>> {
        b.expansion
            .get_or_init(|| self.terminology.expand(&b.value_set).ok())
            .clone()
    }

    /// Whether a value of type `ty` (a resource or a data type) has no error against `profile`.
    pub fn conforms(&self, value: &Value, ty: &str, profile: &str) -> bool {
        let Ok(plan) = self.plan(profile) else {
            return false;
        };
        let rt = value.get("resourceType").and_then(Value::as_str);
        let ty = rt.unwrap_or(ty);
        if plan.type_name != ty
            && !(plan.type_name == "Resource" || plan.type_name == "DomainResource")
        {
            return false;
        }
        let mut w = Walk::new(self);
        let loc = Loc::root(ty);
        if rt.is_some() {
            w.resource(&plan, value, &loc, value);
        } else {
            let item = Item {
                value: Some(value),
                companion: None,
                ty,
            };
            w.element(
                &plan,
                0,
                item,
                &loc,
                Ctx {
                    resource: value,
                    root: value,
                },
            );
        }
        !outcome::has_errors(&w.issues)
    }

    /// The plans a resource is checked against: its type's definition, the profiles it
    /// claims and `explicit`; what cannot be used is reported into `issues`.
    fn plans_for(
        &self,
        resource: &Value,
        rt: &str,
        explicit: &[String],
        issues: &mut Vec<Issue>,
        loc: &Loc,
    ) -> Vec<Arc<Plan>> {
        let Some(base) = self.type_plan(rt) else {
            issues.push(
                Issue::error(
                    "not-supported",
                    format!("no StructureDefinition for the resource type {rt}"),
                )
                .at(loc.render()),
            );
            return Vec::new();
        };
        let mut out = vec![base];
        let claims = resource
            .pointer("/meta/profile")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(|c| (c, self.options.unknown_profile, true));
        let named = explicit
            .iter()
            .map(|c| (c.as_str(), Severity::Error, false));
        for (n, (canonical, severity, claimed)) in claims.chain(named).enumerate() {
            let at = || {
                if claimed {
                    format!("{}.meta.profile[{n}]", loc.render())
                } else {
                    loc.render()
                }
            };
            match self.plan(canonical) {
                Ok(p)
                    if p.type_name == rt
                        || p.type_name == "Resource"
                        || p.type_name == "DomainResource" =>
                {
                    if !out.iter().any(|q| Arc::ptr_eq(q, &p) || q.url == p.url) {
                        out.push(p);
                    }
                }
                Ok(p) => issues.push(
                    Issue::error(
                        "invalid",
                        format!(
                            "the profile {canonical} constrains {}, not {rt}",
                            p.type_name
                        ),
                    )
                    .at(at()),
                ),
                Err(e) => issues.push(
                    Issue::error("not-found", e.to_string())
                        .severity(severity)
                        .at(at()),
                ),
            }
        }
        out
    }
}

/// The same finding raised by several plans (a profile repeats its base's rules) is
/// reported once.
fn dedupe(issues: Vec<Issue>) -> Vec<Issue> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(issues.len());
    for i in issues {
        let key = (
            i.severity.code(),
            i.code,
            i.expression.clone(),
            i.diagnostics.clone(),
        );
        if seen.insert(key) {
            out.push(i);
            if out.len() >= MAX_ISSUES {
                break;
            }
        }
    }
    out
}
