//! The evaluator: runs a compiled plan over borrowed JSON. It owns the evaluation context
//! (model, `%resource`, external constants, local time-zone offset, clock, callbacks), the
//! iteration variables (`$this`, `$index`, `$total`) and the operators with their FHIRPath
//! rules: empty propagation, singleton evaluation, three-valued logic and collection equality.
//! Functions live in `functions/`.

use std::cell::OnceCell;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::rc::Rc;

use rust_decimal::Decimal;
use serde_json::Value;

use super::ast::BinOp;
use super::compile::{Lit, Op, Plan, TypeRef};
use super::datetime::{CalendarUnit, DateTime};
use super::error::{FhirPathError, Position, Result};
use super::model::ModelInfo;
use super::nav;
use super::quantity::Quantity;
use super::value::{self, as_decimal, Collection, Item, Text};

/// Callbacks into the host for what the engine cannot know by itself. Every method has a
/// default that reports "not available".
pub trait Services {
    /// Resolves a reference (`Patient/123`, an absolute URL) that is neither contained nor in
    /// the enclosing Bundle. The value must live as long as the evaluation (pre-fetch it).
    fn resolve(&self, _reference: &str) -> Option<&Value> {
        None
    }
    /// `memberOf`: is the code/Coding/CodeableConcept (`item`, of FHIR type `item_type`) in the
    /// value set? None when unknown (gives empty).
    fn member_of(
        &self,
        _item: &Value,
        _item_type: &str,
        _value_set: &str,
    ) -> std::result::Result<Option<bool>, String> {
        Ok(None)
    }
    /// `conformsTo`: does the resource conform to the profile? Err for an unknown profile.
    fn conforms_to(
        &self,
        _resource: &Value,
        _resource_type: &str,
        profile: &str,
    ) -> std::result::Result<bool, String> {
        Err(format!("conformsTo('{profile}') is not available here"))
    }
    /// `subsumes`: does code `a` subsume code `b` in `system`? None when unknown.
    fn subsumes(
        &self,
        _system: &str,
        _a: &str,
        _b: &str,
    ) -> std::result::Result<Option<bool>, String> {
        Ok(None)
    }
    /// `slice(structure, name)`: does `item` (of type `item_type`) match the slice?
    fn slice_matches(
        &self,
        _item: &Value,
        _item_type: &str,
        structure: &str,
        slice: &str,
    ) -> std::result::Result<bool, String> {
        Err(format!(
            "slice('{structure}', '{slice}') is not available here"
        ))
    }
    /// `elementDefinition()`: the ElementDefinition of an element of type `item_type`.
    fn element_definition(&self, _item_type: &str) -> Option<&Value> {
        None
    }
}

/// No callbacks.
pub struct NoServices;
impl Services for NoServices {}

/// Receives `trace()` output: name and the traced items.
pub type Tracer = dyn Fn(&str, &[Item<'_>]);

/// Everything an evaluation needs besides the expression and the input.
pub struct EvalContext<'a> {
    pub model: &'a dyn ModelInfo,
    /// `%resource`; defaults to the input.
    pub resource: Option<&'a Value>,
    /// `%rootResource`; defaults to `%resource`.
    pub root_resource: Option<&'a Value>,
    /// FHIR type of the input when it is not a resource (e.g. `HumanName` for a constraint
    /// on a data type); resources take their `resourceType`.
    pub input_type: Option<&'a str>,
    /// External constants (`%name`), as collections.
    pub variables: HashMap<String, Collection<'a>>,
    /// Offset of local time from UTC in minutes, used by `now()`, `today()`, `timeOfDay()` and
    /// when comparing a dateTime without zone with one that has a zone.
    pub tz_offset_minutes: i32,
    /// The instant `now()` returns; when None the clock is read once per evaluation.
    pub now: Option<chrono::DateTime<chrono::FixedOffset>>,
    pub services: &'a dyn Services,
    pub tracer: Option<&'a Tracer>,
}

impl<'a> EvalContext<'a> {
    pub fn new(model: &'a dyn ModelInfo) -> EvalContext<'a> {
        EvalContext {
            model,
            resource: None,
            root_resource: None,
            input_type: None,
            variables: HashMap::new(),
            tz_offset_minutes: 0,
            now: None,
            services: &NoServices,
            tracer: None,
        }
    }
}

/// Iteration variables of the innermost `where`/`select`/... .
#[derive(Clone, Copy)]
pub struct Env<'e, 'a> {
    pub this: Option<&'e Item<'a>>,
    pub index: Option<usize>,
    pub total: Option<&'e [Item<'a>]>,
}

impl Env<'_, '_> {
    pub fn root() -> Self {
        Env {
            this: None,
            index: None,
            total: None,
        }
    }
}

/// One evaluation in progress.
pub struct Evaluator<'a, 'c> {
    pub ctx: &'c EvalContext<'a>,
    pub model: &'a dyn ModelInfo,
    /// `%context`: the input collection.
    pub input: &'c [Item<'a>],
    now: OnceCell<chrono::DateTime<chrono::FixedOffset>>,
}

pub fn err(pos: Position, message: impl Into<String>) -> FhirPathError {
    FhirPathError::Evaluation {
        position: pos,
        message: message.into(),
    }
}

impl<'a, 'c> Evaluator<'a, 'c> {
    pub fn new(ctx: &'c EvalContext<'a>, input: &'c [Item<'a>]) -> Self {
        Evaluator {
            ctx,
            model: ctx.model,
            input,
            now: OnceCell::new(),
        }
    }

    pub fn tz(&self) -> i32 {
        self.ctx.tz_offset_minutes
    }

    /// The evaluation's instant, read once.
    pub fn now(&self) -> chrono::DateTime<chrono::FixedOffset> {
        *self.now.get_or_init(|| {
            self.ctx.now.unwrap_or_else(|| {
                let offset = self
                    .tz()
                    .checked_mul(60)
                    .and_then(chrono::FixedOffset::east_opt)
                    .unwrap_or(chrono::Utc.fix());
                chrono::Utc::now().with_timezone(&offset)
            })
        })
    }

    /// Evaluates `plan` with `focus` as the input collection.
    pub fn eval(
        &self,
        plan: &'a Plan,
        focus: &[Item<'a>],
        env: Env<'_, 'a>,
    ) -> Result<Collection<'a>> {
        match &plan.op {
            Op::Literal(l) => Ok(literal(l)),
            Op::This => Ok(match env.this {
                Some(t) => vec![t.clone()],
                None => self.input.to_vec(),
            }),
            Op::Index => Ok(env
                .index
                .map(|i| vec![Item::Integer(i as i64)])
                .unwrap_or_default()),
            Op::Total => Ok(env.total.map(<[Item]>::to_vec).unwrap_or_default()),
            Op::External(name) => self.external(name, plan.pos),
            Op::Member { base, name } => {
                let mut out = Vec::new();
                match base {
                    Some(b) => {
                        let items = self.eval(b, focus, env)?;
                        for it in &items {
                            nav::child(self.model, it, name, &mut out);
                        }
                    }
                    None => {
                        if name.starts_with(|c: char| c.is_ascii_uppercase()) {
                            // a type name at the start of a path selects inputs of that type
                            let mut matched = false;
                            for it in focus {
                                if let Item::Node(n) = it {
                                    if !n.ty.is_empty()
                                        && (n.ty == name
                                            || super::model::is_a(self.model, n.ty, name))
                                    {
                                        out.push(it.clone());
                                        matched = true;
                                    }
                                }
                            }
                            if matched {
                                return Ok(out);
                            }
                        }
                        for it in focus {
                            nav::child(self.model, it, name, &mut out);
                        }
                    }
                }
                Ok(out)
            }
            Op::Call {
                base,
                func,
                args,
                ty,
            } => {
                let owned;
                let input: &[Item<'a>] = match base {
                    Some(b) => {
                        owned = self.eval(b, focus, env)?;
                        &owned
                    }
                    None => focus,
                };
                let call = super::functions::Call {
                    ev: self,
                    func: *func,
                    pos: plan.pos,
                    input,
                    focus,
                    args,
                    ty: ty.as_ref(),
                    env,
                };
                super::functions::call(*func, &call)
            }
            Op::Indexer { base, index } => {
                let items = self.eval(base, focus, env)?;
                let idx = self.eval(index, focus, env)?;
                let i = match self.singleton(&idx, plan.pos)? {
                    None => return Ok(Vec::new()),
                    Some(Item::Integer(i)) => i,
                    Some(_) => return Err(err(plan.pos, "index must be an integer")),
                };
                Ok(usize::try_from(i)
                    .ok()
                    .and_then(|i| items.into_iter().nth(i))
                    .into_iter()
                    .collect())
            }
            Op::Negate(inner) => {
                let v = self.eval(inner, focus, env)?;
                let Some(x) = self.singleton(&v, plan.pos)? else {
                    return Ok(Vec::new());
                };
                Ok(vec![match x {
                    Item::Integer(i) => match i.checked_neg() {
                        Some(n) => Item::Integer(n),
                        None => return Ok(Vec::new()),
                    },
                    Item::Long(i) => match i.checked_neg() {
                        Some(n) => Item::Long(n),
                        None => return Ok(Vec::new()),
                    },
                    Item::Decimal(d) => {
                        let mut n = -d;
                        if n.is_zero() {
                            n.set_sign_positive(true);
                        }
                        Item::Decimal(n)
                    }
                    Item::Quantity(q) => {
                        Item::Quantity(Rc::new(Quantity::new(-q.value, q.unit.clone())))
                    }
                    other => {
                        return Err(err(
                            plan.pos,
                            format!("cannot negate {}", value::type_label(&other)),
                        ))
                    }
                }])
            }
            Op::Binary { op, left, right } => self.binary(*op, left, right, focus, env, plan.pos),
            Op::Is(inner, t) => {
                let v = self.eval(inner, focus, env)?;
                self.is_type(&v, t, plan.pos)
            }
            Op::As(inner, t) => {
                let v = self.eval(inner, focus, env)?;
                self.as_type(&v, t, plan.pos)
            }
        }
    }

    pub fn check_type(&self, t: &TypeRef, pos: Position) -> Result<()> {
        if nav::type_known(self.model, t) {
            Ok(())
        } else {
            Err(err(pos, format!("unknown type '{}'", t.display())))
        }
    }

    pub fn is_type(&self, v: &[Item<'a>], t: &TypeRef, pos: Position) -> Result<Collection<'a>> {
        self.check_type(t, pos)?;
        match v {
            [] => Ok(Vec::new()),
            [x] => Ok(vec![Item::Boolean(nav::type_matches(
                self.model, x, t, false,
            ))]),
            _ => Err(err(pos, "'is' requires a single item")),
        }
    }

    /// `as` (operator and function): the items of type `t`. N1 requires a single input item;
    /// like the HL7 reference validator and HAPI, fhirgate filters a collection of several
    /// items as `ofType()` does, because FHIR R4 itself depends on it: the core invariant dom-3
    /// applies `as(canonical)` to `descendants()`, and the SearchParameters
    /// `component-value-quantity` and `combo-value-quantity` (and their `-concept` siblings)
    /// are `(Observation.component.value as Quantity)`, which would fail on every Observation
    /// with several components (DESIGN section 10; `conformance/fhirpath-known-failures.md`,
    /// `testFHIRPathAsFunction21`).
    pub fn as_type(&self, v: &[Item<'a>], t: &TypeRef, pos: Position) -> Result<Collection<'a>> {
        self.check_type(t, pos)?;
        Ok(v.iter()
            .filter(|it| nav::type_matches(self.model, it, t, true))
            .cloned()
            .collect())
    }

    fn external(&self, name: &str, pos: Position) -> Result<Collection<'a>> {
        if let Some(v) = self.ctx.variables.get(name) {
            return Ok(v.clone());
        }
        let s = |s: &'static str| Ok(vec![Item::String(Text::Borrowed(s))]);
        match name {
            "context" => Ok(self.input.to_vec()),
            "resource" => Ok(match self.ctx.resource {
                Some(r) => vec![Item::Node(nav::node(Some(r), None, ""))],
                None => self.input.to_vec(),
            }),
            "rootResource" => Ok(match self.ctx.root_resource.or(self.ctx.resource) {
                Some(r) => vec![Item::Node(nav::node(Some(r), None, ""))],
                None => self.input.to_vec(),
            }),
            "ucum" => s("http://unitsofmeasure.org"),
            "sct" => s("http://snomed.info/sct"),
            "loinc" => s("http://loinc.org"),
            _ => {
                if let Some(vs) = name.strip_prefix("vs-") {
                    return Ok(vec![Item::string(format!(
                        "http://hl7.org/fhir/ValueSet/{vs}"
                    ))]);
                }
                if let Some(ext) = name.strip_prefix("ext-") {
                    return Ok(vec![Item::string(format!(
                        "http://hl7.org/fhir/StructureDefinition/{ext}"
                    ))]);
                }
                Err(err(pos, format!("unknown external constant '%{name}'")))
            }
        }
    }

    /// Singleton evaluation: empty -> None, one item -> its System value (nodes converted),
    /// more -> error.
    pub fn singleton(&self, v: &[Item<'a>], pos: Position) -> Result<Option<Item<'a>>> {
        match v {
            [] => Ok(None),
            [x] => Ok(Some(match x {
                Item::Node(_) => x.to_system(self.model).unwrap_or_else(|| x.clone()),
                other => other.clone(),
            })),
            _ => Err(err(
                pos,
                format!("expected a single item but the collection has {}", v.len()),
            )),
        }
    }

    /// Singleton evaluation of collections as Boolean (FHIRPath 2.0 section 4.5): a single
    /// non-Boolean item counts as true.
    pub fn boolean(&self, v: &[Item<'a>], pos: Position) -> Result<Option<bool>> {
        match self.singleton(v, pos)? {
            None => Ok(None),
            Some(Item::Boolean(b)) => Ok(Some(b)),
            Some(_) => Ok(Some(true)),
        }
    }

    fn binary(
        &self,
        op: BinOp,
        left: &'a Plan,
        right: &'a Plan,
        focus: &[Item<'a>],
        env: Env<'_, 'a>,
        pos: Position,
    ) -> Result<Collection<'a>> {
        let bool_out = |b: Option<bool>| -> Result<Collection<'a>> {
            Ok(b.map(|b| vec![Item::Boolean(b)]).unwrap_or_default())
        };
        match op {
            BinOp::And => {
                let l = self.boolean(&self.eval(left, focus, env)?, pos)?;
                if l == Some(false) {
                    return bool_out(Some(false));
                }
                let r = self.boolean(&self.eval(right, focus, env)?, pos)?;
                bool_out(match (l, r) {
                    (_, Some(false)) => Some(false),
                    (Some(true), Some(true)) => Some(true),
                    _ => None,
                })
            }
            BinOp::Or => {
                let l = self.boolean(&self.eval(left, focus, env)?, pos)?;
                if l == Some(true) {
                    return bool_out(Some(true));
                }
                let r = self.boolean(&self.eval(right, focus, env)?, pos)?;
                bool_out(match (l, r) {
                    (_, Some(true)) => Some(true),
                    (Some(false), Some(false)) => Some(false),
                    _ => None,
                })
            }
            BinOp::Xor => {
                let l = self.boolean(&self.eval(left, focus, env)?, pos)?;
                let r = self.boolean(&self.eval(right, focus, env)?, pos)?;
                bool_out(match (l, r) {
                    (Some(a), Some(b)) => Some(a != b),
                    _ => None,
                })
            }
            BinOp::Implies => {
                let l = self.boolean(&self.eval(left, focus, env)?, pos)?;
                if l == Some(false) {
                    return bool_out(Some(true));
                }
                let r = self.boolean(&self.eval(right, focus, env)?, pos)?;
                bool_out(match (l, r) {
                    (_, Some(true)) => Some(true),
                    (Some(true), Some(false)) => Some(false),
                    _ => None,
                })
            }
            _ => {
                let l = self.eval(left, focus, env)?;
                let r = self.eval(right, focus, env)?;
                self.binary_values(op, l, r, pos)
            }
        }
    }

    pub fn binary_values(
        &self,
        op: BinOp,
        l: Collection<'a>,
        r: Collection<'a>,
        pos: Position,
    ) -> Result<Collection<'a>> {
        let bool_out = |b: Option<bool>| -> Result<Collection<'a>> {
            Ok(b.map(|b| vec![Item::Boolean(b)]).unwrap_or_default())
        };
        match op {
            BinOp::Union => Ok(self.union(l, r)),
            BinOp::Eq => bool_out(self.collection_equals(&l, &r)),
            BinOp::Ne => bool_out(self.collection_equals(&l, &r).map(|b| !b)),
            BinOp::Equiv => bool_out(Some(self.collection_equivalent(&l, &r))),
            BinOp::NotEquiv => bool_out(Some(!self.collection_equivalent(&l, &r))),
            BinOp::In | BinOp::Contains => {
                let (needle, hay) = if op == BinOp::In { (l, r) } else { (r, l) };
                match needle.len() {
                    0 => Ok(Vec::new()),
                    1 => bool_out(Some(hay.iter().any(|h| {
                        value::equals(&needle[0], h, self.model, self.tz()) == Some(true)
                    }))),
                    _ => Err(err(pos, "membership test requires a single item")),
                }
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let (Some(a), Some(b)) = (self.singleton(&l, pos)?, self.singleton(&r, pos)?)
                else {
                    return Ok(Vec::new());
                };
                let o = value::compare(&a, &b, self.model, self.tz()).map_err(|m| err(pos, m))?;
                bool_out(o.map(|o| match op {
                    BinOp::Lt => o == Ordering::Less,
                    BinOp::Le => o != Ordering::Greater,
                    BinOp::Gt => o == Ordering::Greater,
                    _ => o != Ordering::Less,
                }))
            }
            BinOp::Concat => {
                let text = |v: &[Item<'a>]| -> Result<String> {
                    match self.singleton(v, pos)? {
                        None => Ok(String::new()),
                        Some(Item::String(s)) => Ok(s.as_str().to_string()),
                        Some(other) => Err(err(
                            pos,
                            format!("'&' expects strings, found {}", value::type_label(&other)),
                        )),
                    }
                };
                let mut s = text(&l)?;
                s.push_str(&text(&r)?);
                Ok(vec![Item::string(s)])
            }
            _ => {
                let (Some(a), Some(b)) = (self.singleton(&l, pos)?, self.singleton(&r, pos)?)
                else {
                    return Ok(Vec::new());
                };
                self.arithmetic(op, a, b, pos)
            }
        }
    }

    fn arithmetic(
        &self,
        op: BinOp,
        a: Item<'a>,
        b: Item<'a>,
        pos: Position,
    ) -> Result<Collection<'a>> {
        let overflow = || Ok(Vec::new());
        let one = |i: Item<'a>| Ok(vec![i]);
        match (&a, &b) {
            (Item::String(x), Item::String(y)) if op == BinOp::Add => {
                one(Item::string(format!("{}{}", x.as_str(), y.as_str())))
            }
            (Item::Integer(x), Item::Integer(y)) if op != BinOp::Div => {
                let r = match op {
                    BinOp::Add => x.checked_add(*y),
                    BinOp::Sub => x.checked_sub(*y),
                    BinOp::Mul => x.checked_mul(*y),
                    BinOp::IntDiv => {
                        if *y == 0 {
                            return overflow();
                        }
                        x.checked_div(*y)
                    }
                    BinOp::Mod => {
                        if *y == 0 {
                            return overflow();
                        }
                        x.checked_rem(*y)
                    }
                    _ => None,
                };
                match r.filter(|v| i32::try_from(*v).is_ok()) {
                    Some(v) => one(Item::Integer(v)),
                    None => overflow(),
                }
            }
            (Item::Date(d) | Item::DateTime(d), Item::Quantity(q))
                if matches!(op, BinOp::Add | BinOp::Sub) =>
            {
                let is_date = matches!(a, Item::Date(_));
                let r = date_add(d, q, op == BinOp::Sub).map_err(|m| err(pos, m))?;
                match r {
                    Some(r) if is_date => one(Item::Date(r)),
                    Some(r) => one(Item::DateTime(r)),
                    None => overflow(),
                }
            }
            (Item::Time(t), Item::Quantity(q)) if matches!(op, BinOp::Add | BinOp::Sub) => {
                let unit = CalendarUnit::from_unit(&q.unit)
                    .ok_or_else(|| err(pos, format!("cannot add '{}' to a time", q.unit)))?;
                let mut n = q.value.trunc().try_into().unwrap_or(0i64);
                if op == BinOp::Sub {
                    n = n.saturating_neg();
                }
                match t.add(n, unit) {
                    Some(t) => one(Item::Time(t)),
                    None => overflow(),
                }
            }
            (Item::Quantity(x), Item::Quantity(y)) => self.quantity_arith(op, x, y, pos),
            (Item::Quantity(x), _)
                if as_decimal(&b).is_some() && matches!(op, BinOp::Mul | BinOp::Div) =>
            {
                let n = as_decimal(&b).unwrap_or_default();
                let v = if op == BinOp::Mul {
                    x.value.checked_mul(n)
                } else {
                    x.value.checked_div(n)
                };
                match v {
                    Some(v) => one(Item::Quantity(Rc::new(Quantity::new(v, x.unit.clone())))),
                    None => overflow(),
                }
            }
            (_, Item::Quantity(y)) if as_decimal(&a).is_some() && op == BinOp::Mul => {
                let n = as_decimal(&a).unwrap_or_default();
                match y.value.checked_mul(n) {
                    Some(v) => one(Item::Quantity(Rc::new(Quantity::new(v, y.unit.clone())))),
                    None => overflow(),
                }
            }
            _ => {
                let (Some(x), Some(y)) = (as_decimal(&a), as_decimal(&b)) else {
                    return Err(err(
                        pos,
                        format!(
                            "operator cannot be applied to {} and {}",
                            value::type_label(&a),
                            value::type_label(&b)
                        ),
                    ));
                };
                let longs = matches!(a, Item::Long(_) | Item::Integer(_))
                    && matches!(b, Item::Long(_) | Item::Integer(_));
                let r = match op {
                    BinOp::Add => x.checked_add(y),
                    BinOp::Sub => x.checked_sub(y),
                    BinOp::Mul => x.checked_mul(y),
                    BinOp::Div => {
                        if y.is_zero() {
                            return overflow();
                        }
                        x.checked_div(y).map(|d| d.normalize())
                    }
                    BinOp::IntDiv => {
                        if y.is_zero() {
                            return overflow();
                        }
                        let q = x.checked_div(y).map(|d| d.trunc());
                        return match q.and_then(|q| i64::try_from(q).ok()) {
                            Some(q) => one(Item::Integer(q)),
                            None => overflow(),
                        };
                    }
                    BinOp::Mod => {
                        if y.is_zero() {
                            return overflow();
                        }
                        x.checked_rem(y)
                    }
                    _ => None,
                };
                match r {
                    Some(v) if longs && op != BinOp::Div => match i64::try_from(v) {
                        Ok(i) => one(Item::Long(i)),
                        Err(_) => overflow(),
                    },
                    Some(v) => one(Item::Decimal(v)),
                    None => overflow(),
                }
            }
        }
    }

    fn quantity_arith(
        &self,
        op: BinOp,
        x: &Quantity,
        y: &Quantity,
        pos: Position,
    ) -> Result<Collection<'a>> {
        let q = |v: Option<Decimal>, unit: String| -> Result<Collection<'a>> {
            Ok(
                v.map(|v| vec![Item::Quantity(Rc::new(Quantity::new(v, unit)))])
                    .unwrap_or_default(),
            )
        };
        match op {
            BinOp::Add | BinOp::Sub => {
                // N1 Math, `+` and `-` on quantities: "The unit of the result will be the most
                // granular unit of either input" (`3 'm' - 3 'cm'` is `297 'cm'`); with units
                // of the same size the left one is kept.
                let (xu, yu) = (x.ucum_unit(), y.ucum_unit());
                let y_finer = super::ucum::convert(Decimal::ONE, xu, yu)
                    .is_some_and(|one_x| one_x > Decimal::ONE);
                let aligned = if y_finer {
                    super::ucum::convert(x.value, xu, yu).map(|xv| (xv, y.value, &y.unit))
                } else {
                    super::ucum::convert(y.value, yu, xu).map(|yv| (x.value, yv, &x.unit))
                };
                let Some((a, b, unit)) = aligned else {
                    return Err(err(
                        pos,
                        format!("cannot add quantities in '{}' and '{}'", x.unit, y.unit),
                    ));
                };
                let v = if op == BinOp::Add {
                    a.checked_add(b)
                } else {
                    a.checked_sub(b)
                };
                q(v, unit.clone())
            }
            BinOp::Mul => q(
                x.value.checked_mul(y.value),
                combine_units(x.ucum_unit(), y.ucum_unit(), '.'),
            ),
            BinOp::Div => {
                if y.value.is_zero() {
                    return Ok(Vec::new());
                }
                q(
                    x.value.checked_div(y.value).map(|d| d.normalize()),
                    combine_units(x.ucum_unit(), y.ucum_unit(), '/'),
                )
            }
            _ => Err(err(pos, "operator not defined for quantities")),
        }
    }

    /// `|`: union without duplicates.
    pub fn union(&self, l: Collection<'a>, r: Collection<'a>) -> Collection<'a> {
        let mut out: Collection<'a> = Vec::with_capacity(l.len() + r.len());
        for it in l.into_iter().chain(r) {
            if !out.iter().any(|o| self.same(o, &it)) {
                out.push(it);
            }
        }
        out
    }

    /// Equality used for distinct/union/intersect: `=` with empty counting as not equal.
    pub fn same(&self, a: &Item<'a>, b: &Item<'a>) -> bool {
        value::equals(a, b, self.model, self.tz()) == Some(true)
    }

    pub fn collection_equals(&self, l: &[Item<'a>], r: &[Item<'a>]) -> Option<bool> {
        if l.is_empty() || r.is_empty() {
            return None;
        }
        if l.len() != r.len() {
            return Some(false);
        }
        let mut result = Some(true);
        for (a, b) in l.iter().zip(r) {
            match value::equals(a, b, self.model, self.tz()) {
                Some(true) => {}
                Some(false) => return Some(false),
                None => result = None,
            }
        }
        result
    }

    pub fn collection_equivalent(&self, l: &[Item<'a>], r: &[Item<'a>]) -> bool {
        if l.len() != r.len() {
            return false;
        }
        let mut used = vec![false; r.len()];
        'outer: for a in l {
            for (j, b) in r.iter().enumerate() {
                if !used[j] && value::equivalent(a, b, self.model, self.tz()) {
                    used[j] = true;
                    continue 'outer;
                }
            }
            return false;
        }
        true
    }
}

fn combine_units(a: &str, b: &str, sep: char) -> String {
    let wrap = |u: &str| {
        if u.contains(['.', '/']) {
            format!("({u})")
        } else {
            u.to_string()
        }
    };
    match (a, b, sep) {
        ("1", "1", _) => "1".into(),
        (_, "1", _) => a.to_string(),
        ("1", _, '.') => b.to_string(),
        _ => format!("{}{sep}{}", wrap(a), wrap(b)),
    }
}

/// Date/time plus or minus a time-valued quantity (FHIRPath 2.0 section 6.6.1: calendar
/// units; decimal amounts are truncated; UCUM `a` and `mo` are not calendar durations).
fn date_add(
    d: &DateTime,
    q: &Quantity,
    subtract: bool,
) -> std::result::Result<Option<DateTime>, String> {
    let unit = CalendarUnit::from_unit(&q.unit).ok_or_else(|| {
        format!(
            "'{}' is not a calendar duration that can be added to a date",
            q.unit
        )
    })?;
    let mut n: i64 = q.value.trunc().try_into().unwrap_or(0);
    if subtract {
        n = n.saturating_neg();
    }
    // a duration finer than the value's precision is converted to the value's precision
    let (n, unit) = if unit.precision() > d.precision {
        let seconds = |u: CalendarUnit| -> i64 {
            match u {
                CalendarUnit::Week => 604_800,
                CalendarUnit::Day => 86_400,
                CalendarUnit::Hour => 3600,
                CalendarUnit::Minute => 60,
                CalendarUnit::Second => 1,
                _ => 0,
            }
        };
        let Some(total) = n.checked_mul(seconds(unit)) else {
            return Ok(None);
        };
        match d.precision {
            super::datetime::Precision::Year => (total / (365 * 86_400), CalendarUnit::Year),
            super::datetime::Precision::Month => (total / (30 * 86_400), CalendarUnit::Month),
            super::datetime::Precision::Day => (total / 86_400, CalendarUnit::Day),
            super::datetime::Precision::Hour => (total / 3600, CalendarUnit::Hour),
            super::datetime::Precision::Minute => (total / 60, CalendarUnit::Minute),
            _ => (n, unit),
        }
    } else {
        (n, unit)
    };
    Ok(d.add(n, unit))
}

/// A literal as a collection.
pub fn literal<'a>(l: &'a Lit) -> Collection<'a> {
    vec![match l {
        Lit::Empty => return Vec::new(),
        Lit::Boolean(b) => Item::Boolean(*b),
        Lit::Integer(i) => Item::Integer(*i),
        Lit::Long(i) => Item::Long(*i),
        Lit::Decimal(d) => Item::Decimal(*d),
        Lit::String(s) => Item::String(Text::Borrowed(s)),
        Lit::Date(d) => Item::Date(*d),
        Lit::DateTime(d) => Item::DateTime(*d),
        Lit::Time(t) => Item::Time(*t),
        Lit::Quantity(q) => Item::Quantity(Rc::new(q.clone())),
    }]
}

use chrono::Offset;
