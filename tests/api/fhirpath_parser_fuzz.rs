//! Fuzz tests of the parser and evaluator: arbitrary text and random token soup must give a
//! value or an error with a position inside the text, never a panic.

use fhirgate::fhirpath::{self, EvalContext, NoModel};
use proptest::prelude::*;

const TOKENS: [&str; 60] = [
    "name",
    "given",
    "Patient",
    "where(",
    "select(",
    "exists(",
    ")",
    "(",
    ".",
    "[",
    "]",
    "0",
    "1",
    "2.5",
    "'a'",
    "'",
    "`x`",
    "@2014",
    "@2014-01-02T10:",
    "@T10:30",
    "5 'mg'",
    "3 days",
    "+",
    "-",
    "*",
    "/",
    "div",
    "mod",
    "&",
    "|",
    "=",
    "!=",
    "~",
    "!~",
    "<",
    "<=",
    ">",
    ">=",
    "and",
    "or",
    "xor",
    "implies",
    "is",
    "as",
    "in",
    "contains",
    "$this",
    "$index",
    "$total",
    "%resource",
    "%",
    "{}",
    "{",
    ",",
    "iif(",
    "repeat(",
    "descendants()",
    "matches('(')",
    "substring(",
    "/*",
];

fn check_text(text: &str) {
    match fhirpath::compile(text) {
        Ok(expr) => {
            let input =
                serde_json::json!({"resourceType": "Patient", "name": [{"given": ["a", "b"]}]});
            let model = NoModel;
            let ctx = EvalContext::new(&model);
            if let Err(e) = expr.evaluate(&ctx, &input) {
                assert!(!e.message().is_empty());
            }
        }
        Err(e) => {
            assert!(
                e.position().offset <= text.len(),
                "position outside the text: {e}"
            );
            assert!(!e.message().is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,40}") {
        check_text(&text);
    }

    #[test]
    fn token_soup_never_panics(tokens in proptest::collection::vec(0..TOKENS.len(), 0..14)) {
        let text: Vec<&str> = tokens.iter().map(|i| TOKENS[*i]).collect();
        check_text(&text.join(" "));
        check_text(&text.join(""));
    }
}

#[test]
fn syntax_errors_report_line_and_column() {
    let e = fhirpath::compile("name.given\n  .where(").unwrap_err();
    assert_eq!((e.position().line, e.position().column), (2, 10), "{e}");
    let e = fhirpath::compile("name.nosuchfunction()").unwrap_err();
    assert!(
        e.to_string().contains("unknown function 'nosuchfunction'"),
        "{e}"
    );
    assert_eq!(e.position().column, 6);
    let e = fhirpath::compile("'unterminated").unwrap_err();
    assert_eq!(e.position().column, 1);
}

#[test]
fn deeply_nested_input_is_an_error_not_a_stack_overflow() {
    let text = "(".repeat(10_000) + "1" + &")".repeat(10_000);
    assert!(fhirpath::compile(&text).is_err());
    let text = "-".repeat(10_000) + "1";
    assert!(fhirpath::compile(&text).is_err());
}

#[test]
fn long_chains_are_bounded_and_moderate_depth_evaluates() {
    // chains build deep trees too: they are bounded like nesting
    assert!(fhirpath::compile(&vec!["name"; 5000].join(".")).is_err());
    assert!(fhirpath::compile(&vec!["1"; 5000].join(" + ")).is_err());
    // depth well inside the limit compiles and evaluates on a test thread's stack
    let model = NoModel;
    let ctx = EvalContext::new(&model);
    let input = serde_json::json!({});
    for text in [
        "(".repeat(60) + "1" + &")".repeat(60),
        vec!["1"; 100].join(" + "),
        "-".repeat(100) + "1",
        vec!["children()"; 100].join("."),
        "1".to_string() + &".where(true)".repeat(100),
    ] {
        let expr = fhirpath::compile(&text).unwrap_or_else(|e| panic!("{e}"));
        expr.evaluate(&ctx, &input)
            .unwrap_or_else(|e| panic!("{e}"));
    }
}
