//! Tree navigation, type and utility functions: `children`, `descendants` (FHIRPath 2.0
//! section 5.8), `is`, `as`, `type()` (section 6.3 and reflection), `trace`, `now`, `today`,
//! `timeOfDay` (section 5.9). The clock is read once per evaluation and rendered in the
//! evaluation context's local offset.

use chrono::{Datelike, Timelike};

use super::Call;
use crate::fhirpath::compile::Func;
use crate::fhirpath::datetime::{DateTime, Precision, Time};
use crate::fhirpath::error::Result;
use crate::fhirpath::nav;
use crate::fhirpath::value::{Collection, Item, Text};

/// Bound on `descendants()` output, against pathological input.
const DESCENDANTS_LIMIT: usize = 1_000_000;

pub fn call<'a>(func: Func, c: &Call<'_, 'a, '_>) -> Result<Collection<'a>> {
    let ev = c.ev;
    match func {
        Func::Children => {
            let mut out = Vec::new();
            for it in c.input {
                nav::children(ev.model, it, &mut out);
            }
            Ok(out)
        }
        Func::Descendants => {
            let mut out: Collection<'a> = Vec::new();
            let mut level: Collection<'a> = c.input.to_vec();
            while !level.is_empty() {
                let mut next = Vec::new();
                for it in &level {
                    nav::children(ev.model, it, &mut next);
                }
                out.extend(next.iter().cloned());
                if out.len() > DESCENDANTS_LIMIT {
                    return Err(c.error("descendants() produced too many items"));
                }
                level = next;
            }
            Ok(out)
        }
        Func::Is => {
            let Some(t) = c.ty else {
                return Err(c.error("is() needs a type"));
            };
            ev.is_type(c.input, t, c.pos)
        }
        Func::As => {
            let Some(t) = c.ty else {
                return Err(c.error("as() needs a type"));
            };
            // filters a collection of several items, as the operator does (see `as_type`)
            ev.as_type(c.input, t, c.pos)
        }
        Func::Type => Ok(c
            .input
            .iter()
            .filter_map(|it| match it {
                Item::Node(n) if !n.ty.is_empty() => Some(Item::TypeInfo(
                    "FHIR",
                    Text::Borrowed(nav::node_type(ev.model, n)),
                )),
                Item::Node(_) | Item::TypeInfo(..) => None,
                other => other
                    .sys_type()
                    .map(|t| Item::TypeInfo("System", Text::Borrowed(t.name()))),
            })
            .collect()),
        Func::Trace => {
            let name = c.arg_string(0)?;
            if let Some(tracer) = ev.ctx.tracer {
                let name = name.as_ref().map(|n| n.as_str()).unwrap_or("");
                if c.args.len() > 1 {
                    let mut projected = Vec::new();
                    for (i, it) in c.input.iter().enumerate() {
                        projected.extend(c.lambda(1, it, i)?);
                    }
                    tracer(name, &projected);
                } else {
                    tracer(name, c.input);
                }
            }
            Ok(c.input.to_vec())
        }
        Func::Now | Func::Today | Func::TimeOfDay => {
            let now = ev.now();
            let dt = DateTime {
                year: now.year(),
                month: now.month(),
                day: now.day(),
                hour: now.hour(),
                minute: now.minute(),
                second: now.second(),
                millis: now.nanosecond() / 1_000_000 % 1000,
                precision: Precision::Millisecond,
                tz: Some(now.offset().local_minus_utc() / 60),
            };
            Ok(vec![match func {
                Func::Now => Item::DateTime(dt),
                Func::Today => Item::Date(DateTime {
                    precision: Precision::Day,
                    tz: None,
                    hour: 0,
                    minute: 0,
                    second: 0,
                    millis: 0,
                    ..dt
                }),
                _ => Item::Time(Time {
                    hour: dt.hour,
                    minute: dt.minute,
                    second: dt.second,
                    millis: dt.millis,
                    precision: Precision::Millisecond,
                }),
            }])
        }
        _ => Err(c.error("internal: not a tree/utility function")),
    }
}
