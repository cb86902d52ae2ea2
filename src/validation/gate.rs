//! The validation every written resource passes after the strict read: REST
//! create, update and patch, Bundle entries and import lines alike. Per
//! `validation.mode`: the resource against its type, the profiles it claims and
//! the profiles the configuration requires for its type; the issues name where
//! the client sent the resource (`Bundle.entry[3].resource.name[0]`).

use std::sync::Arc;

use serde_json::Value;

use super::Validator;
use crate::config::{ValidationMode, ValidationSettings};
use crate::fhir::Issue;

/// Profile validation of writes, configured once.
pub struct WriteGate {
    validator: Arc<Validator>,
    settings: ValidationSettings,
}

impl std::fmt::Debug for WriteGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteGate")
            .field("mode", &self.settings.mode)
            .finish()
    }
}

impl WriteGate {
    pub fn new(validator: Arc<Validator>, settings: ValidationSettings) -> WriteGate {
        WriteGate {
            validator,
            settings,
        }
    }

    pub fn validator(&self) -> &Arc<Validator> {
        &self.validator
    }

    pub fn mode(&self) -> ValidationMode {
        self.settings.mode
    }

    /// The issues of a resource about to be written (none unless the mode is
    /// `full`). With `location`, expressions that start at the resource's type start
    /// there instead.
    pub fn check(&self, resource: &Value, location: Option<&str>) -> Vec<Issue> {
        if self.settings.mode != ValidationMode::Full {
            return Vec::new();
        }
        let rt = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let required = self.settings.required_for(rt);
        let mut issues = self.validator.validate_profiles(resource, required);
        if let Some(loc) = location {
            for i in &mut issues {
                if let Some(e) = &i.expression {
                    if let Some(rest) = e.strip_prefix(rt) {
                        if rest.is_empty() || rest.starts_with('.') || rest.starts_with('[') {
                            i.expression = Some(format!("{loc}{rest}"));
                        }
                    }
                }
            }
        }
        if crate::fhir::outcome::has_errors(&issues) {
            issues.push(mode_note());
        }
        issues
    }
}

/// Said beside the errors of a refused write (422), so that an operator who meets
/// them learns which setting decides what is checked (issue 13).
fn mode_note() -> Issue {
    Issue::error(
        "informational",
        "the resource was checked against its type's definition, the profiles it claims in \
         meta.profile and those validation.required_profiles names, because validation.mode is \
         `full` (the default); validation.mode = \"structure\" checks only the core structure",
    )
    .severity(crate::fhir::Severity::Information)
}
