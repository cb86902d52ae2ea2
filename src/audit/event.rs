//! Building the AuditEvent resource of one interaction.

use base64::Engine as _;
use serde_json::{json, Map, Value};

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
    Operation(String),
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
            Interaction::Operation(_) => "operation",
        }
    }

    /// AuditEvent.action: C, R, U, D or E (execute: queries and operations).
    pub fn action(&self) -> &'static str {
        match self {
            Interaction::Create => "C",
            Interaction::Read | Interaction::Vread => "R",
            Interaction::Update | Interaction::Patch => "U",
            Interaction::Delete => "D",
            _ => "E",
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
            "C" => "Create",
            "R" => "Read",
            "U" => "Update",
            "D" => "Delete",
            _ if self.interaction.is_query() => "Query",
            _ => return None,
        };
        Some(format!("{BALP}{patient}{name}"))
    }

    /// The AuditEvent resource, with a new id and `recorded` = `recorded_micros`.
    pub fn to_row(&self, server_base: &str, observer: &str, recorded_micros: i64) -> AuditRow {
        let id = uuid::Uuid::new_v4().to_string();
        let body = self.to_resource(&id, server_base, observer, recorded_micros);
        AuditRow {
            id,
            recorded: recorded_micros,
            action: self.interaction.action().to_string(),
            outcome: self.outcome.code().to_string(),
            body: serde_json::to_vec(&body).unwrap_or_default(),
        }
    }

    pub fn to_resource(
        &self,
        id: &str,
        server_base: &str,
        observer: &str,
        recorded_micros: i64,
    ) -> Value {
        let recorded = crate::fhir::instant(recorded_micros);
        // Data flows to the client on reads: the client is the destination
        // (DICOM 110152) and the server the source (110153); the other way round
        // for writes and queries (BALP 1.1.4, Read vs. Create/Query profiles).
        let (client_role, server_role) = if self.interaction.action() == "R" {
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
        let client_addr = self
            .ctx
            .remote_addr
            .clone()
            .unwrap_or_else(|| "unknown".into());
        let client_who = match &self.ctx.client_id {
            Some(c) => json!({"identifier": {"value": c}}),
            None => json!({"display": client_addr}),
        };
        let mut agents = vec![
            json!({
                "type": {"coding": [{"system": DCM, "code": client_role.0, "display": client_role.1}]},
                "who": client_who,
                "requestor": self.ctx.user.is_none(),
                "network": {"address": client_addr, "type": "2"}
            }),
            json!({
                "type": {"coding": [{"system": DCM, "code": server_role.0, "display": server_role.1}]},
                "who": {"display": observer},
                "requestor": false,
                "network": {"address": server_base, "type": "5"}
            }),
        ];
        if let Some(user) = &self.ctx.user {
            agents.push(json!({
                "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP", "display": "information recipient"}]},
                "who": {"reference": user},
                "requestor": true
            }));
        }
        let mut entities = vec![json!({
            "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"},
            "what": {"identifier": {"value": self.ctx.request_id}}
        })];
        if let (Some(t), Some(id)) = (&self.resource_type, &self.id) {
            let reference = match self.version {
                Some(v) => format!("{t}/{id}/_history/{v}"),
                None => format!("{t}/{id}"),
            };
            entities.push(json!({
                "what": {"reference": reference},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4", "display": "Domain Resource"}
            }));
        }
        if let Some(q) = &self.query {
            entities.push(json!({
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2", "display": "System Object"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "24", "display": "Query"},
                "query": base64::engine::general_purpose::STANDARD.encode(q.as_bytes())
            }));
        }
        for p in &self.patients {
            entities.push(json!({
                "what": {"reference": p},
                "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"}
            }));
        }
        let mut ev = Map::new();
        ev.insert("resourceType".into(), json!("AuditEvent"));
        ev.insert("id".into(), json!(id));
        let mut meta = Map::new();
        meta.insert("versionId".into(), json!("1"));
        meta.insert("lastUpdated".into(), json!(recorded));
        if let Some(p) = self.profile() {
            meta.insert("profile".into(), json!([p]));
        }
        ev.insert("meta".into(), Value::Object(meta));
        ev.insert(
            "type".into(),
            json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest", "display": "Restful Operation"}),
        );
        let mut subtype = vec![
            json!({"system": "http://hl7.org/fhir/restful-interaction", "code": self.interaction.code(), "display": self.interaction.code()}),
        ];
        if let Interaction::Operation(name) = &self.interaction {
            subtype.push(json!({"system": "urn:fhirgate:operation", "code": name}));
        }
        ev.insert("subtype".into(), Value::Array(subtype));
        ev.insert("action".into(), json!(self.interaction.action()));
        ev.insert("recorded".into(), json!(recorded));
        ev.insert("outcome".into(), json!(self.outcome.code()));
        match &self.outcome {
            Outcome::ClientError(d) | Outcome::ServerError(d) if !d.is_empty() => {
                ev.insert("outcomeDesc".into(), json!(d));
            }
            _ => {}
        }
        ev.insert("agent".into(), Value::Array(agents));
        ev.insert(
            "source".into(),
            json!({
                "site": server_base,
                "observer": {"display": observer},
                "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4", "display": "Application Server"}]
            }),
        );
        ev.insert("entity".into(), Value::Array(entities));
        Value::Object(ev)
    }
}
