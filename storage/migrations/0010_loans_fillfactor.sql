-- End of day rewrites every open loan's row once a day. With pages left a third empty, the
-- new version of a row usually fits on its own page: a HOT update, which neither inserts
-- into the primary key index nor leaves work for it (loans has no other index).
ALTER TABLE loans SET (fillfactor = 70);
