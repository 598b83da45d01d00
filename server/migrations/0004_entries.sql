-- Every listed entry accounted for, and sync deletions deferred until the copies are done.

ALTER TABLE tasks ADD COLUMN bytes_excluded BIGINT NOT NULL DEFAULT 0;

-- Listed entries that got no Copy job: found up to date by the listing ('skipped'), left out by
-- the filters ('excluded'), or skipped with a reason (symbolic links where the destination
-- cannot hold them). Failed entries are in `failures` (kind 'entry'). With the Copy and Upload
-- jobs' kept payloads and `failures`, this is the per-file report.
CREATE TABLE entries (
    task_id   TEXT NOT NULL,
    path      TEXT NOT NULL,
    size      BIGINT NOT NULL,
    outcome   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    job_seq   BIGINT NOT NULL,
    PRIMARY KEY (task_id, path)
);

-- Sync: destination entries the source does not have, found by the List job of `dir`; deleted
-- by Delete jobs once every copy of the task is done, unless `dir` had a failed entry.
CREATE TABLE deletions (
    task_id   TEXT NOT NULL,
    path      TEXT NOT NULL,
    dir       TEXT NOT NULL,
    size      BIGINT NOT NULL,
    PRIMARY KEY (task_id, path)
);

-- Directories of the source with at least one entry that failed: sync deletes nothing there.
CREATE TABLE dirty_dirs (
    task_id   TEXT NOT NULL,
    dir       TEXT NOT NULL,
    PRIMARY KEY (task_id, dir)
);

-- Sync: destination entries that could not be deleted (their failures have kind 'delete').
ALTER TABLE tasks ADD COLUMN deletes_failed BIGINT NOT NULL DEFAULT 0;
