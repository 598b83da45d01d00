//! Consumes job results and applies each `(job, seq)` exactly once: a batch of results is applied
//! in one database transaction and acknowledged to JetStream only after it commits.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use btp_common::api::ApiError;
use btp_common::api::TaskState;
use btp_common::now_ms;
use btp_common::wire::{
    decode, FileEntry, FileFailure, Job, JobKind, JobResult, Noted, Outcome, ResultBody, Verdict,
    VerdictKind,
};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::planner;
use crate::store::{self, job_state, Schedule, Store, TaskDelta, Tx};
use btp_common::checksum;

/// What applying one result did.
#[derive(Debug, PartialEq, Eq)]
pub enum Applied {
    /// Counted now.
    Yes,
    /// Already counted before (a redelivery or a duplicate run): ignored.
    Duplicate,
    /// A later page arrived before an earlier one: try again shortly.
    Defer,
    /// Refused and dropped (terminated), for the reason given (a bounded label of
    /// `btp_server_results_rejected_total`): a result not bound to its task's tenant (`tenant`),
    /// naming another task than its subject or job (`task`), or not fitting its job (`poison`).
    Rejected(&'static str),
    /// Applying it failed (a database error of this result alone): rolled back and redelivered
    /// after a second, while the rest of its batch commits.
    Failed,
}

/// Reasons of `btp_server_results_rejected_total`.
pub mod reject {
    /// The subject's tenant, the body's and the task's are not all the same.
    pub const TENANT: &str = "tenant";
    /// The body names another task than its subject or its job.
    pub const TASK: &str = "task";
    /// The result decodes but does not fit its job (a `begun` for a Copy job).
    pub const POISON: &str = "poison";
    pub const ALL: [&str; 3] = [TENANT, TASK, POISON];
}

/// An error of a result that does not fit its job: it is dropped as poison, and the rest of
/// its batch applies. (Database errors are other codes and fail the batch, to be redelivered.)
fn misfit(message: String) -> ApiError {
    ApiError::new(btp_common::api::ErrorCode::InvalidArgument, message)
}

/// Whether a result body can be the answer of a job of `kind`.
fn fits(kind: &str, body: &ResultBody) -> bool {
    match body {
        ResultBody::ListPage { .. } => kind == "list",
        ResultBody::Checked { .. } => kind == "hash",
        ResultBody::Copy { .. } => matches!(kind, "copy" | "upload" | "complete"),
        ResultBody::Begun { .. } => kind == "upload",
        ResultBody::Part { .. } => kind == "part",
        ResultBody::Aborted => kind == "abort",
        ResultBody::Deleted { .. } => kind == "delete",
        ResultBody::Failed { .. } => true,
    }
}

/// The key of a client's live speed: per tenant, as the client registry, so results of one
/// tenant's tasks naming another tenant's client id do not show in that client's speed.
pub fn client_key(tenant: &str, client: &str) -> String {
    format!("{tenant}/{client}")
}

/// The tenant and task of a result's subject, `btp.results.<tenant>.<task>`.
pub fn subject_parts(subject: &str) -> Option<(&str, &str)> {
    let rest = subject.strip_prefix("btp.results.")?;
    let (tenant, task) = rest.split_once('.')?;
    (!tenant.is_empty() && !task.is_empty() && !task.contains('.')).then_some((tenant, task))
}

/// Checks a decoded result against the subject it came on; the task's own tenant is checked
/// by [`apply`] against the body's (so all three agree).
pub fn check_subject(subject: &str, r: &JobResult) -> Result<(), &'static str> {
    let Some((tenant, task)) = subject_parts(subject) else {
        return Err(reject::TASK);
    };
    if tenant != r.tenant {
        return Err(reject::TENANT);
    }
    if task != r.task {
        return Err(reject::TASK);
    }
    Ok(())
}

/// What a committed batch did, for the parts outside the database: live speed and events.
#[derive(Default)]
pub struct Effects {
    /// (task, started_ms, bytes, files, client key) copied.
    pub copied: Vec<(String, i64, u64, u64, String)>,
    /// (tenant, task, state) of tasks that finished.
    pub finished: Vec<(String, String, TaskState)>,
    /// Finished jobs for the metrics: kind, outcome and what they counted.
    pub jobs: Vec<(&'static str, &'static str, crate::telemetry::ResultCounts)>,
    /// Check verdicts recorded, by kind (`VerdictKind::ALL` order), and bytes hashed.
    pub verdicts: [u64; 5],
    pub bytes_hashed: u64,
}

pub async fn run(ctx: crate::Shared, cancel: CancellationToken) -> anyhow::Result<()> {
    let (js, store) = (&ctx.js, &ctx.store);
    let consumer = btp_nats::topology::results_consumer(js).await?;
    let messages = consumer
        .stream()
        .max_messages_per_batch(512)
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    let mut chunks = messages.ready_chunks(256);
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            b = chunks.next() => match b {
                Some(b) => b,
                None => anyhow::bail!("results stream ended"),
            },
        };
        let mut msgs = Vec::with_capacity(batch.len());
        for m in batch {
            match m {
                Ok(m) => msgs.push(m),
                Err(e) => warn!(error = %e, "results consumer error"),
            }
        }
        if msgs.is_empty() {
            continue;
        }
        match apply_batch(store, &msgs).await {
            Ok((outcomes, effects)) => {
                for (m, o) in msgs.iter().zip(outcomes) {
                    let label = match o {
                        Some(Applied::Yes) => "applied",
                        Some(Applied::Duplicate) => "duplicate",
                        Some(Applied::Defer) => "deferred",
                        Some(Applied::Rejected(_)) => "rejected",
                        Some(Applied::Failed) => "failed",
                        None => "malformed",
                    };
                    if let Some(Applied::Rejected(reason)) = o {
                        metrics::counter!(crate::telemetry::RESULTS_REJECTED, "reason" => reason)
                            .increment(1);
                    }
                    metrics::counter!(crate::telemetry::RESULTS, "outcome" => label).increment(1);
                    let kind = match o {
                        Some(Applied::Defer) => AckKind::Nak(Some(Duration::from_millis(500))),
                        Some(Applied::Failed) => AckKind::Nak(Some(Duration::from_secs(1))),
                        None | Some(Applied::Rejected(_)) => AckKind::Term,
                        _ => AckKind::Ack,
                    };
                    if let Err(e) = m.ack_with(kind).await {
                        warn!(error = %e, "ack of a result failed; it will be redelivered and ignored");
                    }
                }
                ctx.wake_dispatcher.notify_one();
                after_commit(&ctx, effects).await;
            }
            Err(e) => {
                warn!(error = %e, "applying results failed; they will be redelivered");
                for m in &msgs {
                    let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Fails a job on the server's own account, as a worker's `Failed` result would: its files (or
/// directory) are recorded as failed with `reason` and the job counts as done, so its task can
/// finish. For jobs no worker can report on: one that cannot be published, one JetStream gave
/// up delivering. A job already finished is left as it is.
pub async fn fail_job(
    ctx: &crate::Shared,
    tenant: &str,
    task: &str,
    seq: i64,
    attempt: u32,
    reason: String,
) -> Result<Applied, ApiError> {
    let r = JobResult {
        v: btp_common::WIRE_VERSION,
        job: store::job_id(task, seq),
        tenant: tenant.to_string(),
        task: task.to_string(),
        // No client ran it to the end: the job is recorded without one.
        client: String::new(),
        seq: 0,
        last: true,
        attempt,
        bytes_through: 0,
        body: ResultBody::Failed { reason },
    };
    let mut tx = ctx.store.begin().await?;
    let mut effects = Effects::default();
    let applied = apply(&mut tx, &r, &mut effects).await?;
    tx.commit().await.map_err(store::map_sqlx)?;
    ctx.wake_dispatcher.notify_one();
    after_commit(ctx, effects).await;
    Ok(applied)
}

/// Live speed, peak speed and task events, once the batch is committed.
async fn after_commit(ctx: &crate::Shared, effects: Effects) {
    let now = now_ms();
    let mut touched = std::collections::BTreeSet::new();
    for (task, started_ms, bytes, files, client) in effects.copied {
        ctx.speed.record(&task, now, bytes, files);
        ctx.client_speed.record(&client, now, bytes, files);
        touched.insert((task, started_ms));
    }
    for (task, started_ms) in touched {
        let s = ctx.speed.speed(&task, now, started_ms);
        if let Err(e) = ctx.store.raise_peak(&task, s.bytes_per_sec as i64).await {
            warn!(task = %task, error = %e, "recording the peak speed failed");
        }
    }
    for (kind, outcome, counts) in effects.jobs {
        crate::telemetry::record_result(kind, outcome, &counts);
    }
    crate::telemetry::record_check(&effects.verdicts, effects.bytes_hashed);
    for (tenant, task, state) in effects.finished {
        ctx.speed.forget(&task);
        // A check's event carries its verdict counts.
        let check = match ctx.store.task(&task).await {
            Ok(t) => t.info.check,
            Err(_) => None,
        };
        crate::events::publish(&ctx.nats, &tenant, &task, state, check).await;
    }
}

/// Applies a batch in one transaction, each result in its own savepoint: a result that does
/// not fit its job (or is not bound to its tenant) is rolled back alone and marked to be
/// terminated, and the rest commits. `None` marks a malformed message (to be terminated).
async fn apply_batch(
    store: &Store,
    msgs: &[jetstream::Message],
) -> Result<(Vec<Option<Applied>>, Effects), ApiError> {
    use sqlx::Acquire as _;
    let mut tx = store.begin().await?;
    let mut out = Vec::with_capacity(msgs.len());
    let mut effects = Effects::default();
    for m in msgs {
        let r = match decode::<JobResult>(&m.payload) {
            Ok(r) => r,
            Err(e) => {
                warn!(subject = %m.subject, error = %e, "dropping a malformed result");
                out.push(None);
                continue;
            }
        };
        if let Err(reason) = check_subject(&m.subject, &r) {
            warn!(subject = %m.subject, tenant = %r.tenant, task = %r.task, job = %r.job, reason, "dropping a result not bound to its subject");
            out.push(Some(Applied::Rejected(reason)));
            continue;
        }
        let mut sp = tx.begin().await.map_err(store::map_sqlx)?;
        let mut mine = Effects::default();
        match apply(&mut sp, &r, &mut mine).await {
            Ok(Applied::Rejected(reason)) => {
                sp.rollback().await.map_err(store::map_sqlx)?;
                out.push(Some(Applied::Rejected(reason)));
            }
            Ok(a) => {
                sp.commit().await.map_err(store::map_sqlx)?;
                effects.copied.extend(mine.copied);
                effects.finished.extend(mine.finished);
                effects.jobs.extend(mine.jobs);
                out.push(Some(a));
            }
            Err(e) if e.code == btp_common::api::ErrorCode::InvalidArgument => {
                sp.rollback().await.map_err(store::map_sqlx)?;
                warn!(subject = %m.subject, job = %r.job, client = %r.client, error = %e.message, "dropping a result that does not fit its job");
                out.push(Some(Applied::Rejected(reject::POISON)));
            }
            Err(e) => {
                // Rolling back fails too when the database itself is gone: the batch fails.
                sp.rollback().await.map_err(store::map_sqlx)?;
                warn!(subject = %m.subject, job = %r.job, error = %e.message, "applying a result failed; it will be redelivered");
                out.push(Some(Applied::Failed));
            }
        }
    }
    tx.commit().await.map_err(store::map_sqlx)?;
    Ok((out, effects))
}

/// Applies one result inside `tx`.
pub async fn apply(
    tx: &mut Tx<'_>,
    r: &JobResult,
    effects: &mut Effects,
) -> Result<Applied, ApiError> {
    let Some((task_id, seq)) = store::parse_job_id(&r.job) else {
        warn!(job = %r.job, "result for a malformed job id");
        return Ok(Applied::Duplicate);
    };
    if task_id != r.task {
        warn!(job = %r.job, task = %r.task, "result names another task than its job");
        return Ok(Applied::Rejected(reject::TASK));
    }
    let Some(task) = store::load_task_tx(tx, task_id).await? else {
        return Ok(Applied::Duplicate);
    };
    if task.info.tenant != r.tenant {
        warn!(job = %r.job, tenant = %r.tenant, owner = %task.info.tenant, client = %r.client, "result for another tenant's task");
        return Ok(Applied::Rejected(reject::TENANT));
    }
    let Some(job) = store::load_job_tx(tx, task_id, seq).await? else {
        warn!(job = %r.job, "result for an unknown job");
        return Ok(Applied::Duplicate);
    };
    if [job_state::DONE, job_state::FAILED, job_state::CANCELLED].contains(&job.state.as_str()) {
        return Ok(Applied::Duplicate);
    }
    if !fits(&job.kind, &r.body) {
        return Err(misfit(format!(
            "job {} is a {} job; the result does not fit it",
            r.job, job.kind
        )));
    }
    // A cancelled task's only live jobs are the aborts of its open uploads.
    if task.info.state == TaskState::Cancelled && job.kind != "abort" {
        return Ok(Applied::Duplicate);
    }
    let job_body = || -> Result<Job, ApiError> {
        serde_json::from_str(&job.payload)
            .map_err(|e| ApiError::internal(format!("corrupt job {}: {e}", r.job)))
    };
    let dry_run = task.info.options.dry_run;
    let now = now_ms();
    let mut delta = TaskDelta {
        bytes_through: r.bytes_through as i64,
        ..TaskDelta::default()
    };
    let finished_state = if r.last { Some(job_state::DONE) } else { None };
    match &r.body {
        ResultBody::ListPage {
            files,
            dirs,
            excluded,
            deleted,
            skipped,
            bytes_skipped,
            noted,
            extra,
            verdicts,
        } => {
            let expected = job.pages_applied;
            if (r.seq as i64) < expected {
                return Ok(Applied::Duplicate);
            }
            if r.seq as i64 > expected {
                return Ok(Applied::Defer);
            }
            // Counts of clients that send no `noted` entries.
            delta.files_excluded = *excluded as i64;
            delta.files_deleted = deleted.len() as i64;
            if dry_run {
                for f in deleted {
                    store::record_change(tx, task_id, "delete", &f.path, f.size).await?;
                }
            }
            delta.files_skipped = *skipped as i64;
            delta.bytes_skipped = *bytes_skipped as i64;
            delta.files_found = files.len() as i64 + delta.files_skipped + delta.files_excluded;
            delta.bytes_found =
                files.iter().map(|f| f.size as i64).sum::<i64>() + delta.bytes_skipped;
            // Every entry that gets no Copy job is found and settled at once, in the report.
            let check = task.info.options.mode == btp_common::api::Mode::Check;
            for n in noted {
                if check && n.outcome == Outcome::Failed {
                    // A check's entry that could not be looked at (a manifest's path missing at
                    // the source, a name that is not UTF-8): its verdict is an error.
                    let v = Verdict {
                        path: n.path.clone(),
                        size: n.size,
                        mtime_ms: None,
                        verdict: VerdictKind::Error,
                        what: n.reason.clone(),
                    };
                    apply_verdict(tx, task_id, seq, &v, &mut delta, effects).await?;
                    continue;
                }
                if !apply_noted(tx, task_id, seq, n, r.attempt, &mut delta).await? {
                    continue;
                }
                delta.files_found += 1;
                delta.bytes_found += n.size as i64;
            }
            if !extra.is_empty() {
                let JobKind::List { dir, .. } = job_body()?.kind else {
                    return Err(misfit(format!("job {} is no list job", r.job)));
                };
                for f in extra {
                    store::record_deletion(tx, task_id, &dir, f).await?;
                }
            }
            for v in verdicts {
                apply_verdict(tx, task_id, seq, v, &mut delta, effects).await?;
            }
            let mut kinds = planner::pack_files(files.clone(), &task);
            delta.lists_total = dirs.len() as i64;
            kinds.extend(
                dirs.iter()
                    .map(|d| planner::list_job(d.clone(), &task.info.options)),
            );
            delta.jobs_total = kinds.len() as i64;
            let first = task.info.jobs_total as i64;
            store::insert_jobs(tx, &task, first, kinds, Schedule::NOW).await?;
            store::set_pages_applied(tx, task_id, seq, expected + 1).await?;
            if r.last {
                delta.lists_done = 1;
            }
        }
        ResultBody::Copy {
            files_copied,
            bytes_copied,
            files_skipped,
            bytes_skipped,
            failures,
            retry,
            retry_after_ms,
            would_copy,
            changed,
            not_kept,
            ..
        } => {
            store::record_not_kept(tx, task_id, seq, not_kept).await?;
            for f in would_copy {
                store::record_change(tx, task_id, "copy", &f.path, f.size).await?;
            }
            delta.bytes_copied = *bytes_copied as i64;
            let (mut failures, mut retry) = (
                std::borrow::Cow::Borrowed(failures.as_slice()),
                std::borrow::Cow::Borrowed(retry.as_slice()),
            );
            if job.kind == "complete" {
                // The worker aborts an upload it could not complete correctly itself.
                let JobKind::Complete {
                    upload_id, file, ..
                } = job_body()?.kind
                else {
                    return Err(misfit(format!("job {} is no complete job", r.job)));
                };
                let state = if *files_copied == 1 {
                    store::upload_state::DONE
                } else {
                    // Its parts' bytes, counted as they came, are not copied after all: the
                    // file is copied again from the start, or fails.
                    delta.bytes_copied -= file.size as i64;
                    if retry.iter().any(|f| checksum::is_mismatch(&f.reason)) {
                        // A whole file whose stored checksum is not its source's is uploaded
                        // again once (a part garbled on its way), not for every attempt: a
                        // second mismatch is the store's or the link's, and fails the file.
                        let before = store::mismatched_uploads(tx, task_id, &file.path).await?;
                        if before + 1 >= MISMATCHED_UPLOADS {
                            failures.to_mut().extend(retry.iter().cloned());
                            retry = std::borrow::Cow::Borrowed(&[]);
                        }
                        store::upload_state::MISMATCHED
                    } else {
                        store::upload_state::ABORTED
                    }
                };
                store::set_upload_state(tx, task_id, &upload_id, state).await?;
            }
            if !changed.is_empty() {
                // A retry found these files changed since the listing and counted them as they
                // are now: the bytes found follow.
                delta.bytes_found += size_change(&job_body()?.kind, changed);
            }
            delta.files_copied = *files_copied as i64;
            delta.files_skipped = *files_skipped as i64;
            delta.bytes_skipped = *bytes_skipped as i64;
            if !dry_run {
                effects.copied.push((
                    task_id.to_string(),
                    task.info.started_ms.unwrap_or(now),
                    *bytes_copied,
                    *files_copied,
                    client_key(&task.info.tenant, &r.client),
                ));
            }
            record_failures(tx, task_id, seq, &failures, &mut delta).await?;
            if !retry.is_empty() {
                // Only the files that failed transiently run again, after their backoff.
                let entries = retry
                    .iter()
                    .map(|f| FileEntry::new(f.path.clone(), f.size, f.mtime_ms).with_posix(f.posix))
                    .collect();
                let kinds =
                    planner::pack_copies(entries, &task.info.options, planner::split(&task));
                let schedule = Schedule {
                    attempt: r.attempt + 1,
                    not_before_ms: now + *retry_after_ms as i64,
                };
                delta.files_retried = retry.len() as i64;
                delta.jobs_total = kinds.len() as i64;
                let first = task.info.jobs_total as i64;
                store::insert_jobs(tx, &task, first, kinds, schedule).await?;
                debug!(job = %r.job, files = retry.len(), reason = %retry[0].reason, "files scheduled again");
            }
        }
        ResultBody::Begun {
            upload_id,
            file: now,
        } => {
            let kind = job_body()?.kind;
            let JobKind::Upload { file, part_size } = &kind else {
                return Err(misfit(format!("job {} is no upload job", r.job)));
            };
            // A retry found the file changed since the listing: its parts cover it as it is.
            let (file, part_size) = match now {
                Some(n) if n.path == file.path => {
                    delta.bytes_found += size_change(&kind, std::slice::from_ref(n));
                    let part_size = (*part_size)
                        .max(planner::split(&task).part_size(&task.info.options, n.size));
                    (n.clone(), part_size)
                }
                _ => (file.clone(), *part_size),
            };
            let parts = planner::part_jobs(&file, upload_id, part_size);
            let n = parts.len() as i64;
            if store::insert_upload(tx, task_id, upload_id, &file, n, r.attempt as i64).await? {
                delta.jobs_total = n;
                let first = task.info.jobs_total as i64;
                store::insert_jobs(tx, &task, first, parts, Schedule::NOW).await?;
                debug!(job = %r.job, path = %file.path, parts = n, "upload begun");
            }
        }
        ResultBody::Part { part, bytes } => {
            let JobKind::Part { upload_id, .. } = job_body()?.kind else {
                return Err(misfit(format!("job {} is no part job", r.job)));
            };
            delta.bytes_copied = *bytes as i64;
            effects.copied.push((
                task_id.to_string(),
                task.info.started_ms.unwrap_or(now),
                *bytes,
                0,
                client_key(&task.info.tenant, &r.client),
            ));
            let up = store::load_upload(tx, task_id, &upload_id).await?;
            if let Some(up) = up.filter(|u| u.state == store::upload_state::ACTIVE) {
                let done = store::record_part(tx, task_id, &upload_id, part).await?;
                if done >= up.parts_total {
                    let parts = store::upload_parts(tx, task_id, &upload_id).await?;
                    store::set_upload_state(
                        tx,
                        task_id,
                        &upload_id,
                        store::upload_state::COMPLETING,
                    )
                    .await?;
                    let complete = JobKind::Complete {
                        file: up.file,
                        upload_id,
                        parts,
                    };
                    let schedule = Schedule {
                        attempt: up.attempt as u32,
                        not_before_ms: 0,
                    };
                    delta.jobs_total = 1;
                    let first = task.info.jobs_total as i64;
                    store::insert_jobs(tx, &task, first, vec![complete], schedule).await?;
                }
            }
        }
        ResultBody::Checked {
            verdicts,
            bytes_hashed,
        } => {
            // The files were found by the listing; their verdicts settle them.
            for v in verdicts {
                if store::record_verdict(tx, task_id, v, seq).await? {
                    delta.check[v.verdict as usize] += 1;
                    effects.verdicts[v.verdict as usize] += 1;
                }
            }
            delta.bytes_hashed = *bytes_hashed as i64;
            effects.bytes_hashed += bytes_hashed;
        }
        ResultBody::Deleted { deleted, failures } => {
            delta.files_deleted += *deleted as i64;
            for f in failures {
                store::record_failure(tx, task_id, "delete", f, seq).await?;
                delta.deletes_failed += 1;
            }
        }
        ResultBody::Aborted => {
            if let JobKind::Abort { upload_id, .. } = job_body()?.kind {
                store::set_upload_state(tx, task_id, &upload_id, store::upload_state::ABORTED)
                    .await?;
            }
        }
        ResultBody::Failed { reason } => {
            match job_body()?.kind {
                JobKind::Copy { files } => {
                    let failures: Vec<FileFailure> = files
                        .into_iter()
                        .map(|f| failure(&f, reason.clone(), r.attempt))
                        .collect();
                    record_failures(tx, task_id, seq, &failures, &mut delta).await?;
                }
                JobKind::Upload { file, .. } => {
                    let f = failure(&file, reason.clone(), r.attempt);
                    record_failures(tx, task_id, seq, &[f], &mut delta).await?;
                }
                JobKind::Part {
                    file,
                    upload_id,
                    number,
                    ..
                } => {
                    let f = failure(&file, format!("part {number}: {reason}"), r.attempt);
                    fail_upload(tx, &task, &upload_id, f, seq, &mut delta).await?;
                }
                JobKind::Complete {
                    file, upload_id, ..
                } => {
                    let f = failure(&file, reason.clone(), r.attempt);
                    if fail_upload(tx, &task, &upload_id, f, seq, &mut delta).await? {
                        // Every part was in, counted as copied: the file is not.
                        delta.bytes_copied -= file.size as i64;
                    }
                }
                JobKind::Delete { files, .. } => {
                    for f in files {
                        let f = failure(&f, format!("not deleted: {reason}"), r.attempt);
                        store::record_failure(tx, task_id, "delete", &f, seq).await?;
                        delta.deletes_failed += 1;
                    }
                }
                JobKind::Abort { path, upload_id } => {
                    warn!(job = %r.job, %path, %upload_id, %reason, "aborting an upload failed: its parts may be left on the store");
                }
                JobKind::Hash { files } => {
                    for f in &files {
                        let v = Verdict::new(
                            f,
                            VerdictKind::Error,
                            format!("cannot compare: {reason}"),
                        );
                        if store::record_verdict(tx, task_id, &v, seq).await? {
                            delta.check[VerdictKind::Error as usize] += 1;
                            effects.verdicts[VerdictKind::Error as usize] += 1;
                        }
                    }
                }
                JobKind::List {
                    dir, check: true, ..
                } => {
                    // The directory could not be compared: one error verdict stands for it.
                    let v = Verdict {
                        path: dir,
                        size: 0,
                        mtime_ms: None,
                        verdict: VerdictKind::Error,
                        what: format!("listing failed: {reason}"),
                    };
                    apply_verdict(tx, task_id, seq, &v, &mut delta, effects).await?;
                    delta.lists_done = 1;
                }
                JobKind::List { dir, .. } => {
                    let f = FileFailure {
                        path: dir,
                        size: 0,
                        reason: format!("listing failed: {reason}"),
                        attempts: r.attempt,
                        mtime_ms: None,
                        posix: Default::default(),
                    };
                    store::record_failure(tx, task_id, "dir", &f, seq).await?;
                    delta.dirs_failed = 1;
                    delta.lists_done = 1;
                }
            }
            debug!(job = %r.job, kind = %job.kind, %reason, "job failed");
        }
    }
    if r.last {
        use crate::telemetry::ResultCounts;
        let (outcome, counts) = match &r.body {
            ResultBody::Copy {
                files_copied,
                bytes_copied,
                files_skipped,
                failures,
                retry,
                ..
            } => {
                let outcome = if !failures.is_empty() {
                    "failed"
                } else if !retry.is_empty() {
                    "retried"
                } else if *files_copied == 0 && *files_skipped > 0 {
                    "skipped"
                } else {
                    "ok"
                };
                let counts = ResultCounts {
                    bytes: *bytes_copied,
                    files: *files_copied,
                    skipped: *files_skipped,
                    failed: failures.len() as u64,
                    retried: retry.len() as u64,
                };
                (outcome, counts)
            }
            ResultBody::Failed { .. } => (
                "failed",
                ResultCounts {
                    failed: delta.files_failed as u64,
                    ..Default::default()
                },
            ),
            ResultBody::Part { bytes, .. } => (
                "ok",
                ResultCounts {
                    bytes: *bytes,
                    ..Default::default()
                },
            ),
            ResultBody::ListPage { .. }
            | ResultBody::Checked { .. }
            | ResultBody::Begun { .. }
            | ResultBody::Aborted
            | ResultBody::Deleted { .. } => ("ok", ResultCounts::default()),
        };
        effects.jobs.push((kind_label(&job.kind), outcome, counts));
    }
    if let Some(state) = finished_state {
        let state = if matches!(r.body, ResultBody::Failed { .. }) {
            job_state::FAILED
        } else {
            state
        };
        let kept = kept_payload(&job.kind, &job.payload, &r.body)?;
        store::finish_job(
            tx,
            task_id,
            seq,
            state,
            &r.client,
            r.attempt,
            now,
            kept.as_deref(),
        )
        .await?;
        delta.jobs_done = 1;
    }
    store::apply_task_delta(tx, task_id, &delta).await?;
    if plan_deletions(tx, &task).await? {
        return Ok(Applied::Yes);
    }
    if let Some(state) = store::finish_task_if_done(tx, task_id, now).await? {
        info!(task = %task_id, state = state.as_str(), "task finished");
        effects
            .finished
            .push((task.info.tenant.clone(), task_id.to_string(), state));
    }
    Ok(Applied::Yes)
}

/// Check: records a verdict the listing gave; a new path is found and settled at once.
async fn apply_verdict(
    tx: &mut Tx<'_>,
    task: &str,
    seq: i64,
    v: &Verdict,
    delta: &mut TaskDelta,
    effects: &mut Effects,
) -> Result<(), ApiError> {
    if store::record_verdict(tx, task, v, seq).await? {
        delta.files_found += 1;
        delta.bytes_found += v.size as i64;
        delta.check[v.verdict as usize] += 1;
        effects.verdicts[v.verdict as usize] += 1;
    }
    Ok(())
}

/// Settles one listed entry that gets no Copy job; false when the task already had it (it is
/// not counted twice).
async fn apply_noted(
    tx: &mut Tx<'_>,
    task: &str,
    seq: i64,
    n: &Noted,
    attempt: u32,
    delta: &mut TaskDelta,
) -> Result<bool, ApiError> {
    match n.outcome {
        Outcome::Failed | Outcome::Copied => {
            let f = FileFailure {
                path: n.path.clone(),
                size: n.size,
                reason: n.reason.clone(),
                attempts: attempt,
                mtime_ms: None,
                posix: Default::default(),
            };
            store::record_failure(tx, task, "entry", &f, seq).await?;
            delta.files_failed += 1;
            delta.bytes_failed += n.size as i64;
        }
        Outcome::Skipped | Outcome::Excluded => {
            if !store::record_entry(tx, task, n, seq).await? {
                return Ok(false);
            }
            if n.outcome == Outcome::Skipped {
                delta.files_skipped += 1;
                delta.bytes_skipped += n.size as i64;
            } else {
                delta.files_excluded += 1;
                delta.bytes_excluded += n.size as i64;
            }
        }
    }
    Ok(true)
}

/// Sync, once every job of the task is done: the destination entries its listings found extra
/// become Delete jobs (a dry run records them as changes), except in directories where an
/// entry failed. True when jobs were added (the task goes on).
async fn plan_deletions(tx: &mut Tx<'_>, task: &store::TaskRow) -> Result<bool, ApiError> {
    /// Entries per Delete job.
    const PER_JOB: i64 = 1000;
    let opts = &task.info.options;
    if opts.mode != btp_common::api::Mode::Sync || !store::all_jobs_done(tx, &task.info.id).await? {
        return Ok(false);
    }
    let id = &task.info.id;
    let mut delta = TaskDelta::default();
    let mut kinds = Vec::new();
    loop {
        let (clean, kept) = store::take_deletions(tx, id, PER_JOB).await?;
        if clean.is_empty() && kept.is_empty() {
            break;
        }
        if !kept.is_empty() {
            info!(task = %id, entries = kept.len(), first = %kept[0].path, "kept at the destination: their source directory had a failed entry");
        }
        if clean.is_empty() {
            continue;
        }
        if opts.dry_run {
            for f in &clean {
                store::record_change(tx, id, "delete", &f.path, f.size).await?;
            }
            delta.files_deleted += clean.len() as i64;
            continue;
        }
        kinds.push(JobKind::Delete {
            files: clean,
            filter: opts.filter.clone(),
            delete_excluded: opts.delete_excluded,
        });
    }
    if kinds.is_empty() {
        store::apply_task_delta(tx, id, &delta).await?;
        return Ok(false);
    }
    let first = store::jobs_total(tx, id).await?;
    delta.jobs_total = kinds.len() as i64;
    store::insert_jobs(tx, task, first, kinds, Schedule::NOW).await?;
    store::apply_task_delta(tx, id, &delta).await?;
    Ok(true)
}

/// The label of a job kind in metrics.
pub fn kind_label(kind: &str) -> &'static str {
    match kind {
        "list" => "list",
        "upload" => "upload",
        "part" => "part",
        "complete" => "complete",
        "abort" => "abort",
        "delete" => "delete",
        "hash" => "hash",
        _ => "copy",
    }
}

fn failure(f: &FileEntry, reason: String, attempts: u32) -> FileFailure {
    FileFailure {
        path: f.path.clone(),
        size: f.size,
        reason,
        attempts,
        mtime_ms: f.mtime_ms,
        posix: f.posix(),
    }
}

/// How much the bytes of `changed` files differ from those the job `kind` was planned with.
fn size_change(kind: &JobKind, changed: &[FileEntry]) -> i64 {
    let planned: std::collections::HashMap<&str, u64> = match kind {
        JobKind::Copy { files } => files.iter().map(|f| (f.path.as_str(), f.size)).collect(),
        JobKind::Upload { file, .. } | JobKind::Complete { file, .. } => {
            [(file.path.as_str(), file.size)].into()
        }
        _ => Default::default(),
    };
    changed
        .iter()
        .filter_map(|c| {
            let before = planned.get(c.path.as_str())?;
            Some(c.size as i64 - *before as i64)
        })
        .sum()
}

/// A large file failed: record it once and abort its upload, so no part is left behind.
/// Returns false when the upload had been given up before (nothing recorded now).
async fn fail_upload(
    tx: &mut Tx<'_>,
    task: &store::TaskRow,
    upload_id: &str,
    f: FileFailure,
    seq: i64,
    delta: &mut TaskDelta,
) -> Result<bool, ApiError> {
    let id = &task.info.id;
    let Some(up) = store::load_upload(tx, id, upload_id).await? else {
        return Ok(false);
    };
    if up.state != store::upload_state::ACTIVE && up.state != store::upload_state::COMPLETING {
        return Ok(false);
    }
    record_failures(tx, id, seq, &[f], delta).await?;
    store::set_upload_state(tx, id, upload_id, store::upload_state::ABORTING).await?;
    let abort = JobKind::Abort {
        path: up.file.path,
        upload_id: upload_id.to_string(),
    };
    // Counted in the task's jobs: it finishes once the parts are gone.
    let first = task.info.jobs_total as i64 + delta.jobs_total;
    delta.jobs_total += 1;
    store::insert_jobs(tx, task, first, vec![abort], Schedule::NOW).await?;
    Ok(true)
}

/// Uploads of one large file that may end in a checksum mismatch before the file fails: the
/// first upload and one more.
const MISMATCHED_UPLOADS: i64 = 2;

async fn record_failures(
    tx: &mut Tx<'_>,
    task: &str,
    seq: i64,
    failures: &[FileFailure],
    delta: &mut TaskDelta,
) -> Result<(), ApiError> {
    for f in failures {
        store::record_failure(tx, task, "file", f, seq).await?;
        delta.files_failed += 1;
        delta.bytes_failed += f.size as i64;
    }
    Ok(())
}

/// What a finished job keeps of its payload: a Copy job its files less those that failed or run
/// again (they are reported by the failures table or by their retry job), as they were copied;
/// a Complete job that completed its upload the file; every other job nothing. What is kept is
/// the compact form of `crate::kept` (path, size, up to date), without the job's endpoints.
fn kept_payload(kind: &str, payload: &str, body: &ResultBody) -> Result<Option<String>, ApiError> {
    // A dry run keeps its files too: its per-file report says what would be copied.
    let cleared = Some(String::new());
    let parse = || -> Result<Job, ApiError> {
        serde_json::from_str(payload).map_err(|e| ApiError::internal(format!("corrupt job: {e}")))
    };
    let encode =
        |job: &Job| -> Result<Option<String>, ApiError> { Ok(Some(crate::kept::compact(job))) };
    match (kind, body) {
        // A large file is in the report once its upload is complete (an upload given up and
        // begun again would show it twice), as it was copied: without its parts.
        (
            "complete",
            ResultBody::Copy {
                files_copied: 1, ..
            },
        ) => {
            let mut job = parse()?;
            if let JobKind::Complete { parts, .. } = &mut job.kind {
                parts.clear();
            }
            encode(&job)
        }
        // A dry run's large file that would be copied.
        ("upload", ResultBody::Copy { would_copy, .. }) if !would_copy.is_empty() => {
            encode(&parse()?)
        }
        ("upload", ResultBody::Copy { up_to_date, .. }) if !up_to_date.is_empty() => {
            // A large file found up to date: kept, marked skipped, for the per-file report.
            let mut job = parse()?;
            if let JobKind::Upload { file, .. } = &mut job.kind {
                file.skipped = true;
            }
            encode(&job)
        }
        (
            "copy",
            ResultBody::Copy {
                failures,
                retry,
                up_to_date,
                changed,
                ..
            },
        ) => {
            let mut job = parse()?;
            if let JobKind::Copy { files } = &mut job.kind {
                let out: std::collections::HashSet<&str> = failures
                    .iter()
                    .chain(retry.iter())
                    .map(|f| f.path.as_str())
                    .collect();
                files.retain(|f| !out.contains(f.path.as_str()));
                let now: std::collections::HashMap<&str, &FileEntry> =
                    changed.iter().map(|f| (f.path.as_str(), f)).collect();
                for f in files.iter_mut() {
                    if let Some(n) = now.get(f.path.as_str()) {
                        *f = (*n).clone();
                    }
                }
                let skipped: std::collections::HashSet<&str> =
                    up_to_date.iter().map(|p| p.as_str()).collect();
                for f in files.iter_mut() {
                    f.skipped = skipped.contains(f.path.as_str());
                }
            }
            encode(&job)
        }
        _ => Ok(cleared),
    }
}
