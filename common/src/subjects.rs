//! NATS subjects and JetStream names. Every data subject carries the tenant.

/// JetStream stream holding jobs (WorkQueue retention).
pub const JOBS_STREAM: &str = "BTP_JOBS";
/// JetStream stream holding job results (WorkQueue retention), consumed by the server.
pub const RESULTS_STREAM: &str = "BTP_RESULTS";
/// Durable consumer of the server on the results stream.
pub const RESULTS_CONSUMER: &str = "btp-server";
/// JetStream stream keeping the advisories of jobs JetStream stopped redelivering (WorkQueue).
pub const DEAD_JOBS_STREAM: &str = "BTP_DEAD_JOBS";
/// Durable consumer of the server on the dead jobs stream.
pub const DEAD_JOBS_CONSUMER: &str = "btp-server";

/// JetStream's advisories of messages of the jobs stream that reached MaxDeliver, for every
/// tenant's consumer.
pub fn max_deliveries_advisories() -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{JOBS_STREAM}.*")
}
/// Queue group of the server's API subscriptions.
pub const API_QUEUE: &str = "btp-server";

pub fn jobs(tenant: &str, task: &str) -> String {
    format!("btp.jobs.{tenant}.{task}")
}

pub fn jobs_filter(tenant: &str) -> String {
    format!("btp.jobs.{tenant}.>")
}

/// The durable pull consumer shared by all clients of one tenant.
pub fn workers_consumer(tenant: &str) -> String {
    format!("workers-{tenant}")
}

pub fn results(tenant: &str, task: &str) -> String {
    format!("btp.results.{tenant}.{task}")
}

pub fn heartbeat(tenant: &str) -> String {
    format!("btp.agents.{tenant}.heartbeat")
}

/// Task state changes of a tenant.
pub fn task_events(tenant: &str) -> String {
    format!("btp.events.{tenant}.task")
}

pub fn control(tenant: &str) -> String {
    format!("btp.control.{tenant}")
}

pub const HEARTBEAT_ALL: &str = "btp.agents.*.heartbeat";

/// Request subject of an API verb, e.g. `btp.api.v1.task.create`.
pub fn api(verb: &str) -> String {
    format!("btp.api.v1.{verb}")
}

pub const API_ALL: &str = "btp.api.v1.>";
