//! The BeyondTP client: runs near the data, registers with heartbeats, pulls its tenant's jobs
//! from a durable consumer shared with the other clients, and runs them on a pool of workers.

pub mod agent;
mod azblob;
mod check;
mod dstpath;
pub mod errors;
pub mod exec;
mod fswrite;
mod gcs;
mod keep;
pub mod limiter;
mod local;
mod manifest;
pub mod parts;
mod prune;
mod s3copy;
mod sftp;
pub mod telemetry;
pub mod worker;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

#[derive(Clone, Debug)]
pub struct ClientConfig {
    pub nats_url: String,
    pub id: String,
    pub host: String,
    /// The tenants whose jobs this client runs (at least one); their work queues are pulled in
    /// turn, so one tenant's backlog does not hold another's jobs back.
    pub tenants: Vec<String>,
    pub workers: usize,
    pub ack_wait: Duration,
    /// MaxDeliver of job consumers this client creates (the server normally creates them).
    pub max_deliver: i64,
    pub retry_backoff: Duration,
    pub retry_backoff_max: Duration,
    /// How long a stopping client lets in-flight jobs finish before handing them back.
    pub drain_grace: Duration,
    /// Client-wide cap on bytes copied per second, shared by all workers.
    pub max_speed: Option<u64>,
    /// On stop, abandon a pull that is still waiting instead of letting it expire (up to
    /// 500 ms). A job delivered to it meanwhile waits for the ack wait before it is delivered
    /// again, so only a client whose work is known to be done (the one-shot copy) sets it.
    pub quick_stop: bool,
    /// `--fs-root` directories (canonical paths): file-system paths outside them are refused.
    /// Empty: a single-tenant client may touch every path, a shared client none.
    pub fs_roots: Vec<String>,
}

impl ClientConfig {
    pub fn new(nats_url: &str, workers: usize) -> Self {
        let host = hostname();
        let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
        Self {
            nats_url: nats_url.to_string(),
            id: format!("{host}-{suffix}"),
            host,
            tenants: vec![btp_common::DEFAULT_TENANT.to_string()],
            workers,
            ack_wait: Duration::from_secs(30),
            max_deliver: btp_nats::topology::ConsumerSettings::default().max_deliver,
            retry_backoff: Duration::from_secs(1),
            retry_backoff_max: Duration::from_secs(60),
            drain_grace: Duration::from_secs(30),
            quick_stop: false,
            max_speed: None,
            fs_roots: Vec::new(),
        }
    }

    /// The file-system roots this client is confined to; `None` when it is not confined (a
    /// single-tenant client without `--fs-root`). A client shared by several tenants without
    /// `--fs-root` touches no file system at all, so no tenant reaches what the client's host
    /// or another tenant keeps.
    pub fn fs_roots(&self) -> Option<Vec<String>> {
        if self.fs_roots.is_empty() && self.tenants.len() <= 1 {
            None
        } else {
            Some(self.fs_roots.clone())
        }
    }

    /// Refuses a job whose fs source or destination is outside this client's roots, before
    /// anything touches a file system. A path inside a root lexically is also checked with
    /// its symbolic links resolved (the nearest existing ancestor), so a link inside a root
    /// does not lead out of it.
    pub fn check_fs_paths(&self, job: &btp_common::wire::Job) -> Result<(), String> {
        let Some(roots) = self.fs_roots() else {
            return Ok(());
        };
        // A manifest on a file system is read by the job too: the file itself is checked.
        let manifest = match &job.kind {
            btp_common::wire::JobKind::List {
                manifest: Some(m), ..
            } => match &m.endpoint {
                btp_common::Endpoint::Fs { root } => Some(btp_common::Endpoint::Fs {
                    root: std::path::Path::new(root)
                        .join(&m.name)
                        .to_string_lossy()
                        .into_owned(),
                }),
                _ => None,
            },
            _ => None,
        };
        for ep in [Some(&job.src), Some(&job.dst), manifest.as_ref()]
            .into_iter()
            .flatten()
        {
            let btp_common::Endpoint::Fs { root } = ep else {
                continue;
            };
            let outside = || format!("{}: {root}", btp_common::confine::OUTSIDE);
            if !btp_common::confine::allowed(Some(&roots), root) {
                return Err(outside());
            }
            let mut p = std::path::Path::new(root);
            let real = loop {
                if let Ok(real) = std::fs::canonicalize(p) {
                    break real;
                }
                match p.parent() {
                    Some(up) => p = up,
                    None => return Err(outside()),
                }
            };
            if !btp_common::confine::allowed(Some(&roots), &real.to_string_lossy()) {
                return Err(outside());
            }
        }
        Ok(())
    }
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// Runs the client until `cancel` fires; in-flight jobs are drained before it returns.
pub async fn run(cfg: ClientConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    let nats = btp_nats::connect(&cfg.nats_url, &format!("btp-client {}", cfg.id)).await?;
    let js = async_nats::jetstream::new(nats.clone());
    let settings = btp_nats::topology::ConsumerSettings {
        ack_wait: cfg.ack_wait,
        max_deliver: cfg.max_deliver,
    };
    let mut consumers = Vec::with_capacity(cfg.tenants.len());
    for tenant in &cfg.tenants {
        consumers.push(btp_nats::topology::jobs_consumer(&js, tenant, &settings).await?);
    }
    let stats = Arc::new(worker::Stats::default());
    info!(client = %cfg.id, workers = cfg.workers, nats = %cfg.nats_url, "client started");

    telemetry::describe();
    metrics::gauge!(telemetry::WORKERS).set(cfg.workers as f64);
    metrics::gauge!(telemetry::WORKERS_BUSY).set(0.0);
    let hb_cancel = CancellationToken::new();
    let tokens = Arc::new(worker::TaskTokens::default());
    let hb = tokio::spawn(agent::run(
        cfg.clone(),
        nats.clone(),
        stats.clone(),
        tokens.clone(),
        btp_common::now_ms(),
        hb_cancel.clone(),
    ));
    let controls: Vec<_> = cfg
        .tenants
        .iter()
        .map(|tenant| {
            tokio::spawn(worker::control(
                nats.clone(),
                tenant.clone(),
                tokens.clone(),
                cfg.id.clone(),
                hb_cancel.clone(),
            ))
        })
        .collect();
    let result = worker::run(cfg.clone(), js, consumers, stats, tokens, cancel).await;
    hb_cancel.cancel();
    for c in controls {
        let _ = c.await;
    }
    let _ = hb.await;
    info!(client = %cfg.id, "client stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_client_without_fs_root_touches_no_file_system() {
        let mut cfg = ClientConfig::new("nats://x", 1);
        assert_eq!(cfg.fs_roots(), None, "one tenant: not confined");
        cfg.tenants = vec!["a".into(), "b".into()];
        assert_eq!(cfg.fs_roots(), Some(vec![]), "shared: nothing");
        let job = |src: &str| btp_common::wire::Job {
            v: btp_common::WIRE_VERSION,
            id: "t.0".into(),
            tenant: "a".into(),
            task: "t".into(),
            src: btp_common::Endpoint::parse(src).unwrap(),
            dst: btp_common::Endpoint::parse("/tmp").unwrap(),
            attempt: 1,
            max_attempts: 3,
            speed_share: None,
            server_side_copy: Default::default(),
            preserve_owner: false,
            compare: Default::default(),
            verify: Default::default(),
            dry_run: false,
            kind: btp_common::wire::JobKind::Copy { files: vec![] },
        };
        let e = cfg.check_fs_paths(&job("/etc")).unwrap_err();
        assert!(e.starts_with(btp_common::confine::OUTSIDE), "{e}");
        cfg.fs_roots = vec!["/tmp".into(), "/etc".into()];
        assert!(cfg.check_fs_paths(&job("/etc")).is_ok());
        assert!(cfg.check_fs_paths(&job("/usr")).is_err());
    }
}
