-- Large files copied in parts, filters, sync and dry runs.

ALTER TABLE tasks ADD COLUMN files_excluded BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN files_deleted BIGINT NOT NULL DEFAULT 0;

-- A multipart upload of one large file. `state` is active (parts running), completing (the
-- Complete job is queued), done, aborting (an Abort job is queued) or aborted.
CREATE TABLE uploads (
    task_id      TEXT NOT NULL,
    upload_id    TEXT NOT NULL,
    -- The file, as the JSON of its listing entry.
    file         TEXT NOT NULL,
    parts_total  BIGINT NOT NULL,
    parts_done   BIGINT NOT NULL DEFAULT 0,
    state        TEXT NOT NULL,
    attempt      BIGINT NOT NULL,
    PRIMARY KEY (task_id, upload_id)
);

CREATE TABLE upload_parts (
    task_id    TEXT NOT NULL,
    upload_id  TEXT NOT NULL,
    number     BIGINT NOT NULL,
    etag       TEXT NOT NULL,
    md5        TEXT,
    PRIMARY KEY (task_id, upload_id, number)
);

-- What a dry run found would change: action 'copy' or 'delete'.
CREATE TABLE changes (
    task_id  TEXT NOT NULL,
    action   TEXT NOT NULL,
    path     TEXT NOT NULL,
    size     BIGINT NOT NULL,
    PRIMARY KEY (task_id, action, path)
);
