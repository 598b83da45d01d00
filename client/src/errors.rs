//! The one place where storage and NATS errors are classified: a transient error is retried
//! (the job is nak'd with a backoff), a permanent one fails the file or job at once.

use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt later: timeouts, connection resets, 5xx, a file that changed.
    #[error("{0}")]
    Transient(String),
    /// Will not get better by retrying: not found, permission denied, invalid names.
    #[error("{0}")]
    Permanent(String),
    /// The job was stopped: the client is shutting down or the task was cancelled.
    #[error("cancelled")]
    Cancelled,
}

impl JobError {
    pub fn is_transient(&self) -> bool {
        matches!(self, JobError::Transient(_))
    }
}

impl From<opendal::Error> for JobError {
    fn from(e: opendal::Error) -> Self {
        use opendal::ErrorKind as K;
        let text = describe(&e);
        match e.kind() {
            K::NotFound
            | K::PermissionDenied
            | K::IsADirectory
            | K::NotADirectory
            | K::ConfigInvalid
            | K::Unsupported
            | K::IsSameFile
            | K::RangeNotSatisfied => JobError::Permanent(text),
            _ => JobError::Transient(text),
        }
    }
}

impl From<btp_common::s3mp::S3Error> for JobError {
    fn from(e: btp_common::s3mp::S3Error) -> Self {
        if e.is_transient() {
            JobError::Transient(e.to_string())
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

impl From<btp_common::webdav::WebdavError> for JobError {
    fn from(e: btp_common::webdav::WebdavError) -> Self {
        if e.is_transient() {
            JobError::Transient(e.to_string())
        } else {
            JobError::Permanent(e.to_string())
        }
    }
}

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        match e.kind() {
            K::NotFound | K::PermissionDenied | K::InvalidInput => {
                JobError::Permanent(e.to_string())
            }
            _ => JobError::Transient(e.to_string()),
        }
    }
}

impl From<async_nats::Error> for JobError {
    fn from(e: async_nats::Error) -> Self {
        JobError::Transient(format!("nats: {e}"))
    }
}

/// A short, single-line description of an OpenDAL error (kind and the innermost cause).
fn describe(e: &opendal::Error) -> String {
    let kind = match e.kind() {
        opendal::ErrorKind::NotFound => "not found".to_string(),
        opendal::ErrorKind::PermissionDenied => "permission denied".to_string(),
        other => other.to_string().to_lowercase(),
    };
    let mut source: Option<&dyn std::error::Error> = std::error::Error::source(e);
    let mut cause = None;
    while let Some(s) = source {
        cause = Some(s.to_string());
        source = s.source();
    }
    match cause {
        Some(c) => format!("{kind}: {c}"),
        None => format!("{kind}: {}", e.message()),
    }
}

/// Delay before the next attempt after `delivered` deliveries: doubling from `base`, capped.
pub fn backoff(delivered: i64, base: Duration, cap: Duration) -> Duration {
    let exp = (delivered.max(1) - 1).min(20) as u32;
    base.saturating_mul(2u32.saturating_pow(exp)).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_permanent_and_unexpected_is_transient() {
        let nf = opendal::Error::new(opendal::ErrorKind::NotFound, "gone");
        assert!(!JobError::from(nf).is_transient());
        let un = opendal::Error::new(opendal::ErrorKind::Unexpected, "reset").set_temporary();
        assert!(JobError::from(un).is_transient());
        let pd = opendal::Error::new(opendal::ErrorKind::PermissionDenied, "no");
        assert!(JobError::from(pd)
            .to_string()
            .starts_with("permission denied"));
    }

    #[test]
    fn backoff_doubles_and_is_capped() {
        let b = Duration::from_secs(1);
        let cap = Duration::from_secs(10);
        assert_eq!(backoff(1, b, cap), Duration::from_secs(1));
        assert_eq!(backoff(2, b, cap), Duration::from_secs(2));
        assert_eq!(backoff(4, b, cap), Duration::from_secs(8));
        assert_eq!(backoff(5, b, cap), cap);
        assert_eq!(backoff(1000, b, cap), cap);
    }
}
