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
        if io_cause(&e).is_some_and(is_full) {
            return destination_full(&text);
        }
        if io_cause(&e).is_some_and(io_is_permanent) {
            return JobError::Permanent(text);
        }
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

/// The errors of the storage clients of btp-common (S3, Azure Blob, GCS, WebDAV) say themselves
/// whether they are worth retrying: 408, 429, 5xx and no answer are transient; the rest (401,
/// 403, a missing container or object) permanent.
macro_rules! classified_by_their_kind {
    ($($t:ty),*) => {$(
        impl From<$t> for JobError {
            fn from(e: $t) -> Self {
                if e.is_transient() {
                    JobError::Transient(e.to_string())
                } else {
                    JobError::Permanent(e.to_string())
                }
            }
        }
    )*};
}

classified_by_their_kind!(
    btp_common::s3mp::S3Error,
    btp_common::azblob::AzureError,
    btp_common::gcs::GcsError,
    btp_common::webdav::WebdavError
);

impl From<std::io::Error> for JobError {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        if is_full(&e) {
            return destination_full(&e.to_string());
        }
        match e.kind() {
            _ if io_is_permanent(&e) => JobError::Permanent(e.to_string()),
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

/// True for the errors of a full destination: no space left (`ENOSPC`), or the user's quota
/// used up (`EDQUOT`).
pub(crate) fn is_full(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// The error of a write to a full destination; `what` names the file (its destination path).
///
/// Transient, so the file gets the task's normal attempts with their backoff and fails with
/// this reason after the last one. Not permanent: space often comes back within a task (a
/// large file that failed takes its temporary file away, parallel small files then fit) or is
/// freed by an operator during the backoff. Not retried at once either: a full disk does not
/// heal in seconds, and the remaining attempts are few (`btp task retry` runs the failed files
/// again once space was made).
pub(crate) fn destination_full(what: &str) -> JobError {
    JobError::Transient(format!("destination is full: {what}"))
}

/// The I/O error of `op` on `path` as one line naming the kind, the operation and the file;
/// permanent for what retrying cannot fix; a full destination as [`destination_full`].
pub(crate) fn io_error(op: &str, path: &str, e: std::io::Error) -> JobError {
    use std::io::ErrorKind as K;
    if is_full(&e) {
        return destination_full(path);
    }
    let kind = match e.kind() {
        K::NotFound => "not found".to_string(),
        K::PermissionDenied => "permission denied".to_string(),
        other => other.to_string().to_lowercase(),
    };
    let text = format!("{kind}: {op} {path}: {e}");
    if io_is_permanent(&e) {
        return JobError::Permanent(text);
    }
    JobError::Transient(text)
}

/// I/O errors that no retry can fix: a missing or forbidden path, or the shape of the tree in
/// the way (a file where a directory must be, a directory where a file must be, a name too
/// long, a link loop).
fn io_is_permanent(e: &std::io::Error) -> bool {
    use std::io::ErrorKind as K;
    matches!(
        e.kind(),
        K::NotFound
            | K::PermissionDenied
            | K::InvalidInput
            | K::AlreadyExists
            | K::NotADirectory
            | K::IsADirectory
            | K::DirectoryNotEmpty
            | K::InvalidFilename
    ) || matches!(
        e.raw_os_error(),
        Some(libc::ENOTDIR | libc::EISDIR | libc::EEXIST | libc::ELOOP | libc::ENAMETOOLONG)
    )
}

/// The I/O error at the bottom of an OpenDAL error, if there is one.
fn io_cause(e: &opendal::Error) -> Option<&std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
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
    fn a_full_destination_is_named_as_such_wherever_it_comes_from() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = io_error(
                "write",
                "/dst/a/f.bin",
                std::io::Error::from_raw_os_error(errno),
            );
            assert!(e.is_transient(), "{e}");
            assert_eq!(e.to_string(), "destination is full: /dst/a/f.bin");
        }
        let e = JobError::from(std::io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(e.to_string().starts_with("destination is full: "), "{e}");
        let dal = opendal::Error::new(opendal::ErrorKind::Unexpected, "write")
            .set_source(std::io::Error::from_raw_os_error(libc::ENOSPC));
        let e = JobError::from(dal);
        assert!(e.to_string().starts_with("destination is full: "), "{e}");
        assert!(e.is_transient());
        // Other errors keep their kinds.
        let nf = io_error("read", "a/f", std::io::ErrorKind::NotFound.into());
        assert!(!nf.is_transient());
        assert!(nf.to_string().starts_with("not found: read a/f"), "{nf}");
    }

    #[test]
    fn s3_error_documents_map_to_transient_or_permanent_by_their_code() {
        use btp_common::s3mp::S3Error;
        let doc = |code: &str| {
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>x</Message><Key>a &#34;b&#34; &amp; c</Key><RequestId>r</RequestId></Error>"
            )
        };
        for code in [
            "SlowDown",
            "InternalError",
            "ServiceUnavailable",
            "RequestTimeout",
        ] {
            // RequestTimeout comes with a 400, an InternalError may come inside a 200: the
            // code decides, not the status.
            for status in [400, 500, 503] {
                let e = JobError::from(S3Error::from_answer(status, doc(code).as_bytes()));
                assert!(e.is_transient(), "{code} {status}: {e}");
            }
        }
        for code in [
            "AccessDenied",
            "NoSuchBucket",
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
        ] {
            for status in [403, 404, 500] {
                let e = JobError::from(S3Error::from_answer(status, doc(code).as_bytes()));
                assert!(!e.is_transient(), "{code} {status}: {e}");
                assert!(e.to_string().contains(code), "{e}");
            }
        }
        // An answer without an error document: the status decides.
        assert!(JobError::from(S3Error::from_answer(503, b"")).is_transient());
        assert!(!JobError::from(S3Error::from_answer(403, b"")).is_transient());
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
