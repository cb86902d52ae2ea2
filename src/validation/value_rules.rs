//! The rules on one value of the instance, whatever its place: fixed and pattern values,
//! maxLength, minValue/maxValue, bindings (membership through [`crate::terminology`]; a
//! code of a code system the packages hold completely must exist), base64 content and
//! reference target types.

use serde_json::Value;

use super::bundle;
use super::plan::{Binding, ElementRule, Plan, Strength};
use super::values;
use super::walk::{Ctx, Item, Loc, Walk};
use crate::fhir::types::truncate;
use crate::fhir::Severity;
use crate::terminology::Membership;

impl Walk<'_> {
    /// Fixed, pattern, maxLength, minValue/maxValue, binding, base64, reference and code
    /// rules of one value.
    pub(super) fn value_rules(
        &mut self,
        plan: &Plan,
        el: &ElementRule,
        item: Item,
        value: &Value,
        loc: &Loc,
        ctx: Ctx,
    ) {
        if let Some(f) = &el.fixed {
            if !values::fixed_matches(f, value) {
                self.issue(
                    plan,
                    Severity::Error,
                    "value",
                    format!(
                        "the value must be exactly {} (fixed by {})",
                        short(f),
                        el.id
                    ),
                    loc,
                );
            }
        }
        if let Some(p) = &el.pattern {
            if !values::pattern_matches(p, value) {
                self.issue(
                    plan,
                    Severity::Error,
                    "value",
                    format!(
                        "the value does not match the pattern {} of {}",
                        short(p),
                        el.id
                    ),
                    loc,
                );
            }
        }
        if let (Some(max), Some(s)) = (el.max_length, value.as_str()) {
            if s.chars().count() > max {
                self.issue(
                    plan,
                    Severity::Error,
                    "value",
                    format!(
                        "the value is longer than the maximum length {max} of {}",
                        el.id
                    ),
                    loc,
                );
            }
        }
        for (bound, beyond, word) in [
            (&el.min_value, std::cmp::Ordering::Less, "below the minimum"),
            (
                &el.max_value,
                std::cmp::Ordering::Greater,
                "above the maximum",
            ),
        ] {
            let Some(bound) = bound else { continue };
            if values::compare_to_bound(value, bound) == Some(beyond) {
                self.issue(
                    plan,
                    Severity::Error,
                    "value",
                    format!("the value is {word} {} of {}", short(bound), el.id),
                    loc,
                );
            }
        }
        if let Some(b) = &el.binding {
            self.binding(plan, b, item.ty, value, loc);
        }
        if item.ty == "base64Binary" {
            if let Some(problem) = value.as_str().and_then(values::base64_problem) {
                self.issue(
                    plan,
                    Severity::Error,
                    "value",
                    format!("the base64Binary value {problem}"),
                    loc,
                );
            }
        }
        if item.ty == "Reference" {
            self.reference_target(plan, el, value, loc, ctx);
        }
        if item.ty == "Coding" {
            self.code_exists(plan, value, loc);
        }
    }

    /// The codes of a coded value: (system, code) pairs.
    fn codes<'x>(ty: &str, value: &'x Value) -> Vec<(Option<&'x str>, &'x str)> {
        let coding = |c: &'x Value| {
            c.get("code")
                .and_then(Value::as_str)
                .map(|code| (c.get("system").and_then(Value::as_str), code))
        };
        match ty {
            "code" | "string" | "uri" => value.as_str().map(|s| (None, s)).into_iter().collect(),
            "Coding" | "Quantity" | "Age" | "Duration" | "Count" | "Distance" | "MoneyQuantity"
            | "SimpleQuantity" => coding(value).into_iter().collect(),
            "CodeableConcept" => value
                .get("coding")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(coding)
                .collect(),
            _ => Vec::new(),
        }
    }

    fn binding(&mut self, plan: &Plan, b: &Binding, ty: &str, value: &Value, loc: &Loc) {
        let codes = Self::codes(ty, value);
        if codes.is_empty() {
            return;
        }
        let Some(expansion) = self.v.expansion(b) else {
            return; // not available: nothing can be said
        };
        let mut unknown = false;
        for (system, code) in &codes {
            match expansion.contains(*system, code) {
                Membership::Member => return,
                Membership::Unknown(_) => unknown = true,
                Membership::NotMember => {}
            }
        }
        if unknown {
            return;
        }
        let shown: Vec<String> = codes
            .iter()
            .map(|(s, c)| match s {
                Some(s) => format!("{s}#{c}"),
                None => (*c).to_string(),
            })
            .collect();
        let (severity, strength) = match b.strength {
            Strength::Required => (Severity::Error, "required"),
            Strength::Extensible => (Severity::Warning, "extensible"),
        };
        self.issue(
            plan,
            severity,
            "code-invalid",
            format!(
                "the code {} is not in the value set {} ({strength} binding)",
                truncate(&shown.join(", "), 200),
                b.value_set
            ),
            loc,
        );
    }

    /// A Coding of a code system the packages hold completely must use one of its codes.
    fn code_exists(&mut self, plan: &Plan, coding: &Value, loc: &Loc) {
        let (Some(system), Some(code)) = (
            coding.get("system").and_then(Value::as_str),
            coding.get("code").and_then(Value::as_str),
        ) else {
            return;
        };
        if let Ok(None) = self.v.terminology.lookup(system, code) {
            self.issue(
                plan,
                Severity::Error,
                "code-invalid",
                format!(
                    "`{}` is not a code of the code system {system}",
                    truncate(code, 80)
                ),
                loc,
            );
        }
    }

    /// `type.targetProfile` of a Reference: the type the reference names must be allowed.
    fn reference_target(
        &mut self,
        plan: &Plan,
        el: &ElementRule,
        value: &Value,
        loc: &Loc,
        ctx: Ctx,
    ) {
        let Some(rule) = el.type_rule("Reference") else {
            return;
        };
        if rule.target_profiles.is_empty() {
            return;
        }
        let Some(reference) = value.get("reference").and_then(Value::as_str) else {
            return;
        };
        let target: Option<&str> = if let Some(id) = reference.strip_prefix('#') {
            ctx.resource
                .get("contained")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
                .and_then(|r| r.get("resourceType"))
                .and_then(Value::as_str)
        } else {
            // Only a target found in the instance (contained, or an entry of the Bundle) is
            // checked: a literal URL alone is not proof of what it points to.
            bundle::entry_by_reference(ctx.root, reference)
                .and_then(|r| r.get("resourceType"))
                .and_then(Value::as_str)
        };
        let Some(target) = target else {
            return;
        };
        let mut allowed = Vec::new();
        for p in &rule.target_profiles {
            match self.v.profile_type(p) {
                Some(t) if t == "Resource" || t == target => return,
                Some(t) => allowed.push(t),
                None => return, // an unknown target profile: cannot tell
            }
        }
        // at the Reference, where the reference validator reports it
        self.issue(
            plan,
            Severity::Error,
            "structure",
            format!(
                "the reference names a {target}, but {} allows only {}",
                el.id,
                allowed.join(", ")
            ),
            loc,
        );
    }
}

fn short(v: &Value) -> String {
    truncate(&v.to_string(), 120)
}
