//! Who is asking and what they may touch: the one place where access is decided.
//!
//! An [`AccessContext`] travels with every request into every store call. Its
//! [`Grant`] answers two questions, and nothing else in fhirgate answers them:
//! - may this caller do this kind of interaction on this type at all
//!   ([`AccessContext::decide`]: a refusal is a 403), and
//! - which resources of the type may it see ([`Visibility`]): everything, or the
//!   rows that satisfy a store [`Filter`] (the patient compartment of a
//!   `patient/` scope, the search query of a granular SMART v2 scope).
//!
//! The store applies a visibility inside the SQL it runs (reads, searches, chains,
//! `_has`, includes, history, paging, conditional criteria, the rows a write
//! replaces and the rows it leaves), so a resource outside it is never read, not
//! filtered out afterwards. A [`Grant`] is compiled once from a list of
//! [`Permission`]s (SMART scopes become permissions in the `auth` module) with the
//! search engine, which knows the compartment and the search parameters.
//!
//! Architecture invariant: `Grant::Open` is only ever built for the command line,
//! for `auth.enabled = false`, and for a `system/*` grant; everything else is
//! narrowed by the rules compiled here.
//! Architecture invariant: a wildcard (`*`) never includes AuditEvent.

mod grant;

pub use grant::{Action, Actions, Grant, GrantError, Level, Permission, Visibility};

use crate::store::Filter;

/// Who is asking, from where, and what they may touch.
#[derive(Debug, Clone)]
pub struct AccessContext {
    /// The OAuth client (`client_id`), when a token was presented.
    pub client_id: Option<String>,
    /// The user behind the client as a FHIR reference (`fhirUser`), if any.
    pub user: Option<String>,
    /// The token's subject (`sub`), if any.
    pub subject: Option<String>,
    /// The token's id (`jti`), for the audit trail.
    pub token_id: Option<String>,
    /// Why the data is used, when the token says (break-glass: `BTG`, with the
    /// reason the user gave).
    pub purpose_of_use: Option<PurposeOfUse>,
    /// Network address of the client.
    pub remote_addr: Option<String>,
    /// The request id that ties logs and AuditEvents together.
    pub request_id: String,
    pub grant: Grant,
}

/// Who owns something that acts later on their behalf (a Subscription): what is
/// kept of an [`AccessContext`] so the same grant can be compiled again (SMART
/// scopes come and go with tokens; a subscription notifies what its creator
/// could search when it was written).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Owner {
    pub client_id: Option<String>,
    pub user: Option<String>,
    pub subject: Option<String>,
    /// `Grant::Open` (development mode, the command line, `system/*`).
    pub open: bool,
    pub operator: bool,
    pub permissions: Vec<OwnedPermission>,
    pub patient: Option<String>,
}

/// A [`Permission`] as an [`Owner`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OwnedPermission {
    /// `patient`, `user` or `system`.
    pub level: String,
    pub resource_type: Option<String>,
    /// The action letters (`cruds`).
    pub actions: String,
    pub query: Option<String>,
}

impl Owner {
    /// Is `ctx` this owner: the same client for the same user? Work done on the
    /// owner's behalf (a subscription's events, an export's files) answers to it
    /// only. With authorization off every caller is the same (none).
    pub fn acts_as(&self, ctx: &AccessContext) -> bool {
        ctx.client_id == self.client_id && ctx.subject == self.subject && ctx.user == self.user
    }

    /// The owner's grant again, compiled with the search engine; an owner whose
    /// permissions no longer compile gets nothing (deny by default).
    pub fn context(&self, engine: &crate::search::SearchEngine, request_id: &str) -> AccessContext {
        let grant = if self.open {
            Grant::Open
        } else {
            let permissions: Vec<Permission> = self
                .permissions
                .iter()
                .filter_map(|p| {
                    Some(Permission {
                        level: match p.level.as_str() {
                            "patient" => Level::Patient,
                            "user" => Level::User,
                            "system" => Level::System,
                            _ => return None,
                        },
                        resource_type: p.resource_type.clone(),
                        actions: Actions::parse_v2(&p.actions)?,
                        query: p.query.clone(),
                    })
                })
                .collect();
            match Grant::compile(&permissions, self.patient.as_deref(), engine) {
                Ok(g) if self.operator => g.with_operator(),
                Ok(g) => g,
                Err(_) => Grant::Restricted(std::sync::Arc::new(grant::Rules::default())),
            }
        };
        AccessContext {
            client_id: self.client_id.clone(),
            user: self.user.clone(),
            subject: self.subject.clone(),
            token_id: None,
            purpose_of_use: None,
            remote_addr: None,
            request_id: request_id.to_string(),
            grant,
        }
    }
}

/// A purpose of use (v3 ActReason), e.g. `BTG` for break-glass access.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurposeOfUse {
    pub code: String,
    pub reason: Option<String>,
}

/// Types no client may write, whatever its grant (405): AuditEvents are written
/// by the server only (DESIGN section 12). The reason, or None when writable.
pub fn read_only(resource_type: &str) -> Option<&'static str> {
    (resource_type == crate::audit::RESOURCE_TYPE)
        .then_some("AuditEvents are read-only: they are written by the server only")
}

/// Why an interaction was refused (403).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Denied(pub String);

impl AccessContext {
    /// An unrestricted context (development mode, command-line tools).
    pub fn open(request_id: impl Into<String>, remote_addr: Option<String>) -> AccessContext {
        AccessContext {
            client_id: None,
            user: None,
            subject: None,
            token_id: None,
            purpose_of_use: None,
            remote_addr,
            request_id: request_id.into(),
            grant: Grant::Open,
        }
    }

    /// What is kept of this caller for work done later on its behalf.
    pub fn owner(&self) -> Owner {
        let (open, operator, permissions, patient) = match &self.grant {
            Grant::Open => (true, true, Vec::new(), None),
            Grant::Restricted(rules) => (
                false,
                rules.operator,
                rules
                    .permissions
                    .iter()
                    .map(|p| OwnedPermission {
                        level: match p.level {
                            Level::Patient => "patient",
                            Level::User => "user",
                            Level::System => "system",
                        }
                        .to_string(),
                        resource_type: p.resource_type.clone(),
                        actions: p.actions.to_string(),
                        query: p.query.clone(),
                    })
                    .collect(),
                rules.patient.clone(),
            ),
        };
        Owner {
            client_id: self.client_id.clone(),
            user: self.user.clone(),
            subject: self.subject.clone(),
            open,
            operator,
            permissions,
            patient,
        }
    }

    /// The command-line tools act as the system itself.
    pub fn system() -> AccessContext {
        AccessContext::open("cli", None)
    }

    /// The same caller with another grant.
    pub fn with_grant(mut self, grant: Grant) -> AccessContext {
        self.grant = grant;
        self
    }

    /// May the caller do `action` on `resource_type` at all? `Ok` carries which
    /// resources of the type it may touch; `Err` is a refusal (403).
    pub fn decide(&self, resource_type: &str, action: Action) -> Result<Visibility, Denied> {
        self.grant.decide(resource_type, action)
    }

    /// Which resources of `resource_type` the caller may touch with `action`:
    /// what the store narrows its SQL to. A refused type sees nothing.
    pub fn visibility(&self, resource_type: &str, action: Action) -> Visibility {
        self.decide(resource_type, action)
            .unwrap_or(Visibility::Where(Filter::Nothing))
    }

    /// May the caller verify the audit chain (`AuditEvent/$verify`)? Only a
    /// caller who may search every AuditEvent (the `compliance` and `admin`
    /// roles, or a client granted `system/AuditEvent.rs`): the verdict speaks of
    /// the whole log.
    pub fn decide_audit_verify(&self) -> Result<(), Denied> {
        self.decide_whole_audit_log("verifying the audit chain")
    }

    /// May the caller have a patient's accounting of disclosures
    /// (`Patient/{id}/$disclosures`, the console's report)? Only a caller who may
    /// search every AuditEvent: HIPAA 164.528 asks for every disclosure, and an
    /// accounting cut down to what a narrowed grant sees would not say so.
    pub fn decide_disclosures(&self) -> Result<(), Denied> {
        self.decide_whole_audit_log("an accounting of disclosures")
    }

    /// May the caller use the audit console (`/console/`)? The console searches
    /// and shows any AuditEvent, its disclosure reports and the chain's state, so
    /// the same rule: every AuditEvent (the `compliance` and `admin` roles).
    pub fn decide_audit_console(&self) -> Result<(), Denied> {
        self.decide_whole_audit_log("the audit console")
    }

    /// Allowed only when the caller may search every AuditEvent (a narrowed or
    /// absent AuditEvent permission refuses: deny by default).
    fn decide_whole_audit_log(&self, what: &str) -> Result<(), Denied> {
        match self.decide(crate::audit::RESOURCE_TYPE, Action::Search)? {
            Visibility::All => Ok(()),
            Visibility::Where(_) => Err(Denied(format!(
                "{what} needs access to every AuditEvent (the compliance or admin role)"
            ))),
        }
    }

    /// True when nothing is narrowed for this caller (no SQL restriction at all).
    pub fn is_open(&self) -> bool {
        matches!(self.grant, Grant::Open)
    }
}
