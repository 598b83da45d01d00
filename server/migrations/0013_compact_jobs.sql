-- A done Copy, Complete or Upload job keeps only what the per-file report shows of its files, as
-- a compact JSON without endpoints (`{"done":[[path, size, flags], ...]}`, see
-- server/src/kept.rs), no longer its whole sealed payload; jobs done before this migration keep
-- theirs and are read as before.
--
-- The report's lists page by key (`WHERE (key) > (last) ORDER BY key LIMIT n`): a dry run's
-- changes by path then action, and metadata not kept by path then job, each on an index in
-- that order.
CREATE INDEX changes_by_path ON changes (task_id, path, action);
CREATE INDEX not_kept_by_path ON not_kept (task_id, path, job_seq);
