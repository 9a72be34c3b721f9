-- Partner webhooks (issue 14; lending/events.py, cluster/webhooks.py, storage/webhook_store.py).

-- The outbox of partner events. A shard writes each row in the fenced commit of the change
-- it tells of (storage/shard_store.py), only for partners with an endpoint; the gateway's
-- delivery worker POSTs `body` (byte for byte, signed) until the endpoint answers 2xx.
-- status: pending → delivered | failed (max_attempts reached; an operator may redeliver
-- it, which makes it pending again). Events of one application and its loan share
-- `order_key` (the application id) and are sent in event_id order: one is sent only once
-- every earlier one of its key is delivered or failed.
CREATE TABLE webhook_events (
    shard_id        integer     NOT NULL,
    event_id        text        NOT NULL,   -- EV-<shard>-<seq>: seq orders a shard's events
    id              bigserial   NOT NULL,   -- cluster-wide insertion order (operators' pages)
    partner_id      text        NOT NULL,
    event_type      text        NOT NULL,
    order_key       text        NOT NULL,
    loan_id         text,
    occurred_on     date        NOT NULL,   -- business date of the change
    body            text        NOT NULL,   -- the JSON document sent
    status          text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),  -- also the claim of a worker
    last_attempt_at timestamptz,
    last_status     integer,                -- HTTP status of the last attempt, if any
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_id, event_id)
);
-- What the worker claims: pending events that are due (partial: as small as the backlog).
CREATE INDEX webhook_events_due ON webhook_events (next_attempt_at) WHERE status = 'pending';
-- Whether an earlier event of the same key is still pending (the per-loan order).
CREATE INDEX webhook_events_order ON webhook_events (shard_id, order_key, event_id)
    WHERE status = 'pending';
-- Operators' lists: newest first, by status or not; one loan's events.
CREATE UNIQUE INDEX webhook_events_id ON webhook_events (id);
CREATE INDEX webhook_events_status ON webhook_events (status, id);
CREATE INDEX webhook_events_loan ON webhook_events (loan_id, id) WHERE loan_id IS NOT NULL;

-- Endpoints registered through the operator API (PUT /ops/webhooks/endpoints/{partner}).
-- Endpoints declared in config/partners.toml are not stored here (the config is their
-- truth). Cluster reference data like the blacklist: shard_id is always 0. The secret is
-- encrypted with the PII key (AES-256-GCM, gateway/pii.py), never stored in clear.
CREATE TABLE webhook_endpoints (
    shard_id   integer     NOT NULL DEFAULT 0,
    partner_id text        NOT NULL,
    url        text        NOT NULL,
    secret_enc bytea       NOT NULL,
    updated_by text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_id, partner_id)
);
