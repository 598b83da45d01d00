//! Registration and heartbeats: the server learns about a client from its heartbeats.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use btp_common::subjects;
use btp_common::wire::Heartbeat;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::worker::{Stats, TaskTokens};
use crate::ClientConfig;

pub const INTERVAL: Duration = Duration::from_secs(2);

pub async fn run(
    cfg: Arc<ClientConfig>,
    nats: async_nats::Client,
    stats: Arc<Stats>,
    tokens: Arc<TaskTokens>,
    started_ms: i64,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(INTERVAL);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = ticker.tick() => {}
        }
        if let Err(e) = send(&cfg, &nats, &stats, &tokens, started_ms, true).await {
            debug!(error = %e, "heartbeat failed");
        }
    }
    send(&cfg, &nats, &stats, &tokens, started_ms, false).await?;
    nats.flush().await?;
    Ok(())
}

async fn send(
    cfg: &ClientConfig,
    nats: &async_nats::Client,
    stats: &Stats,
    tokens: &TaskTokens,
    started_ms: i64,
    online: bool,
) -> anyhow::Result<()> {
    // Refreshed with every heartbeat so the exporter never drops them as idle.
    metrics::gauge!(crate::telemetry::WORKERS).set(cfg.workers as f64);
    metrics::gauge!(crate::telemetry::WORKERS_BUSY).set(stats.busy.load(Ordering::Relaxed) as f64);
    // One heartbeat per tenant, on that tenant's subject: the server counts each only for
    // the tenant of its subject.
    for tenant in &cfg.tenants {
        let hb = Heartbeat {
            v: btp_common::WIRE_VERSION,
            id: cfg.id.clone(),
            host: cfg.host.clone(),
            tenant: tenant.clone(),
            workers: cfg.workers as u32,
            busy: stats.busy.load(Ordering::Relaxed) as u32,
            started_ms,
            jobs_done: stats.jobs_done.load(Ordering::Relaxed),
            online,
            draining: stats.draining.load(Ordering::Relaxed),
            tasks: tokens.active_tasks(Duration::from_secs(5)),
            tenants: if cfg.tenants.len() > 1 {
                cfg.tenants.clone()
            } else {
                Vec::new()
            },
            fs_roots: cfg.fs_roots(),
        };
        nats.publish(subjects::heartbeat(tenant), serde_json::to_vec(&hb)?.into())
            .await?;
    }
    Ok(())
}
