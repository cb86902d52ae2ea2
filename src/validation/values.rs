//! Value rules that need no plan: fixed and pattern matching (R4 ElementDefinition
//! `fixed[x]`: exact; `pattern[x]`: the instance carries at least what the pattern has),
//! the base64 rule the reference validator applies, and the target type of a reference.

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
