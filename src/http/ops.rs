//! Operations endpoints: liveness, readiness (a database round trip), Prometheus
//! metrics, and the request middleware that gives every request an id, a span,
//! a log line and its metrics.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{web, HttpMessage, HttpResponse};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};
use tracing::Instrument;

use super::{AppState, RequestId};

/// The server's Prometheus metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    /// FHIR requests being served now (what a graceful shutdown waits for).
    in_flight: IntGauge,
    /// The last periodic verification of the audit chain: 1 verified, 0 broken,
    /// -1 none yet.
    audit_chain_ok: IntGauge,
    /// Rest-hook deliveries of this node (subscription::worker).
    pub subscriptions: crate::subscription::worker::DeliveryMetrics,
    /// Notifications not yet delivered, in all, and per subscription that has
    /// any (read from the database at each scrape: every node sees the same).
    outbox_depth: IntGauge,
    lag: prometheus::IntGaugeVec,
}

/// Counts a FHIR request in flight until it is dropped (also when the handler fails).
struct InFlight(IntGauge);

impl InFlight {
    fn start(g: &IntGauge) -> InFlight {
        g.inc();
        InFlight(g.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "fhirgate_http_requests_total",
                "HTTP requests by method, route and status",
            ),
            &["method", "route", "status"],
        )
        .expect("static metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "fhirgate_http_request_duration_seconds",
                "HTTP request latency by method and route",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["method", "route"],
        )
        .expect("static metric definition");
        let in_flight = IntGauge::new(
            "fhirgate_http_requests_in_flight",
            "FHIR requests being served",
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(requests.clone()));
        let _ = registry.register(Box::new(duration.clone()));
        let audit_chain_ok = IntGauge::new(
            "fhirgate_audit_chain_ok",
            "The last periodic verification of the audit chain: 1 verified, 0 broken, -1 none yet",
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(in_flight.clone()));
        let _ = registry.register(Box::new(audit_chain_ok.clone()));
        let subscriptions = crate::subscription::worker::DeliveryMetrics::new();
        subscriptions.register(&registry);
        let outbox_depth = IntGauge::new(
            "fhirgate_subscription_outbox_depth",
            "Notifications stored and not yet delivered, over every active subscription",
        )
        .expect("static metric definition");
        let lag = prometheus::IntGaugeVec::new(
            Opts::new(
                "fhirgate_subscription_lag_events",
                "Notifications not yet delivered, per active subscription that has any",
            ),
            &["subscription"],
        )
        .expect("static metric definition");
        let _ = registry.register(Box::new(outbox_depth.clone()));
        let _ = registry.register(Box::new(lag.clone()));
        Metrics {
            registry,
            requests,
            duration,
            in_flight,
            audit_chain_ok,
            subscriptions,
            outbox_depth,
            lag,
        }
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.requests
            .with_label_values(&[method, route, &status.to_string()])
            .inc();
        self.duration
            .with_label_values(&[method, route])
            .observe(seconds);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "live"}))
}

/// Readiness: a database round trip on the requests' pool. Not ready, with
/// `reason`, is either "database down" (no connection can be made or used) or
/// "pool saturated" (the database is up, but every connection of this node is
/// held); `connections` shows the pool and its shares (store::share), so a full
/// share of searches, which leaves this node serving reads and writes, is seen
/// without making the node not ready.
pub async fn ready(state: web::Data<AppState>) -> HttpResponse {
    let result = state.store.call(|s| s.ping()).await;
    let pool = state.store.pool_state();
    let busy: Vec<&str> = pool
        .shares
        .iter()
        .filter(|s| s.in_use >= s.connections)
        .map(|s| s.work)
        .collect();
    let connections = serde_json::json!({
        "size": pool.size, "open": pool.open, "idle": pool.idle,
        "reserved": pool.reserved, "shares": pool.shares, "shares_full": busy,
    });
    match result {
        Ok(()) => HttpResponse::Ok().json(serde_json::json!({
            "status": "ready", "database": "up", "connections": connections,
        })),
        Err(e) => {
            use crate::store::{StoreError, Unavailable};
            // A saturated pool is not a database that is down: say which.
            let (database, reason) = match &e {
                StoreError::Unavailable(Unavailable::PoolExhausted) => ("up", "pool saturated"),
                _ => ("down", "database down"),
            };
            tracing::warn!(error = %e, reason, "not ready");
            HttpResponse::ServiceUnavailable()
                .insert_header(("Retry-After", "5"))
                .json(serde_json::json!({
                    "status": "not ready", "database": database, "reason": reason,
                    "detail": e.to_string(), "connections": connections,
                }))
        }
    }
}

pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    let mut buf = Vec::new();
    state.metrics.audit_chain_ok.set(
        state
            .chainer
            .chain_ok
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    match state.store.call(|s| s.subscription_lags()).await {
        Ok(lags) => {
            state.metrics.lag.reset();
            let mut depth = 0;
            for (id, lag) in lags {
                depth += lag;
                state.metrics.lag.with_label_values(&[&id]).set(lag);
            }
            state.metrics.outbox_depth.set(depth);
        }
        Err(e) => tracing::warn!(error = %e, "the subscription outbox could not be measured"),
    }
    let families = state.metrics.registry.gather();
    if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
        tracing::error!(error = %e, "metrics encoding failed");
        return HttpResponse::InternalServerError().finish();
    }
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(buf)
}

fn valid_request_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Request id (from `X-Request-Id` when sane, else new), a span around the
/// request, one log line at the end, metrics. Logs name the route pattern, never
/// the query string (it may hold patient data).
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = req
        .headers()
        .get("x-request-id")
        .and_then(|h| h.to_str().ok())
        .filter(|s| valid_request_id(s))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().to_string();
    let route = req.match_pattern().unwrap_or_else(|| "unmatched".into());
    let metrics = req
        .app_data::<web::Data<AppState>>()
        .map(|s| s.metrics.clone());
    let span = tracing::info_span!("request", request_id = %id, http.method = %method, http.route = %route);
    let _in_flight = match &metrics {
        Some(m) if req.path().starts_with("/fhir") => Some(InFlight::start(&m.in_flight)),
        _ => None,
    };
    let start = Instant::now();
    let mut res = next.call(req).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    let elapsed = start.elapsed().as_secs_f64();
    span.in_scope(|| {
        tracing::info!(
            http.status = status,
            duration_ms = elapsed * 1000.0,
            "request finished"
        );
    });
    if let Some(m) = metrics {
        m.observe(&method, &route, status, elapsed);
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut()
            .insert(HeaderName::from_static("x-request-id"), v);
    }
    Ok(res)
}
