//! Slice matching (R4 Profiling, "Slicing"): which slice an instance value belongs to, by
//! the discriminators of the slicing. For each discriminator the value the slice expects
//! is read once, when the plan is compiled, from the slice's element tree along the
//! discriminator path (descending into a fixed or pattern value where the tree stops:
//! `compile_keys`), and the instance's values at the path (evaluated with FHIRPath) are
//! compared with it:
//!
//! - `value`: a value equals the fixed value, matches the pattern, or (no fixed value) is
//!   in the value set of a required binding;
//! - `pattern`: a value matches the pattern (or the fixed value);
//! - `type`: a value's type is one of the slice's types;
//! - `profile`: a value conforms to one of the slice's profiles;
//! - `exists`: values are present exactly when the slice requires the element.
//!
//! Then the distribution: each value of a sliced element is checked against the element and
//! the first slice it matches, closed slicing refuses the rest, and slice cardinalities are
//! counted. Extensions are distributed by URL; one that no slice takes is checked against
//! the StructureDefinition its URL names, and unknown URLs are reported (DESIGN section 10).

use serde_json::Value;

use super::plan::{DiscriminatorKind, ElementRule, Plan, SliceKey, SlicingRules, Strength};
use super::values;
use super::walk::{Ctx, Found, Item, Loc, Walk, MAX_DEPTH};
use crate::fhir::types::truncate;
use crate::fhir::Severity;
use crate::fhirpath::{self, EvalContext};
use crate::terminology::Membership;

/// The URL an extension slice stands for: the profile of its type, or its fixed `url`.
pub fn extension_slice_url(plan: &Plan, slice: usize) -> Option<&str> {
    let el = &plan.elements[slice];
    if let Some(p) = el.types.first().and_then(|t| t.profiles.first()) {
        return Some(p.split('|').next().unwrap_or(p));
    }
    let url = plan.child(slice, "url")?;
    let url = &plan.elements[url];
    url.fixed
        .as_ref()
        .or(url.pattern.as_ref())
        .and_then(Value::as_str)
}

/// Fills in what every slice of the plan expects at each discriminator (once, when the
/// plan is compiled).
pub fn compile_keys(plan: &mut Plan) {
    let mut keys = Vec::new();
    for el in &plan.elements {
        let Some(slicing) = &el.slicing else {
            continue;
        };
        for &slice in &el.slices {
            let k: Vec<SliceKey> = slicing
                .discriminators
                .iter()
                .map(|d| expected(plan, slice, d.kind, &d.path).owned())
                .collect();
            keys.push((slice, k));
        }
    }
    for (slice, k) in keys {
        plan.elements[slice].slice_keys = k;
    }
}

/// What a slice expects at a discriminator path, borrowed from the plan.
enum Expected<'p> {
    Fixed(&'p Value),
    Pattern(&'p Value),
    Url(&'p str),
    Binding(&'p str),
    Types(Vec<&'p str>),
    Profiles(Vec<&'p str>),
    Exists(bool),
    /// The slice does not say: matching cannot tell.
    Unknown,
}

impl Expected<'_> {
    fn owned(self) -> SliceKey {
        let strings = |v: Vec<&str>| v.into_iter().map(str::to_string).collect();
        match self {
            Expected::Fixed(v) => SliceKey::Fixed(v.clone()),
            Expected::Pattern(v) => SliceKey::Pattern(v.clone()),
            Expected::Url(u) => SliceKey::Url(u.to_string()),
            Expected::Binding(vs) => SliceKey::Binding(vs.to_string()),
            Expected::Types(t) => SliceKey::Types(strings(t)),
            Expected::Profiles(p) => SliceKey::Profiles(strings(p)),
            Expected::Exists(e) => SliceKey::Exists(e),
            Expected::Unknown => SliceKey::Unknown,
        }
    }
}

fn expected<'p>(plan: &'p Plan, slice: usize, kind: DiscriminatorKind, path: &str) -> Expected<'p> {
    let mut at = slice;
    // descending into a fixed/pattern value: (is it a pattern, the value)
    let mut inside: Option<(bool, &'p Value)> = None;
    let segments: Vec<&str> = if path == "$this" {
        Vec::new()
    } else {
        path.split('.').collect()
    };
    for seg in segments {
        if seg.starts_with("ofType(") || seg == "$this" {
            continue;
        }
        if let Some((is_pattern, v)) = inside {
            let next = match v {
                Value::Array(items) => items.first().and_then(|i| i.get(seg)),
                other => other.get(seg),
            };
            match next {
                Some(n) => inside = Some((is_pattern, n)),
                None => return Expected::Unknown,
            }
            continue;
        }
        if seg == "resolve()" {
            let el = &plan.elements[at];
            return match kind {
                DiscriminatorKind::Profile => Expected::Profiles(
                    el.types
                        .iter()
                        .flat_map(|t| t.target_profiles.iter().map(String::as_str))
                        .collect(),
                ),
                _ => Expected::Unknown,
            };
        }
        if let Some(url) = seg
            .strip_prefix("extension('")
            .and_then(|s| s.strip_suffix("')"))
        {
            let Some(ext) = plan.child(at, "extension") else {
                return Expected::Unknown;
            };
            match plan.elements[ext]
                .slices
                .iter()
                .copied()
                .find(|&s| extension_slice_url(plan, s) == Some(url))
            {
                Some(s) => at = s,
                None => return Expected::Unknown,
            }
            continue;
        }
        let el = &plan.elements[at];
        if let Some(f) = &el.fixed {
            inside = f.get(seg).map(|v| (false, v));
            if inside.is_none() {
                return Expected::Unknown;
            }
            continue;
        }
        if let Some(p) = &el.pattern {
            let next = match p {
                Value::Array(items) => items.first().and_then(|i| i.get(seg)),
                other => other.get(seg),
            };
            inside = next.map(|v| (true, v));
            if inside.is_none() {
                return Expected::Unknown;
            }
            continue;
        }
        match plan.child(at, seg) {
            Some(c) => at = c,
            None => {
                // An extension slice whose url is not unfolded stands for its profile.
                if seg == "url"
                    && matches!(kind, DiscriminatorKind::Value | DiscriminatorKind::Pattern)
                {
                    return match extension_slice_url(plan, at) {
                        Some(u) => Expected::Url(u),
                        None => Expected::Unknown,
                    };
                }
                return Expected::Unknown;
            }
        }
    }
    if let Some((is_pattern, v)) = inside {
        return if is_pattern {
            Expected::Pattern(v)
        } else {
            Expected::Fixed(v)
        };
    }
    let el = &plan.elements[at];
    match kind {
        DiscriminatorKind::Value | DiscriminatorKind::Pattern => {
            if let Some(f) = &el.fixed {
                Expected::Fixed(f)
            } else if let Some(p) = &el.pattern {
                Expected::Pattern(p)
            } else if let Some(b) = el
                .binding
                .as_ref()
                .filter(|b| b.strength == Strength::Required)
            {
                Expected::Binding(&b.value_set)
            } else {
                Expected::Unknown
            }
        }
        DiscriminatorKind::Type => {
            Expected::Types(el.types.iter().map(|t| t.code.as_str()).collect())
        }
        DiscriminatorKind::Profile => Expected::Profiles(
            el.types
                .iter()
                .flat_map(|t| t.profiles.iter().map(String::as_str))
                .collect(),
        ),
        DiscriminatorKind::Exists => Expected::Exists(el.min > 0 && el.max != Some(0)),
    }
}

/// Whether a value belongs to a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SliceMatch {
    Yes,
    No,
    /// A discriminator cannot be evaluated here: the slice does not say what it expects,
    /// or the path needs what the instance does not hold (`resolve()` of a reference to
    /// a resource outside it).
    CannotTell,
}

/// Whether `item`, a value of the element `base`, belongs to slice `slice`.
pub fn matches(
    w: &mut Walk,
    plan: &Plan,
    base: usize,
    slice: usize,
    item: Item,
    ctx: Ctx,
) -> SliceMatch {
    let Some(slicing) = &plan.elements[base].slicing else {
        return SliceMatch::CannotTell;
    };
    if slicing.discriminators.is_empty() {
        return SliceMatch::CannotTell;
    }
    let services = super::services::ValidationServices { v: w.v };
    let mut unsure = false;
    let keys = &plan.elements[slice].slice_keys;
    if keys.len() != slicing.discriminators.len() {
        return SliceMatch::CannotTell;
    }
    for (d, want) in slicing.discriminators.iter().zip(keys) {
        if matches!(want, SliceKey::Unknown) {
            unsure = true;
            continue;
        }
        // The instance's values at the path: (JSON, FHIR type).
        let mut actual: Vec<(&Value, String)> = Vec::new();
        match (&d.expression, item.value) {
            (None, Some(v)) => actual.push((v, item.ty.to_string())),
            (None, None) => {}
            (Some(expr), Some(v)) => {
                let mut ectx = EvalContext::new(w.v.model.path_model());
                ectx.resource = Some(ctx.resource);
                ectx.root_resource = Some(ctx.root);
                ectx.input_type = Some(item.ty);
                ectx.services = &services;
                let Ok(result) = expr.evaluate(&ectx, v) else {
                    unsure = true;
                    continue;
                };
                for r in &result {
                    if let fhirpath::Item::Node(n) = r {
                        if let Some(j) = n.json {
                            actual.push((j, n.ty.to_string()));
                        }
                    }
                }
                if actual.is_empty() && d.path.contains("resolve()") {
                    unsure = true;
                    continue;
                }
            }
            (Some(_), None) => {}
        }
        let ok = match want {
            SliceKey::Fixed(f) => actual.iter().any(|(a, _)| values::fixed_matches(f, a)),
            SliceKey::Pattern(p) => actual.iter().any(|(a, _)| values::pattern_matches(p, a)),
            SliceKey::Url(u) => actual.iter().any(|(a, _)| a.as_str() == Some(u.as_str())),
            SliceKey::Binding(vs) => actual.iter().any(|(a, _)| {
                // a code, a Coding, or a CodeableConcept (any of its codings)
                let codings: Vec<&Value> = match a.get("coding").and_then(Value::as_array) {
                    Some(cs) => cs.iter().collect(),
                    None => vec![a],
                };
                codings.into_iter().any(|c| {
                    let code = c.as_str().or_else(|| c.get("code").and_then(Value::as_str));
                    let system = c.get("system").and_then(Value::as_str);
                    code.is_some_and(|code| {
                        w.v.terminology.contains(vs, system, code) == Ok(Membership::Member)
                    })
                })
            }),
            SliceKey::Types(ts) => actual.iter().any(|(a, ty)| {
                let t = a
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or(ty.as_str());
                ts.iter().any(|x| x == t)
            }),
            SliceKey::Profiles(ps) => actual
                .iter()
                .any(|(a, ty)| ps.iter().any(|p| w.v.conforms(a, ty, p))),
            SliceKey::Exists(e) => actual.is_empty() != *e,
            SliceKey::Unknown => false,
        };
        if !ok {
            return SliceMatch::No;
        }
    }
    if unsure {
        SliceMatch::CannotTell
    } else {
        SliceMatch::Yes
    }
}

impl Walk<'_> {
    /// Extensions: by slice (URL) where the profile slices them, else by the
    /// StructureDefinition their URL names; unknown URLs are reported (DESIGN section 10).
    pub(super) fn extensions(
        &mut self,
        plan: &Plan,
        k: usize,
        found: &[Found],
        loc: &Loc,
        ctx: Ctx,
        parent_type: &str,
    ) {
        let el = &plan.elements[k];
        let mut counts = vec![0usize; el.slices.len()];
        let mut order = SliceOrder::of(el);
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
                    .position(|&s| extension_slice_url(plan, s) == Some(u))
            });
            match slot {
                Some(n) => {
                    counts[n] += 1;
                    for finding in order.matched(plan, el, n) {
                        self.issue(plan, Severity::Error, "structure", finding, &at);
                    }
                    self.element(plan, el.slices[n], f.item, &at, ctx);
                }
                None => {
                    order.unmatched();
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
                    self.unsliced_extension(plan, el, f.item, url, &at, ctx, (loc, parent_type));
                }
            }
        }
        self.slice_counts(plan, el, &counts, loc, true);
    }

    /// An extension no slice of the profile names: validated against the definition its
    /// URL names, which must allow it where it is (`parent`: the extended element's place
    /// and type).
    #[allow(clippy::too_many_arguments)]
    fn unsliced_extension(
        &mut self,
        plan: &Plan,
        el: &ElementRule,
        item: Item,
        url: Option<&str>,
        loc: &Loc,
        ctx: Ctx,
        parent: (&Loc, &str),
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
                if !self.context_allows(&ext.contexts, parent.0, parent.1) {
                    let allowed: Vec<&str> = ext.contexts.iter().map(|(_, e)| e.as_str()).collect();
                    // The R4 core package uses several of its own extensions outside their
                    // declared contexts (structuredefinition-fhir-type, regex and
                    // normative-version on ElementDefinition) and the reference validator
                    // counts those examples valid: a warning for core extensions, an error
                    // for every other definition.
                    let core = url.starts_with("http://hl7.org/fhir/StructureDefinition/");
                    let severity = if core {
                        Severity::Warning
                    } else {
                        Severity::Error
                    };
                    self.issue(
                        plan,
                        severity,
                        "structure",
                        format!(
                            "the extension {} is not allowed here: its definition allows it on {}, and this is {} ({})",
                            truncate(url, 200),
                            allowed.join(", "),
                            logical_path(parent.0).join("."),
                            parent.1
                        ),
                        loc,
                    );
                }
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
    /// first slice it matches; closed slicing refuses the rest, `openAtEnd` refuses them
    /// before a sliced value, `ordered` refuses slices out of their defined order; slice
    /// cardinalities.
    pub(super) fn sliced(&mut self, plan: &Plan, k: usize, found: &[Found], loc: &Loc, ctx: Ctx) {
        let el = &plan.elements[k];
        let closed = el
            .slicing
            .as_ref()
            .is_some_and(|s| s.rules == SlicingRules::Closed);
        let mut order = SliceOrder::of(el);
        let mut counts = vec![0usize; el.slices.len()];
        let mut undecided = false;
        for f in found {
            let at = loc.value(f.key, f.index);
            self.element(plan, k, f.item, &at, ctx);
            let mut slot = None;
            let mut unsure = false;
            for (n, &s) in el.slices.iter().enumerate() {
                match matches(self, plan, k, s, f.item, ctx) {
                    SliceMatch::Yes => {
                        slot = Some(n);
                        break;
                    }
                    SliceMatch::CannotTell => unsure = true,
                    SliceMatch::No => {}
                }
            }
            match slot {
                Some(n) => {
                    counts[n] += 1;
                    for finding in order.matched(plan, el, n) {
                        self.issue(plan, Severity::Error, "structure", finding, &at);
                    }
                    self.element(plan, el.slices[n], f.item, &at, ctx);
                }
                None if unsure => {
                    // Not knowing is not a finding against the instance: no closed-slicing
                    // error and no slice minimums for this element (the reference validator
                    // also only warns when it cannot evaluate a slicing).
                    undecided = true;
                    self.issue(
                        plan,
                        Severity::Warning,
                        "processing",
                        format!(
                            "the slices of {} cannot be told apart for this value (a discriminator cannot be evaluated here)",
                            el.id
                        ),
                        &at,
                    );
                }
                None if closed => {
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
                None => order.unmatched(),
            }
        }
        self.slice_counts(plan, el, &counts, loc, !undecided);
    }

    fn slice_counts(
        &mut self,
        plan: &Plan,
        el: &ElementRule,
        counts: &[usize],
        loc: &Loc,
        check_min: bool,
    ) {
        for (n, &s) in el.slices.iter().enumerate() {
            let slice = &plan.elements[s];
            let name = slice.slice_name.as_deref().unwrap_or("?");
            if check_min && counts[n] < slice.min as usize {
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

impl Walk<'_> {
    /// Whether an extension with these `context`s may extend the element at `at` of type
    /// `ty`. Only `element` contexts are judged (a definition with a `fhirpath` or
    /// `extension` context is allowed anywhere). A type context matches the element's type
    /// or a type it derives from (`Element` everything, `Resource` every resource); a path
    /// context (`Address.line`, `Patient.contact`) matches when the element's path ends
    /// with the segments after its first (choice `[x]` segments match their typed names),
    /// so datatype paths match wherever the datatype is used. Lenient where the
    /// instance does not say more: what is refused is certainly outside every context.
    fn context_allows(&self, contexts: &[(String, String)], at: &Loc, ty: &str) -> bool {
        if contexts.is_empty() || contexts.iter().any(|(kind, _)| kind != "element") {
            return true;
        }
        let path = logical_path(at);
        let model = self.v.model.path_model();
        contexts.iter().any(|(_, e)| match e.split_once('.') {
            None => {
                e == ty
                    || e == "Element"
                    || (e == "BackboneElement" && ty.contains('.'))
                    // a type this model does not define (abstract, of a later release):
                    // cannot tell, so not refused
                    || !fhirpath::ModelInfo::is_type(model, e)
                    || fhirpath::is_a(model, ty, e)
            }
            Some(_) if e == ty => true,
            Some((_, rest)) => {
                let want: Vec<&str> = rest.split('.').collect();
                // a location that starts at a datatype (a value checked on its own, as
                // slice matching does) is too short to tell: not refused
                path.len() <= want.len()
                    || path[path.len() - want.len()..]
                        .iter()
                        .zip(&want)
                        .all(|(have, want)| segment_matches(have, want))
            }
        })
    }
}

/// The element names of an instance location without indexes; `_name` (a primitive's
/// extensions) is `name`.
fn logical_path(at: &Loc) -> Vec<String> {
    at.render()
        .split('.')
        .map(|s| {
            let name = s.split('[').next().unwrap_or(s);
            name.strip_prefix('_').unwrap_or(name).to_string()
        })
        .collect()
}

/// An instance element name against a definition path segment (`value[x]` matches
/// `valueQuantity`).
fn segment_matches(have: &str, want: &str) -> bool {
    match want.strip_suffix("[x]") {
        Some(stem) => have
            .strip_prefix(stem)
            .is_some_and(|t| t.is_empty() || t.starts_with(|c: char| c.is_ascii_uppercase())),
        None => have == want,
    }
}

/// `ordered` and `openAtEnd` of one slicing, followed value by value in instance order.
struct SliceOrder {
    ordered: bool,
    at_end: bool,
    /// The latest slice (in definition order) a value matched so far.
    last: Option<usize>,
    unmatched_seen: bool,
}

impl SliceOrder {
    fn of(el: &ElementRule) -> SliceOrder {
        SliceOrder {
            ordered: el.slicing.as_ref().is_some_and(|s| s.ordered),
            at_end: el
                .slicing
                .as_ref()
                .is_some_and(|s| s.rules == SlicingRules::OpenAtEnd),
            last: None,
            unmatched_seen: false,
        }
    }

    /// A value that matches no slice.
    fn unmatched(&mut self) {
        self.unmatched_seen = true;
    }

    /// A value that matches slice `n` of `el`: what its place breaks.
    fn matched(&mut self, plan: &Plan, el: &ElementRule, n: usize) -> Vec<String> {
        let name = |i: usize| {
            plan.elements[el.slices[i]]
                .slice_name
                .as_deref()
                .unwrap_or("?")
        };
        let mut findings = Vec::new();
        if self.at_end && self.unmatched_seen {
            findings.push(format!(
                "the slicing of {} is openAtEnd: values that match no slice must come after those of slice {}",
                el.id,
                name(n)
            ));
        }
        if let Some(before) = self.last.filter(|&b| self.ordered && b > n) {
            findings.push(format!(
                "the slices of {} are ordered: slice {} must come before slice {}",
                el.id,
                name(n),
                name(before)
            ));
        }
        self.last = Some(self.last.map_or(n, |b| b.max(n)));
        findings
    }
}

/// Domains the HL7 examples use for made-up extensions (`example.org`, `acme.com`,
/// `nema.org`).
fn is_example_domain(url: &str) -> bool {
    ["example.org", "acme.com", "nema.org"]
        .iter()
        .any(|d| url.contains(d))
}
