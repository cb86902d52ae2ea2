//! The instance walk: one resource against one plan. At each element it checks the
//! cardinality of every child rule, the types a profile allows for choice elements, fixed
//! and pattern values, bindings, the element's constraints (FHIRPath), reference targets,
//! base64 content, and descends: into the children the snapshot unfolds, else into the plan
//! of the element's type (or the type's profile). Slices and extensions are matched here;
//! contained and bundled resources are validated against their own type and claims.
//!
//! Locations are kept as a chain of borrowed segments and turned into text only when an
//! issue is raised, so a clean walk allocates no paths.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::plan::{Binding, Constraint, ElementRule, Plan, SlicingRules, Strength};
use super::slicing;
use super::values;
use super::Validator;
use crate::fhir::types::truncate;
use crate::fhir::{Issue, Severity};
use crate::fhirpath::EvalContext;
use crate::terminology::Membership;

/// Where in the instance: a chain of element names and array indexes.
#[derive(Clone, Copy)]
pub struct Loc<'p> {
    parent: Option<&'p Loc<'p>>,
    segment: Segment<'p>,
}

#[derive(Clone, Copy)]
enum Segment<'p> {
    Name(&'p str),
    /// An item of an array: `name[3]`.
    Item(&'p str, usize),
}

impl<'p> Loc<'p> {
    pub fn root(name: &'p str) -> Loc<'p> {
        Loc {
            parent: None,
            segment: Segment::Name(name),
        }
    }

    fn key(&'p self, name: &'p str) -> Loc<'p> {
        Loc {
            parent: Some(self),
            segment: Segment::Name(name),
        }
    }

    /// A value found under `name`, at `index` when the JSON holds an array.
    fn value(&'p self, name: &'p str, index: Option<usize>) -> Loc<'p> {
        Loc {
            parent: Some(self),
            segment: match index {
                Some(i) => Segment::Item(name, i),
                None => Segment::Name(name),
            },
        }
    }

    /// `Patient.name[0].given[1]`, the form the strict reader reports too.
    pub fn render(&self) -> String {
        let mut parts = Vec::new();
        let mut at = Some(self);
        while let Some(l) = at {
            parts.push(l.segment);
            at = l.parent;
        }
        let mut out = String::new();
        for s in parts.iter().rev() {
            let (name, index) = match s {
                Segment::Name(n) => (n, None),
                Segment::Item(n, i) => (n, Some(i)),
            };
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(name);
            if let Some(i) = index {
                out.push('[');
                out.push_str(&i.to_string());
                out.push(']');
            }
        }
        out
    }
}

/// One value of the instance at an element: the JSON value (None for a primitive that only
/// has extensions), its `_name` companion, and its type (a type code, or the FHIRPath name
/// of an inline backbone element).
#[derive(Clone, Copy)]
pub struct Item<'x> {
    pub value: Option<&'x Value>,
    pub companion: Option<&'x Value>,
    pub ty: &'x str,
}

/// The resources a constraint sees as `%resource` and `%rootResource`.
#[derive(Clone, Copy)]
pub struct Ctx<'x> {
    pub resource: &'x Value,
    pub root: &'x Value,
}

/// Nesting limit for contained resources and extensions inside extensions.
const MAX_DEPTH: usize = 48;

pub struct Walk<'v> {
    pub v: &'v Validator,
    pub issues: Vec<Issue>,
    depth: usize,
}

impl<'v> Walk<'v> {
    pub fn new(v: &'v Validator) -> Walk<'v> {
        Walk {
            v,
            issues: Vec::new(),
            depth: 0,
        }
    }

    pub fn issue(
        &mut self,
        plan: &Plan,
        severity: Severity,
        code: &'static str,
        message: String,
        loc: &Loc,
    ) {
        self.issues.push(
            Issue::error(code, message)
                .severity(severity)
                .at(loc.render())
                .from_source(plan.canonical()),
        );
    }

    /// A resource (the root or a nested one) against a plan for its type.
    pub fn resource(&mut self, plan: &Plan, resource: &Value, loc: &Loc, root: &Value) {
        let ty = resource
            .get("resourceType")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let item = Item {
            value: Some(resource),
            companion: None,
            ty,
        };
        let ctx = Ctx { resource, root };
        self.element(plan, 0, item, loc, ctx);
        if ty == "Bundle" && self.v.is_base_plan(plan) {
            super::bundle::check(self, plan, resource, loc);
        }
    }

    /// A contained or bundled resource: its base type and the profiles it claims.
    fn nested_resource(&mut self, resource: &Value, loc: &Loc, root: &Value) {
        if self.depth >= MAX_DEPTH {
            return;
        }
        let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
            return; // the strict reader reports it
        };
        self.depth += 1;
        for plan in self.v.plans_for(resource, rt, &[], &mut self.issues, loc) {
            self.resource(&plan, resource, loc, root);
        }
        self.depth -= 1;
    }

    /// One instance value against element `index` of `plan`.
    pub(super) fn element(&mut self, plan: &Plan, index: usize, item: Item, loc: &Loc, ctx: Ctx) {
        let el = &plan.elements[index];
        if let Some(value) = item.value {
            self.value_rules(plan, el, item, value, loc, ctx);
            if item.ty == "Coding" {
                self.code_exists(plan, value, loc);
            }
        }
        if index != 0 && is_resource_type(self.v, item.ty) {
            if let Some(value) = item.value {
                self.nested_resource(value, loc, ctx.root);
            }
            return;
        }
        self.constraints(plan, &el.constraints, item, loc, ctx, &[]);
        let kids = plan.children_of(index);
        if !kids.is_empty() {
            self.children(plan, kids, item, loc, ctx);
            if !is_inline(el) && index != 0 {
                // Constraints on the type itself (qty-3 on Quantity) are not copied into
                // the unfolded element.
                if let Some(tp) = self.v.type_plan(item.ty) {
                    self.constraints(&tp, &tp.root().constraints, item, loc, ctx, &el.constraints);
                }
            }
            return;
        }
        if is_inline(el) || item.ty.is_empty() {
            return;
        }
        let primitive = matches!(item.value, Some(v) if !v.is_object());
        if primitive && item.companion.is_none() {
            return; // nothing below a bare primitive
        }
        let Some(tp) = self.type_plan_for(plan, el, item.ty, loc) else {
            return;
        };
        if self.depth >= MAX_DEPTH {
            return;
        }
        self.depth += 1;
        self.element(&tp, 0, item, loc, ctx);
        self.depth -= 1;
    }

    /// The plan an element's value is checked against when the snapshot does not unfold
    /// it: the profile named for the type, else the type's own definition.
    fn type_plan_for(
        &mut self,
        plan: &Plan,
        el: &ElementRule,
        ty: &str,
        loc: &Loc,
    ) -> Option<Arc<Plan>> {
        if let Some(profile) = el.type_rule(ty).and_then(|t| t.profiles.first()) {
            match self.v.plan(profile) {
                Ok(p) => return Some(p),
                Err(e) => {
                    let severity = self.v.options.unknown_profile;
                    self.issue(plan, severity, "not-found", e.to_string(), loc);
                }
            }
        }
        self.v.type_plan(ty)
    }

    /// Fixed, pattern, maxLength, binding, base64 and reference rules of one value.
    fn value_rules(
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
            super::bundle::entry_by_reference(ctx.root, reference)
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
        let loc = loc.key("reference");
        self.issue(
            plan,
            Severity::Error,
            "structure",
            format!(
                "the reference names a {target}, but {} allows only {}",
                el.id,
                allowed.join(", ")
            ),
            &loc,
        );
    }

    /// Evaluates constraints on one value; `skip` holds constraints already evaluated on it.
    fn constraints(
        &mut self,
        plan: &Plan,
        list: &[Constraint],
        item: Item,
        loc: &Loc,
        ctx: Ctx,
        skip: &[Constraint],
    ) {
        let Some(value) = item.value else {
            return;
        };
        if list.is_empty() {
            return;
        }
        let services = super::services::ValidationServices { v: self.v };
        let mut ectx = EvalContext::new(self.v.model.path_model());
        ectx.resource = Some(ctx.resource);
        ectx.root_resource = Some(ctx.root);
        ectx.input_type = Some(item.ty);
        ectx.services = &services;
        for c in list {
            if skip.iter().any(|s| s.key == c.key) {
                continue;
            }
            match c.expression.evaluate_boolean(&ectx, value) {
                Ok(Some(false)) => {
                    let message = format!("constraint {} failed: {}", c.key, c.human);
                    self.issue(plan, c.severity, "invariant", message, loc);
                }
                Ok(_) => {}
                Err(e) => {
                    let message = format!("constraint {} could not be evaluated: {e}", c.key);
                    self.issue(plan, Severity::Warning, "invariant", message, loc);
                }
            }
        }
    }

    /// The child rules of an element against the properties of the instance object.
    fn children(&mut self, plan: &Plan, kids: &[usize], item: Item, loc: &Loc, ctx: Ctx) {
        let (obj, primitive) = match (item.value, item.companion) {
            (Some(Value::Object(o)), _) => (o, false),
            (_, Some(Value::Object(o))) => (o, true),
            _ => return,
        };
        // ele-1 (checked natively): an element has a value or children other than id.
        // A resource is not an element (a contained `{"resourceType", "id"}` is fine).
        if !primitive && !obj.contains_key("resourceType") && !obj.keys().any(|k| k != "id") {
            self.issue(
                plan,
                Severity::Error,
                "invariant",
                "constraint ele-1 failed: All FHIR elements must have a @value or children".into(),
                loc,
            );
        }
        for &k in kids {
            let el = &plan.elements[k];
            if primitive && el.name == "value" {
                continue;
            }
            let found = self.collect(plan, el, obj, loc);
            let count = found.len();
            if count < el.min as usize {
                self.issue(
                    plan,
                    Severity::Error,
                    "required",
                    format!("{}: at least {} required, found {count}", el.path, el.min),
                    loc,
                );
            }
            if let Some(max) = el.max {
                if count > max as usize {
                    let at = loc.key(found[0].key);
                    let message = if max == 0 {
                        format!("{} is not allowed here ({} has max 0)", found[0].key, el.id)
                    } else {
                        format!("{}: at most {max} allowed, found {count}", el.path)
                    };
                    self.issue(plan, Severity::Error, "structure", message, &at);
                }
            }
            if count == 0 {
                continue;
            }
            if el.is_extension() {
                self.extensions(plan, k, &found, loc, ctx);
            } else if el.slicing.is_some() && !el.slices.is_empty() {
                self.sliced(plan, k, &found, loc, ctx);
            } else {
                for f in &found {
                    let at = loc.value(f.key, f.index);
                    self.element(plan, k, f.item, &at, ctx);
                }
            }
        }
    }

    /// The instance values of one child rule, with their JSON key and array index.
    fn collect<'x>(
        &mut self,
        plan: &Plan,
        el: &'x ElementRule,
        obj: &'x Map<String, Value>,
        loc: &Loc,
    ) -> Vec<Found<'x>> {
        let mut out = Vec::new();
        if !el.choice {
            let ty = instance_type(el, None);
            push_found(
                &mut out,
                el.name.as_str(),
                obj.get(&el.name),
                obj.get(&el.companion),
                ty,
            );
            return out;
        }
        for (key, value) in obj {
            let Some(suffix) = key.strip_prefix(el.name.as_str()) else {
                continue;
            };
            if !suffix.starts_with(|c: char| c.is_ascii_uppercase()) {
                continue;
            }
            match el.types.iter().find(|t| suffix_names(suffix, &t.code)) {
                Some(t) => {
                    let companion = obj.get(&format!("_{key}"));
                    push_found(&mut out, key, Some(value), companion, t.code.as_str());
                }
                // `amountType` beside `amount[x]` is another element, not a type choice
                None if !self.v.names_type(suffix) => {}
                None => {
                    let allowed: Vec<&str> = el.types.iter().map(|t| t.code.as_str()).collect();
                    let at = loc.key(key);
                    self.issue(
                        plan,
                        Severity::Error,
                        "structure",
                        format!(
                            "the type {suffix} is not allowed for {} (allowed: {})",
                            el.id,
                            allowed.join(", ")
                        ),
                        &at,
                    );
                }
            }
        }
        out
    }

    /// Extensions: by slice (URL) where the profile slices them, else by the
    /// StructureDefinition their URL names; unknown URLs are reported (DESIGN section 10).
    fn extensions(&mut self, plan: &Plan, k: usize, found: &[Found], loc: &Loc, ctx: Ctx) {
        let el = &plan.elements[k];
        let mut counts = vec![0usize; el.slices.len()];
        for f in found {
            let at = loc.value(f.key, f.index);
            let url = f
                .item
                .value
                .and_then(|v| v.get("url"))
                .and_then(Value::as_str);
            let slot = url.and_then(|u| {
                el.slices
                    .iter()
                    .position(|&s| slicing::extension_slice_url(plan, s) == Some(u))
            });
            match slot {
                Some(n) => {
                    counts[n] += 1;
                    self.element(plan, el.slices[n], f.item, &at, ctx);
                }
                None => {
                    if el
                        .slicing
                        .as_ref()
                        .is_some_and(|s| s.rules == SlicingRules::Closed)
                    {
                        self.issue(
                            plan,
                            Severity::Error,
                            "structure",
                            format!(
                                "the extension {} is not allowed here: {} is closed",
                                url.unwrap_or("(no url)"),
                                el.id
                            ),
                            &at,
                        );
                    }
                    self.unsliced_extension(plan, el, f.item, url, &at, ctx);
                }
            }
        }
        self.slice_counts(plan, el, &counts, loc);
    }

    fn unsliced_extension(
        &mut self,
        plan: &Plan,
        el: &ElementRule,
        item: Item,
        url: Option<&str>,
        loc: &Loc,
        ctx: Ctx,
    ) {
        let Some(url) = url else {
            if let Some(tp) = self.v.type_plan("Extension") {
                self.element(&tp, 0, item, loc, ctx);
            }
            return;
        };
        if !url.contains(':') {
            // a relative URL names a part of a complex extension, defined by its parent
            return;
        }
        if is_example_domain(url) {
            // The reference validator accepts extensions of the example domains without a
            // definition (its "allow example URLs" mode, in which the R4 examples pass).
            return;
        }
        match self.v.plan(url) {
            Ok(ext) if ext.type_name == "Extension" => {
                if self.depth < MAX_DEPTH {
                    self.depth += 1;
                    self.element(&ext, 0, item, loc, ctx);
                    self.depth -= 1;
                }
            }
            _ => {
                let modifier = el.name == "modifierExtension";
                let hl7 = url.starts_with("http://hl7.org/fhir/StructureDefinition/");
                let severity = if modifier || hl7 {
                    Severity::Error
                } else {
                    Severity::Warning
                };
                let what = if modifier {
                    "modifier extension"
                } else {
                    "extension"
                };
                self.issue(
                    plan,
                    severity,
                    "extension",
                    format!(
                        "the {what} {} is not defined by any loaded package",
                        truncate(url, 200)
                    ),
                    loc,
                );
            }
        }
    }

    /// Values of a sliced element: each is checked against the element and against the
    /// first slice it matches; closed slicing refuses the rest; slice cardinalities.
    fn sliced(&mut self, plan: &Plan, k: usize, found: &[Found], loc: &Loc, ctx: Ctx) {
        let el = &plan.elements[k];
        let mut counts = vec![0usize; el.slices.len()];
        for f in found {
            let at = loc.value(f.key, f.index);
            self.element(plan, k, f.item, &at, ctx);
            let slot = (0..el.slices.len())
                .find(|&n| slicing::matches(self, plan, k, el.slices[n], f.item, ctx));
            match slot {
                Some(n) => {
                    counts[n] += 1;
                    self.element(plan, el.slices[n], f.item, &at, ctx);
                }
                None if el
                    .slicing
                    .as_ref()
                    .is_some_and(|s| s.rules == SlicingRules::Closed) =>
                {
                    self.issue(
                        plan,
                        Severity::Error,
                        "structure",
                        format!(
                            "the value matches none of the slices of {}, and the slicing is closed",
                            el.id
                        ),
                        &at,
                    );
                }
                None => {}
            }
        }
        self.slice_counts(plan, el, &counts, loc);
    }

    fn slice_counts(&mut self, plan: &Plan, el: &ElementRule, counts: &[usize], loc: &Loc) {
        for (n, &s) in el.slices.iter().enumerate() {
            let slice = &plan.elements[s];
            let name = slice.slice_name.as_deref().unwrap_or("?");
            if counts[n] < slice.min as usize {
                self.issue(
                    plan,
                    Severity::Error,
                    "structure",
                    format!(
                        "slice {name} of {}: at least {} required, found {}",
                        el.path, slice.min, counts[n]
                    ),
                    loc,
                );
            }
            if let Some(max) = slice.max {
                if counts[n] > max as usize {
                    self.issue(
                        plan,
                        Severity::Error,
                        "structure",
                        format!(
                            "slice {name} of {}: at most {max} allowed, found {}",
                            el.path, counts[n]
                        ),
                        loc,
                    );
                }
            }
        }
    }
}

/// One instance value found for a child rule.
pub struct Found<'x> {
    pub key: &'x str,
    pub index: Option<usize>,
    pub item: Item<'x>,
}

fn push_found<'x>(
    out: &mut Vec<Found<'x>>,
    key: &'x str,
    value: Option<&'x Value>,
    companion: Option<&'x Value>,
    ty: &'x str,
) {
    match (value, companion) {
        (None, None) => {}
        (Some(Value::Array(vs)), c) => {
            let cs = c.and_then(Value::as_array);
            for (i, v) in vs.iter().enumerate() {
                let c = cs.and_then(|cs| cs.get(i)).filter(|c| !c.is_null());
                let v = Some(v).filter(|v| !v.is_null());
                if v.is_none() && c.is_none() {
                    continue;
                }
                out.push(Found {
                    key,
                    index: Some(i),
                    item: Item {
                        value: v,
                        companion: c,
                        ty,
                    },
                });
            }
        }
        (None, Some(Value::Array(cs))) => {
            for (i, c) in cs.iter().enumerate().filter(|(_, c)| !c.is_null()) {
                out.push(Found {
                    key,
                    index: Some(i),
                    item: Item {
                        value: None,
                        companion: Some(c),
                        ty,
                    },
                });
            }
        }
        (v, c) => out.push(Found {
            key,
            index: None,
            item: Item {
                value: v.filter(|v| !v.is_null()),
                companion: c,
                ty,
            },
        }),
    }
}

/// Domains the HL7 examples use for made-up extensions (`example.org`, `acme.com`,
/// `nema.org`).
fn is_example_domain(url: &str) -> bool {
    ["example.org", "acme.com", "nema.org"]
        .iter()
        .any(|d| url.contains(d))
}

fn is_resource_type(v: &Validator, ty: &str) -> bool {
    matches!(ty, "Resource" | "DomainResource") || v.model.is_resource_type(ty)
}

/// Backbone elements defined inline (their children are in the same snapshot).
fn is_inline(el: &ElementRule) -> bool {
    el.content_reference.is_some()
        || matches!(
            el.types.first().map(|t| t.code.as_str()),
            Some("BackboneElement") | Some("Element")
        ) && el.path.contains('.')
}

/// The type of an instance value of a non-choice element.
fn instance_type<'x>(el: &'x ElementRule, _chosen: Option<&'x str>) -> &'x str {
    if is_inline(el) {
        return el.path_type.as_str();
    }
    el.types.first().map(|t| t.code.as_str()).unwrap_or("")
}

/// Whether a choice key suffix (`Quantity`, `String`) names type code `code`.
fn suffix_names(suffix: &str, code: &str) -> bool {
    let (mut a, mut b) = (suffix.chars(), code.chars());
    match (a.next(), b.next()) {
        (Some(x), Some(y)) if x.eq_ignore_ascii_case(&y) => a.as_str() == b.as_str(),
        _ => false,
    }
}

fn short(v: &Value) -> String {
    truncate(&v.to_string(), 120)
}
