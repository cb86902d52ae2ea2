//! FHIR Subscriptions (R4, DESIGN section 13): a client writes a Subscription
//! whose `criteria` is a search; every create, update and delete that matches it
//! (as its owner may see) becomes a numbered notification, stored in the same
//! transaction as the change, and is delivered over the subscription's rest-hook,
//! signed with the subscription's secret, in order, retried until it lands.
//!
//! - `rules`: what a Subscription must be (criteria that compile, a supported
//!   channel, a safe endpoint), the status the server gives it, and the effect a
//!   write declares for the store.
//! - `deliver`: the safe HTTP POST (https only unless allowed, no private,
//!   loopback or link-local address unless named, checked after DNS resolution at
//!   every delivery, no redirects, timeouts) and the HMAC signature.
//! - `worker`: each node's delivery worker (leases in the database, retries with
//!   backoff, every attempt recorded and audited).
//! - [`Compiler`]: the criteria of the stored Subscriptions compiled with the
//!   search engine for the store, which matches them inside every write.
//!
//! Architecture invariant: matching and storing a notification happen in the
//! write's transaction (store::subscriptions); nothing about a subscription lives
//! only in one node's memory (the compiled criteria are a cache of the database,
//! reloaded when its generation moves).
//! Architecture invariant: a notification reports only what the subscription's
//! owner may search, and a payload carries only what the owner may read.

pub mod deliver;
pub mod rules;
pub mod worker;

use std::sync::{Arc, Weak};

use serde_json::Value;

use crate::access::Owner;
use crate::search::SearchEngine;
use crate::store::{CompileCriteria, Criteria, Registered, Store};

/// Compiles the stored Subscriptions' criteria with the search engine.
pub struct Compiler {
    engine: Weak<SearchEngine>,
}

impl CompileCriteria for Compiler {
    fn compile(&self, registered: Vec<Registered>) -> Vec<Criteria> {
        let Some(engine) = self.engine.upgrade() else {
            return Vec::new();
        };
        let mut out = Vec::with_capacity(registered.len());
        for r in registered {
            let body = serde_json::from_slice::<Value>(&r.body).ok();
            let criteria = body.as_ref().and_then(|v| {
                v.get("criteria")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            });
            let end = body
                .as_ref()
                .and_then(|v| v.get("end").and_then(Value::as_str))
                .and_then(rules::instant_micros);
            let owner = serde_json::from_slice::<Owner>(&r.owner);
            match (criteria, owner) {
                (Some(c), Ok(owner)) => match rules::compile_criteria(&engine, &c) {
                    Ok((resource_type, condition)) => out.push(Criteria {
                        subscription_id: r.id.clone(),
                        resource_type,
                        filters: condition.query.filters,
                        verify: condition.verify,
                        owner: owner.context(&engine, &format!("subscription-{}", r.id)),
                        end,
                    }),
                    Err(e) => {
                        tracing::warn!(subscription.id = %r.id, "a subscription's criteria no longer compile; it is not matched: {e}")
                    }
                },
                _ => {
                    tracing::warn!(subscription.id = %r.id, "a subscription could not be read; it is not matched")
                }
            }
        }
        out
    }
}

/// May `ctx` act on the subscription `owner` wrote (bind its websocket, read its
/// events)? Only the same client for the same user: its events are what the owner
/// may search, which another reader of the Subscription may not, and a bind moves
/// its delivery on. With authorization off every caller is the same (none).
pub fn is_owner(ctx: &crate::access::AccessContext, owner: &Owner) -> bool {
    owner.acts_as(ctx)
}

/// The recorded owner of a subscription, None when it has none or it is unreadable.
pub fn owner_of(store: &Store, id: &str) -> Result<Option<Owner>, crate::store::StoreError> {
    Ok(store
        .subscription_owner(id)?
        .and_then(|(_, json)| serde_json::from_slice::<Owner>(&json).ok()))
}

/// Lets the store match writes against the stored Subscriptions (every process
/// that writes: the server and `fhirgate import`).
pub fn install(store: &Store, engine: &Arc<SearchEngine>) {
    store.set_criteria_compiler(Arc::new(Compiler {
        engine: Arc::downgrade(engine),
    }));
}
