-- The day's movements per shard, book and account (debits and credits of the lines dated
-- that day), kept by the shard's commit in the same statement as the lines themselves
-- (storage/shard_store.py, CTE gm), as account_balances is. The daily GL summary
-- (storage/gl_summary.py) is built from these few rows instead of reading the day's
-- journal lines: end of day writes about two lines per loan, and reading them back needed
-- an index on journal_lines (shard_id, business_date), i.e. one more index entry for every
-- line written, by end of day and by every repayment alike.
CREATE TABLE gl_daily_movements (
    shard_id      integer NOT NULL,
    business_date date    NOT NULL,
    book          text    NOT NULL,
    account       text    NOT NULL,  -- code of the chart of accounts, as journal_lines
    debit         bigint  NOT NULL,
    credit        bigint  NOT NULL,
    PRIMARY KEY (shard_id, business_date, book, account)
);

-- The lines already written (a database from before this migration).
INSERT INTO gl_daily_movements (shard_id, business_date, book, account, debit, credit)
SELECT shard_id, business_date, book, account, sum(debit), sum(credit)
FROM journal_lines
GROUP BY shard_id, business_date, book, account;

DROP INDEX journal_lines_date;
