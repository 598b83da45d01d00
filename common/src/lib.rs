//! Wire types and shared vocabulary of BeyondTP: endpoints, jobs, results, API messages,
//! NATS subjects, human units and the error kinds callers branch on.

pub mod api;
pub mod azblob;
pub mod checksum;
pub mod confine;
pub mod csv;
pub mod endpoint;
pub mod filter;
pub mod gcs;
pub mod manifest;
pub mod paths;
pub mod rest;
pub mod s3copy;
pub mod s3mp;
pub mod s3xml;
pub mod sftp;
pub mod subjects;
pub mod timetable;
pub mod units;
pub mod webdav;
pub mod wire;

pub use endpoint::Endpoint;

/// Version of every JSON message on NATS. A message with another version is refused.
pub const WIRE_VERSION: u32 = 1;

/// The tenant used until multi-tenancy exists.
pub const DEFAULT_TENANT: &str = "default";

/// Milliseconds since the Unix epoch, the one timestamp format on the wire and in the store.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Creates `path` with `text`, readable by its owner only (0600), and syncs it; fails when the
/// file exists. For keys and tokens a server creates on its first start.
pub fn create_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}
