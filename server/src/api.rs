//! The request-reply API on `btp.api.v1.<verb>`. Every request is decoded strictly (unknown
//! fields and wrong types are refused) and answered with `{"ok": ...}` or `{"error": ...}`.
//! One implementation of each operation; the CLI uses nothing else.

use btp_common::api::{
    verbs, ApiError, ApiResponse, ClientInfo, ClientList, ClientRef, CreateEndpoint, CreateTask,
    CreateTenant, CreateToken, DoneFile, Empty, EndpointInfo, EndpointList, EndpointRef, ErrorCode,
    FileList, FilesRequest, Health, ListTasks, ListTokens, Report, ReportRequest, SetTask,
    SpeedLimit, TaskInfo, TaskList, TaskOptions, TaskRef, TaskState, TenantList, TenantRef,
    TokenCreated, TokenInfo, TokenList, TokenRef, VerdictList, VerdictsRequest, VerifyTask,
    MAX_PAGE,
};
use btp_common::wire::{Control, ControlAction, Outcome};
use btp_common::{now_ms, subjects, Endpoint, DEFAULT_TENANT};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::agents::OFFLINE_AFTER_MS;
use crate::Shared;

/// Largest request body accepted (NATS itself caps messages at 1 MiB by default).
const MAX_REQUEST: usize = 64 << 10;

#[derive(Clone)]
pub struct Api {
    pub ctx: Shared,
    /// SHA-256 (hex) of the admin token. When set, every request but `server.health` needs a
    /// token: the admin's, or one of a tenant's (`token.create`). When unset, every request
    /// acts as the admin of the single default tenant.
    pub admin_hash: Option<String>,
    /// Settings of the jobs consumer created for each new tenant.
    pub consumer: btp_nats::topology::ConsumerSettings,
}

/// Who sent a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Whose tasks and clients the request sees and changes.
    pub tenant: String,
    /// May manage tenants and tokens.
    pub admin: bool,
}

impl Caller {
    pub fn admin() -> Self {
        Caller {
            tenant: DEFAULT_TENANT.to_string(),
            admin: true,
        }
    }
}

/// SHA-256 of a token, hex: what the store keeps.
pub fn token_hash(token: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A new API token: `btp_` and 64 random hex digits (two v4 UUIDs, 244 random bits).
pub fn new_token() -> String {
    format!(
        "btp_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
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
            let token = msg
                .headers
                .as_ref()
                .and_then(|h| h.get(btp_common::api::TOKEN_HEADER))
                .map(|v| v.as_str().to_string());
            let body = api.handle_as(&verb, &msg.payload, token.as_deref()).await;
            if let Err(e) = nats.publish(reply, body.into()).await {
                warn!(error = %e, verb, "sending an API reply failed");
            }
        });
    }
}

fn decode_req<T: DeserializeOwned>(payload: &[u8]) -> Result<T, ApiError> {
    if payload.len() > MAX_REQUEST {
        return Err(ApiError::invalid(format!(
            "invalid request: {} bytes is larger than the limit of {MAX_REQUEST}",
            payload.len()
        )));
    }
    let payload = if payload.iter().all(|b| b.is_ascii_whitespace()) {
        b"{}".as_slice()
    } else {
        payload
    };
    serde_json::from_slice(payload).map_err(|e| {
        // A value's own message (a bad rate) needs no position in a one-line request.
        let mut msg = e.to_string();
        if e.is_data() {
            let at = format!(" at line {} column {}", e.line(), e.column());
            if let Some(cut) = msg.strip_suffix(&at) {
                msg = cut.to_string();
            }
        }
        ApiError::invalid(format!("invalid request: {msg}"))
    })
}

fn encode<T: Serialize>(r: Result<T, ApiError>) -> Vec<u8> {
    serde_json::to_vec(&ApiResponse::from(r)).expect("serializing a response cannot fail")
}

impl Api {
    /// Handles one request as the admin (what a server without tokens does for everyone).
    pub async fn handle(&self, verb: &str, payload: &[u8]) -> Vec<u8> {
        self.serve_as(&Caller::admin(), verb, payload).await
    }

    /// Handles one request carrying `token`; never panics on any input.
    pub async fn handle_as(&self, verb: &str, payload: &[u8], token: Option<&str>) -> Vec<u8> {
        if verb == verbs::SERVER_HEALTH {
            return encode(self.health(decode_req(payload)).await);
        }
        match self.authenticate(token).await {
            Ok(caller) => self.serve_as(&caller, verb, payload).await,
            Err(e) => {
                metrics::counter!(crate::telemetry::API_REFUSED).increment(1);
                encode::<()>(Err(e))
            }
        }
    }

    /// The caller a token stands for.
    pub async fn authenticate(&self, token: Option<&str>) -> Result<Caller, ApiError> {
        let Some(admin) = &self.admin_hash else {
            return Ok(Caller::admin());
        };
        let token = token
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthenticated,
                    "this server requires an API token: pass --token or set BTP_TOKEN",
                )
            })?;
        let hash = token_hash(token);
        if &hash == admin {
            return Ok(Caller::admin());
        }
        match self.ctx.store.token_tenant(&hash).await? {
            Some(tenant) => Ok(Caller {
                tenant,
                admin: false,
            }),
            None => Err(ApiError::new(
                ErrorCode::Unauthenticated,
                "the API token is not valid (unknown or deleted)",
            )),
        }
    }

    /// Answers a request of an authenticated caller: tasks and clients of other tenants do not
    /// exist for it, and only the admin manages tenants and tokens.
    async fn serve_as(&self, caller: &Caller, verb: &str, payload: &[u8]) -> Vec<u8> {
        if let Err(e) = self.check_scope(caller, verb, payload).await {
            return encode::<()>(Err(e));
        }
        let tenant = caller.tenant.as_str();
        match verb {
            verbs::TASK_CREATE => encode(self.create(decode_req(payload), tenant).await),
            verbs::TASK_LIST => encode(self.list(decode_req(payload), tenant).await),
            verbs::CLIENT_LIST => encode(self.clients(decode_req(payload), tenant).await),
            verbs::CLIENT_GET => encode(self.client(decode_req(payload), tenant).await),
            verbs::CLIENT_DRAIN => encode(self.drain(decode_req(payload), tenant).await),
            verbs::ENDPOINT_CREATE => {
                encode(self.create_endpoint(decode_req(payload), tenant).await)
            }
            verbs::ENDPOINT_LIST => encode(self.endpoints(decode_req(payload), tenant).await),
            verbs::ENDPOINT_DELETE => {
                encode(self.delete_endpoint(decode_req(payload), tenant).await)
            }
            verbs::TENANT_CREATE => encode(self.create_tenant(decode_req(payload)).await),
            verbs::TENANT_LIST => encode(self.tenants(decode_req(payload)).await),
            verbs::TENANT_DELETE => encode(self.delete_tenant(decode_req(payload)).await),
            verbs::TOKEN_CREATE => encode(self.create_token(decode_req(payload)).await),
            verbs::TOKEN_LIST => encode(self.tokens(decode_req(payload)).await),
            verbs::TOKEN_DELETE => encode(self.delete_token(decode_req(payload)).await),
            verbs::SCHEDULE_CREATE => {
                encode(self.create_schedule(decode_req(payload), tenant).await)
            }
            verbs::SCHEDULE_LIST => encode(self.list_schedules(decode_req(payload), tenant).await),
            verbs::SCHEDULE_GET => encode(self.get_schedule(decode_req(payload), tenant).await),
            verbs::SCHEDULE_PAUSE => encode(self.pause_schedule(decode_req(payload), tenant).await),
            verbs::SCHEDULE_RESUME => {
                encode(self.resume_schedule(decode_req(payload), tenant).await)
            }
            verbs::SCHEDULE_DELETE => {
                encode(self.delete_schedule(decode_req(payload), tenant).await)
            }
            verbs::SCHEDULE_RUNS => encode(self.schedule_runs(decode_req(payload), tenant).await),
            _ => self.handle_task(verb, payload).await,
        }
    }

    /// Admin verbs need the admin; verbs naming a task need the caller's own task (another
    /// tenant's task is answered as unknown, like a task that does not exist).
    async fn check_scope(
        &self,
        caller: &Caller,
        verb: &str,
        payload: &[u8],
    ) -> Result<(), ApiError> {
        if verb.starts_with("tenant.") || verb.starts_with("token.") {
            if !caller.admin {
                return Err(ApiError::new(
                    ErrorCode::PermissionDenied,
                    format!(
                        "{verb} needs the admin token; this token belongs to tenant '{}'",
                        caller.tenant
                    ),
                ));
            }
            return Ok(());
        }
        let names_task = matches!(
            verb,
            verbs::TASK_START
                | verbs::TASK_GET
                | verbs::TASK_REPORT
                | verbs::TASK_PAUSE
                | verbs::TASK_RESUME
                | verbs::TASK_CANCEL
                | verbs::TASK_RETRY
                | verbs::TASK_DELETE
                | verbs::TASK_SET
                | verbs::TASK_FILES
                | verbs::TASK_VERIFY
                | verbs::TASK_VERDICTS
        );
        if !names_task {
            return Ok(());
        }
        let id = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_str()).map(str::to_string));
        let Some(id) = id else {
            return Ok(()); // The operation itself refuses the malformed request.
        };
        let lookup = self.ctx.store.task(&id).await.map(|t| t.info.tenant);
        scope_of_task(lookup, &caller.tenant, &id)
    }

    async fn handle_task(&self, verb: &str, payload: &[u8]) -> Vec<u8> {
        match verb {
            verbs::TASK_START => encode(self.start(decode_req(payload)).await),
            verbs::TASK_GET => encode(self.get(decode_req(payload)).await),
            verbs::TASK_REPORT => encode(self.report(decode_req(payload)).await),
            verbs::TASK_PAUSE => encode(self.pause(decode_req(payload)).await),
            verbs::TASK_RESUME => encode(self.resume(decode_req(payload)).await),
            verbs::TASK_CANCEL => encode(self.cancel(decode_req(payload)).await),
            verbs::TASK_RETRY => encode(self.retry(decode_req(payload)).await),
            verbs::TASK_DELETE => encode(self.delete(decode_req(payload)).await),
            verbs::TASK_SET => encode(self.set(decode_req(payload)).await),
            verbs::TASK_FILES => encode(self.files(decode_req(payload)).await),
            verbs::TASK_VERIFY => encode(self.verify(decode_req(payload)).await),
            verbs::TASK_VERDICTS => encode(self.verdicts(decode_req(payload)).await),
            verbs::SERVER_HEALTH => encode(self.health(decode_req(payload)).await),
            other => encode::<()>(Err(ApiError::new(
                ErrorCode::NotFound,
                format!("unknown API verb '{other}'"),
            ))),
        }
    }

    /// The task as the API shows it: stored counters plus live speed and ETA.
    async fn task_info(&self, id: &str) -> Result<TaskInfo, ApiError> {
        let mut t = self.ctx.store.task(id).await?.info;
        self.add_live(&mut t);
        self.add_deliveries(&mut t).await?;
        Ok(t)
    }

    fn add_live(&self, t: &mut TaskInfo) {
        let now = now_ms();
        if !t.state.is_finished() {
            t.speed_limit_now = t
                .options
                .speed_limit
                .as_ref()
                .map(|l| btp_common::api::SpeedNow::of(l, now));
        }
        if t.state != TaskState::Running {
            return;
        }
        let s = self
            .ctx
            .speed
            .speed(&t.id, now, t.started_ms.unwrap_or(now));
        t.current_bytes_per_sec = s.bytes_per_sec as u64;
        t.current_files_per_sec = (s.files_per_sec * 100.0).round() / 100.0;
        if t.listing_done && s.bytes_per_sec > 0.0 {
            let left = t
                .bytes_found
                .saturating_sub(t.bytes_copied + t.bytes_failed + t.bytes_skipped);
            t.eta_secs = Some((left as f64 / s.bytes_per_sec).ceil() as u64);
        }
    }

    async fn event(&self, t: &TaskInfo) {
        crate::events::publish(&self.ctx.nats, &t.tenant, &t.id, t.state, t.check.clone()).await;
    }

    async fn create(
        &self,
        req: Result<CreateTask, ApiError>,
        tenant: &str,
    ) -> Result<TaskInfo, ApiError> {
        self.create_task_as(req?, tenant, new_task_id()).await
    }

    /// Checks a task request as `task.create` does, storing nothing: its endpoints parse, are
    /// reachable and may be touched, its options are valid. Returns the endpoints.
    pub(crate) async fn check_task(
        &self,
        req: &CreateTask,
        tenant: &str,
    ) -> Result<(Endpoint, Endpoint), ApiError> {
        let src = self
            .endpoint_of(tenant, &req.src, &req.src_options, "source")
            .await?;
        let dst = self
            .endpoint_of(tenant, &req.dst, &req.dst_options, "destination")
            .await?;
        req.options.validate()?;
        if dst.is_within(&src) {
            return Err(ApiError::invalid(format!(
                "destination {dst} is inside the source {src}"
            )));
        }
        // Before the server looks at any path itself.
        self.check_fs_roots(tenant, &src, &dst)?;
        let (s, d) = (src.clone(), dst.clone());
        tokio::task::spawn_blocking(move || {
            s.check_source()?;
            d.check_destination()
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(ApiError::invalid)?;
        for (ep, role) in [(&src, "source"), (&dst, "destination")] {
            match tokio::time::timeout(std::time::Duration::from_secs(20), ep.check_remote(role))
                .await
            {
                Ok(r) => r.map_err(ApiError::invalid)?,
                Err(_) => {
                    return Err(ApiError::invalid(format!(
                        "{role} {ep} cannot be reached: timed out"
                    )))
                }
            }
        }
        Ok((src, dst))
    }

    /// `task.create` under a given task id (a schedule's firing claims its id first).
    pub(crate) async fn create_task_as(
        &self,
        req: CreateTask,
        tenant: &str,
        id: String,
    ) -> Result<TaskInfo, ApiError> {
        let (src, dst) = self.check_task(&req, tenant).await?;
        let files_from = match &req.files_from {
            Some(url) => Some(
                self.manifest_of(tenant, url, &req.files_from_options, &req.options, &dst)
                    .await?,
            ),
            None if !req.files_from_options.is_empty() => return Err(ApiError::invalid(
                "files_from_options given without files_from (--files-from-opt needs --files-from)",
            )),
            None => None,
        };
        let deliveries = self.deliveries_of(&req, tenant).await?;
        if req.start {
            // Nothing is created when the start would be refused.
            self.check_quota(tenant).await?;
        }
        let mut info = TaskInfo::new(
            id.clone(),
            tenant.to_string(),
            src.to_string(),
            dst.to_string(),
            req.options,
            now_ms(),
        );
        info.files_from = files_from.as_ref().map(|m| m.url.clone());
        self.ctx
            .store
            .insert_task_with(&info, &src, &dst, files_from.as_ref(), &deliveries)
            .await?;
        info!(task = %id, src = %src, dst = %dst, "task created");
        self.event(&info).await;
        if req.start {
            return self.start(Ok(TaskRef { id })).await;
        }
        self.add_deliveries(&mut info).await?;
        Ok(info)
    }

    pub(crate) async fn start_task(
        &self,
        req: Result<TaskRef, ApiError>,
    ) -> Result<TaskInfo, ApiError> {
        self.start(req).await
    }

    async fn start(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let req = req?;
        let task = self.ctx.store.task(&req.id).await?;
        if task.info.state != TaskState::Created {
            return Err(ApiError::precondition(format!(
                "task {} cannot be started: it is {}",
                req.id,
                task.info.state.as_str()
            )));
        }
        self.check_fs_roots(&task.info.tenant, &task.src, &task.dst)?;
        let quota = self.check_quota(&task.info.tenant).await?;
        let own = &task.info.options.speed_limit;
        // The tenant's speed quota caps the task (every entry of a timetable) from its first job
        // on; the allocator then shares it among the tenant's running tasks.
        let capped = quota.map(|q| own.as_ref().map_or(SpeedLimit::Rate(q), |o| o.capped(q)));
        let task = match capped {
            Some(c) if own.as_ref() != Some(&c) => {
                self.ctx.store.set_speed_limit(&req.id, Some(c)).await?;
                self.ctx.store.task(&req.id).await?
            }
            _ => task,
        };
        self.ctx.store.start_task(&task, now_ms()).await?;
        self.ctx.wake_dispatcher.notify_one();
        info!(task = %req.id, "task started");
        let t = self.task_info(&req.id).await?;
        self.event(&t).await;
        Ok(t)
    }

    /// Stops publishing the task's jobs and takes the queued ones off the work queue; in-flight
    /// jobs finish and their results count.
    async fn pause(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let id = req?.id;
        let task = self.ctx.store.task(&id).await?;
        let _guard = self.ctx.dispatch_lock.lock().await;
        self.ctx.store.pause_task(&id).await?;
        self.purge(&task.info.tenant, &id).await?;
        info!(task = %id, "task paused");
        let t = self.task_info(&id).await?;
        self.event(&t).await;
        Ok(t)
    }

    async fn resume(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let id = req?.id;
        self.ctx.store.resume_task(&id).await?;
        self.ctx.wake_dispatcher.notify_one();
        info!(task = %id, "task resumed");
        let t = self.task_info(&id).await?;
        self.event(&t).await;
        Ok(t)
    }

    /// Cancels the task: queued jobs are removed and clients abort its in-flight jobs.
    async fn cancel(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let id = req?.id;
        let task = self.ctx.store.task(&id).await?;
        let _guard = self.ctx.dispatch_lock.lock().await;
        self.ctx.store.cancel_task(&id, now_ms()).await?;
        self.purge(&task.info.tenant, &id).await?;
        let control = Control {
            v: btp_common::WIRE_VERSION,
            task: Some(id.clone()),
            client: None,
            bytes_per_sec: None,
            action: ControlAction::Cancel,
        };
        self.control(&task.info.tenant, &control).await?;
        self.ctx.speed.forget(&id);
        info!(task = %id, "task cancelled");
        let t = self.task_info(&id).await?;
        self.event(&t).await;
        Ok(t)
    }

    /// Runs the failed files (and directories) of a finished task again.
    async fn retry(&self, req: Result<TaskRef, ApiError>) -> Result<TaskInfo, ApiError> {
        let id = req?.id;
        let task = self.ctx.store.task(&id).await?;
        if task.info.options.mode == btp_common::api::Mode::Check {
            return self.retry_check(&task).await;
        }
        let n = self.ctx.store.retry_task(&task).await?;
        self.ctx.wake_dispatcher.notify_one();
        info!(task = %id, entries = n, "retrying failed files");
        let t = self.task_info(&id).await?;
        self.event(&t).await;
        Ok(t)
    }

    /// The retry of a finished check task: a new copy task of exactly its `differs` and
    /// `missing` paths, started at once (its Copy jobs come from the stored verdicts; it copies
    /// every one of them, whatever its destination holds). Answers the new task.
    async fn retry_check(&self, check: &crate::store::TaskRow) -> Result<TaskInfo, ApiError> {
        let id = &check.info.id;
        if !matches!(check.info.state, TaskState::Completed | TaskState::Failed) {
            return Err(ApiError::precondition(format!(
                "task {id} cannot be retried: it is {}",
                check.info.state.as_str()
            )));
        }
        self.check_fs_roots(&check.info.tenant, &check.src, &check.dst)?;
        self.check_quota(&check.info.tenant).await?;
        let options = TaskOptions {
            mode: btp_common::api::Mode::Copy,
            compare: btp_common::api::Compare::None,
            one_way: false,
            ..check.info.options.clone()
        };
        let mut info = TaskInfo::new(
            new_task_id(),
            check.info.tenant.clone(),
            check.src.to_string(),
            check.dst.to_string(),
            options,
            now_ms(),
        );
        info.state = TaskState::Running;
        info.started_ms = Some(info.created_ms);
        let task = crate::store::TaskRow {
            info,
            src: check.src.clone(),
            dst: check.dst.clone(),
            files_from: None,
            epoch: 0,
        };
        let n = self.ctx.store.insert_retry_of_check(id, &task).await?;
        self.ctx.wake_dispatcher.notify_one();
        info!(task = %task.info.id, check = %id, files = n, "copying the differing and missing paths of a check");
        let t = self.task_info(&task.info.id).await?;
        self.event(&t).await;
        Ok(t)
    }

    /// `task.verify`: a check task of a finished task's source and destination, with its
    /// filters (and manifest), started at once.
    async fn verify(&self, req: Result<VerifyTask, ApiError>) -> Result<TaskInfo, ApiError> {
        let req = req?;
        let task = self.ctx.store.task(&req.id).await?;
        if !task.info.state.is_finished() {
            return Err(ApiError::precondition(format!(
                "task {} cannot be verified: it is {} (wait until it finishes)",
                req.id,
                task.info.state.as_str()
            )));
        }
        let o = &task.info.options;
        let options = TaskOptions {
            mode: btp_common::api::Mode::Check,
            compare: if req.checksum {
                btp_common::api::Compare::Checksum
            } else {
                btp_common::api::Compare::SizeMtime
            },
            one_way: req.one_way,
            dry_run: false,
            delete_excluded: false,
            filter: o.filter.clone(),
            links: o.links,
            speed_limit: o.speed_limit.clone(),
            max_attempts: o.max_attempts,
            batch_files: o.batch_files,
            batch_bytes: o.batch_bytes,
            list_page_entries: o.list_page_entries,
            list_page_bytes: o.list_page_bytes,
            ..TaskOptions::default()
        };
        options.validate()?;
        let mut info = TaskInfo::new(
            new_task_id(),
            task.info.tenant.clone(),
            task.src.to_string(),
            task.dst.to_string(),
            options,
            now_ms(),
        );
        info.files_from = task.files_from.as_ref().map(|m| m.url.clone());
        self.ctx
            .store
            .insert_task(&info, &task.src, &task.dst, task.files_from.as_ref())
            .await?;
        info!(task = %info.id, of = %req.id, "check task created");
        self.event(&info).await;
        self.start(Ok(TaskRef { id: info.id })).await
    }

    /// `task.verdicts`: one page of a check task's verdicts in path order.
    async fn verdicts(
        &self,
        req: Result<VerdictsRequest, ApiError>,
    ) -> Result<VerdictList, ApiError> {
        use btp_common::wire::VerdictKind;
        let req = req?;
        check_page(req.limit, 0)?;
        let task = self.ctx.store.task(&req.id).await?;
        if task.info.options.mode != btp_common::api::Mode::Check {
            return Err(ApiError::invalid(format!(
                "task {} is not a check task (its per-file report is task.files)",
                req.id
            )));
        }
        let kinds: &[VerdictKind] = if req.differences {
            &[
                VerdictKind::Differs,
                VerdictKind::Missing,
                VerdictKind::Extra,
                VerdictKind::Error,
            ]
        } else {
            &[]
        };
        let verdicts = self
            .ctx
            .store
            .verdicts(&req.id, kinds, req.after.as_deref(), req.limit as i64)
            .await?;
        let next = (verdicts.len() == req.limit as usize)
            .then(|| verdicts.last().map(|v| v.path.clone()))
            .flatten();
        Ok(VerdictList { verdicts, next })
    }

    /// Changes the speed limit; the allocator sends new shares within a second.
    async fn set(&self, req: Result<SetTask, ApiError>) -> Result<TaskInfo, ApiError> {
        let req = req?;
        self.ctx
            .store
            .set_speed_limit(&req.id, req.speed_limit.clone())
            .await?;
        self.ctx.wake_allocator.notify_one();
        let limit = req.speed_limit.as_ref().map(ToString::to_string);
        info!(task = %req.id, speed_limit = ?limit, "task speed limit set");
        self.task_info(&req.id).await
    }

    async fn delete(&self, req: Result<TaskRef, ApiError>) -> Result<TaskRef, ApiError> {
        let id = req?.id;
        self.ctx.store.delete_task(&id).await?;
        self.ctx.speed.forget(&id);
        info!(task = %id, "task deleted");
        Ok(TaskRef { id })
    }

    async fn control(&self, tenant: &str, c: &Control) -> Result<(), ApiError> {
        let body = serde_json::to_vec(c).expect("serializable");
        self.ctx
            .nats
            .publish(subjects::control(tenant), body.into())
            .await
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("notify clients: {e}")))
    }

    /// Removes a task's queued jobs from the work queue.
    async fn purge(&self, tenant: &str, task: &str) -> Result<(), ApiError> {
        let unavailable = |e: String| ApiError::new(ErrorCode::Unavailable, e);
        let stream = self
            .ctx
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
        self.task_info(&req?.id).await
    }

    async fn list(
        &self,
        req: Result<ListTasks, ApiError>,
        tenant: &str,
    ) -> Result<TaskList, ApiError> {
        let req = req?;
        check_page(req.limit, req.offset)?;
        let mut tasks = self
            .ctx
            .store
            .tasks(tenant, req.state, req.limit as i64, req.offset as i64)
            .await?;
        for t in &mut tasks {
            self.add_live(t);
        }
        Ok(TaskList { tasks })
    }

    pub(crate) async fn files(
        &self,
        req: Result<FilesRequest, ApiError>,
    ) -> Result<FileList, ApiError> {
        use crate::cursor::{FilesAt, Key};
        use btp_common::api::{FilesCursor, FILES_PAGE_BYTES};
        /// Jobs read per query.
        const JOBS: i64 = 16;
        /// The numeric cursor of earlier versions: the part of the report in its high bits, the
        /// position within it below (the last job given, or an offset).
        const PART: u64 = 1 << 48;
        let req = req?;
        check_page(req.limit, 0)?;
        let store = &self.ctx.store;
        store.task(&req.id).await?;
        let legacy = !matches!(req.after, Some(FilesCursor::Opaque(_)));
        let mut at = match &req.after {
            None => FilesAt::Jobs { seq: 0, skip: 0 },
            Some(FilesCursor::Opaque(s)) if s.is_empty() => FilesAt::Jobs { seq: 0, skip: 0 },
            Some(FilesCursor::Opaque(s)) => crate::cursor::decode(s)?,
            Some(FilesCursor::Legacy(a)) => {
                let o = (a % PART) as i64;
                match a / PART {
                    0 => FilesAt::Jobs {
                        seq: o + 1,
                        skip: 0,
                    },
                    1 => FilesAt::Entries(Key::Offset(o)),
                    2 => FilesAt::Failures(Key::Offset(o)),
                    _ => return Err(ApiError::invalid("invalid cursor")),
                }
            }
        };
        let next = |at: &FilesAt| -> Result<FilesCursor, ApiError> {
            if !legacy {
                return Ok(FilesCursor::Opaque(crate::cursor::encode(at)));
            }
            Ok(FilesCursor::Legacy(match at {
                FilesAt::Jobs { seq, .. } => (*seq - 1) as u64,
                FilesAt::Entries(Key::Offset(o)) => PART + *o as u64,
                FilesAt::Failures(Key::Offset(o)) => 2 * PART + *o as u64,
                _ => return Err(ApiError::internal("a numeric cursor past a key")),
            }))
        };
        let limit = req.limit as usize;
        let mut files = Vec::new();
        let mut bytes = 0usize;
        // Whether `d` still fits in the page (the first file always does).
        let fits = |files: &Vec<DoneFile>, bytes: usize, d: &DoneFile| {
            let n = serde_json::to_vec(d).map(|v| v.len() + 1).unwrap_or(0);
            (
                files.is_empty() || (files.len() < limit && bytes + n <= FILES_PAGE_BYTES),
                n,
            )
        };
        if let FilesAt::Jobs { seq: first, skip } = at {
            // Files of finished Copy and Upload jobs, from what they kept.
            let mut after = first - 1;
            loop {
                let jobs = store.done_file_jobs(&req.id, after, JOBS).await?;
                let full = jobs.len() as i64 == JOBS;
                let mut not_kept = match (jobs.first(), jobs.last()) {
                    (Some((first, _)), Some((last, _))) => {
                        store.not_kept(&req.id, *first, *last).await?
                    }
                    _ => Default::default(),
                };
                for (seq, payload) in jobs {
                    after = seq;
                    let kept = crate::kept::read_job(&payload, &req.id, seq)?;
                    // Kept by an Upload job that found its file up to date, or by stores of
                    // earlier builds; a large file whose upload failed later is in the
                    // failures instead.
                    if kept.upload {
                        if let Some((path, _, _)) = kept.done.first() {
                            if store.has_failure(&req.id, path).await? {
                                continue;
                            }
                        }
                    }
                    let skip = if seq == first { skip } else { 0 };
                    for (i, (path, size, flags)) in kept.done.into_iter().enumerate().skip(skip) {
                        let lost = not_kept.remove(&(seq, path.clone()));
                        let d = done_file(path, size, flags, lost.unwrap_or_default());
                        let (fit, n) = fits(&files, bytes, &d);
                        // Numeric cursors name whole jobs: a page ends only between two.
                        if !fit && !legacy {
                            return Ok(FileList {
                                files,
                                next: Some(next(&FilesAt::Jobs { seq, skip: i })?),
                            });
                        }
                        bytes += n;
                        files.push(d);
                    }
                    if files.len() >= limit || bytes >= FILES_PAGE_BYTES {
                        return Ok(FileList {
                            files,
                            next: Some(next(&FilesAt::Jobs {
                                seq: seq + 1,
                                skip: 0,
                            })?),
                        });
                    }
                }
                if !full {
                    break;
                }
            }
            at = FilesAt::Entries(Key::Offset(0));
        }
        // Then the entries the listing settled, then the failed ones, each by path.
        loop {
            let (failed, key) = match &at {
                FilesAt::Entries(k) => (false, k.clone()),
                FilesAt::Failures(k) => (true, k.clone()),
                FilesAt::Jobs { .. } => unreachable!("the jobs are done"),
            };
            let mut key = key;
            loop {
                let want = (limit.saturating_sub(files.len())).max(1) as i64;
                let page = if failed {
                    store.report_failures(&req.id, want, &key.at()).await?
                } else {
                    store.report_entries(&req.id, want, &key.at()).await?
                };
                let got = page.len() as i64;
                let here = |k: Key<String>| {
                    if failed {
                        FilesAt::Failures(k)
                    } else {
                        FilesAt::Entries(k)
                    }
                };
                for d in page {
                    let (fit, n) = fits(&files, bytes, &d);
                    if !fit {
                        return Ok(FileList {
                            files,
                            next: Some(next(&here(key))?),
                        });
                    }
                    key = match key {
                        Key::Offset(o) if legacy => Key::Offset(o + 1),
                        _ => Key::After(d.path.clone()),
                    };
                    bytes += n;
                    files.push(d);
                }
                if got < want {
                    break;
                }
                if files.len() >= limit {
                    return Ok(FileList {
                        files,
                        next: Some(next(&here(key))?),
                    });
                }
            }
            if failed {
                break;
            }
            at = FilesAt::Failures(Key::Offset(0));
        }
        Ok(FileList { files, next: None })
    }

    async fn report(&self, req: Result<ReportRequest, ApiError>) -> Result<Report, ApiError> {
        use crate::cursor::{Key, Pos, ReportCursor};
        let req = req?;
        check_page(req.failures_limit, req.failures_offset)?;
        let mut cursor = match &req.after {
            Some(c) => crate::cursor::decode::<ReportCursor>(c)?,
            None => ReportCursor::start(req.failures_offset as i64),
        };
        let task = self.task_info(&req.id).await?;
        let duration_ms = match task.started_ms {
            Some(s) => task.finished_ms.unwrap_or_else(now_ms) - s,
            None => 0,
        };
        let avg = if duration_ms > 0 {
            task.bytes_copied as f64 * 1000.0 / duration_ms as f64
        } else {
            0.0
        };
        let store = &self.ctx.store;
        let limit = req.failures_limit as i64;
        /// Where a list goes on after a page of it: past its last row, or nowhere once a page
        /// came short.
        fn then<K>(got: usize, limit: i64, last: Option<K>) -> Pos<K> {
            (got as i64 == limit)
                .then_some(())
                .and(last.map(Key::After))
        }
        let mut failures = Vec::new();
        if let Some(k) = &cursor.failures {
            failures = store.failures(&req.id, limit, &k.at()).await?;
            cursor.failures = then(
                failures.len(),
                limit,
                failures.last().map(|f| f.path.clone()),
            );
        }
        let mut changes = Vec::new();
        if let Some(k) = &cursor.changes {
            changes = store.changes(&req.id, limit, &k.at()).await?;
            let last = changes.last().map(|(a, p, _)| (p.clone(), a.clone()));
            cursor.changes = then(changes.len(), limit, last);
        }
        let mut not_kept = Vec::new();
        if let Some(k) = &cursor.not_kept {
            let page = store.not_kept_page(&req.id, limit, &k.at()).await?;
            let last = page.last().map(|(n, seq)| (n.path.clone(), *seq));
            cursor.not_kept = then(page.len(), limit, last);
            not_kept = page.into_iter().map(|(n, _)| n).collect();
        }
        // The per-client summary groups every job of the task: on the first page only.
        let clients = match req.after {
            None => store.client_shares(&req.id).await?,
            Some(_) => Vec::new(),
        };
        Ok(Report {
            clients,
            failures,
            changes: changes
                .into_iter()
                .map(|(action, path, size)| btp_common::api::Change { action, path, size })
                .collect(),
            not_kept,
            next: (!cursor.is_end()).then(|| crate::cursor::encode(&cursor)),
            task,
            duration_ms,
            avg_bytes_per_sec: avg.round(),
        })
    }

    /// The clients serving `tenant`.
    async fn clients(
        &self,
        req: Result<Empty, ApiError>,
        tenant: &str,
    ) -> Result<ClientList, ApiError> {
        req?;
        Ok(ClientList {
            clients: self.clients_of(tenant).await?,
        })
    }

    /// The clients serving `tenant`, with their live speed.
    async fn clients_of(&self, tenant: &str) -> Result<Vec<ClientInfo>, ApiError> {
        let now = now_ms();
        let mut clients = self.ctx.store.agents(now, OFFLINE_AFTER_MS).await?;
        clients.retain(|c| serves(c, tenant));
        for c in &mut clients {
            let key = crate::aggregator::client_key(&c.tenant, &c.id);
            c.bytes_per_sec = self.ctx.client_speed.speed(&key, now, 0).bytes_per_sec as u64;
        }
        Ok(clients)
    }

    async fn client(
        &self,
        req: Result<ClientRef, ApiError>,
        tenant: &str,
    ) -> Result<ClientInfo, ApiError> {
        let id = req?.id;
        self.clients_of(tenant)
            .await?
            .into_iter()
            .find(|c| c.id == id)
            .ok_or_else(|| ApiError::not_found(format!("unknown client id '{id}'")))
    }

    /// Asks a client to take no new jobs; its in-flight jobs finish.
    async fn drain(
        &self,
        req: Result<ClientRef, ApiError>,
        tenant: &str,
    ) -> Result<ClientInfo, ApiError> {
        let id = req?.id;
        let mut c = self
            .client(Ok(ClientRef { id: id.clone() }), tenant)
            .await?;
        if !c.online {
            return Err(ApiError::precondition(format!(
                "client {id} cannot be drained: it is offline"
            )));
        }
        let control = Control {
            v: btp_common::WIRE_VERSION,
            task: None,
            client: Some(id.clone()),
            bytes_per_sec: None,
            action: ControlAction::Drain,
        };
        self.control(&c.tenant, &control).await?;
        info!(client = %id, "client asked to drain");
        c.draining = true;
        Ok(c)
    }

    async fn health(&self, req: Result<Empty, ApiError>) -> Result<Health, ApiError> {
        req?;
        let clients = self.ctx.store.agents(now_ms(), OFFLINE_AFTER_MS).await?;
        let running = self.ctx.store.running_tasks().await?;
        Ok(Health {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api: "v1".to_string(),
            database: self.ctx.store.backend().to_string(),
            clients_online: clients
                .iter()
                .filter(|c| c.online)
                .map(|c| &c.id)
                .collect::<std::collections::HashSet<_>>()
                .len() as u64,
            tasks_running: running.len() as u64,
            leader: crate::leader::server_id(),
        })
    }
}

impl Api {
    /// The endpoint a task names: a URL with its options, or `NAME:/path` below one of the
    /// tenant's named endpoints (whose options it uses).
    /// The manifest of `task.create`'s `files_from`: its endpoint resolved like the task's,
    /// and the file checked to be there and readable, so that a task is never created with a
    /// manifest nobody can read.
    async fn manifest_of(
        &self,
        tenant: &str,
        url: &str,
        options: &std::collections::BTreeMap<String, String>,
        task: &btp_common::api::TaskOptions,
        dst: &Endpoint,
    ) -> Result<btp_common::manifest::Manifest, ApiError> {
        let url = url.trim();
        let invalid = |e: String| ApiError::invalid(format!("manifest {url}: {e}"));
        if task.mode == btp_common::api::Mode::Sync {
            return Err(ApiError::invalid(
                "files_from cannot be used with mode sync: a manifest names files to copy, not a \
                 directory whose other files sync could delete (use mode copy)",
            ));
        }
        let (dir, name) = btp_common::manifest::split_url(url).map_err(ApiError::invalid)?;
        let endpoint = self.endpoint_of(tenant, &dir, options, "manifest").await?;
        self.check_fs_roots(tenant, &endpoint, dst)?;
        let manifest = btp_common::manifest::Manifest {
            url: url.to_string(),
            endpoint,
            name,
        };
        if let Endpoint::Fs { root } = &manifest.endpoint {
            let path = std::path::Path::new(root).join(&manifest.name);
            let checked = tokio::task::spawn_blocking(move || std::fs::metadata(&path))
                .await
                .map_err(|e| ApiError::internal(e.to_string()))?;
            return match checked {
                Ok(m) if m.is_file() => Ok(manifest),
                Ok(_) => Err(invalid("not a file".into())),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(invalid("does not exist".into()))
                }
                Err(e) => Err(invalid(format!("cannot be read: {e}"))),
            };
        }
        let op = manifest
            .endpoint
            .source_operator()
            .map_err(|e| invalid(e.to_string()))?;
        let stat =
            tokio::time::timeout(std::time::Duration::from_secs(20), op.stat(&manifest.name))
                .await
                .map_err(|_| invalid("cannot be reached: timed out".into()))?;
        match stat {
            Ok(m) if m.mode() == opendal::EntryMode::FILE => Ok(manifest),
            Ok(_) => Err(invalid("not a file".into())),
            Err(e) if e.kind() == opendal::ErrorKind::NotFound => {
                Err(invalid("does not exist".into()))
            }
            Err(e) => Err(invalid(format!("cannot be read: {e}"))),
        }
    }

    pub(crate) async fn endpoint_of(
        &self,
        tenant: &str,
        given: &str,
        options: &std::collections::BTreeMap<String, String>,
        role: &str,
    ) -> Result<Endpoint, ApiError> {
        let invalid = |e: String| ApiError::invalid(format!("{role}: {e}"));
        let Some((name, path)) = btp_common::api::named_endpoint(given) else {
            return Endpoint::parse_with(given, options).map_err(|e| invalid(e.to_string()));
        };
        if !options.is_empty() {
            return Err(invalid(format!(
                "options go with the endpoint '{name}', not with the task"
            )));
        }
        let Some((_, url, stored, _)) = self
            .ctx
            .store
            .endpoints(tenant, Some(name))
            .await?
            .into_iter()
            .next()
        else {
            return Err(invalid(format!(
                "unknown endpoint '{name}' (see `btp endpoint list`)"
            )));
        };
        let url = btp_common::api::join_url(&url, path).map_err(|e| invalid(e.message))?;
        Endpoint::parse_with(&url, &stored).map_err(|e| invalid(e.to_string()))
    }

    async fn create_endpoint(
        &self,
        req: Result<CreateEndpoint, ApiError>,
        tenant: &str,
    ) -> Result<EndpointInfo, ApiError> {
        let req = req?;
        btp_common::api::check_tenant_name(&req.name)
            .map_err(|_| ApiError::invalid(format!(
                "invalid endpoint name '{}': use 1 to 32 lowercase letters, digits, '-' or '_', starting with a letter",
                req.name.chars().take(40).collect::<String>()
            )))?;
        let ep = Endpoint::parse_with(&req.url, &req.options)
            .map_err(|e| ApiError::invalid(format!("endpoint {}: {e}", req.name)))?;
        if btp_common::api::named_endpoint(&req.url).is_some() {
            return Err(ApiError::invalid(
                "an endpoint is a URL (fs://, s3://, webdav://) or an absolute path, not another endpoint",
            ));
        }
        let now = now_ms();
        self.ctx
            .store
            .create_endpoint(tenant, &req.name, &req.url, &req.options, now)
            .await?;
        info!(tenant, endpoint = %req.name, url = %ep, "endpoint created");
        Ok(EndpointInfo {
            name: req.name,
            tenant: tenant.to_string(),
            url: ep.to_string(),
            option_keys: req.options.keys().cloned().collect(),
            created_ms: now,
        })
    }

    async fn endpoints(
        &self,
        req: Result<Empty, ApiError>,
        tenant: &str,
    ) -> Result<EndpointList, ApiError> {
        req?;
        let rows = self.ctx.store.endpoints(tenant, None).await?;
        Ok(EndpointList {
            endpoints: rows
                .into_iter()
                .map(|(name, url, options, created_ms)| EndpointInfo {
                    url: Endpoint::parse_with(&url, &options)
                        .map(|e| e.to_string())
                        .unwrap_or(url),
                    name,
                    tenant: tenant.to_string(),
                    option_keys: options.into_keys().collect(),
                    created_ms,
                })
                .collect(),
        })
    }

    async fn delete_endpoint(
        &self,
        req: Result<EndpointRef, ApiError>,
        tenant: &str,
    ) -> Result<EndpointRef, ApiError> {
        let name = req?.name;
        self.ctx.store.delete_endpoint(tenant, &name).await?;
        info!(tenant, endpoint = %name, "endpoint deleted");
        Ok(EndpointRef { name })
    }

    /// Refuses a start beyond the tenant's quota of running tasks; returns its speed quota.
    /// Refuses a task with a file-system source or destination that no online client of
    /// `tenant` may touch (every one is confined by `--fs-root` elsewhere, or is shared and has
    /// no root). With no client online nothing is known yet, and the task is let through: the
    /// clients check every job themselves.
    fn check_fs_roots(&self, tenant: &str, src: &Endpoint, dst: &Endpoint) -> Result<(), ApiError> {
        let online = self.ctx.live.online(tenant);
        if online.is_empty() {
            return Ok(());
        }
        for (ep, role) in [(src, "source"), (dst, "destination")] {
            let Endpoint::Fs { root } = ep else {
                continue;
            };
            let allowed = online
                .iter()
                .any(|hb| btp_common::confine::allowed(hb.fs_roots.as_deref(), root));
            if !allowed {
                let mut roots: Vec<&str> = online
                    .iter()
                    .flat_map(|hb| hb.fs_roots.iter().flatten().map(String::as_str))
                    .collect();
                roots.sort_unstable();
                roots.dedup();
                let within = if roots.is_empty() {
                    "they allow no file-system path (shared clients without --fs-root)".to_string()
                } else {
                    format!("they are confined to {}", roots.join(", "))
                };
                return Err(ApiError::invalid(format!(
                    "{role} {ep}: no online client of tenant '{tenant}' may touch this path ({})",
                    within
                )));
            }
        }
        Ok(())
    }

    async fn check_quota(&self, tenant: &str) -> Result<Option<u64>, ApiError> {
        let Some((max_running, speed)) = self.ctx.store.tenant_quotas().await?.remove(tenant)
        else {
            return Ok(None);
        };
        if let Some(max) = max_running {
            let live = self.ctx.store.live_tasks_of(tenant).await?;
            if live >= max as i64 {
                return Err(ApiError::precondition(format!(
                    "tenant '{tenant}' already runs {live} tasks, its quota: finish, cancel or delete one first"
                )));
            }
        }
        Ok(speed)
    }

    async fn create_tenant(
        &self,
        req: Result<CreateTenant, ApiError>,
    ) -> Result<btp_common::api::TenantInfo, ApiError> {
        let req = req?;
        let name = req.name;
        btp_common::api::check_tenant_name(&name)?;
        if req.max_running_tasks == Some(0) {
            return Err(ApiError::invalid("max_running_tasks must be at least 1"));
        }
        if req.speed_limit == Some(0) {
            return Err(ApiError::invalid("speed_limit must be above 0"));
        }
        if name == DEFAULT_TENANT {
            return Err(ApiError::precondition(format!(
                "tenant '{name}' always exists"
            )));
        }
        // The tenant's work queue first: a tenant is only recorded once its clients can pull.
        btp_nats::topology::jobs_consumer(&self.ctx.js, &name, &self.consumer)
            .await
            .map_err(|e| ApiError::new(ErrorCode::Unavailable, format!("{e:#}")))?;
        let t = btp_common::api::TenantInfo {
            name,
            created_ms: now_ms(),
            max_running_tasks: req.max_running_tasks,
            speed_limit: req.speed_limit,
            tokens: 0,
            tasks: 0,
        };
        self.ctx.store.create_tenant(&t).await?;
        info!(tenant = %t.name, max_running_tasks = ?t.max_running_tasks, speed_limit = ?t.speed_limit, "tenant created");
        Ok(t)
    }

    async fn tenants(&self, req: Result<Empty, ApiError>) -> Result<TenantList, ApiError> {
        req?;
        Ok(TenantList {
            tenants: self.ctx.store.tenants().await?,
        })
    }

    async fn delete_tenant(&self, req: Result<TenantRef, ApiError>) -> Result<TenantRef, ApiError> {
        let name = req?.name;
        self.ctx.store.delete_tenant(&name).await?;
        info!(tenant = %name, "tenant deleted with its tokens");
        Ok(TenantRef { name })
    }

    async fn create_token(
        &self,
        req: Result<CreateToken, ApiError>,
    ) -> Result<TokenCreated, ApiError> {
        let req = req?;
        if req.label.len() > 200 {
            return Err(ApiError::invalid("label: at most 200 bytes"));
        }
        if !self.ctx.store.tenant_exists(&req.tenant).await? {
            return Err(ApiError::not_found(format!(
                "unknown tenant '{}' (create it with `btp tenant create`)",
                req.tenant.chars().take(40).collect::<String>()
            )));
        }
        let token = new_token();
        let info = TokenInfo {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            tenant: req.tenant,
            label: req.label,
            created_ms: now_ms(),
        };
        self.ctx
            .store
            .insert_token(&info, &token_hash(&token))
            .await?;
        info!(tenant = %info.tenant, token_id = %info.id, "API token created");
        Ok(TokenCreated { info, token })
    }

    async fn tokens(&self, req: Result<ListTokens, ApiError>) -> Result<TokenList, ApiError> {
        let req = req?;
        Ok(TokenList {
            tokens: self.ctx.store.tokens(req.tenant.as_deref()).await?,
        })
    }

    async fn delete_token(&self, req: Result<TokenRef, ApiError>) -> Result<TokenRef, ApiError> {
        let id = req?.id;
        self.ctx.store.delete_token(&id).await?;
        info!(token_id = %id, "API token deleted");
        Ok(TokenRef { id })
    }
}

/// True when the client runs `tenant`'s jobs (a shared client lists its tenants with commas).
fn serves(c: &ClientInfo, tenant: &str) -> bool {
    c.tenant.split(',').any(|t| t == tenant)
}

fn check_page(limit: u32, offset: u64) -> Result<(), ApiError> {
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    if offset > i64::MAX as u64 {
        return Err(ApiError::invalid("offset is too large"));
    }
    Ok(())
}

/// A short random task id (12 hex digits).
pub(crate) fn new_task_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// A file of a finished Copy or Upload job in the per-file report.
fn done_file(path: String, size: u64, flags: u8, not_kept: String) -> DoneFile {
    DoneFile {
        path,
        size,
        outcome: if flags & crate::kept::SKIPPED != 0 {
            Outcome::Skipped
        } else {
            Outcome::Copied
        },
        reason: String::new(),
        attempts: 0,
        not_kept,
    }
}

/// Whether a caller of `tenant` may name task `id`, from the lookup of the task's tenant. Fails
/// closed: another tenant's task is answered like a missing one, and any error of the lookup
/// but "not found" (which the operation itself reports) denies the request.
fn scope_of_task(lookup: Result<String, ApiError>, tenant: &str, id: &str) -> Result<(), ApiError> {
    match lookup {
        Ok(owner) if owner == tenant => Ok(()),
        Ok(_) => Err(ApiError::not_found(format!("unknown task id '{id}'"))),
        Err(e) if e.code == ErrorCode::NotFound => Ok(()),
        Err(e) => {
            warn!(task = %id, error = %e.message, "checking a task's tenant failed; request denied");
            Err(ApiError::new(
                ErrorCode::Unavailable,
                "the task's tenant could not be checked; try again",
            ))
        }
    }
}

#[cfg(test)]
mod scope_tests {
    use super::*;

    #[test]
    fn a_failed_task_lookup_denies_the_request() {
        assert!(scope_of_task(Ok("acme".into()), "acme", "t1").is_ok());
        let e = scope_of_task(Ok("globex".into()), "acme", "t1").unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        // Missing: the operation answers "unknown task id" itself.
        assert!(scope_of_task(
            Err(ApiError::not_found("unknown task id 't1'")),
            "acme",
            "t1"
        )
        .is_ok());
        for err in [
            ApiError::internal("database is locked"),
            ApiError::new(ErrorCode::Unavailable, "pool timed out"),
        ] {
            let e = scope_of_task(Err(err), "acme", "t1").unwrap_err();
            assert_ne!(e.code, ErrorCode::NotFound);
            assert!(!e.message.contains("locked"), "{}", e.message);
        }
    }
}
