-- A stored response (the repayment's full loan view) is ~2 KB: just over the default
-- TOAST threshold, so every insert paid for pglz compression and a second heap + index
-- write. Rows up to a page stay inline and uncompressed instead.
ALTER TABLE idempotency SET (toast_tuple_target = 8160);
ALTER TABLE loans SET (toast_tuple_target = 8160);
