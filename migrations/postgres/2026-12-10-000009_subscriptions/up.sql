-- FHIR Subscriptions (issue 15). The Subscription resource itself is an ordinary,
-- sealed resource; these tables hold what delivery needs beside it, in the
-- database so that every node sees the same state and nothing is lost on restart.

-- One row per Subscription resource that is not deleted. `generation` of
-- subscription_state moves on with every change here, so each node reloads its
-- compiled criteria when another node changed them. `owner`: the creator's access
-- (scopes, patient, user), sealed: a subscription only notifies what its owner may
-- read. `last_event`: the subscription's event numbers handed out (1, 2, 3, ...);
-- `delivered`: the highest delivered in order. The lease lets one node deliver a
-- subscription's events at a time; `next_attempt` and `failing_since` carry the
-- retry schedule across restarts and nodes (Unix microseconds).
CREATE TABLE subscriptions (
    subscription_id TEXT PRIMARY KEY NOT NULL,
    resource_type TEXT NOT NULL,
    criteria_type TEXT NOT NULL,
    channel TEXT NOT NULL,
    status TEXT NOT NULL,
    created_version BIGINT NOT NULL,
    key_id BIGINT NOT NULL,
    owner BYTEA NOT NULL,
    last_event BIGINT NOT NULL,
    delivered BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt BIGINT NOT NULL,
    failing_since BIGINT,
    lease_owner TEXT,
    lease_until BIGINT NOT NULL,
    error TEXT
);
CREATE INDEX ix_subscriptions_due ON subscriptions (status, next_attempt);

CREATE TABLE subscription_state (
    id INTEGER PRIMARY KEY NOT NULL,
    generation BIGINT NOT NULL
);
INSERT INTO subscription_state (id, generation) VALUES (1, 0);

-- The notifications: written in the transaction of the change they report, so a
-- committed change always has its event and a rolled-back one never does. Ids and
-- versions only (no content): the payload is read at delivery, as the owner.
CREATE TABLE subscription_events (
    subscription_id TEXT NOT NULL,
    event_number BIGINT NOT NULL,
    resource_type TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    version_id BIGINT NOT NULL,
    action TEXT NOT NULL,
    recorded BIGINT NOT NULL,
    PRIMARY KEY (subscription_id, event_number)
);

-- Every delivery attempt, successful or not.
CREATE TABLE subscription_attempts (
    subscription_id TEXT NOT NULL,
    event_number BIGINT NOT NULL,
    attempted BIGINT NOT NULL,
    node TEXT NOT NULL,
    outcome TEXT NOT NULL,
    status_code BIGINT,
    detail TEXT
);
CREATE INDEX ix_subscription_attempts ON subscription_attempts (subscription_id, event_number);
