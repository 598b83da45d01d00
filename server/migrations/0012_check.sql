-- Check tasks (mode check): one verdict per path, the per-path report of a check. `verdict` is
-- same, differs, missing (not at the destination), extra (only at the destination; a directory
-- ends in '/') or error; `what` says what differs or why the path could not be compared. `size`
-- and `mtime_ms` are the source's (the destination's for extra), so the retry of a check copies
-- its differing and missing paths with their times. Keyed by path: a verdict counts once, and
-- pages in path order read a range of the key.
CREATE TABLE verdicts (
    task_id   TEXT NOT NULL,
    path      TEXT NOT NULL,
    verdict   TEXT NOT NULL,
    what      TEXT NOT NULL,
    size      BIGINT NOT NULL,
    mtime_ms  BIGINT,
    job_seq   BIGINT NOT NULL,
    PRIMARY KEY (task_id, path)
);

-- The paths that are not the same, for `task report --differences` and the retry of a check.
CREATE INDEX verdicts_differences ON verdicts (task_id, verdict, path);

ALTER TABLE tasks ADD COLUMN check_same BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN check_differs BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN check_missing BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN check_extra BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN check_errors BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN bytes_hashed BIGINT NOT NULL DEFAULT 0;
