//! `POST /fhir` with a `batch` or `transaction` Bundle (R4 http.html 3.1.0.11):
//! the body read under `server.max_body_bytes`, the Bundle under
//! `bundle.max_entries` (413 past either), the entries processed by the
//! [`crate::bundle`] module on the blocking pool, the GET and HEAD entries answered
//! afterwards like the reads and searches they are, and the `transaction-response`
//! or `batch-response` Bundle built with each entry's status, location, ETag and
//! (with `Prefer`) resource or outcome. A transaction that fails answers with the
//! status of its failing entries and one OperationOutcome naming every entry and
//! element at fault.
//!
//! Audit: the Bundle as a whole has its AuditEvent (subtype `transaction` or
//! `batch`), and every entry its own: writes commit theirs with the data; the
//! entries of a failed transaction and failed batch entries are audited after the
//! rollback, and reads through the group commit, all before the response.

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::join_all;
use serde_json::{json, Value};

use super::error::ApiError;
use super::exchange::{read_body, Body, Exchange, Reply};
use super::negotiate;
use super::resources::{self, prefer_return_asked, read_inner, ReadConditions};
use super::AppState;
use crate::audit::{AuditRecord, Interaction};
use crate::bundle::{
    self, BundleKind, Done, Entry, EntryError, Failure, Method, RequestBundle, Target,
};
use crate::fhir::{self, instant, Format};

pub async fn post(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Transaction);
    // A Bundle is no query: its entries carry their own URLs.
    ex.audit.query = None;
    let result = exchange(&state, &req, &mut ex, payload).await;
    ex.finish(&state, result).await
}

/// What the blocking part hands back.
struct Processed {
    kind: BundleKind,
    entries: Vec<Option<Entry>>,
    results: Vec<Result<Done, EntryError>>,
    /// Audit records of entries that failed or never ran, to write now.
    audits: Vec<AuditRecord>,
    /// The transaction failed: `results` holds its errors.
    failed: bool,
}

/// `Prefer: return=...` of a Bundle: entries carry their resources only when asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Return {
    Status,
    Representation,
    Outcome,
}

fn prefer(req: &HttpRequest) -> Return {
    match prefer_return_asked(req) {
        Some(resources::Return::Representation) => Return::Representation,
        Some(resources::Return::Outcome) => Return::Outcome,
        _ => Return::Status,
    }
}

async fn exchange(
    state: &web::Data<AppState>,
    req: &HttpRequest,
    ex: &mut Exchange,
    payload: web::Payload,
) -> Result<Reply, ApiError> {
    ex.precondition()?;
    let format = negotiate::request_format(req)?;
    let bytes = read_body(state, req, payload).await?;
    let ret = prefer(req);
    let st = state.clone();
    let ctx = ex.ctx.clone();
    let processed = state
        .store
        .call_as(crate::store::Work::Bundle, None, move |_| {
            Ok(process(
                &st,
                &ctx,
                &bytes,
                format,
                ret == Return::Representation,
            ))
        })
        .await??;
    if processed.kind == BundleKind::Batch {
        ex.audit.interaction = Interaction::Batch;
    }
    let audited = join_all(processed.audits.iter().map(|a| state.audit.record(a))).await;
    if audited.iter().any(Result::is_err) {
        return Err(ApiError::Unavailable(
            "the audit trail is unavailable, so the Bundle cannot be answered; try again later"
                .into(),
        ));
    }
    if processed.failed {
        return Err(transaction_error(processed));
    }
    let strict = req
        .headers()
        .get_all("prefer")
        .filter_map(|h| h.to_str().ok())
        .any(|h| h.to_ascii_lowercase().contains("handling=strict"));
    let mut replies: Vec<Option<Result<Reply, ApiError>>> = Vec::new();
    for (entry, result) in processed.entries.iter().zip(&processed.results) {
        replies.push(match (entry, result) {
            (Some(e), Ok(Done::Read)) => Some(read_entry(state, ex, e, strict).await?),
            _ => None,
        });
    }
    let body = response_bundle(state, processed, replies, ret)?;
    Ok(Reply::new(StatusCode::OK, Body::Stored(body)))
}

/// Reads, checks and processes the Bundle (blocking).
fn process(
    state: &AppState,
    ctx: &crate::access::AccessContext,
    bytes: &[u8],
    format: Format,
    return_bodies: bool,
) -> Result<Processed, ApiError> {
    let value = match format {
        Format::Json => fhir::json::parse_json(bytes).map_err(|i| ApiError::BadRequest(vec![i]))?,
        Format::Xml => {
            let text = std::str::from_utf8(bytes).map_err(|e| {
                ApiError::bad_request("structure", format!("the body is not UTF-8: {e}"))
            })?;
            fhir::xml::from_xml(&state.model, text).map_err(|i| ApiError::BadRequest(vec![i]))?
        }
    };
    fhir::shape::check(&value, state.settings.server.shape_limits())
        .map_err(|i| ApiError::BadRequest(vec![i]))?;
    let env = state.bundle_env(ctx, return_bodies);
    let RequestBundle { kind, entries } = bundle::read_bundle(
        env.checks(),
        &state.base_url,
        value,
        state.settings.bundle.max_entries,
    )?;
    let mut read_errors: Vec<(usize, EntryError)> = Vec::new();
    let mut ok: Vec<Entry> = Vec::new();
    let mut positions: Vec<usize> = Vec::new();
    let n = entries.len();
    for (i, e) in entries.into_iter().enumerate() {
        match e {
            Ok(entry) => {
                positions.push(i);
                ok.push(entry);
            }
            Err(err) => read_errors.push((i, err)),
        }
    }
    let mut slots: Vec<Option<Entry>> = (0..n).map(|_| None).collect();
    let mut results: Vec<Option<Result<Done, EntryError>>> = (0..n).map(|_| None).collect();
    let mut audits = Vec::new();
    let mut failed = false;
    match kind {
        BundleKind::Transaction if !read_errors.is_empty() => {
            // Nothing runs: every entry's problems are reported together.
            failed = true;
            for (i, err) in read_errors {
                audits.push(bundle::failure_record(ctx, None, err.to_string(), false));
                results[i] = Some(Err(err));
            }
            for entry in &ok {
                audits.push(bundle::failure_record(
                    ctx,
                    Some(entry),
                    "not processed: the transaction has invalid entries".into(),
                    false,
                ));
            }
        }
        BundleKind::Transaction => match bundle::process_transaction(&env, &ok, None) {
            Ok(done) => {
                for (pos, d) in done.into_iter().enumerate() {
                    results[positions[pos]] = Some(Ok(d));
                }
            }
            Err(Failure { errors, audits: a }) => {
                failed = true;
                audits = a;
                for (pos, err) in errors {
                    let slot = pos.map_or(0, |p| positions[p]);
                    results[slot] = Some(Err(err));
                }
            }
        },
        BundleKind::Batch => {
            for (i, err) in read_errors {
                audits.push(bundle::failure_record(ctx, None, err.to_string(), false));
                results[i] = Some(Err(err));
            }
            let (done, a) = bundle::process_batch(&env, &ok);
            audits.extend(a);
            for (pos, d) in done.into_iter().enumerate() {
                results[positions[pos]] = Some(d);
            }
        }
    }
    for (pos, entry) in ok.into_iter().enumerate() {
        slots[positions[pos]] = Some(entry);
    }
    Ok(Processed {
        kind,
        entries: slots,
        results: results
            .into_iter()
            .map(|r| r.unwrap_or(Ok(Done::Read)))
            .collect(),
        audits,
        failed,
    })
}

fn label(index: usize, entry: Option<&Entry>) -> String {
    match entry {
        Some(e) => format!(
            "entry {index} ({} {})",
            e.method.as_str(),
            fhir::types::truncate(&e.url, 80)
        ),
        None => format!("entry {index}"),
    }
}

/// The error of a failed transaction: every failing entry, named.
fn transaction_error(p: Processed) -> ApiError {
    let errors: Vec<ApiError> = p
        .results
        .into_iter()
        .enumerate()
        .filter_map(|(i, r)| r.err().map(|e| (i, e)))
        .map(|(i, e)| ApiError::Entry {
            label: label(i, p.entries[i].as_ref()),
            location: format!("Bundle.entry[{i}]"),
            error: Box::new(ApiError::from(e)),
        })
        .collect();
    match errors.len() {
        0 => ApiError::Internal("a failed transaction without errors".into()),
        1 => errors
            .into_iter()
            .next()
            .unwrap_or(ApiError::Internal(String::new())),
        _ => ApiError::Several(errors),
    }
}

/// A GET or HEAD entry, answered like the read or search it is, with its AuditEvent.
async fn read_entry(
    state: &AppState,
    parent: &Exchange,
    entry: &Entry,
    strict: bool,
) -> Result<Result<Reply, ApiError>, ApiError> {
    let interaction = match &entry.target {
        Target::Instance { .. } => Interaction::Read,
        Target::Version { .. } => Interaction::Vread,
        Target::System { .. } => Interaction::SearchSystem,
        _ => Interaction::SearchType,
    };
    let mut ex = parent.for_entry(interaction, &entry.url);
    let cond = ReadConditions {
        if_none_match: entry.if_none_match.clone(),
        if_modified_since: entry.if_modified_since.clone(),
    };
    let result = match &entry.target {
        Target::Instance { resource_type, id } => {
            read_inner(state, &cond, &mut ex, resource_type, id.as_str(), None).await
        }
        Target::Version {
            resource_type,
            id,
            version,
        } => {
            read_inner(
                state,
                &cond,
                &mut ex,
                resource_type,
                id.as_str(),
                Some(*version),
            )
            .await
        }
        Target::Other(url) => Err(ApiError::NotImplemented(format!(
            "GET {} is not answered inside a Bundle (history and operations are not)",
            fhir::types::truncate(url, 80)
        ))),
        target => super::search::entry_search(state, &mut ex, target, strict).await,
    };
    let result = result.map(|mut r| {
        if entry.method == Method::Head {
            r.body = Body::Empty;
        }
        r
    });
    ex.record(state, &result).await?;
    Ok(result)
}

fn status_line(status: StatusCode) -> String {
    format!(
        "{} {}",
        status.as_u16(),
        status.canonical_reason().unwrap_or_default()
    )
}

fn to_json(v: &impl serde::Serialize) -> Result<Vec<u8>, ApiError> {
    serde_json::to_vec(v).map_err(|e| ApiError::Internal(e.to_string()))
}

/// One entry of the response: `fullUrl`, the resource (stored bytes spliced in as
/// they are), `response`.
fn push_entry(
    out: &mut Vec<u8>,
    full_url: Option<String>,
    resource: Option<&[u8]>,
    response: Value,
) -> Result<(), ApiError> {
    out.push(b'{');
    if let Some(f) = full_url {
        out.extend_from_slice(b"\"fullUrl\":");
        out.extend_from_slice(&to_json(&f)?);
        out.push(b',');
    }
    if let Some(r) = resource {
        out.extend_from_slice(b"\"resource\":");
        out.extend_from_slice(r);
        out.push(b',');
    }
    out.extend_from_slice(b"\"response\":");
    out.extend_from_slice(&to_json(&response)?);
    out.push(b'}');
    Ok(())
}

fn informational(text: String) -> Value {
    json!({"resourceType": "OperationOutcome", "issue": [
        {"severity": "information", "code": "informational", "diagnostics": text}]})
}

/// The `transaction-response` or `batch-response` Bundle, entries in request order.
fn response_bundle(
    state: &AppState,
    p: Processed,
    replies: Vec<Option<Result<Reply, ApiError>>>,
    ret: Return,
) -> Result<Vec<u8>, ApiError> {
    let head = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": instant(fhir::now_micros())},
        "type": format!("{}-response", p.kind.code()),
    });
    let mut out = to_json(&head)?;
    out.pop(); // the closing brace: entries follow
    out.extend_from_slice(b",\"entry\":[");
    let base = &state.base_url;
    for (i, (result, reply)) in p.results.into_iter().zip(replies).enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let outcome = |text: String| (ret == Return::Outcome).then(|| informational(text));
        match (result, reply) {
            (_, Some(Ok(r))) => {
                let header = |name: &str| {
                    r.headers
                        .iter()
                        .find(|(n, _)| n.as_str() == name)
                        .map(|(_, v)| v.clone())
                };
                let mut response = json!({"status": status_line(r.status)});
                for (name, key) in [("etag", "etag"), ("last-modified", "lastModified")] {
                    if let Some(v) = header(name) {
                        response[key] = json!(v);
                    }
                }
                let resource = match &r.body {
                    Body::Stored(b) => Some(b.clone()),
                    Body::Resource(v) => Some(to_json(v)?),
                    Body::Empty => None,
                };
                push_entry(&mut out, None, resource.as_deref(), response)?;
            }
            (_, Some(Err(e))) => error_entry(&mut out, &e)?,
            (Err(e), None) => error_entry(&mut out, &ApiError::from(e))?,
            (Ok(done), None) => {
                let (full_url, body, response) = match done {
                    Done::Stored {
                        resource_type,
                        id,
                        version,
                        last_updated,
                        created,
                        body,
                        ..
                    } => (
                        Some(format!("{base}/{resource_type}/{id}")),
                        body,
                        version_response(
                            if created { StatusCode::CREATED } else { StatusCode::OK },
                            &resource_type,
                            &id,
                            version,
                            last_updated,
                            outcome(format!("{resource_type}/{id} version {version} stored")),
                        ),
                    ),
                    Done::Matched {
                        resource_type,
                        id,
                        version,
                        last_updated,
                        body,
                    } => (
                        Some(format!("{base}/{resource_type}/{id}")),
                        body,
                        version_response(
                            StatusCode::OK,
                            &resource_type,
                            &id,
                            version,
                            last_updated,
                            outcome(format!("{resource_type}/{id} matched the ifNoneExist criteria; nothing was created")),
                        ),
                    ),
                    Done::Deleted {
                        resource_type,
                        id,
                        version,
                    } => {
                        let mut r = json!({"status": status_line(StatusCode::OK)});
                        if let Some(v) = version {
                            r["etag"] = json!(format!("W/\"{v}\""));
                        }
                        if let Some(o) = outcome(match version {
                            Some(v) => format!("{resource_type}/{id} deleted (version {v})"),
                            None => format!("{resource_type}/{id} was already deleted"),
                        }) {
                            r["outcome"] = o;
                        }
                        (None, None, r)
                    }
                    Done::NoMatch { resource_type } => (
                        None,
                        None,
                        json!({"status": status_line(StatusCode::OK), "outcome": informational(format!(
                            "no {resource_type} matched the criteria; nothing was deleted"
                        ))}),
                    ),
                    Done::Read => (
                        None,
                        None,
                        json!({"status": status_line(StatusCode::INTERNAL_SERVER_ERROR)}),
                    ),
                };
                push_entry(&mut out, full_url, body.as_deref(), response)?;
            }
        }
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}

fn version_response(
    status: StatusCode,
    rt: &str,
    id: &str,
    version: i64,
    last_updated: i64,
    outcome: Option<Value>,
) -> Value {
    let mut r = json!({
        "status": status_line(status),
        "location": format!("{rt}/{id}/_history/{version}"),
        "etag": format!("W/\"{version}\""),
        "lastModified": instant(last_updated),
    });
    if let Some(o) = outcome {
        r["outcome"] = o;
    }
    r
}

fn error_entry(out: &mut Vec<u8>, e: &ApiError) -> Result<(), ApiError> {
    let oo = fhir::operation_outcome(&e.issues());
    push_entry(
        out,
        None,
        None,
        json!({"status": status_line(e.status()), "outcome": oo}),
    )
}
