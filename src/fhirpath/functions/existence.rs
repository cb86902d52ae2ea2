//! Existence functions (FHIRPath 2.0 section 5.1): `empty`, `exists`, `all`, `allTrue`,
//! `anyTrue`, `allFalse`, `anyFalse`, `subsetOf`, `supersetOf`, `count`, `distinct`,
//! `isDistinct`, and the Boolean `not()`.

use super::{boolean, Call};
use crate::fhirpath::compile::Func;
use crate::fhirpath::error::Result;
use crate::fhirpath::value::{Collection, Item};

pub fn call<'a>(func: Func, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    let ev = c.ev;
    match func {
        Func::Empty => boolean(c.input.is_empty()),
        Func::Exists => {
            if c.args.is_empty() {
                return boolean(!c.input.is_empty());
            }
            for (i, it) in c.input.iter().enumerate() {
                if ev.boolean(&c.lambda(0, it, i)?, c.pos)? == Some(true) {
                    return boolean(true);
                }
            }
            boolean(false)
        }
        Func::All => {
            for (i, it) in c.input.iter().enumerate() {
                if ev.boolean(&c.lambda(0, it, i)?, c.pos)? != Some(true) {
                    return boolean(false);
                }
            }
            boolean(true)
        }
        Func::AllTrue | Func::AnyTrue | Func::AllFalse | Func::AnyFalse => {
            let mut values = Vec::with_capacity(c.input.len());
            for it in c.input {
                match it.to_system(ev.model) {
                    Some(Item::Boolean(b)) => values.push(b),
                    _ => {
                        return Err(
                            c.error(format!("{} expects a collection of Booleans", c.name()))
                        )
                    }
                }
            }
            boolean(match func {
                Func::AllTrue => values.iter().all(|b| *b),
                Func::AnyTrue => values.iter().any(|b| *b),
                Func::AllFalse => values.iter().all(|b| !*b),
                _ => values.iter().any(|b| !*b),
            })
        }
        Func::SubsetOf | Func::SupersetOf => {
            let other = c.arg(0)?;
            let (small, big) = if func == Func::SubsetOf {
                (c.input, other.as_slice())
            } else {
                (other.as_slice(), c.input)
            };
            boolean(small.iter().all(|a| big.iter().any(|b| ev.same(a, b))))
        }
        Func::Count => Ok(vec![Item::Integer(c.input.len() as i64)]),
        Func::Distinct => {
            let mut out: Collection<'a> = Vec::with_capacity(c.input.len());
            for it in c.input {
                if !out.iter().any(|o| ev.same(o, it)) {
                    out.push(it.clone());
                }
            }
            Ok(out)
        }
        Func::IsDistinct => {
            for (i, a) in c.input.iter().enumerate() {
                if c.input[i + 1..].iter().any(|b| ev.same(a, b)) {
                    return boolean(false);
                }
            }
            boolean(true)
        }
        Func::Not => match ev.boolean(c.input, c.pos)? {
            Some(b) => boolean(!b),
            None => Ok(Vec::new()),
        },
        _ => Err(c.error("internal: not an existence function")),
    }
}
