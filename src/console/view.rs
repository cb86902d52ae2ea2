//! The console's views: the AuditEvent search, an event's detail, a patient's
//! disclosure report and the chain's state. Each decides access through
//! [`super::viewer`], runs what the API runs (the search engine, the store's
//! AuditEvent read, the chainer's last verdict), and records its AuditEvent
//! before the page leaves ([`super::answer`]).

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use serde_json::Value;

use super::{answer, pages, path_and_query, viewer, Viewer};
use crate::audit::disclosures::{self, decode_query, Period, ReportRow};
use crate::audit::{AuditRecord, Interaction};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::search::run::{Cursor, CursorBinding};

/// AuditEvents on one page of the console's search.
const PAGE: usize = 25;
/// The most AuditEvents a disclosure report shows in the browser (the API and
/// the command line give them all).
const REPORT_LIMIT: usize = 2000;
/// What a page cursor is bound to (with the user): the console's search.
const CURSOR_SCOPE: &str = "/console/";

fn fields(req: &HttpRequest) -> Vec<(String, String)> {
    form_urlencoded::parse(req.query_string().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn field(fields: &[(String, String)], name: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.trim().to_string())
        .unwrap_or_default()
}

/// A view's AuditEvent: the interaction, about AuditEvents, with the page's
/// path and query.
fn record(req: &HttpRequest, v: &Viewer, interaction: Interaction) -> AuditRecord {
    let mut rec = AuditRecord::new(interaction, &v.ctx);
    rec.resource_type = Some(crate::audit::RESOURCE_TYPE.into());
    rec.query = Some(path_and_query(req));
    rec
}

/// A row of the result tables, with the event's id for its link.
#[derive(Serialize)]
struct TableRow {
    id: String,
    #[serde(flatten)]
    row: ReportRow,
}

impl TableRow {
    fn of(ev: &Value) -> TableRow {
        let row = ReportRow::of(ev);
        TableRow {
            id: row.id.clone(),
            row,
        }
    }
}

#[derive(Serialize)]
struct Choice {
    value: &'static str,
    label: &'static str,
}

const ACTIONS: [Choice; 6] = [
    Choice {
        value: "",
        label: "any",
    },
    Choice {
        value: "C",
        label: "C (create)",
    },
    Choice {
        value: "R",
        label: "R (read)",
    },
    Choice {
        value: "U",
        label: "U (update)",
    },
    Choice {
        value: "D",
        label: "D (delete)",
    },
    Choice {
        value: "E",
        label: "E (execute: search, operation)",
    },
];

const OUTCOMES: [Choice; 4] = [
    Choice {
        value: "",
        label: "any",
    },
    Choice {
        value: "0",
        label: "0 (success)",
    },
    Choice {
        value: "4",
        label: "4 (refused or failed: the client's)",
    },
    Choice {
        value: "8",
        label: "8 (failed: the server's)",
    },
];

/// The search form's inputs (DESIGN section 12: exactly these names).
#[derive(Debug, Default, Serialize)]
struct SearchForm {
    patient: String,
    user: String,
    client: String,
    from: String,
    to: String,
    action: String,
    outcome: String,
}

impl SearchForm {
    fn of(fields: &[(String, String)]) -> SearchForm {
        SearchForm {
            patient: field(fields, "patient"),
            user: field(fields, "user"),
            client: field(fields, "client"),
            from: field(fields, "from"),
            to: field(fields, "to"),
            action: field(fields, "action"),
            outcome: field(fields, "outcome"),
        }
    }

    fn pairs(&self) -> Vec<(&'static str, &str)> {
        [
            ("patient", &self.patient),
            ("user", &self.user),
            ("client", &self.client),
            ("from", &self.from),
            ("to", &self.to),
            ("action", &self.action),
            ("outcome", &self.outcome),
        ]
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k, v.as_str()))
        .collect()
    }

    /// The AuditEvent search the form stands for, newest first.
    fn search_params(&self) -> Result<Vec<(String, String)>, String> {
        let mut p: Vec<(String, String)> = Vec::new();
        if !self.patient.is_empty() {
            let id = disclosures::patient_id(&self.patient).map_err(|e| e.to_string())?;
            p.push(("patient".into(), format!("Patient/{}", id.as_str())));
        }
        if !self.user.is_empty() {
            // The user is the agent's `who.reference` (the fhirUser).
            if !self.user.contains('/') {
                return Err(format!(
                    "the user is a FHIR reference such as Practitioner/7, not `{}`",
                    crate::fhir::types::truncate(&self.user, 60)
                ));
            }
            p.push(("agent".into(), escape(&self.user)));
        }
        if !self.client.is_empty() {
            p.push((
                "agent:identifier".into(),
                format!("urn:fhirgate:client|{}", escape(&self.client)),
            ));
        }
        let period = Period::parse(Some(&self.from), Some(&self.to), ("from", "to"))
            .map_err(|e| e.to_string())?;
        if let Some(f) = period.start {
            p.push(("date".into(), format!("ge{f}")));
        }
        if let Some(t) = period.end {
            p.push(("date".into(), format!("le{t}")));
        }
        if !self.action.is_empty() {
            if !ACTIONS.iter().any(|c| c.value == self.action) {
                return Err("the action is one of C, R, U, D, E".into());
            }
            p.push(("action".into(), self.action.clone()));
        }
        if !self.outcome.is_empty() {
            if !OUTCOMES.iter().any(|c| c.value == self.outcome) {
                return Err("the outcome is one of 0, 4, 8".into());
            }
            p.push(("outcome".into(), self.outcome.clone()));
        }
        p.push(("_sort".into(), "-date".into()));
        p.push(("_count".into(), PAGE.to_string()));
        p.push(("_total".into(), "none".into()));
        Ok(p)
    }
}

/// A search value taken literally (FHIR search escaping of `\`, `,`, `$`, `|`).
fn escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        if matches!(c, '\\' | ',' | '$' | '|') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// `GET /console/?patient=&user=&client=&from=&to=&action=&outcome=[&cursor=]`.
pub(super) async fn search(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let v = match viewer(&req, &state, &Interaction::SearchType).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let rec = record(&req, &v, Interaction::SearchType);
    let fields = fields(&req);
    let form = SearchForm::of(&fields);
    let cursor = Some(field(&fields, "cursor")).filter(|c| !c.is_empty());
    let page = |status: StatusCode,
                error: Option<&str>,
                rows: Vec<TableRow>,
                links: (Option<String>, Option<String>)| {
        pages(&state).render(
            status,
            "search.html",
            minijinja::context! {
                viewer => v.template_value(),
                page => "search",
                form => &form,
                actions => &ACTIONS,
                outcomes => &OUTCOMES,
                error => error,
                rows => rows,
                next => links.0,
                previous => links.1,
            },
        )
    };
    match run_search(&state, &v, &form, cursor.as_deref()).await {
        Ok((rows, links)) => {
            let html = page(StatusCode::OK, None, rows, links);
            answer(&state, rec, StatusCode::OK, None, html).await
        }
        Err(e) => {
            let (status, why) = (e.status(), e.describe());
            let html = page(status, Some(&why), Vec::new(), (None, None));
            answer(&state, rec, status, Some(why), html).await
        }
    }
}

type Links = (Option<String>, Option<String>);

async fn run_search(
    state: &AppState,
    v: &Viewer,
    form: &SearchForm,
    cursor: Option<&str>,
) -> Result<(Vec<TableRow>, Links), ApiError> {
    let binding = CursorBinding::new(CURSOR_SCOPE, &v.ctx);
    let cursor = match cursor {
        Some(token) => Some(Cursor::open(token, &state.store, &binding)?),
        None => None,
    };
    let params = match &cursor {
        Some(c) => c.params.clone(),
        None => form
            .search_params()
            .map_err(|m| ApiError::bad_request("value", m))?,
    };
    let search = state.search.clone();
    let request = search.parse(vec![crate::audit::RESOURCE_TYPE.into()], &params, true)?;
    let ctx = v.ctx.clone();
    let result = state
        .store
        .call_as(crate::store::Work::Search, None, move |s| {
            Ok(search.execute(s, &ctx, &request, cursor.as_ref()))
        })
        .await??;
    let rows = result
        .matches
        .iter()
        .filter_map(|h| serde_json::from_slice::<Value>(&h.version.body).ok())
        .map(|ev| TableRow::of(&ev))
        .collect();
    let link = |c: &Option<Cursor>| -> Result<Option<String>, ApiError> {
        let Some(c) = c else { return Ok(None) };
        let token = c.seal(&state.store, &binding)?;
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, val) in form.pairs() {
            q.append_pair(k, val);
        }
        q.append_pair("cursor", &token);
        Ok(Some(format!("/console/?{}", q.finish())))
    };
    Ok((rows, (link(&result.next)?, link(&result.previous)?)))
}

/// One agent of an event, as the detail page shows it.
#[derive(Serialize)]
struct AgentView {
    r#type: String,
    who: String,
    requestor: &'static str,
    address: String,
    policy: String,
}

#[derive(Serialize)]
struct EntityView {
    what: String,
    r#type: String,
    role: String,
    query: Option<String>,
}

#[derive(Serialize)]
struct EventView {
    id: String,
    recorded: String,
    r#type: String,
    subtype: String,
    action: String,
    outcome: String,
    outcome_desc: String,
    purpose: String,
    source: String,
    queries: Vec<String>,
    agents: Vec<AgentView>,
    entities: Vec<EntityView>,
    json: String,
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// A Coding (or a CodeableConcept's first) as `display (code)`.
fn coding(v: &Value) -> String {
    let c = if v["coding"].is_array() {
        &v["coding"][0]
    } else {
        v
    };
    match (c["display"].as_str(), c["code"].as_str()) {
        (Some(d), Some(code)) if d == code => code.to_string(),
        (Some(d), Some(code)) => format!("{d} ({code})"),
        (None, Some(code)) => code.to_string(),
        (Some(d), None) => d.to_string(),
        (None, None) => String::new(),
    }
}

fn who(v: &Value) -> String {
    if let Some(r) = v["reference"].as_str() {
        return r.to_string();
    }
    if let Some(value) = v["identifier"]["value"].as_str() {
        return match v["identifier"]["system"].as_str() {
            Some("urn:fhirgate:client") => format!("client {value}"),
            Some(system) => format!("{system}|{value}"),
            None => value.to_string(),
        };
    }
    s(&v["display"])
}

impl EventView {
    fn of(ev: &Value) -> EventView {
        let empty = Vec::new();
        let list = |v: &Value| v.as_array().unwrap_or(&empty).clone();
        let row = ReportRow::of(ev);
        let entities: Vec<EntityView> = list(&ev["entity"])
            .iter()
            .map(|e| EntityView {
                what: if e["what"].is_object() {
                    who(&e["what"])
                } else {
                    String::new()
                },
                r#type: coding(&e["type"]),
                role: coding(&e["role"]),
                query: e["query"].as_str().map(decode_query),
            })
            .collect();
        EventView {
            id: s(&ev["id"]),
            recorded: s(&ev["recorded"]),
            r#type: coding(&ev["type"]),
            subtype: list(&ev["subtype"])
                .iter()
                .map(coding)
                .collect::<Vec<_>>()
                .join(", "),
            action: s(&ev["action"]),
            outcome: s(&ev["outcome"]),
            outcome_desc: s(&ev["outcomeDesc"]),
            purpose: row.purpose_of_use,
            source: format!(
                "{} (observer {})",
                s(&ev["source"]["site"]),
                who(&ev["source"]["observer"])
            ),
            queries: entities.iter().filter_map(|e| e.query.clone()).collect(),
            agents: list(&ev["agent"])
                .iter()
                .map(|a| AgentView {
                    r#type: coding(&a["type"]),
                    who: who(&a["who"]),
                    requestor: if a["requestor"] == true { "yes" } else { "no" },
                    address: s(&a["network"]["address"]),
                    policy: list(&a["policy"])
                        .iter()
                        .map(s)
                        .collect::<Vec<_>>()
                        .join(" "),
                })
                .collect(),
            entities,
            json: serde_json::to_string_pretty(ev).unwrap_or_default(),
        }
    }
}

/// `GET /console/event/{id}`: one AuditEvent in full.
pub(super) async fn event(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let v = match viewer(&req, &state, &Interaction::Read).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let mut rec = record(&req, &v, Interaction::Read);
    rec.query = None;
    let Ok(id) = crate::fhir::types::Id::parse(&path) else {
        return not_found(&state, rec, "That is not an AuditEvent id.".into()).await;
    };
    rec.id = Some(id.as_str().to_string());
    rec.version = Some(1);
    let wanted = id.as_str().to_string();
    let stored = match state.store.call(move |s| s.audit_event(&wanted)).await {
        Ok(s) => s,
        Err(e) => {
            let e = ApiError::from(e);
            let why = e.describe();
            let html = pages(&state).message(e.status(), "Unavailable", &why);
            return answer(&state, rec, e.status(), Some(why), html).await;
        }
    };
    let Some(ev) = stored.and_then(|s| serde_json::from_slice::<Value>(&s.body).ok()) else {
        return not_found(
            &state,
            rec,
            format!("AuditEvent/{} does not exist.", id.as_str()),
        )
        .await;
    };
    let html = pages(&state).render(
        StatusCode::OK,
        "event.html",
        minijinja::context! {
            viewer => v.template_value(),
            page => "event",
            ev => EventView::of(&ev),
        },
    );
    answer(&state, rec, StatusCode::OK, None, html).await
}

/// An event that is not there: 404, audited as a failed read.
async fn not_found(state: &AppState, rec: AuditRecord, why: String) -> HttpResponse {
    let html = pages(state).message(StatusCode::NOT_FOUND, "Not found", &why);
    answer(state, rec, StatusCode::NOT_FOUND, Some(why), html).await
}

/// `GET /console/disclosures?patient=&start=&end=`: a patient's accounting of
/// disclosures, as `$disclosures` answers it (up to [`REPORT_LIMIT`] rows).
pub(super) async fn disclosures(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let interaction = Interaction::Operation("disclosures".into());
    let v = match viewer(&req, &state, &interaction).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let rec = record(&req, &v, interaction);
    let fields = fields(&req);
    let form = minijinja::context! {
        patient => field(&fields, "patient"),
        start => field(&fields, "start"),
        end => field(&fields, "end"),
    };
    let page = |status, error: Option<&str>, patient: Option<String>, rows: Vec<TableRow>, cut| {
        pages(&state).render(
            status,
            "disclosures.html",
            minijinja::context! {
                viewer => v.template_value(),
                page => "disclosures",
                form => &form,
                error => error,
                patient => patient,
                rows => rows,
                cut => cut,
            },
        )
    };
    let patient = field(&fields, "patient");
    if patient.is_empty() {
        let html = page(StatusCode::OK, None, None, Vec::new(), false);
        return answer(&state, rec, StatusCode::OK, None, html).await;
    }
    let result = async {
        let id = disclosures::patient_id(&patient)
            .map_err(|e| ApiError::bad_request("value", e.to_string()))?;
        let period = Period::parse(
            Some(&field(&fields, "start")),
            Some(&field(&fields, "end")),
            ("start", "end"),
        )
        .map_err(|e| ApiError::bad_request("value", e.to_string()))?;
        v.ctx
            .decide_disclosures()
            .map_err(|d| ApiError::Forbidden(d.0))?;
        let (search, ctx, wanted) = (state.search.clone(), v.ctx.clone(), id.clone());
        let (events, cut) = state
            .store
            .call_as(crate::store::Work::Search, None, move |s| {
                Ok(disclosures::collect(
                    s,
                    &search,
                    &ctx,
                    &wanted,
                    &period,
                    REPORT_LIMIT,
                ))
            })
            .await??;
        Ok::<_, ApiError>((id, events, cut))
    }
    .await;
    match result {
        Ok((id, events, cut)) => {
            let rows = events.iter().map(TableRow::of).collect();
            let html = page(
                StatusCode::OK,
                None,
                Some(format!("Patient/{}", id.as_str())),
                rows,
                cut,
            );
            answer(&state, rec, StatusCode::OK, None, html).await
        }
        Err(e) => {
            let (status, why) = (e.status(), e.describe());
            let html = page(status, Some(&why), None, Vec::new(), false);
            answer(&state, rec, status, Some(why), html).await
        }
    }
}

/// `GET /console/chain`: the chain's state from this node's last verification
/// (periodic, `$verify` or on this node's command) and the stored chain: how
/// far it is linked and its last signed checkpoint. Nothing is verified here.
pub(super) async fn chain(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let interaction = Interaction::Operation("chain-state".into());
    let v = match viewer(&req, &state, &interaction).await {
        Ok(v) => v,
        Err(page) => return page,
    };
    let rec = record(&req, &v, interaction);
    let stored = state
        .store
        .call(|s| Ok((s.audit_chain_state()?, s.audit_last_checkpoint()?)))
        .await;
    let (chain_state, checkpoint) = match stored {
        Ok(x) => x,
        Err(e) => {
            let e = ApiError::from(e);
            let why = e.describe();
            let html = pages(&state).message(e.status(), "Unavailable", &why);
            return answer(&state, rec, e.status(), Some(why), html).await;
        }
    };
    let verified = state.chainer.last_verified().map(|l| {
        minijinja::context! {
            through => l.through(),
            at => crate::fhir::instant(l.at),
            head => l.verdict.head,
            kept_from => l.verdict.kept_from,
            broken => l.verdict.broken.is_some(),
            broken_at => l.verdict.broken.as_ref().map(|b| b.0),
            problem => l.verdict.broken.as_ref().map(|b| b.1.clone()),
        }
    });
    let checkpoint = checkpoint.map(|c| {
        minijinja::context! {
            position => c.pos,
            time => crate::fhir::instant(c.time),
            purge => c.purged_before.is_some(),
        }
    });
    let html = pages(&state).render(
        StatusCode::OK,
        "chain.html",
        minijinja::context! {
            viewer => v.template_value(),
            page => "chain",
            verified => verified,
            head => chain_state.head_pos,
            checkpoint => checkpoint,
        },
    );
    answer(&state, rec, StatusCode::OK, None, html).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(pairs: &[(&str, &str)]) -> SearchForm {
        let fields: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SearchForm::of(&fields)
    }

    #[test]
    fn the_form_becomes_an_audit_event_search() {
        let p = form(&[
            ("patient", "Patient/p1"),
            ("user", "Practitioner/d1"),
            ("client", "app,1"),
            ("from", "2026-12-01"),
            ("to", "2026-12-04T10:00:00Z"),
            ("action", "R"),
            ("outcome", "4"),
        ])
        .search_params()
        .unwrap();
        let got: Vec<String> = p.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(
            got,
            [
                "patient=Patient/p1",
                "agent=Practitioner/d1",
                "agent:identifier=urn:fhirgate:client|app\\,1",
                "date=ge2026-12-01",
                "date=le2026-12-04T10:00:00Z",
                "action=R",
                "outcome=4",
                "_sort=-date",
                "_count=25",
                "_total=none",
            ]
        );
        assert_eq!(form(&[]).search_params().unwrap().len(), 3);
        for bad in [
            [("patient", "Patient/a b")],
            [("user", "d1")],
            [("from", "yesterday")],
            [("action", "X")],
            [("outcome", "2")],
        ] {
            assert!(form(&bad).search_params().is_err(), "{bad:?}");
        }
    }
}
