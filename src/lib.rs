//! fhirgate: a FHIR R4 interoperability gateway. The library holds every
//! capability; `main.rs` only parses the command line and calls in here.
//! `docs/ARCHITECTURE.md` maps the modules.

pub mod config;
pub mod fhir;
pub mod packages;
