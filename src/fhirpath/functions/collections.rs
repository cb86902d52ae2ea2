//! Filtering, projection, subsetting and combining (FHIRPath 2.0 sections 5.2-5.4):
//! `where`, `select`, `repeat`, `ofType`, `single`, `first`, `last`, `tail`, `skip`, `take`,
//! `intersect`, `exclude`, `union`, `combine`, plus `aggregate` and `sort`.

use std::cmp::Ordering;

use super::Call;
use crate::fhirpath::compile::Func;
use crate::fhirpath::error::Result;
use crate::fhirpath::nav;
use crate::fhirpath::value::{self, Collection, Item};

/// Upper bound on items produced by `repeat`, against runaway expressions.
const REPEAT_LIMIT: usize = 100_000;

pub fn call<'a>(func: Func, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    let ev = c.ev;
    match func {
        Func::Where => {
            let mut out = Vec::new();
            for (i, it) in c.input.iter().enumerate() {
                if ev.boolean(&c.lambda(0, it, i)?, c.pos)? == Some(true) {
                    out.push(it.clone());
                }
            }
            Ok(out)
        }
        Func::Select => {
            let mut out = Vec::new();
            for (i, it) in c.input.iter().enumerate() {
                out.extend(c.lambda(0, it, i)?);
            }
            Ok(out)
        }
        Func::Repeat | Func::RepeatAll => {
            let mut out: Collection<'a> = Vec::new();
            let mut queue: Collection<'a> = c.input.to_vec();
            while !queue.is_empty() {
                let mut next = Vec::new();
                for (i, it) in queue.iter().enumerate() {
                    for r in c.lambda(0, it, i)? {
                        if func == Func::Repeat && out.iter().any(|o| ev.same(o, &r)) {
                            continue;
                        }
                        out.push(r.clone());
                        next.push(r);
                        if out.len() > REPEAT_LIMIT {
                            return Err(c.error("repeat() produced too many items"));
                        }
                    }
                }
                queue = next;
            }
            Ok(out)
        }
        Func::OfType => {
            let Some(t) = c.ty else {
                return Err(c.error("ofType needs a type"));
            };
            ev.check_type(t, c.pos)?;
            Ok(c.input
                .iter()
                .filter(|it| nav::type_matches(ev.model, it, t, true))
                .cloned()
                .collect())
        }
        Func::Single => match c.input.len() {
            0 => Ok(Vec::new()),
            1 => Ok(c.input.to_vec()),
            n => Err(c.error(format!("single() applied to a collection of {n} items"))),
        },
        Func::First => Ok(c.input.first().cloned().into_iter().collect()),
        Func::Last => Ok(c.input.last().cloned().into_iter().collect()),
        Func::Tail => Ok(c.input.iter().skip(1).cloned().collect()),
        Func::Skip | Func::Take => {
            let Some(n) = c.arg_integer(0)? else {
                return Ok(if func == Func::Skip {
                    c.input.to_vec()
                } else {
                    Vec::new()
                });
            };
            let n = usize::try_from(n.max(0)).unwrap_or(0);
            Ok(if func == Func::Skip {
                c.input.iter().skip(n).cloned().collect()
            } else {
                c.input.iter().take(n).cloned().collect()
            })
        }
        Func::Intersect => {
            let other = c.arg(0)?;
            let mut out: Collection<'a> = Vec::new();
            for it in c.input {
                if other.iter().any(|o| ev.same(o, it)) && !out.iter().any(|o| ev.same(o, it)) {
                    out.push(it.clone());
                }
            }
            Ok(out)
        }
        Func::Exclude => {
            let other = c.arg(0)?;
            Ok(c.input
                .iter()
                .filter(|it| !other.iter().any(|o| ev.same(o, it)))
                .cloned()
                .collect())
        }
        Func::Union => {
            let other = c.arg(0)?;
            Ok(ev.union(c.input.to_vec(), other))
        }
        Func::Combine => {
            let mut out = c.input.to_vec();
            out.extend(c.arg(0)?);
            Ok(out)
        }
        Func::Aggregate => {
            let mut total: Collection<'a> = if c.args.len() > 1 {
                c.arg(1)?
            } else {
                Vec::new()
            };
            for (i, it) in c.input.iter().enumerate() {
                total = c.lambda_total(0, it, i, Some(&total))?;
            }
            Ok(total)
        }
        Func::Sort => sort(c),
        _ => Err(c.error("internal: not a collection function")),
    }
}

/// `sort(keys...)`: each key expression may be prefixed by unary minus for descending order.
fn sort<'a>(c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    let ev = c.ev;
    use crate::fhirpath::compile::Op;
    let mut keyed: Vec<(Vec<Option<Item<'a>>>, Item<'a>)> = Vec::with_capacity(c.input.len());
    let mut descending = Vec::new();
    for p in c.args {
        descending.push(matches!(p.op, Op::Negate(_)));
    }
    for (i, it) in c.input.iter().enumerate() {
        let mut keys = Vec::new();
        if c.args.is_empty() {
            keys.push(it.to_system(ev.model));
        }
        for (k, p) in c.args.iter().enumerate() {
            let plan = match &p.op {
                Op::Negate(inner) => inner.as_ref(),
                _ => p,
            };
            let env = crate::fhirpath::eval::Env {
                this: Some(it),
                index: Some(i),
                total: None,
            };
            let v = ev.eval(plan, std::slice::from_ref(it), env)?;
            let _ = k;
            keys.push(ev.singleton(&v, c.pos)?);
        }
        keyed.push((keys, it.clone()));
    }
    let mut failure = None;
    keyed.sort_by(|(a, _), (b, _)| {
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            // empty keys sort first whatever the direction
            let o = match (x, y) {
                (None, None) => Ordering::Equal,
                (None, Some(_)) => return Ordering::Less,
                (Some(_), None) => return Ordering::Greater,
                (Some(x), Some(y)) => match value::compare(x, y, ev.model, ev.tz()) {
                    Ok(o) => o.unwrap_or(Ordering::Equal),
                    Err(m) => {
                        failure = Some(m);
                        Ordering::Equal
                    }
                },
            };
            let o = if descending.get(k).copied().unwrap_or(false) {
                o.reverse()
            } else {
                o
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        Ordering::Equal
    });
    if let Some(m) = failure {
        return Err(c.error(m));
    }
    Ok(keyed.into_iter().map(|(_, it)| it).collect())
}
