//! The shape of every AuditEvent fhirgate makes, after IHE Basic Audit Log
//! Patterns 1.1.4 (package `ihe.iti.balp`), and the profiles each claims in
//! `meta.profile`:
//! - RESTful interactions: BALP Read, Query, Create, Update, Delete, or their
//!   Patient variant when exactly one patient is named; searches also make one
//!   PatientQuery per patient on the page (DESIGN section 12). Interactions BALP
//!   has no pattern for (history, batch, transaction, operations, capabilities)
//!   claim fhirgate's `AuditEvent.Rest`.
//! - Under a token, also BALP OAUTHaccessTokenUse.Comprehensive: the client agent
//!   (DICOM 110150, `who.identifier` = `client_id`), the user agent (`who.reference`
//!   = fhirUser, `who.identifier` = `sub`, `policy` = `urn:ietf:params:oauth:jti:<jti>`,
//!   `purposeOfUse` when the token has one).
//! - Token requests: BALP ITI-71 (IHE.IUA.71); authorization decisions:
//!   fhirgate's `AuditEvent.AuthZ` (AuthZconsent shaped); sign-ins and the other
//!   events of the authorization server: fhirgate's `AuditEvent.Authentication`.
//! - BALP fixes `outcome` to success: a failure or denial keeps the BALP shape and
//!   claims fhirgate's variant (`AuditEvent.Failure.*`).
//!
//! fhirgate's profiles are in the package `profiles/` (generated from BALP by
//! `tools/generate_profiles.py`); the tests validate every kind of event against
//! what it claims. The JSON is written straight into a buffer: one event is
//! built for every request, so no intermediate `Value` tree (benches/load).
//!
//! Auth events carry their fhirgate event code in `meta.tag` (system
//! `urn:fhirgate:auth-event`): ITI-71 and AuthZconsent leave `subtype` no room.

use base64::Engine as _;

use super::event::{Event, Out};
use super::{AuditAction, AuditRecord, AuthEvent, Interaction, Outcome};

const BALP_SD: &str = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/";
const OWN_SD: &str = "https://fhirgate.org/fhir/StructureDefinition/";
const DCM: &str = "http://dicom.nema.org/resources/ontology/DCM";
const PARTICIPATION: &str = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType";
const USER_AGENT_TYPES: &str = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes";
const AUTH_EVENT: &str = "urn:fhirgate:auth-event";
/// The `policy` of a user agent that acted under an OAuth token (BALP
/// OAUTHaccessTokenUse: the token's `jti`).
pub const JTI_POLICY_PREFIX: &str = "urn:ietf:params:oauth:jti:";

/// The AuditEvent `event` of the record, as JSON.
pub(super) fn write(r: &AuditRecord, event: Event, id: &str, out: &Out) -> Vec<u8> {
    let mut w = JsonOut(Vec::with_capacity(2048));
    match (&r.interaction, event) {
        (_, Event::Decision) => decision(&mut w, r, id, out, None),
        (Interaction::Auth(e @ (AuthEvent::ConsentGiven | AuthEvent::ConsentRefused)), _) => {
            decision(&mut w, r, id, out, Some(*e))
        }
        (Interaction::Auth(AuthEvent::TokenIssued | AuthEvent::TokenRefused), _) => {
            token_request(&mut w, r, id, out)
        }
        (Interaction::Auth(e), _) => authentication(&mut w, r, *e, id, out),
        (_, Event::PatientQuery(p)) => rest(&mut w, r, Some(p), id, out),
        (_, Event::Main) => rest(&mut w, r, None, id, out),
    }
    w.0
}

/// The BALP pattern of a RESTful interaction, if BALP has one.
fn balp_pattern(i: &Interaction) -> Option<&'static str> {
    match i {
        Interaction::Read | Interaction::Vread => Some("Read"),
        Interaction::Create => Some("Create"),
        Interaction::Update | Interaction::Patch => Some("Update"),
        Interaction::Delete => Some("Delete"),
        _ if i.is_search() => Some("Query"),
        _ => None,
    }
}

/// A token was used, and it names what OAUTHaccessTokenUse.Comprehensive asks for.
fn token_use(r: &AuditRecord) -> bool {
    r.ctx.token_id.is_some() && r.ctx.client_id.is_some() && r.ctx.subject.is_some()
}

fn rest(w: &mut JsonOut, r: &AuditRecord, page_patient: Option<&str>, id: &str, out: &Out) {
    let action = r.interaction.action();
    let pattern = balp_pattern(&r.interaction);
    let named_patients = match page_patient {
        Some(_) => 1,
        None => r.patients.len(),
    };
    // The Query event of a search names no patient when it succeeds (its page's
    // patients have PatientQuery events); a failed one may name the compartment's.
    let patient_variant =
        named_patients == 1 && (pattern != Some("Query") || page_patient.is_some());
    let success = r.outcome == Outcome::Success;
    let recorded = crate::fhir::instant(out.recorded_micros);
    header(w, id, &recorded);
    match pattern {
        Some(name) => {
            w.raw("\"");
            w.raw(if success { BALP_SD } else { OWN_SD });
            w.raw(if success {
                "IHE.BasicAudit."
            } else {
                "AuditEvent.Failure."
            });
            if patient_variant {
                w.raw("Patient");
            }
            w.raw(name);
            w.raw("\"");
        }
        None => {
            w.raw("\"");
            w.raw(OWN_SD);
            w.raw("AuditEvent.Rest\"");
        }
    }
    if token_use(r) {
        w.raw(",\"");
        w.raw(BALP_SD);
        w.raw("IHE.BasicAudit.OAUTHaccessTokenUse.Comprehensive\"");
    }
    w.raw(r#"]},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-event-type","code":"rest","display":"Restful Operation"},"subtype":[{"system":"http://hl7.org/fhir/restful-interaction","code":"#);
    w.string(r.interaction.code());
    w.raw(r#","display":"#);
    w.string(r.interaction.code());
    w.raw("}");
    if let Interaction::Operation(name) = &r.interaction {
        w.raw(r#",{"system":"urn:fhirgate:operation","code":"#);
        w.string(name);
        w.raw("}");
    }
    w.raw("]");
    when_and_outcome(w, r, action, &recorded);
    // BALP 1.1.4: data flows to the client on a read, so the client is the
    // destination (DICOM 110152) and the server the source (110153); the other way
    // round for Create, Update and Query; Delete names the client application
    // (110150) and the server as custodian. Interactions without a BALP pattern
    // (operations, history; fhirgate's AuditEvent.Rest) name the client as the
    // source and the server as the destination, whatever their action.
    let role_action = match pattern {
        Some(_) => action,
        None => AuditAction::Execute,
    };
    let (client_role, server_role): ((&str, &str, &str), (&str, &str, &str)) = match role_action {
        AuditAction::Read => (
            (DCM, "110152", "Destination Role ID"),
            (DCM, "110153", "Source Role ID"),
        ),
        AuditAction::Delete => (
            (DCM, "110150", "Application"),
            (
                "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                "custodian",
                "Custodian",
            ),
        ),
        _ => (
            (DCM, "110153", "Source Role ID"),
            (DCM, "110152", "Destination Role ID"),
        ),
    };
    w.raw(r#","agent":["#);
    client_agent(w, r, client_role);
    w.raw(",");
    server_agent(w, out, server_role);
    if has_user(r) {
        let role = match role_action {
            AuditAction::Create | AuditAction::Update => {
                (PARTICIPATION, "AUT", "author (originator)")
            }
            AuditAction::Delete => (PARTICIPATION, "INF", "informant"),
            _ => (PARTICIPATION, "IRCP", "information recipient"),
        };
        w.raw(",");
        user_agent(w, r, role);
    }
    w.raw("]");
    source(w, out);
    w.raw(r#","entity":["#);
    transaction_entity(w, r);
    if let (Some(t), Some(id)) = (&r.resource_type, &r.id) {
        w.raw(r#",{"what":{"reference":"#);
        match r.version {
            Some(v) => w.string(&format!("{t}/{id}/_history/{v}")),
            None => w.string(&format!("{t}/{id}")),
        }
        w.raw(r#"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"4","display":"Domain Resource"}}"#);
    }
    if let Some(q) = &r.query {
        w.raw(r#",{"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"24","display":"Query"},"query":"#);
        w.string(&base64::engine::general_purpose::STANDARD.encode(q.as_bytes()));
        w.raw("}");
    }
    match page_patient {
        Some(p) => patient_entity(w, p),
        None => {
            for p in &r.patients {
                patient_entity(w, p);
            }
        }
    }
    w.raw("]}");
}

/// A token request: BALP ITI-71 when a token was issued, fhirgate's failure
/// variant when refused.
fn token_request(w: &mut JsonOut, r: &AuditRecord, id: &str, out: &Out) {
    let recorded = crate::fhir::instant(out.recorded_micros);
    header(w, id, &recorded);
    w.raw("\"");
    if r.outcome == Outcome::Success {
        w.raw(BALP_SD);
        w.raw("IHE.IUA.71");
    } else {
        w.raw(OWN_SD);
        w.raw("AuditEvent.Failure.TokenRequest");
    }
    w.raw("\"]");
    tag(w, &r.interaction);
    w.raw(r#"},"type":{"system":"#);
    w.string(DCM);
    w.raw(r#","code":"110114","display":"User Authentication"},"subtype":[{"system":"urn:ihe:event-type-code","code":"ITI-71","display":"Get Access Token"}]"#);
    when_and_outcome(w, r, AuditAction::Execute, &recorded);
    auth_agents(w, r, out);
    source(w, out);
    // ITI-71 allows this one entity: what was asked (never a secret), with the
    // request id in its detail (there is no room for the X-Request-Id entity).
    let asked = r.query.as_deref().unwrap_or(r.interaction.code());
    w.raw(r#","entity":[{"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"2","display":"System Object"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"24","display":"Query"},"query":"#);
    w.string(&base64::engine::general_purpose::STANDARD.encode(asked.as_bytes()));
    w.raw(r#","detail":[{"type":"X-Request-Id","valueString":"#);
    w.string(&r.ctx.request_id);
    w.raw("}]}]}");
}

/// An authorization decision (fhirgate's AuthZconsent-shaped profile): consent
/// given or refused, the permit of a token issued, the deny of a refused
/// interaction.
fn decision(w: &mut JsonOut, r: &AuditRecord, id: &str, out: &Out, consent: Option<AuthEvent>) {
    let recorded = crate::fhir::instant(out.recorded_micros);
    header(w, id, &recorded);
    w.raw("\"");
    w.raw(OWN_SD);
    w.raw("AuditEvent.AuthZ\"]");
    let code = match consent {
        Some(e) => e.code(),
        None if r.outcome == Outcome::Success => "authz-permit",
        None => "authz-deny",
    };
    w.raw(r#","tag":[{"system":"#);
    w.string(AUTH_EVENT);
    w.raw(r#","code":"#);
    w.string(code);
    w.raw(r#"}]},"type":{"system":"#);
    w.string(DCM);
    w.raw(r#","code":"110113","display":"Security Alert"},"subtype":[{"system":"https://profiles.ihe.net/ITI/BALP/CodeSystem/AuthZsubType","code":"#);
    w.raw(if consent.is_some() {
        r#""AuthZ-Consent","display":"Authorization Decision using Roles and Consent"}]"#
    } else {
        r#""AuthZ-Role","display":"Authorization Decision using only Roles"}]"#
    });
    when_and_outcome(w, r, AuditAction::Execute, &recorded);
    w.raw(r#","agent":["#);
    client_agent(w, r, (DCM, "110150", "Application"));
    if has_user(r) {
        w.raw(",");
        user_agent(w, r, (PARTICIPATION, "IRCP", "information recipient"));
    }
    w.raw(r#",{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/extra-security-role-type","code":"authserver","display":"authorization server"}]},"who":"#);
    observer(w, out);
    w.raw(r#","requestor":false}]"#);
    source(w, out);
    w.raw(r#","entity":["#);
    transaction_entity(w, r);
    if let [p] = r.patients.as_slice() {
        patient_entity(w, p);
    }
    if let Some(jti) = &r.ctx.token_id {
        w.raw(r#",{"type":{"system":"#);
        w.string(USER_AGENT_TYPES);
        w.raw(r#","code":"UserOauthAgent","display":"User OAuth Agent participant"},"what":{"identifier":{"value":"#);
        w.string(jti);
        w.raw("}}}");
    }
    w.raw("]}");
}

/// Sign-ins, lockouts, revocation, introspection, throttling: fhirgate's
/// Authentication profile (ITI-71 shaped, fhirgate's code in `subtype`).
fn authentication(w: &mut JsonOut, r: &AuditRecord, e: AuthEvent, id: &str, out: &Out) {
    let recorded = crate::fhir::instant(out.recorded_micros);
    header(w, id, &recorded);
    w.raw("\"");
    w.raw(OWN_SD);
    w.raw("AuditEvent.Authentication\"]");
    tag(w, &r.interaction);
    let (code, display) = e.dicom_type();
    w.raw(r#"},"type":{"system":"#);
    w.string(DCM);
    w.raw(r#","code":"#);
    w.string(code);
    w.raw(r#","display":"#);
    w.string(display);
    w.raw(r#"},"subtype":[{"system":"#);
    w.string(AUTH_EVENT);
    w.raw(r#","code":"#);
    w.string(e.code());
    w.raw("}]");
    when_and_outcome(w, r, AuditAction::Execute, &recorded);
    auth_agents(w, r, out);
    source(w, out);
    w.raw(r#","entity":["#);
    transaction_entity(w, r);
    for p in &r.patients {
        patient_entity(w, p);
    }
    w.raw("]}");
}

/// `,"agent":[...]` of a token request or an authentication: the client, the
/// authorization server, and the user when there is one.
fn auth_agents(w: &mut JsonOut, r: &AuditRecord, out: &Out) {
    w.raw(r#","agent":["#);
    client_agent(w, r, (DCM, "110150", "Application"));
    w.raw(",");
    auth_server_agent(w, out);
    if r.ctx.user.is_some() {
        w.raw(",");
        user_agent(w, r, (PARTICIPATION, "IRCP", "information recipient"));
    }
    w.raw("]");
}

/// `{"resourceType":...,"meta":{...,"profile":[` (the caller writes the profiles).
fn header(w: &mut JsonOut, id: &str, recorded: &str) {
    w.raw(r#"{"resourceType":"AuditEvent","id":"#);
    w.string(id);
    w.raw(r#","meta":{"versionId":"1","lastUpdated":"#);
    w.string(recorded);
    w.raw(r#","profile":["#);
}

/// The fhirgate event code of an auth event in `meta.tag`.
fn tag(w: &mut JsonOut, i: &Interaction) {
    w.raw(r#","tag":[{"system":"#);
    w.string(AUTH_EVENT);
    w.raw(r#","code":"#);
    w.string(i.code());
    w.raw("}]");
}

fn when_and_outcome(w: &mut JsonOut, r: &AuditRecord, action: AuditAction, recorded: &str) {
    w.raw(r#","action":"#);
    w.string(action.code());
    w.raw(r#","recorded":"#);
    w.string(recorded);
    w.raw(r#","outcome":"#);
    w.string(r.outcome.code());
    match &r.outcome {
        Outcome::ClientError(d) | Outcome::ServerError(d) if !d.is_empty() => {
            w.raw(r#","outcomeDesc":"#);
            w.string(d);
        }
        _ => {}
    }
    if let Some(p) = &r.ctx.purpose_of_use {
        w.raw(r#","purposeOfEvent":["#);
        purpose(w, p);
        w.raw("]");
    }
}

fn purpose(w: &mut JsonOut, p: &crate::access::PurposeOfUse) {
    w.raw(r#"{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActReason","code":"#);
    w.string(&p.code);
    w.raw("}]");
    if let Some(reason) = &p.reason {
        w.raw(r#","text":"#);
        w.string(reason);
    }
    w.raw("}");
}

/// A user agent is written when a user is known or a token was used (its `jti`
/// lives in the user agent's `policy`; a backend service is its own user).
fn has_user(r: &AuditRecord) -> bool {
    r.ctx.user.is_some() || r.ctx.token_id.is_some()
}

/// The client application: `who.identifier` = `client_id` (system
/// `urn:fhirgate:client`) when known, else its address; under a token also typed
/// 110150 Application (OAUTHaccessTokenUse's client).
fn client_agent(w: &mut JsonOut, r: &AuditRecord, role: (&str, &str, &str)) {
    let addr = r.ctx.remote_addr.as_deref().unwrap_or("unknown");
    w.raw(r#"{"type":{"coding":["#);
    coding(w, role);
    if role.1 != "110150" && token_use(r) {
        w.raw(",");
        coding(w, (DCM, "110150", "Application"));
    }
    w.raw(r#"]},"who":"#);
    match &r.ctx.client_id {
        Some(c) => {
            w.raw(r#"{"identifier":{"system":"urn:fhirgate:client","value":"#);
            w.string(c);
            w.raw("}}");
        }
        None => {
            w.raw(r#"{"display":"#);
            w.string(addr);
            w.raw("}");
        }
    }
    w.raw(if has_user(r) {
        r#","requestor":false"#
    } else {
        r#","requestor":true"#
    });
    w.raw(r#","network":{"address":"#);
    w.string(addr);
    w.raw(r#","type":"2"}}"#);
}

/// The user: `who.reference` = fhirUser, `who.identifier` = the token's `sub`,
/// `policy` = the token's `jti`, `purposeOfUse` of the token.
fn user_agent(w: &mut JsonOut, r: &AuditRecord, role: (&str, &str, &str)) {
    w.raw(r#"{"type":{"coding":["#);
    coding(w, role);
    w.raw(r#"]},"who":{"#);
    match (&r.ctx.user, &r.ctx.subject) {
        (Some(u), Some(s)) => {
            w.raw(r#""reference":"#);
            w.string(u);
            w.raw(r#","identifier":{"value":"#);
            w.string(s);
            w.raw("}");
        }
        (Some(u), None) => {
            w.raw(r#""reference":"#);
            w.string(u);
        }
        (None, Some(s)) => {
            w.raw(r#""identifier":{"value":"#);
            w.string(s);
            w.raw("}");
        }
        (None, None) => {
            w.raw(r#""display":"#);
            w.string(r.ctx.client_id.as_deref().unwrap_or("unknown"));
        }
    }
    w.raw("}");
    if let Some(s) = &r.ctx.subject {
        w.raw(r#","name":"#);
        w.string(s);
    }
    w.raw(r#","requestor":true"#);
    if let Some(jti) = &r.ctx.token_id {
        w.raw(r#","policy":["#);
        w.string(&format!("{JTI_POLICY_PREFIX}{jti}"));
        w.raw("]");
    }
    if let Some(p) = &r.ctx.purpose_of_use {
        w.raw(r#","purposeOfUse":["#);
        purpose(w, p);
        w.raw("]");
    }
    w.raw("}");
}

fn server_agent(w: &mut JsonOut, out: &Out, role: (&str, &str, &str)) {
    w.raw(r#"{"type":{"coding":["#);
    coding(w, role);
    w.raw(r#"]},"who":"#);
    observer(w, out);
    w.raw(r#","requestor":false,"network":{"address":"#);
    w.string(out.server_base);
    w.raw(r#","type":"5"}}"#);
}

fn auth_server_agent(w: &mut JsonOut, out: &Out) {
    w.raw(r#"{"type":{"coding":[{"system":"#);
    w.string(USER_AGENT_TYPES);
    w.raw(r#","code":"AuthzOauthService","display":"OAuth Authorization Server"}]},"who":"#);
    observer(w, out);
    w.raw(r#","requestor":false,"network":{"address":"#);
    w.string(out.server_base);
    w.raw(r#","type":"5"}}"#);
}

/// The server as a `who` (the same value as `source.observer`: AuthZconsent's
/// authorizer must equal it).
fn observer(w: &mut JsonOut, out: &Out) {
    w.raw(r#"{"identifier":{"value":"#);
    w.string(out.observer);
    w.raw(r#"},"display":"#);
    w.string(out.observer);
    w.raw("}");
}

fn source(w: &mut JsonOut, out: &Out) {
    w.raw(r#","source":{"site":"#);
    w.string(out.server_base);
    w.raw(r#","observer":"#);
    observer(w, out);
    w.raw(r#","type":[{"system":"http://terminology.hl7.org/CodeSystem/security-source-type","code":"4","display":"Application Server"}]}"#);
}

fn transaction_entity(w: &mut JsonOut, r: &AuditRecord) {
    w.raw(r#"{"type":{"system":"https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType","code":"XrequestId"},"what":{"identifier":{"value":"#);
    w.string(&r.ctx.request_id);
    w.raw("}}}");
}

fn patient_entity(w: &mut JsonOut, p: &str) {
    w.raw(r#",{"what":{"reference":"#);
    w.string(p);
    w.raw(r#"},"type":{"system":"http://terminology.hl7.org/CodeSystem/audit-entity-type","code":"1","display":"Person"},"role":{"system":"http://terminology.hl7.org/CodeSystem/object-role","code":"1","display":"Patient"}}"#);
}

fn coding(w: &mut JsonOut, (system, code, display): (&str, &str, &str)) {
    w.raw(r#"{"system":"#);
    w.string(system);
    w.raw(r#","code":"#);
    w.string(code);
    w.raw(r#","display":"#);
    w.string(display);
    w.raw("}");
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
