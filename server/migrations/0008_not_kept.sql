-- Copied files whose destination could not hold some of their metadata (an S3 object's content
-- type, cache control or user metadata on a file system; a mode or owner asked for with
-- `--preserve owner` on an object store; an owner a client that is not root could not give).
-- Only those files have a row; `what` names what was not kept. Read beside the kept payload of
-- the job that copied the file (`job_seq`) for the per-file report.
CREATE TABLE not_kept (
    task_id  TEXT NOT NULL,
    job_seq  BIGINT NOT NULL,
    path     TEXT NOT NULL,
    what     TEXT NOT NULL,
    PRIMARY KEY (task_id, job_seq, path)
);
