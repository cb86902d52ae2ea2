//! Math functions (FHIRPath 2.0 section 5.7): `abs`, `ceiling`, `exp`, `floor`, `ln`, `log`,
//! `power`, `round`, `sqrt`, `truncate`; and the precision functions of FHIRPath 2.1 that FHIR
//! invariants use: `lowBoundary`, `highBoundary`, `precision`, `comparable`. Exact operations
//! stay in decimal; transcendental ones go through f64 (their results are inexact anyway).

use std::rc::Rc;

use rust_decimal::prelude::{FromPrimitive, ToPrimitive};
use rust_decimal::{Decimal, RoundingStrategy};

use super::{boolean, Call};
use crate::fhirpath::compile::Func;
use crate::fhirpath::error::Result;
use crate::fhirpath::quantity::Quantity;
use crate::fhirpath::ucum;
use crate::fhirpath::value::{as_decimal, Collection, Item};

fn dec<'a>(d: Option<Decimal>) -> Result<Collection<'a>> {
    Ok(d.map(|d| vec![Item::Decimal(d)]).unwrap_or_default())
}

fn int<'a>(d: Decimal) -> Result<Collection<'a>> {
    Ok(i64::try_from(d)
        .ok()
        .map(|i| vec![Item::Integer(i)])
        .unwrap_or_default())
}

fn via_f64(d: Decimal, f: impl Fn(f64) -> f64) -> Option<Decimal> {
    let r = f(d.to_f64()?);
    if r.is_finite() {
        Decimal::from_f64(r)
    } else {
        None
    }
}

pub fn call<'a>(func: Func, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    let Some(x) = c.input_single()? else {
        return Ok(Vec::new());
    };
    match func {
        Func::LowBoundary | Func::HighBoundary => {
            return boundary(func == Func::HighBoundary, &x, c)
        }
        Func::Precision => {
            return Ok(match &x {
                Item::Decimal(d) => vec![Item::Integer(d.scale() as i64)],
                Item::Integer(_) => vec![Item::Integer(0)],
                Item::Date(d) | Item::DateTime(d) => vec![Item::Integer(d.precision_digits())],
                Item::Time(t) => vec![Item::Integer(t.precision_digits())],
                _ => Vec::new(),
            })
        }
        Func::Comparable => {
            let other = c.arg_single(0)?;
            return match (&x, other) {
                (Item::Quantity(a), Some(Item::Quantity(b))) => {
                    boolean(ucum::comparable(a.ucum_unit(), b.ucum_unit()))
                }
                (_, None) => Ok(Vec::new()),
                _ => Err(c.error("comparable() expects quantities")),
            };
        }
        _ => {}
    }
    if let (Func::Abs, Item::Quantity(q)) = (func, &x) {
        return Ok(vec![Item::Quantity(Rc::new(Quantity::new(
            q.value.abs(),
            q.unit.clone(),
        )))]);
    }
    let Some(d) = as_decimal(&x) else {
        return Err(c.error(format!("{}() expects a number", c.name())));
    };
    let is_int = matches!(x, Item::Integer(_) | Item::Long(_));
    match func {
        Func::Abs => {
            if is_int {
                int(d.abs())
            } else {
                dec(Some(d.abs()))
            }
        }
        Func::Ceiling => int(d.ceil()),
        Func::Floor => int(d.floor()),
        Func::Truncate => int(d.trunc()),
        Func::Exp => dec(via_f64(d, f64::exp)),
        Func::Ln => dec(via_f64(d, f64::ln)),
        Func::Sqrt => dec(via_f64(d, f64::sqrt)),
        Func::Log => {
            let Some(base) = c.arg_single(0)?.as_ref().and_then(as_decimal) else {
                return Ok(Vec::new());
            };
            let Some(b) = base.to_f64() else {
                return Ok(Vec::new());
            };
            dec(via_f64(d, |v| v.ln() / b.ln()))
        }
        Func::Power => {
            let Some(e) = c.arg_single(0)? else {
                return Ok(Vec::new());
            };
            let Some(ed) = as_decimal(&e) else {
                return Err(c.error("power() expects a number"));
            };
            if is_int && matches!(e, Item::Integer(_)) && !ed.is_sign_negative() {
                let base = i64::try_from(d).unwrap_or(0);
                let exp = u32::try_from(ed).unwrap_or(u32::MAX);
                return Ok(base
                    .checked_pow(exp)
                    .filter(|v| i32::try_from(*v).is_ok())
                    .map(|v| vec![Item::Integer(v)])
                    .unwrap_or_default());
            }
            if ed.fract().is_zero() {
                if let Ok(n) = i64::try_from(ed) {
                    if let Some(r) = powi(d, n) {
                        return dec(Some(r));
                    }
                }
            }
            let Some(ef) = ed.to_f64() else {
                return Ok(Vec::new());
            };
            dec(via_f64(d, |v| v.powf(ef)))
        }
        Func::Round => {
            let p = c.arg_integer(0)?.unwrap_or(0);
            if p < 0 {
                return Err(c.error("round() precision must not be negative"));
            }
            let p = u32::try_from(p).unwrap_or(28).min(28);
            dec(Some(d.round_dp_with_strategy(
                p,
                RoundingStrategy::MidpointAwayFromZero,
            )))
        }
        _ => Err(c.error("internal: not a math function")),
    }
}

fn powi(d: Decimal, n: i64) -> Option<Decimal> {
    let mut r = Decimal::ONE;
    for _ in 0..n.unsigned_abs().min(1000) {
        r = r.checked_mul(d)?;
    }
    if n < 0 {
        r = Decimal::ONE.checked_div(r)?;
    }
    Some(r)
}

/// The boundaries of a decimal given with `scale` digits (FHIRPath 2.1 `lowBoundary` /
/// `highBoundary`): half a unit in the last place either side, expressed to `precision` digits.
pub fn decimal_boundary(d: Decimal, precision: u32, high: bool) -> Option<Decimal> {
    if d.is_sign_negative() {
        let mut r = decimal_boundary(-d, precision, !high)?;
        r.set_sign_negative(true);
        return Some(r);
    }
    let half = Decimal::try_new(5, d.scale() + 1).ok()?;
    let mut r = if high {
        let v = d.checked_add(half)?;
        v.round_dp_with_strategy(precision, RoundingStrategy::MidpointAwayFromZero)
    } else {
        let v = d.checked_sub(half)?;
        v.round_dp_with_strategy(precision, RoundingStrategy::ToZero)
    };
    r.rescale(precision);
    Some(r)
}

fn boundary<'a>(high: bool, x: &Item<'a>, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    let p = c.arg_integer(0)?;
    match x {
        Item::Integer(_) | Item::Long(_) | Item::Decimal(_) | Item::Quantity(_) => {
            let p = p.unwrap_or(8);
            if !(0..=28).contains(&p) {
                return Ok(Vec::new());
            }
            let (d, unit) = match x {
                Item::Quantity(q) => (q.value, Some(q.unit.clone())),
                other => (as_decimal(other).unwrap_or_default(), None),
            };
            let Some(b) = decimal_boundary(d, p as u32, high) else {
                return Ok(Vec::new());
            };
            Ok(vec![match unit {
                Some(u) => Item::Quantity(Rc::new(Quantity::new(b, u))),
                None => Item::Decimal(b),
            }])
        }
        Item::Date(d) => Ok(d
            .boundary(p.unwrap_or(8), high, true)
            .map(Item::Date)
            .into_iter()
            .collect()),
        Item::DateTime(d) => Ok(d
            .boundary(p.unwrap_or(17), high, false)
            .map(|r| {
                if r.precision <= crate::fhirpath::datetime::Precision::Day {
                    Item::Date(r)
                } else {
                    Item::DateTime(r)
                }
            })
            .into_iter()
            .collect()),
        Item::Time(t) => Ok(t
            .boundary(p.unwrap_or(9), high)
            .map(Item::Time)
            .into_iter()
            .collect()),
        _ => Err(c.error(format!("{}() expects a number, date or time", c.name()))),
    }
}
