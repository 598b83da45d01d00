-- The order in which the dispatcher publishes a task's pending jobs, kept with each job so that
-- taking the next ones is a range of an index, not a sort of every pending job: 0 abort (frees
-- the store), 1 complete (finishes files), 2 list (finds work), 3 everything else.
ALTER TABLE jobs ADD COLUMN prio BIGINT NOT NULL DEFAULT 3;
UPDATE jobs SET prio = CASE kind WHEN 'abort' THEN 0 WHEN 'complete' THEN 1 WHEN 'list' THEN 2 ELSE 3 END;
CREATE INDEX jobs_dispatch ON jobs (task_id, state, prio, seq);
-- Cancelled tasks are kept forever; the few with aborts still to publish are found from here.
CREATE INDEX jobs_pending_aborts ON jobs (task_id) WHERE kind = 'abort' AND state = 'pending';
