//! Building the AuditEvent resource of one interaction.

use serde_json::Value;

use super::balp;
use crate::access::AccessContext;
use crate::store::AuditRow;

/// The operation name of a Bulk Data file download (`$export-file`).
pub const EXPORT_FILE: &str = "export-file";
/// The operation name of `Patient/{id}/$everything` and `Encounter/{id}/$everything`.
pub const EVERYTHING: &str = "everything";
/// The operation name of cancelling a Bulk Data export (DELETE on its status URL).
pub const EXPORT_CANCEL: &str = "export-cancel";

/// Operations that answer like a search (audited as BALP queries).
fn is_query_operation(name: &str) -> bool {
    name == EXPORT_FILE || name == EVERYTHING
}

/// The FHIR RESTful interaction audited (value set `restful-interaction`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interaction {
    Read,
    Vread,
    Update,
    Patch,
    Delete,
    HistoryInstance,
    HistoryType,
    HistorySystem,
    Create,
    SearchType,
    SearchSystem,
    Capabilities,
    /// A batch or transaction Bundle as a whole (each entry has its own event).
    Transaction,
    Batch,
    Operation(String),
    /// An authentication or authorization event of the SMART authorization
    /// server or of the token check (not a RESTful interaction).
    Auth(AuthEvent),
}

/// Authentication and authorization events (DESIGN sections 6 and 12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthEvent {
    TokenIssued,
    /// A token request refused, or a presented token not accepted.
    TokenRefused,
    TokenRevoked,
    TokenIntrospected,
    LoginSucceeded,
    LoginFailed,
    AccountLocked,
    ConsentGiven,
    ConsentRefused,
    RateLimited,
}

impl AuthEvent {
    pub fn code(self) -> &'static str {
        match self {
            AuthEvent::TokenIssued => "token-issued",
            AuthEvent::TokenRefused => "token-refused",
            AuthEvent::TokenRevoked => "token-revoked",
            AuthEvent::TokenIntrospected => "token-introspected",
            AuthEvent::LoginSucceeded => "login",
            AuthEvent::LoginFailed => "login-failed",
            AuthEvent::AccountLocked => "account-locked",
            AuthEvent::ConsentGiven => "consent-given",
            AuthEvent::ConsentRefused => "consent-refused",
            AuthEvent::RateLimited => "rate-limited",
        }
    }

    /// AuditEvent.type (DICOM): 110114 User Authentication for sign-ins and token
    /// requests (ITI-71's type); consent, revocation, introspection and throttling
    /// take 110113 Security Alert (BALP AuthZconsent's type).
    pub(super) fn dicom_type(self) -> (&'static str, &'static str) {
        match self {
            AuthEvent::LoginSucceeded
            | AuthEvent::LoginFailed
            | AuthEvent::AccountLocked
            | AuthEvent::TokenIssued
            | AuthEvent::TokenRefused => ("110114", "User Authentication"),
            _ => ("110113", "Security Alert"),
        }
    }
}

impl Interaction {
    pub fn code(&self) -> &str {
        match self {
            Interaction::Read => "read",
            Interaction::Vread => "vread",
            Interaction::Update => "update",
            Interaction::Patch => "patch",
            Interaction::Delete => "delete",
            Interaction::HistoryInstance => "history-instance",
            Interaction::HistoryType => "history-type",
            Interaction::HistorySystem => "history-system",
            Interaction::Create => "create",
            Interaction::SearchType => "search-type",
            Interaction::SearchSystem => "search-system",
            Interaction::Capabilities => "capabilities",
            Interaction::Transaction => "transaction",
            Interaction::Batch => "batch",
            // A Bulk Data file is the result of a query taken in bulk.
            Interaction::Operation(name) if is_query_operation(name) => "search",
            Interaction::Operation(_) => "operation",
            Interaction::Auth(e) => e.code(),
        }
    }

    /// AuditEvent.action of the interaction.
    pub fn action(&self) -> AuditAction {
        match self {
            Interaction::Create => AuditAction::Create,
            Interaction::Read | Interaction::Vread => AuditAction::Read,
            Interaction::Update | Interaction::Patch => AuditAction::Update,
            Interaction::Delete => AuditAction::Delete,
            // Cancelling an export deletes the job and its files.
            Interaction::Operation(name) if name == EXPORT_CANCEL => AuditAction::Delete,
            _ => AuditAction::Execute,
        }
    }

    /// A search (BALP Query); history has no BALP pattern. `$everything` and a
    /// Bulk Data file download are audited as queries too (BALP has no pattern of
    /// their own): a Query event and a PatientQuery event for each patient whose
    /// data the answer holds.
    pub(super) fn is_search(&self) -> bool {
        match self {
            Interaction::SearchType | Interaction::SearchSystem => true,
            Interaction::Operation(name) => is_query_operation(name),
            _ => false,
        }
    }
}

/// AuditEvent.action (value set `audit-event-action`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    Create,
    Read,
    Update,
    Delete,
    /// Execute: queries and operations.
    Execute,
}

impl AuditAction {
    /// The code: C, R, U, D or E.
    pub fn code(self) -> &'static str {
        match self {
            AuditAction::Create => "C",
            AuditAction::Read => "R",
            AuditAction::Update => "U",
            AuditAction::Delete => "D",
            AuditAction::Execute => "E",
        }
    }
}

/// AuditEvent.outcome: 0 success, 4 minor failure (the client's), 8 serious failure (the server's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    ClientError(String),
    ServerError(String),
}

impl Outcome {
    pub fn from_status(status: u16, description: impl Into<String>) -> Outcome {
        match status {
            0..=399 => Outcome::Success,
            400..=499 => Outcome::ClientError(description.into()),
            _ => Outcome::ServerError(description.into()),
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Outcome::Success => "0",
            Outcome::ClientError(_) => "4",
            Outcome::ServerError(_) => "8",
        }
    }
}

/// Everything an AuditEvent says of one interaction.
#[derive(Debug, Clone)]
pub struct AuditRecord {
    pub interaction: Interaction,
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub version: Option<i64>,
    /// `Patient/<id>` of the patients whose records were touched.
    pub patients: Vec<String>,
    /// A search's patients whose data is on the returned page: each gets a BALP
    /// PatientQuery event of its own beside the request's Query event (DESIGN
    /// section 12), made from what the search already holds.
    pub page_patients: Vec<String>,
    /// The query (path and query string) of searches and history; for a token
    /// request, what was asked (grant type and scope, never a secret).
    pub query: Option<String>,
    pub outcome: Outcome,
    /// The interaction was refused by the access decision (403): an AuthZ deny
    /// event is recorded beside the interaction's own.
    pub denied: bool,
    pub ctx: AccessContext,
}

impl AuditRecord {
    pub fn new(interaction: Interaction, ctx: &AccessContext) -> AuditRecord {
        AuditRecord {
            interaction,
            resource_type: None,
            id: None,
            version: None,
            patients: Vec::new(),
            page_patients: Vec::new(),
            query: None,
            outcome: Outcome::Success,
            denied: false,
            ctx: ctx.clone(),
        }
    }

    /// The interaction's own AuditEvent, with a new id and `recorded` =
    /// `recorded_micros` (the write path stores exactly this one with the data).
    pub fn to_row(&self, server_base: &str, observer: &str, recorded_micros: i64) -> AuditRow {
        let out = Out {
            server_base,
            observer,
            recorded_micros,
        };
        self.row_of(Event::Main, &out)
    }

    /// Every AuditEvent of the interaction: its own, one PatientQuery per patient
    /// on a search's page, the authorization decision of a token issue or of a
    /// denial.
    pub fn to_rows(
        &self,
        server_base: &str,
        observer: &str,
        recorded_micros: i64,
    ) -> Vec<AuditRow> {
        let out = Out {
            server_base,
            observer,
            recorded_micros,
        };
        let mut rows = Vec::with_capacity(1);
        rows.push(self.row_of(Event::Main, &out));
        if self.outcome == Outcome::Success {
            for p in &self.page_patients {
                rows.push(self.row_of(Event::PatientQuery(p), &out));
            }
        }
        let decision = self.denied
            || (self.interaction == Interaction::Auth(AuthEvent::TokenIssued)
                && self.outcome == Outcome::Success);
        if decision {
            rows.push(self.row_of(Event::Decision, &out));
        }
        rows
    }

    fn row_of(&self, event: Event, out: &Out) -> AuditRow {
        let id = uuid::Uuid::new_v4().to_string();
        let body = balp::write(self, event, &id, out);
        let action = match event {
            Event::Decision => AuditAction::Execute,
            _ => self.interaction.action(),
        };
        AuditRow {
            id,
            recorded: out.recorded_micros,
            action: action.code(),
            outcome: self.outcome.code(),
            body,
        }
    }

    /// The interaction's own AuditEvent as a `serde_json` value (for callers that
    /// inspect it).
    pub fn to_resource(
        &self,
        id: &str,
        server_base: &str,
        observer: &str,
        recorded_micros: i64,
    ) -> Value {
        let out = Out {
            server_base,
            observer,
            recorded_micros,
        };
        serde_json::from_slice(&balp::write(self, Event::Main, id, &out)).unwrap_or(Value::Null)
    }
}

/// Which of an interaction's AuditEvents is written.
#[derive(Debug, Clone, Copy)]
pub(super) enum Event<'a> {
    /// The interaction's own event.
    Main,
    /// BALP PatientQuery for one patient on a search's page.
    PatientQuery(&'a str),
    /// The authorization decision (permit at token issue, deny of a refusal).
    Decision,
}

/// Where and when the events are recorded.
pub(super) struct Out<'a> {
    pub server_base: &'a str,
    pub observer: &'a str,
    pub recorded_micros: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_event_is_valid_json_with_the_balp_shape() {
        let mut ctx = AccessContext::open("req-1", Some("10.0.0.1".into()));
        ctx.user = Some("Practitioner/7".into());
        let mut r = AuditRecord::new(Interaction::Read, &ctx);
        r.resource_type = Some("Observation".into());
        r.id = Some("o1".into());
        r.version = Some(2);
        r.patients = vec!["Patient/p\"1".into()];
        let v = r.to_resource("a1", "http://x/fhir", "fhirgate", 0);
        assert_eq!(v["resourceType"], "AuditEvent");
        assert_eq!(v["action"], "R");
        assert_eq!(v["agent"][0]["type"]["coding"][0]["code"], "110152");
        assert_eq!(v["agent"][2]["who"]["reference"], "Practitioner/7");
        assert_eq!(
            v["entity"][1]["what"]["reference"],
            "Observation/o1/_history/2"
        );
        assert_eq!(v["entity"][2]["what"]["reference"], "Patient/p\"1");
        assert_eq!(
            v["meta"]["profile"][0],
            "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
        );
        r.outcome = Outcome::ClientError("no \"such\" thing".into());
        r.interaction = Interaction::SearchType;
        r.query = Some("/fhir/Patient?name=x".into());
        let v = r.to_resource("a2", "http://x/fhir", "fhirgate", 0);
        assert_eq!(v["outcomeDesc"], "no \"such\" thing");
        // A failed search keeps BALP Query's shape under fhirgate's own profile.
        assert_eq!(
            v["meta"]["profile"][0],
            "https://fhirgate.org/fhir/StructureDefinition/AuditEvent.Failure.Query"
        );
        assert_eq!(v["entity"][2]["role"]["code"], "24");
    }

    #[test]
    fn a_search_makes_one_query_event_and_one_patient_query_event_per_patient() {
        let ctx = AccessContext::open("req-2", None);
        let mut r = AuditRecord::new(Interaction::SearchType, &ctx);
        r.query = Some("/fhir/Observation?code=x".into());
        r.page_patients = vec!["Patient/a".into(), "Patient/b".into()];
        let rows = r.to_rows("http://x/fhir", "fhirgate", 0);
        assert_eq!(rows.len(), 3);
        let events: Vec<Value> = rows
            .iter()
            .map(|row| serde_json::from_slice(&row.body).unwrap())
            .collect();
        assert!(events[0]["meta"]["profile"][0]
            .as_str()
            .unwrap()
            .ends_with("IHE.BasicAudit.Query"));
        for (ev, p) in events[1..].iter().zip(["Patient/a", "Patient/b"]) {
            assert!(ev["meta"]["profile"][0]
                .as_str()
                .unwrap()
                .ends_with("IHE.BasicAudit.PatientQuery"));
            assert_eq!(ev["entity"][2]["what"]["reference"], p);
        }
        // A failed search has no page: its event alone.
        r.outcome = Outcome::ClientError("bad".into());
        assert_eq!(r.to_rows("http://x/fhir", "fhirgate", 0).len(), 1);
    }
}
