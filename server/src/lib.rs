//! The BeyondTP server: the only coordinator. Owns the store, plans tasks into jobs, publishes
//! them (outbox), applies results, keeps the agent registry and answers the API.

pub mod agents;
pub mod aggregator;
pub mod allocator;
pub mod api;
pub mod cursor;
pub mod dead;
pub mod dispatcher;
pub mod events;
pub mod http;
pub mod kept;
pub mod leader;
pub mod planner;
pub mod report;
pub mod schedule;
pub mod seal;
pub mod speed;
pub mod store;
pub mod telemetry;

use std::sync::Arc;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use store::Store;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub nats_url: String,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`.
    pub database_url: String,
    /// Most published-but-unfinished jobs per task.
    pub window: i64,
    pub consumer: btp_nats::topology::ConsumerSettings,
    /// Replicas of the streams and consumers (`--replicas`; at most the JetStream cluster's
    /// nodes). Applied at start, to existing streams and consumers too.
    pub replicas: usize,
    /// SHA-256 (hex) of the admin token; None: no tokens, one default tenant.
    pub admin_hash: Option<String>,
    /// Serve the JSON HTTP gateway of the API here.
    pub http_addr: Option<std::net::SocketAddr>,
    /// Names the HTTP gateway answers to besides its address (`--http-allowed-host`).
    pub http_allowed_hosts: Vec<String>,
    /// A token every HTTP API request must carry (standalone's console token).
    pub console_token: Option<String>,
}

/// What the server's parts share.
#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub nats: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    /// Wakes the dispatcher when there may be jobs to publish.
    pub wake_dispatcher: Arc<Notify>,
    pub dispatch_lock: dispatcher::DispatchLock,
    pub speed: Arc<speed::SpeedTracker>,
    /// Live speed of each client (keyed by client id).
    pub client_speed: Arc<speed::SpeedTracker>,
    /// Latest heartbeats, for the speed-limit allocator.
    pub live: Arc<agents::Live>,
    /// Wakes the allocator when a limit changed.
    pub wake_allocator: Arc<Notify>,
}

/// Runs the server until `cancel` fires or a part fails.
pub async fn run(cfg: ServerConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    // A taken address fails the start, before anything else runs.
    let http = match cfg.http_addr {
        Some(addr) => {
            if !addr.ip().is_loopback() && cfg.admin_hash.is_none() && cfg.console_token.is_none() {
                warn!(%addr, "the console and the HTTP API are reachable from the network without a token: set --admin-token-file");
            }
            // Bound again once this server leads: a standby must not take connections it
            // would not answer.
            drop(http::bind(addr).await?);
            Some(addr)
        }
        None => None,
    };
    if cfg.consumer.max_deliver <= btp_common::api::MAX_ATTEMPTS_LIMIT as i64 {
        warn!(
            max_deliver = cfg.consumer.max_deliver,
            "max deliver is not above the largest max_attempts ({}): jobs of tasks allowing more attempts give up at that delivery",
            btp_common::api::MAX_ATTEMPTS_LIMIT
        );
    }
    let postgres = !cfg.database_url.starts_with("sqlite:");
    // SQLite: refused before anything opens the file when another server uses it.
    let sqlite_lock = if postgres {
        None
    } else {
        Some(leader::lock_sqlite(&cfg.database_url)?)
    };
    let store = Store::open(&cfg.database_url).await?;
    let nats = btp_nats::connect(&cfg.nats_url, "btp-server").await?;
    // PostgreSQL: one server leads, the others wait here (answering nothing) for their turn.
    let leadership = match sqlite_lock {
        Some(lock) => lock,
        None => match leader::lead_postgres(&cfg.database_url, &cancel).await? {
            Some(l) => l,
            None => return Ok(()),
        },
    };
    let http = match http {
        Some(addr) => Some(http::bind(addr).await?),
        None => None,
    };
    let js = async_nats::jetstream::new(nats.clone());
    btp_nats::replicas::apply(&js, cfg.replicas).await?;
    btp_nats::topology::ensure_streams(&js).await?;
    btp_nats::topology::jobs_consumer(&js, btp_common::DEFAULT_TENANT, &cfg.consumer).await?;
    for t in store.tenants().await? {
        btp_nats::topology::jobs_consumer(&js, &t.name, &cfg.consumer).await?;
    }
    info!(
        nats = %cfg.nats_url,
        replicas = cfg.replicas,
        database = store.backend(),
        tokens = cfg.admin_hash.is_some(),
        "server started"
    );
    let ctx = Shared {
        store,
        nats: nats.clone(),
        js,
        wake_dispatcher: Arc::new(Notify::new()),
        dispatch_lock: dispatcher::DispatchLock::default(),
        speed: Arc::default(),
        client_speed: Arc::default(),
        live: Arc::default(),
        wake_allocator: Arc::new(Notify::new()),
    };

    let mut parts = tokio::task::JoinSet::new();
    parts.spawn(leadership.hold(cancel.clone()));
    let api = api::Api {
        ctx: ctx.clone(),
        admin_hash: cfg.admin_hash.clone(),
        consumer: cfg.consumer.clone(),
    };
    if let (Some(listener), Some(addr)) = (http, cfg.http_addr) {
        let guard = http::Guard::new(addr, &cfg.http_allowed_hosts, cfg.console_token.as_deref());
        parts.spawn(http::serve(listener, api.clone(), guard, cancel.clone()));
    }
    parts.spawn(schedule::run(api.clone(), cancel.clone()));
    parts.spawn(report::run(api.clone(), cancel.clone()));
    parts.spawn(api::serve(nats.clone(), api, cancel.clone()));
    parts.spawn(agents::run(
        nats.clone(),
        ctx.store.clone(),
        ctx.live.clone(),
        ctx.client_speed.clone(),
        cancel.clone(),
    ));
    parts.spawn(allocator::run(ctx.clone(), cancel.clone()));
    parts.spawn(telemetry::run(ctx.clone(), cancel.clone()));
    parts.spawn(dispatcher::run(ctx.clone(), cfg.window, cancel.clone()));
    parts.spawn(aggregator::run(ctx.clone(), cancel.clone()));
    parts.spawn(dead::run(ctx.clone(), cancel.clone()));

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
