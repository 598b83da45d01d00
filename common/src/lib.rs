//! Wire types and shared vocabulary of BeyondTP: endpoints, jobs, results, API messages,
//! NATS subjects, human units and the error kinds callers branch on.

pub mod api;
pub mod checksum;
pub mod endpoint;
pub mod filter;
pub mod s3mp;
pub mod subjects;
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
