-- Settlement files (清算对账文件, DOMAIN.md §7; lending/settlement.py,
-- storage/settlement_store.py, cluster/settlement.py): per book other than the lender's own
-- (`funder:<id>`, `guarantor:<partner>`) and closed business date, one CSV file of the
-- day's disbursements, collections by component, compensation and each moved loan's
-- closing balances in that book, built by end of day after the daily GL summary.

-- The day's lines of the books other than `own`, per date and shard. Partial: an own-book
-- line (every line of a self-funded loan, the lender's part of a joint one) adds no index
-- entry, so the commit path of the own book pays nothing for it.
CREATE INDEX journal_lines_settlement ON journal_lines (business_date, shard_id)
    WHERE book <> 'own';

-- One row per shard, book, loan and date with a movement in that book: the file's loan
-- record, and the chain of closing balances (a loan's next row opens on its latest one,
-- found through the primary key). Written once per shard and date, with its
-- settlement_shard_days row, in one transaction.
CREATE TABLE settlement_lines (
    shard_id                        integer NOT NULL,
    book                            text    NOT NULL,
    loan_id                         text    NOT NULL,
    business_date                   date    NOT NULL,
    disbursed_principal             bigint  NOT NULL,
    collected_principal             bigint  NOT NULL,
    collected_interest              bigint  NOT NULL,
    collected_fee                   bigint  NOT NULL,
    collected_penalty               bigint  NOT NULL,
    collected_prepayment_fee        bigint  NOT NULL,
    collected_guarantee_receivable  bigint  NOT NULL,
    collected_total                 bigint  NOT NULL,
    compensation_received           bigint  NOT NULL,
    compensation_paid               bigint  NOT NULL,
    other_cash_in                   bigint  NOT NULL,
    other_cash_out                  bigint  NOT NULL,
    net_cash                        bigint  NOT NULL,
    closing_principal_normal        bigint  NOT NULL,
    closing_principal_overdue       bigint  NOT NULL,
    closing_interest_receivable     bigint  NOT NULL,
    closing_penalty_receivable      bigint  NOT NULL,
    closing_fee_receivable          bigint  NOT NULL,
    closing_guarantee_receivable    bigint  NOT NULL,
    closing_off_balance_interest    bigint  NOT NULL,
    closing_written_off_principal   bigint  NOT NULL,
    PRIMARY KEY (shard_id, book, loan_id, business_date)
);
-- One file's records (a book and date over every shard).
CREATE INDEX settlement_lines_file ON settlement_lines (business_date, book);

-- A shard's lines of a date are built (the claim is taken first in the building
-- transaction, so a concurrent builder waits for it, then skips the shard); `books` are
-- the books the shard moved that day.
CREATE TABLE settlement_shard_days (
    shard_id      integer     NOT NULL,
    business_date date        NOT NULL,
    books         text[]      NOT NULL DEFAULT '{}',
    loans         integer     NOT NULL DEFAULT 0,
    built_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_id, business_date)
);

-- The files: written once, never changed (a cluster row: shard_id 0 by convention).
-- `content` is the file's exact bytes; `sha256` the digest its checksum record states.
CREATE TABLE settlement_files (
    business_date date        NOT NULL,
    book          text        NOT NULL,
    shard_id      integer     NOT NULL DEFAULT 0,
    loans         integer     NOT NULL,
    totals        jsonb       NOT NULL,
    sha256        text        NOT NULL,
    content       bytea       NOT NULL,
    generated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (business_date, book)
);
CREATE INDEX settlement_files_book ON settlement_files (book, business_date);
