-- Fewer index entries per repayment (issue 11: a batched repayment's Postgres CPU). Every
-- repayment inserted one repayments row with three index entries and two journal lines with
-- two each; these two changes take three of those nine btree insertions away, text-keyed
-- ones (measured with loadtests/bench_shard_host.py, calls of 1,000: Postgres ~10% less CPU
-- and ~7% less WAL per repayment).

-- (shard_id, partner_id, external_ref) on repayments repeated what partner_refs already
-- enforces, more strongly (its key is global, not per shard): every repayment inserts its
-- ('repayment', external_ref) reference in the same statement (lending/shard_state.py
-- _repay, storage/shard_store.py), and a used one fails that statement. The lookup by
-- reference (cluster/outbox.py) reads partner_refs.
ALTER TABLE repayments DROP CONSTRAINT repayments_shard_id_partner_id_external_ref_key;

-- A journal line's key leads with its loan: a loan's lines (the operator's loan view, a
-- settlement file's first opening, reconciliation) are a range of the primary key, so the
-- separate (shard_id, loan_id) index goes. entry_id stays in the key: ids come from the
-- shard's fenced sequence, so an entry's lines are unique by (entry_id, line_no) already,
-- and every entry is one loan's.
ALTER TABLE journal_lines DROP CONSTRAINT journal_lines_pkey,
    ADD PRIMARY KEY (shard_id, loan_id, entry_id, line_no);
DROP INDEX journal_lines_loan;
