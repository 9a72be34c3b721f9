-- The operator dashboard's business figures (GET /ops/business-summary,
-- storage/business_store.py): the business date's applications, disbursements and
-- repayments, and the written-off loans, each read through an index bounded by what it
-- counts, never by the size of the book.
--
-- Cost on the commit path: one more index entry per application and per repayment
-- inserted, and per disbursement (its one debit line); none per end-of-day loan update
-- (loans_written_off holds only written-off loans, and an update that leaves `status` as it
-- is stays a HOT update).

-- Applications of a day by status (the day's figures; reasons are read from the same
-- index's range for the statuses that carry them).
CREATE INDEX applications_day ON applications (created_on, status);

-- Repayments valued on a day: count and amount from the index alone once vacuumed.
CREATE INDEX repayments_day ON repayments (value_date) INCLUDE (amount);

-- Loans disbursed on a day: a disbursement entry has exactly one debit line (principal
-- receivable, the loan's principal).
CREATE INDEX journal_lines_disbursed_day ON journal_lines (business_date) INCLUDE (debit)
    WHERE kind = 'disbursement' AND debit > 0;

-- Written-off loans (status written_off): as small as the written-off book.
CREATE INDEX loans_written_off ON loans (shard_id) WHERE status = 'written_off';
