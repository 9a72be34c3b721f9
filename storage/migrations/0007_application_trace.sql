-- The decision trace of an application (msgpack of lending.origination.DecisionTrace), kept
-- apart from its state: shards keep applications in memory, and a trace (~5 KB decoded) is
-- only ever read by operators. Written once, when the application is decided; later updates
-- of the application (booking, review decisions) leave it as it is.
ALTER TABLE applications ADD COLUMN trace bytea;
