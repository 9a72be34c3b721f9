-- Post-loan collections (贷后催收) and the connector outbox of end of day (DOMAIN.md §5;
-- lending/collections.py). Every table is shard-owned and written in the shard's ONE fenced
-- group commit (storage/shard_store.py), with the loans the change belongs to.

-- One collection case per overdue episode of a loan. `state` is the whole
-- lending.collections.CollectionCase as JSON (what the operator API shows); the columns
-- beside it are what the queues filter and sort by.
CREATE TABLE collection_cases (
    shard_id     integer NOT NULL,
    case_id      text    NOT NULL,
    loan_id      text    NOT NULL,
    status       text    NOT NULL,          -- open | closed
    bucket       text    NOT NULL,
    dpd          integer NOT NULL,
    assignee     text,                      -- collector:<operator> | agency:<id> | NULL
    follow_up_on date,                      -- a broken promise asks for a call then
    opened_on    date    NOT NULL,
    state        jsonb   NOT NULL,
    PRIMARY KEY (shard_id, case_id)
);
-- The work queues: open cases by bucket (and by assignee), most overdue first. Partial, so
-- they stay as small as the open book however many cases ever closed.
CREATE INDEX collection_cases_queue ON collection_cases (bucket, dpd DESC, case_id)
    WHERE status = 'open';
CREATE INDEX collection_cases_assignee ON collection_cases (assignee, dpd DESC, case_id)
    WHERE status = 'open';
CREATE INDEX collection_cases_loan ON collection_cases (loan_id);

-- A case's history: opened, bucket changes, assignments, notes, contacts and their
-- outcomes, promises and whether they were kept, reminders sent, closing.
CREATE TABLE collection_events (
    shard_id      integer     NOT NULL,
    event_id      bigserial   NOT NULL,
    case_id       text        NOT NULL,
    business_date date        NOT NULL,
    kind          text        NOT NULL,
    actor         text        NOT NULL,
    detail        jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_id, event_id)
);
CREATE INDEX collection_events_case ON collection_events (case_id, event_id);

-- Every contact with a customer (reminders and collectors' calls alike): the
-- contact-frequency limits count these; a shard reloads the last week of them on start.
CREATE TABLE contact_log (
    shard_id    integer NOT NULL,
    customer_id text    NOT NULL,
    contact_on  date    NOT NULL,
    channel     text    NOT NULL,
    actor       text    NOT NULL,
    case_id     text,
    request_id  text
);
CREATE INDEX contact_log_recent ON contact_log (shard_id, contact_on);

-- The outbox: SMS reminders and withholding (代扣) requests planned by end of day, written
-- in the commit of the chunk that planned them, sent by cluster/outbox.py once the business
-- date has advanced. status: pending → sent (sms delivered) | succeeded (withholding
-- debited and applied as a repayment) | failed (outcome says why). A withholding's
-- repayment uses request_id as its external reference, so it is applied exactly once.
CREATE TABLE connector_requests (
    shard_id     integer     NOT NULL,
    request_id   text        NOT NULL,
    kind         text        NOT NULL,      -- sms | withholding
    created_on   date        NOT NULL,      -- the business date whose end of day planned it
    send_on      date        NOT NULL,
    loan_id      text        NOT NULL,
    customer_id  text        NOT NULL,
    partner_id   text        NOT NULL,
    case_id      text,
    amount       bigint      NOT NULL,
    template     text        NOT NULL DEFAULT '',
    status       text        NOT NULL DEFAULT 'pending',
    outcome      text,
    repayment_id text,
    attempts     integer     NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_id, request_id)
);
CREATE INDEX connector_requests_pending ON connector_requests (send_on, shard_id, request_id)
    WHERE status = 'pending';
CREATE INDEX connector_requests_day ON connector_requests (created_on, kind, status);

-- End-of-day counters of the steps after servicing (run report).
ALTER TABLE eod_shard_progress
    ADD COLUMN guarantee_triggers   bigint NOT NULL DEFAULT 0,
    ADD COLUMN cases_opened         bigint NOT NULL DEFAULT 0,
    ADD COLUMN cases_closed         bigint NOT NULL DEFAULT 0,
    ADD COLUMN cases_escalated      bigint NOT NULL DEFAULT 0,
    ADD COLUMN promises_kept        bigint NOT NULL DEFAULT 0,
    ADD COLUMN promises_broken      bigint NOT NULL DEFAULT 0,
    ADD COLUMN reminders            bigint NOT NULL DEFAULT 0,
    ADD COLUMN reminders_suppressed bigint NOT NULL DEFAULT 0,
    ADD COLUMN withholdings         bigint NOT NULL DEFAULT 0,
    ADD COLUMN withholding_amount   bigint NOT NULL DEFAULT 0;
