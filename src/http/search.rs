//! The search interactions: type search (`GET /fhir/Patient?...`, `POST
//! /fhir/Patient/_search`), system search (`GET /fhir?_type=...`, `POST
//! /fhir/_search`) and compartment search (`GET /fhir/Patient/123/Observation`),
//! answered with a `searchset` Bundle: matches, includes, an OperationOutcome entry
//! for ignored parameters, the total, and `self`/`next`/`previous` links whose
//! cursors are sealed.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use super::error::ApiError;
use super::exchange::{read_body, Body, Exchange, Reply};
use super::hangup;
use super::resources::{resource_id, resource_type};
use super::AppState;
use crate::audit::Interaction;
use crate::fhir::summary::{self, Subset};
use crate::fhir::{instant, Issue, Severity};
use crate::search::run::{Cursor, CursorBinding};
use crate::search::{SearchRequest, SearchResult};

/// Most entries whose patients get a PatientQuery event of the search.
const AUDITED_PATIENTS: usize = 100;

/// What is searched.
enum Scope {
    Type(String),
    System,
    Compartment {
        compartment: String,
        id: String,
        /// One type, or `*` for every type of the compartment.
        target: String,
    },
    /// `Patient/{id}/$everything`, `Encounter/{id}/$everything`: the
    /// compartment and what its resources refer to.
    Everything {
        compartment: String,
        id: String,
    },
}

pub async fn type_get(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::SearchType);
    let result = search(&state, &req, &mut ex, Scope::Type(path.into_inner()), None).await;
    ex.finish(&state, result).await
}

pub async fn type_post(
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::SearchType);
    let result = async {
        ex.precondition()?;
        let form = form_body(&state, &req, payload).await?;
        search(
            &state,
            &req,
            &mut ex,
            Scope::Type(path.into_inner()),
            Some(form),
        )
        .await
    }
    .await;
    ex.finish(&state, result).await
}

pub async fn system_get(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::SearchSystem);
    let result = search(&state, &req, &mut ex, Scope::System, None).await;
    ex.finish(&state, result).await
}

pub async fn system_post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::SearchSystem);
    let result = async {
        ex.precondition()?;
        let form = form_body(&state, &req, payload).await?;
        search(&state, &req, &mut ex, Scope::System, Some(form)).await
    }
    .await;
    ex.finish(&state, result).await
}

pub async fn compartment_get(
    req: HttpRequest,
    path: web::Path<(String, String, String)>,
    state: web::Data<AppState>,
) -> HttpResponse {
    let (compartment, id, target) = path.into_inner();
    if target == "$everything" && matches!(compartment.as_str(), "Patient" | "Encounter") {
        let mut ex = Exchange::begin(
            &state,
            &req,
            Interaction::Operation(crate::audit::EVERYTHING.into()),
        );
        ex.audit.query = Some(super::exchange::path_and_query(&req));
        let result = search(
            &state,
            &req,
            &mut ex,
            Scope::Everything { compartment, id },
            None,
        )
        .await;
        return ex.finish(&state, result).await;
    }
    if target.starts_with('$') {
        return super::fhir_fallback(req, state).await;
    }
    let mut ex = Exchange::begin(&state, &req, Interaction::SearchType);
    let scope = Scope::Compartment {
        compartment,
        id,
        target,
    };
    let result = search(&state, &req, &mut ex, scope, None).await;
    ex.finish(&state, result).await
}

/// The parameters of a `POST _search` body (`application/x-www-form-urlencoded`).
async fn form_body(
    state: &AppState,
    req: &HttpRequest,
    payload: web::Payload,
) -> Result<Vec<(String, String)>, ApiError> {
    let ct = req
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let mime = ct.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/x-www-form-urlencoded") {
        return Err(ApiError::UnsupportedMediaType(
            "POST _search takes its parameters as application/x-www-form-urlencoded".into(),
        ));
    }
    let body = match read_body(state, req, payload).await {
        Ok(b) => b,
        // An empty form is a search without criteria.
        Err(ApiError::BadRequest(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(form_urlencoded::parse(&body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect())
}

/// `Prefer: handling=strict` (R4 3.1.1.4: unknown parameters are errors).
fn strict(req: &HttpRequest) -> bool {
    req.headers()
        .get_all("prefer")
        .filter_map(|h| h.to_str().ok())
        .flat_map(|h| h.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("handling=strict"))
}

/// What a query component must escape (RFC 3986 query: `&`, `=`, `+`, `#`, `%`,
/// `|`, white space, non-ASCII); `:`, `,`, `$`, `-`, `_`, `.` stay readable.
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'=')
    .add(b'<')
    .add(b'>')
    .add(b'?')
    .add(b'[')
    .add(b']')
    .add(b'\\')
    .add(b'^')
    .add(b'`')
    .add(b'{')
    .add(b'|')
    .add(b'}');

fn encode(v: &str) -> String {
    percent_encoding::utf8_percent_encode(v, QUERY_VALUE).to_string()
}

fn query_string(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

async fn search(
    state: &AppState,
    req: &HttpRequest,
    ex: &mut Exchange,
    scope: Scope,
    form: Option<Vec<(String, String)>>,
) -> Result<Reply, ApiError> {
    ex.precondition()?;
    if let Some(form) = &form {
        // The audit records what was searched, wherever the parameters came from.
        let q = query_string(form);
        ex.audit.query = Some(format!("{}?{q}", req.path()));
    }
    run(state, ex, scope, form, strict(req), hangup::watch(req)).await
}

/// A search of a Bundle entry (`GET Patient?name=x` inside a batch or transaction):
/// the parameters from the entry's URL (in `ex.query`), answered with the same
/// searchset Bundle as over HTTP.
pub(super) async fn entry_search(
    state: &AppState,
    ex: &mut Exchange,
    target: &crate::bundle::Target,
    strict: bool,
) -> Result<Reply, ApiError> {
    use crate::bundle::Target;
    let scope = match target {
        Target::Type(t)
        | Target::Search {
            resource_type: t, ..
        } => Scope::Type(t.clone()),
        Target::System { .. } => Scope::System,
        Target::Compartment {
            compartment,
            id,
            target,
            ..
        } => Scope::Compartment {
            compartment: compartment.clone(),
            id: id.to_string(),
            target: target.clone(),
        },
        _ => {
            return Err(ApiError::NotImplemented(
                "this GET entry is not a read or search this server answers in a Bundle".into(),
            ))
        }
    };
    run(state, ex, scope, None, strict, None).await
}

/// An AuditEvent search whose parameters the server made (`$disclosures`): the
/// same search, Bundle and page links (to `AuditEvent?_cursor=...`) as
/// `GET /fhir/AuditEvent?...`, with `ex.query` holding only result controls.
pub(super) async fn audit_event_search(
    state: &AppState,
    ex: &mut Exchange,
    params: Vec<(String, String)>,
) -> Result<Reply, ApiError> {
    run(
        state,
        ex,
        Scope::Type(crate::audit::RESOURCE_TYPE.into()),
        Some(params),
        true,
        None,
    )
    .await
}

/// Runs a search of `scope` with the parameters of `ex.query` (and a form's);
/// `gone`: whether the client has hung up (its search is then stopped).
async fn run(
    state: &AppState,
    ex: &mut Exchange,
    scope: Scope,
    form: Option<Vec<(String, String)>>,
    strict: bool,
    gone: Option<crate::store::Hangup>,
) -> Result<Reply, ApiError> {
    let mut pairs = ex.query.0.clone();
    if let Some(form) = form {
        pairs.extend(form);
    }
    // `$everything` takes its own parameters: they become the search's, and
    // `start`/`end` stay beside the page links (they are filters, not search
    // parameters).
    let mut original = Vec::new();
    let mut window: Vec<(String, String)> = Vec::new();
    let mut everything_types: Option<Vec<String>> = None;
    if let Scope::Everything { compartment, .. } = &scope {
        original = pairs.clone();
        let (translated, kept, types) = everything_params(compartment, &pairs)?;
        pairs = translated;
        window = kept;
        everything_types = types;
    }
    let (types, path, compartment_filter) = match &scope {
        Scope::Type(t) => {
            let t = resource_type(state, t)?;
            ex.audit.resource_type = Some(t.to_string());
            (vec![t.to_string()], format!("/{t}"), None)
        }
        Scope::System => {
            let types: Vec<String> = match pairs.iter().find(|(k, _)| k == "_type") {
                Some((_, v)) => v
                    .split(',')
                    .filter(|t| !t.is_empty())
                    .map(|t| resource_type(state, t))
                    .map(|r| r.map(|t| t.to_string()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| match e {
                        ApiError::NotFound(m) => ApiError::bad_request("value", m),
                        other => other,
                    })?,
                None => Vec::new(),
            };
            (types, String::new(), None)
        }
        Scope::Compartment {
            compartment,
            id,
            target,
        } => {
            let c = resource_type(state, compartment)?;
            let id = resource_id(id)?;
            if c == "Patient" {
                ex.audit.patients = vec![format!("Patient/{id}")];
            }
            let types = if target == "*" {
                // AuditEvents are searched on their own rows (the audit log), so
                // `*` means the compartment's resources; `.../AuditEvent` finds them.
                let mut t = state.search.compartment_types(&c);
                t.retain(|t| t != "AuditEvent");
                t
            } else {
                vec![resource_type(state, target)?.to_string()]
            };
            if let [one] = types.as_slice() {
                ex.audit.resource_type = Some(one.clone());
            }
            let filter = state.search.compartment_filter(&c, id.as_str(), &types)?;
            (types, format!("/{c}/{id}/{target}"), Some(filter))
        }
        Scope::Everything { compartment, id } => {
            let id = resource_id(id)?;
            if compartment == "Patient" {
                ex.audit.patients = vec![format!("Patient/{id}")];
            }
            let mut types = state.search.compartment_types(compartment);
            types.retain(|t| t != crate::audit::RESOURCE_TYPE);
            if let Some(asked) = &everything_types {
                if let Some(t) = asked.iter().find(|t| !types.contains(t)) {
                    return Err(ApiError::bad_request(
                        "value",
                        format!(
                            "_type: {} is not in the {compartment} compartment",
                            crate::fhir::types::truncate(t, 60)
                        ),
                    ));
                }
                types = asked.clone();
            }
            // Types the caller may not search are left out, as for `*`.
            types.retain(|t| ex.ctx.decide(t, crate::access::Action::Search).is_ok());
            if types.is_empty() {
                return Err(ApiError::Forbidden(format!(
                    "the caller may search none of the resource types of the {compartment} compartment"
                )));
            }
            // The operation answers for one existing resource the caller may read.
            ex.ctx
                .decide(compartment, crate::access::Action::Read)
                .map_err(|d| ApiError::Forbidden(d.0))?;
            let focus = state
                .store
                .read_now(&ex.ctx, compartment, id.as_str(), None)
                .await?;
            match focus {
                None => {
                    return Err(ApiError::NotFound(format!(
                        "{compartment}/{id} does not exist"
                    )))
                }
                Some(v) if v.deleted => {
                    return Err(ApiError::Gone(format!("{compartment}/{id} was deleted")))
                }
                Some(_) => {}
            }
            let mut filter = state
                .search
                .compartment_filter(compartment, id.as_str(), &types)?;
            if !window.is_empty() {
                filter =
                    crate::store::Filter::All(vec![filter, care_dates(state, &types, &window)?]);
            }
            (
                types,
                format!("/{compartment}/{id}/$everything"),
                Some(filter),
            )
        }
    };
    // Types the request names must be searchable for the caller (403); a
    // compartment's `*` and a system search without `_type` are narrowed instead.
    let named = match &scope {
        Scope::Compartment { target, .. } => target != "*",
        Scope::Everything { .. } => false,
        _ => true,
    };
    if named {
        for t in &types {
            ex.ctx
                .decide(t, crate::access::Action::Search)
                .map_err(|d| ApiError::Forbidden(d.0))?;
        }
    }
    // A page link carries the search it continues, bound to this path and caller;
    // nothing may be added to it (a parameter beside it would be silently dropped).
    let bound_path = if window.is_empty() {
        path.clone()
    } else {
        format!("{path}?{}", query_string(&window))
    };
    let binding = CursorBinding::new(&bound_path, &ex.ctx);
    let cursor = match pairs.iter().find(|(k, _)| k == "_cursor") {
        Some((_, token)) => {
            if let Some((k, _)) = pairs.iter().filter(|(k, _)| k == "_cursor").nth(1) {
                return Err(ApiError::bad_request(
                    "invalid",
                    format!("`{k}` is given more than once; a page link carries one cursor"),
                ));
            }
            let beside: Vec<&str> = pairs
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !matches!(*k, "_cursor" | "_format" | "_pretty"))
                .filter(|k| !window.iter().any(|(w, _)| w == k))
                .collect();
            if !beside.is_empty() {
                return Err(ApiError::BadRequest(vec![Issue::error(
                    "invalid",
                    format!(
                        "a page link (`_cursor`) carries its whole search; it takes only `_format` and `_pretty` beside it, not `{}`",
                        beside
                            .iter()
                            .take(5)
                            .map(|k| crate::fhir::types::truncate(k, 40))
                            .collect::<Vec<_>>()
                            .join("`, `")
                    ),
                )
                .at("_cursor")]));
            }
            Some(Cursor::open(token, &state.store, &binding)?)
        }
        None => None,
    };
    let (types, params) = match &cursor {
        Some(c) => (c.types.clone(), c.params.clone()),
        None => (types, pairs.clone()),
    };
    let search = state.search.clone();
    let mut request: SearchRequest = search.parse(types.clone(), &params, strict)?;
    if let Some(f) = compartment_filter {
        request.filters.push(f);
    }
    let subset = Subset::from_query(
        request.controls.summary.as_deref(),
        request.controls.elements.as_deref(),
    )
    .map_err(|m| ApiError::bad_request("value", m))?;
    let ctx = ex.ctx.clone();
    let req_for_run = request.clone();
    let cursor_for_run = cursor.clone();
    let result: SearchResult = state
        .store
        .call_as(crate::store::Work::Search, gone, move |s| {
            Ok(search.execute(s, &ctx, &req_for_run, cursor_for_run.as_ref()))
        })
        .await?
        .map_err(ApiError::from)?;
    audit_patients(state, ex, &result);
    let format_params: Vec<(String, String)> = pairs
        .iter()
        .filter(|(k, _)| k == "_format" || k == "_pretty")
        .cloned()
        .collect();
    let base = format!("{}{path}", state.base_url);
    let link = |params: &[(String, String)]| {
        let mut all = params.to_vec();
        all.extend(format_params.iter().cloned());
        if all.is_empty() {
            base.clone()
        } else {
            format!("{base}?{}", query_string(&all))
        }
    };
    let mut self_params = request.accepted.clone();
    if matches!(scope, Scope::System) && !types.is_empty() {
        self_params.insert(0, ("_type".into(), types.join(",")));
    }
    let self_url = match pairs.iter().find(|(k, _)| k == "_cursor") {
        Some(c) => {
            let mut with = vec![c.clone()];
            with.extend(window.iter().cloned());
            link(&with)
        }
        // An operation's own parameters, not the search they became.
        None if matches!(scope, Scope::Everything { .. }) => link(
            &original
                .iter()
                .filter(|(k, _)| k != "_format" && k != "_pretty")
                .cloned()
                .collect::<Vec<_>>(),
        ),
        None => link(&self_params),
    };
    let mut links = vec![json!({"relation": "self", "url": self_url})];
    for (relation, c) in [("next", &result.next), ("previous", &result.previous)] {
        if let Some(c) = c {
            let token = c.seal(&state.store, &binding).map_err(ApiError::from)?;
            let mut with = vec![("_cursor".to_string(), token)];
            with.extend(window.iter().cloned());
            links.push(json!({"relation": relation, "url": link(&with)}));
        }
    }
    let bundle = bundle(state, &request, &result, links, &subset)?;
    Ok(Reply::new(StatusCode::OK, bundle))
}

/// The parameters of `$everything` (R4 Patient/Encounter `$everything`) as a
/// search: `_since` becomes `_lastUpdated=gt`, every reference of the page's
/// resources is included (`_include=*`), `_count` pages; `_type` (returned
/// separately) narrows the compartment's types; `start`/`end` (Patient only) are
/// returned to become care-date filters. Anything else is refused.
#[allow(clippy::type_complexity)]
fn everything_params(
    compartment: &str,
    pairs: &[(String, String)],
) -> Result<
    (
        Vec<(String, String)>,
        Vec<(String, String)>,
        Option<Vec<String>>,
    ),
    ApiError,
> {
    let mut out = Vec::new();
    let mut window = Vec::new();
    let mut types: Option<Vec<String>> = None;
    let cursor = pairs.iter().any(|(k, _)| k == "_cursor");
    for (k, v) in pairs {
        match k.as_str() {
            "_cursor" | "_format" | "_pretty" | "_count" => out.push((k.clone(), v.clone())),
            "_since" => out.push(("_lastUpdated".into(), format!("gt{v}"))),
            "_type" => types
                .get_or_insert_with(Vec::new)
                .extend(v.split(',').filter(|t| !t.is_empty()).map(str::to_string)),
            "start" | "end" if compartment == "Patient" => {
                if window.iter().any(|(w, _): &(String, String)| w == k) {
                    return Err(ApiError::bad_request(
                        "invalid",
                        format!("`{k}` is given more than once"),
                    ));
                }
                if crate::search::values::date_range(v).is_none() {
                    return Err(ApiError::bad_request(
                        "value",
                        format!(
                            "`{k}` must be a date such as 2024-01-31, not `{}`",
                            crate::fhir::types::truncate(v, 60)
                        ),
                    ));
                }
                window.push((k.clone(), v.clone()));
            }
            other => {
                return Err(ApiError::bad_request(
                    "not-supported",
                    format!(
                        "`{}` is not a parameter of {compartment}/$everything ({})",
                        crate::fhir::types::truncate(other, 60),
                        if compartment == "Patient" {
                            "start, end, _since, _type, _count"
                        } else {
                            "_since, _type, _count"
                        }
                    ),
                ))
            }
        }
    }
    if cursor && types.is_some() {
        // A page link carries its types; another `_type` beside it would change
        // the compartment's filter between pages.
        return Err(ApiError::bad_request(
            "invalid",
            "a page link (`_cursor`) carries its whole search; `_type` may not be given beside it",
        ));
    }
    if !cursor {
        out.push(("_include".into(), "*".into()));
    }
    Ok((out, window, types))
}

/// `start`/`end` of `Patient/$everything`: care dates, not record dates (R4).
/// A type with a `date` search parameter (Observation, Encounter, Procedure,
/// ...) keeps the resources whose date lies in the range; a type without one
/// (the Patient, a Condition) cannot be dated and is kept whole, and so is a
/// resource of a dated type that has no date.
fn care_dates(
    state: &AppState,
    types: &[String],
    window: &[(String, String)],
) -> Result<crate::store::Filter, ApiError> {
    use crate::store::Filter;
    let criteria: Vec<String> = window
        .iter()
        .map(|(k, v)| match k.as_str() {
            "start" => format!("date=ge{v}"),
            _ => format!("date=le{v}"),
        })
        .collect();
    let criteria = criteria.join("&");
    let mut undated = Vec::new();
    let mut alternatives = Vec::new();
    for t in types {
        if state.search.registry().param(t, "date").is_some() {
            // In the range, or without a date (it cannot be placed outside it).
            let within = state.search.condition(t, &criteria)?.query.filters;
            let undated = state
                .search
                .condition(t, "date:missing=true")?
                .query
                .filters;
            alternatives.push(Filter::All(vec![
                Filter::Types(vec![t.clone()]),
                Filter::Any(vec![Filter::All(within), Filter::All(undated)]),
            ]));
        } else {
            undated.push(t.clone());
        }
    }
    if !undated.is_empty() {
        alternatives.push(Filter::Types(undated));
    }
    Ok(Filter::Any(alternatives))
}

/// The patients whose data is on the returned page, each to get a PatientQuery
/// event beside the search's Query event, which then names no patient (DESIGN
/// section 12). Made from the page the search already holds: no extra query.
fn audit_patients(state: &AppState, ex: &mut Exchange, result: &SearchResult) {
    ex.audit.patients.clear();
    let mut patients = std::mem::take(&mut ex.audit.page_patients);
    for h in result
        .matches
        .iter()
        .chain(&result.included)
        .take(AUDITED_PATIENTS)
    {
        let v = &h.version;
        // AuditEvents hold references, not patient data: a search of the audit
        // trail names no patient for what it returned (its query entity says what
        // was asked). Otherwise each audit search for patient X would add an
        // event about X, found again by the next one.
        if v.resource_type == crate::audit::RESOURCE_TYPE {
            continue;
        }
        if v.resource_type == "Patient" {
            patients.push(format!("Patient/{}", v.id));
            continue;
        }
        if let Ok(r) = serde_json::from_slice::<Value>(&v.body) {
            patients.extend(
                state
                    .compartment
                    .patients_of(&v.resource_type, Some(&v.id), Some(&r)),
            );
        }
    }
    patients.sort();
    patients.dedup();
    ex.audit.page_patients = patients;
}

/// The searchset Bundle. Without subsetting, stored resource bodies are spliced
/// into the JSON as they are (no parse and re-serialisation per entry).
fn bundle(
    state: &AppState,
    request: &SearchRequest,
    result: &SearchResult,
    links: Vec<Value>,
    subset: &Subset,
) -> Result<Body, ApiError> {
    let mut head = serde_json::Map::new();
    head.insert("resourceType".into(), json!("Bundle"));
    head.insert("id".into(), json!(uuid::Uuid::new_v4().to_string()));
    head.insert(
        "meta".into(),
        json!({"lastUpdated": instant(crate::fhir::now_micros())}),
    );
    head.insert("type".into(), json!("searchset"));
    if let Some(t) = result.total {
        head.insert("total".into(), json!(t));
    }
    head.insert("link".into(), Value::Array(links));
    let mut out =
        serde_json::to_vec(&Value::Object(head)).map_err(|e| ApiError::Internal(e.to_string()))?;
    out.pop(); // the closing brace: entries follow
    let mut entries: Vec<Vec<u8>> = Vec::new();
    let base = &state.base_url;
    for (hits, mode) in [(&result.matches, "match"), (&result.included, "include")] {
        for h in hits {
            let v = &h.version;
            let resource: Vec<u8> = if *subset == Subset::Full {
                v.body.clone()
            } else {
                let r: Value = serde_json::from_slice(&v.body)
                    .map_err(|e| ApiError::Internal(e.to_string()))?;
                serde_json::to_vec(&summary::apply(&state.model, &r, subset))
                    .map_err(|e| ApiError::Internal(e.to_string()))?
            };
            let mut e = Vec::with_capacity(resource.len() + 128);
            e.extend_from_slice(b"{\"fullUrl\":");
            e.extend_from_slice(
                &serde_json::to_vec(&format!("{base}/{}/{}", v.resource_type, v.id))
                    .map_err(|e| ApiError::Internal(e.to_string()))?,
            );
            e.extend_from_slice(b",\"resource\":");
            e.extend_from_slice(&resource);
            e.extend_from_slice(b",\"search\":{\"mode\":\"");
            e.extend_from_slice(mode.as_bytes());
            e.extend_from_slice(b"\"}}");
            entries.push(e);
        }
    }
    let mut issues: Vec<Issue> = request
        .ignored
        .iter()
        .map(|i| {
            Issue::error("not-supported", format!("ignored: {}", i.reason))
                .severity(Severity::Warning)
                .at(i.name.clone())
        })
        .collect();
    issues.extend(
        result
            .warnings
            .iter()
            .map(|w| Issue::error("informational", w.clone()).severity(Severity::Warning)),
    );
    if !issues.is_empty() {
        let oo = crate::fhir::operation_outcome(&issues);
        let e = json!({"resource": oo, "search": {"mode": "outcome"}});
        entries.push(serde_json::to_vec(&e).map_err(|e| ApiError::Internal(e.to_string()))?);
    }
    if !entries.is_empty() {
        out.extend_from_slice(b",\"entry\":[");
        for (i, e) in entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(e);
        }
        out.push(b']');
    }
    out.push(b'}');
    Ok(Body::Stored(out))
}
