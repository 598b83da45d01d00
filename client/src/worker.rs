//! The worker pool: pulls jobs from the tenant's durable consumer only when a worker is free (no
//! job waits in a local buffer while its ack timer runs), runs them, and settles each message:
//! ack after the results are stored, nak with backoff on transient errors, a failure result and
//! ack on permanent ones or when attempts run out, term for messages that are not jobs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer, AckKind};
use btp_common::wire::{decode, Control, ControlAction, Job, ResultBody};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::errors::{backoff, JobError};
use crate::exec::{self, JobContext, ResultSink};
use crate::limiter::RateLimiter;
use crate::telemetry::{self, Outcome};
use crate::ClientConfig;

/// Cancellation of running jobs, per task: a child of `stopping` (the client shuts down) for
/// each task, cancelled alone when the server cancels that task.
#[derive(Default)]
pub struct TaskTokens {
    pub stopping: CancellationToken,
    /// Set when the server asks this client to drain: no new jobs are pulled.
    pub draining: CancellationToken,
    tasks: std::sync::Mutex<TaskTokenMap>,
}

#[derive(Default)]
struct TaskTokenMap {
    live: std::collections::HashMap<String, CancellationToken>,
    cancelled: std::collections::HashSet<String>,
    /// Per-task speed limiters: `None` once the server said the task is unlimited.
    /// One limiter per task that ever had a limit here; an `off` timetable entry or a lifted
    /// limit leaves it unlimited, so running copies follow every later change.
    limits: std::collections::HashMap<String, Arc<RateLimiter>>,
    /// When a job of each task last ran here, and how many run now.
    active: std::collections::HashMap<String, std::time::Instant>,
    running: std::collections::HashMap<String, usize>,
}

impl TaskTokens {
    /// The token for jobs of `task`, or None when the task was cancelled.
    pub fn token(&self, task: &str) -> Option<CancellationToken> {
        let mut m = self.tasks.lock().expect("task tokens lock");
        if m.cancelled.contains(task) {
            return None;
        }
        let stopping = &self.stopping;
        Some(
            m.live
                .entry(task.to_string())
                .or_insert_with(|| stopping.child_token())
                .clone(),
        )
    }

    /// The limiter of `task`: the share last sent by the server, else the job's own share.
    /// None while neither gave one.
    pub fn limiter(&self, task: &str, job_share: Option<u64>) -> Option<Arc<RateLimiter>> {
        let mut m = self.tasks.lock().expect("task tokens lock");
        if let Some(known) = m.limits.get(task) {
            return Some(known.clone());
        }
        let l = Arc::new(RateLimiter::new(job_share?));
        m.limits.insert(task.to_string(), l.clone());
        Some(l)
    }

    /// Applies the server's share of a task's speed limit (None: no limit now).
    pub async fn set_limit(&self, task: &str, bytes_per_sec: Option<u64>) {
        let existing = {
            let mut m = self.tasks.lock().expect("task tokens lock");
            match (m.limits.get(task).cloned(), bytes_per_sec) {
                (Some(l), _) => Some(l),
                (None, rate) => {
                    // Known from now on: a job's older share does not bring a limit back.
                    let l = rate.map_or_else(RateLimiter::unlimited, RateLimiter::new);
                    m.limits.insert(task.to_string(), Arc::new(l));
                    None
                }
            }
        };
        if let Some(l) = existing {
            l.set(bytes_per_sec).await;
        }
    }

    /// A job of `task` starts (`true`) or ends (`false`) here.
    pub fn job_running(&self, task: &str, starts: bool) {
        let mut m = self.tasks.lock().expect("task tokens lock");
        let n = m.running.entry(task.to_string()).or_default();
        if starts {
            *n += 1;
        } else {
            *n = n.saturating_sub(1);
        }
        m.active.insert(task.to_string(), std::time::Instant::now());
    }

    /// Tasks with a job running here now or within `within` (reported in heartbeats).
    pub fn active_tasks(&self, within: Duration) -> Vec<String> {
        let mut m = self.tasks.lock().expect("task tokens lock");
        let m = &mut *m;
        m.active.retain(|_, at| at.elapsed() < within * 10);
        m.running.retain(|_, n| *n > 0);
        let mut out: Vec<String> = m
            .active
            .iter()
            .filter(|(t, at)| at.elapsed() < within || m.running.contains_key(*t))
            .map(|(t, _)| t.clone())
            .collect();
        out.sort();
        out
    }

    /// Aborts the running jobs of `task` and refuses its later ones.
    pub fn cancel(&self, task: &str) {
        let mut m = self.tasks.lock().expect("task tokens lock");
        if let Some(t) = m.live.remove(task) {
            t.cancel();
        }
        m.cancelled.insert(task.to_string());
    }
}

/// Listens for control messages of the tenant (task cancellation).
pub async fn control(
    nats: async_nats::Client,
    tenant: String,
    tokens: Arc<TaskTokens>,
    client_id: String,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats
        .subscribe(btp_common::subjects::control(&tenant))
        .await?;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        match decode::<Control>(&msg.payload) {
            Ok(c) => match (c.action, c.task, c.client) {
                (ControlAction::Cancel, Some(task), _) => {
                    info!(task = %task, "cancelling the task's jobs");
                    tokens.cancel(&task);
                }
                (ControlAction::Limit, Some(task), _) => {
                    debug!(task = %task, share = ?c.bytes_per_sec, "speed limit share");
                    tokens.set_limit(&task, c.bytes_per_sec).await;
                }
                (ControlAction::Drain, _, Some(client)) if client == client_id => {
                    info!("draining: taking no new jobs");
                    tokens.draining.cancel();
                }
                _ => {}
            },
            Err(e) => warn!(error = %e, "ignoring a malformed control message"),
        }
    }
}

/// Counters shared with the heartbeat.
#[derive(Default)]
pub struct Stats {
    pub jobs_done: AtomicU64,
    pub busy: AtomicU64,
    pub draining: std::sync::atomic::AtomicBool,
}

pub async fn run(
    cfg: Arc<ClientConfig>,
    js: jetstream::Context,
    consumers: Vec<PullConsumer>,
    stats: Arc<Stats>,
    tokens: Arc<TaskTokens>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let workers = cfg.workers.max(1);
    let sem = Arc::new(Semaphore::new(workers));
    // Jobs keep running through a stop request until they finish or the grace period ends.
    let limiter = cfg.max_speed.map(|r| Arc::new(RateLimiter::new(r)));
    let (mut next, mut idle) = (0usize, 0usize);
    'pull: loop {
        let first = tokio::select! {
            // A stop wins over a free worker: no new pull once stopping.
            biased;
            _ = cancel.cancelled() => break 'pull,
            _ = tokens.draining.cancelled() => break 'pull,
            p = sem.clone().acquire_owned() => p?,
        };
        let mut permits = vec![first];
        while let Ok(p) = sem.clone().try_acquire_owned() {
            permits.push(p);
        }
        // The tenants' queues in turn, starting after the one served last: a quick look at each
        // (no waiting) until one has jobs; once all looked empty, a waiting pull on the next.
        let consumer = &consumers[next % consumers.len()];
        next = next.wrapping_add(1);
        let max_deliver = consumer.cached_info().config.max_deliver;
        let batch = if consumers.len() == 1 || idle >= consumers.len() {
            idle = 0;
            // Short pulls: a stopping client waits for at most one to end; a shared client
            // waits less on one queue while another may fill.
            let wait = if consumers.len() == 1 { 500 } else { 100 };
            consumer
                .batch()
                .max_messages(permits.len())
                .expires(Duration::from_millis(wait))
                .messages()
                .await
        } else {
            consumer
                .fetch()
                .max_messages(permits.len())
                .messages()
                .await
        };
        let mut batch = match batch {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "pulling jobs failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break 'pull,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue 'pull,
                }
            }
        };
        let mut received = 0usize;
        loop {
            let next = if cfg.quick_stop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break,
                    m = batch.next() => m,
                }
            } else {
                batch.next().await
            };
            let Some(msg) = next else { break };
            received += 1;
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    debug!(error = %e, "pull batch ended with an error");
                    break;
                }
            };
            if cancel.is_cancelled() || tokens.draining.is_cancelled() {
                // Stopping: hand the job back at once instead of holding it.
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                continue;
            }
            let Some(permit) = permits.pop() else {
                let _ = msg.ack_with(AckKind::Nak(None)).await;
                continue;
            };
            let (cfg, js, stats, tokens) = (cfg.clone(), js.clone(), stats.clone(), tokens.clone());
            let limiter = limiter.clone();
            tokio::spawn(async move {
                let busy = stats.busy.fetch_add(1, Ordering::Relaxed) + 1;
                metrics::gauge!(telemetry::WORKERS_BUSY).set(busy as f64);
                // A panic in a job must not take the worker's bookkeeping with it; the message
                // is redelivered after the ack wait.
                let job = tokio::spawn(async move {
                    run_job(&cfg, js, msg, max_deliver, &tokens, limiter).await
                });
                if let Err(e) = job.await {
                    tracing::error!(error = %e, "a job panicked; it will be redelivered");
                }
                let busy = stats.busy.fetch_sub(1, Ordering::Relaxed) - 1;
                metrics::gauge!(telemetry::WORKERS_BUSY).set(busy as f64);
                stats.jobs_done.fetch_add(1, Ordering::Relaxed);
                drop(permit);
            });
        }
        idle = if received == 0 { idle + 1 } else { 0 };
    }
    let all = workers as u32;
    if !cancel.is_cancelled() {
        stats.draining.store(true, Ordering::Relaxed);
        // Asked to drain: in-flight jobs finish, then the client idles (online) until stopped.
        tokio::select! {
            _ = sem.acquire_many(all) => info!("drained: no job in flight"),
            _ = cancel.cancelled() => {}
        }
        cancel.cancelled().await;
    }
    // Stopping: let in-flight jobs finish within the grace period, then stop them (they are nak'd).
    info!(
        in_flight = workers - sem.available_permits(),
        "draining workers"
    );
    if tokio::time::timeout(cfg.drain_grace, sem.acquire_many(all))
        .await
        .is_err()
    {
        warn!("in-flight jobs did not finish within the grace period; handing them back");
        tokens.stopping.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), sem.acquire_many(all)).await;
    }
    Ok(())
}

/// This run's attempt at `job`, delivered for the `delivered`-th time by a consumer with
/// `max_deliver` (0 or less: unlimited), and whether it is the last one. Attempts count across
/// redeliveries and across the server's retry jobs. JetStream delivers a message at most
/// MaxDeliver times, so that delivery is the last attempt too: a job failing transiently is
/// then reported rather than dropped unsettled (the server would take it for a job that
/// crashed its workers).
fn attempt(job: &Job, delivered: i64, max_deliver: i64) -> (u32, bool) {
    let attempt = job.attempt.max(1) + (delivered.max(1) as u32 - 1);
    let last_delivery = max_deliver > 0 && delivered >= max_deliver;
    (attempt, attempt >= job.max_attempts || last_delivery)
}

/// Runs one job; `max_deliver` is its consumer's MaxDeliver (0 or less: unlimited).
async fn run_job(
    cfg: &ClientConfig,
    js: jetstream::Context,
    msg: jetstream::Message,
    max_deliver: i64,
    tokens: &TaskTokens,
    limiter: Option<Arc<RateLimiter>>,
) {
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    let job: Job = match decode(&msg.payload) {
        Ok(j) => j,
        Err(e) => {
            warn!(subject = %msg.subject, error = %e, "terminating a message that is not a job");
            let _ = msg.ack_with(AckKind::Term).await;
            return;
        }
    };
    // An Abort job cleans up after a cancelled task: it runs all the same.
    let token = match (&job.kind, tokens.token(&job.task)) {
        (_, Some(t)) => Some(t),
        (btp_common::wire::JobKind::Abort { .. }, None) => Some(tokens.stopping.child_token()),
        _ => None,
    };
    let Some(cancel) = token else {
        debug!(job = %job.id, "dropping a job of a cancelled task");
        let _ = msg.ack_with(AckKind::Term).await;
        return;
    };
    let task_limiter = tokens.limiter(&job.task, job.speed_share);
    tokens.job_running(&job.task, true);
    let (attempt, last_attempt) = attempt(&job, delivered, max_deliver);
    let retry_after = backoff(attempt as i64, cfg.retry_backoff, cfg.retry_backoff_max);
    let sink = ResultSink {
        js,
        client: cfg.id.clone(),
        attempt,
        through: Default::default(),
    };
    // Confinement first: a refused job touches no file system.
    let refused = cfg.check_fs_paths(&job).err();
    let ctx = JobContext {
        sink: &sink,
        cancel: &cancel,
        last_attempt,
        attempt,
        retry_after,
        multipart: matches!(
            job.dst,
            btp_common::Endpoint::S3 { .. }
                | btp_common::Endpoint::Azblob { .. }
                | btp_common::Endpoint::Gcs { .. }
        ),
        limiter: limiter.as_deref(),
        task_limiter: task_limiter.as_deref(),
    };
    let started = std::time::Instant::now();

    // Keep the job ours while it runs: progress acks well within the ack wait.
    let mut ticker = tokio::time::interval(cfg.ack_wait / 3);
    ticker.tick().await;
    let work = async {
        match &refused {
            Some(reason) => {
                warn!(job = %job.id, tenant = %job.tenant, %reason, "job refused");
                Err(JobError::Permanent(reason.clone()))
            }
            None => exec::execute(&job, &ctx).await,
        }
    };
    tokio::pin!(work);
    let outcome = loop {
        tokio::select! {
            r = &mut work => break r,
            _ = ticker.tick() => {
                if let Err(e) = msg.ack_with(AckKind::Progress).await {
                    debug!(job = %job.id, error = %e, "progress ack failed");
                }
            }
        }
    };
    let kind = job.kind.name();
    tokens.job_running(&job.task, false);
    let (settle, result) = match outcome {
        Ok(()) => (AckKind::Ack, Outcome::Ok),
        Err(JobError::Cancelled) if tokens.stopping.is_cancelled() => {
            info!(job = %job.id, kind, "handing an unfinished job back");
            (AckKind::Nak(None), Outcome::Cancelled)
        }
        Err(JobError::Cancelled) => {
            info!(job = %job.id, kind, "job of a cancelled task aborted");
            (AckKind::Term, Outcome::Cancelled)
        }
        Err(e) if e.is_transient() && !last_attempt => {
            info!(job = %job.id, kind, attempt, error = %e, retry_in = ?retry_after, "job will be retried");
            (AckKind::Nak(Some(retry_after)), Outcome::Retried)
        }
        Err(e) => {
            let reason = match &e {
                JobError::Transient(r) => format!("{r} (gave up after {attempt} attempts)"),
                _ => e.to_string(),
            };
            warn!(job = %job.id, kind, error = %reason, "job failed");
            match sink
                .send(&job, 0, true, ResultBody::Failed { reason })
                .await
            {
                Ok(()) => (AckKind::Ack, Outcome::Failed),
                Err(e) => {
                    warn!(job = %job.id, error = %e, "reporting a failure failed; retrying the job");
                    (AckKind::Nak(Some(cfg.retry_backoff)), Outcome::Retried)
                }
            }
        }
    };
    let done = matches!(settle, AckKind::Ack);
    let r = if done {
        msg.double_ack().await
    } else {
        msg.ack_with(settle).await
    };
    if let Err(e) = r {
        warn!(job = %job.id, error = %e, "settling a job failed; it will be redelivered and its result ignored");
    }
    metrics::counter!(telemetry::JOBS, "kind" => kind, "outcome" => result.as_str()).increment(1);
    metrics::histogram!(telemetry::JOB_DURATION, "kind" => kind)
        .record(started.elapsed().as_secs_f64());
    debug!(job = %job.id, kind, ms = started.elapsed().as_millis() as u64, done, "job settled");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_attempt_comes_with_max_attempts_or_with_the_last_delivery() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "v": btp_common::WIRE_VERSION, "id": "t.1", "tenant": "default", "task": "t",
            "src": btp_common::Endpoint::parse("/a").unwrap(),
            "dst": btp_common::Endpoint::parse("/b").unwrap(),
            "attempt": 2, "max_attempts": 10, "kind": {"type": "copy", "files": []}
        }))
        .unwrap();
        assert_eq!(attempt(&job, 1, 64), (2, false));
        assert_eq!(attempt(&job, 9, 64), (10, true), "max_attempts");
        assert_eq!(
            attempt(&job, 3, 3),
            (4, true),
            "the consumer's last delivery"
        );
        assert_eq!(attempt(&job, 2, 3), (3, false));
        assert_eq!(attempt(&job, 5, -1), (6, false), "no MaxDeliver");
    }
}
