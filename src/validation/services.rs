//! The FHIRPath host callbacks a validation provides to invariants: `memberOf` and
//! `subsumes` answered by the terminology module, `conformsTo` by validating against the
//! named profile.

use serde_json::Value;

use super::Validator;
use crate::fhirpath::Services;
use crate::terminology::{Membership, Subsumption};

pub struct ValidationServices<'v> {
    pub v: &'v Validator,
}

impl Services for ValidationServices<'_> {
    fn member_of(
        &self,
        item: &Value,
        item_type: &str,
        value_set: &str,
    ) -> Result<Option<bool>, String> {
        let Ok(expansion) = self.v.terminology.expand(value_set) else {
            return Ok(None);
        };
        let one = |c: &Value| -> Option<Membership> {
            let code = c.get("code").and_then(Value::as_str)?;
            Some(expansion.contains(c.get("system").and_then(Value::as_str), code))
        };
        let answers: Vec<Membership> = match (item, item_type) {
            (Value::String(code), _) => vec![expansion.contains(None, code)],
            (Value::Object(o), _) if o.contains_key("coding") => o["coding"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(one)
                .collect(),
            (v @ Value::Object(_), _) => one(v).into_iter().collect(),
            _ => Vec::new(),
        };
        if answers.contains(&Membership::Member) {
            return Ok(Some(true));
        }
        if answers.is_empty() || answers.iter().any(|m| matches!(m, Membership::Unknown(_))) {
            return Ok(None);
        }
        Ok(Some(false))
    }

    fn subsumes(&self, system: &str, a: &str, b: &str) -> Result<Option<bool>, String> {
        Ok(match self.v.terminology.subsumes(system, a, b) {
            Ok(Subsumption::Subsumes | Subsumption::Equivalent) => Some(true),
            Ok(_) => Some(false),
            Err(_) => None,
        })
    }

    fn conforms_to(
        &self,
        resource: &Value,
        resource_type: &str,
        profile: &str,
    ) -> Result<bool, String> {
        if self.v.plan(profile).is_err() {
            return Err(format!(
                "conformsTo('{profile}'): the profile is not in the loaded packages"
            ));
        }
        Ok(self.v.conforms(resource, resource_type, profile))
    }
}
