-- Tenants of a multi-tenant server and their API tokens (only a SHA-256 hash of each is kept).

-- Quotas: most running tasks at once, and a speed limit shared by all running tasks (NULL: none).
CREATE TABLE tenants (
    name               TEXT PRIMARY KEY,
    created_ms         BIGINT NOT NULL,
    max_running_tasks  BIGINT,
    speed_limit        BIGINT
);

CREATE TABLE api_tokens (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    hash        TEXT NOT NULL UNIQUE,
    label       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);

CREATE INDEX api_tokens_tenant ON api_tokens (tenant);
CREATE INDEX tasks_tenant ON tasks (tenant, created_ms);

-- Named endpoints of a tenant (`NAME:/path` in tasks); the options (credentials) as JSON, sealed
-- with the server's key when it has one.
CREATE TABLE endpoints (
    tenant      TEXT NOT NULL,
    name        TEXT NOT NULL,
    url         TEXT NOT NULL,
    options     TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    PRIMARY KEY (tenant, name)
);
