//! The search parameter parser and planner: an input `Type?query` (or `?query` for
//! a system search) is parsed with the real settings' limits, leniently and
//! strictly, and as the criteria of a conditional interaction; every answer is a
//! plan or an error a client can read, never a panic, and parsing never touches
//! the store.
#![no_main]

use std::sync::{Arc, OnceLock};

use fhirgate::search::{SearchEngine, SearchError};
use libfuzzer_sys::fuzz_target;

fn engine() -> &'static SearchEngine {
    static ENGINE: OnceLock<SearchEngine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let model = fhirgate_fuzz::core_model();
        let terminology = Arc::new(fhirgate::terminology::Terminology::new(
            model.packages().clone(),
        ));
        let settings = fhirgate::config::Settings::default();
        SearchEngine::new(
            model,
            terminology,
            "http://127.0.0.1:8080/fhir".into(),
            fhirgate::startup::search_settings(&settings),
        )
    })
}

fn check<T>(result: Result<T, SearchError>) {
    if let Err(e) = result {
        assert!(!e.to_string().is_empty(), "an empty refusal");
        assert!(
            !matches!(e, SearchError::Store(_)),
            "parsing touched the store: {e}"
        );
    }
}

fuzz_target!(
    init: {
        fhirgate_fuzz::write_seeds_if_asked(fhirgate_fuzz::search_seeds);
        engine();
    },
    |data: &[u8]| {
        let Ok(text) = std::str::from_utf8(data) else {
            return;
        };
        let (resource_type, query) = text.split_once('?').unwrap_or((text, ""));
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        let types = if resource_type.is_empty() {
            Vec::new()
        } else {
            vec![resource_type.to_string()]
        };
        check(engine().parse(types.clone(), &pairs, false));
        check(engine().parse(types, &pairs, true));
        if !resource_type.is_empty() {
            check(engine().condition(resource_type, query));
        }
    }
);
