-- The spine's schema. Every shard-owned table leads with shard_id so that Postgres can later
-- be split by shard group (a database per group, or Citus distributing on shard_id) without
-- changing the code that writes: no transaction ever touches two shards.

CREATE TABLE cluster_meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

-- One row per logical shard. epoch increases on every takeover; each group commit begins with
-- UPDATE ... WHERE epoch = <mine>, so a stale owner's commit matches zero rows and writes nothing.
CREATE TABLE shard_lease (
    shard_id   integer PRIMARY KEY,
    owner      text,
    epoch      bigint NOT NULL DEFAULT 0,
    next_seq   bigint NOT NULL DEFAULT 1,   -- id counter of the shard, advanced in each commit
    renewed_at timestamptz
);

CREATE TABLE customers (
    shard_id    integer NOT NULL,
    customer_id text    NOT NULL,
    id_hash     text    NOT NULL,           -- keyed hash of the ID number (lookup without clear text)
    state       bytea   NOT NULL,           -- msgpack of lending.shard_state.Customer (PII encrypted)
    PRIMARY KEY (shard_id, customer_id),
    UNIQUE (shard_id, id_hash)
);

CREATE TABLE applications (
    shard_id               integer NOT NULL,
    application_id         text    NOT NULL,
    partner_id             text    NOT NULL,
    partner_application_id text    NOT NULL,
    customer_id            text    NOT NULL,
    status                 text    NOT NULL,
    created_on             date    NOT NULL,
    state                  bytea   NOT NULL,
    PRIMARY KEY (shard_id, application_id),
    UNIQUE (shard_id, partner_id, partner_application_id)
);

CREATE TABLE loans (
    shard_id              integer NOT NULL,
    loan_id               text    NOT NULL,
    customer_id           text    NOT NULL,
    partner_id            text    NOT NULL,
    status                text    NOT NULL,
    principal_outstanding bigint  NOT NULL,
    version               integer NOT NULL,
    state                 bytea   NOT NULL,
    PRIMARY KEY (shard_id, loan_id)
);

CREATE TABLE repayments (
    shard_id     integer NOT NULL,
    repayment_id text    NOT NULL,
    loan_id      text    NOT NULL,
    partner_id   text    NOT NULL,
    external_ref text    NOT NULL,
    kind         text    NOT NULL,
    amount       bigint  NOT NULL,
    value_date   date    NOT NULL,
    penalty      bigint  NOT NULL,
    fee          bigint  NOT NULL,
    interest     bigint  NOT NULL,
    principal    bigint  NOT NULL,
    PRIMARY KEY (shard_id, repayment_id),
    UNIQUE (shard_id, partner_id, external_ref)
);

-- Journal: one row per line; an entry is the lines sharing entry_id. Never updated.
CREATE TABLE journal_lines (
    shard_id      integer NOT NULL,
    entry_id      text    NOT NULL,
    line_no       smallint NOT NULL,
    business_date date    NOT NULL,
    book          text    NOT NULL,
    loan_id       text    NOT NULL,
    cause         text    NOT NULL,         -- id of the command that caused the entry
    kind          text    NOT NULL,         -- disbursement, repayment, ...
    account       text    NOT NULL,
    debit         bigint  NOT NULL CHECK (debit >= 0),
    credit        bigint  NOT NULL CHECK (credit >= 0),
    PRIMARY KEY (shard_id, entry_id, line_no)
);
CREATE INDEX journal_lines_loan ON journal_lines (shard_id, loan_id);

-- Running totals per shard, book and account, maintained in the same commit as the lines:
-- the trial balance reads these instead of summing the whole journal.
CREATE TABLE account_balances (
    shard_id integer NOT NULL,
    book     text    NOT NULL,
    account  text    NOT NULL,
    debit    bigint  NOT NULL,
    credit   bigint  NOT NULL,
    PRIMARY KEY (shard_id, book, account)
);

-- Durable idempotency: the response of every command that reached a shard, written in the
-- same transaction as its effect. Redis holds the fast copy; this one survives Redis.
CREATE TABLE idempotency (
    shard_id     integer NOT NULL,
    partner_id   text    NOT NULL,
    idem_key     text    NOT NULL,
    request_hash text    NOT NULL,
    status       smallint NOT NULL,
    body         bytea   NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_id, partner_id, idem_key)
);
