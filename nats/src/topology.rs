//! JetStream streams and consumers of BeyondTP. Every function here is idempotent: the server
//! calls them at start, clients call them before pulling, and either may come first.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer, stream};
use btp_common::subjects;

/// Settings of the jobs consumer shared by a tenant's clients.
#[derive(Clone, Debug)]
pub struct ConsumerSettings {
    /// A job not acked (nor progress-acked) within this time is redelivered to another worker.
    pub ack_wait: Duration,
    /// Deliveries of one message before JetStream stops redelivering it. Workers give up on a
    /// job at the task's `max_attempts` (at most 50) or at this delivery, whichever comes
    /// first; a job that reaches it unsettled (its workers died on it) is failed by the server
    /// from JetStream's advisory (see [`dead_jobs_consumer`]).
    pub max_deliver: i64,
}

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            ack_wait: Duration::from_secs(30),
            max_deliver: 64,
        }
    }
}

/// The jobs stream: a work queue of `btp.jobs.<tenant>.<task>`.
pub fn jobs_stream_config() -> stream::Config {
    stream::Config {
        name: subjects::JOBS_STREAM.to_string(),
        subjects: vec!["btp.jobs.>".to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The results stream: a work queue of `btp.results.<tenant>.<task>`, consumed by the server.
pub fn results_stream_config() -> stream::Config {
    stream::Config {
        name: subjects::RESULTS_STREAM.to_string(),
        subjects: vec!["btp.results.>".to_string()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    }
}

/// The stream keeping JetStream's max-deliveries advisories of the jobs stream.
pub fn dead_jobs_stream_config() -> stream::Config {
    stream::Config {
        name: subjects::DEAD_JOBS_STREAM.to_string(),
        subjects: vec![subjects::max_deliveries_advisories()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: Duration::from_secs(7 * 24 * 3600),
        ..Default::default()
    }
}

/// Creates (or finds) the jobs and results streams. A stream created here has one replica;
/// the server sets the count it is configured with ([`crate::replicas::apply`]) before it
/// creates anything else, and consumers created later inherit their stream's count.
pub async fn ensure_streams(
    js: &jetstream::Context,
) -> anyhow::Result<(stream::Stream, stream::Stream)> {
    let jobs = js
        .get_or_create_stream(jobs_stream_config())
        .await
        .context("create the jobs stream")?;
    let results = js
        .get_or_create_stream(results_stream_config())
        .await
        .context("create the results stream")?;
    Ok((jobs, results))
}

/// The durable pull consumer that a tenant's clients share (work is load-balanced across them).
pub async fn jobs_consumer(
    js: &jetstream::Context,
    tenant: &str,
    settings: &ConsumerSettings,
) -> anyhow::Result<consumer::PullConsumer> {
    let (jobs, _) = ensure_streams(js).await?;
    let name = subjects::workers_consumer(tenant);
    jobs.get_or_create_consumer(
        &name,
        consumer::pull::Config {
            durable_name: Some(name.clone()),
            filter_subject: subjects::jobs_filter(tenant),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: settings.ack_wait,
            max_deliver: settings.max_deliver,
            max_ack_pending: 20_000,
            max_waiting: 4096,
            ..Default::default()
        },
    )
    .await
    .with_context(|| format!("create the jobs consumer {name}"))
}

/// The server's durable consumer of JetStream's max-deliveries advisories of the jobs stream.
/// They are kept in a stream of their own, so an advisory emitted while no server runs waits
/// for the next one instead of being lost (the job would stay unfinished forever).
pub async fn dead_jobs_consumer(js: &jetstream::Context) -> anyhow::Result<consumer::PullConsumer> {
    let stream = js
        .get_or_create_stream(dead_jobs_stream_config())
        .await
        .context("create the dead jobs stream")?;
    stream
        .get_or_create_consumer(
            subjects::DEAD_JOBS_CONSUMER,
            consumer::pull::Config {
                durable_name: Some(subjects::DEAD_JOBS_CONSUMER.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .context("create the dead jobs consumer")
}

/// Deliveries of one result before JetStream gives up on it. A result that does not fit its
/// job is terminated at once and one whose database work fails is redelivered alone, a second
/// apart, so this is a backstop (about three minutes of a result that can never be applied)
/// that keeps nothing in the queue forever.
pub const RESULTS_MAX_DELIVER: i64 = 200;

/// The server's durable consumer on the results stream. An existing consumer of an older
/// version (without MaxDeliver, or another ack wait) is updated to this configuration:
/// `get_or_create` alone would keep its old one.
pub async fn results_consumer(js: &jetstream::Context) -> anyhow::Result<consumer::PullConsumer> {
    let (_, results) = ensure_streams(js).await?;
    let config = consumer::pull::Config {
        durable_name: Some(subjects::RESULTS_CONSUMER.to_string()),
        ack_policy: consumer::AckPolicy::Explicit,
        // Results a killed server had pulled but not acknowledged come back to its
        // successor after this; a batch commits in milliseconds, and a result applied
        // twice is recognized and ignored, so short is safe.
        ack_wait: Duration::from_secs(10),
        max_deliver: RESULTS_MAX_DELIVER,
        max_ack_pending: 20_000,
        ..Default::default()
    };
    let mut consumer = results
        .get_or_create_consumer(subjects::RESULTS_CONSUMER, config.clone())
        .await
        .context("create the results consumer")?;
    let have = &consumer.cached_info().config;
    // Its replica count is the server's `--replicas` (set by `replicas::apply`): keep it.
    let config = consumer::pull::Config {
        num_replicas: have.num_replicas,
        ..config
    };
    if have.max_deliver != config.max_deliver
        || have.ack_wait != config.ack_wait
        || have.max_ack_pending != config.max_ack_pending
    {
        consumer = results
            .update_consumer(config)
            .await
            .context("update the results consumer")?;
    }
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_older_results_consumer_gets_max_deliver() {
        let dir = tempfile::tempdir().unwrap();
        let nats = crate::launcher::NatsServer::start(dir.path(), None).unwrap();
        let js = jetstream::new(async_nats::connect(nats.url()).await.unwrap());
        let (_, results) = ensure_streams(&js).await.unwrap();
        // As an earlier version created it: no MaxDeliver.
        results
            .create_consumer(consumer::pull::Config {
                durable_name: Some(subjects::RESULTS_CONSUMER.to_string()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(10),
                max_ack_pending: 20_000,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut c = results_consumer(&js).await.unwrap();
        assert_eq!(
            c.info().await.unwrap().config.max_deliver,
            RESULTS_MAX_DELIVER
        );
        // Idempotent once up to date.
        let mut c = results_consumer(&js).await.unwrap();
        assert_eq!(
            c.info().await.unwrap().config.max_deliver,
            RESULTS_MAX_DELIVER
        );
    }
}
