//! Building the AuditEvent resource of one interaction.

use base64::Engine as _;
use serde_json::Value;

use crate::access::AccessContext;
use crate::store::AuditRow;

const BALP: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";

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

    /// AuditEvent.type (DICOM): 110114 User Authentication for logins; the token,
    /// consent and throttling events take 110113 Security Alert, the closest code
    /// DICOM has (the audit issue refines their BALP shape).
    fn dicom_type(self) -> (&'static str, &'static str) {
        match self {
            AuthEvent::LoginSucceeded | AuthEvent::LoginFailed | AuthEvent::AccountLocked => {
                ("110114", "User Authentication")
            }
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
            _ => AuditAction::Execute,
        }
    }

    fn is_query(&self) -> bool {
        matches!(
            self,
            Interaction::HistoryInstance
                | Interaction::HistoryType
                | Interaction::HistorySystem
                | Interaction::SearchType
                | Interaction::SearchSystem
        )
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
    /// The query (path and query string) of searches and history.
    pub query: Option<String>,
    pub outcome: Outcome,
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
            query: None,
            outcome: Outcome::Success,
            ctx: ctx.clone(),
        }
    }

    /// The BALP profile this event conforms to; BALP fixes outcome to success.
    fn profile(&self) -> Option<String> {
        if self.outcome != Outcome::Success {
            return None;
        }
        let patient = if self.patients.is_empty() {
            ""
        } else {
            "Patient"
        };
        let name = match self.interaction.action() {
            AuditAction::Create => "Create",
            AuditAction::Read => "Read",
            AuditAction::Update => "Update",
            AuditAction::Delete => "Delete",
            AuditAction::Execute if self.interaction.is_query() => "Query",
            AuditAction::Execute => return None,
        };
        Some(format!("{BALP}{patient}{name}"))
    }

    /// The AuditEvent resource, with a new id and `recorded` = `recorded_micros`.
    pub fn to_row(&self, server_base: &str, observer: &str, recorded_micros: i64) -> AuditRow {
        let id = uuid::Uuid::new_v4().to_string();
        let body = self.to_json(&id, server_base, observer, recorded_micros);
        AuditRow {
            id,
            recorded: recorded_micros,
            action: self.interaction.action().code(),
            outcome: self.outcome.code(),
            body,
        }
    }

    /// The AuditEvent as a `serde_json` value (for callers that inspect it).
    pub fn to_resource(
        &self,
        id: &str,
        server_base: &str,
        observer: &str,
        recorded_micros: i64,
    ) -> Value {
        serde_json::from_slice(&self.to_json(id, server_base, observer, recorded_micros))
            .unwrap_or(Value::Null)
    }

    /// The AuditEvent as compact JSON, written straight into a buffer: one is built
    /// for every request, so no intermediate `Value` tree (measured: benches/load).
    pub fn to_json(
        &self,
        id: &str,
        server_base: &str,
        observer: &str,
        recorded_micros: i64,
    ) -> Vec<u8> {
        let recorded = crate::fhir::instant(recorded_micros);
        let mut w = JsonOut(Vec::with_capacity(1536));
        w.raw(r#"{"resourceType":"AuditEvent","id":"#);
        w.string(id);
        w.raw(r#","meta":{"versionId":"1","lastUpdated":"#);
        w.string(&recorded);
        if let Some(p) = self.profile() {
            w.raw(r#","profile":["#);
            w.string(&p);
            w.raw("]");
        }
        if let Interaction::Auth(event) = &self.interaction {
            let (code, display) = event.dicom_type();
            w.raw(r#"},"type":{"system":"#);
            w.string(DCM);
            w.raw(r#","code":"#);
            w.string(code);
            w.raw(r#","display":"#);
            w.string(display);
            w.raw(r#"},"subtype":[{"system":"urn:fhirgate:auth-event","code":"#);
            w.string(event.code());
            w.raw("}");
        } else {
            w.raw(r#"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest","display":"Restful Operation"},"subtype":[{"system":"http://hl7.org/fhir/restful-interaction","code":"#);
            w.string(self.interaction.code());
            w.raw(r#","display":"#);
            w.string(self.interaction.code());
            w.raw("}");
        }
        if let Interaction::Operation(name) = &self.interaction {
            w.raw(r#",{"system":"urn:fhirgate:operation","code":"#);
            w.string(name);
            w.raw("}");
        }
        w.raw(r#"],"action":"#);
        w.string(self.interaction.action().code());
        w.raw(r#","recorded":"#);
        w.string(&recorded);
        w.raw(r#","outcome":"#);
        w.string(self.outcome.code());
        match &self.outcome {
            Outcome::ClientError(d) | Outcome::ServerError(d) if !d.is_empty() => {
                w.raw(r#","outcomeDesc":"#);
                w.string(d);
            }
            _ => {}
        }
        if let Some(p) = &self.ctx.purpose_of_use {
            w.raw(r#","purposeOfEvent":[{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActReason","code":"#);
            w.string(&p.code);
            w.raw("}]");
            if let Some(reason) = &p.reason {
                w.raw(r#","text":"#);
                w.string(reason);
            }
            w.raw("}]");
        }
        // Data flows to the client on reads: the client is the destination
        // (DICOM 110152) and the server the source (110153); the other way round
        // for writes and queries (BALP 1.1.4, Read vs. Create/Query profiles).
        let (client_role, server_role) = if self.interaction.action() == AuditAction::Read {
            (
                ("110152", "Destination Role ID"),
                ("110153", "Source Role ID"),
            )
        } else {
            (
                ("110153", "Source Role ID"),
                ("110152", "Destination Role ID"),
            )
        };
        let client_addr = self.ctx.remote_addr.as_deref().unwrap_or("unknown");
        w.raw(r#","agent":[{"type":{"coding":[{"system":"#);
        w.string(DCM);
        w.raw(r#","code":"#);
        w.string(client_role.0);
        w.raw(r#","display":"#);
        w.string(client_role.1);
        w.raw(r#"}]},"who":"#);
        match &self.ctx.client_id {
            Some(c) => {
                w.raw(r#"{"identifier":{"system":"urn:fhirgate:client","value":"#);
                w.string(c);
                w.raw("}}");
            }
            None => {
                w.raw(r#"{"display":"#);
                w.string(client_addr);
                w.raw("}");
            }
        }
        w.raw(if self.ctx.user.is_none() {
            r#","requestor":true"#
        } else {
            r#","requestor":false"#
        });
        w.raw(r#","network":{"address":"#);
        w.string(client_addr);
        w.raw(r#","type":"2"}},{"type":{"coding":[{"system":"#);
        w.string(DCM);
        w.raw(r#","code":"#);
        w.string(server_role.0);
        w.raw(r#","display":"#);
        w.string(server_role.1);
        w.raw(r#"}]},"who":{"display":"#);
        w.string(observer);
        w.raw(r#"},"requestor":false,"network":{"address":"#);
        w.string(server_base);
        w.raw(r#","type":"5"}}"#);
        if let Some(user) = &self.ctx.user {
            w.raw(r#",{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ParticipationType","code":"IRCP","display":"information recipient"}]},"who":{"reference":"#);
            w.string(user);
            w.raw(r#"},"requestor":true}"#);
        }
        w.raw(r#"],"source":{"site":"#);
        w.string(server_base);
        w.raw(r#","observer":{"display":"#);
        w.string(observer);
        w.raw(r#"},"type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type","code":"4","display":"Application Server"}]},"entity":[{"type":{"system":"https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType","code":"XrequestId"},"what":{"identifier":{"value":"#);
        w.string(&self.ctx.request_id);
        w.raw("}}}");
        if let (Some(t), Some(id)) = (&self.resource_type, &self.id) {
            let reference = match self.version {
                Some(v) => format!("{t}/{id}/_history/{v}"),
                None => format!("{t}/{id}"),
            };
            w.raw(r#",{"what":{"reference":"#);
            w.string(&reference);
            w.raw(r#"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"4","display":"Domain Resource"}}"#);
        }
        if let Some(q) = &self.query {
            w.raw(r#",{"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"24","display":"Query"},"query":"#);
            w.string(&base64::engine::general_purpose::STANDARD.encode(q.as_bytes()));
            w.raw("}");
        }
        for p in &self.patients {
            w.raw(r#",{"what":{"reference":"#);
            w.string(p);
            w.raw(r#"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1","display":"Person"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1","display":"Patient"}}"#);
        }
        w.raw("]}");
        w.0
    }
}

/// A JSON text under construction: constant pieces as they are, strings escaped.
struct JsonOut(Vec<u8>);

impl JsonOut {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    fn string(&mut self, s: &str) {
        // Writing a &str into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, s);
    }
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
        assert!(v["meta"].get("profile").is_none());
        assert_eq!(v["entity"][2]["role"]["code"], "24");
    }
}
