//! The instance walk: one resource against one plan. At each element it checks the
//! cardinality of every child rule, the types a profile allows for choice elements, the
//! value rules (`value_rules`) and the element's constraints (FHIRPath), then descends:
//! into the children the snapshot unfolds, else into the plan of the element's type (or the
//! type's profile). Sliced elements and extensions are handed to `slicing`; contained and
//! bundled resources are validated against their own type and the profiles they claim.
//!
//! Locations are kept as a chain of borrowed segments and turned into text only when an
//! issue is raised, so a clean walk allocates no paths.

use std::sync::Arc;

use serde_json::{Map, Value};

use super::plan::{Constraint, ElementRule, Plan};
use super::Validator;
use crate::fhir::{Issue, Severity};
use crate::fhirpath::EvalContext;

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

    pub(super) fn key(&'p self, name: &'p str) -> Loc<'p> {
        Loc {
            parent: Some(self),
            segment: Segment::Name(name),
        }
    }

    /// A value found under `name`, at `index` when the JSON holds an array.
    pub(super) fn value(&'p self, name: &'p str, index: Option<usize>) -> Loc<'p> {
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
pub(super) const MAX_DEPTH: usize = 48;

pub struct Walk<'v> {
    pub v: &'v Validator,
    pub issues: Vec<Issue>,
    pub(super) depth: usize,
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

    /// A contained or bundled resource: its base type, the profiles it claims, and the
    /// profiles the element's type names (one: validated against it; several: it must
    /// conform to one of them).
    fn nested_resource(
        &mut self,
        plan: &Plan,
        el: &ElementRule,
        resource: &Value,
        loc: &Loc,
        root: &Value,
    ) {
        if self.depth >= MAX_DEPTH {
            return;
        }
        let Some(rt) = resource.get("resourceType").and_then(Value::as_str) else {
            return; // the strict reader reports it
        };
        let named: Vec<String> = el
            .types
            .iter()
            .filter(|t| t.code == rt || t.code == "Resource")
            .flat_map(|t| t.profiles.iter().cloned())
            .collect();
        let explicit: &[String] = if named.len() == 1 { &named } else { &[] };
        self.depth += 1;
        for p in self
            .v
            .plans_for(resource, rt, explicit, &mut self.issues, loc)
        {
            self.resource(&p, resource, loc, root);
        }
        self.depth -= 1;
        if named.len() > 1 && !named.iter().any(|p| self.v.conforms(resource, rt, p)) {
            self.issue(
                plan,
                Severity::Error,
                "structure",
                format!(
                    "the {rt} conforms to none of the profiles {} allows ({})",
                    el.id,
                    named.join(", ")
                ),
                loc,
            );
        }
    }

    /// One instance value against element `index` of `plan`.
    pub(super) fn element(&mut self, plan: &Plan, index: usize, item: Item, loc: &Loc, ctx: Ctx) {
        let el = &plan.elements[index];
        if let Some(value) = item.value {
            self.value_rules(plan, el, item, value, loc, ctx);
        }
        if index != 0 && is_resource_type(self.v, item.ty) {
            if let Some(value) = item.value {
                self.nested_resource(plan, el, value, loc, ctx.root);
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
                self.extensions(plan, k, &found, loc, ctx, item.ty);
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
            let ty = instance_type(el);
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
fn instance_type(el: &ElementRule) -> &str {
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
