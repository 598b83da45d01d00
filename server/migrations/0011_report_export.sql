-- What happens when a task ends: its report written to an endpoint (`kind` report,
-- `--report-to`) and a notification posted to a URL (`kind` notify, `--notify`). `target`: the
-- report's endpoint or the URL, as JSON, sealed like the task's endpoints (it may carry
-- credentials); `shown`: the same without credentials, for `task get`. `level`: all or errors
-- (reports). `state`: pending (the task has not ended, or the delivery is tried again from
-- `next_ms` on), done, failed (attempts used up, or refused for good: `last_error`). The leading
-- server delivers the pending rows of ended tasks, so a delivery survives a server stopped
-- after its task ended; it never changes the task's own state.
CREATE TABLE task_deliveries (
    task_id     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    target      TEXT NOT NULL,
    shown       TEXT NOT NULL,
    level       TEXT NOT NULL,
    state       TEXT NOT NULL,
    attempts    BIGINT NOT NULL,
    next_ms     BIGINT NOT NULL,
    last_error  TEXT NOT NULL,
    done_ms     BIGINT,
    PRIMARY KEY (task_id, kind)
);

CREATE INDEX task_deliveries_due ON task_deliveries (state, next_ms);
