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

/// The latest heartbeat of every client, in memory, for the speed-limit allocator.
#[derive(Default)]
pub struct Live {
    clients: std::sync::Mutex<std::collections::HashMap<String, (i64, Heartbeat)>>,
}

impl Live {
    fn update(&self, hb: Heartbeat, now: i64) {
        let mut c = self.clients.lock().expect("live clients lock");
        c.insert(hb.id.clone(), (now, hb));
    }

    /// Online clients of `tenant` that run jobs of `task`; all its online clients when none does.
    pub fn clients_on(&self, tenant: &str, task: &str) -> usize {
        let now = now_ms();
        let c = self.clients.lock().expect("live clients lock");
        let online: Vec<&Heartbeat> = c
            .values()
            .filter(|(seen, hb)| {
                hb.online && !hb.draining && hb.tenant == tenant && now - seen < OFFLINE_AFTER_MS
            })
            .map(|(_, hb)| hb)
            .collect();
        let working = online
            .iter()
            .filter(|hb| hb.tasks.iter().any(|t| t == task))
            .count();
        if working > 0 {
            working
        } else {
            online.len()
        }
    }
}

pub async fn run(
    nats: async_nats::Client,
    store: Store,
    live: std::sync::Arc<Live>,
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
        let now = now_ms();
        if let Err(e) = store.upsert_agent(&hb, now).await {
            warn!(error = %e, "storing a heartbeat failed");
        }
        live.update(hb, now);
    }
}
