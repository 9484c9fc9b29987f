-- Webhook deliveries already handled, by the sender's delivery id (Jira: X-Atlassian-Webhook-Identifier, the
-- same on every retry of one delivery): a redelivery is answered from here and creates nothing.
CREATE TABLE webhook_deliveries (
    source      TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    outcome     TEXT NOT NULL,
    job_id      TEXT,
    PRIMARY KEY (source, delivery_id)
);
CREATE INDEX webhook_deliveries_received ON webhook_deliveries (received_at);
