-- The shard commit statement (storage/shard_store.py) updates the loans a batch changed
-- with an UPDATE, which silently skips a row that is not there. Its last step passes the
-- count it updated to this function, which fails the whole statement (so nothing of the
-- batch commits) when it is not the count the shard expected: memory and Postgres would
-- otherwise differ without anyone knowing. The shard then reloads from Postgres.
CREATE FUNCTION lendcore_check_commit(fenced bigint, updated bigint, expected bigint)
RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF fenced = 1 AND updated <> expected THEN
    RAISE EXCEPTION 'commit updated % of the % stored loans it changed', updated, expected
      USING ERRCODE = 'data_corrupted';
  END IF;
  RETURN fenced;
END
$$;
