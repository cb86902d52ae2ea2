//! Function dispatch: `call` routes a compiled `Func` to its family module. `Call` bundles what
//! a function sees (its input collection, the outer focus its arguments are evaluated against,
//! the unevaluated argument plans for lambdas, `$this`/`$index`) with typed argument helpers.

mod collections;
mod conversion;
mod existence;
mod fhir;
mod math;
mod strings;
mod tree;

pub use strings::regex;

use super::compile::{Func, Plan, TypeRef};
use super::error::{Position, Result};
use super::eval::{err, Env, Evaluator};
use super::value::{self, Collection, Item, Text};

/// One function invocation in progress.
pub struct Call<'e, 'a, 'c> {
    pub ev: &'e Evaluator<'a, 'c>,
    pub func: Func,
    pub pos: Position,
    /// The collection the function is applied to.
    pub input: &'e [Item<'a>],
    /// The focus the invocation chain started from: arguments are evaluated against it.
    pub focus: &'e [Item<'a>],
    pub args: &'a [Plan],
    pub ty: Option<&'a TypeRef>,
    pub env: Env<'e, 'a>,
}

impl<'e, 'a, 'c> Call<'e, 'a, 'c> {
    /// Evaluates argument `i` against the outer focus.
    pub fn arg(&self, i: usize) -> Result<Collection<'a>> {
        match self.args.get(i) {
            Some(p) => self.ev.eval(p, self.focus, self.env),
            None => Ok(Vec::new()),
        }
    }

    /// Argument `i` as a single System value (None when empty or absent).
    pub fn arg_single(&self, i: usize) -> Result<Option<Item<'a>>> {
        let v = self.arg(i)?;
        self.ev.singleton(&v, self.pos)
    }

    pub fn arg_string(&self, i: usize) -> Result<Option<Text<'a>>> {
        match self.arg_single(i)? {
            None => Ok(None),
            Some(Item::String(s)) => Ok(Some(s)),
            Some(other) => Err(err(
                self.pos,
                format!(
                    "{}: argument {} must be a string, found {}",
                    self.name(),
                    i + 1,
                    value::type_label(&other)
                ),
            )),
        }
    }

    pub fn arg_integer(&self, i: usize) -> Result<Option<i64>> {
        match self.arg_single(i)? {
            None => Ok(None),
            Some(Item::Integer(n)) | Some(Item::Long(n)) => Ok(Some(n)),
            Some(other) => Err(err(
                self.pos,
                format!(
                    "{}: argument {} must be an integer, found {}",
                    self.name(),
                    i + 1,
                    value::type_label(&other)
                ),
            )),
        }
    }

    /// Evaluates lambda argument `i` for one input item.
    pub fn lambda(&self, i: usize, item: &Item<'a>, index: usize) -> Result<Collection<'a>> {
        self.lambda_total(i, item, index, None)
    }

    pub fn lambda_total(
        &self,
        i: usize,
        item: &Item<'a>,
        index: usize,
        total: Option<&[Item<'a>]>,
    ) -> Result<Collection<'a>> {
        let Some(p) = self.args.get(i) else {
            return Ok(Vec::new());
        };
        let env = Env {
            this: Some(item),
            index: Some(index),
            total,
        };
        self.ev.eval(p, std::slice::from_ref(item), env)
    }

    /// The input as a single System value (None when empty, error when several).
    pub fn input_single(&self) -> Result<Option<Item<'a>>> {
        self.ev.singleton(self.input, self.pos)
    }

    /// The input as a single string; error when it is not a string.
    pub fn input_string(&self) -> Result<Option<Text<'a>>> {
        match self.input_single()? {
            None => Ok(None),
            Some(Item::String(s)) => Ok(Some(s)),
            Some(other) => Err(err(
                self.pos,
                format!(
                    "{} expects a string input, found {}",
                    self.name(),
                    value::type_label(&other)
                ),
            )),
        }
    }

    pub fn name(&self) -> &'static str {
        self.func.name()
    }

    pub fn error(&self, message: impl Into<String>) -> super::error::FhirPathError {
        err(self.pos, message)
    }
}

pub fn boolean<'a>(b: bool) -> Result<Collection<'a>> {
    Ok(vec![Item::Boolean(b)])
}

pub fn opt_boolean<'a>(b: Option<bool>) -> Result<Collection<'a>> {
    Ok(b.map(|b| vec![Item::Boolean(b)]).unwrap_or_default())
}

/// Runs a function.
pub fn call<'a>(func: Func, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    use Func::*;
    match func {
        Empty | Exists | All | AllTrue | AnyTrue | AllFalse | AnyFalse | SubsetOf | SupersetOf
        | Count | Distinct | IsDistinct | Not => existence::call(func, c),
        Where | Select | Repeat | RepeatAll | OfType | Single | First | Last | Tail | Skip
        | Take | Intersect | Exclude | Union | Combine | Aggregate | Sort => {
            collections::call(func, c)
        }
        Iif | ToBoolean | ConvertsToBoolean | ToInteger | ConvertsToInteger | ToLong
        | ConvertsToLong | ToDecimal | ConvertsToDecimal | ToStringFn | ConvertsToString
        | ToDate | ConvertsToDate | ToDateTime | ConvertsToDateTime | ToTime | ConvertsToTime
        | ToQuantity | ConvertsToQuantity => conversion::call(func, c),
        IndexOf | LastIndexOf | Substring | StartsWith | EndsWith | Contains | Upper | Lower
        | Replace | Matches | MatchesFull | ReplaceMatches | Length | ToChars | Trim | Split
        | Join | Encode | Decode | Escape | Unescape => strings::call(func, c),
        Abs | Ceiling | Exp | Floor | Ln | Log | Power | Round | Sqrt | Truncate | LowBoundary
        | HighBoundary | Precision | Comparable => math::call(func, c),
        Children | Descendants | Trace | Now | Today | TimeOfDay | Is | As | Type => {
            tree::call(func, c)
        }
        Extension | HasExtension | HasValue | GetValue | Resolve | MemberOf | ConformsTo
        | HtmlChecks | HtmlChecks2 | ElementDefinition | Slice | CheckModifiers | Subsumes
        | SubsumedBy => fhir::call(func, c),
    }
}
