//! Metrics of the server. Names follow `btp_<subsystem>_<name>_<unit>[_total]`; labels are
//! bounded enums plus tenant and task for live tasks only (gauges of a finished task are no
//! longer updated and the exporter drops them after its idle timeout).

use std::time::Duration;

use btp_common::api::TaskState;
use btp_common::{now_ms, subjects};
use futures::TryStreamExt;
use metrics::{counter, gauge};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::agents::OFFLINE_AFTER_MS;
use crate::Shared;

pub const BYTES_COPIED: &str = "btp_server_bytes_copied_total";
pub const FILES_COPIED: &str = "btp_server_files_copied_total";
pub const FILES_FAILED: &str = "btp_server_files_failed_total";
pub const FILES_RETRIED: &str = "btp_server_files_retried_total";
pub const FILES_SKIPPED: &str = "btp_server_files_skipped_total";
pub const JOBS: &str = "btp_server_jobs_total";
pub const CHECK_VERDICTS: &str = "btp_server_check_verdicts_total";
pub const BYTES_HASHED: &str = "btp_server_bytes_hashed_total";
pub const JOBS_PUBLISHED: &str = "btp_server_jobs_published_total";
pub const RESULTS: &str = "btp_server_results_total";
pub const RESULTS_REJECTED: &str = "btp_server_results_rejected_total";
pub const HEARTBEATS_REJECTED: &str = "btp_server_heartbeats_rejected_total";
pub const API_REFUSED: &str = "btp_server_api_unauthenticated_total";
pub const JOBS_PENDING: &str = "btp_server_jobs_pending";
pub const TASK_SPEED_BYTES: &str = "btp_server_task_speed_bytes_per_second";
pub const TASK_SPEED_FILES: &str = "btp_server_task_speed_files_per_second";
pub const TASK_PROGRESS: &str = "btp_server_task_progress_ratio";
pub const TASK_SPEED_LIMIT: &str = "btp_server_task_speed_limit_bytes_per_second";
pub const TASKS: &str = "btp_server_tasks";
pub const CLIENTS_ONLINE: &str = "btp_server_clients_online";
pub const WORKERS_ACTIVE: &str = "btp_server_workers_active";

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, Unit};
    describe_counter!(
        FILES_SKIPPED,
        "Files already identical at the destination, not copied."
    );
    describe_counter!(
        BYTES_COPIED,
        Unit::Bytes,
        "Bytes copied, counted once per applied result."
    );
    describe_counter!(
        FILES_COPIED,
        "Files copied, counted once per applied result."
    );
    describe_counter!(
        FILES_FAILED,
        "Files that failed permanently or ran out of attempts."
    );
    describe_counter!(
        FILES_RETRIED,
        "Files scheduled again after a transient error."
    );
    describe_counter!(
        JOBS,
        "Finished jobs by kind and outcome (ok, skipped, retried, failed)."
    );
    describe_counter!(
        CHECK_VERDICTS,
        "Verdicts of check tasks, by verdict (same, differs, missing, extra, error)."
    );
    for v in btp_common::wire::VerdictKind::ALL {
        counter!(CHECK_VERDICTS, "verdict" => v.as_str()).increment(0);
    }
    describe_counter!(
        BYTES_HASHED,
        Unit::Bytes,
        "Bytes check tasks read and hashed to compare contents."
    );
    describe_counter!(JOBS_PUBLISHED, "Jobs published to the work queue, by kind.");
    describe_counter!(
        API_REFUSED,
        "API requests refused for a missing, unknown or deleted token."
    );
    describe_counter!(
        RESULTS,
        "Results received, by outcome (applied, duplicate, deferred, rejected, failed, malformed)."
    );
    describe_counter!(
        RESULTS_REJECTED,
        "Results dropped, by reason: not bound to their task's tenant (tenant), naming another task (task), not fitting their job (poison)."
    );
    for reason in crate::aggregator::reject::ALL {
        counter!(RESULTS_REJECTED, "reason" => reason).increment(0);
    }
    describe_counter!(
        HEARTBEATS_REJECTED,
        "Heartbeats dropped, by reason: naming another tenant than their subject (tenant), not decodable (malformed)."
    );
    for reason in crate::agents::reject::ALL {
        counter!(HEARTBEATS_REJECTED, "reason" => reason).increment(0);
    }
    describe_gauge!(
        JOBS_PENDING,
        "Jobs of a live task waiting in the JetStream work queue."
    );
    describe_gauge!(
        TASK_SPEED_BYTES,
        "Current copy speed of a running task (10 s window)."
    );
    describe_gauge!(
        TASK_SPEED_FILES,
        "Current files per second of a running task (10 s window)."
    );
    describe_gauge!(
        TASK_PROGRESS,
        "Share of a running task's found bytes that are done (0 to 1)."
    );
    describe_gauge!(
        TASK_SPEED_LIMIT,
        "Speed limit in force for a running task, a timetable's current entry (0 when unlimited)."
    );
    describe_gauge!(TASKS, "Tasks by state.");
    describe_gauge!(CLIENTS_ONLINE, "Clients whose heartbeats arrive.");
    describe_gauge!(
        WORKERS_ACTIVE,
        "Workers running a job now, over all online clients."
    );
}

const STATES: [TaskState; 6] = [
    TaskState::Created,
    TaskState::Running,
    TaskState::Paused,
    TaskState::Completed,
    TaskState::Failed,
    TaskState::Cancelled,
];

/// Counts what an applied result did (called once per applied result).
pub fn record_result(kind: &str, outcome: &'static str, r: &ResultCounts) {
    counter!(JOBS, "kind" => kind.to_string(), "outcome" => outcome).increment(1);
    counter!(BYTES_COPIED).increment(r.bytes);
    counter!(FILES_COPIED).increment(r.files);
    counter!(FILES_SKIPPED).increment(r.skipped);
    counter!(FILES_FAILED).increment(r.failed);
    counter!(FILES_RETRIED).increment(r.retried);
}

/// Check verdicts of one batch, by kind (`VerdictKind::ALL` order), and the bytes hashed.
pub fn record_check(verdicts: &[u64; 5], bytes_hashed: u64) {
    for (v, n) in btp_common::wire::VerdictKind::ALL.iter().zip(verdicts) {
        if *n > 0 {
            counter!(CHECK_VERDICTS, "verdict" => v.as_str()).increment(*n);
        }
    }
    if bytes_hashed > 0 {
        counter!(BYTES_HASHED).increment(bytes_hashed);
    }
}

/// What one applied result counted.
#[derive(Default, Clone, Copy)]
pub struct ResultCounts {
    pub bytes: u64,
    pub files: u64,
    pub skipped: u64,
    pub failed: u64,
    pub retried: u64,
}

/// Refreshes the gauges every 2 s: tasks by state, live task speed and queue depth, clients.
pub async fn run(ctx: Shared, cancel: CancellationToken) -> anyhow::Result<()> {
    describe();
    let mut ticker = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ticker.tick() => {}
        }
        if let Err(e) = refresh(&ctx).await {
            debug!(error = %e, "refreshing metrics failed");
        }
    }
}

async fn refresh(ctx: &Shared) -> anyhow::Result<()> {
    let counts = ctx.store.task_counts().await?;
    for s in STATES {
        let n = counts
            .iter()
            .find(|(st, _)| st == s.as_str())
            .map(|(_, n)| *n)
            .unwrap_or(0);
        gauge!(TASKS, "state" => s.as_str()).set(n as f64);
    }
    let now = now_ms();
    let agents = ctx.store.agents(now, OFFLINE_AFTER_MS).await?;
    // A shared client has a row per tenant: count it once.
    let mut seen = std::collections::HashSet::new();
    let online: Vec<_> = agents
        .iter()
        .filter(|a| a.online && seen.insert(a.id.clone()))
        .collect();
    gauge!(CLIENTS_ONLINE).set(online.len() as f64);
    gauge!(WORKERS_ACTIVE).set(online.iter().map(|a| a.busy as f64).sum::<f64>());

    let mut pending = std::collections::HashMap::new();
    let stream = ctx.js.get_stream(subjects::JOBS_STREAM).await?;
    let mut per_subject = stream.info_with_subjects("btp.jobs.>").await?;
    while let Some((subject, n)) = per_subject.try_next().await? {
        pending.insert(subject, n);
    }
    for (id, tenant, _) in ctx.store.running_tasks().await? {
        let t = ctx.store.task(&id).await?.info;
        let s = ctx.speed.speed(&id, now, t.started_ms.unwrap_or(now));
        let labels = [("tenant", tenant.clone()), ("task", id.clone())];
        gauge!(TASK_SPEED_BYTES, &labels).set(s.bytes_per_sec);
        gauge!(TASK_SPEED_FILES, &labels).set(s.files_per_sec);
        let done = (t.bytes_copied + t.bytes_failed + t.bytes_skipped) as f64;
        let ratio = if t.bytes_found > 0 {
            done / t.bytes_found as f64
        } else {
            0.0
        };
        gauge!(TASK_PROGRESS, &labels).set(ratio.min(1.0));
        // The limit in force now (a timetable's current entry); 0 for none.
        let limit = t.options.speed_limit.as_ref().and_then(|l| l.now(now));
        gauge!(TASK_SPEED_LIMIT, &labels).set(limit.unwrap_or(0) as f64);
        let queued = pending
            .get(&subjects::jobs(&tenant, &id))
            .copied()
            .unwrap_or(0);
        gauge!(JOBS_PENDING, &labels).set(queued as f64);
    }
    Ok(())
}
