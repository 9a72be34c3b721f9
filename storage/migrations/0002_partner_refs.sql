-- Partner references that API.md makes unique per partner across the whole book (a
-- repayment's external_ref "for good", an application's partner_application_id), while the
-- objects that carry them live on different shards. The row is written in the commit
-- statement of the shard that owns the object (shard_id says which); the primary key is
-- what refuses a second use from any shard. When Postgres is split by shard group, this
-- table is the one global table (a Citus reference table, or a small central database).
CREATE TABLE partner_refs (
    partner_id text    NOT NULL,
    kind       text    NOT NULL,   -- 'repayment' or 'application'
    ref        text    NOT NULL,
    shard_id   integer NOT NULL,
    object_id  text    NOT NULL,
    PRIMARY KEY (partner_id, kind, ref)
);

INSERT INTO partner_refs (partner_id, kind, ref, shard_id, object_id)
SELECT partner_id, 'repayment', external_ref, shard_id, repayment_id FROM repayments
ON CONFLICT DO NOTHING;  -- a ref used on two shards before this table: keep one, start up
INSERT INTO partner_refs (partner_id, kind, ref, shard_id, object_id)
SELECT partner_id, 'application', partner_application_id, shard_id, application_id
FROM applications
ON CONFLICT DO NOTHING;
