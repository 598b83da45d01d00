//! NATS for BeyondTP: the JetStream topology (streams and consumers, created idempotently), a
//! connection helper with clear errors, and a launcher for a private `nats-server` used by
//! standalone mode and by the tests.

pub mod api_client;
pub mod auth;
pub mod launcher;
pub mod replicas;
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

/// The servers of a `--nats-url` value: one URL or several, comma-separated (nodes of one
/// cluster). An empty entry or an address that is not a NATS URL is refused, naming it.
pub fn server_addrs(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    let mut addrs = Vec::new();
    for part in urls.split(',') {
        let part = part.trim();
        if part.is_empty() {
            anyhow::bail!(
                "invalid NATS URL list '{urls}': an empty entry (separate URLs with one comma)"
            );
        }
        let addr = part
            .parse::<async_nats::ServerAddr>()
            .map_err(|e| anyhow::anyhow!("invalid NATS URL '{part}': {e}"))?;
        addrs.push(addr);
    }
    Ok(addrs)
}

/// Connects to NATS, failing fast with a message that names the URL when nothing answers.
/// `url` may list several servers of one cluster, comma-separated: the first that answers is
/// used, and once connected the client reconnects forever to any of them (and to the other
/// nodes the cluster announces), so a restarted or lost node is survived.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    let addrs = server_addrs(url)?;
    let mut opts = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .max_reconnects(None);
    if let Some(c) = CREDENTIALS.get() {
        opts = opts
            .user_and_password(c.user.clone(), c.password.clone())
            .custom_inbox_prefix(c.inbox_prefix());
    }
    // Each server of the list gets its connection timeout on the first attempt.
    let budget = Duration::from_secs(1 + 6 * addrs.len() as u64);
    match tokio::time::timeout(budget, opts.connect(addrs)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(anyhow::anyhow!("cannot connect to NATS at {url}: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "cannot connect to NATS at {url}: timed out"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_is_split_and_checked() {
        let a =
            server_addrs("nats://127.0.0.1:4222, nats://127.0.0.1:4223,127.0.0.1:4224").unwrap();
        assert_eq!(a.len(), 3);
        assert_eq!(a[1].port(), 4223);
        let e = server_addrs("nats://a:1,,nats://b:2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("empty entry"), "{e}");
        let e = server_addrs("nats://a:1,http://b:2")
            .unwrap_err()
            .to_string();
        assert!(e.contains("'http://b:2'"), "{e}");
    }
}
