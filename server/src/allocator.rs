//! The speed-limit allocator: a running task's limit is shared by the clients working on it.
//! Every second it counts, from heartbeats, the online clients that ran the task's jobs in the
//! last seconds (all online clients of the tenant while none has yet) and sends each task's
//! per-client share on `btp.control.<tenant>`. A timetable's limit is the entry in force at the
//! tick (UTC). Clients apply it to a token bucket on the byte stream, so joins, departures,
//! `task.set` and a timetable's changes take effect within about a second.

use std::collections::HashMap;
use std::time::Duration;

use btp_common::subjects;
use btp_common::wire::{Control, ControlAction};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::Shared;

pub async fn run(ctx: Shared, cancel: CancellationToken) -> anyhow::Result<()> {
    // Last share sent per task, to log changes and to lift limits that were removed.
    let mut sent: HashMap<String, Option<u64>> = HashMap::new();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            _ = ctx.wake_allocator.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let running = match ctx.store.running_tasks().await {
            Ok(r) => r,
            Err(e) => {
                debug!(error = %e, "allocator cannot read tasks");
                continue;
            }
        };
        // Tenants' speed quotas, shared equally by each tenant's running tasks.
        let quotas: HashMap<String, u64> = match ctx.store.tenant_quotas().await {
            Ok(q) => q
                .into_iter()
                .filter_map(|(name, (_, speed))| Some((name, speed?)))
                .collect(),
            Err(e) => {
                debug!(error = %e, "allocator cannot read tenants");
                continue;
            }
        };
        let mut per_tenant: HashMap<String, u64> = HashMap::new();
        for (_, tenant, _) in &running {
            *per_tenant.entry(tenant.clone()).or_default() += 1;
        }
        let mut still = HashMap::new();
        for (id, tenant, _) in running {
            let Ok(task) = ctx.store.task(&id).await else {
                continue;
            };
            let quota = quotas
                .get(&tenant)
                .map(|q| (q / per_tenant[&tenant].max(1)).max(1));
            // A timetable's entry in force at this tick.
            let own = task
                .info
                .options
                .speed_limit
                .as_ref()
                .and_then(|l| l.now(btp_common::now_ms()));
            let limit = match (own, quota) {
                (Some(own), Some(q)) => Some(own.min(q)),
                (own, q) => own.or(q),
            };
            let share = limit.map(|limit| {
                let n = ctx.live.clients_on(&tenant, &id).max(1);
                (limit / n as u64).max(1)
            });
            // A timetable in an `off` window still sends its `None` every tick: clients that
            // join then must not keep a job's older share.
            let timetable = matches!(
                task.info.options.speed_limit,
                Some(btp_common::api::SpeedLimit::Timetable(_))
            );
            if share.is_none() && !timetable && !matches!(sent.get(&id), Some(Some(_))) {
                continue;
            }
            if sent.get(&id) != Some(&share) {
                info!(task = %id, share = ?share, "speed limit share");
            }
            let control = Control {
                v: btp_common::WIRE_VERSION,
                task: Some(id.clone()),
                client: None,
                bytes_per_sec: share,
                action: ControlAction::Limit,
            };
            let body = serde_json::to_vec(&control).expect("serializable");
            if let Err(e) = ctx
                .nats
                .publish(subjects::control(&tenant), body.into())
                .await
            {
                debug!(task = %id, error = %e, "sending a speed share failed");
            }
            still.insert(id, share);
        }
        sent = still;
    }
}
