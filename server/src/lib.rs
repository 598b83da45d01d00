//! The BeyondTP server: the only coordinator. Owns the store, plans tasks into jobs, publishes
//! them (outbox), applies results, keeps the agent registry and answers the API.

pub mod agents;
pub mod aggregator;
pub mod api;
pub mod dispatcher;
pub mod planner;
pub mod store;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub use store::Store;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub nats_url: String,
    /// `sqlite:///path/btp.db?mode=rwc` (or `sqlite:` paths).
    pub database_url: String,
    /// Most published-but-unfinished jobs per task.
    pub window: i64,
    pub consumer: btp_nats::topology::ConsumerSettings,
}

/// Runs the server until `cancel` fires or a part fails.
pub async fn run(cfg: ServerConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let store = Store::open(&cfg.database_url).await?;
    let nats = btp_nats::connect(&cfg.nats_url, "btp-server").await?;
    let js = async_nats::jetstream::new(nats.clone());
    btp_nats::topology::ensure_streams(&js).await?;
    btp_nats::topology::jobs_consumer(&js, btp_common::DEFAULT_TENANT, &cfg.consumer).await?;
    let wake = Arc::new(Notify::new());
    info!(nats = %cfg.nats_url, database = store.backend(), "server started");

    let lock = dispatcher::DispatchLock::default();
    let api = api::Api {
        store: store.clone(),
        wake_dispatcher: wake.clone(),
        js: js.clone(),
        nats: nats.clone(),
        dispatch_lock: lock.clone(),
    };
    let mut parts = tokio::task::JoinSet::new();
    parts.spawn(api::serve(nats.clone(), api, cancel.clone()));
    parts.spawn(agents::run(nats.clone(), store.clone(), cancel.clone()));
    parts.spawn(dispatcher::run(
        js.clone(),
        store.clone(),
        cfg.window,
        wake.clone(),
        lock,
        cancel.clone(),
    ));
    parts.spawn(aggregator::run(
        js.clone(),
        store.clone(),
        wake.clone(),
        cancel.clone(),
    ));

    let mut result = Ok(());
    while let Some(joined) = parts.join_next().await {
        let r = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(e) = r {
            if result.is_ok() {
                result = Err(e);
            }
            cancel.cancel();
        }
    }
    let _ = nats.flush().await;
    info!("server stopped");
    result
}
