-- Operator-managed blacklists (DOMAIN.md §6) and the audit trail of operator writes
-- (API.md: "every write is audited (who, what, when, before/after)").
--
-- blacklist is cluster reference data, not shard-owned: every gateway needs the whole list
-- (it is loaded whole into Redis sets, which screening reads), no shard actor reads or
-- writes it, and (kind, value_hash) is unique book-wide. Its rows therefore all carry
-- shard_id 0: when Postgres is split by shard group the table lives with shard 0's group
-- (or is a Citus reference table), and one read rebuilds Redis. It is written by the
-- gateway's operator API, never by a shard's lease owner.
CREATE TABLE blacklist (
    shard_id   integer     NOT NULL DEFAULT 0,  -- always 0: cluster reference data (above)
    kind       text        NOT NULL CHECK (kind IN ('id_number', 'phone', 'device')),
    -- id_number and phone: the PII vault's keyed hash (never the value in clear);
    -- device: the device id as partners send it.
    value_hash text        NOT NULL,
    reason     text        NOT NULL,
    added_by   text        NOT NULL,
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (kind, value_hash)
);
CREATE INDEX blacklist_added_at ON blacklist (added_at);

-- One row per operator write, whatever it is (blacklist entries, review decisions, ...).
-- shard_id: the shard of the object written (0 for cluster reference data such as the
-- blacklist), so that the audit row commits in the same transaction, on the same shard, as
-- the write it describes. target names the object ("blacklist:device:d-42",
-- "application:AP-0003-0000000042", ...); before/after are its JSON views (NULL when the
-- object did not exist before / does not exist after).
CREATE TABLE audit_log (
    shard_id integer     NOT NULL,
    audit_id bigserial,
    at       timestamptz NOT NULL DEFAULT now(),
    actor    text        NOT NULL,
    action   text        NOT NULL,
    target   text        NOT NULL,
    before   jsonb,
    after    jsonb,
    PRIMARY KEY (shard_id, audit_id)
);
CREATE INDEX audit_log_target ON audit_log (target, audit_id);
