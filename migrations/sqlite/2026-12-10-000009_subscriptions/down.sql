DROP TABLE subscription_attempts;
DROP TABLE subscription_events;
DROP TABLE subscription_state;
DROP TABLE subscriptions;
