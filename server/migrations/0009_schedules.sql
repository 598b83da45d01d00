-- Schedules: a task template fired by a cron pattern or a fixed interval, from the leading
-- server. `next_fire_ms` is advanced (compare-and-set on its old value) in the same transaction
-- that records the run, so a firing happens once whatever the restarts. `template` is the
-- `task.create` request (JSON, sealed with the server's key when it has one: it may carry
-- endpoint credentials). `state`: active or paused; `paused_reason` says why a schedule paused
-- itself. `failures` counts the failed runs in a row.
CREATE TABLE schedules (
    tenant         TEXT NOT NULL,
    name           TEXT NOT NULL,
    cron           TEXT NOT NULL,
    every_secs     BIGINT NOT NULL,
    timezone       TEXT NOT NULL,
    template       TEXT NOT NULL,
    state          TEXT NOT NULL,
    paused_reason  TEXT NOT NULL,
    max_failures   BIGINT NOT NULL,
    failures       BIGINT NOT NULL,
    next_fire_ms   BIGINT NOT NULL,
    created_ms     BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);

CREATE INDEX schedules_due ON schedules (state, next_fire_ms);

-- The runs of a schedule, numbered from 1. `fire_ms`: the firing time the run stands for;
-- `at_ms`: when it was recorded. `outcome`: pending (claimed, its task not created yet), started,
-- then the task's final state (completed, failed, cancelled) or deleted; skipped (the previous
-- run was still going); error (the task could not be created or started: `reason`).
CREATE TABLE schedule_runs (
    tenant    TEXT NOT NULL,
    schedule  TEXT NOT NULL,
    seq       BIGINT NOT NULL,
    fire_ms   BIGINT NOT NULL,
    at_ms     BIGINT NOT NULL,
    task_id   TEXT NOT NULL,
    outcome   TEXT NOT NULL,
    reason    TEXT NOT NULL,
    PRIMARY KEY (tenant, schedule, seq)
);

CREATE INDEX schedule_runs_outcome ON schedule_runs (outcome);
