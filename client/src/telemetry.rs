//! Metrics of a client. Names follow `btp_<subsystem>_<name>_<unit>[_total]`; labels are bounded
//! enums (job kind, outcome).

pub const BYTES_COPIED: &str = "btp_client_bytes_copied_total";
pub const BYTES_THROUGH: &str = "btp_client_bytes_through_total";
pub const BYTES_HASHED: &str = "btp_client_bytes_hashed_total";
pub const FILES_COPIED: &str = "btp_client_files_copied_total";
pub const FILES_FAILED: &str = "btp_client_files_failed_total";
pub const FILES_SKIPPED: &str = "btp_client_files_skipped_total";
pub const JOBS: &str = "btp_client_jobs_total";
pub const JOB_DURATION: &str = "btp_client_job_duration_seconds";
pub const WORKERS: &str = "btp_client_workers";
pub const WORKERS_BUSY: &str = "btp_client_workers_busy";

/// How a job ended on this client.
#[derive(Clone, Copy)]
pub enum Outcome {
    Ok,
    /// Nak'd for a later attempt (transient error), or some of its files scheduled again.
    Retried,
    Failed,
    /// The task was cancelled, or the client handed the job back while stopping.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Retried => "retried",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        BYTES_COPIED,
        Unit::Bytes,
        "Bytes written to destinations by this client."
    );
    describe_counter!(
        BYTES_THROUGH,
        Unit::Bytes,
        "Bytes this client read from sources to copy them (none for server-side copies)."
    );
    describe_counter!(
        BYTES_HASHED,
        Unit::Bytes,
        "Bytes this client read and hashed to compare contents for check tasks."
    );
    describe_counter!(FILES_COPIED, "Files copied completely by this client.");
    describe_counter!(
        FILES_SKIPPED,
        "Files already identical at the destination, not copied."
    );
    describe_counter!(
        FILES_FAILED,
        "Files this client reported as failed (permanent or out of attempts)."
    );
    describe_counter!(JOBS, "Jobs run by this client, by kind and outcome.");
    describe_histogram!(JOB_DURATION, Unit::Seconds, "Time to run one job, by kind.");
    describe_gauge!(WORKERS, "Workers of this client.");
    describe_gauge!(WORKERS_BUSY, "Workers of this client running a job now.");
}
