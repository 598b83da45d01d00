-- The client registry is kept per tenant: a heartbeat counts only for the tenant of the subject
-- it came on, so a client id one tenant uses cannot be taken over by another's heartbeats. A
-- shared client has one row per tenant. The rows are refilled by the next heartbeats.
DROP TABLE agents;
CREATE TABLE agents (
    tenant        TEXT NOT NULL,
    id            TEXT NOT NULL,
    host          TEXT NOT NULL,
    workers       BIGINT NOT NULL,
    busy          BIGINT NOT NULL,
    jobs_done     BIGINT NOT NULL,
    started_ms    BIGINT NOT NULL,
    last_seen_ms  BIGINT NOT NULL,
    online        BIGINT NOT NULL,
    draining      BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, id)
);
