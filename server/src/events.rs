//! Task state changes published on `btp.events.<tenant>.task`, for integrations that listen
//! instead of polling. Best effort: the store is the truth, events are notifications.

use btp_common::api::{CheckCounts, TaskEvent, TaskState};
use btp_common::{now_ms, subjects};
use tracing::debug;

/// `check`: a check task's verdict counts, sent with its state.
pub async fn publish(
    nats: &async_nats::Client,
    tenant: &str,
    task: &str,
    state: TaskState,
    check: Option<CheckCounts>,
) {
    let event = TaskEvent {
        v: btp_common::WIRE_VERSION,
        tenant: tenant.to_string(),
        task: task.to_string(),
        state,
        at_ms: now_ms(),
        check,
    };
    let body = serde_json::to_vec(&event).expect("serializable");
    if let Err(e) = nats
        .publish(subjects::task_events(tenant), body.into())
        .await
    {
        debug!(task, error = %e, "publishing a task event failed");
    }
}
