//! Value rules that need no plan: fixed and pattern matching (R4 ElementDefinition
//! `fixed[x]`: exact; `pattern[x]`: the instance carries at least what the pattern has),
//! `minValue[x]`/`maxValue[x]` comparisons, the base64 rule the reference validator
//! applies, and the target type of a reference.

use base64::Engine as _;
use serde_json::Value;

/// `fixed[x]`: the instance value is exactly the fixed value.
pub fn fixed_matches(fixed: &Value, actual: &Value) -> bool {
    match (fixed, actual) {
        (Value::Number(a), Value::Number(b)) => numbers_equal(a, b),
        _ => fixed == actual,
    }
}

/// `pattern[x]`: every element of the pattern is in the instance with the same value;
/// every item of a pattern array is matched by some item of the instance array.
pub fn pattern_matches(pattern: &Value, actual: &Value) -> bool {
    match (pattern, actual) {
        (Value::Object(p), Value::Object(a)) => p
            .iter()
            .all(|(k, pv)| a.get(k).is_some_and(|av| pattern_matches(pv, av))),
        (Value::Array(p), Value::Array(a)) => p
            .iter()
            .all(|pv| a.iter().any(|av| pattern_matches(pv, av))),
        (Value::Array(p), other) => p.len() == 1 && pattern_matches(&p[0], other),
        (Value::Number(a), Value::Number(b)) => numbers_equal(a, b),
        (p, a) => p == a,
    }
}

/// Decimals keep their text (arbitrary_precision); `1.0` and `1.00` are one value.
fn numbers_equal(a: &serde_json::Number, b: &serde_json::Number) -> bool {
    let (a, b) = (a.to_string(), b.to_string());
    a == b
        || match (
            a.parse::<rust_decimal::Decimal>(),
            b.parse::<rust_decimal::Decimal>(),
        ) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
}

/// How an instance value compares with a `minValue[x]`/`maxValue[x]` bound; None when the
/// two cannot be compared (other types, Quantities in other units, a date whose precision
/// leaves the answer open: `2019` against `2019-06-01`), which is never reported.
pub fn compare_to_bound(value: &Value, bound: &Value) -> Option<std::cmp::Ordering> {
    match (value, bound) {
        (Value::Number(a), Value::Number(b)) => {
            let a = a.to_string().parse::<rust_decimal::Decimal>().ok()?;
            let b = b.to_string().parse::<rust_decimal::Decimal>().ok()?;
            Some(a.cmp(&b))
        }
        (Value::String(a), Value::String(b)) => compare_temporal(a, b),
        // `>5 mg` is not a value below 10 mg: a comparator leaves the answer open
        (Value::Object(a), _) if a.contains_key("comparator") => None,
        (Value::Object(a), Value::Object(b)) => {
            let same = |k: &str| b.get(k).is_none() || a.get(k) == b.get(k);
            if !(same("system") && same("code")) || (b.get("code").is_none() && !same("unit")) {
                return None;
            }
            compare_to_bound(a.get("value")?, b.get("value")?)
        }
        _ => None,
    }
}

/// Dates, dateTimes, instants and times. Without time zones the text orders itself on the
/// shared precision; with zones on both sides the instants are compared.
fn compare_temporal(a: &str, b: &str) -> Option<std::cmp::Ordering> {
    // Both dates (and dateTimes, instants) or both times; other strings are not compared.
    let kind = |s: &str| {
        let b = s.as_bytes();
        let digits = |r: std::ops::Range<usize>| {
            b.get(r.clone())
                .is_some_and(|x| x.len() == r.len() && x.iter().all(u8::is_ascii_digit))
        };
        if digits(0..4) && (b.len() == 4 || b.get(4) == Some(&b'-')) {
            Some('d')
        } else if digits(0..2) && b.get(2) == Some(&b':') {
            Some('t')
        } else {
            None
        }
    };
    if kind(a).is_none() || kind(a) != kind(b) {
        return None;
    }
    let zoned = |s: &str| {
        s.split_once('T')
            .is_some_and(|(_, t)| t.ends_with('Z') || t.contains(['+', '-']))
    };
    match (zoned(a), zoned(b)) {
        (true, true) => {
            let a = chrono::DateTime::parse_from_rfc3339(a).ok()?;
            let b = chrono::DateTime::parse_from_rfc3339(b).ok()?;
            Some(a.cmp(&b))
        }
        (false, false) => {
            let n = a.len().min(b.len());
            let (x, y) = (a.get(..n)?, b.get(..n)?);
            match x.cmp(y) {
                std::cmp::Ordering::Equal if a.len() != b.len() => None,
                o => Some(o),
            }
        }
        _ => None,
    }
}

/// The reference validator refuses white space in base64Binary although the R4 regex of
/// the type allows it (docs/decisions.md), and refuses text that does not decode.
pub fn base64_problem(text: &str) -> Option<&'static str> {
    if text.bytes().any(|b| b.is_ascii_whitespace()) {
        return Some("contains white space");
    }
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    match engine.decode(text) {
        Ok(_) => None,
        Err(_) => Some("is not valid base64"),
    }
}

/// The resource type a literal reference names: `Patient/1`, `http://x/fhir/Patient/1`,
/// `.../Patient/1/_history/2`. None for other forms (`urn:`, `#`, logical URLs).
pub fn reference_type(reference: &str, is_resource_type: impl Fn(&str) -> bool) -> Option<&str> {
    let path = reference.split(['?', '#']).next().unwrap_or(reference);
    let mut segments: Vec<&str> = path.split('/').collect();
    if segments.len() >= 4 && segments[segments.len() - 2] == "_history" {
        segments.truncate(segments.len() - 2);
    }
    if segments.len() < 2 {
        return None;
    }
    let t = segments[segments.len() - 2];
    is_resource_type(t).then_some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_pattern_is_contained_a_fixed_value_is_equal() {
        let p = json!({"coding": [{"system": "s", "code": "c"}]});
        let a = json!({"coding": [{"system": "x", "code": "y"}, {"system": "s", "code": "c", "display": "C"}], "text": "t"});
        assert!(pattern_matches(&p, &a));
        assert!(!fixed_matches(&p, &a));
        assert!(!pattern_matches(&p, &json!({"coding": [{"system": "s"}]})));
        assert!(fixed_matches(&json!("x"), &json!("x")));
    }

    #[test]
    fn bounds_compare_only_what_is_comparable() {
        use std::cmp::Ordering::*;
        let c = |a: Value, b: Value| compare_to_bound(&a, &b);
        assert_eq!(c(json!(3), json!(2.50)), Some(Greater));
        assert_eq!(c(json!(2.5), json!(2.50)), Some(Equal));
        assert_eq!(c(json!("1850-05"), json!("1900-01-01")), Some(Less));
        assert_eq!(c(json!("1900"), json!("1900-01-01")), None);
        assert_eq!(
            c(
                json!("2020-01-01T10:00:00+02:00"),
                json!("2020-01-01T09:00:00Z")
            ),
            Some(Less)
        );
        assert_eq!(
            c(json!("2020-01-01T10:00:00"), json!("2020-01-01T09:00:00Z")),
            None
        );
        assert_eq!(c(json!("10:30"), json!("09:00:00")), Some(Greater));
        let q = |v: Value, code: &str| json!({"value": v, "system": "http://unitsofmeasure.org", "code": code});
        assert_eq!(c(q(json!(120), "kg"), q(json!(100), "kg")), Some(Greater));
        assert_eq!(c(q(json!(120), "g"), q(json!(100), "kg")), None);
        assert_eq!(c(json!(true), json!(1)), None);
        assert_eq!(c(json!("1"), json!("2000-01-01")), None);
        assert_eq!(c(json!("10:30"), json!("2000-01-01")), None);
        let mut over = q(json!(5), "kg");
        over["comparator"] = json!(">");
        assert_eq!(c(over, q(json!(10), "kg")), None);
    }

    #[test]
    fn base64_with_white_space_is_refused() {
        assert_eq!(base64_problem("aGVsbG8="), None);
        assert_eq!(base64_problem("aGVs bG8="), Some("contains white space"));
        assert_eq!(base64_problem("a*b"), Some("is not valid base64"));
    }

    #[test]
    fn reference_types_come_from_the_literal_url() {
        let known = |t: &str| t == "Patient";
        assert_eq!(reference_type("Patient/1", known), Some("Patient"));
        assert_eq!(
            reference_type("http://x/fhir/Patient/1/_history/2", known),
            Some("Patient")
        );
        assert_eq!(reference_type("urn:uuid:1", known), None);
        assert_eq!(reference_type("Group/1", known), None);
    }
}
