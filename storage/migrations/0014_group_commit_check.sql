-- The commit statement (storage/shard_store.py) now fences one or more shards of a host in
-- one statement: it writes the batches of all of them, or of none. Its last step passes
-- how many shards the fence matched and how many it had to: when only some matched (a
-- newer owner took one), this fails the whole statement, so the shards still owned are
-- committed again one by one. When none matched, the writes were already empty (each is
-- conditioned on the fence) and the caller sees 0. The stored-loans check of 0013 stays.
DROP FUNCTION IF EXISTS lendcore_check_commit(bigint, bigint, bigint);

CREATE FUNCTION lendcore_check_group_commit(
  fenced bigint, shards bigint, updated bigint, expected bigint
) RETURNS bigint LANGUAGE plpgsql AS $$
BEGIN
  IF fenced > 0 AND fenced <> shards THEN
    RAISE EXCEPTION 'commit fenced % of its % shards', fenced, shards
      USING ERRCODE = 'lock_not_available';
  END IF;
  IF fenced = shards AND updated <> expected THEN
    RAISE EXCEPTION 'commit updated % of the % stored loans it changed', updated, expected
      USING ERRCODE = 'data_corrupted';
  END IF;
  RETURN fenced;
END
$$;
