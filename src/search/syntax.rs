//! The value grammar of R4 search (3.1.1.4): comparison prefixes, escaping of
//! `,` `|` `$` `\\`, token and quantity value forms, and what each prefix means on
//! the ranges the index keeps. Shared by the planner and the composite planning.

use super::params::ParamType;
use super::values::{self, tag};
use super::SearchError;
use crate::store::{Bound, Ranges};

/// The comparison prefix of a number, date or quantity value (R4 3.1.1.4.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prefix {
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

/// A search parameter's modifier (R4 3.1.1.5: `name:modifier=value`), parsed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Modifier {
    Missing,
    Exact,
    Contains,
    Text,
    Not,
    Above,
    Below,
    In,
    NotIn,
    OfType,
    Identifier,
    /// `:[type]` on a reference (a resource type, checked by the planner).
    Type(String),
}

impl Modifier {
    pub fn parse(text: &str) -> Modifier {
        match text {
            "missing" => Modifier::Missing,
            "exact" => Modifier::Exact,
            "contains" => Modifier::Contains,
            "text" => Modifier::Text,
            "not" => Modifier::Not,
            "above" => Modifier::Above,
            "below" => Modifier::Below,
            "in" => Modifier::In,
            "not-in" => Modifier::NotIn,
            "of-type" => Modifier::OfType,
            "identifier" => Modifier::Identifier,
            other => Modifier::Type(other.to_string()),
        }
    }

    /// As written in a request.
    pub fn as_str(&self) -> &str {
        match self {
            Modifier::Missing => "missing",
            Modifier::Exact => "exact",
            Modifier::Contains => "contains",
            Modifier::Text => "text",
            Modifier::Not => "not",
            Modifier::Above => "above",
            Modifier::Below => "below",
            Modifier::In => "in",
            Modifier::NotIn => "not-in",
            Modifier::OfType => "of-type",
            Modifier::Identifier => "identifier",
            Modifier::Type(t) => t,
        }
    }
}

/// Splits a value's prefix off; `eq` when none is written.
pub fn split_prefix(v: &str) -> (Prefix, &str) {
    let p = match v.get(..2) {
        Some("eq") => Prefix::Eq,
        Some("ne") => Prefix::Ne,
        Some("gt") => Prefix::Gt,
        Some("lt") => Prefix::Lt,
        Some("ge") => Prefix::Ge,
        Some("le") => Prefix::Le,
        Some("sa") => Prefix::Sa,
        Some("eb") => Prefix::Eb,
        Some("ap") => Prefix::Ap,
        _ => return (Prefix::Eq, v),
    };
    (p, &v[2..])
}

/// Splits on `sep` unless escaped with `\` (R4 3.1.1.3.x escaping), unescaping.
pub fn split_escaped(s: &str, sep: char) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    if let Some(last) = out.last_mut() {
                        last.push(n);
                    }
                }
            }
            c if c == sep => out.push(String::new()),
            c => {
                if let Some(last) = out.last_mut() {
                    last.push(c);
                }
            }
        }
    }
    out
}

/// Range semantics of a prefix against a target's `[lo, hi]` range, for a search
/// value covering `[slo, shi]` (R4 3.1.1.4.5: "the range of the search value fully
/// contains the range of the target value", "the range above the search value
/// intersects the range of the target value", ...).
pub(crate) fn range_bounds<T: Copy>(p: Prefix, slo: T, shi: T, ap: (T, T)) -> Ranges<T> {
    use Bound::*;
    let eq = vec![LoGe(slo), HiLe(shi)];
    match p {
        Prefix::Eq => vec![eq],
        // Some part of the target lies outside the search range.
        Prefix::Ne => vec![vec![LoLt(slo)], vec![HiGt(shi)]],
        Prefix::Gt => vec![vec![HiGt(shi)]],
        Prefix::Lt => vec![vec![LoLt(slo)]],
        Prefix::Ge => vec![vec![HiGt(shi)], eq],
        Prefix::Le => vec![vec![LoLt(slo)], eq],
        Prefix::Sa => vec![vec![LoGt(shi)]],
        Prefix::Eb => vec![vec![HiLt(slo)]],
        // Overlaps the widened range.
        Prefix::Ap => vec![vec![LoLe(ap.1), HiGe(ap.0)]],
    }
}

/// Number semantics (R4 3.1.1.4.2: `100` is 99.5 to 100.5 for eq/ne; gt/lt/ge/le
/// compare with exactly 100) for point values stored as `lo = hi = value`.
pub(crate) fn number_bounds(p: Prefix, value: f64, half: f64) -> Ranges<f64> {
    use Bound::*;
    match p {
        Prefix::Eq => vec![vec![LoGe(value - half), LoLt(value + half)]],
        Prefix::Ne => vec![vec![LoLt(value - half)], vec![LoGe(value + half)]],
        Prefix::Gt | Prefix::Sa => vec![vec![HiGt(value)]],
        Prefix::Lt | Prefix::Eb => vec![vec![LoLt(value)]],
        Prefix::Ge => vec![vec![HiGe(value)]],
        Prefix::Le => vec![vec![LoLe(value)]],
        Prefix::Ap => {
            let margin = (value.abs() * 0.1).max(half);
            vec![vec![LoLe(value + margin), HiGe(value - margin)]]
        }
    }
}

pub(crate) fn to_f64_bound(b: Bound<i64>) -> Bound<f64> {
    match b {
        Bound::LoGe(v) => Bound::LoGe(v as f64),
        Bound::LoGt(v) => Bound::LoGt(v as f64),
        Bound::LoLe(v) => Bound::LoLe(v as f64),
        Bound::LoLt(v) => Bound::LoLt(v as f64),
        Bound::HiGe(v) => Bound::HiGe(v as f64),
        Bound::HiGt(v) => Bound::HiGt(v as f64),
        Bound::HiLe(v) => Bound::HiLe(v as f64),
        Bound::HiLt(v) => Bound::HiLt(v as f64),
    }
}

/// `[system]|[code]`, `|code`, `system|` or `code` as the blind form to look up.
pub fn token_query_form(v: &str) -> String {
    let parts = split_escaped(v, '|');
    match parts.as_slice() {
        [system, code] if system.is_empty() => format!("{}{code}", tag::NO_SYSTEM),
        [system, code] if code.is_empty() => format!("{}{system}", tag::SYSTEM),
        [system, code] => format!("{}{system}|{code}", tag::SYSTEM_CODE),
        _ => format!("{}{}", tag::CODE, parts.join("|")),
    }
}

/// The composite-key form of a keyed component's search value (the exact form
/// extraction writes: [`super::extract::Extractor::keyed_forms`]).
pub(crate) fn keyed_query_form(t: ParamType, v: &str) -> String {
    match t {
        ParamType::Token => token_query_form(v),
        ParamType::String => format!("v:{}", values::fold(v)),
        ParamType::Uri => format!("u:{v}"),
        ParamType::Reference => format!("r:{v}"),
        _ => String::new(),
    }
}

/// `[prefix]number[|system|code]` as (unit key, ranges).
pub(crate) fn quantity_value(name: &str, v: &str) -> Result<(String, Ranges<f64>), SearchError> {
    let (p, rest) = split_prefix(v);
    let parts = split_escaped(rest, '|');
    let (number, system, code) = match parts.as_slice() {
        [n] => (n.as_str(), "", ""),
        [n, s, c] => (n.as_str(), s.as_str(), c.as_str()),
        _ => return Err(super::plan::bad(name, v, "number|system|code")),
    };
    let (value, half) =
        values::decimal(number).ok_or_else(|| super::plan::bad(name, v, "a number"))?;
    if code.is_empty() {
        if !system.is_empty() {
            return Err(super::plan::bad(
                name,
                v,
                "number|system|code (a system needs a code)",
            ));
        }
        return Ok((tag::ANY_UNIT.to_string(), number_bounds(p, value, half)));
    }
    if system == values::UCUM {
        if let Some((factor, dims)) = values::ucum_canonical(code) {
            return Ok((
                format!("{}{dims}", tag::UNIT_CANONICAL),
                number_bounds(p, value * factor, half * factor),
            ));
        }
    }
    let key = if system.is_empty() {
        format!("{}{code}", tag::UNIT_CODE)
    } else {
        format!("{}{system}|{code}", tag::UNIT_SYSTEM_CODE)
    };
    Ok((key, number_bounds(p, value, half)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_split_off_known_codes_only() {
        assert_eq!(split_prefix("ge2020"), (Prefix::Ge, "2020"));
        assert_eq!(split_prefix("2020"), (Prefix::Eq, "2020"));
        assert_eq!(split_prefix("ap5"), (Prefix::Ap, "5"));
    }

    #[test]
    fn token_forms_follow_the_system_rules() {
        assert_eq!(
            token_query_form("http://loinc.org|1234-5"),
            "s:http://loinc.org|1234-5"
        );
        assert_eq!(token_query_form("|1234-5"), "n:1234-5");
        assert_eq!(token_query_form("http://loinc.org|"), "y:http://loinc.org");
        assert_eq!(token_query_form("1234-5"), "c:1234-5");
        assert_eq!(token_query_form(r"a\|b"), "c:a|b");
    }

    #[test]
    fn quantities_in_ucum_compare_in_base_units() {
        let (k1, r1) = quantity_value("q", "5.4|http://unitsofmeasure.org|mg").unwrap();
        let (k2, _) = quantity_value("q", "5.4|http://unitsofmeasure.org|g").unwrap();
        assert_eq!(k1, k2);
        assert!(k1.starts_with(tag::UNIT_CANONICAL));
        assert!(!r1.is_empty());
        assert!(quantity_value("q", "abc").is_err());
        assert_eq!(quantity_value("q", "5").unwrap().0, tag::ANY_UNIT);
    }
}
