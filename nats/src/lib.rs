//! NATS for BeyondTP: the JetStream topology (streams and consumers, created idempotently), a
//! connection helper with clear errors, and a launcher for a private `nats-server` used by
//! standalone mode and by the tests.

pub mod api_client;
pub mod auth;
pub mod launcher;
pub mod topology;

pub use api_client::{ApiClient, CallError};
pub use launcher::NatsServer;

use std::time::Duration;

/// The NATS user of this process's connections (`--nats-creds`).
static CREDENTIALS: std::sync::OnceLock<auth::Credentials> = std::sync::OnceLock::new();

/// Sets the NATS credentials of every later connection of this process; the first call wins.
pub fn set_credentials(c: auth::Credentials) {
    let _ = CREDENTIALS.set(c);
}

/// Connects to NATS, failing fast with a message that names the URL when nothing answers.
/// Once connected, the client reconnects forever (a restarted nats-server is picked up again).
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None);
    if let Some(c) = CREDENTIALS.get() {
        opts = opts
            .user_and_password(c.user.clone(), c.password.clone())
            .custom_inbox_prefix(c.inbox_prefix());
    }
    match tokio::time::timeout(Duration::from_secs(6), opts.connect(url)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot connect to NATS at {url}: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to NATS at {url}: timed out"
        )),
    }
}
