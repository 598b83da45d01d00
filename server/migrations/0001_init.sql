-- BeyondTP store. Portable SQL: the same statements run on SQLite and PostgreSQL.
-- Timestamps are milliseconds since the Unix epoch; booleans are 0/1 integers.

CREATE TABLE tasks (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    state         TEXT NOT NULL,
    src           TEXT NOT NULL,
    dst           TEXT NOT NULL,
    options       TEXT NOT NULL,
    created_ms    BIGINT NOT NULL,
    started_ms    BIGINT,
    finished_ms   BIGINT,
    files_found   BIGINT NOT NULL DEFAULT 0,
    bytes_found   BIGINT NOT NULL DEFAULT 0,
    files_copied  BIGINT NOT NULL DEFAULT 0,
    bytes_copied  BIGINT NOT NULL DEFAULT 0,
    files_skipped BIGINT NOT NULL DEFAULT 0,
    bytes_skipped BIGINT NOT NULL DEFAULT 0,
    files_failed  BIGINT NOT NULL DEFAULT 0,
    bytes_failed  BIGINT NOT NULL DEFAULT 0,
    dirs_failed   BIGINT NOT NULL DEFAULT 0,
    files_retried BIGINT NOT NULL DEFAULT 0,
    -- Highest copy speed seen over the server's sliding window, bytes per second.
    peak_bps      BIGINT NOT NULL DEFAULT 0,
    -- Bumped by pause, resume and retry: part of each job's Nats-Msg-Id, so a job published
    -- again after a pause is not taken for a duplicate by JetStream.
    epoch         BIGINT NOT NULL DEFAULT 0,
    lists_total   BIGINT NOT NULL DEFAULT 0,
    lists_done    BIGINT NOT NULL DEFAULT 0,
    jobs_total    BIGINT NOT NULL DEFAULT 0,
    jobs_done     BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX tasks_state ON tasks (state);

-- The outbox: a job is recorded here before it is published; `state` is
-- pending (not yet published), published, done or failed.
CREATE TABLE jobs (
    task_id       TEXT NOT NULL,
    seq           BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    state         TEXT NOT NULL,
    payload       TEXT NOT NULL,
    pages_applied BIGINT NOT NULL DEFAULT 0,
    client        TEXT,
    files         BIGINT NOT NULL DEFAULT 0,
    bytes         BIGINT NOT NULL DEFAULT 0,
    attempts      BIGINT NOT NULL DEFAULT 0,
    -- Not published before this time (retries wait out their backoff here).
    not_before_ms BIGINT NOT NULL DEFAULT 0,
    finished_ms   BIGINT,
    PRIMARY KEY (task_id, seq)
);
CREATE INDEX jobs_task_state ON jobs (task_id, state, seq);

-- Files (or directories, for a failed listing) that could not be copied, with the reason.
CREATE TABLE failures (
    task_id   TEXT NOT NULL,
    path      TEXT NOT NULL,
    -- 'file', or 'dir' for a directory whose listing failed.
    kind      TEXT NOT NULL,
    size      BIGINT NOT NULL,
    reason    TEXT NOT NULL,
    attempts  BIGINT NOT NULL,
    job_seq   BIGINT NOT NULL,
    PRIMARY KEY (task_id, path)
);

-- Clients (agents), registered by their first heartbeat.
CREATE TABLE agents (
    id            TEXT PRIMARY KEY,
    tenant        TEXT NOT NULL,
    host          TEXT NOT NULL,
    workers       BIGINT NOT NULL,
    busy          BIGINT NOT NULL,
    jobs_done     BIGINT NOT NULL,
    started_ms    BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL,
    online        BIGINT NOT NULL,
    draining      BIGINT NOT NULL DEFAULT 0
);
