//! fhirgate: a FHIR R4 interoperability gateway. The library holds every
//! capability; `main.rs` only parses the command line and calls in here.
//! `docs/ARCHITECTURE.md` maps the modules.

pub mod access;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod bulk;
pub mod bundle;
pub mod config;
pub mod console;
pub mod crypto;
pub mod fhir;
pub mod fhirpath;
pub mod http;
pub mod packages;
pub mod patch;
pub mod search;
pub mod startup;
pub mod store;
pub mod subscription;
pub mod telemetry;
pub mod terminology;
pub mod validation;
