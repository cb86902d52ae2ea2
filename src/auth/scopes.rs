//! SMART scopes: parsed once into [`Scope`]s (v1 `patient/Observation.read`,
//! v2 `user/Patient.cruds`, granular `patient/Observation.rs?category=...`, and
//! the launch/identity scopes), bounded by what a client registered and what a
//! user's role allows, and turned into `access::Permission`s.

use std::fmt;
use std::str::FromStr;

use crate::access::{Actions, Level, Permission};

/// A user's role: what scopes the user can approve (DESIGN section 11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Only `patient/` scopes, for their own record.
    Patient,
    /// `user/` and `patient/` scopes.
    Clinician,
    /// AuditEvents (`user/AuditEvent.rs`), nothing clinical.
    Compliance,
    /// Clinical and audit scopes, and operator work.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Patient => "patient",
            Role::Clinician => "clinician",
            Role::Compliance => "compliance",
            Role::Admin => "admin",
        }
    }

    /// May a user of this role approve `scope`?
    pub fn allows(self, scope: &Scope) -> bool {
        let Scope::Resource(r) = scope else {
            return true;
        };
        let audit = r.is_audit_event();
        match (self, r.level) {
            (_, Level::System) => false,
            (Role::Patient, Level::Patient) => !audit,
            (Role::Patient, _) => false,
            (Role::Clinician, _) => !audit,
            (Role::Compliance, _) => audit && !r.actions.contains(crate::access::Action::Create),
            (Role::Admin, _) => true,
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        match s {
            "patient" => Ok(Role::Patient),
            "clinician" => Ok(Role::Clinician),
            "compliance" => Ok(Role::Compliance),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "`{other}` is not a role (patient, clinician, compliance, admin)"
            )),
        }
    }
}

/// A resource scope: `level/Type.actions[?query]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResourceScope {
    pub level: Level,
    /// None: `*`.
    pub resource_type: Option<String>,
    pub actions: Actions,
    pub query: Option<String>,
    /// As the client wrote it (echoed in `scope`).
    pub text: String,
}

impl ResourceScope {
    fn is_audit_event(&self) -> bool {
        self.resource_type.as_deref() == Some("AuditEvent")
    }

    /// Does this (registered, most) scope cover `other` wholly?
    fn covers(&self, other: &ResourceScope) -> bool {
        let type_ok = match (&self.resource_type, &other.resource_type) {
            (None, None) => true,
            // A wildcard never includes AuditEvent.
            (None, Some(t)) => t != "AuditEvent",
            (Some(_), None) => false,
            (Some(a), Some(b)) => a == b,
        };
        let query_ok = match (&self.query, &other.query) {
            (None, _) => true,
            (Some(a), Some(b)) => a == b,
            (Some(_), None) => false,
        };
        self.level == other.level && type_ok && query_ok && all_in(other.actions, self.actions)
    }

    pub fn permission(&self) -> Permission {
        Permission {
            level: self.level,
            resource_type: self.resource_type.clone(),
            actions: self.actions,
            query: self.query.clone(),
        }
    }
}

fn all_in(inner: Actions, outer: Actions) -> bool {
    use crate::access::Action::*;
    [Create, Read, Update, Delete, Search]
        .into_iter()
        .all(|a| !inner.contains(a) || outer.contains(a))
}

/// One scope of a request or a grant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Resource(ResourceScope),
    OpenId,
    FhirUser,
    Profile,
    /// `launch`: an EHR launch context.
    Launch,
    LaunchPatient,
    LaunchEncounter,
    OfflineAccess,
    OnlineAccess,
}

/// Why a scope was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{scope}` is not a scope fhirgate knows: {reason}")]
pub struct ScopeError {
    pub scope: String,
    pub reason: String,
}

impl FromStr for Scope {
    type Err = ScopeError;

    fn from_str(s: &str) -> Result<Scope, ScopeError> {
        let bad = |reason: &str| ScopeError {
            scope: crate::fhir::types::truncate(s, 120).to_string(),
            reason: reason.to_string(),
        };
        match s {
            "openid" => return Ok(Scope::OpenId),
            "fhirUser" => return Ok(Scope::FhirUser),
            "profile" => return Ok(Scope::Profile),
            "launch" => return Ok(Scope::Launch),
            "launch/patient" => return Ok(Scope::LaunchPatient),
            "launch/encounter" => return Ok(Scope::LaunchEncounter),
            "offline_access" => return Ok(Scope::OfflineAccess),
            "online_access" => return Ok(Scope::OnlineAccess),
            _ => {}
        }
        let (level, rest) = s.split_once('/').ok_or_else(|| bad("no level/"))?;
        let level = match level {
            "patient" => Level::Patient,
            "user" => Level::User,
            "system" => Level::System,
            _ => return Err(bad("the level must be patient, user or system")),
        };
        let (body, query) = match rest.split_once('?') {
            Some((b, q)) if !q.is_empty() => (b, Some(q.to_string())),
            Some(_) => return Err(bad("an empty query")),
            None => (rest, None),
        };
        let (rtype, actions) = body.split_once('.').ok_or_else(|| bad("no .permissions"))?;
        let resource_type = match rtype {
            "*" => None,
            t if !t.is_empty()
                && t.len() <= 64
                && t.starts_with(|c: char| c.is_ascii_uppercase())
                && t.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                Some(t.to_string())
            }
            _ => return Err(bad("the resource type is not a type name or *")),
        };
        let actions = match actions {
            // SMART v1: read = rs, write = cud, * = cruds.
            "read" => Actions::parse_v2("rs"),
            "write" => Actions::parse_v2("cud"),
            "*" => Some(Actions::ALL),
            v2 => Actions::parse_v2(v2),
        }
        .ok_or_else(|| bad("the permissions are not read, write, * or SMART v2 letters (cruds)"))?;
        if query.is_some() && resource_type.is_none() {
            return Err(bad("a granular scope names one resource type"));
        }
        Ok(Scope::Resource(ResourceScope {
            level,
            resource_type,
            actions,
            query,
            text: s.to_string(),
        }))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Scope::Resource(r) => &r.text,
            Scope::OpenId => "openid",
            Scope::FhirUser => "fhirUser",
            Scope::Profile => "profile",
            Scope::Launch => "launch",
            Scope::LaunchPatient => "launch/patient",
            Scope::LaunchEncounter => "launch/encounter",
            Scope::OfflineAccess => "offline_access",
            Scope::OnlineAccess => "online_access",
        })
    }
}

/// A set of scopes in the order they were asked for, without repeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(pub Vec<Scope>);

impl Scopes {
    /// Every scope of a space-separated list; scopes fhirgate does not know are
    /// left out (RFC 6749 section 3.3 lets the server ignore them), and named in
    /// the second list.
    pub fn parse_lenient(text: &str) -> (Scopes, Vec<ScopeError>) {
        let mut out = Scopes::default();
        let mut unknown = Vec::new();
        for s in text.split(' ').filter(|s| !s.is_empty()) {
            match s.parse::<Scope>() {
                Ok(sc) => out.push(sc),
                Err(e) => unknown.push(e),
            }
        }
        (out, unknown)
    }

    /// Every scope of a list, or the first that is not one.
    pub fn parse_strict(text: &str) -> Result<Scopes, ScopeError> {
        let mut out = Scopes::default();
        for s in text.split(' ').filter(|s| !s.is_empty()) {
            out.push(s.parse()?);
        }
        Ok(out)
    }

    pub fn push(&mut self, s: Scope) {
        if !self.0.contains(&s) {
            self.0.push(s);
        }
    }

    pub fn contains(&self, s: &Scope) -> bool {
        self.0.contains(s)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Scope> {
        self.0.iter()
    }

    pub fn resources(&self) -> impl Iterator<Item = &ResourceScope> {
        self.0.iter().filter_map(|s| match s {
            Scope::Resource(r) => Some(r),
            _ => None,
        })
    }

    /// Those scopes that `most` (a client's registration; None: every scope) covers.
    pub fn within(&self, most: Option<&Scopes>) -> Scopes {
        let Some(most) = most else {
            return self.clone();
        };
        Scopes(
            self.0
                .iter()
                .filter(|s| match s {
                    Scope::Resource(r) => most.resources().any(|m| m.covers(r)),
                    other => most.contains(other),
                })
                .cloned()
                .collect(),
        )
    }

    /// Those scopes that satisfy `keep`.
    pub fn filter(&self, keep: impl Fn(&Scope) -> bool) -> Scopes {
        Scopes(self.0.iter().filter(|s| keep(s)).cloned().collect())
    }

    /// The access permissions of the resource scopes.
    pub fn permissions(&self) -> Vec<Permission> {
        self.resources().map(ResourceScope::permission).collect()
    }

    pub fn has_level(&self, level: Level) -> bool {
        self.resources().any(|r| r.level == level)
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, s) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Action;

    fn res(s: &str) -> ResourceScope {
        match s.parse::<Scope>().unwrap() {
            Scope::Resource(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn v1_scopes_map_to_v2_actions() {
        assert_eq!(res("patient/Observation.read").actions.to_string(), "rs");
        assert_eq!(res("user/*.write").actions.to_string(), "cud");
        assert_eq!(res("system/*.*").actions.to_string(), "cruds");
        assert!(res("user/*.write").resource_type.is_none());
    }

    #[test]
    fn v2_and_granular_scopes_parse() {
        let r = res("patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory");
        assert_eq!(r.level, Level::Patient);
        assert_eq!(r.resource_type.as_deref(), Some("Observation"));
        assert!(r.actions.contains(Action::Search) && !r.actions.contains(Action::Create));
        assert!(r.query.unwrap().starts_with("category="));
        assert_eq!(res("user/Patient.cruds").actions, Actions::ALL);
        for bad in [
            "patient/Observation.sr",
            "patient/Observation",
            "nurse/Observation.rs",
            "patient/observation.rs",
            "patient/*.rs?code=1",
            "patient/Observation.rs?",
        ] {
            assert!(bad.parse::<Scope>().is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_scopes_are_left_out_not_fatal() {
        let (s, unknown) = Scopes::parse_lenient("openid fhirUser launch/patient patient/*.rs foo");
        assert_eq!(s.0.len(), 4);
        assert_eq!(unknown.len(), 1);
        assert_eq!(s.to_string(), "openid fhirUser launch/patient patient/*.rs");
    }

    #[test]
    fn a_registration_bounds_what_a_client_gets() {
        let most = Scopes::parse_strict("system/*.rs launch openid").unwrap();
        let asked = Scopes::parse_strict(
            "system/Patient.rs system/Patient.cruds system/AuditEvent.rs launch user/*.rs openid",
        )
        .unwrap();
        let got = asked.within(Some(&most));
        assert_eq!(got.to_string(), "system/Patient.rs launch openid");
        let audit = Scopes::parse_strict("system/AuditEvent.rs").unwrap();
        assert_eq!(
            audit.within(Some(&audit)).to_string(),
            "system/AuditEvent.rs"
        );
    }

    #[test]
    fn roles_bound_what_a_user_approves() {
        let s = |t: &str| t.parse::<Scope>().unwrap();
        assert!(Role::Patient.allows(&s("patient/*.rs")));
        assert!(!Role::Patient.allows(&s("user/*.rs")));
        assert!(!Role::Patient.allows(&s("patient/AuditEvent.rs")));
        assert!(Role::Clinician.allows(&s("user/*.cruds")));
        assert!(!Role::Clinician.allows(&s("user/AuditEvent.rs")));
        assert!(!Role::Clinician.allows(&s("system/*.rs")));
        assert!(Role::Compliance.allows(&s("user/AuditEvent.rs")));
        assert!(!Role::Compliance.allows(&s("user/Observation.rs")));
        assert!(Role::Admin.allows(&s("user/AuditEvent.rs")));
        assert!(Role::Admin.allows(&s("openid")));
    }
}
