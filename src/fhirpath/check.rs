//! Static checks of a compiled expression against the type of its input (FHIRPath's "strict"
//! semantic checking): a path step that no possible input type has (`Patient.name.given1`,
//! `Encounter.name` on a Patient, `valueQuantity` where FHIRPath says `value`, `unit` on a
//! Period) is a semantic error with the step's position. The check is conservative: once types
//! cannot be known (computed values, `resolve()`, abstract `Resource`), nothing is reported.

use super::ast::BinOp;
use super::compile::{Func, Op, Plan};
use super::error::{FhirPathError, Result};
use super::model::{is_a, ModelInfo};

/// Possible FHIR types of a collection; None when unknown.
type Types = Option<Vec<String>>;

/// Checks `expr` for an input of FHIR type `root_type` (a resource type, a data type or a
/// backbone element path such as `Patient.contact`). An empty `root_type` checks nothing.
pub fn check(expr: &super::Expression, root_type: &str, model: &dyn ModelInfo) -> Result<()> {
    if root_type.is_empty() || !model.is_type(root_type) {
        return Ok(());
    }
    let c = Checker {
        model,
        root: root_type,
    };
    let root = Some(vec![root_type.to_string()]);
    c.walk(&expr.plan, &root, &root).map(|_| ())
}

struct Checker<'m> {
    model: &'m dyn ModelInfo,
    root: &'m str,
}

impl Checker<'_> {
    /// Types whose children cannot be listed (abstract bases, open content).
    fn open(&self, t: &str) -> bool {
        matches!(
            t,
            "Resource" | "DomainResource" | "Element" | "BackboneElement" | ""
        ) || !self.model.is_type(t)
    }

    fn walk(&self, plan: &Plan, focus: &Types, this: &Types) -> Result<Types> {
        Ok(match &plan.op {
            Op::Literal(_) | Op::Index | Op::Total => None,
            Op::This => this.clone(),
            Op::External(name) => match name.as_str() {
                "context" => Some(vec![self.root.to_string()]),
                _ => None,
            },
            Op::Member { base, name } => {
                let input = match base {
                    Some(b) => self.walk(b, focus, this)?,
                    None => focus.clone(),
                };
                let Some(types) = input else {
                    return Ok(None);
                };
                if base.is_none() && name.starts_with(|c: char| c.is_ascii_uppercase()) {
                    if types.iter().any(|t| t == name || is_a(self.model, t, name)) {
                        return Ok(Some(vec![name.clone()]).map(|_| types.clone()));
                    }
                    if self.model.is_resource_type(name)
                        && types
                            .iter()
                            .all(|t| self.model.is_resource_type(t) && !self.open(t))
                    {
                        return Err(self.error(
                            plan,
                            format!(
                                "'{name}' does not match the input type {}",
                                types.join(" | ")
                            ),
                        ));
                    }
                }
                let mut out = Vec::new();
                for t in &types {
                    if self.open(t) {
                        return Ok(None);
                    }
                    if let Some(info) = self.model.child(t, name) {
                        out.extend(info.types.iter().cloned());
                    }
                }
                if out.is_empty() {
                    return Err(self.error(
                        plan,
                        format!("no element '{name}' on type {}", types.join(" | ")),
                    ));
                }
                Some(out)
            }
            Op::Call {
                base,
                func,
                args,
                ty,
            } => {
                let input = match base {
                    Some(b) => self.walk(b, focus, this)?,
                    None => focus.clone(),
                };
                let lambda = matches!(
                    func,
                    Func::Where
                        | Func::Select
                        | Func::Exists
                        | Func::All
                        | Func::Repeat
                        | Func::RepeatAll
                        | Func::Sort
                        | Func::Aggregate
                        | Func::Trace
                );
                let mut arg_types = Vec::new();
                for (i, a) in args.iter().enumerate() {
                    let per_item = (lambda && !(*func == Func::Aggregate && i == 1))
                        || (*func == Func::Iif && base.is_some());
                    let t = if per_item {
                        self.walk(a, &input, &input)?
                    } else {
                        self.walk(a, focus, this)?
                    };
                    arg_types.push(t);
                }
                match func {
                    Func::Where
                    | Func::First
                    | Func::Last
                    | Func::Tail
                    | Func::Skip
                    | Func::Take
                    | Func::Single
                    | Func::Distinct
                    | Func::Trace
                    | Func::Intersect
                    | Func::Exclude
                    | Func::Sort => input,
                    Func::Select => arg_types.into_iter().next().flatten(),
                    Func::OfType | Func::As => ty.as_ref().and_then(|t| {
                        if t.namespace.as_deref() == Some("System") || t.system.is_some() {
                            None
                        } else if self.model.is_type(&t.name) {
                            Some(vec![t.name.clone()])
                        } else {
                            None
                        }
                    }),
                    _ => None,
                }
            }
            Op::Indexer { base, index } => {
                self.walk(index, focus, this)?;
                self.walk(base, focus, this)?
            }
            Op::Negate(inner) => {
                self.walk(inner, focus, this)?;
                None
            }
            Op::Binary { op, left, right } => {
                let l = self.walk(left, focus, this)?;
                let r = self.walk(right, focus, this)?;
                match (op, l, r) {
                    (BinOp::Union, Some(mut a), Some(b)) => {
                        a.extend(b);
                        Some(a)
                    }
                    _ => None,
                }
            }
            Op::Is(inner, _) => {
                self.walk(inner, focus, this)?;
                None
            }
            Op::As(inner, t) => {
                self.walk(inner, focus, this)?;
                if t.namespace.as_deref() != Some("System")
                    && t.system.is_none()
                    && self.model.is_type(&t.name)
                {
                    Some(vec![t.name.clone()])
                } else {
                    None
                }
            }
        })
    }

    fn error(&self, plan: &Plan, message: String) -> FhirPathError {
        FhirPathError::Semantic {
            position: plan.pos,
            message,
        }
    }
}
