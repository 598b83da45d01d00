//! The agent registry: clients register and stay known through heartbeats on core NATS.

use btp_common::wire::{decode, Heartbeat};
use btp_common::{now_ms, subjects};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::store::Store;

/// Clients send a heartbeat this often.
pub const HEARTBEAT_INTERVAL_MS: i64 = 2_000;
/// A client whose last heartbeat is older than this is shown offline.
pub const OFFLINE_AFTER_MS: i64 = 3 * HEARTBEAT_INTERVAL_MS + 1_000;

pub async fn run(
    nats: async_nats::Client,
    store: Store,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats.subscribe(subjects::HEARTBEAT_ALL).await?;
    let mut known = std::collections::HashSet::new();
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        let hb: Heartbeat = match decode(&msg.payload) {
            Ok(hb) => hb,
            Err(e) => {
                warn!(error = %e, "ignoring a malformed heartbeat");
                continue;
            }
        };
        if known.insert(hb.id.clone()) {
            info!(client = %hb.id, host = %hb.host, workers = hb.workers, "client registered");
        }
        if !hb.online {
            info!(client = %hb.id, "client went offline");
        }
        if let Err(e) = store.upsert_agent(&hb, now_ms()).await {
            warn!(error = %e, "storing a heartbeat failed");
        }
    }
}
