-- Retention of subscription events and delivery attempts
-- (`subscriptions.retention_hours`): the delivery worker removes what is older,
-- a bounded batch at a time, found by these.
CREATE INDEX ix_subscription_events_recorded ON subscription_events (recorded);
CREATE INDEX ix_subscription_attempts_attempted ON subscription_attempts (attempted);
