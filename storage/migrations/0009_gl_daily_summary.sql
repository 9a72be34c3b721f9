-- Daily GL summary (总账日汇总, DOMAIN.md §5; storage/gl_summary.py): per shard, book,
-- business date and account, the balance before the day, the day's debits and credits and
-- the balance after it. Built by end of day for date D once every shard host has moved to
-- D + 1 (no line dated D can commit any more), one set-based statement per shard.
--
-- Balances are NET DEBIT (debit − credit): the ledger's own sign, independent of the chart
-- file. The operator API turns them into the trial balance's convention (positive on the
-- account's normal side) with the chart of accounts.
--
-- Every account that has ever had a line in the shard and book up to D has a row for D,
-- with or without movement that day, so that a day's rows alone give every closing balance
-- and the next day's opening reads one day back.
CREATE TABLE gl_daily_summary (
    shard_id          integer NOT NULL,
    business_date     date    NOT NULL,
    book              text    NOT NULL,
    account_code      text    NOT NULL,
    opening_net_debit bigint  NOT NULL,  -- every line dated before business_date
    debit             bigint  NOT NULL,  -- the lines dated business_date
    credit            bigint  NOT NULL,
    closing_net_debit bigint  GENERATED ALWAYS AS (opening_net_debit + debit - credit) STORED,
    PRIMARY KEY (shard_id, business_date, book, account_code)
);
-- The operator read and the run report: one date over every shard.
CREATE INDEX gl_daily_summary_date ON gl_daily_summary (business_date, book);

-- The day's lines of one shard. Without it the only index leading with shard_id is the
-- primary key (shard_id, entry_id, ...), so the summary of one day would read the shard's
-- whole journal, and more every day. The price is one more index entry per journal line on
-- the commit path (a 4 + 4 byte key appended at the right end of each shard's range; see
-- docs/performance.md "Daily GL summary" for the measured cost).
CREATE INDEX journal_lines_date ON journal_lines (shard_id, business_date);
