//! The agent registry: clients register and stay known through heartbeats on core NATS.
//!
//! A heartbeat counts for the tenant of its subject (`btp.agents.<tenant>.heartbeat`), which
//! nats-server lets only that tenant's user (and the server's) publish on; one whose body names
//! another tenant is dropped and counted. The registry is kept per tenant and client id, so a
//! tenant posing as another tenant's client (same id) only ever changes its own view. A client
//! shared by several tenants sends one heartbeat per tenant, each on that tenant's subject.

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
/// A client not heard from for this long leaves the server's memory: the live registry, the
/// set of clients already logged as registered and the per-client live speed. Its next
/// heartbeat registers it again; the store's `agents` rows (`client list`) stay.
pub const FORGET_AFTER_MS: i64 = 10 * 60 * 1_000;
/// How often forgotten clients are looked for.
const FORGET_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// Reasons of `btp_server_heartbeats_rejected_total`.
pub mod reject {
    /// The body names another tenant than the subject (or a tenant list without it).
    pub const TENANT: &str = "tenant";
    /// The body does not decode.
    pub const MALFORMED: &str = "malformed";
    pub const ALL: [&str; 2] = [TENANT, MALFORMED];
}

/// The latest heartbeat of every client of every tenant, in memory, for the speed-limit
/// allocator and the file-system roots check of `task.create`.
#[derive(Default)]
pub struct Live {
    /// (tenant of the subject, client id) -> (seen, heartbeat).
    clients: std::sync::Mutex<std::collections::HashMap<(String, String), (i64, Heartbeat)>>,
}

impl Live {
    pub fn update(&self, tenant: &str, hb: Heartbeat, now: i64) {
        let mut c = self.clients.lock().expect("live clients lock");
        c.insert((tenant.to_string(), hb.id.clone()), (now, hb));
    }

    /// Forgets the clients whose last heartbeat is [`FORGET_AFTER_MS`] or more before `now`;
    /// their (tenant, id).
    pub fn forget_stale(&self, now: i64) -> Vec<(String, String)> {
        let mut c = self.clients.lock().expect("live clients lock");
        let gone: Vec<(String, String)> = c
            .iter()
            .filter(|(_, (seen, _))| now - seen >= FORGET_AFTER_MS)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            c.remove(k);
        }
        gone
    }

    /// Clients held in memory.
    pub fn len(&self) -> usize {
        self.clients.lock().expect("live clients lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heartbeats of the online, non-draining clients of `tenant`.
    pub fn online(&self, tenant: &str) -> Vec<Heartbeat> {
        let now = now_ms();
        let c = self.clients.lock().expect("live clients lock");
        c.iter()
            .filter(|((t, _), (seen, hb))| {
                t == tenant && hb.online && !hb.draining && now - seen < OFFLINE_AFTER_MS
            })
            .map(|(_, (_, hb))| hb.clone())
            .collect()
    }

    /// Online clients of `tenant` that run jobs of `task`; all its online clients when none does.
    pub fn clients_on(&self, tenant: &str, task: &str) -> usize {
        let online = self.online(tenant);
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

/// The tenant of a heartbeat subject, `btp.agents.<tenant>.heartbeat`.
pub fn subject_tenant(subject: &str) -> Option<&str> {
    let t = subject
        .strip_prefix("btp.agents.")?
        .strip_suffix(".heartbeat")?;
    (!t.is_empty() && !t.contains('.')).then_some(t)
}

/// Checks a heartbeat against the tenant of its subject.
pub fn check(tenant: &str, hb: &Heartbeat) -> Result<(), &'static str> {
    if hb.tenant != tenant || (!hb.tenants.is_empty() && !hb.tenants.iter().any(|t| t == tenant)) {
        return Err(reject::TENANT);
    }
    Ok(())
}

pub async fn run(
    nats: async_nats::Client,
    store: Store,
    live: std::sync::Arc<Live>,
    client_speed: std::sync::Arc<crate::speed::SpeedTracker>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = nats.subscribe(subjects::HEARTBEAT_ALL).await?;
    let mut known = std::collections::HashSet::new();
    let mut forget = tokio::time::interval(FORGET_EVERY);
    forget.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = forget.tick() => {
                let now = now_ms();
                for (tenant, id) in live.forget_stale(now) {
                    info!(client = %id, %tenant, "client forgotten: no heartbeat for 10 minutes");
                    known.remove(&(tenant, id));
                }
                // Results name clients too: their speed goes with them, heartbeat or not.
                client_speed.forget_idle(now, FORGET_AFTER_MS);
                continue;
            }
            m = sub.next() => match m { Some(m) => m, None => return Ok(()) },
        };
        let rejected = |reason: &'static str| {
            metrics::counter!(crate::telemetry::HEARTBEATS_REJECTED, "reason" => reason)
                .increment(1);
        };
        let Some(tenant) = subject_tenant(&msg.subject) else {
            continue; // The subscription's wildcard only matches these.
        };
        let hb: Heartbeat = match decode(&msg.payload) {
            Ok(hb) => hb,
            Err(e) => {
                warn!(%tenant, error = %e, "ignoring a malformed heartbeat");
                rejected(reject::MALFORMED);
                continue;
            }
        };
        if let Err(reason) = check(tenant, &hb) {
            warn!(%tenant, client = %hb.id, claimed = %hb.tenant, "dropping a heartbeat that names another tenant than its subject");
            rejected(reason);
            continue;
        }
        if known.insert((tenant.to_string(), hb.id.clone())) {
            info!(client = %hb.id, %tenant, host = %hb.host, workers = hb.workers, fs_roots = ?hb.fs_roots, "client registered");
        }
        if !hb.online {
            info!(client = %hb.id, %tenant, "client went offline");
        }
        let now = now_ms();
        if let Err(e) = store.upsert_agent(tenant, &hb, now).await {
            warn!(error = %e, "storing a heartbeat failed");
        }
        live.update(tenant, hb, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_counts_only_for_the_tenant_of_its_subject() {
        assert_eq!(subject_tenant("btp.agents.acme.heartbeat"), Some("acme"));
        assert_eq!(subject_tenant("btp.agents.a.b.heartbeat"), None);
        let hb = |tenant: &str, tenants: &[&str]| Heartbeat {
            v: 1,
            id: "c1".into(),
            host: "h".into(),
            tenant: tenant.into(),
            workers: 1,
            busy: 0,
            started_ms: 0,
            jobs_done: 0,
            online: true,
            draining: false,
            tasks: vec![],
            tenants: tenants.iter().map(|t| t.to_string()).collect(),
            fs_roots: None,
        };
        assert!(check("acme", &hb("acme", &[])).is_ok());
        assert!(check("acme", &hb("acme", &["globex", "acme"])).is_ok());
        assert_eq!(check("globex", &hb("acme", &[])), Err(reject::TENANT));
        assert_eq!(
            check("globex", &hb("globex", &["acme"])),
            Err(reject::TENANT)
        );
        // One tenant posing as another's client (same id) changes only its own view.
        let live = Live::default();
        let now = now_ms();
        live.update("acme", hb("acme", &[]), now);
        live.update("globex", hb("globex", &[]), now);
        let mut draining = hb("globex", &[]);
        draining.draining = true;
        live.update("globex", draining, now);
        assert_eq!(live.online("acme").len(), 1);
        assert_eq!(live.online("globex").len(), 0);
    }

    #[test]
    fn clients_not_heard_from_for_ten_minutes_are_forgotten() {
        let hb = |id: &str| Heartbeat {
            v: 1,
            id: id.into(),
            host: "h".into(),
            tenant: "acme".into(),
            workers: 1,
            busy: 0,
            started_ms: 0,
            jobs_done: 0,
            online: true,
            draining: false,
            tasks: vec![],
            tenants: vec![],
            fs_roots: None,
        };
        let live = Live::default();
        let t0 = 1_000_000;
        for i in 0..1000 {
            live.update("acme", hb(&format!("gone-{i}")), t0);
        }
        live.update("acme", hb("stays"), t0 + FORGET_AFTER_MS - 1);
        assert!(live.forget_stale(t0 + FORGET_AFTER_MS - 1).is_empty());
        let mut gone = live.forget_stale(t0 + FORGET_AFTER_MS);
        gone.sort();
        assert_eq!(gone.len(), 1000);
        assert_eq!(gone[0], ("acme".to_string(), "gone-0".to_string()));
        assert_eq!(live.len(), 1, "only the client heard from since stays");
        assert!(live.forget_stale(t0 + FORGET_AFTER_MS).is_empty());
    }
}
