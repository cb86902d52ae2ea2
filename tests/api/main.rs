//! fhirgate's integration tests, in one test binary: each module was once a file of its own
//! under `tests/` (and its own binary). One binary compiles `support` once, links once, and
//! lets the compiler report support code no test uses. `cargo test --test api search::` runs
//! one module; docs/testing.md says what each module covers.
//!
//! The modules run side by side on the harness's threads in one process, so a test must not
//! change what the process shares: no environment variables set, no global `tracing`
//! subscriber installed (tests that need a server's own log start the built binary, see
//! `support::process`), every database, folder and port its own.

mod support;

mod access;
mod audit_balp;
mod audit_chain;
mod audit_search;
mod backup;
mod bundle;
mod bundle_concurrency;
mod concurrency;
mod console;
mod crash;
mod disclosures;
mod everything;
mod examples;
mod export;
mod fhir_model;
mod fhirpath_compile_all;
mod fhirpath_differential;
mod fhirpath_engine_behaviour;
mod fhirpath_invariants_on_examples;
mod fhirpath_parser_fuzz;
mod fhirpath_suite;
mod hostile;
mod import;
mod logging;
mod no_op_update;
mod parser_fuzz;
mod patch_api;
mod patch_suite;
mod pool_shares;
mod reindex_race;
mod rest_api;
mod search;
mod search_fuzz;
mod search_parameters;
mod search_plans;
mod search_us_core;
mod shutdown;
mod smart_auth;
mod startup;
mod subscriptions;
mod sync;
mod synthetic;
mod tidy;
mod validation_examples;
mod validation_fuzz;
mod validation_http;
mod validation_rules;
