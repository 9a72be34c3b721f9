-- Manual review queue (人工审核, DOMAIN.md §6). The audit trail of review decisions is
-- audit_log (0004), written in the same shard commit as the decision.

-- Review history of an application (lending.shard_state.Review as JSON): the maker's
-- proposal while it awaits a checker, and every decision taken. Shard-owned, written in
-- the shard's group commit; jsonb so that the operator API reads it without the shard.
CREATE TABLE application_reviews (
    shard_id       integer NOT NULL,
    application_id text    NOT NULL,
    state          jsonb   NOT NULL,
    PRIMARY KEY (shard_id, application_id)
);

-- The queue: GET /ops/reviews pages through applications in review, oldest first. A
-- partial index stays as small as the queue, however many applications the book holds.
CREATE INDEX applications_review_queue ON applications (created_on, application_id)
    WHERE status IN ('manual_review', 'awaiting_confirmation');
