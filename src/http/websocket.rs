//! `GET /fhir/$websocket`: the R4 websocket channel of Subscriptions (DESIGN
//! section 13). A client opens the socket and sends `bind ID [TOKEN]` for each
//! Subscription (`channel.type` `websocket`) it wants to hear; fhirgate answers
//! `bound ID`, then `ping ID` for every notification of that subscription,
//! starting with those stored since the subscription's last delivered event (a
//! closed socket's notifications wait for the next bind). `unbind ID` stops them
//! (`unbound ID`). A bind that cannot be honoured is answered `error ID: why`.
//! Websocket ping frames every [`HEARTBEAT`] keep idle connections alive.
//!
//! Access: with `auth.enabled`, each bind names a token (browsers cannot set a
//! header on a websocket) or relies on the handshake's `Authorization`; the
//! token's holder must be able to read the Subscription and be its owner (the
//! client and user that wrote it: a bind moves its delivery on). The handshake and every
//! bind are audited (operations `websocket` and `websocket-bind`), refusals too.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpMessage, HttpRequest, HttpResponse};
use actix_ws::{Message, Session};
use serde_json::Value;

use super::error::ApiError;
use super::exchange::{Body, Exchange, Reply};
use super::AppState;
use crate::access::{AccessContext, Action};
use crate::audit::{AuditRecord, Interaction, Outcome};
use crate::subscription::rules::RESOURCE_TYPE;
use crate::subscription::worker;

/// Between two websocket ping frames on an idle connection.
pub const HEARTBEAT: Duration = Duration::from_secs(30);
/// Most subscriptions one socket binds.
const MAX_BINDINGS: usize = 100;
/// Notifications sent per subscription per look at the database.
const BATCH: i64 = 100;

pub async fn open(
    req: HttpRequest,
    body: web::Payload,
    state: web::Data<AppState>,
) -> HttpResponse {
    let mut ex = Exchange::begin(&state, &req, Interaction::Operation("websocket".into()));
    // Without a token the handshake is allowed: each bind carries one.
    let missing = matches!(
        req.extensions().get::<crate::auth::Authentication>(),
        Some(crate::auth::Authentication(Err(
            crate::auth::AuthFailure::Missing
        )))
    );
    let handshake = match (missing, ex.precondition()) {
        (true, Err(ApiError::Unauthorized(_))) => Ok(()),
        (_, other) => other,
    }
    .and_then(|()| {
        if state.settings.subscriptions.enabled {
            Ok(())
        } else {
            Err(ApiError::NotFound(
                "subscriptions are disabled on this server (subscriptions.enabled)".into(),
            ))
        }
    });
    if let Err(e) = handshake {
        return ex.finish(&state, Err(e)).await;
    }
    let (response, session, stream) = match actix_ws::handle(&req, body) {
        Ok(parts) => parts,
        Err(e) => {
            let e = ApiError::bad_request("invalid", format!("not a websocket handshake: {e}"));
            return ex.finish(&state, Err(e)).await;
        }
    };
    let ok = Ok(Reply::new(StatusCode::SWITCHING_PROTOCOLS, Body::Empty));
    if let Err(e) = ex.record(&state, &ok).await {
        return ex.error_response(&state, &e);
    }
    let handshake = (!missing || !state.settings.auth.enabled).then(|| Handshake {
        ctx: ex.ctx.clone(),
        bearer: bearer_of(&req),
    });
    actix_rt::spawn(serve(state.clone(), handshake, ex.ctx, session, stream));
    response
}

/// Who opened the socket: a bind without a token of its own is decided for
/// them. Their bearer token (in memory only) is verified again at each such
/// bind, so a token that expired or was revoked since the handshake binds
/// nothing more.
struct Handshake {
    ctx: AccessContext,
    bearer: Option<String>,
}

/// The token of a request's `Authorization: Bearer` header.
fn bearer_of(req: &HttpRequest) -> Option<String> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Some(token.trim().to_string())
        }
        _ => None,
    }
}

/// The bound subscriptions of a socket: id -> the last event pinged.
type Bound = BTreeMap<String, i64>;

async fn serve(
    state: web::Data<AppState>,
    handshake: Option<Handshake>,
    base: AccessContext,
    mut session: Session,
    mut stream: actix_ws::MessageStream,
) {
    let mut bound = Bound::new();
    let mut wakes = worker::wakes();
    let mut heartbeat = actix_rt::time::interval(HEARTBEAT);
    let mut poll = actix_rt::time::interval(Duration::from_millis(
        state.settings.subscriptions.poll_interval_ms.max(10),
    ));
    loop {
        let open = tokio::select! {
            msg = stream.recv() => match msg {
                Some(Ok(Message::Text(text))) => {
                    command(&state, handshake.as_ref(), &base, &mut session, &mut bound, &text).await
                }
                Some(Ok(Message::Ping(b))) => session.pong(&b).await.is_ok(),
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => false,
                Some(Ok(_)) => true,
            },
            _ = wakes.changed() => catch_up(&state, &mut session, &mut bound).await,
            _ = poll.tick() => catch_up(&state, &mut session, &mut bound).await,
            _ = heartbeat.tick() => session.ping(b"").await.is_ok(),
        };
        if !open {
            break;
        }
    }
    let _ = session.close(None).await;
}

/// Sends `ping ID` for every event of each bound subscription after its cursor;
/// false when the socket is gone.
async fn catch_up(state: &AppState, session: &mut Session, bound: &mut Bound) -> bool {
    for (id, cursor) in bound.iter_mut() {
        loop {
            let (key, since) = (id.clone(), *cursor);
            let events = match state
                .store
                .call(move |s| s.subscription_events(&key, since, BATCH))
                .await
            {
                Ok(e) => e,
                Err(e) => {
                    tracing::warn!(subscription.id = %id, error = %e, "a websocket's events could not be read");
                    break;
                }
            };
            let Some(last) = events.last().map(|e| e.event_number) else {
                break;
            };
            for _ in &events {
                if session.text(format!("ping {id}")).await.is_err() {
                    return false;
                }
            }
            *cursor = last;
            let key = id.clone();
            if let Err(e) = state
                .store
                .call(move |s| s.advance_delivered(&key, last))
                .await
            {
                tracing::warn!(subscription.id = %id, error = %e, "a websocket delivery could not be recorded");
            }
            if (events.len() as i64) < BATCH {
                break;
            }
        }
    }
    true
}

/// One text message from the client; false when the socket is gone.
async fn command(
    state: &AppState,
    handshake: Option<&Handshake>,
    base: &AccessContext,
    session: &mut Session,
    bound: &mut Bound,
    text: &str,
) -> bool {
    let mut words = text.split_whitespace();
    let reply = match (words.next(), words.next(), words.next(), words.next()) {
        (Some("bind"), Some(id), token, None) => {
            match bind(state, handshake, base, bound, id, token).await {
                Ok(()) => {
                    if session.text(format!("bound {id}")).await.is_err() {
                        return false;
                    }
                    return catch_up(state, session, bound).await;
                }
                Err(why) => format!("error {id}: {why}"),
            }
        }
        (Some("unbind"), Some(id), None, None) => match bound.remove(id) {
            Some(_) => format!("unbound {id}"),
            None => format!("error {id}: not bound on this socket"),
        },
        _ => "error: messages are `bind ID [TOKEN]` and `unbind ID`".to_string(),
    };
    session.text(reply).await.is_ok()
}

/// Binds a subscription for the caller of the bind (its token, else the
/// handshake's): it must be able to read it, and it must be an active
/// websocket subscription. Audited either way.
async fn bind(
    state: &AppState,
    handshake: Option<&Handshake>,
    base: &AccessContext,
    bound: &mut Bound,
    id: &str,
    token: Option<&str>,
) -> Result<(), String> {
    // The handshake's token, verified again, when the bind names none.
    let token = token.or(handshake.and_then(|h| h.bearer.as_deref()));
    let ctx = match (token, handshake) {
        (Some(t), _) if state.settings.auth.enabled => {
            let p = state.auth.verify_bearer(t).await.map_err(|f| f.describe());
            match p {
                Ok(p) => {
                    let mut ctx = base.clone();
                    p.apply_to(&mut ctx);
                    Ok(ctx)
                }
                Err(why) => Err(why),
            }
        }
        (_, Some(h)) => Ok(h.ctx.clone()),
        (_, None) => Err(crate::auth::AuthFailure::Missing.describe()),
    };
    let mut record = AuditRecord::new(
        Interaction::Operation("websocket-bind".into()),
        &ctx.clone().unwrap_or_else(|_| base.clone()),
    );
    record.resource_type = Some(RESOURCE_TYPE.into());
    record.id = Some(id.to_string());
    let outcome = match ctx {
        Ok(ctx) => check(state, bound, id, ctx).await,
        Err(why) => Err((StatusCode::UNAUTHORIZED, why)),
    };
    if let Err((status, why)) = &outcome {
        record.outcome = Outcome::from_status(status.as_u16(), why.clone());
        record.denied = *status == StatusCode::FORBIDDEN;
    }
    if let Err(e) = state.audit.record(&record).await {
        bound.remove(id);
        return Err(format!(
            "the bind could not be audited ({e}); try again later"
        ));
    }
    outcome.map_err(|(_, why)| why)
}

async fn check(
    state: &AppState,
    bound: &mut Bound,
    id: &str,
    ctx: AccessContext,
) -> Result<(), (StatusCode, String)> {
    if bound.len() >= MAX_BINDINGS && !bound.contains_key(id) {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("a socket binds at most {MAX_BINDINGS} subscriptions"),
        ));
    }
    ctx.decide(RESOURCE_TYPE, Action::Read)
        .map_err(|d| (StatusCode::FORBIDDEN, d.0))?;
    let missing = || {
        (
            StatusCode::NOT_FOUND,
            format!("{RESOURCE_TYPE}/{id} does not exist"),
        )
    };
    if crate::fhir::types::Id::parse(id).is_err() {
        return Err(missing());
    }
    let stored = state
        .store
        .read_now(&ctx, RESOURCE_TYPE, id, None)
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?
        .filter(|v| !v.deleted)
        .ok_or_else(missing)?;
    let resource: Value = serde_json::from_slice(&stored.body).map_err(|_| missing())?;
    if resource.pointer("/channel/type").and_then(Value::as_str) != Some("websocket") {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{RESOURCE_TYPE}/{id} is not a websocket subscription"),
        ));
    }
    let key = id.to_string();
    let (row, owner) = state
        .store
        .call(move |s| {
            Ok((
                s.subscription_state(&key)?,
                crate::subscription::owner_of(s, &key)?,
            ))
        })
        .await
        .map_err(|e| (StatusCode::SERVICE_UNAVAILABLE, e.to_string()))?;
    let row = row.ok_or_else(missing)?;
    if !owner.is_some_and(|o| crate::subscription::is_owner(&ctx, &o)) {
        return Err((
            StatusCode::FORBIDDEN,
            format!("only the client and user that wrote {RESOURCE_TYPE}/{id} may bind it"),
        ));
    }
    if row.status != "active" {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{RESOURCE_TYPE}/{id} is not active (status {})", row.status),
        ));
    }
    bound.insert(id.to_string(), row.delivered);
    Ok(())
}
