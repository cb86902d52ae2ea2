//! The search parser and planner never panic: arbitrary query strings, and
//! parameters assembled from real names, modifiers, chains, prefixes and value
//! shapes, are either planned or refused with an error a client can read.

use std::sync::{Arc, OnceLock};

use fhirgate::search::{SearchEngine, SearchError};
use proptest::prelude::*;

use crate::support;

fn engine() -> &'static SearchEngine {
    static ENGINE: OnceLock<SearchEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let model = support::core_model();
        let terminology = Arc::new(fhirgate::terminology::Terminology::new(
            model.packages().clone(),
        ));
        SearchEngine::new(
            model,
            terminology,
            "http://x/fhir".into(),
            Default::default(),
        )
    })
}

const TYPES: &[&str] = &[
    "Patient",
    "Observation",
    "Encounter",
    "ValueSet",
    "RiskAssessment",
];
const NAMES: &[&str] = &[
    "family",
    "name",
    "birthdate",
    "gender",
    "identifier",
    "subject",
    "patient",
    "code",
    "date",
    "value-quantity",
    "code-value-quantity",
    "url",
    "probability",
    "_id",
    "_lastUpdated",
    "_list",
    "_has:Observation:patient:code",
    "subject:Patient.name",
    "patient.general-practitioner.name",
    "_sort",
    "_count",
    "_include",
    "_revinclude",
    "_total",
    "_summary",
    "_elements",
    "_contained",
    "_text",
    "nonsense",
    "",
    ":",
    ".",
];
const MODIFIERS: &[&str] = &[
    "",
    ":exact",
    ":contains",
    ":missing",
    ":not",
    ":text",
    ":in",
    ":not-in",
    ":below",
    ":above",
    ":of-type",
    ":identifier",
    ":Patient",
    ":iterate",
    ":x",
    "::",
];
const VALUES: &[&str] = &[
    "",
    "a",
    "Chalm",
    "ge2020",
    "2020-13",
    "lt5.5",
    "5.4|http://unitsofmeasure.org|mg",
    "http://loinc.org|1234-5",
    "|x",
    "x|",
    "a\\,b,c",
    "Patient/1",
    "http://x/fhir/Patient/1",
    "true",
    "maybe",
    "-date,family",
    "Observation:patient",
    "*",
    "apx",
    "1e400",
    "\\",
    "a$b$c",
    "http://hl7.org/fhir/ValueSet/administrative-gender",
    "ééé",
    "$",
    "|",
];

fn check(result: Result<fhirgate::search::SearchRequest, SearchError>) {
    if let Err(e) = result {
        // Every refusal reads as a sentence a client can act on.
        assert!(!e.to_string().is_empty());
        assert!(
            !matches!(e, SearchError::Store(_)),
            "parsing touched the store: {e}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_query_strings_never_panic(query in ".{0,200}", t in 0usize..5, strict in any::<bool>()) {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        check(engine().parse(vec![TYPES[t].to_string()], &pairs, strict));
    }

    #[test]
    fn assembled_parameters_never_panic(
        picks in proptest::collection::vec((0..NAMES.len(), 0..MODIFIERS.len(), 0..VALUES.len()), 1..5),
        t in 0usize..5,
        strict in any::<bool>(),
    ) {
        let pairs: Vec<(String, String)> = picks
            .iter()
            .map(|(n, m, v)| (format!("{}{}", NAMES[*n], MODIFIERS[*m]), VALUES[*v].to_string()))
            .collect();
        check(engine().parse(vec![TYPES[t].to_string()], &pairs, strict));
        check(engine().parse(Vec::new(), &pairs, strict));
    }

    #[test]
    fn conditional_criteria_never_panic(query in ".{0,120}", t in 0usize..5) {
        let _ = engine().condition(TYPES[t], &query);
    }
}
