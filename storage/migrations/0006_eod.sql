-- End of day (日终批处理, DOMAIN.md §5; cluster/eod.py).

-- Per-shard progress of the run for one business date. Written by the shard in the SAME
-- fenced commit as the loans a chunk closed (storage/shard_store.py), so the counts are
-- exactly those of the committed loans, whatever crashed. `remaining` is what the last chunk
-- left; `finished_at` is set by the chunk that left nothing, with the shard's buckets and
-- classifications after the run.
CREATE TABLE eod_shard_progress (
    shard_id            integer     NOT NULL,
    business_date       date        NOT NULL,
    processed           bigint      NOT NULL DEFAULT 0,
    accrued_interest    bigint      NOT NULL DEFAULT 0,
    accrued_penalty     bigint      NOT NULL DEFAULT 0,
    became_overdue      bigint      NOT NULL DEFAULT 0,
    non_accrual_started bigint      NOT NULL DEFAULT 0,
    written_off         bigint      NOT NULL DEFAULT 0,
    chunks              integer     NOT NULL DEFAULT 0,
    remaining           bigint      NOT NULL DEFAULT 0,
    buckets             jsonb,
    classifications     jsonb,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    PRIMARY KEY (shard_id, business_date)
);

-- One row per business date run (a cluster row: shard_id 0 by convention). status running
-- until the transaction that advances the business date marks it done with its report.
CREATE TABLE eod_runs (
    business_date date        PRIMARY KEY,
    shard_id      integer     NOT NULL DEFAULT 0,
    status        text        NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    attempts      integer     NOT NULL DEFAULT 1,
    report        jsonb
);
