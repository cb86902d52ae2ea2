//! The actix-web application: routing, content negotiation, error mapping to
//! OperationOutcome, request middleware. Handlers call the store and audit
//! layers; nothing below calls back up here.
//!
//! Architecture invariant: every FHIR interaction goes through
//! [`exchange::Exchange`], so each produces exactly one AuditEvent and every
//! error is an OperationOutcome.

pub mod audit;
pub mod bundle;
pub mod capability;
pub mod conditional;
pub mod disclosures;
pub mod error;
pub mod exchange;
pub mod export;
pub mod hangup;
pub mod history;
pub mod negotiate;
pub mod ops;
pub mod patch;
pub mod reindex;
pub mod resources;
pub mod search;
pub mod subscriptions;
pub mod validate;
pub mod websocket;
pub mod write;

use std::sync::Arc;

use actix_web::http::Method;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;

use crate::audit::{AuditWriter, Interaction};
use crate::config::Settings;
use crate::fhir::compartment::PatientCompartment;
use crate::fhir::Model;
use crate::store::Store;
use error::ApiError;
use exchange::Exchange;

/// The request id, put in the request's extensions by the middleware.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// What every handler shares.
pub struct AppState {
    pub settings: Settings,
    pub base_url: String,
    pub model: Arc<Model>,
    pub store: Store,
    pub audit: AuditWriter,
    pub compartment: Arc<PatientCompartment>,
    pub metrics: ops::Metrics,
    pub capability: Value,
    /// Search parameters, index extraction, query planning.
    pub search: Arc<crate::search::SearchEngine>,
    /// Profile validation of writes and `$validate`.
    pub validator: Arc<crate::validation::Validator>,
    /// The validation of every written resource (`validation.*` settings).
    pub gate: Arc<crate::validation::WriteGate>,
    /// The SMART authorization server and the token check.
    pub auth: Arc<crate::auth::AuthService>,
    /// The audit log's hash chain (`AuditEvent/$verify`, the chain metric).
    pub chainer: Arc<crate::audit::chain::Chainer>,
    /// The audit console's pages (`/console/`).
    pub console: Arc<crate::console::Pages>,
    /// Bulk Data `$export` jobs and files.
    pub exporter: Arc<crate::bulk::export::Exporter>,
}

impl AppState {
    /// What the bundle module needs to run entries for `ctx`.
    pub fn bundle_env<'a>(
        &'a self,
        ctx: &'a crate::access::AccessContext,
        return_bodies: bool,
    ) -> crate::bundle::Env<'a> {
        crate::bundle::Env {
            model: &self.model,
            search: &self.search,
            store: &self.store,
            audit: &self.audit,
            compartment: &self.compartment,
            gate: &self.gate,
            ctx,
            base_url: &self.base_url,
            return_bodies,
            subscriptions: &self.settings.subscriptions,
        }
    }
}

/// Routes of the FHIR API and the operations endpoints.
pub fn configure(cfg: &mut web::ServiceConfig) {
    crate::auth::configure(cfg);
    crate::console::configure(cfg);
    cfg.route("/health/live", web::get().to(ops::live))
        .route("/health/ready", web::get().to(ops::ready))
        .route("/metrics", web::get().to(ops::metrics))
        .service(
            web::scope("/fhir")
                .service(
                    fhir_resource("")
                        .route(web::get().to(search::system_get))
                        .route(web::post().to(bundle::post)),
                )
                .service(
                    fhir_resource("/")
                        .route(web::get().to(search::system_get))
                        .route(web::post().to(bundle::post)),
                )
                .service(fhir_resource("/_search").route(web::post().to(search::system_post)))
                .service(fhir_resource("/metadata").route(web::get().to(capability::metadata)))
                .service(fhir_resource("/AuditEvent/$verify").route(web::get().to(audit::verify)))
                .service(
                    fhir_resource("/Patient/{id}/$disclosures")
                        .route(web::get().to(disclosures::get)),
                )
                .service(fhir_resource("/$websocket").route(web::get().to(websocket::open)))
                // Bulk Data before the generic routes, which would take `$export` as a type or id.
                .service(
                    fhir_resource("/$export")
                        .route(web::get().to(export::system_get))
                        .route(web::post().to(export::system_post)),
                )
                .service(
                    fhir_resource("/Patient/$export")
                        .route(web::get().to(export::patient_get))
                        .route(web::post().to(export::patient_post)),
                )
                .service(
                    fhir_resource("/Group/{id}/$export")
                        .route(web::get().to(export::group_get))
                        .route(web::post().to(export::group_post)),
                )
                .service(
                    fhir_resource("/$export-status/{job}")
                        .route(web::get().to(export::status))
                        .route(web::delete().to(export::cancel)),
                )
                .service(
                    fhir_resource("/$export-file/{job}/{file}").route(web::get().to(export::file)),
                )
                .service(
                    fhir_resource("/Subscription/{id}/$events")
                        .route(web::get().to(subscriptions::events)),
                )
                .service(fhir_resource("/$reindex").route(web::post().to(reindex::all)))
                .service(fhir_resource("/$reindex/{job}").route(web::get().to(reindex::status)))
                .service(fhir_resource("/{type}/$reindex").route(web::post().to(reindex::of_type)))
                .service(fhir_resource("/_history").route(web::get().to(history::system)))
                .service(fhir_resource("/{type}/_history").route(web::get().to(history::of_type)))
                .service(
                    fhir_resource("/{type}/{id}/_history").route(web::get().to(history::instance)),
                )
                .service(
                    fhir_resource("/{type}/{id}/_history/{vid}")
                        .route(web::get().to(resources::vread)),
                )
                // `$validate` before the generic `/{type}/{id}` routes, which would take it as an id.
                .service(
                    fhir_resource("/{type}/$validate").route(web::post().to(validate::type_level)),
                )
                .service(
                    fhir_resource("/{type}/{id}/$validate")
                        .route(web::post().to(validate::instance_level)),
                )
                .service(
                    fhir_resource("/{type}/{id}/{target}")
                        .route(web::get().to(search::compartment_get)),
                )
                .service(fhir_resource("/{type}/_search").route(web::post().to(search::type_post)))
                .service(
                    fhir_resource("/{type}")
                        .route(web::post().to(resources::create))
                        .route(web::get().to(search::type_get))
                        .route(web::put().to(conditional::update))
                        .route(web::patch().to(conditional::patch))
                        .route(web::delete().to(conditional::delete)),
                )
                .service(
                    fhir_resource("/{type}/{id}")
                        .route(web::get().to(resources::read))
                        .route(web::put().to(resources::update))
                        .route(web::patch().to(patch::patch))
                        .route(web::delete().to(resources::delete)),
                )
                .default_service(web::to(fhir_fallback)),
        )
        .default_service(web::to(not_found));
}

/// A FHIR resource path whose unimplemented methods get a FHIR answer, not actix's bare 405.
fn fhir_resource(path: &str) -> actix_web::Resource {
    web::resource(path).default_service(web::to(fhir_fallback))
}

/// FHIR URLs that match no implemented interaction: the right status, as an
/// OperationOutcome, audited like any other request.
pub async fn fhir_fallback(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let path = req
        .path()
        .strip_prefix("/fhir")
        .unwrap_or("")
        .trim_matches('/')
        .to_string();
    let segments: Vec<&str> = if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    };
    let method = req.method().clone();
    let (interaction, error) = classify(&state, &req, &segments, &method);
    let mut ex = Exchange::begin(&state, &req, interaction);
    let result = ex.precondition().and(Err(error));
    ex.finish(&state, result).await
}

fn classify(
    state: &AppState,
    req: &HttpRequest,
    segments: &[&str],
    method: &Method,
) -> (Interaction, ApiError) {
    let known = |t: &str| state.model.is_resource_type(t);
    let op = |name: &str| Interaction::Operation(name.to_string());
    let has_query = !req.query_string().is_empty();
    let not_allowed =
        || ApiError::MethodNotAllowed(format!("{method} is not allowed on {}", req.path()));
    if let Some(operation) = segments.iter().find(|s| s.starts_with('$')) {
        if *operation == "$validate" && segments.len() <= 3 {
            return (op("validate"), not_allowed());
        }
        return (
            op(operation),
            ApiError::NotImplemented(format!(
                "the operation {} is not implemented",
                crate::fhir::types::truncate(operation, 60)
            )),
        );
    }
    match segments {
        [] => (op("unknown"), not_allowed()),
        ["metadata"] | ["_history"] => (op("unknown"), not_allowed()),
        [t, ..] if !known(t) => (
            op("unknown"),
            ApiError::NotFound(format!(
                "`{}` is not a resource type this server knows",
                crate::fhir::types::truncate(t, 80)
            )),
        ),
        [_] => match *method {
            Method::PUT | Method::DELETE | Method::PATCH if !has_query => (
                op("unknown"),
                ApiError::MethodNotAllowed(format!(
                    "{method} on a type needs search criteria (conditional {}); use {}/[id] for one resource",
                    match *method {
                        Method::PUT => "update",
                        Method::DELETE => "delete",
                        _ => "patch",
                    },
                    req.path()
                )),
            ),
            _ => (op("unknown"), not_allowed()),
        },
        [_, _] | [_, _, "_history"] | [_, _, "_history", _] => (op("unknown"), not_allowed()),
        _ => (
            op("unknown"),
            ApiError::NotFound("no FHIR interaction has this URL".into()),
        ),
    }
}

async fn not_found() -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("application/fhir+json; charset=utf-8")
        .body(r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"no such endpoint; the FHIR API is under /fhir"}]}"#)
}
