//! The replica count of BeyondTP's streams and consumers (`btp server run --replicas N`): on a
//! JetStream cluster each stream and consumer is kept by N nodes, so losing one of them loses
//! no queued job, result or advisory and stops nothing. The server applies its setting at each
//! start: missing streams are created with N replicas, existing streams and consumers with
//! another count are updated to N (JetStream moves their data). A count the cluster cannot
//! hold is refused with one message.

use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer, context, stream};
use futures::TryStreamExt as _;
use tracing::info;

use crate::topology;

/// JetStream keeps at most this many replicas of a stream.
pub const MAX_REPLICAS: usize = 5;

/// How long a cluster that is still electing its leaders is waited for.
const READY_WAIT: Duration = Duration::from_secs(60);

/// How long JetStream's "no suitable peers for placement" is taken for a cluster still forming
/// (nodes that started at the same moment learn of each other over a few seconds) before it is
/// taken for a cluster of too few nodes.
const PLACEMENT_WAIT: Duration = Duration::from_secs(15);

/// Sets the replica count of the jobs, results and dead-jobs streams and of every consumer on
/// them to `replicas`, creating the streams that are missing.
pub async fn apply(js: &jetstream::Context, replicas: usize) -> anyhow::Result<()> {
    anyhow::ensure!(
        (1..=MAX_REPLICAS).contains(&replicas),
        "--replicas {replicas}: JetStream keeps 1 to {MAX_REPLICAS} replicas"
    );
    // A single nats-server accepts a stream with more replicas than it can keep (as one), so
    // that is refused here, before anything changes.
    if replicas > 1 && js.client().server_info().cluster.is_none() {
        anyhow::bail!(
            "--replicas {replicas}: the NATS server is not part of a cluster and cannot hold {replicas} replicas; \
             run a JetStream cluster of at least {replicas} nodes (see `btp nats config --cluster`) or use --replicas 1"
        );
    }
    // Short requests: a stream whose leader was just lost answers nothing until its group
    // elects another (a few seconds), and each try should not wait JetStream's default 5 s.
    let mut js = js.clone();
    js.set_timeout(Duration::from_secs(1));
    let js = &js;
    let started = Instant::now();
    for config in [
        topology::jobs_stream_config(),
        topology::results_stream_config(),
        topology::dead_jobs_stream_config(),
    ] {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let stream = stream_with_replicas(js, config.clone(), replicas, started).await?;
            // Consumers are placed on their stream's peers: they are changed once the stream
            // has all of its own.
            let peers = stream
                .cached_info()
                .cluster
                .as_ref()
                .map(group_size)
                .unwrap_or(1);
            let step = if peers == replicas {
                consumers_with_replicas(&stream, replicas).await
            } else {
                Err(Failure::NotReady(anyhow::anyhow!(
                    "stream {} has {peers} of its {replicas} peers",
                    config.name
                )))
            };
            match step {
                Ok(()) => break,
                Err(f) => match f.wait_or_stop(started, deadline) {
                    Ok(()) => tokio::time::sleep(Duration::from_millis(500)).await,
                    Err(Stop::Refused(why)) => return Err(refused(&config.name, replicas, &why)),
                    Err(Stop::Error(e)) => return Err(e),
                },
            }
        }
    }
    Ok(())
}

/// What went wrong with one attempt on a stream.
enum Failure {
    /// JetStream cannot place that many replicas (a single server, or fewer nodes).
    Refused(String),
    /// The cluster is not ready yet (no meta leader elected, a stream leader moving, no
    /// answer): worth waiting for at start.
    NotReady(anyhow::Error),
    /// No peers to place the replicas on: a cluster still forming, or one of too few nodes.
    NoPlacement(String),
    Other(anyhow::Error),
}

/// Why the replica count cannot be applied.
enum Stop {
    /// The cluster cannot hold that many replicas.
    Refused(String),
    Error(anyhow::Error),
}

impl Failure {
    /// Ok when the attempt is worth making again (a cluster not ready before `deadline`, no
    /// placement within [`PLACEMENT_WAIT`] of `started`); why to stop otherwise.
    fn wait_or_stop(self, started: Instant, deadline: Instant) -> Result<(), Stop> {
        match self {
            Failure::NotReady(_) if Instant::now() < deadline => Ok(()),
            Failure::NoPlacement(_) if started.elapsed() < PLACEMENT_WAIT => Ok(()),
            Failure::NoPlacement(why) | Failure::Refused(why) => Err(Stop::Refused(why)),
            Failure::NotReady(e) | Failure::Other(e) => Err(Stop::Error(e)),
        }
    }
}

/// Sorts a JetStream API error by its code.
fn sort(code: Option<u64>, e: anyhow::Error) -> Failure {
    match code {
        // 10074: replicas > 1 in non-clustered mode; 10023: insufficient resources.
        Some(10074 | 10023) => Failure::Refused(e.to_string()),
        // 10005: no suitable peers for placement.
        Some(10005) => Failure::NoPlacement(e.to_string()),
        // 10008: JetStream system temporarily unavailable.
        Some(10008) | None => Failure::NotReady(e),
        Some(_) => Failure::Other(e),
    }
}

fn create_failure(e: context::CreateStreamError) -> Failure {
    match e.kind() {
        context::CreateStreamErrorKind::JetStream(j) => sort(Some(j.error_code().0), e.into()),
        context::CreateStreamErrorKind::TimedOut
        | context::CreateStreamErrorKind::JetStreamUnavailable => sort(None, e.into()),
        _ => Failure::Other(e.into()),
    }
}

fn refused(name: &str, replicas: usize, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "--replicas {replicas}: the NATS cluster cannot hold {replicas} replicas of stream {name} ({why}); \
         it needs at least {replicas} JetStream servers (see `btp nats config --cluster`)"
    )
}

/// One attempt: the stream of `config`, created with `replicas` or updated to it.
async fn try_stream(
    js: &jetstream::Context,
    config: &stream::Config,
    replicas: usize,
) -> Result<stream::Stream, Failure> {
    let name = &config.name;
    match js.get_stream(name).await {
        Ok(s) => {
            let have = s.cached_info().config.clone();
            if have.num_replicas.max(1) == replicas {
                return Ok(s);
            }
            info!(stream = %name, from = have.num_replicas, to = replicas, "changing the replica count");
            js.update_stream(stream::Config {
                num_replicas: replicas,
                ..have
            })
            .await
            .map_err(create_failure)?;
            js.get_stream(name)
                .await
                .map_err(|e| Failure::NotReady(e.into()))
        }
        Err(e) => match e.kind() {
            context::GetStreamErrorKind::JetStream(j) if j.error_code().0 == 10059 => js
                .create_stream(stream::Config {
                    num_replicas: replicas,
                    ..config.clone()
                })
                .await
                .map_err(create_failure),
            context::GetStreamErrorKind::JetStream(j) => {
                Err(sort(Some(j.error_code().0), e.into()))
            }
            _ => Err(Failure::NotReady(e.into())),
        },
    }
}

/// The stream of `config`, created with `replicas` or updated to it; a cluster still
/// starting is waited for.
async fn stream_with_replicas(
    js: &jetstream::Context,
    config: stream::Config,
    replicas: usize,
    started: Instant,
) -> anyhow::Result<stream::Stream> {
    let deadline = Instant::now() + READY_WAIT;
    loop {
        let failure = match try_stream(js, &config, replicas).await {
            Ok(s) => return Ok(s),
            Err(f) => f,
        };
        match failure.wait_or_stop(started, deadline) {
            Ok(()) => tokio::time::sleep(Duration::from_millis(500)).await,
            Err(Stop::Refused(why)) => return Err(refused(&config.name, replicas, &why)),
            Err(Stop::Error(e)) => {
                return Err(e.context(format!(
                    "set the replicas of stream {} to {replicas}",
                    config.name
                )))
            }
        }
    }
}

/// The distinct nodes of a RAFT group (while it grows its leader may be listed among its
/// replicas too).
fn group_size(c: &stream::ClusterInfo) -> usize {
    let mut names: std::collections::BTreeSet<&str> =
        c.replicas.iter().map(|p| p.name.as_str()).collect();
    names.extend(c.leader.as_deref());
    names.len().max(1)
}

/// Every consumer of `stream` kept by `replicas` peers. Ok only when a look at them finds every
/// one there already; a consumer just changed is NotReady until JetStream has moved it, so that
/// the caller looks again.
async fn consumers_with_replicas(stream: &stream::Stream, replicas: usize) -> Result<(), Failure> {
    let name = stream.cached_info().config.name.clone();
    let infos: Vec<consumer::Info> = stream.consumers().try_collect().await.map_err(|e| {
        Failure::NotReady(
            anyhow::Error::new(e).context(format!("list the consumers of stream {name}")),
        )
    })?;
    let mut moving = Vec::new();
    for info in infos {
        // The peers keeping it, not its configured count: a consumer whose count changed while
        // its stream was still gaining peers keeps the peers the stream had then.
        let have = info.cluster.as_ref().map(group_size).unwrap_or(1);
        if have == replicas {
            continue;
        }
        if info.config.num_replicas == replicas {
            // Configured so, but not placed so: set its actual count first, so that the change
            // below is one that JetStream places again.
            update_consumer(stream, &info, have).await?;
        }
        info!(consumer = %info.name, from = have, to = replicas, "changing the replica count");
        update_consumer(stream, &info, replicas).await?;
        moving.push(info.name);
    }
    if moving.is_empty() {
        return Ok(());
    }
    Err(Failure::NotReady(anyhow::anyhow!(
        "consumers {moving:?} of stream {name} did not reach {replicas} replicas"
    )))
}

async fn update_consumer(
    stream: &stream::Stream,
    info: &consumer::Info,
    replicas: usize,
) -> Result<(), Failure> {
    let name = &stream.cached_info().config.name;
    stream
        .update_consumer(consumer::Config {
            num_replicas: replicas,
            ..info.config.clone()
        })
        .await
        .map_err(|e| {
            let code = match e.kind() {
                stream::ConsumerUpdateErrorKind::JetStream(j) => Some(j.error_code().0),
                _ => None,
            };
            let context = format!(
                "set the replicas of consumer {} of stream {name} to {replicas}",
                info.name
            );
            let why = format!("consumer {}: no room for its replicas", info.name);
            match sort(code, anyhow::Error::new(e).context(context)) {
                Failure::Refused(_) => Failure::Refused(why),
                Failure::NoPlacement(_) => Failure::NoPlacement(why),
                f => f,
            }
        })?;
    Ok(())
}
