//! Publishes recorded jobs (the outbox) onto the jobs work queue. Each running task has a bounded
//! window of in-flight jobs and windows are filled round-robin, so one huge task cannot starve
//! the others. Jobs are published with `Nats-Msg-Id` = job id: a re-publish after a crash between
//! publishing and marking is deduplicated by JetStream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use btp_common::subjects;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::store::Store;

/// Held while publishing, and by pause and cancel while they take a task's jobs off the queue, so
/// no publish of that task can slip in between.
pub type DispatchLock = Arc<Mutex<()>>;

pub async fn run(ctx: crate::Shared, window: i64, cancel: CancellationToken) -> anyhow::Result<()> {
    loop {
        match dispatch_once(&ctx.js, &ctx.store, window, &ctx.dispatch_lock).await {
            Ok(published) if published > 0 => continue,
            Ok(_) => {}
            Err(e) => warn!(error = %e, "publishing jobs failed; retrying"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ctx.wake_dispatcher.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Nats-Msg-Id of a job in a publishing epoch: a crash re-publish is deduplicated, a re-publish
/// after pause and resume is not.
pub fn msg_id(task: &str, seq: i64, epoch: i64) -> String {
    format!("{}@{epoch}", crate::store::job_id(task, seq))
}

/// One round over the running tasks; returns how many jobs were published.
async fn dispatch_once(
    js: &jetstream::Context,
    store: &Store,
    window: i64,
    lock: &DispatchLock,
) -> anyhow::Result<usize> {
    let mut published = 0;
    for (task, tenant, _) in store.running_tasks().await? {
        let _guard = lock.lock().await;
        // Re-read under the lock: a pause may have happened since the list was taken.
        let row = store.task(&task).await?;
        use btp_common::api::TaskState;
        let only_aborts = match row.info.state {
            TaskState::Running => false,
            TaskState::Cancelled => true,
            _ => continue,
        };
        let room = window - store.inflight_jobs(&task).await?;
        if room <= 0 {
            continue;
        }
        let jobs = store
            .pending_jobs(&task, room, btp_common::now_ms(), only_aborts)
            .await?;
        if jobs.is_empty() {
            continue;
        }
        let subject = subjects::jobs(&tenant, &task);
        let mut acks = Vec::with_capacity(jobs.len());
        for (seq, payload, kind) in &jobs {
            let kind = crate::aggregator::kind_label(kind);
            metrics::counter!(crate::telemetry::JOBS_PUBLISHED, "kind" => kind).increment(1);
            let msg = PublishMessage::build()
                .payload(payload.clone().into_bytes().into())
                .message_id(msg_id(&task, *seq, row.epoch));
            acks.push(js.send_publish(subject.clone(), msg).await?);
        }
        for ack in acks {
            ack.await?;
        }
        let seqs: Vec<i64> = jobs.iter().map(|(s, _, _)| *s).collect();
        store.mark_published(&task, &seqs).await?;
        published += seqs.len();
    }
    Ok(published)
}
