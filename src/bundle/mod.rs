//! Batch and transaction processing (FHIR R4 http.html 3.1.0.11) and the
//! conditional interactions it shares with the REST API: conditional create
//! (`ifNoneExist`), update (`PUT Type?criteria`), patch and delete, conditional
//! references (`Patient?identifier=sys|123`), `ifMatch` per entry, and the
//! rewriting of `fullUrl` identities (`urn:uuid:`, `urn:oid:`, RESTful URLs) into
//! every reference and uri element of every entry.
//!
//! A transaction is planned first (every entry's request read and checked, all
//! problems of all entries reported together), then its conditional criteria are
//! resolved and its resources prepared (references rewritten, index rows built)
//! outside the database transaction, and finally the criteria are resolved again
//! inside one write transaction under advisory locks (taken in ascending order) and
//! every version is written there with its index rows and AuditEvent. When the
//! second resolution differs from the first, the preparation is redone inside.
//! Any failing entry returns an error, which rolls everything back. A batch runs
//! each entry the same way, on its own.
//!
//! GET and HEAD entries are not answered here: they come back as [`Done::Read`]
//! for the caller, which answers them like the REST reads and searches they are.
//!
//! Architecture invariant: bundle knows nothing of HTTP (statuses are chosen by the
//! HTTP layer's one error mapping); it writes only through the store's [`Txn`].
//! Architecture invariant: every written resource passes [`validate_entry`] first.

mod plan;
mod process;
mod references;
mod request;
mod resolve;
mod write;

use serde_json::Value;

use crate::access::AccessContext;
use crate::audit::{AuditRecord, AuditWriter};
use crate::fhir::compartment::PatientCompartment;
use crate::fhir::{Id, Issue, Model};
use crate::patch::Patch;
use crate::search::SearchEngine;
use crate::store::{Store, StoreError, Txn};

pub use process::{dry_run, process_batch, process_entry, process_transaction, Done, Failure};
pub use references::{classify, restful_base, walk, RefForm, Site};
pub use request::{parse_target, read_bundle, BundleKind, ReadError, RequestBundle};
pub use write::identity_change;

/// The HTTP verbs of Bundle entries, in the order a transaction processes them
/// (R4 http.html 3.1.0.11.2: DELETE, POST, PUT and PATCH, then GET and HEAD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Method {
    Delete,
    Post,
    Put,
    Patch,
    Get,
    Head,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }

    /// The processing step: PUT and PATCH share one.
    fn step(self) -> u8 {
        match self {
            Method::Delete => 0,
            Method::Post => 1,
            Method::Put | Method::Patch => 2,
            Method::Get | Method::Head => 3,
        }
    }

    pub fn is_read(self) -> bool {
        matches!(self, Method::Get | Method::Head)
    }
}

/// What an entry's `request.url` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// `[type]`: create, or a search without criteria.
    Type(String),
    /// `[type]/[id]`.
    Instance { resource_type: String, id: Id },
    /// `[type]/[id]/_history/[vid]`.
    Version {
        resource_type: String,
        id: Id,
        version: i64,
    },
    /// `[type]?criteria`: a conditional update, patch or delete, or a type search.
    Search {
        resource_type: String,
        query: String,
    },
    /// `?params`: a system search.
    System { query: String },
    /// `[compartment]/[id]/[type]`: a compartment search.
    Compartment {
        compartment: String,
        id: Id,
        target: String,
        query: String,
    },
    /// History, operations: not processed in a Bundle.
    Other(String),
}

impl Target {
    pub fn resource_type(&self) -> Option<&str> {
        match self {
            Target::Type(t)
            | Target::Instance {
                resource_type: t, ..
            }
            | Target::Version {
                resource_type: t, ..
            }
            | Target::Search {
                resource_type: t, ..
            } => Some(t),
            _ => None,
        }
    }
}

/// What an entry carries.
#[derive(Debug)]
pub enum Payload {
    None,
    /// The resource to create or update, strictly checked.
    Resource(Value),
    /// A PATCH entry's patch document.
    Patch(Patch),
}

/// Where an entry came from: the index of a Bundle entry, or a REST request (a
/// conditional interaction on `[type]?criteria` is processed as one entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Bundle(usize),
    Request,
}

impl Origin {
    /// The FHIRPath location of the entry's resource in what the client sent.
    pub fn resource_location(self, resource_type: &str) -> String {
        match self {
            Origin::Bundle(i) => format!("Bundle.entry[{i}].resource"),
            Origin::Request => resource_type.to_string(),
        }
    }
}

/// One entry (or one conditional REST interaction), read and checked.
#[derive(Debug)]
pub struct Entry {
    pub origin: Origin,
    pub full_url: Option<String>,
    pub method: Method,
    /// `request.url` as sent.
    pub url: String,
    pub target: Target,
    pub payload: Payload,
    pub if_match: Option<i64>,
    pub if_none_exist: Option<String>,
    pub if_none_match: Option<String>,
    pub if_modified_since: Option<String>,
}

/// Why one entry failed; the HTTP layer gives each kind its status.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The entry or its resource is malformed (400); every issue found.
    #[error("{}", first_issue(.0))]
    Invalid(Vec<Issue>),
    /// Well-formed but not acceptable: an invalid patched resource, profiles (422).
    #[error("{}", first_issue(.0))]
    Unprocessable(Vec<Issue>),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Gone(String),
    /// A conflicting state: the id exists, two entries change one resource (409).
    #[error("{0}")]
    Conflict(String),
    /// `ifMatch` names another version, criteria match several resources or none
    /// where exactly one is needed (412).
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotImplemented(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The same error, at an element of what the client sent.
    #[error("{error}")]
    At {
        expression: String,
        error: Box<EntryError>,
    },
}

fn first_issue(issues: &[Issue]) -> String {
    issues
        .first()
        .map(|i| i.diagnostics.clone())
        .unwrap_or_else(|| "the entry is not valid".into())
}

impl EntryError {
    /// The error at `expression`, unless it already names where (issues carry
    /// their own locations).
    pub fn at(self, expression: impl Into<String>) -> EntryError {
        match self {
            EntryError::Invalid(_) | EntryError::Unprocessable(_) | EntryError::At { .. } => self,
            other => EntryError::At {
                expression: expression.into(),
                error: Box::new(other),
            },
        }
    }

    /// True for a lost race with another writer (the transaction runs again).
    pub fn is_contention(&self) -> bool {
        match self {
            EntryError::Store(StoreError::Contention) => true,
            EntryError::At { error, .. } => error.is_contention(),
            _ => false,
        }
    }

    /// True when the fault is the server's (audited as a serious failure).
    pub fn is_server_error(&self) -> bool {
        match self {
            EntryError::Store(e) => !matches!(
                e,
                StoreError::NotFound
                    | StoreError::Forbidden(_)
                    | StoreError::AlreadyExists
                    | StoreError::VersionConflict { .. }
                    | StoreError::MultipleMatches(_)
                    | StoreError::TooManySubscriptions { .. }
                    | StoreError::Contention
            ),
            EntryError::NotImplemented(_) => true,
            EntryError::At { error, .. } => error.is_server_error(),
            _ => false,
        }
    }
}

/// What processing needs from the server: the model, search (criteria, index
/// rows), the store, the audit row builder, and who is asking.
pub struct Env<'a> {
    pub model: &'a Model,
    pub search: &'a SearchEngine,
    pub store: &'a Store,
    pub audit: &'a AuditWriter,
    pub compartment: &'a PatientCompartment,
    /// Profile validation of every written resource.
    pub gate: &'a crate::validation::WriteGate,
    pub ctx: &'a AccessContext,
    pub base_url: &'a str,
    /// Put each stored resource into its entry's result (`Prefer: return=representation`).
    pub return_bodies: bool,
    /// What a Subscription written must satisfy (`subscriptions.*`).
    pub subscriptions: &'a crate::config::SubscriptionSettings,
}

/// Work done inside a transaction besides the entries' writes, committed with them
/// (`fhirgate import` records its progress so that a resumed import skips exactly
/// what is stored).
pub type Extra<'a> = &'a dyn Fn(&mut dyn Txn) -> Result<(), StoreError>;

/// What judges a resource a Bundle entry or an import line is about to write.
#[derive(Clone, Copy)]
pub struct EntryChecks<'a> {
    pub model: &'a Model,
    pub gate: &'a crate::validation::WriteGate,
    pub search: &'a SearchEngine,
    pub subscriptions: &'a crate::config::SubscriptionSettings,
}

impl<'a> Env<'a> {
    pub fn checks(&self) -> EntryChecks<'a> {
        EntryChecks {
            model: self.model,
            gate: self.gate,
            search: self.search,
            subscriptions: self.subscriptions,
        }
    }
}

/// The one place where a resource that a Bundle entry or an import line is about to
/// write is judged, at its location in what the client sent (`Bundle.entry[3].resource`):
/// the strict structural check, then (as for the REST API) the rules of
/// SearchParameters and profile validation per `validation.mode`. A transaction
/// reports the issues of all its entries.
pub fn validate_entry(checks: EntryChecks<'_>, resource: &Value, location: &str) -> Vec<Issue> {
    let mut issues = crate::fhir::json::check_resource_at(checks.model, resource, location);
    if crate::fhir::outcome::has_errors(&issues) {
        return issues;
    }
    match resource.get("resourceType").and_then(Value::as_str) {
        Some("SearchParameter") => issues.extend(checks.search.check_search_parameter(resource)),
        Some(crate::subscription::rules::RESOURCE_TYPE) => issues.extend(
            crate::subscription::rules::check(resource, checks.search, checks.subscriptions),
        ),
        _ => {}
    }
    issues.extend(checks.gate.check(resource, Some(location)));
    issues
}

/// The audit record of an entry that never ran or failed (written by the caller
/// after the rollback).
pub fn failure_record(
    ctx: &AccessContext,
    entry: Option<&Entry>,
    description: String,
    server_fault: bool,
) -> AuditRecord {
    process::failure_record(ctx, entry, description, server_fault)
}
