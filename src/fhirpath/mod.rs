//! fhirgate's FHIRPath engine (FHIRPath N1 as used by FHIR R4): a parser for the full grammar,
//! a compiler to reusable plans (cached by expression text), and an evaluator over borrowed
//! `serde_json` values that follows FHIR's JSON conventions. FHIR type information comes from
//! the host through the `ModelInfo` trait; terminology, reference resolution and profile
//! checks go through `Services`. The module does no I/O and knows nothing of HTTP or storage.
//!
//! ```
//! use fhirgate::fhirpath::{self, EvalContext, Item, NoModel};
//! let patient = serde_json::json!({"resourceType": "Patient", "name": [{"given": ["Peter", "James"]}]});
//! let expr = fhirpath::compile("name.given.first()").unwrap();
//! // The server passes the model of its loaded packages; NoModel navigates by JSON key only.
//! let ctx = EvalContext::new(&NoModel);
//! let result = expr.evaluate(&ctx, &patient).unwrap(); // items borrow from `patient`
//! let values: Vec<serde_json::Value> = result.iter().map(Item::to_json).collect();
//! assert_eq!(values, vec![serde_json::json!("Peter")]);
//! ```

mod ast;
mod check;
mod compile;
mod datetime;
mod error;
mod eval;
mod functions;
mod lexer;
mod location;
mod model;
mod narrative;
mod nav;
mod parser;
mod quantity;
mod ucum;
mod value;

use std::collections::HashMap;
use std::sync::Arc;

use once_cell::sync::Lazy;
use parking_lot::RwLock;
use serde_json::Value;

pub use check::check;
pub use datetime::{DateTime, Precision, Time};
pub use error::{FhirPathError, Position, Result};
pub use eval::{EvalContext, NoServices, Services, Tracer};
pub use location::{locate, Location, Step};
pub use model::{is_a, ChildInfo, ModelInfo, NoModel};
pub use quantity::Quantity;
pub use value::{Collection, Item, Node, SysType, Text};

/// A compiled FHIRPath expression: parse and compile once, evaluate many times.
#[derive(Debug)]
pub struct Expression {
    text: String,
    pub(crate) plan: compile::Plan,
}

impl Expression {
    /// Parses and compiles `text` (not cached; see [`compile`]).
    pub fn new(text: &str) -> Result<Expression> {
        let ast = parser::parse(text)?;
        let plan = compile::compile(text, &ast)?;
        Ok(Expression {
            text: text.to_string(),
            plan,
        })
    }

    /// The expression text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluates the expression with `input` as the context (`%context`, and `%resource`
    /// unless the context says otherwise). The result borrows from `input`, the context and
    /// the expression; nothing of the input is copied.
    pub fn evaluate<'a>(
        &'a self,
        ctx: &EvalContext<'a>,
        input: &'a Value,
    ) -> Result<Collection<'a>> {
        let root = [Item::Node(nav::node(
            Some(input),
            None,
            ctx.input_type.unwrap_or(""),
        ))];
        self.evaluate_items(ctx, &root)
    }

    /// Evaluates with an arbitrary input collection.
    pub fn evaluate_items<'a>(
        &'a self,
        ctx: &EvalContext<'a>,
        input: &[Item<'a>],
    ) -> Result<Collection<'a>> {
        let ev = eval::Evaluator::new(ctx, input);
        ev.eval(&self.plan, input, eval::Env::root())
    }

    /// Evaluates and applies FHIRPath's singleton Boolean evaluation to the result: None when
    /// empty, the Boolean of a single Boolean, true for any other single item, an error for
    /// several items. Invariant checkers treat Some(false) as a violation.
    pub fn evaluate_boolean<'a>(
        &'a self,
        ctx: &EvalContext<'a>,
        input: &'a Value,
    ) -> Result<Option<bool>> {
        let r = self.evaluate(ctx, input)?;
        let ev = eval::Evaluator::new(ctx, &[]);
        ev.boolean(&r, self.plan.pos)
    }
}

/// Upper bound on cached expressions; the cache is cleared when it is reached (expressions in
/// profiles and search parameters number in the thousands, not more).
const CACHE_LIMIT: usize = 20_000;

static CACHE: Lazy<RwLock<HashMap<String, Arc<Expression>>>> =
    Lazy::new(|| RwLock::new(HashMap::new()));

/// Compiles `text`, returning the cached plan when the same text was compiled before.
pub fn compile(text: &str) -> Result<Arc<Expression>> {
    if let Some(e) = CACHE.read().get(text) {
        return Ok(Arc::clone(e));
    }
    let e = Arc::new(Expression::new(text)?);
    let mut w = CACHE.write();
    if w.len() >= CACHE_LIMIT {
        w.clear();
    }
    w.insert(text.to_string(), Arc::clone(&e));
    Ok(e)
}

/// Evaluates `text` against `resource` and returns the result collection as JSON values (for
/// the `fhirgate fhirpath` command): elements of the input as they are, computed values as
/// their FHIR JSON form (strings, numbers, booleans, Quantity objects).
pub fn evaluate_to_json(
    text: &str,
    resource: &Value,
    model: &dyn ModelInfo,
    tz_offset_minutes: i32,
) -> Result<Vec<Value>> {
    let expr = compile(text)?;
    let mut ctx = EvalContext::new(model);
    ctx.tz_offset_minutes = tz_offset_minutes;
    let items = expr.evaluate(&ctx, resource)?;
    Ok(items.iter().map(Item::to_json).collect())
}

/// A UCUM unit reduced to base units: the factor (value in base units = value x factor) and
/// the exponents of the eight base dimensions. None when the unit is not understood or has
/// an offset (Celsius, Fahrenheit). Search uses it to compare quantities across units.
pub fn ucum_base(unit: &str) -> Option<(f64, [i8; 8])> {
    use rust_decimal::prelude::ToPrimitive;
    let c = ucum::canonical(unit)?;
    Some((c.factor.to_f64()?, c.dims))
}
