//! The store: every SQL statement of the server lives here. Queries are portable SQL with `$N`
//! placeholders, so the same statements run on SQLite (embedded default) and PostgreSQL.

use std::time::Duration;

use anyhow::Context as _;
use btp_common::api::{
    ApiError, ClientInfo, ClientShare, DeliveryState, TaskInfo, TaskOptions, TaskState,
};
use btp_common::manifest::Manifest;
use btp_common::wire::{FileEntry, FileFailure, Heartbeat, Job, JobKind};
use btp_common::Endpoint;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::Row;

pub type Db = sqlx::Any;
pub type Pool = sqlx::Pool<Db>;
pub type Tx<'a> = sqlx::Transaction<'a, Db>;

/// Job states in the outbox.
pub mod job_state {
    pub const PENDING: &str = "pending";
    pub const PUBLISHED: &str = "published";
    pub const DONE: &str = "done";
    pub const FAILED: &str = "failed";
    pub const CANCELLED: &str = "cancelled";
}

/// The statements of the dispatch and result paths, which run for every job of every task: each
/// reads a bounded range of an index, never a whole table and never a sort of unbounded rows
/// (`server/tests/query_plans.rs` checks their plans on SQLite and PostgreSQL over a million
/// jobs).
pub mod sql {
    /// Running tasks: `$1` running.
    pub const RUNNING_TASKS: &str =
        "SELECT id, tenant, epoch, created_ms FROM tasks WHERE state = $1";
    /// Tasks with aborts still to publish, from the partial index of pending aborts (a cancelled
    /// task waits for them; cancelled tasks are kept forever, so they are not looked through).
    pub const TASKS_WITH_PENDING_ABORTS: &str =
        "SELECT task_id FROM jobs WHERE kind = 'abort' AND state = 'pending' GROUP BY task_id";
    /// Task `$1` if it is in state `$2`.
    pub const TASK_IN_STATE: &str =
        "SELECT id, tenant, epoch, created_ms FROM tasks WHERE id = $1 AND state = $2";
    /// The next pending jobs of task `$1` (state `$2`), at most `$3`, due by `$4`, of priority at
    /// most `$5`, in dispatch order.
    pub const PENDING_JOBS: &str =
        "SELECT seq, payload, kind FROM jobs WHERE task_id = $1 AND state = $2 AND prio <= $5 \
         AND not_before_ms <= $4 ORDER BY prio, seq LIMIT $3";
    pub const COUNT_JOBS_IN_STATE: &str =
        "SELECT COUNT(*) FROM jobs WHERE task_id = $1 AND state = $2";
    pub const MARK_PUBLISHED: &str =
        "UPDATE jobs SET state = $1 WHERE task_id = $2 AND seq = $3 AND state = $4";
    pub const JOB_BY_SEQ: &str =
        "SELECT kind, state, pages_applied, payload FROM jobs WHERE task_id = $1 AND seq = $2";
    pub const FINISH_JOB: &str =
        "UPDATE jobs SET state = $1, client = $2, attempts = $3, finished_ms = $4, \
         payload = COALESCE($7, payload) WHERE task_id = $5 AND seq = $6";

    // The report's pages: `_FROM` from a row number (the first page, and earlier CLIs'
    // offsets), `_AFTER` after a key (every later page), `$1` the task, `$2` the limit.

    /// Failed files by path, from row `$3`.
    pub const FAILURES_FROM: &str = "SELECT path, size, reason, attempts FROM failures \
         WHERE task_id = $1 ORDER BY path LIMIT $2 OFFSET $3";
    /// Failed files by path, after path `$3`.
    pub const FAILURES_AFTER: &str = "SELECT path, size, reason, attempts FROM failures \
         WHERE task_id = $1 AND path > $3 ORDER BY path LIMIT $2";
    /// Failed source entries (files, entries) by path, from row `$3`.
    pub const REPORT_FAILURES_FROM: &str = "SELECT path, size, reason, attempts FROM failures \
         WHERE task_id = $1 AND kind IN ('file', 'entry') ORDER BY path LIMIT $2 OFFSET $3";
    /// Failed source entries by path, after path `$3`.
    pub const REPORT_FAILURES_AFTER: &str = "SELECT path, size, reason, attempts FROM failures \
         WHERE task_id = $1 AND kind IN ('file', 'entry') AND path > $3 ORDER BY path LIMIT $2";
    /// Entries settled by the listing by path, from row `$3`.
    pub const ENTRIES_FROM: &str = "SELECT path, size, outcome, reason FROM entries \
         WHERE task_id = $1 ORDER BY path LIMIT $2 OFFSET $3";
    /// Entries settled by the listing by path, after path `$3`.
    pub const ENTRIES_AFTER: &str = "SELECT path, size, outcome, reason FROM entries \
         WHERE task_id = $1 AND path > $3 ORDER BY path LIMIT $2";
    /// A dry run's changes by path and action, from row `$3`.
    pub const CHANGES_FROM: &str = "SELECT action, path, size FROM changes \
         WHERE task_id = $1 ORDER BY path, action LIMIT $2 OFFSET $3";
    /// A dry run's changes by path and action, after (`$3`, `$4`).
    pub const CHANGES_AFTER: &str = "SELECT action, path, size FROM changes \
         WHERE task_id = $1 AND (path, action) > ($3, $4) ORDER BY path, action LIMIT $2";
    /// Metadata not kept, by path and job, from row `$3`.
    pub const NOT_KEPT_FROM: &str = "SELECT path, what, job_seq FROM not_kept \
         WHERE task_id = $1 ORDER BY path, job_seq LIMIT $2 OFFSET $3";
    /// Metadata not kept, by path and job, after (`$3`, `$4`).
    pub const NOT_KEPT_AFTER: &str = "SELECT path, what, job_seq FROM not_kept \
         WHERE task_id = $1 AND (path, job_seq) > ($3, $4) ORDER BY path, job_seq LIMIT $2";
    /// Done jobs holding files of the per-file report after job `$2`, in order, at most `$3`.
    pub const DONE_FILE_JOBS: &str = "SELECT seq, payload FROM jobs WHERE task_id = $1 \
         AND seq > $2 AND state = 'done' AND kind IN ('copy', 'upload', 'complete') \
         AND payload <> '' ORDER BY seq LIMIT $3";
}

/// Where a page of a report's rows starts: after the key of the last row of the previous page,
/// or at a row number (the first page is `Offset(0)`; earlier CLIs page by offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PageAt<K> {
    After(K),
    Offset(i64),
}

impl<K> PageAt<K> {
    pub const START: PageAt<K> = PageAt::Offset(0);
}

/// One of the `_FROM`/`_AFTER` statements with its arguments bound: `$1` task, `$2` limit, then
/// the offset or the key's parts.
fn paged<'q>(
    from: &'q str,
    after: &'q str,
    task: &'q str,
    limit: i64,
    at: &'q PageAt<impl KeyParts>,
) -> Q<'q> {
    match at {
        PageAt::Offset(o) => sqlx::query(from).bind(task).bind(limit).bind(*o),
        PageAt::After(k) => k.bind(sqlx::query(after).bind(task).bind(limit)),
    }
}

type Q<'q> = sqlx::query::Query<'q, Db, sqlx::any::AnyArguments<'q>>;

/// The parts of a page key, bound in order.
pub trait KeyParts {
    fn bind<'q>(&'q self, q: Q<'q>) -> Q<'q>;
}

impl KeyParts for String {
    fn bind<'q>(&'q self, q: Q<'q>) -> Q<'q> {
        q.bind(self.as_str())
    }
}

impl KeyParts for (String, String) {
    fn bind<'q>(&'q self, q: Q<'q>) -> Q<'q> {
        q.bind(self.0.as_str()).bind(self.1.as_str())
    }
}

impl KeyParts for (String, i64) {
    fn bind<'q>(&'q self, q: Q<'q>) -> Q<'q> {
        q.bind(self.0.as_str()).bind(self.1)
    }
}

/// The dispatch order of a job kind (the `prio` column): aborts free the store, completions
/// finish files, listings find work, then the rest.
pub fn dispatch_prio(kind: &str) -> i64 {
    match kind {
        "abort" => 0,
        "complete" => 1,
        "list" => 2,
        _ => 3,
    }
}

/// The one place sqlx errors become ours: busy/locked/pool errors are retryable.
pub fn map_sqlx(e: sqlx::Error) -> ApiError {
    match &e {
        sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::PoolClosed => ApiError::new(
            btp_common::api::ErrorCode::Unavailable,
            format!("database unavailable: {e}"),
        ),
        _ => ApiError::internal(format!("database error: {e}")),
    }
}

#[derive(Clone)]
pub struct Store {
    pool: Pool,
    sqlite: bool,
}

/// A task row with its decoded endpoints.
#[derive(Clone, Debug)]
pub struct TaskRow {
    pub info: TaskInfo,
    pub src: Endpoint,
    pub dst: Endpoint,
    /// The manifest read instead of a listing of the source (`--files-from`).
    pub files_from: Option<Manifest>,
    /// Publishing generation, part of each job's Nats-Msg-Id.
    pub epoch: i64,
}

/// A job row loaded for applying a result.
pub struct JobRow {
    pub kind: String,
    pub state: String,
    pub pages_applied: i64,
    pub payload: String,
}

impl Store {
    /// Opens (creating if missing) the database and runs the migrations. `url` is
    /// `sqlite://PATH` (the embedded default) or `postgres://USER@HOST/DB`.
    pub async fn open(url: &str) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let postgres = url.starts_with("postgres://") || url.starts_with("postgresql://");
        if !sqlite && !postgres {
            anyhow::bail!(
                "unsupported database url '{}' (use sqlite://PATH or postgres://...)",
                redact(url)
            );
        }
        let url = if sqlite && !url.contains('?') {
            format!("{url}?mode=rwc")
        } else {
            url.to_string()
        };
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 8 })
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // WAL lets readers work beside the writer; busy_timeout makes writers wait.
                        sqlx::query("PRAGMA journal_mode = WAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA synchronous = NORMAL")
                            .execute(&mut *conn)
                            .await?;
                        sqlx::query("PRAGMA busy_timeout = 10000")
                            .execute(&mut *conn)
                            .await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .with_context(|| format!("open database {}", redact(&url)))?;
        sqlx::migrate!("./migrations")
            .run(&pool)
            .await
            .context("run database migrations")?;
        Ok(Self { pool, sqlite })
    }

    pub fn backend(&self) -> &'static str {
        if self.sqlite {
            "sqlite"
        } else {
            "postgresql"
        }
    }

    /// Starts a write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`):
    /// a deferred transaction that reads and then writes fails with "database is locked" instead
    /// of waiting when another writer committed in between.
    pub async fn begin(&self) -> Result<Tx<'static>, ApiError> {
        if self.sqlite {
            self.pool
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(map_sqlx)
        } else {
            self.pool.begin().await.map_err(map_sqlx)
        }
    }

    // ---- tasks ----

    pub async fn insert_task(
        &self,
        info: &TaskInfo,
        src: &Endpoint,
        dst: &Endpoint,
        files_from: Option<&Manifest>,
    ) -> Result<(), ApiError> {
        self.insert_task_with(info, src, dst, files_from, &[]).await
    }

    /// Stores a new task and what is delivered when it ends (report export, notification), in
    /// one transaction.
    pub async fn insert_task_with(
        &self,
        info: &TaskInfo,
        src: &Endpoint,
        dst: &Endpoint,
        files_from: Option<&Manifest>,
        deliveries: &[NewDelivery],
    ) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO tasks (id, tenant, state, src, dst, options, created_ms, files_from) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&info.id)
        .bind(&info.tenant)
        .bind(info.state.as_str())
        .bind(crate::seal::seal(to_json(src)))
        .bind(crate::seal::seal(to_json(dst)))
        .bind(to_json(&info.options))
        .bind(info.created_ms)
        .bind(files_from.map(|m| crate::seal::seal(to_json(m))))
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        for d in deliveries {
            sqlx::query(
                "INSERT INTO task_deliveries (task_id, kind, target, shown, level, state, \
                 attempts, next_ms, last_error, done_ms) VALUES ($1, $2, $3, $4, $5, $6, 0, 0, '', NULL)",
            )
            .bind(&info.id)
            .bind(d.kind)
            .bind(crate::seal::seal(d.target.clone()))
            .bind(&d.shown)
            .bind(&d.level)
            .bind(DeliveryState::Pending.as_str())
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        }
        tx.commit().await.map_err(map_sqlx)
    }

    pub async fn task(&self, id: &str) -> Result<TaskRow, ApiError> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?
            .ok_or_else(|| ApiError::not_found(format!("unknown task id '{id}'")))?;
        task_from_row(&row)
    }

    /// Tasks, newest first, optionally only those in `state`; paged with `limit` and `offset`.
    /// Tasks of `tenant`, newest first.
    pub async fn tasks(
        &self,
        tenant: &str,
        state: Option<TaskState>,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<TaskInfo>, ApiError> {
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE tenant = $4 AND ($1 = '' OR state = $1) \
             ORDER BY created_ms DESC, id LIMIT $2 OFFSET $3"
        ))
        .bind(state.map(|s| s.as_str()).unwrap_or(""))
        .bind(limit)
        .bind(offset)
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        rows.iter()
            .map(|r| task_from_row(r).map(|t| t.info))
            .collect()
    }

    // ---- tenants and API tokens ----

    pub async fn create_tenant(&self, t: &btp_common::api::TenantInfo) -> Result<(), ApiError> {
        let name = &t.name;
        let done = sqlx::query(
            "INSERT INTO tenants (name, created_ms, max_running_tasks, speed_limit) \
             VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(t.created_ms)
        .bind(t.max_running_tasks.map(i64::from))
        .bind(t.speed_limit.map(|s| s as i64))
        .execute(&self.pool)
        .await
        .map_err(map_sqlx)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::precondition(format!(
                "tenant '{name}' already exists"
            )));
        }
        Ok(())
    }

    pub async fn tenants(&self) -> Result<Vec<btp_common::api::TenantInfo>, ApiError> {
        let rows = sqlx::query(
            "SELECT name, created_ms, \
             (SELECT COUNT(*) FROM api_tokens k WHERE k.tenant = t.name), \
             (SELECT COUNT(*) FROM tasks s WHERE s.tenant = t.name), \
             max_running_tasks, speed_limit \
             FROM tenants t ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| btp_common::api::TenantInfo {
                name: r.get(0),
                created_ms: r.get(1),
                tokens: r.get::<i64, _>(2) as u64,
                tasks: r.get::<i64, _>(3) as u64,
                max_running_tasks: r.get::<Option<i64>, _>(4).map(|n| n as u32),
                speed_limit: r.get::<Option<i64>, _>(5).map(|n| n as u64),
            })
            .collect())
    }

    /// Tasks of `tenant` running or paused now.
    pub async fn live_tasks_of(&self, tenant: &str) -> Result<i64, ApiError> {
        sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE tenant = $1 AND (state = $2 OR state = $3)",
        )
        .bind(tenant)
        .bind(TaskState::Running.as_str())
        .bind(TaskState::Paused.as_str())
        .fetch_one(&self.pool)
        .await
        .map_err(map_sqlx)
    }

    /// Quotas of the tenants that have one: name, most running tasks, speed limit. Cheap enough
    /// for every start and every second of the allocator (no counting).
    pub async fn tenant_quotas(
        &self,
    ) -> Result<std::collections::HashMap<String, (Option<u32>, Option<u64>)>, ApiError> {
        let rows = sqlx::query(
            "SELECT name, max_running_tasks, speed_limit FROM tenants \
             WHERE max_running_tasks IS NOT NULL OR speed_limit IS NOT NULL",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| {
                (
                    r.get(0),
                    (
                        r.get::<Option<i64>, _>(1).map(|n| n as u32),
                        r.get::<Option<i64>, _>(2).map(|n| n as u64),
                    ),
                )
            })
            .collect())
    }

    pub async fn tenant_exists(&self, name: &str) -> Result<bool, ApiError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(n > 0)
    }

    /// Deletes a tenant and its tokens; refused while it has tasks (in any state) or named
    /// endpoints, so that a tenant created later under the same name inherits nothing.
    pub async fn delete_tenant(&self, name: &str) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        let count = |sql: &'static str| sqlx::query_scalar::<_, i64>(sql).bind(name);
        let tasks = count("SELECT COUNT(*) FROM tasks WHERE tenant = $1")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        let live: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tasks WHERE tenant = $1 AND (state = $2 OR state = $3)",
        )
        .bind(name)
        .bind(TaskState::Running.as_str())
        .bind(TaskState::Paused.as_str())
        .fetch_one(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let endpoints = count("SELECT COUNT(*) FROM endpoints WHERE tenant = $1")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        let schedules = count("SELECT COUNT(*) FROM schedules WHERE tenant = $1")
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        if tasks > 0 || endpoints > 0 {
            return Err(ApiError::precondition(tenant_remains(
                name, tasks, live, endpoints,
            )));
        }
        if schedules > 0 {
            return Err(ApiError::precondition(format!(
                "tenant '{name}' cannot be deleted: it still has {schedules} schedule{}; delete them first (btp schedule delete)",
                if schedules == 1 { "" } else { "s" }
            )));
        }
        let gone = sqlx::query("DELETE FROM tenants WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        if gone.rows_affected() == 0 {
            return Err(ApiError::not_found(format!("unknown tenant '{name}'")));
        }
        sqlx::query("DELETE FROM api_tokens WHERE tenant = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)
    }

    pub async fn insert_token(
        &self,
        info: &btp_common::api::TokenInfo,
        hash: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO api_tokens (id, tenant, hash, label, created_ms) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&info.id)
        .bind(&info.tenant)
        .bind(hash)
        .bind(&info.label)
        .bind(info.created_ms)
        .execute(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    /// The tenant whose token hashes to `hash`, if any.
    pub async fn token_tenant(&self, hash: &str) -> Result<Option<String>, ApiError> {
        sqlx::query_scalar("SELECT tenant FROM api_tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)
    }

    pub async fn tokens(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<btp_common::api::TokenInfo>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, tenant, label, created_ms FROM api_tokens WHERE ($1 = '' OR tenant = $1) \
             ORDER BY tenant, created_ms, id",
        )
        .bind(tenant.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| btp_common::api::TokenInfo {
                id: r.get(0),
                tenant: r.get(1),
                label: r.get(2),
                created_ms: r.get(3),
            })
            .collect())
    }

    pub async fn delete_token(&self, id: &str) -> Result<(), ApiError> {
        let gone = sqlx::query("DELETE FROM api_tokens WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?;
        if gone.rows_affected() == 0 {
            return Err(ApiError::not_found(format!("unknown token id '{id}'")));
        }
        Ok(())
    }

    // ---- named endpoints ----

    /// Records a named endpoint; its options (credentials) are stored sealed when the server
    /// has a key.
    pub async fn create_endpoint(
        &self,
        tenant: &str,
        name: &str,
        url: &str,
        options: &std::collections::BTreeMap<String, String>,
        now: i64,
    ) -> Result<(), ApiError> {
        let done = sqlx::query(
            "INSERT INTO endpoints (tenant, name, url, options, created_ms) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (tenant, name) DO NOTHING",
        )
        .bind(tenant)
        .bind(name)
        .bind(url)
        .bind(crate::seal::seal(to_json(options)))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(map_sqlx)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::precondition(format!(
                "endpoint '{name}' already exists (delete it first)"
            )));
        }
        Ok(())
    }

    /// The tenant's endpoints: name, URL, options and creation time, by name.
    #[allow(clippy::type_complexity)]
    pub async fn endpoints(
        &self,
        tenant: &str,
        name: Option<&str>,
    ) -> Result<
        Vec<(
            String,
            String,
            std::collections::BTreeMap<String, String>,
            i64,
        )>,
        ApiError,
    > {
        let rows = sqlx::query(
            "SELECT name, url, options, created_ms FROM endpoints WHERE tenant = $1 \
             AND ($2 = '' OR name = $2) ORDER BY name",
        )
        .bind(tenant)
        .bind(name.unwrap_or(""))
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        rows.iter()
            .map(|r| {
                let options = from_json(&crate::seal::open(r.get(2))?)?;
                Ok((r.get(0), r.get(1), options, r.get(3)))
            })
            .collect()
    }

    pub async fn delete_endpoint(&self, tenant: &str, name: &str) -> Result<(), ApiError> {
        let gone = sqlx::query("DELETE FROM endpoints WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?;
        if gone.rows_affected() == 0 {
            return Err(ApiError::not_found(format!("unknown endpoint '{name}'")));
        }
        Ok(())
    }

    /// Ids and tenants of running tasks, for the dispatcher.
    pub async fn running_tasks(&self) -> Result<Vec<(String, String, i64)>, ApiError> {
        let mut rows: Vec<(String, String, i64, i64)> = sqlx::query_as(sql::RUNNING_TASKS)
            .bind(TaskState::Running.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        // Cancelled tasks too while aborts of their uploads wait.
        let aborting: Vec<String> = sqlx::query_scalar(sql::TASKS_WITH_PENDING_ABORTS)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        for id in aborting {
            let t: Option<(String, String, i64, i64)> = sqlx::query_as(sql::TASK_IN_STATE)
                .bind(&id)
                .bind(TaskState::Cancelled.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(map_sqlx)?;
            rows.extend(t);
        }
        // Live tasks only: few rows, sorted here rather than by the database.
        rows.sort_by_key(|r| r.3);
        Ok(rows
            .into_iter()
            .map(|(id, tenant, epoch, _)| (id, tenant, epoch))
            .collect())
    }

    /// Running -> paused. Published jobs go back to pending (the caller purges them from the
    /// queue) and the epoch moves on, so they can be published again on resume.
    pub async fn pause_task(&self, id: &str) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        transition(
            &mut tx,
            id,
            &[TaskState::Running],
            TaskState::Paused,
            "paused",
        )
        .await?;
        sqlx::query("UPDATE tasks SET epoch = epoch + 1 WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        requeue_published(&mut tx, id).await?;
        tx.commit().await.map_err(map_sqlx)
    }

    /// Paused -> running.
    pub async fn resume_task(&self, id: &str) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        transition(
            &mut tx,
            id,
            &[TaskState::Paused],
            TaskState::Running,
            "resumed",
        )
        .await?;
        tx.commit().await.map_err(map_sqlx)
    }

    /// Created, running or paused -> cancelled; unfinished jobs are cancelled with it.
    pub async fn cancel_task(&self, id: &str, now: i64) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        let from = [TaskState::Created, TaskState::Running, TaskState::Paused];
        transition(&mut tx, id, &from, TaskState::Cancelled, "cancelled").await?;
        sqlx::query("UPDATE tasks SET finished_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        sqlx::query(
            "UPDATE jobs SET state = $1, payload = '' WHERE task_id = $2 AND state IN ($3, $4)",
        )
        .bind(job_state::CANCELLED)
        .bind(id)
        .bind(job_state::PENDING)
        .bind(job_state::PUBLISHED)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        // Open multipart uploads are aborted by jobs of their own, which still run.
        let open = open_uploads(&mut tx, id).await?;
        if !open.is_empty() {
            let task = load_task_tx(&mut tx, id)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("unknown task id '{id}'")))?;
            let mut aborts = Vec::with_capacity(open.len());
            for (upload_id, path) in open {
                set_upload_state(&mut tx, id, &upload_id, upload_state::ABORTING).await?;
                aborts.push(JobKind::Abort { path, upload_id });
            }
            let n = aborts.len() as i64;
            insert_jobs(
                &mut tx,
                &task,
                task.info.jobs_total as i64,
                aborts,
                Schedule::NOW,
            )
            .await?;
            sqlx::query("UPDATE tasks SET jobs_total = jobs_total + $1 WHERE id = $2")
                .bind(n)
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_sqlx)?;
        }
        tx.commit().await.map_err(map_sqlx)
    }

    /// Completed or failed -> running again, with new jobs for the failed files (and directories)
    /// only. Returns how many files and directories are retried.
    pub async fn retry_task(&self, task: &TaskRow) -> Result<u64, ApiError> {
        let id = &task.info.id;
        let mut tx = self.begin().await?;
        let from = [TaskState::Completed, TaskState::Failed];
        transition(&mut tx, id, &from, TaskState::Running, "retried").await?;
        // Entries the listing could not carry (a name that is not UTF-8, a link loop) fail
        // again whatever a retry does: they stay failed and are not retried.
        let rows = sqlx::query(
            "SELECT kind, path, size FROM failures WHERE task_id = $1 AND kind IN ('file', 'dir') \
             ORDER BY path",
        )
        .bind(id)
        .fetch_all(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if rows.is_empty() {
            return Err(ApiError::precondition(format!(
                "task {id} has no failed files to retry"
            )));
        }
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for r in &rows {
            let kind: String = r.get(0);
            if kind == "dir" {
                dirs.push(r.get::<String, _>(1));
            } else {
                files.push(FileEntry::new(
                    r.get::<String, _>(1),
                    r.get::<i64, _>(2) as u64,
                    None,
                ));
            }
        }
        let opts = &task.info.options;
        let split = crate::planner::split(task);
        let mut kinds = crate::planner::pack_copies(files, opts, split);
        let n_dirs = dirs.len() as i64;
        // A task with a manifest lists no directory: its one failed "directory" is the
        // manifest's List job, which reads the manifest again.
        kinds.extend(dirs.into_iter().map(|d| match &task.files_from {
            Some(m) if d.is_empty() => crate::planner::manifest_job(m, opts),
            _ => crate::planner::list_job(d, opts),
        }));
        let jobs_total: i64 = sqlx::query_scalar("SELECT jobs_total FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        let n_jobs = kinds.len() as i64;
        insert_jobs(&mut tx, task, jobs_total, kinds, Schedule::NOW).await?;
        sqlx::query(
            "UPDATE tasks SET finished_ms = NULL, \
             files_failed = (SELECT COUNT(*) FROM failures WHERE task_id = $3 AND kind = 'entry'), \
             bytes_failed = (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM failures WHERE task_id = $3 AND kind = 'entry'), \
             dirs_failed = 0, \
             lists_total = lists_total + $1, jobs_total = jobs_total + $2, epoch = epoch + 1 WHERE id = $3",
        )
        .bind(n_dirs)
        .bind(n_jobs)
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        sqlx::query("DELETE FROM failures WHERE task_id = $1 AND kind IN ('file', 'dir')")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        // The report and the notification go out again when the retried task ends.
        sqlx::query(
            "UPDATE task_deliveries SET state = $1, attempts = 0, next_ms = 0, last_error = '', \
             done_ms = NULL WHERE task_id = $2",
        )
        .bind(DeliveryState::Pending.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(rows.len() as u64)
    }

    /// Check: one page of a task's verdicts (see [`verdicts_page`]).
    pub async fn verdicts(
        &self,
        task: &str,
        kinds: &[btp_common::wire::VerdictKind],
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<btp_common::wire::Verdict>, ApiError> {
        verdicts_page(&self.pool, task, kinds, after, limit).await
    }

    /// The retry of check task `check`: stores `task` (running) with Copy jobs for exactly the
    /// check's `differs` and `missing` paths, read from its verdicts page by page, in one
    /// transaction. Returns how many files the new task copies.
    pub async fn insert_retry_of_check(
        &self,
        check: &str,
        task: &TaskRow,
    ) -> Result<u64, ApiError> {
        use btp_common::wire::VerdictKind;
        /// Verdicts read per query.
        const PAGE: i64 = 1000;
        let info = &task.info;
        let mut tx = self.begin().await?;
        sqlx::query(
            "INSERT INTO tasks (id, tenant, state, src, dst, options, created_ms, started_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&info.id)
        .bind(&info.tenant)
        .bind(info.state.as_str())
        .bind(crate::seal::seal(to_json(&task.src)))
        .bind(crate::seal::seal(to_json(&task.dst)))
        .bind(to_json(&info.options))
        .bind(info.created_ms)
        .bind(info.started_ms)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let split = crate::planner::split(task);
        let kinds = [VerdictKind::Differs, VerdictKind::Missing];
        let (mut after, mut seq, mut files, mut bytes) = (None::<String>, 0i64, 0i64, 0i64);
        loop {
            let page = verdicts_page(&mut *tx, check, &kinds, after.as_deref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.path.clone());
            let full = page.len() as i64 == PAGE;
            files += page.len() as i64;
            bytes += page.iter().map(|v| v.size as i64).sum::<i64>();
            let entries = page
                .into_iter()
                .map(|v| FileEntry::new(v.path, v.size, v.mtime_ms))
                .collect();
            let jobs = crate::planner::pack_copies(entries, &info.options, split);
            let n = jobs.len() as i64;
            insert_jobs(&mut tx, task, seq, jobs, Schedule::NOW).await?;
            seq += n;
            if !full {
                break;
            }
        }
        if files == 0 {
            return Err(ApiError::precondition(format!(
                "check task {check} found no differing or missing paths: nothing to copy"
            )));
        }
        // Its "listing" is the check's: done from the start.
        sqlx::query(
            "UPDATE tasks SET jobs_total = $1, files_found = $2, bytes_found = $3, \
             lists_total = 1, lists_done = 1 WHERE id = $4",
        )
        .bind(seq)
        .bind(files)
        .bind(bytes)
        .bind(&info.id)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(files as u64)
    }

    /// Moves a created task to running and records its root List job, in one transaction.
    pub async fn start_task(&self, task: &TaskRow, now: i64) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        let updated = sqlx::query(
            "UPDATE tasks SET state = $1, started_ms = $2 WHERE id = $3 AND state = $4",
        )
        .bind(TaskState::Running.as_str())
        .bind(now)
        .bind(&task.info.id)
        .bind(TaskState::Created.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if updated.rows_affected() != 1 {
            return Err(ApiError::precondition(format!(
                "task {} is not in state created",
                task.info.id
            )));
        }
        let root = match &task.files_from {
            Some(m) => crate::planner::manifest_job(m, &task.info.options),
            None => crate::planner::list_job(String::new(), &task.info.options),
        };
        insert_jobs(&mut tx, task, 0, vec![root], Schedule::NOW).await?;
        sqlx::query("UPDATE tasks SET jobs_total = 1, lists_total = 1 WHERE id = $1")
            .bind(&task.info.id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)
    }

    // ---- jobs (outbox) ----

    pub async fn inflight_jobs(&self, task: &str) -> Result<i64, ApiError> {
        sqlx::query_scalar(sql::COUNT_JOBS_IN_STATE)
            .bind(task)
            .bind(job_state::PUBLISHED)
            .fetch_one(&self.pool)
            .await
            .map_err(map_sqlx)
    }

    pub async fn pending_jobs(
        &self,
        task: &str,
        limit: i64,
        now: i64,
        only_aborts: bool,
    ) -> Result<Vec<(i64, String, String)>, ApiError> {
        // Aborts and completions first (they free the store and finish files), then listings
        // (they find work), then copies and parts: the order of `prio`, read off an index.
        let rows = sqlx::query(sql::PENDING_JOBS)
            .bind(task)
            .bind(job_state::PENDING)
            .bind(limit)
            .bind(now)
            .bind(if only_aborts { 0 } else { 3 })
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        rows.iter()
            .map(|r| Ok((r.get(0), crate::seal::open(r.get(1))?, r.get(2))))
            .collect()
    }

    pub async fn mark_published(&self, task: &str, seqs: &[i64]) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        for seq in seqs {
            sqlx::query(sql::MARK_PUBLISHED)
                .bind(job_state::PUBLISHED)
                .bind(task)
                .bind(seq)
                .bind(job_state::PENDING)
                .execute(&mut *tx)
                .await
                .map_err(map_sqlx)?;
        }
        tx.commit().await.map_err(map_sqlx)
    }

    // ---- reports ----

    /// Deletes a task that is not running or paused, with its jobs and failures.
    pub async fn delete_task(&self, id: &str) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        let state: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        let state = state.ok_or_else(|| ApiError::not_found(format!("unknown task id '{id}'")))?;
        if state == TaskState::Running.as_str() || state == TaskState::Paused.as_str() {
            return Err(ApiError::precondition(format!(
                "task {id} cannot be deleted: it is {state} (cancel it first)"
            )));
        }
        for table in [
            "failures",
            "jobs",
            "uploads",
            "upload_parts",
            "changes",
            "entries",
            "deletions",
            "dirty_dirs",
            "not_kept",
            "task_deliveries",
            "verdicts",
        ] {
            sqlx::query(&format!("DELETE FROM {table} WHERE task_id = $1"))
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(map_sqlx)?;
        }
        sqlx::query("DELETE FROM tasks WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)
    }

    /// Number of tasks in each state.
    pub async fn task_counts(&self) -> Result<Vec<(String, i64)>, ApiError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM tasks GROUP BY state")
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Changes a task's speed limit or timetable (any state but finished).
    pub async fn set_speed_limit(
        &self,
        id: &str,
        limit: Option<btp_common::api::SpeedLimit>,
    ) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        let task = load_task_tx(&mut tx, id)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("unknown task id '{id}'")))?;
        if task.info.state.is_finished() {
            return Err(ApiError::precondition(format!(
                "task {id} cannot be changed: it is {}",
                task.info.state.as_str()
            )));
        }
        let mut options = task.info.options;
        options.speed_limit = limit;
        options.validate()?;
        sqlx::query("UPDATE tasks SET options = $1 WHERE id = $2")
            .bind(to_json(&options))
            .bind(id)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)
    }

    /// Raises the task's recorded peak speed to `bps` if it is higher.
    pub async fn raise_peak(&self, id: &str, bps: i64) -> Result<(), ApiError> {
        sqlx::query("UPDATE tasks SET peak_bps = $1 WHERE id = $2 AND peak_bps < $1")
            .bind(bps)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(())
    }

    /// Failed files of a task by path, paged (the key: the path).
    pub async fn failures(
        &self,
        task: &str,
        limit: i64,
        at: &PageAt<String>,
    ) -> Result<Vec<FileFailure>, ApiError> {
        let rows = paged(sql::FAILURES_FROM, sql::FAILURES_AFTER, task, limit, at)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| FileFailure {
                path: r.get(0),
                size: r.get::<i64, _>(1) as u64,
                reason: r.get(2),
                attempts: r.get::<i64, _>(3) as u32,
                mtime_ms: None,
                posix: Default::default(),
            })
            .collect())
    }

    /// Done Copy and Complete jobs (and Upload jobs, which kept their file in stores of earlier
    /// builds) of a task after job `after_seq`, in order, at most `limit`: `(seq, payload)`, the
    /// payload holding the files the job copied (or found up to date).
    pub async fn done_file_jobs(
        &self,
        task: &str,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<(i64, String)>, ApiError> {
        let rows = sqlx::query(sql::DONE_FILE_JOBS)
            .bind(task)
            .bind(after_seq)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        // Sealed like every job payload when the server has a key.
        rows.iter()
            .map(|r| Ok((r.get(0), crate::seal::open(r.get(1))?)))
            .collect()
    }

    /// What the files copied by jobs `first..=last` of a task could not keep, by job and path
    /// (only files with something not kept have a row).
    pub async fn not_kept(
        &self,
        task: &str,
        first: i64,
        last: i64,
    ) -> Result<std::collections::HashMap<(i64, String), String>, ApiError> {
        let rows = sqlx::query(
            "SELECT job_seq, path, what FROM not_kept WHERE task_id = $1 \
             AND job_seq >= $2 AND job_seq <= $3",
        )
        .bind(task)
        .bind(first)
        .bind(last)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| ((r.get::<i64, _>(0), r.get::<String, _>(1)), r.get(2)))
            .collect())
    }

    /// Copied files that could not keep some of their metadata, by path, paged (the key: path
    /// and job), each with its job.
    pub async fn not_kept_page(
        &self,
        task: &str,
        limit: i64,
        at: &PageAt<(String, i64)>,
    ) -> Result<Vec<(btp_common::wire::NotKept, i64)>, ApiError> {
        let rows = paged(sql::NOT_KEPT_FROM, sql::NOT_KEPT_AFTER, task, limit, at)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| {
                let n = btp_common::wire::NotKept {
                    path: r.get(0),
                    what: r.get(1),
                };
                (n, r.get(2))
            })
            .collect())
    }

    /// Entries the listing settled without a copy (up to date, excluded, skipped with a
    /// reason), by path, paged (the key: the path).
    pub async fn report_entries(
        &self,
        task: &str,
        limit: i64,
        at: &PageAt<String>,
    ) -> Result<Vec<btp_common::api::DoneFile>, ApiError> {
        let rows = paged(sql::ENTRIES_FROM, sql::ENTRIES_AFTER, task, limit, at)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.get(2);
                Ok(btp_common::api::DoneFile {
                    path: r.get(0),
                    size: r.get::<i64, _>(1) as u64,
                    outcome: btp_common::wire::Outcome::parse(&outcome)
                        .ok_or_else(|| ApiError::internal(format!("bad outcome {outcome}")))?,
                    reason: r.get(3),
                    attempts: 0,
                    not_kept: String::new(),
                })
            })
            .collect()
    }

    /// Failed source entries (files, entries the listing could not carry), by path, paged; not
    /// directories whose listing failed (no entry: they are in the report's failures) nor the
    /// sync's failed deletions.
    pub async fn report_failures(
        &self,
        task: &str,
        limit: i64,
        at: &PageAt<String>,
    ) -> Result<Vec<btp_common::api::DoneFile>, ApiError> {
        let rows = paged(
            sql::REPORT_FAILURES_FROM,
            sql::REPORT_FAILURES_AFTER,
            task,
            limit,
            at,
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| btp_common::api::DoneFile {
                path: r.get(0),
                size: r.get::<i64, _>(1) as u64,
                outcome: btp_common::wire::Outcome::Failed,
                reason: r.get(2),
                attempts: r.get::<i64, _>(3) as u32,
                not_kept: String::new(),
            })
            .collect())
    }

    /// True when `path` is among the task's failed files.
    pub async fn has_failure(&self, task: &str, path: &str) -> Result<bool, ApiError> {
        let row = sqlx::query("SELECT 1 FROM failures WHERE task_id = $1 AND path = $2")
            .bind(task)
            .bind(path)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(row.is_some())
    }

    pub async fn client_shares(&self, task: &str) -> Result<Vec<ClientShare>, ApiError> {
        let rows = sqlx::query(
            "SELECT client, COUNT(*), CAST(SUM(files) AS BIGINT), CAST(SUM(bytes) AS BIGINT) FROM jobs \
             WHERE task_id = $1 AND client IS NOT NULL GROUP BY client ORDER BY client",
        )
        .bind(task)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| ClientShare {
                client: r.get(0),
                jobs: r.get::<i64, _>(1) as u64,
                files: r.get::<Option<i64>, _>(2).unwrap_or(0) as u64,
                bytes: r.get::<Option<i64>, _>(3).unwrap_or(0) as u64,
            })
            .collect())
    }

    // ---- agents ----

    /// Records a heartbeat of client `hb.id` for `tenant`, the tenant of the subject it came on
    /// (the caller checked that the body names the same).
    pub async fn upsert_agent(
        &self,
        tenant: &str,
        hb: &Heartbeat,
        now: i64,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "INSERT INTO agents (id, tenant, host, workers, busy, jobs_done, started_ms, last_seen_ms, online, draining) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (tenant, id) DO UPDATE SET host = $3, workers = $4, busy = $5, \
             jobs_done = $6, started_ms = $7, last_seen_ms = $8, online = $9, draining = $10",
        )
        .bind(&hb.id)
        .bind(tenant)
        .bind(&hb.host)
        .bind(hb.workers as i64)
        .bind(hb.busy as i64)
        .bind(hb.jobs_done as i64)
        .bind(hb.started_ms)
        .bind(now)
        .bind(hb.online as i64)
        .bind(hb.draining as i64)
        .execute(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    /// Clients, one per tenant and id (a shared client once per tenant it serves), online when
    /// their last heartbeat is younger than `online_within_ms`.
    pub async fn agents(
        &self,
        now: i64,
        online_within_ms: i64,
    ) -> Result<Vec<ClientInfo>, ApiError> {
        let rows = sqlx::query(
            "SELECT id, host, tenant, workers, busy, jobs_done, started_ms, last_seen_ms, online, draining \
             FROM agents ORDER BY id, tenant",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| {
                let last_seen_ms: i64 = r.get(7);
                let flagged: i64 = r.get(8);
                ClientInfo {
                    id: r.get(0),
                    host: r.get(1),
                    tenant: r.get(2),
                    workers: r.get::<i64, _>(3) as u32,
                    busy: r.get::<i64, _>(4) as u32,
                    jobs_done: r.get::<i64, _>(5) as u64,
                    started_ms: r.get(6),
                    last_seen_ms,
                    online: flagged == 1 && now - last_seen_ms < online_within_ms,
                    draining: r.get::<i64, _>(9) == 1,
                    bytes_per_sec: 0, // live, added by the API
                }
            })
            .collect())
    }
}

const TASK_COLUMNS: &str =
    "id, tenant, state, src, dst, options, created_ms, started_ms, finished_ms, \
    files_found, bytes_found, files_copied, bytes_copied, files_failed, bytes_failed, \
    lists_total, lists_done, jobs_total, jobs_done, files_retried, epoch, peak_bps, \
    files_skipped, bytes_skipped, files_excluded, files_deleted, bytes_excluded, deletes_failed, \
    bytes_through, files_from, check_same, check_differs, check_missing, check_extra, \
    check_errors, bytes_hashed";

fn task_from_row(r: &AnyRow) -> Result<TaskRow, ApiError> {
    let state: String = r.get(2);
    let src: Endpoint = from_json(&crate::seal::open(r.get::<String, _>(3))?)?;
    let dst: Endpoint = from_json(&crate::seal::open(r.get::<String, _>(4))?)?;
    let options: TaskOptions = from_json(&r.get::<String, _>(5))?;
    let files_from: Option<Manifest> = match r.get::<Option<String>, _>(29) {
        Some(sealed) => Some(from_json(&crate::seal::open(sealed)?)?),
        None => None,
    };
    let n = |i: usize| r.get::<i64, _>(i) as u64;
    let info = TaskInfo {
        id: r.get(0),
        tenant: r.get(1),
        state: TaskState::parse(&state)
            .ok_or_else(|| ApiError::internal(format!("bad task state {state}")))?,
        src: src.to_string(),
        dst: dst.to_string(),
        options,
        created_ms: r.get(6),
        started_ms: r.get(7),
        finished_ms: r.get(8),
        files_found: n(9),
        bytes_found: n(10),
        files_copied: n(11),
        bytes_copied: n(12),
        files_skipped: n(22),
        bytes_skipped: n(23),
        files_excluded: n(24),
        bytes_excluded: n(26),
        deletes_failed: n(27),
        files_deleted: n(25),
        bytes_through_clients: n(28),
        files_failed: n(13),
        bytes_failed: n(14),
        listing_done: n(15) > 0 && n(15) == n(16),
        jobs_total: n(17),
        jobs_done: n(18),
        files_retried: n(19),
        peak_bytes_per_sec: n(21),
        current_bytes_per_sec: 0,
        current_files_per_sec: 0.0,
        eta_secs: None,
        files_from: files_from.as_ref().map(|m| m.url.clone()),
        speed_limit_now: None,
        report_export: None,
        notification: None,
        check: None,
    };
    let mut info = info;
    if info.options.mode == btp_common::api::Mode::Check {
        info.check = Some(btp_common::api::CheckCounts {
            same: n(30),
            differs: n(31),
            missing: n(32),
            extra: n(33),
            errors: n(34),
            bytes_hashed: n(35),
            contents_compared: info.options.compare == btp_common::api::Compare::Checksum,
        });
    }
    Ok(TaskRow {
        info,
        src,
        dst,
        files_from,
        epoch: r.get(20),
    })
}

/// When and at which attempt new jobs run.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub attempt: u32,
    pub not_before_ms: i64,
}

impl Schedule {
    pub const NOW: Schedule = Schedule {
        attempt: 1,
        not_before_ms: 0,
    };
}

/// Records jobs (state pending) numbered from `first_seq`; the dispatcher publishes them.
pub async fn insert_jobs(
    tx: &mut Tx<'_>,
    task: &TaskRow,
    first_seq: i64,
    kinds: Vec<JobKind>,
    schedule: Schedule,
) -> Result<(), ApiError> {
    for (i, kind) in kinds.into_iter().enumerate() {
        let seq = first_seq + i as i64;
        let (files, bytes) = match &kind {
            JobKind::Copy { files } | JobKind::Hash { files } => (
                files.len() as i64,
                files.iter().map(|f| f.size as i64).sum(),
            ),
            // The bytes are counted by the parts.
            JobKind::Upload { .. } => (1, 0),
            JobKind::Part { len, .. } => (0, *len as i64),
            _ => (0, 0),
        };
        let job = Job {
            v: btp_common::WIRE_VERSION,
            id: job_id(&task.info.id, seq),
            tenant: task.info.tenant.clone(),
            task: task.info.id.clone(),
            src: task.src.clone(),
            dst: task.dst.clone(),
            attempt: schedule.attempt,
            max_attempts: task.info.options.max_attempts,
            // The limit in force when the job is recorded; the allocator's shares follow the
            // timetable from then on.
            speed_share: task
                .info
                .options
                .speed_limit
                .as_ref()
                .and_then(|l| l.now(btp_common::now_ms())),
            server_side_copy: task.info.options.server_side_copy,
            preserve_owner: task.info.options.preserve_owner(),
            compare: task.info.options.compare,
            verify: task.info.options.verify,
            dry_run: task.info.options.dry_run,
            kind,
        };
        sqlx::query(
            "INSERT INTO jobs (task_id, seq, kind, state, payload, files, bytes, not_before_ms, prio) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&task.info.id)
        .bind(seq)
        .bind(job.kind.name())
        .bind(job_state::PENDING)
        .bind(crate::seal::seal(to_json(&job)))
        .bind(files)
        .bind(bytes)
        .bind(schedule.not_before_ms)
        .bind(dispatch_prio(job.kind.name()))
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    }
    Ok(())
}

pub fn job_id(task: &str, seq: i64) -> String {
    format!("{task}.{seq}")
}

/// Splits a job id back into task id and sequence number.
pub fn parse_job_id(id: &str) -> Option<(&str, i64)> {
    let (task, seq) = id.rsplit_once('.')?;
    Some((task, seq.parse().ok()?))
}

pub async fn load_task_tx(tx: &mut Tx<'_>, id: &str) -> Result<Option<TaskRow>, ApiError> {
    let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = $1"))
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    row.as_ref().map(task_from_row).transpose()
}

pub async fn load_job_tx(
    tx: &mut Tx<'_>,
    task: &str,
    seq: i64,
) -> Result<Option<JobRow>, ApiError> {
    let row = sqlx::query(sql::JOB_BY_SEQ)
        .bind(task)
        .bind(seq)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    row.map(|r| {
        Ok(JobRow {
            kind: r.get(0),
            state: r.get(1),
            pages_applied: r.get(2),
            payload: crate::seal::open(r.get(3))?,
        })
    })
    .transpose()
}

/// Adds to a task's counters. Every argument is a delta.
#[derive(Default, Debug, Clone, Copy)]
pub struct TaskDelta {
    pub files_found: i64,
    pub bytes_found: i64,
    pub files_copied: i64,
    pub bytes_copied: i64,
    pub files_failed: i64,
    pub bytes_failed: i64,
    pub dirs_failed: i64,
    pub lists_total: i64,
    pub lists_done: i64,
    pub jobs_total: i64,
    pub jobs_done: i64,
    pub files_retried: i64,
    pub files_skipped: i64,
    pub bytes_skipped: i64,
    pub files_excluded: i64,
    pub bytes_excluded: i64,
    pub files_deleted: i64,
    pub deletes_failed: i64,
    pub bytes_through: i64,
    /// Check: verdicts by kind (same, differs, missing, extra, error) and bytes hashed.
    pub check: [i64; 5],
    pub bytes_hashed: i64,
}

pub async fn apply_task_delta(tx: &mut Tx<'_>, task: &str, d: &TaskDelta) -> Result<(), ApiError> {
    sqlx::query(
        "UPDATE tasks SET files_found = files_found + $1, bytes_found = bytes_found + $2, \
         files_copied = files_copied + $3, bytes_copied = bytes_copied + $4, \
         files_failed = files_failed + $5, bytes_failed = bytes_failed + $6, dirs_failed = dirs_failed + $7, \
         lists_total = lists_total + $8, lists_done = lists_done + $9, \
         jobs_total = jobs_total + $10, jobs_done = jobs_done + $11, \
         files_retried = files_retried + $13, files_skipped = files_skipped + $14, \
         bytes_skipped = bytes_skipped + $15, files_excluded = files_excluded + $16, \
         files_deleted = files_deleted + $17, bytes_excluded = bytes_excluded + $18, \
         deletes_failed = deletes_failed + $19, bytes_through = bytes_through + $20 WHERE id = $12",
    )
    .bind(d.files_found)
    .bind(d.bytes_found)
    .bind(d.files_copied)
    .bind(d.bytes_copied)
    .bind(d.files_failed)
    .bind(d.bytes_failed)
    .bind(d.dirs_failed)
    .bind(d.lists_total)
    .bind(d.lists_done)
    .bind(d.jobs_total)
    .bind(d.jobs_done)
    .bind(task)
    .bind(d.files_retried)
    .bind(d.files_skipped)
    .bind(d.bytes_skipped)
    .bind(d.files_excluded)
    .bind(d.files_deleted)
    .bind(d.bytes_excluded)
    .bind(d.deletes_failed)
    .bind(d.bytes_through)
    .execute(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    if d.check.iter().any(|n| *n != 0) || d.bytes_hashed != 0 {
        sqlx::query(
            "UPDATE tasks SET check_same = check_same + $1, check_differs = check_differs + $2, \
             check_missing = check_missing + $3, check_extra = check_extra + $4, \
             check_errors = check_errors + $5, bytes_hashed = bytes_hashed + $6 WHERE id = $7",
        )
        .bind(d.check[0])
        .bind(d.check[1])
        .bind(d.check[2])
        .bind(d.check[3])
        .bind(d.check[4])
        .bind(d.bytes_hashed)
        .bind(task)
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    }
    Ok(())
}

/// Check: records the verdict of one path. False when the task already has a verdict for it
/// (it is not counted twice).
pub async fn record_verdict(
    tx: &mut Tx<'_>,
    task: &str,
    v: &btp_common::wire::Verdict,
    job_seq: i64,
) -> Result<bool, ApiError> {
    let done = sqlx::query(
        "INSERT INTO verdicts (task_id, path, verdict, what, size, mtime_ms, job_seq) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(task)
    .bind(&v.path)
    .bind(v.verdict.as_str())
    .bind(&v.what)
    .bind(v.size as i64)
    .bind(v.mtime_ms)
    .bind(job_seq)
    .execute(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    Ok(done.rows_affected() == 1)
}

fn verdict_from_row(r: &AnyRow) -> Result<btp_common::wire::Verdict, ApiError> {
    let kind: String = r.get(1);
    Ok(btp_common::wire::Verdict {
        path: r.get(0),
        verdict: btp_common::wire::VerdictKind::parse(&kind)
            .ok_or_else(|| ApiError::internal(format!("bad verdict {kind}")))?,
        what: r.get(2),
        size: r.get::<i64, _>(3) as u64,
        mtime_ms: r.get(4),
    })
}

/// Check: the verdicts of `kinds` (all kinds when empty) after path `after`, in path order, at
/// most `limit`.
pub async fn verdicts_page<'e, E>(
    db: E,
    task: &str,
    kinds: &[btp_common::wire::VerdictKind],
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<btp_common::wire::Verdict>, ApiError>
where
    E: sqlx::Executor<'e, Database = Db>,
{
    let cols = "path, verdict, what, size, mtime_ms";
    // The first page starts at the empty path (the root directory of a failed listing).
    let op = if after.is_some() { ">" } else { ">=" };
    let rows = if kinds.is_empty() {
        sqlx::query(&format!(
            "SELECT {cols} FROM verdicts WHERE task_id = $1 AND path {op} $2 ORDER BY path LIMIT $3"
        ))
        .bind(task)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(db)
        .await
    } else {
        let list = kinds
            .iter()
            .map(|k| format!("'{}'", k.as_str()))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!(
            "SELECT {cols} FROM verdicts WHERE task_id = $1 AND verdict IN ({list}) AND path {op} $2 \
             ORDER BY path LIMIT $3"
        ))
        .bind(task)
        .bind(after.unwrap_or(""))
        .bind(limit)
        .fetch_all(db)
        .await
    }
    .map_err(map_sqlx)?;
    rows.iter().map(verdict_from_row).collect()
}

pub async fn set_pages_applied(
    tx: &mut Tx<'_>,
    task: &str,
    seq: i64,
    pages: i64,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE jobs SET pages_applied = $1 WHERE task_id = $2 AND seq = $3")
        .bind(pages)
        .bind(task)
        .bind(seq)
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

/// Marks a job finished (done or failed) by `client`; its payload is no longer needed.
/// Marks a job finished. `payload` is what stays of its body: `Some("")` drops it, `None` keeps
/// it (a done Copy or Upload job keeps its files: they are the per-file report).
#[allow(clippy::too_many_arguments)]
pub async fn finish_job(
    tx: &mut Tx<'_>,
    task: &str,
    seq: i64,
    state: &str,
    client: &str,
    attempts: u32,
    now: i64,
    payload: Option<&str>,
) -> Result<(), ApiError> {
    sqlx::query(sql::FINISH_JOB)
        .bind(state)
        // Jobs the server failed itself (never published, or given up by JetStream) have no client.
        .bind((!client.is_empty()).then_some(client))
        .bind(attempts as i64)
        .bind(now)
        .bind(task)
        .bind(seq)
        // What stays of a payload is sealed like the payload was (it names the endpoints),
        // but for the compact form of a done job's files, which names none.
        .bind(payload.map(|p| match p {
            "" => String::new(),
            p if crate::kept::is_compact(p) => p.to_string(),
            p => crate::seal::seal(p.to_string()),
        }))
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

pub async fn record_failure(
    tx: &mut Tx<'_>,
    task: &str,
    kind: &str,
    f: &FileFailure,
    job_seq: i64,
) -> Result<(), ApiError> {
    let attempts = f.attempts;
    sqlx::query(
        "INSERT INTO failures (task_id, path, size, reason, attempts, job_seq, kind) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (task_id, path) DO UPDATE SET size = $3, reason = $4, attempts = $5, job_seq = $6, kind = $7",
    )
    .bind(task)
    .bind(&f.path)
    .bind(f.size as i64)
    .bind(&f.reason)
    .bind(attempts as i64)
    .bind(job_seq)
    .bind(kind)
    .execute(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    // Sync deletes nothing in a directory with a failed entry.
    sqlx::query("INSERT INTO dirty_dirs (task_id, dir) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(task)
        .bind(btp_common::paths::parent_dir(&f.path))
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

/// Records a listed entry that gets no Copy job (up to date, excluded, skipped with a reason).
/// Returns false when the task already has an outcome for this path: it is not counted twice.
pub async fn record_entry(
    tx: &mut Tx<'_>,
    task: &str,
    e: &btp_common::wire::Noted,
    job_seq: i64,
) -> Result<bool, ApiError> {
    let done = sqlx::query(
        "INSERT INTO entries (task_id, path, size, outcome, reason, job_seq) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(task)
    .bind(&e.path)
    .bind(e.size as i64)
    .bind(e.outcome.as_str())
    .bind(&e.reason)
    .bind(job_seq)
    .execute(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    Ok(done.rows_affected() == 1)
}

/// Sync: records a destination entry the source directory `dir` does not have, to delete once
/// the task's copies are done.
pub async fn record_deletion(
    tx: &mut Tx<'_>,
    task: &str,
    dir: &str,
    f: &FileEntry,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO deletions (task_id, path, dir, size) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING",
    )
    .bind(task)
    .bind(&f.path)
    .bind(dir)
    .bind(f.size as i64)
    .execute(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    Ok(())
}

/// Sync: takes up to `limit` recorded deletions off the list, split into those of clean
/// directories (to delete) and those of directories with a failed entry (kept).
pub async fn take_deletions(
    tx: &mut Tx<'_>,
    task: &str,
    limit: i64,
) -> Result<(Vec<FileEntry>, Vec<FileEntry>), ApiError> {
    let rows = sqlx::query(
        "SELECT d.path, d.size, CASE WHEN x.dir IS NULL THEN 0 ELSE 1 END FROM deletions d \
         LEFT JOIN dirty_dirs x ON x.task_id = d.task_id AND x.dir = d.dir \
         WHERE d.task_id = $1 ORDER BY d.path LIMIT $2",
    )
    .bind(task)
    .bind(limit)
    .fetch_all(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    let (mut clean, mut kept) = (Vec::new(), Vec::new());
    for r in &rows {
        let path: String = r.get(0);
        sqlx::query("DELETE FROM deletions WHERE task_id = $1 AND path = $2")
            .bind(task)
            .bind(&path)
            .execute(&mut **tx)
            .await
            .map_err(map_sqlx)?;
        let f = FileEntry::new(path, r.get::<i64, _>(1) as u64, None);
        if r.get::<i64, _>(2) == 0 {
            clean.push(f);
        } else {
            kept.push(f);
        }
    }
    Ok((clean, kept))
}

/// Finishes a running task whose jobs are all done: completed, or failed when anything failed.
/// Returns the new state when the task finished.
pub async fn finish_task_if_done(
    tx: &mut Tx<'_>,
    task: &str,
    now: i64,
) -> Result<Option<TaskState>, ApiError> {
    let row = sqlx::query(
        "SELECT state, jobs_total, jobs_done, files_failed, dirs_failed, deletes_failed, \
         files_found, files_copied, files_skipped, files_excluded, \
         bytes_found, bytes_copied, bytes_skipped, bytes_failed, bytes_excluded, \
         check_same + check_differs + check_missing + check_extra + check_errors, check_errors \
         FROM tasks WHERE id = $1",
    )
    .bind(task)
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    let Some(r) = row else { return Ok(None) };
    let state: String = r.get(0);
    let n = |i: usize| r.get::<i64, _>(i);
    let (total, done, ffail, dfail, delfail) = (n(1), n(2), n(3), n(4), n(5));
    let live = state == TaskState::Running.as_str() || state == TaskState::Paused.as_str();
    if !live || done < total {
        return Ok(None);
    }
    // The accounting rule: every entry found is copied, skipped, failed or excluded, once.
    // A check's entries (extra ones included) are settled by their verdicts.
    let (found, settled) = (n(6), n(7) + n(8) + ffail + n(9) + n(15));
    let balanced = found == settled;
    if !balanced {
        tracing::error!(task, found, settled, "the task's files do not add up");
        let f = FileFailure {
            path: String::new(),
            size: 0,
            reason: format!(
                "accounting: {found} entries found, but {} copied + {} skipped + {ffail} failed + {} excluded + {} checked = {settled}",
                n(7),
                n(8),
                n(9),
                n(15)
            ),
            attempts: 0,
            mtime_ms: None,
            posix: Default::default(),
        };
        record_failure(tx, task, "task", &f, -1).await?;
    }
    let (bytes_found, bytes_settled) = (n(10), n(11) + n(12) + n(13) + n(14));
    if bytes_found != bytes_settled && n(15) == 0 {
        // Sizes can change between listing and copy, and parts may be sent again: a warning.
        tracing::warn!(
            task,
            bytes_found,
            bytes_settled,
            "the task's bytes do not add up"
        );
    }
    let new_state = if ffail == 0 && dfail == 0 && delfail == 0 && n(16) == 0 && balanced {
        TaskState::Completed
    } else {
        TaskState::Failed
    };
    sqlx::query("UPDATE tasks SET state = $1, finished_ms = $2 WHERE id = $3")
        .bind(new_state.as_str())
        .bind(now)
        .bind(task)
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    Ok(Some(new_state))
}

/// True when every recorded job of the task is finished.
pub async fn all_jobs_done(tx: &mut Tx<'_>, task: &str) -> Result<bool, ApiError> {
    let (total, done): (i64, i64) =
        sqlx::query_as("SELECT jobs_total, jobs_done FROM tasks WHERE id = $1")
            .bind(task)
            .fetch_one(&mut **tx)
            .await
            .map_err(map_sqlx)?;
    Ok(done >= total)
}

/// The task's number of recorded jobs (the next job's sequence number).
pub async fn jobs_total(tx: &mut Tx<'_>, task: &str) -> Result<i64, ApiError> {
    sqlx::query_scalar("SELECT jobs_total FROM tasks WHERE id = $1")
        .bind(task)
        .fetch_one(&mut **tx)
        .await
        .map_err(map_sqlx)
}

/// Moves a task from one of `from` to `to`, or says why it cannot.
async fn transition(
    tx: &mut Tx<'_>,
    id: &str,
    from: &[TaskState],
    to: TaskState,
    verb: &str,
) -> Result<(), ApiError> {
    let state: Option<String> = sqlx::query_scalar("SELECT state FROM tasks WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    let state = state.ok_or_else(|| ApiError::not_found(format!("unknown task id '{id}'")))?;
    if !from.iter().any(|s| s.as_str() == state) {
        return Err(ApiError::precondition(format!(
            "task {id} cannot be {verb}: it is {state}"
        )));
    }
    sqlx::query("UPDATE tasks SET state = $1 WHERE id = $2")
        .bind(to.as_str())
        .bind(id)
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

async fn requeue_published(tx: &mut Tx<'_>, id: &str) -> Result<(), ApiError> {
    sqlx::query("UPDATE jobs SET state = $1 WHERE task_id = $2 AND state = $3")
        .bind(job_state::PENDING)
        .bind(id)
        .bind(job_state::PUBLISHED)
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

/// A database URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("serializing a plain struct cannot fail")
}

fn from_json<T: serde::de::DeserializeOwned>(s: &str) -> Result<T, ApiError> {
    serde_json::from_str(s).map_err(|e| ApiError::internal(format!("corrupt stored value: {e}")))
}

/// States of a multipart upload (see the `uploads` table).
pub mod upload_state {
    pub const ACTIVE: &str = "active";
    pub const COMPLETING: &str = "completing";
    pub const DONE: &str = "done";
    pub const ABORTING: &str = "aborting";
    pub const ABORTED: &str = "aborted";
    /// Completed, then deleted: the stored checksum was not the source's.
    pub const MISMATCHED: &str = "mismatched";
}

/// A multipart upload of one large file.
#[derive(Debug, Clone)]
pub struct UploadRow {
    pub upload_id: String,
    pub file: btp_common::wire::FileEntry,
    pub parts_total: i64,
    pub parts_done: i64,
    pub state: String,
    pub attempt: i64,
}

/// Records an upload begun by an Upload job; false when it was recorded before.
pub async fn insert_upload(
    tx: &mut Tx<'_>,
    task: &str,
    upload_id: &str,
    file: &btp_common::wire::FileEntry,
    parts_total: i64,
    attempt: i64,
) -> Result<bool, ApiError> {
    let r = sqlx::query(
        "INSERT INTO uploads (task_id, upload_id, file, parts_total, state, attempt) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (task_id, upload_id) DO NOTHING",
    )
    .bind(task)
    .bind(upload_id)
    .bind(to_json(file))
    .bind(parts_total)
    .bind(upload_state::ACTIVE)
    .bind(attempt)
    .execute(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    Ok(r.rows_affected() == 1)
}

pub async fn load_upload(
    tx: &mut Tx<'_>,
    task: &str,
    upload_id: &str,
) -> Result<Option<UploadRow>, ApiError> {
    let row = sqlx::query(
        "SELECT upload_id, file, parts_total, parts_done, state, attempt FROM uploads \
         WHERE task_id = $1 AND upload_id = $2",
    )
    .bind(task)
    .bind(upload_id)
    .fetch_optional(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    row.map(|r| {
        Ok(UploadRow {
            upload_id: r.get(0),
            file: from_json(&r.get::<String, _>(1))?,
            parts_total: r.get(2),
            parts_done: r.get(3),
            state: r.get(4),
            attempt: r.get(5),
        })
    })
    .transpose()
}

/// Records an uploaded part once; returns the upload's parts done after it.
pub async fn record_part(
    tx: &mut Tx<'_>,
    task: &str,
    upload_id: &str,
    part: &btp_common::wire::PartDone,
) -> Result<i64, ApiError> {
    let r = sqlx::query(
        "INSERT INTO upload_parts (task_id, upload_id, number, etag, md5) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (task_id, upload_id, number) DO NOTHING",
    )
    .bind(task)
    .bind(upload_id)
    .bind(part.number as i64)
    .bind(&part.etag)
    .bind(part.md5.clone())
    .execute(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    if r.rows_affected() == 1 {
        sqlx::query(
            "UPDATE uploads SET parts_done = parts_done + 1 WHERE task_id = $1 AND upload_id = $2",
        )
        .bind(task)
        .bind(upload_id)
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    }
    sqlx::query_scalar("SELECT parts_done FROM uploads WHERE task_id = $1 AND upload_id = $2")
        .bind(task)
        .bind(upload_id)
        .fetch_one(&mut **tx)
        .await
        .map_err(map_sqlx)
}

/// The parts of an upload, in order.
pub async fn upload_parts(
    tx: &mut Tx<'_>,
    task: &str,
    upload_id: &str,
) -> Result<Vec<btp_common::wire::PartDone>, ApiError> {
    let rows = sqlx::query(
        "SELECT number, etag, md5 FROM upload_parts WHERE task_id = $1 AND upload_id = $2 \
         ORDER BY number",
    )
    .bind(task)
    .bind(upload_id)
    .fetch_all(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    Ok(rows
        .iter()
        .map(|r| btp_common::wire::PartDone {
            number: r.get::<i64, _>(0) as u32,
            etag: r.get(1),
            md5: r.get(2),
        })
        .collect())
}

pub async fn set_upload_state(
    tx: &mut Tx<'_>,
    task: &str,
    upload_id: &str,
    state: &str,
) -> Result<(), ApiError> {
    sqlx::query("UPDATE uploads SET state = $1 WHERE task_id = $2 AND upload_id = $3")
        .bind(state)
        .bind(task)
        .bind(upload_id)
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    Ok(())
}

/// How many uploads of `path` in the task ended in a checksum mismatch.
pub async fn mismatched_uploads(tx: &mut Tx<'_>, task: &str, path: &str) -> Result<i64, ApiError> {
    let files: Vec<String> =
        sqlx::query_scalar("SELECT file FROM uploads WHERE task_id = $1 AND state = $2")
            .bind(task)
            .bind(upload_state::MISMATCHED)
            .fetch_all(&mut **tx)
            .await
            .map_err(map_sqlx)?;
    let mut n = 0;
    for f in files {
        let f: btp_common::wire::FileEntry = from_json(&f)?;
        n += (f.path == path) as i64;
    }
    Ok(n)
}

/// Uploads of a task still open on the store (their parts would be orphaned): (id, path).
pub async fn open_uploads(tx: &mut Tx<'_>, task: &str) -> Result<Vec<(String, String)>, ApiError> {
    let rows = sqlx::query(
        "SELECT upload_id, file FROM uploads WHERE task_id = $1 AND state IN ($2, $3) \
         ORDER BY upload_id",
    )
    .bind(task)
    .bind(upload_state::ACTIVE)
    .bind(upload_state::COMPLETING)
    .fetch_all(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    rows.iter()
        .map(|r| {
            let f: btp_common::wire::FileEntry = from_json(&r.get::<String, _>(1))?;
            Ok((r.get(0), f.path))
        })
        .collect()
}

/// Records what a dry run found would change (`copy` or `delete`).
/// Copied files of job `seq` whose destination could not hold some of their metadata.
pub async fn record_not_kept(
    tx: &mut Tx<'_>,
    task: &str,
    seq: i64,
    files: &[btp_common::wire::NotKept],
) -> Result<(), ApiError> {
    for f in files {
        sqlx::query(
            "INSERT INTO not_kept (task_id, job_seq, path, what) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (task_id, job_seq, path) DO NOTHING",
        )
        .bind(task)
        .bind(seq)
        .bind(&f.path)
        .bind(&f.what)
        .execute(&mut **tx)
        .await
        .map_err(map_sqlx)?;
    }
    Ok(())
}

pub async fn record_change(
    tx: &mut Tx<'_>,
    task: &str,
    action: &str,
    path: &str,
    size: u64,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO changes (task_id, action, path, size) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (task_id, action, path) DO NOTHING",
    )
    .bind(task)
    .bind(action)
    .bind(path)
    .bind(size as i64)
    .execute(&mut **tx)
    .await
    .map_err(map_sqlx)?;
    Ok(())
}

impl Store {
    /// What a dry run found would change, by path: (action, path, size), paged (the key: path
    /// and action).
    pub async fn changes(
        &self,
        task: &str,
        limit: i64,
        at: &PageAt<(String, String)>,
    ) -> Result<Vec<(String, String, u64)>, ApiError> {
        let rows = paged(sql::CHANGES_FROM, sql::CHANGES_AFTER, task, limit, at)
            .fetch_all(&self.pool)
            .await
            .map_err(map_sqlx)?;
        Ok(rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get::<i64, _>(2) as u64))
            .collect())
    }
}

/// Why a tenant cannot be deleted yet: what it still has.
fn tenant_remains(name: &str, tasks: i64, live: i64, endpoints: i64) -> String {
    let plural = |n: i64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
    let mut left = Vec::new();
    if tasks > 0 {
        let mut t = plural(tasks, "task", "tasks");
        if live > 0 {
            t.push_str(&format!(" ({live} running or paused: cancel them)"));
        }
        left.push(t);
    }
    if endpoints > 0 {
        left.push(plural(endpoints, "named endpoint", "named endpoints"));
    }
    format!(
        "tenant '{name}' cannot be deleted: it still has {}; delete them first (btp task delete, btp endpoint delete)",
        left.join(" and ")
    )
}

// ---- schedules ----

/// Outcomes of a schedule's run (the `outcome` column of `schedule_runs`).
pub mod run_outcome {
    /// Claimed with its task id; the task is not created yet.
    pub const PENDING: &str = "pending";
    /// Its task was created and started.
    pub const STARTED: &str = "started";
    pub const SKIPPED: &str = "skipped";
    /// No task could be created or started.
    pub const ERROR: &str = "error";
    /// Its task was deleted before it finished.
    pub const DELETED: &str = "deleted";
}

/// A schedule as stored.
#[derive(Clone, Debug)]
pub struct ScheduleRow {
    pub tenant: String,
    pub name: String,
    /// Empty for an interval schedule.
    pub cron: String,
    /// 0 for a cron schedule.
    pub every_secs: i64,
    pub timezone: String,
    pub template: btp_common::api::CreateTask,
    pub state: String,
    pub paused_reason: String,
    pub max_failures: i64,
    pub failures: i64,
    pub next_fire_ms: i64,
    pub created_ms: i64,
}

/// A run of a schedule as stored.
#[derive(Clone, Debug)]
pub struct RunRow {
    pub tenant: String,
    pub schedule: String,
    pub seq: i64,
    pub fire_ms: i64,
    pub at_ms: i64,
    /// Empty for a skipped run.
    pub task_id: String,
    pub outcome: String,
    pub reason: String,
}

const SCHEDULE_COLUMNS: &str = "tenant, name, cron, every_secs, timezone, template, state, \
     paused_reason, max_failures, failures, next_fire_ms, created_ms";
const RUN_COLUMNS: &str = "tenant, schedule, seq, fire_ms, at_ms, task_id, outcome, reason";

fn schedule_from_row(r: &AnyRow) -> Result<ScheduleRow, ApiError> {
    Ok(ScheduleRow {
        tenant: r.get(0),
        name: r.get(1),
        cron: r.get(2),
        every_secs: r.get(3),
        timezone: r.get(4),
        template: from_json(&crate::seal::open(r.get(5))?)?,
        state: r.get(6),
        paused_reason: r.get(7),
        max_failures: r.get(8),
        failures: r.get(9),
        next_fire_ms: r.get(10),
        created_ms: r.get(11),
    })
}

fn run_from_row(r: &AnyRow) -> RunRow {
    RunRow {
        tenant: r.get(0),
        schedule: r.get(1),
        seq: r.get(2),
        fire_ms: r.get(3),
        at_ms: r.get(4),
        task_id: r.get(5),
        outcome: r.get(6),
        reason: r.get(7),
    }
}

fn unknown_schedule(name: &str) -> ApiError {
    ApiError::not_found(format!(
        "unknown schedule '{}'",
        name.chars().take(40).collect::<String>()
    ))
}

impl Store {
    /// Records a new schedule; refused when the tenant has one of that name.
    pub async fn insert_schedule(&self, s: &ScheduleRow) -> Result<(), ApiError> {
        let done = sqlx::query(&format!(
            "INSERT INTO schedules ({SCHEDULE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (tenant, name) DO NOTHING"
        ))
        .bind(&s.tenant)
        .bind(&s.name)
        .bind(&s.cron)
        .bind(s.every_secs)
        .bind(&s.timezone)
        .bind(crate::seal::seal(to_json(&s.template)))
        .bind(&s.state)
        .bind(&s.paused_reason)
        .bind(s.max_failures)
        .bind(s.failures)
        .bind(s.next_fire_ms)
        .bind(s.created_ms)
        .execute(&self.pool)
        .await
        .map_err(map_sqlx)?;
        if done.rows_affected() == 0 {
            return Err(ApiError::precondition(format!(
                "schedule '{}' already exists (delete it first)",
                s.name
            )));
        }
        Ok(())
    }

    pub async fn schedule(&self, tenant: &str, name: &str) -> Result<ScheduleRow, ApiError> {
        let row = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant = $1 AND name = $2"
        ))
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_sqlx)?
        .ok_or_else(|| unknown_schedule(name))?;
        schedule_from_row(&row)
    }

    /// The tenant's schedules, by name.
    pub async fn schedules(&self, tenant: &str) -> Result<Vec<ScheduleRow>, ApiError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE tenant = $1 ORDER BY name"
        ))
        .bind(tenant)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Active schedules whose firing time has come.
    pub async fn due_schedules(&self, now: i64) -> Result<Vec<ScheduleRow>, ApiError> {
        let rows = sqlx::query(&format!(
            "SELECT {SCHEDULE_COLUMNS} FROM schedules WHERE state = $1 AND next_fire_ms <= $2 \
             ORDER BY next_fire_ms"
        ))
        .bind(btp_common::api::ScheduleState::Active.as_str())
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(schedule_from_row).collect()
    }

    /// Deletes a schedule and its history (the tasks it created stay).
    pub async fn delete_schedule(&self, tenant: &str, name: &str) -> Result<(), ApiError> {
        let mut tx = self.begin().await?;
        let gone = sqlx::query("DELETE FROM schedules WHERE tenant = $1 AND name = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        if gone.rows_affected() == 0 {
            return Err(unknown_schedule(name));
        }
        sqlx::query("DELETE FROM schedule_runs WHERE tenant = $1 AND schedule = $2")
            .bind(tenant)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)
    }

    /// Pauses a schedule (`reason`: why it paused itself; empty when asked to).
    pub async fn pause_schedule(
        &self,
        tenant: &str,
        name: &str,
        reason: &str,
    ) -> Result<(), ApiError> {
        let done = sqlx::query(
            "UPDATE schedules SET state = $1, paused_reason = $2 WHERE tenant = $3 AND name = $4",
        )
        .bind(btp_common::api::ScheduleState::Paused.as_str())
        .bind(reason)
        .bind(tenant)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(map_sqlx)?;
        if done.rows_affected() == 0 {
            return Err(unknown_schedule(name));
        }
        Ok(())
    }

    /// Activates a schedule again: its count of failures starts over, it fires next at `next`.
    pub async fn resume_schedule(
        &self,
        tenant: &str,
        name: &str,
        next: i64,
    ) -> Result<(), ApiError> {
        let done = sqlx::query(
            "UPDATE schedules SET state = $1, paused_reason = '', failures = 0, next_fire_ms = $2 \
             WHERE tenant = $3 AND name = $4",
        )
        .bind(btp_common::api::ScheduleState::Active.as_str())
        .bind(next)
        .bind(tenant)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(map_sqlx)?;
        if done.rows_affected() == 0 {
            return Err(unknown_schedule(name));
        }
        Ok(())
    }

    /// Records the firing at `old_next` of a schedule and moves its next firing to `new_next`,
    /// in one transaction, only if the next firing is still `old_next` and the schedule is
    /// active (compare-and-set): a firing is recorded once whatever the restarts. The run is
    /// `run_outcome::PENDING` with `task_id` (its task is created next), or skipped with
    /// `reason` when `task_id` is empty. Returns the run's number, None when not claimed.
    pub async fn claim_firing(
        &self,
        s: &ScheduleRow,
        new_next: i64,
        now: i64,
        task_id: &str,
        reason: &str,
    ) -> Result<Option<i64>, ApiError> {
        let mut tx = self.begin().await?;
        let moved = sqlx::query(
            "UPDATE schedules SET next_fire_ms = $1 WHERE tenant = $2 AND name = $3 \
             AND next_fire_ms = $4 AND state = $5",
        )
        .bind(new_next)
        .bind(&s.tenant)
        .bind(&s.name)
        .bind(s.next_fire_ms)
        .bind(btp_common::api::ScheduleState::Active.as_str())
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if moved.rows_affected() != 1 {
            return Ok(None);
        }
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE(MAX(seq), 0) + 1 FROM schedule_runs WHERE tenant = $1 AND schedule = $2",
        )
        .bind(&s.tenant)
        .bind(&s.name)
        .fetch_one(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        let outcome = if task_id.is_empty() {
            run_outcome::SKIPPED
        } else {
            run_outcome::PENDING
        };
        sqlx::query(&format!(
            "INSERT INTO schedule_runs ({RUN_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind(&s.tenant)
        .bind(&s.name)
        .bind(seq)
        .bind(s.next_fire_ms)
        .bind(now)
        .bind(task_id)
        .bind(outcome)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        tx.commit().await.map_err(map_sqlx)?;
        Ok(Some(seq))
    }

    /// Runs in `outcome` (of every schedule), oldest first.
    pub async fn runs_in(&self, outcome: &str) -> Result<Vec<RunRow>, ApiError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM schedule_runs WHERE outcome = $1 ORDER BY at_ms, seq"
        ))
        .bind(outcome)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows.iter().map(run_from_row).collect())
    }

    /// The run of the schedule still going (pending or started), if any.
    pub async fn run_going(&self, tenant: &str, name: &str) -> Result<Option<RunRow>, ApiError> {
        let row = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM schedule_runs WHERE tenant = $1 AND schedule = $2 \
             AND (outcome = $3 OR outcome = $4) ORDER BY seq DESC LIMIT 1"
        ))
        .bind(tenant)
        .bind(name)
        .bind(run_outcome::PENDING)
        .bind(run_outcome::STARTED)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(row.as_ref().map(run_from_row))
    }

    /// Moves a run from outcome `from` to `to` (with `reason`), and keeps the schedule's count
    /// of failed runs in a row: a `failed` or `error` run adds one, a `completed` run starts it
    /// over. Reaching the schedule's `max_failures` pauses it with a reason. In one
    /// transaction; false when the run was no longer in `from`.
    pub async fn settle_run(
        &self,
        run: &RunRow,
        from: &str,
        to: &str,
        reason: &str,
    ) -> Result<bool, ApiError> {
        let mut tx = self.begin().await?;
        let done = sqlx::query(
            "UPDATE schedule_runs SET outcome = $1, reason = $2 \
             WHERE tenant = $3 AND schedule = $4 AND seq = $5 AND outcome = $6",
        )
        .bind(to)
        .bind(reason)
        .bind(&run.tenant)
        .bind(&run.schedule)
        .bind(run.seq)
        .bind(from)
        .execute(&mut *tx)
        .await
        .map_err(map_sqlx)?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let failed = to == TaskState::Failed.as_str() || to == run_outcome::ERROR;
        if failed {
            sqlx::query(
                "UPDATE schedules SET failures = failures + 1 WHERE tenant = $1 AND name = $2",
            )
            .bind(&run.tenant)
            .bind(&run.schedule)
            .execute(&mut *tx)
            .await
            .map_err(map_sqlx)?;
            let what = if run.task_id.is_empty() || to == run_outcome::ERROR {
                format!("run {} could not start: {reason}", run.seq)
            } else {
                format!("run {} (task {}) failed", run.seq, run.task_id)
            };
            let (failures, max, state): (i64, i64, String) = sqlx::query_as(
                "SELECT failures, max_failures, state FROM schedules WHERE tenant = $1 AND name = $2",
            )
            .bind(&run.tenant)
            .bind(&run.schedule)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_sqlx)?;
            if failures >= max && state == btp_common::api::ScheduleState::Active.as_str() {
                sqlx::query(
                    "UPDATE schedules SET state = $1, paused_reason = $2 WHERE tenant = $3 AND name = $4",
                )
                .bind(btp_common::api::ScheduleState::Paused.as_str())
                .bind(format!(
                    "paused after {failures} failed runs in a row; the last: {what}"
                ))
                .bind(&run.tenant)
                .bind(&run.schedule)
                .execute(&mut *tx)
                .await
                .map_err(map_sqlx)?;
            }
        } else if to == TaskState::Completed.as_str() {
            sqlx::query("UPDATE schedules SET failures = 0 WHERE tenant = $1 AND name = $2")
                .bind(&run.tenant)
                .bind(&run.schedule)
                .execute(&mut *tx)
                .await
                .map_err(map_sqlx)?;
        }
        tx.commit().await.map_err(map_sqlx)?;
        Ok(true)
    }

    /// A schedule's runs, newest first, paged.
    pub async fn schedule_runs(
        &self,
        tenant: &str,
        name: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<RunRow>, ApiError> {
        let rows = sqlx::query(&format!(
            "SELECT {RUN_COLUMNS} FROM schedule_runs WHERE tenant = $1 AND schedule = $2 \
             ORDER BY seq DESC LIMIT $3 OFFSET $4"
        ))
        .bind(tenant)
        .bind(name)
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(rows.iter().map(run_from_row).collect())
    }

    /// How many runs a schedule has, and the task of its latest run that has one.
    pub async fn schedule_run_summary(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<(i64, Option<String>), ApiError> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM schedule_runs WHERE tenant = $1 AND schedule = $2",
        )
        .bind(tenant)
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(map_sqlx)?;
        let last: Option<String> = sqlx::query_scalar(
            "SELECT task_id FROM schedule_runs WHERE tenant = $1 AND schedule = $2 \
             AND task_id <> '' ORDER BY seq DESC LIMIT 1",
        )
        .bind(tenant)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok((n, last))
    }
}

// ---- deliveries at the end of a task: report export, notification ----

/// Kinds of `task_deliveries` rows.
pub mod delivery_kind {
    /// The report written to an endpoint (`--report-to`).
    pub const REPORT: &str = "report";
    /// The summary posted to a URL (`--notify`).
    pub const NOTIFY: &str = "notify";
}

/// A delivery stored with a new task.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    pub kind: &'static str,
    /// The report's endpoint or the notification URL, as JSON (stored sealed).
    pub target: String,
    /// The same without credentials.
    pub shown: String,
    /// `all` or `errors` (reports), empty otherwise.
    pub level: String,
}

/// A row of `task_deliveries`, its target opened.
#[derive(Clone, Debug)]
pub struct DeliveryRow {
    pub task_id: String,
    pub kind: String,
    pub target: String,
    pub shown: String,
    pub level: String,
    pub state: String,
    pub attempts: i64,
    pub next_ms: i64,
    pub last_error: String,
    pub done_ms: Option<i64>,
}

const DELIVERY_COLUMNS: &str = "d.task_id, d.kind, d.target, d.shown, d.level, d.state, \
    d.attempts, d.next_ms, d.last_error, d.done_ms";

fn delivery_from_row(r: &AnyRow) -> Result<DeliveryRow, ApiError> {
    Ok(DeliveryRow {
        task_id: r.get(0),
        kind: r.get(1),
        target: crate::seal::open(r.get::<String, _>(2))?,
        shown: r.get(3),
        level: r.get(4),
        state: r.get(5),
        attempts: r.get(6),
        next_ms: r.get(7),
        last_error: r.get(8),
        done_ms: r.get(9),
    })
}

impl Store {
    /// The deliveries of a task (report export, notification).
    pub async fn deliveries(&self, task: &str) -> Result<Vec<DeliveryRow>, ApiError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM task_deliveries d WHERE d.task_id = $1 ORDER BY d.kind"
        ))
        .bind(task)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// Pending deliveries of ended tasks due by `now`, at most `limit`, the longest due first.
    pub async fn due_deliveries(&self, now: i64, limit: i64) -> Result<Vec<DeliveryRow>, ApiError> {
        let rows = sqlx::query(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM task_deliveries d JOIN tasks t ON t.id = d.task_id \
             WHERE d.state = $1 AND d.next_ms <= $2 AND t.state IN ($3, $4, $5) \
             ORDER BY d.next_ms, d.task_id, d.kind LIMIT $6"
        ))
        .bind(DeliveryState::Pending.as_str())
        .bind(now)
        .bind(TaskState::Completed.as_str())
        .bind(TaskState::Failed.as_str())
        .bind(TaskState::Cancelled.as_str())
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .map_err(map_sqlx)?;
        rows.iter().map(delivery_from_row).collect()
    }

    /// Records an attempt of a pending delivery: `state` done (at `at_ms`), failed, or pending
    /// again from `at_ms` on, with the attempt's error. A delivery no longer pending (its task
    /// was deleted) is left alone.
    pub async fn settle_delivery(
        &self,
        task: &str,
        kind: &str,
        state: DeliveryState,
        attempts: i64,
        at_ms: i64,
        error: &str,
    ) -> Result<(), ApiError> {
        sqlx::query(
            "UPDATE task_deliveries SET state = $1, attempts = $2, next_ms = $3, last_error = $4, \
             done_ms = $5 WHERE task_id = $6 AND kind = $7 AND state = $8",
        )
        .bind(state.as_str())
        .bind(attempts)
        .bind(at_ms)
        .bind(error)
        .bind((state == DeliveryState::Done).then_some(at_ms))
        .bind(task)
        .bind(kind)
        .bind(DeliveryState::Pending.as_str())
        .execute(&self.pool)
        .await
        .map_err(map_sqlx)?;
        Ok(())
    }

    /// The schedule whose run created task `task`, if any.
    pub async fn schedule_of_task(&self, task: &str) -> Result<Option<String>, ApiError> {
        sqlx::query_scalar("SELECT schedule FROM schedule_runs WHERE task_id = $1 LIMIT 1")
            .bind(task)
            .fetch_optional(&self.pool)
            .await
            .map_err(map_sqlx)
    }
}
