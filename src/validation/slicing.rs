//! Slice matching (R4 Profiling, "Slicing"): which slice an instance value belongs to, by
//! the discriminators of the slicing. For each discriminator the value the slice expects
//! is read from the slice's element tree along the discriminator path (descending into a
//! fixed or pattern value where the tree stops), and the instance's values at the path
//! (evaluated with FHIRPath) are compared with it:
//!
//! - `value`: a value equals the fixed value, matches the pattern, or (no fixed value) is
//!   in the value set of a required binding;
//! - `pattern`: a value matches the pattern (or the fixed value);
//! - `type`: a value's type is one of the slice's types;
//! - `profile`: a value conforms to one of the slice's profiles;
//! - `exists`: values are present exactly when the slice requires the element.

use serde_json::Value;

use super::plan::{DiscriminatorKind, Plan, Strength};
use super::values;
use super::walk::{Ctx, Item, Walk};
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

/// What a slice expects at a discriminator path.
enum Expected<'p> {
    Fixed(&'p Value),
    Pattern(&'p Value),
    Url(&'p str),
    Binding(&'p str),
    Types(Vec<&'p str>),
    Profiles(Vec<&'p str>),
    Exists(bool),
    /// The slice does not say: the value cannot belong to it.
    Unknown,
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

/// Whether `item`, a value of the element `base`, belongs to slice `slice`.
pub fn matches(w: &mut Walk, plan: &Plan, base: usize, slice: usize, item: Item, ctx: Ctx) -> bool {
    let Some(slicing) = &plan.elements[base].slicing else {
        return false;
    };
    if slicing.discriminators.is_empty() {
        return false;
    }
    let services = super::services::ValidationServices { v: w.v };
    for d in &slicing.discriminators {
        let want = expected(plan, slice, d.kind, &d.path);
        if matches!(want, Expected::Unknown) {
            return false;
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
                    return false;
                };
                for r in &result {
                    if let fhirpath::Item::Node(n) = r {
                        if let Some(j) = n.json {
                            actual.push((j, n.ty.to_string()));
                        }
                    }
                }
            }
            (Some(_), None) => {}
        }
        let ok = match want {
            Expected::Fixed(f) => actual.iter().any(|(a, _)| values::fixed_matches(f, a)),
            Expected::Pattern(p) => actual.iter().any(|(a, _)| values::pattern_matches(p, a)),
            Expected::Url(u) => actual.iter().any(|(a, _)| a.as_str() == Some(u)),
            Expected::Binding(vs) => actual.iter().any(|(a, ty)| {
                let code = a.as_str().or_else(|| a.get("code").and_then(Value::as_str));
                let system = a.get("system").and_then(Value::as_str);
                let _ = ty;
                code.is_some_and(|c| {
                    w.v.terminology.contains(vs, system, c) == Ok(Membership::Member)
                })
            }),
            Expected::Types(ts) => actual.iter().any(|(a, ty)| {
                let t = a
                    .get("resourceType")
                    .and_then(Value::as_str)
                    .unwrap_or(ty.as_str());
                ts.contains(&t)
            }),
            Expected::Profiles(ps) => actual
                .iter()
                .any(|(a, ty)| ps.iter().any(|p| w.v.conforms(a, ty, p))),
            Expected::Exists(e) => actual.is_empty() != e,
            Expected::Unknown => false,
        };
        if !ok {
            return false;
        }
    }
    true
}
