//! Jobs JetStream gave up on. Workers count attempts and report a failure on their last one, but
//! a worker that dies on a job (the process crashes, every time) reports nothing: the job is
//! redelivered until the consumer's MaxDeliver, then JetStream stops and only says so in an
//! advisory (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.BTP_JOBS.<consumer>`), which a stream
//! keeps for the server (see `topology::dead_jobs_consumer`). Here each advisory is mapped to
//! its job (the stream message by sequence: the Job JSON, and `Nats-Msg-Id` with the publishing
//! epoch), the job is failed through the aggregator's path for failed jobs, its files recorded
//! with the reason `worker crashed N times on this job`, and the dead message is deleted.

use std::time::Duration;

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind, AckKind};
use btp_common::api::ErrorCode;
use btp_common::subjects;
use btp_common::wire::{decode, Job};
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store;

/// What JetStream says about a message it stopped redelivering (more fields are ignored).
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct MaxDeliveries {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u64,
}

pub async fn run(ctx: crate::Shared, cancel: CancellationToken) -> anyhow::Result<()> {
    let consumer = btp_nats::topology::dead_jobs_consumer(&ctx.js).await?;
    let (jobs, _) = btp_nats::topology::ensure_streams(&ctx.js).await?;
    let mut messages = consumer
        .stream()
        .heartbeat(Duration::from_secs(5))
        .expires(Duration::from_secs(30))
        .messages()
        .await?;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = messages.next() => match m {
                Some(Ok(m)) => m,
                Some(Err(e)) => {
                    debug!(error = %e, "dead jobs consumer error");
                    continue;
                }
                None => anyhow::bail!("dead jobs stream ended"),
            },
        };
        let settle = match handle(&ctx, &jobs, &msg.payload).await {
            Ok(()) => AckKind::Ack,
            Err(e) => {
                warn!(error = %e, "failing a job JetStream gave up on failed; retrying");
                AckKind::Nak(Some(Duration::from_secs(1)))
            }
        };
        if let Err(e) = msg.ack_with(settle).await {
            warn!(error = %e, "ack of a dead job advisory failed; it will be handled again");
        }
    }
}

/// Fails the job of one advisory and deletes its message. Handling an advisory twice is
/// harmless: the job is finished by then, and its message gone.
async fn handle(
    ctx: &crate::Shared,
    jobs: &jetstream::stream::Stream,
    payload: &[u8],
) -> anyhow::Result<()> {
    let adv: MaxDeliveries = match serde_json::from_slice(payload) {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "ignoring a malformed max-deliveries advisory");
            return Ok(());
        }
    };
    if adv.stream != subjects::JOBS_STREAM {
        return Ok(());
    }
    let msg = match jobs.get_raw_message(adv.stream_seq).await {
        Ok(m) => m,
        // Settled at last, or purged by a pause or cancel: nothing is dead.
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(()),
        Err(e) => anyhow::bail!("read job message {}: {e}", adv.stream_seq),
    };
    let msg_id = msg
        .headers
        .get("Nats-Msg-Id")
        .map(|v| v.as_str().to_string());
    match decode::<Job>(&msg.payload) {
        Ok(job) => fail(ctx, &job, msg_id.as_deref(), &adv).await?,
        Err(e) => {
            warn!(seq = adv.stream_seq, error = %e, "a message that is not a job reached max deliveries")
        }
    }
    // JetStream will not deliver it again: it would only sit in the work queue.
    use async_nats::jetstream::stream::DeleteMessageErrorKind;
    match jobs.delete_message(adv.stream_seq).await {
        Ok(_) => Ok(()),
        // Refused by JetStream: gone already (settled, purged, or deleted by an earlier run).
        Err(e) if matches!(e.kind(), DeleteMessageErrorKind::JetStream(_)) => {
            debug!(seq = adv.stream_seq, error = %e, "dead job message not deleted");
            Ok(())
        }
        Err(e) => anyhow::bail!("delete dead job message {}: {e}", adv.stream_seq),
    }
}

/// Fails a job whose message was delivered `deliveries` times without being settled, unless
/// the message is from an earlier publishing of it (before a pause: the job was put back and
/// published again since).
async fn fail(
    ctx: &crate::Shared,
    job: &Job,
    msg_id: Option<&str>,
    adv: &MaxDeliveries,
) -> anyhow::Result<()> {
    let Some((task, seq)) = store::parse_job_id(&job.id) else {
        warn!(job = %job.id, "a dead job with a malformed id");
        return Ok(());
    };
    // Pause and cancel take the lock too: the epoch read here stays the task's while it is used.
    let _guard = ctx.dispatch_lock.lock().await;
    let row = match ctx.store.task(task).await {
        Ok(r) => r,
        Err(e) if e.code == ErrorCode::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let epoch = msg_id
        .and_then(|id| id.rsplit_once('@'))
        .and_then(|(_, e)| e.parse::<i64>().ok());
    if epoch != Some(row.epoch) {
        debug!(job = %job.id, ?msg_id, epoch = row.epoch, "a dead message of an earlier publishing");
        return Ok(());
    }
    let reason = format!("worker crashed {} times on this job", adv.deliveries);
    let attempt = job.attempt.max(1) + adv.deliveries.saturating_sub(1) as u32;
    let applied =
        crate::aggregator::fail_job(ctx, &job.tenant, task, seq, attempt, reason.clone()).await?;
    info!(job = %job.id, consumer = %adv.consumer, deliveries = adv.deliveries, ?applied, "JetStream gave up on a job: {reason}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advisories_of_nats_server_2_9_parse() {
        // As nats-server 2.9.10 publishes it.
        let text = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"WxzDp7E6aWrEeKQryvvbLr","timestamp":"2026-12-01T22:27:26.660046637Z","stream":"BTP_JOBS","consumer":"workers-default","stream_seq":17,"deliveries":3}"#;
        let a: MaxDeliveries = serde_json::from_slice(text).unwrap();
        assert_eq!(
            a,
            MaxDeliveries {
                stream: "BTP_JOBS".into(),
                consumer: "workers-default".into(),
                stream_seq: 17,
                deliveries: 3,
            }
        );
    }
}
