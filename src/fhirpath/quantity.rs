//! Quantity values (`5.5 'mg'`, `4 days`): equality, equivalence and ordering across UCUM units
//! (`1 'kg' = 1000 'g'`), calendar durations (`7 days = 1 week`; `1 year = 365 days` and
//! `1 month = 30 days`, as N1 prescribes for comparisons without a calendar anchor; `1 year`
//! against UCUM `'a'` is not comparable, as the R4 suite expects) and arithmetic.

use std::cmp::Ordering;

use rust_decimal::Decimal;

use super::ucum;

#[derive(Debug, Clone, PartialEq)]
pub struct Quantity {
    pub value: Decimal,
    /// UCUM code, or a calendar keyword (`year`, `days`, ...).
    pub unit: String,
}

/// The UCUM equivalent of a calendar keyword, for the keywords with a fixed length.
fn calendar_to_ucum(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "week" | "weeks" => "wk",
        "day" | "days" => "d",
        "hour" | "hours" => "h",
        "minute" | "minutes" => "min",
        "second" | "seconds" => "s",
        "millisecond" | "milliseconds" => "ms",
        _ => return None,
    })
}

fn is_calendar_year_month(unit: &str) -> Option<i64> {
    match unit {
        "year" | "years" => Some(12),
        "month" | "months" => Some(1),
        _ => None,
    }
}

/// Days in a calendar year or month. N1, note under `=` and `~`: "For comparisons involving
/// durations (where no anchor to a calendar is available), the duration of a year is 365 days,
/// and the duration of a month is 30 days."
fn calendar_days(unit: &str) -> Option<i64> {
    match unit {
        "year" | "years" => Some(365),
        "month" | "months" => Some(30),
        _ => None,
    }
}

/// A calendar year or month quantity (`value` in `unit`) expressed in the definite duration
/// unit `to` (UCUM or a fixed-length calendar keyword). None when `to` is not a time unit, and
/// for UCUM `a` and `mo`: those are 365.25 and 30.4375 days, not calendar durations, and the R4
/// suite expects `'1 \'a\''.toQuantity() = 1 year` to be empty, not false.
fn calendar_to_definite(value: Decimal, unit: &str, to: &str) -> Option<Decimal> {
    let to = normal(to);
    if matches!(to, "a" | "mo") {
        return None;
    }
    let days = value.checked_mul(Decimal::from(calendar_days(unit)?))?;
    ucum::convert(days, "d", to)
}

/// The UCUM unit a calendar keyword is equivalent to (N1 Time-valued Quantities: `1 year ~
/// 1 'a'`, `1 month ~ 1 'mo'`, the others equal); other units unchanged.
fn ucum_duration(unit: &str) -> &str {
    match unit {
        "year" | "years" => "a",
        "month" | "months" => "mo",
        u => normal(u),
    }
}

/// Normalises a unit for comparison: calendar keywords with fixed length become UCUM.
fn normal(unit: &str) -> &str {
    calendar_to_ucum(unit).unwrap_or(unit)
}

impl Quantity {
    pub fn new(value: Decimal, unit: impl Into<String>) -> Quantity {
        Quantity {
            value,
            unit: unit.into(),
        }
    }

    /// Both values expressed in one unit, or None when the units are not comparable.
    fn aligned(&self, other: &Quantity) -> Option<(Decimal, Decimal)> {
        if self.unit == other.unit {
            return Some((self.value, other.value));
        }
        match (
            is_calendar_year_month(&self.unit),
            is_calendar_year_month(&other.unit),
        ) {
            (Some(a), Some(b)) => {
                return Some((
                    self.value.checked_mul(Decimal::from(a))?,
                    other.value.checked_mul(Decimal::from(b))?,
                ))
            }
            (Some(_), None) => {
                let a = calendar_to_definite(self.value, &self.unit, &other.unit)?;
                return Some((a, other.value));
            }
            (None, Some(_)) => {
                let b = calendar_to_definite(other.value, &other.unit, &self.unit)?;
                return Some((self.value, b));
            }
            (None, None) => {}
        }
        let (ua, ub) = (normal(&self.unit), normal(&other.unit));
        let converted = ucum::convert(other.value, ub, ua)?;
        Some((self.value, converted))
    }

    /// Ordering across units; None when not comparable.
    pub fn compare(&self, other: &Quantity) -> Option<Ordering> {
        let (a, b) = self.aligned(other)?;
        Some(a.cmp(&b))
    }

    /// `=`: None (empty) when the units are not comparable.
    pub fn equals(&self, other: &Quantity) -> Option<bool> {
        self.compare(other).map(|o| o == Ordering::Equal)
    }

    /// `~`: values compared at the precision of the less precise one, trailing zeros not
    /// counted (N1 Equivalence, Decimal). Calendar years and months are also equivalent to
    /// UCUM's `a` and `mo` (N1 Time-valued Quantities: "`1 year` is not equal to `1 'a'`, but
    /// it is equivalent to `1 'a'`").
    pub fn equivalent(&self, other: &Quantity) -> bool {
        let aligned = self.aligned(other).or_else(|| {
            let b = ucum::convert(
                other.value,
                ucum_duration(&other.unit),
                ucum_duration(&self.unit),
            )?;
            Some((self.value, b))
        });
        match aligned {
            Some((a, b)) => {
                let scale = self
                    .value
                    .normalize()
                    .scale()
                    .min(other.value.normalize().scale());
                super::value::decimal_equivalent_at(a, b, scale)
            }
            None => false,
        }
    }

    /// The UCUM unit to use in arithmetic (calendar keywords mapped where fixed).
    pub fn ucum_unit(&self) -> &str {
        normal(&self.unit)
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if is_calendar_year_month(&self.unit).is_some() || calendar_to_ucum(&self.unit).is_some() {
            write!(f, "{} {}", self.value, self.unit)
        } else {
            write!(f, "{} '{}'", self.value, self.unit)
        }
    }
}
