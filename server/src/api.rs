//! The request-reply API on `btp.api.v1.<verb>`. Every request is decoded strictly (unknown
//! fields and wrong types are refused) and answered with `{"ok": ...}` or `{"error": ...}`.

use std::sync::Arc;

use btp_common::api::{
    verbs, ApiError, ApiResponse, ClientList, CreateTask, Empty, ErrorCode, Health, Report,
    TaskInfo, TaskList, TaskRef, TaskState,
};
use btp_common::wire::{Control, ControlAction};
use btp_common::{now_ms, subjects, Endpoint, DEFAULT_TENANT};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agents::OFFLINE_AFTER_MS;
use crate::store::Store;

/// Most failed files a report carries.
const REPORT_FAILURES_LIMIT: i64 = 10_000;

#[derive(Clone)]
pub struct Api {
    pub store: Store,
    pub wake_dispatcher: Arc<Notify>,
    pub js: async_nats::jetstream::Context,
    pub nats: async_nats::Client,
    pub dispatch_lock: crate::dispatcher::DispatchLock,
}

pub async fn serve(
    nats: async_nats::Client,
    api: Api,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats
        .queue_subscribe(subjects::API_ALL, subjects::API_QUEUE.to_string())
        .await?;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        let Some(reply) = msg.reply.clone() else {
            continue;
        };
        let api = api.clone();
        let nats = nats.clone();
        tokio::spawn(async move {
            let verb = msg
                .subject
                .as_str()
                .strip_prefix("btp.api.v1.")
                .unwrap_or("")
                .to_string();
            let body = api.handle(&verb, &msg.payload).await;
            if let Err(e) = nats.publish(reply, body.into()).await {
                warn!(error = %e, verb, "sending an API reply failed");
            }
        });
    }
}

fn decode_req<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    let payload = if payload.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}".as_slice()
    } else {
        payload
    };
    serde_json::from_slice(payload).map_err(|e| ApiError::invalid(format!("invalid request: {e}")))
}

fn encode<T: Serialize>(r: Result<T, ApiError>) -> Vec<u8> {
    serde_json::to_vec(&ApiResponse::from(r)).expect("serializing a response cannot fail")
}

impl Api {
    /// Handles one request; never panics on any input.
    pub async fn handle(&self, verb: &str, payload: &[u8]) -> Vec<u8> {
        match verb {
            verbs::TASK_CREATE => encode(self.create(decode_req(payload)).await),
            verbs::TASK_START => encode(self.start(decode_req(payload)).await),
            verbs::TASK_GET => encode(self.get(decode_req(payload)).await),
            verbs::TASK_LIST => encode(self.list(decode_req(payload)).await),
            verbs::TASK_REPORT => encode(self.report(decode_req(payload)).await),
            verbs::TASK_PAUSE => encode(self.pause(decode_req(payload)).await),
            verbs::TASK_RESUME => encode(self.resume(decode_req(payload)).await),
            verbs::TASK_CANCEL => encode(self.cancel(decode_req(payload)).await),
            verbs::TASK_RETRY => encode(self.retry(decode_req(payload)).await),
            verbs::CLIENT_LIST => encode(self.clients(decode_req(payload)).await),
            verbs::SERVER_HEALTH => encode(self.health(decode_req(payload)).await),
            other => encode::<()>(Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown API verb '{other}'"),
            ))),
        }
    }

    async fn create(&self, req: Result<CreateTask, ApiError>) -> Result<TaskInfo, ApiError> {
        let req = req?;
        let src =
            Endpoint::parse(&req.src).map_err(|e| ApiError::invalid(format!("source: {e}")))?;
        let dst = Endpoint::parse(&req.dst)
            .map_err(|e| ApiError::invalid(format!("destination: {e}")))?;
        req.options.validate()?;
        if dst.is_within(&src) {
            return Err(ApiError::invalid(format!(
                "destination {dst} is inside the source {src}"
            )));
        }
        let (s, d) = (src.clone(), dst.clone());
        tokio::task::spawn_blocking(move || {
            s.check_source()?;
            d.check_destination()
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::invalid)?;
        let id = new_task_id();
        let info = TaskInfo {
            id: id.clone(),
            tenant: DEFAULT_TENANT.to_string(),
            state: TaskState::Created,
            src: src.to_string(),
            dst: dst.to_string(),
            options: req.options,
            created_ms: now_ms(),
            started_ms: None,
            finished_ms: None,
            files_found: 0,
            bytes_found: 0,
            files_copied: 0,
            bytes_copied: 0,
            files_failed: 0,
            bytes_failed: 0,
            files_retried: 0,
            jobs_total: 0,
            jobs_done: 0,
            listing_done: false,
        };
        self.store.insert_task(&info, &src, &dst).await?;
        info!(task = %id, src = %src, dst = %dst, "task created");
        if req.start {
            return self.start(Ok(TaskRef { id })).await;
        }
        Ok(info)
    }

    async fn start(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let req = req?;
        let task = self.store.task(&req.id).await?;
        if task.info.state != TaskState::Created {
            return Err(ApiError::new(
                ErrorCode::FailedPrecondition,
                format!(
                    "task {} cannot be started: it is {}",
                    req.id,
                    task.info.state.as_str()
                ),
            ));
        }
        self.store.start_task(&task, now_ms()).await?;
        self.wake_dispatcher.notify_one();
        info!(task = %req.id, "task started");
        Ok(self.store.task(&req.id).await?.info)
    }

    /// Stops publishing the task's jobs and takes the queued ones off the work queue; in-flight
    /// jobs finish and their results count.
    async fn pause(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let id = req?.id;
        let task = self.store.task(&id).await?;
        let _guard = self.dispatch_lock.lock().await;
        self.store.pause_task(&id).await?;
        self.purge(&task.info.tenant, &id).await?;
        info!(task = %id, "task paused");
        Ok(self.store.task(&id).await?.info)
    }

    async fn resume(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let id = req?.id;
        self.store.resume_task(&id).await?;
        self.wake_dispatcher.notify_one();
        info!(task = %id, "task resumed");
        Ok(self.store.task(&id).await?.info)
    }

    /// Cancels the task: queued jobs are removed and clients abort its in-flight jobs.
    async fn cancel(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let id = req?.id;
        let task = self.store.task(&id).await?;
        let _guard = self.dispatch_lock.lock().await;
        self.store.cancel_task(&id, now_ms()).await?;
        self.purge(&task.info.tenant, &id).await?;
        let control = Control {
            v: btp_common::WIRE_VERSION,
            task: id.clone(),
            action: ControlAction::Cancel,
        };
        let body = serde_json::to_vec(&control).expect("serializable");
        self.nats
            .publish(subjects::control(&task.info.tenant), body.into())
            .await
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("notify clients: {e}")))?;
        info!(task = %id, "task cancelled");
        Ok(self.store.task(&id).await?.info)
    }

    /// Runs the failed files (and directories) of a finished task again.
    async fn retry(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let id = req?.id;
        let task = self.store.task(&id).await?;
        let n = self.store.retry_task(&task).await?;
        self.wake_dispatcher.notify_one();
        info!(task = %id, entries = n, "retrying failed files");
        Ok(self.store.task(&id).await?.info)
    }

    /// Removes a task's queued jobs from the work queue.
    async fn purge(&self, tenant: &str, task: &str) -> Result<(), ApiError> {
        let unavailable = |e: String| ApiError::new(ErrorCode::Unavailable, e);
        let stream = self
            .js
            .get_stream(subjects::JOBS_STREAM)
            .await
            .map_err(|e| unavailable(format!("jobs stream: {e}")))?;
        stream
            .purge()
            .filter(subjects::jobs(tenant, task))
            .await
            .map_err(|e| unavailable(format!("purge jobs of task {task}: {e}")))?;
        Ok(())
    }

    async fn get(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        Ok(self.store.task(&req?.id).await?.info)
    }

    async fn list(&self, req: Result<Empty, ApiError>) -> Result<TaskList, ApiError> {
        req?;
        Ok(TaskList {
            tasks: self.store.tasks(1000).await?,
        })
    }

    async fn report(&self, req: Result<TaskRef, ApiError>) -> Result<Report, ApiError> {
        let id = req?.id;
        let task = self.store.task(&id).await?.info;
        let duration_ms = match task.started_ms {
            Some(s) => task.finished_ms.unwrap_or_else(now_ms) - s,
            None => 0,
        };
        let avg = if duration_ms > 0 {
            task.bytes_copied as f64 * 1000.0 / duration_ms as f64
        } else {
            0.0
        };
        Ok(Report {
            clients: self.store.client_shares(&id).await?,
            failures: self.store.failures(&id, REPORT_FAILURES_LIMIT).await?,
            task,
            duration_ms,
            avg_bytes_per_sec: avg,
        })
    }

    async fn clients(&self, req: Result<Empty, ApiError>) -> Result<ClientList, ApiError> {
        req?;
        Ok(ClientList {
            clients: self.store.agents(now_ms(), OFFLINE_AFTER_MS).await?,
        })
    }

    async fn health(&self, req: Result<Empty, ApiError>) -> Result<Health, ApiError> {
        req?;
        Ok(Health {
            version: env!("CARGO_PKG_VERSION").to_string(),
            database: self.store.backend().to_string(),
        })
    }
}

/// A short random task id (12 hex digits).
fn new_task_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}
