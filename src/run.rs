//! Long-running commands: standalone, server run, client run, and the one-shot copy.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context as _;
use btp_client::ClientConfig;
use btp_nats::topology::ConsumerSettings;
use btp_server::ServerConfig;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    CheckArgs, ClientOpts, ClientRunArgs, CopyArgs, QueueOpts, ServerRunArgs, StandaloneArgs,
};

/// Resolves when Ctrl-C or SIGTERM arrives.
async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler cannot fail");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn consumer_settings(q: &QueueOpts) -> ConsumerSettings {
    ConsumerSettings {
        ack_wait: q.ack_wait,
        max_deliver: q.max_deliver,
    }
}

fn client_config(url: &str, id: Option<String>, o: &ClientOpts) -> ClientConfig {
    let mut cfg = ClientConfig::new(url, o.workers as usize);
    if let Some(id) = id {
        cfg.id = id;
    }
    cfg.ack_wait = o.queue.ack_wait;
    cfg.max_deliver = o.queue.max_deliver;
    cfg.retry_backoff = o.retry_backoff;
    cfg.max_speed = o.max_speed;
    cfg
}

fn sqlite_url(dir: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(dir).with_context(|| format!("create data dir {}", dir.display()))?;
    let dir = std::path::absolute(dir)?;
    Ok(format!("sqlite://{}", dir.join("btp.db").display()))
}

/// Serves the Prometheus metrics of this process on `addr`.
pub fn install_metrics(addr: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
    use metrics_util::MetricKindMask;
    let Some(addr) = addr else { return Ok(()) };
    PrometheusBuilder::new()
        .with_http_listener(addr)
        // Gauges of a finished task stop being updated; drop them so labels stay bounded.
        .idle_timeout(
            MetricKindMask::GAUGE,
            Some(std::time::Duration::from_secs(30)),
        )
        .set_buckets_for_metric(
            Matcher::Suffix("duration_seconds".into()),
            &[
                0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
            ],
        )?
        .install()
        .with_context(|| format!("serve metrics on {addr}"))?;
    info!(%addr, "serving metrics on /metrics");
    Ok(())
}

pub async fn server(url: &str, a: ServerRunArgs) -> anyhow::Result<ExitCode> {
    install_metrics(a.metrics_addr)?;
    let database_url = match a.database_url {
        Some(u) => u,
        None => sqlite_url(&a.data_dir)?,
    };
    if let Some(path) = &a.secret_key_file {
        btp_server::seal::install(btp_server::seal::Sealer::from_file(path)?);
    }
    let admin_hash = match &a.admin_token_file {
        Some(path) => Some(btp_server::api::token_hash(&admin_token(path)?)),
        None => None,
    };
    let cfg = ServerConfig {
        nats_url: url.to_string(),
        database_url,
        window: a.window.max(1),
        consumer: consumer_settings(&a.queue),
        replicas: a.replicas as usize,
        admin_hash,
        http_addr: a.http_addr,
        http_allowed_hosts: a.http_allowed_hosts,
        console_token: None,
    };
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("stopping the server");
        c.cancel();
    });
    btp_server::run(cfg, cancel).await?;
    Ok(ExitCode::SUCCESS)
}

/// The admin token in `path`; a new one is written there (mode 0600) when the file is missing.
fn admin_token(path: &Path) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(t) if !t.trim().is_empty() => return Ok(t.trim().to_string()),
        Ok(_) => anyhow::bail!("admin token file {} is empty", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("read admin token file {}: {e}", path.display()),
    }
    let token = btp_server::api::new_token();
    btp_common::create_private(path, &format!("{token}\n"))
        .with_context(|| format!("create admin token file {}", path.display()))?;
    info!(path = %path.display(), "admin token created");
    Ok(token)
}

pub async fn client(url: &str, a: ClientRunArgs) -> anyhow::Result<ExitCode> {
    install_metrics(a.metrics_addr)?;
    for t in &a.tenants {
        btp_common::api::check_tenant_name(t)?;
    }
    let mut cfg = client_config(url, a.id, &a.client);
    cfg.tenants = a.tenants;
    for root in &a.fs_roots {
        let real = std::fs::canonicalize(root)
            .with_context(|| format!("--fs-root {}: not a directory", root.display()))?;
        anyhow::ensure!(
            real.is_dir(),
            "--fs-root {}: not a directory",
            root.display()
        );
        cfg.fs_roots.push(real.to_string_lossy().into_owned());
    }
    if let Some(roots) = cfg.fs_roots() {
        info!(roots = ?roots, "file systems only inside --fs-root");
    }
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("stopping the client: finishing in-flight jobs");
        c.cancel();
    });
    btp_client::run(cfg, cancel).await?;
    Ok(ExitCode::SUCCESS)
}

/// The console of a standalone or one-shot cluster: where, under which other names, and the
/// token its API requests need (none: no token).
#[derive(Clone, Debug, Default)]
pub struct Console {
    pub addr: Option<std::net::SocketAddr>,
    pub allowed_hosts: Vec<String>,
    pub token: Option<String>,
}

/// nats-server, server and client on one machine. Stops in order: client (drained), server, NATS.
pub struct Cluster {
    nats: btp_nats::NatsServer,
    server_cancel: CancellationToken,
    client_cancel: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Cluster {
    /// `quick_stop`: the cluster only lives for one task (the one-shot copy), so its client
    /// stops without waiting for a pending pull.
    pub async fn start(
        data_dir: &Path,
        nats_port: Option<u16>,
        client: &ClientOpts,
        console: Console,
        quick_stop: bool,
    ) -> anyhow::Result<Self> {
        if let Some(addr) = console.addr {
            // Refused before anything starts (the server binds it again just after).
            std::net::TcpListener::bind(addr)
                .map_err(|e| anyhow::anyhow!("cannot serve the console on {addr}: {e} (choose another with --http-addr, or off)"))?;
        }
        let database_url = sqlite_url(data_dir)?;
        let nats = btp_nats::NatsServer::start(&data_dir.join("nats"), nats_port)?;
        let url = nats.url();
        let server_cancel = CancellationToken::new();
        let client_cancel = CancellationToken::new();
        let cfg = ServerConfig {
            nats_url: url.clone(),
            database_url,
            window: 512,
            consumer: consumer_settings(&client.queue),
            replicas: 1,
            admin_hash: None,
            http_addr: console.addr,
            http_allowed_hosts: console.allowed_hosts,
            console_token: console.token,
        };
        // The server creates the streams and the consumer before the client looks for them.
        let server = tokio::spawn(btp_server::run(cfg, server_cancel.clone()));
        wait_for_server(&url).await?;
        let mut client_cfg = client_config(&url, None, client);
        client_cfg.quick_stop = quick_stop;
        let client = tokio::spawn(btp_client::run(client_cfg, client_cancel.clone()));
        Ok(Self {
            nats,
            server_cancel,
            client_cancel,
            server,
            client,
        })
    }

    pub fn url(&self) -> String {
        self.nats.url()
    }

    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.client_cancel.cancel();
        let c = self.client.await?;
        self.server_cancel.cancel();
        let s = self.server.await?;
        self.nats.stop();
        c.and(s)
    }
}

/// Waits until the server answers its health check.
async fn wait_for_server(url: &str) -> anyhow::Result<()> {
    let api = btp_nats::ApiClient::connect(url).await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match api
            .call::<_, btp_common::api::Health>(
                btp_common::api::verbs::SERVER_HEALTH,
                &btp_common::api::Empty {},
            )
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) if tokio::time::Instant::now() > deadline => {
                anyhow::bail!("server did not start: {e}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
}

pub async fn standalone(a: StandaloneArgs) -> anyhow::Result<ExitCode> {
    install_metrics(a.metrics_addr)?;
    let token = (!a.http_no_token).then(btp_server::api::new_token);
    let console = Console {
        addr: a.http_addr.0,
        allowed_hosts: a.http_allowed_hosts,
        token: token.clone(),
    };
    let cluster = Cluster::start(&a.data_dir, a.nats_port, &a.client, console, false).await?;
    println!("BeyondTP standalone is running.");
    println!("NATS URL: {}", cluster.url());
    if let Some(addr) = a.http_addr.0 {
        match &token {
            // Like Jupyter: the console keeps the token from its URL.
            Some(t) => println!("Console: http://{addr}/?token={t}"),
            None if addr.ip().is_loopback() => println!(
                "Console: http://{addr}/ (no token: any user or process of this machine can use it)"
            ),
            None => println!(
                "Console: http://{addr}/ (WARNING: reachable from the network without a token)"
            ),
        }
    }
    println!(
        "Use it with other commands: export BTP_NATS_URL={}",
        cluster.url()
    );
    println!("Press Ctrl-C to stop.");
    shutdown_signal().await;
    info!("stopping: client, then server, then nats-server");
    cluster.stop().await?;
    Ok(ExitCode::SUCCESS)
}

pub async fn copy(a: CopyArgs) -> anyhow::Result<ExitCode> {
    let req = crate::task::create_request(&a.src, &a.dst, &a.endpoints, &a.plan, true)?;
    let tmp = tempfile::Builder::new()
        .prefix("btp-copy-")
        .tempdir()
        .context("create a temporary data dir")?;
    let cluster = Cluster::start(tmp.path(), None, &a.client, Console::default(), true).await?;
    let result = crate::task::run_to_end(&cluster.url(), req, a.output.output).await;
    // A signal during the copy stops everything too; in-flight jobs are handed back.
    cluster.stop().await?;
    result
}

/// `btp check`: a temporary cluster for one check task. Any error (bad input, a check that
/// could not run) exits 2, as differences exit 1.
pub async fn check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    match check_run(a).await {
        Ok(code) => Ok(code),
        Err(e) => {
            eprintln!("error: {}", crate::one_line(&e));
            Ok(ExitCode::from(2))
        }
    }
}

async fn check_run(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let req = crate::task::check_request(&a)?;
    let tmp = tempfile::Builder::new()
        .prefix("btp-check-")
        .tempdir()
        .context("create a temporary data dir")?;
    let cluster = Cluster::start(tmp.path(), None, &a.client, Console::default(), true).await?;
    let result = crate::task::check_to_end(&cluster.url(), req, a.output.output).await;
    cluster.stop().await?;
    result
}
