//! Quantity values (`5.5 'mg'`, `4 days`): equality, equivalence and ordering across UCUM units
//! (`1 'kg' = 1000 'g'`), calendar durations (`7 days = 1 week`; `1 year` against UCUM `'a'` is
//! not comparable, per the FHIRPath rules on calendar durations) and arithmetic.

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
            (None, None) => {}
            _ => return None,
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

    /// `~`: values compared at the precision of the less precise one.
    pub fn equivalent(&self, other: &Quantity) -> bool {
        match self.aligned(other) {
            Some((a, b)) => {
                let scale = self.value.scale().min(other.value.scale());
                a.round_dp(scale) == b.round_dp(scale)
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
