//! Conversion functions (FHIRPath 2.0 section 5.5): `iif` and the `toX()` / `convertsToX()`
//! pairs for Boolean, Integer, Long, Decimal, String, Date, DateTime, Time and Quantity.

use std::rc::Rc;
use std::str::FromStr;

use rust_decimal::Decimal;

use super::{boolean, Call};
use crate::fhirpath::compile::Func;
use crate::fhirpath::datetime::{parse_time, DateTime, Precision};
use crate::fhirpath::error::Result;
use crate::fhirpath::eval::Env;
use crate::fhirpath::quantity::Quantity;
use crate::fhirpath::ucum;
use crate::fhirpath::value::{Collection, Item};

pub fn call<'a>(func: Func, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    if func == Func::Iif {
        return iif(c);
    }
    let Some(x) = c.input_single()? else {
        return Ok(Vec::new());
    };
    let converted = match func {
        Func::ToBoolean | Func::ConvertsToBoolean => to_boolean(&x).map(Item::Boolean),
        Func::ToInteger | Func::ConvertsToInteger => to_integer(&x).map(Item::Integer),
        Func::ToLong | Func::ConvertsToLong => to_integer(&x).map(Item::Long),
        Func::ToDecimal | Func::ConvertsToDecimal => to_decimal(&x).map(Item::Decimal),
        Func::ToStringFn | Func::ConvertsToString => {
            x.to_fhirpath_string(c.ev.model).map(Item::string)
        }
        Func::ToDate | Func::ConvertsToDate => to_date(&x).map(Item::Date),
        Func::ToDateTime | Func::ConvertsToDateTime => to_datetime(&x).map(Item::DateTime),
        Func::ToTime | Func::ConvertsToTime => match &x {
            Item::Time(t) => Some(Item::Time(*t)),
            Item::String(s) => parse_time(s.as_str()).map(Item::Time),
            _ => None,
        },
        Func::ToQuantity | Func::ConvertsToQuantity => {
            let unit = c.arg_string(0)?;
            to_quantity(&x).and_then(|q| match unit {
                None => Some(Item::Quantity(Rc::new(q))),
                Some(u) => {
                    let v = ucum::convert(q.value, q.ucum_unit(), u.as_str())?;
                    Some(Item::Quantity(Rc::new(Quantity::new(v, u.as_str()))))
                }
            })
        }
        _ => return Err(c.error("internal: not a conversion function")),
    };
    let converts = matches!(
        func,
        Func::ConvertsToBoolean
            | Func::ConvertsToInteger
            | Func::ConvertsToLong
            | Func::ConvertsToDecimal
            | Func::ConvertsToString
            | Func::ConvertsToDate
            | Func::ConvertsToDateTime
            | Func::ConvertsToTime
            | Func::ConvertsToQuantity
    );
    if converts {
        boolean(converted.is_some())
    } else {
        Ok(converted.into_iter().collect())
    }
}

/// `iif(criterion, true-result [, otherwise-result])`: only the chosen branch is evaluated.
fn iif<'a>(c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    if c.input.len() > 1 {
        return Err(c.error("iif() applied to a collection of several items"));
    }
    let eval_arg = |i: usize| -> Result<Collection<'a>> {
        match c.input.first() {
            Some(item) if c.input.len() == 1 && !std::ptr::eq(c.input, c.focus) => {
                let env = Env {
                    this: Some(item),
                    index: Some(0),
                    total: None,
                };
                match c.args.get(i) {
                    Some(p) => c.ev.eval(p, std::slice::from_ref(item), env),
                    None => Ok(Vec::new()),
                }
            }
            _ => c.arg(i),
        }
    };
    let criterion = eval_arg(0)?;
    let chosen = match c.ev.singleton(&criterion, c.pos)? {
        Some(Item::Boolean(true)) => 1,
        None | Some(Item::Boolean(false)) => 2,
        Some(_) => return Err(c.error("iif() criterion must be a Boolean")),
    };
    eval_arg(chosen)
}

pub fn to_boolean(x: &Item) -> Option<bool> {
    match x {
        Item::Boolean(b) => Some(*b),
        Item::Integer(i) | Item::Long(i) => match i {
            1 => Some(true),
            0 => Some(false),
            _ => None,
        },
        Item::Decimal(d) => {
            if *d == Decimal::ONE {
                Some(true)
            } else if d.is_zero() {
                Some(false)
            } else {
                None
            }
        }
        Item::String(s) => match s.as_str().to_ascii_lowercase().as_str() {
            "true" | "t" | "yes" | "y" | "1" | "1.0" => Some(true),
            "false" | "f" | "no" | "n" | "0" | "0.0" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

fn is_integer_text(s: &str) -> bool {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn is_decimal_text(s: &str) -> bool {
    let body = s.strip_prefix(['+', '-']).unwrap_or(s);
    match body.split_once('.') {
        Some((a, b)) => {
            !a.is_empty()
                && !b.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.bytes().all(|c| c.is_ascii_digit())
        }
        None => !body.is_empty() && body.bytes().all(|c| c.is_ascii_digit()),
    }
}

pub fn to_integer(x: &Item) -> Option<i64> {
    match x {
        Item::Integer(i) | Item::Long(i) => Some(*i),
        Item::Boolean(b) => Some(*b as i64),
        Item::String(s) if is_integer_text(s.as_str()) => s.as_str().parse().ok(),
        _ => None,
    }
}

pub fn to_decimal(x: &Item) -> Option<Decimal> {
    match x {
        Item::Integer(i) | Item::Long(i) => Some(Decimal::from(*i)),
        Item::Decimal(d) => Some(*d),
        Item::Boolean(b) => Some(if *b { Decimal::ONE } else { Decimal::ZERO }),
        Item::String(s) if is_decimal_text(s.as_str()) => {
            Decimal::from_str(s.as_str().trim_start_matches('+')).ok()
        }
        _ => None,
    }
}

fn to_date(x: &Item) -> Option<DateTime> {
    match x {
        Item::Date(d) => Some(*d),
        Item::DateTime(d) => {
            let mut d = *d;
            d.precision = d.precision.min(Precision::Day);
            d.tz = None;
            Some(d)
        }
        Item::String(s) => {
            let d = DateTime::parse(s.as_str())?;
            if s.as_str().contains('T') {
                let mut d = d;
                d.precision = d.precision.min(Precision::Day);
                d.tz = None;
                Some(d)
            } else {
                Some(d)
            }
        }
        _ => None,
    }
}

fn to_datetime(x: &Item) -> Option<DateTime> {
    match x {
        Item::Date(d) | Item::DateTime(d) => Some(*d),
        Item::String(s) => DateTime::parse(s.as_str()),
        _ => None,
    }
}

/// Parses `value unit?` where unit is a quoted UCUM code or a calendar keyword.
pub fn to_quantity(x: &Item) -> Option<Quantity> {
    match x {
        Item::Quantity(q) => Some((**q).clone()),
        Item::Integer(i) | Item::Long(i) => Some(Quantity::new(Decimal::from(*i), "1")),
        Item::Decimal(d) => Some(Quantity::new(*d, "1")),
        Item::Boolean(b) => Some(Quantity::new(
            if *b { Decimal::ONE } else { Decimal::ZERO },
            "1",
        )),
        Item::String(s) => parse_quantity(s.as_str()),
        _ => None,
    }
}

fn parse_quantity(s: &str) -> Option<Quantity> {
    let s = s.trim();
    let (num, rest) = match s.find(' ') {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    };
    if !is_decimal_text(num) {
        return None;
    }
    let value = Decimal::from_str(num.trim_start_matches('+')).ok()?;
    if rest.is_empty() {
        return Some(Quantity::new(value, "1"));
    }
    if let Some(unit) = rest.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')) {
        return Some(Quantity::new(value, unit));
    }
    if crate::fhirpath::datetime::CalendarUnit::from_unit(rest).is_some() && rest.len() > 3
        || matches!(rest, "day" | "days")
    {
        return Some(Quantity::new(value, rest));
    }
    None
}
