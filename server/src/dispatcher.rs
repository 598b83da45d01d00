//! Publishes recorded jobs (the outbox) onto the jobs work queue. Each running task has a bounded
//! window of in-flight jobs and windows are filled round-robin, so one huge task cannot starve
//! the others. Jobs are published with `Nats-Msg-Id` = job id: a re-publish after a crash between
//! publishing and marking is deduplicated by JetStream. A job that can never be published (see
//! [`is_permanent`]) fails alone, through the aggregator's path for failed jobs; every other
//! publish error ends the round, which is tried again.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use btp_common::subjects;
use btp_common::wire::Job;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Held while publishing, and by pause and cancel while they take a task's jobs off the queue, so
/// no publish of that task can slip in between.
pub type DispatchLock = Arc<Mutex<()>>;

pub async fn run(ctx: crate::Shared, window: i64, cancel: CancellationToken) -> anyhow::Result<()> {
    loop {
        match dispatch_once(&ctx, window).await {
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

/// The one place publish errors are classified. Permanent: the message is larger than the
/// server's `max_payload` (refused by the client library before sending) or than the stream's
/// maximum message size (refused by JetStream); publishing it again can never succeed. Every
/// other error (connection lost, timeout, no stream yet, too many acks pending) is transient.
pub fn is_permanent(e: &PublishError) -> bool {
    use async_nats::jetstream::ErrorCode;
    match e.kind() {
        PublishErrorKind::MaxPayloadExceeded => true,
        PublishErrorKind::Other => std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<async_nats::jetstream::Error>())
            .is_some_and(|j| j.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM),
        _ => false,
    }
}

/// A job that can never be published fails alone: its files (or directory) are recorded as
/// failed with the reason, so its task can finish.
async fn fail_unpublishable(
    ctx: &crate::Shared,
    tenant: &str,
    task: &str,
    seq: i64,
    payload: &str,
    e: &PublishError,
) -> anyhow::Result<()> {
    let reason = format!("job could not be published: {e}");
    warn!(task, seq, error = %e, "a job cannot be published; it fails");
    let attempt = serde_json::from_str::<Job>(payload)
        .map(|j| j.attempt)
        .unwrap_or(1);
    crate::aggregator::fail_job(ctx, tenant, task, seq, attempt, reason).await?;
    Ok(())
}

/// One round over the running tasks; returns how many jobs were published (or failed because
/// they cannot be).
async fn dispatch_once(ctx: &crate::Shared, window: i64) -> anyhow::Result<usize> {
    let (js, store, lock) = (&ctx.js, &ctx.store, &ctx.dispatch_lock);
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
            let msg = PublishMessage::build()
                .payload(payload.clone().into_bytes().into())
                .message_id(msg_id(&task, *seq, row.epoch));
            match js.send_publish(subject.clone(), msg).await {
                Ok(ack) => acks.push((*seq, payload, kind, ack)),
                Err(e) if is_permanent(&e) => {
                    fail_unpublishable(ctx, &tenant, &task, *seq, payload, &e).await?;
                    published += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut seqs = Vec::with_capacity(acks.len());
        for (seq, payload, kind, ack) in acks {
            match ack.await {
                Ok(_) => {
                    let kind = crate::aggregator::kind_label(kind);
                    metrics::counter!(crate::telemetry::JOBS_PUBLISHED, "kind" => kind)
                        .increment(1);
                    seqs.push(seq);
                }
                Err(e) if is_permanent(&e) => {
                    fail_unpublishable(ctx, &tenant, &task, seq, payload, &e).await?;
                    published += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        store.mark_published(&task, &seqs).await?;
        published += seqs.len();
    }
    Ok(published)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_messages_the_server_can_never_take_are_permanent() {
        assert!(is_permanent(&PublishError::new(
            PublishErrorKind::MaxPayloadExceeded
        )));
        let too_large: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}"#,
        )
        .unwrap();
        assert!(is_permanent(&PublishError::with_source(
            PublishErrorKind::Other,
            too_large
        )));
        let other: async_nats::jetstream::Error = serde_json::from_str(
            r#"{"code":503,"err_code":10008,"description":"jetstream temporarily unavailable"}"#,
        )
        .unwrap();
        assert!(!is_permanent(&PublishError::with_source(
            PublishErrorKind::Other,
            other
        )));
        for kind in [
            PublishErrorKind::TimedOut,
            PublishErrorKind::BrokenPipe,
            PublishErrorKind::StreamNotFound,
            PublishErrorKind::MaxAckPending,
            PublishErrorKind::Other,
        ] {
            assert!(!is_permanent(&PublishError::new(kind)), "{kind}");
        }
    }
}
