//! `btp`: the BeyondTP command line. Argument parsing and dispatch only; the work is done by the
//! server, client and nats crates.

mod endpoint;
mod output;
mod run;
mod schedule;
mod task;
mod tenant;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "btp",
    version,
    about = "BeyondTP: distributed data migration over NATS JetStream"
)]
struct Cli {
    /// NATS server of the BeyondTP cluster; several nodes of one NATS cluster separated by
    /// commas (`nats://a:4222,nats://b:4222`): the first that answers is used, and a lost
    /// connection moves to another.
    #[arg(
        long,
        global = true,
        env = "BTP_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Log filter (error, warn, info, debug, or a tracing directive).
    #[arg(long, global = true, env = "BTP_LOG")]
    log: Option<String>,
    /// NATS user of this process: a file with the user and the password on two lines (written
    /// by `btp nats config`).
    #[arg(long, global = true, env = "BTP_NATS_CREDS")]
    nats_creds: Option<PathBuf>,
    /// API token, for a server run with --admin-token-file (a tenant's token, or the admin's).
    #[arg(long, global = true, env = "BTP_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run nats-server, the server (SQLite) and one client on this machine, in the foreground.
    Standalone(StandaloneArgs),
    /// The coordinator.
    Server {
        #[command(subcommand)]
        command: ServerCommand,
    },
    /// Clients (agents) that run jobs near the data.
    Client {
        #[command(subcommand)]
        command: ClientCommand,
    },
    /// Create, start and inspect migration tasks.
    Task {
        #[command(subcommand)]
        command: TaskCommand,
    },
    /// One-shot copy: a temporary standalone cluster for one task; exits 0 only if every file was copied.
    Copy(Box<CopyArgs>),
    /// One-shot check that DST holds what SRC holds (a temporary standalone cluster, nothing
    /// written to either side): a verdict per path; exits 0 only if every path is the same, 1
    /// when some differ, are missing or extra, 2 on error.
    Check(Box<CheckArgs>),
    /// Tenants of a server run with --admin-token-file (admin token).
    Tenant {
        #[command(subcommand)]
        command: tenant::TenantCommand,
    },
    /// API tokens of tenants (admin token).
    Token {
        #[command(subcommand)]
        command: tenant::TokenCommand,
    },
    /// Recurring tasks: fired by a cron pattern or an interval, each run an incremental copy.
    Schedule {
        #[command(subcommand)]
        command: schedule::ScheduleCommand,
    },
    /// Named sources and destinations with their credentials (`--src NAME:/path`).
    Endpoint {
        #[command(subcommand)]
        command: endpoint::EndpointCommand,
    },
    /// NATS setup of a multi-tenant cluster.
    Nats {
        #[command(subcommand)]
        command: NatsCommand,
    },
}

#[derive(Subcommand)]
enum NatsCommand {
    /// Write a nats-server configuration with a user for the server and one per tenant, each
    /// tenant allowed only its own subjects, and their credentials files (all mode 0600).
    Config(NatsConfigArgs),
}

#[derive(Args)]
struct NatsConfigArgs {
    /// A tenant (repeatable). Run again with more tenants: existing passwords are kept.
    #[arg(long = "tenant", required = true)]
    tenants: Vec<String>,
    /// Directory for nats-server.conf, server.creds and tenant-NAME.creds.
    #[arg(long)]
    dir: PathBuf,
    /// Address nats-server listens on.
    #[arg(long, default_value = "0.0.0.0:4222")]
    listen: String,
    /// JetStream store directory.
    #[arg(long, default_value = "/var/lib/nats/jetstream")]
    store_dir: PathBuf,
    /// Write the configuration of each node of a JetStream cluster of N nodes (at least 3):
    /// DIR/node-1/nats-server.conf, ... with the same users.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(1..=32))]
    cluster: Option<u8>,
    /// The host of each node, as the other nodes reach it (in order; one per node, repeatable
    /// or comma-separated). Default: nats-1, nats-2, ... (the compose service names).
    #[arg(
        long = "node-host",
        value_name = "HOST",
        value_delimiter = ',',
        requires = "cluster"
    )]
    node_hosts: Vec<String>,
    /// Port the nodes route to each other on.
    #[arg(long, default_value_t = 6222, requires = "cluster")]
    route_port: u16,
}

#[derive(Args, Clone)]
pub struct StandaloneArgs {
    /// Directory for the database and the NATS store.
    #[arg(long, env = "BTP_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Port of the embedded nats-server (a free one by default).
    #[arg(long)]
    pub nats_port: Option<u16>,
    /// Serve Prometheus metrics of the server and the client on this address.
    #[arg(long, env = "BTP_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Serve the web console and the HTTP API on this address, or `off`. Each run makes a
    /// console token, printed with the console's URL; keep it on localhost (the default)
    /// unless the network is trusted.
    #[arg(long, env = "BTP_HTTP_ADDR", default_value = "127.0.0.1:8470", value_parser = parse_http_addr)]
    pub http_addr: HttpAddr,
    /// Another name the console is reached by (a `Host` header it accepts: `NAME` for any port,
    /// `NAME:PORT` for one); repeatable. Other names are refused (DNS rebinding).
    #[arg(long = "http-allowed-host", value_name = "NAME")]
    pub http_allowed_hosts: Vec<String>,
    /// Serve the console without a token (a trusted host only: any local user or process can
    /// then use the API as the admin).
    #[arg(long)]
    pub http_no_token: bool,
    #[command(flatten)]
    pub client: ClientOpts,
}

/// An address to serve HTTP on, or none (`off`).
#[derive(Clone, Copy, Debug)]
pub struct HttpAddr(pub Option<std::net::SocketAddr>);

fn parse_http_addr(s: &str) -> Result<HttpAddr, String> {
    if s == "off" {
        return Ok(HttpAddr(None));
    }
    s.parse().map(|a| HttpAddr(Some(a))).map_err(|_| {
        format!("invalid address '{s}': expected IP:PORT such as 127.0.0.1:8470, or off")
    })
}

#[derive(Subcommand)]
enum ServerCommand {
    /// Run the server against a nats-server.
    Run(Box<ServerRunArgs>),
    /// Ask the server for its version, database and load.
    Health(OutputOpts),
}

#[derive(Args, Clone)]
pub struct ServerRunArgs {
    /// Directory of the SQLite database (btp.db), when no --database-url is given.
    #[arg(long, env = "BTP_DATA_DIR", default_value = "./btp-data")]
    pub data_dir: PathBuf,
    /// Database URL (sqlite://PATH); overrides --data-dir.
    #[arg(long, env = "BTP_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9464).
    #[arg(long, env = "BTP_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// Most in-flight jobs per task.
    #[arg(long, env = "BTP_WINDOW", default_value_t = 512)]
    pub window: i64,
    /// Require API tokens: this file holds the admin token (created, mode 0600, when missing).
    /// Tenants and their tokens are then managed with `btp tenant` and `btp token`.
    #[arg(long, env = "BTP_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve the API as JSON over HTTP here too (POST /api/v1/<verb>, `Authorization: Bearer`).
    #[arg(long, env = "BTP_HTTP_ADDR")]
    pub http_addr: Option<std::net::SocketAddr>,
    /// Another name the HTTP API is reached by (a `Host` header it accepts: `NAME` for any
    /// port, `NAME:PORT` for one); repeatable, or comma-separated in the environment. Other
    /// names are refused (DNS rebinding).
    #[arg(
        long = "http-allowed-host",
        value_name = "NAME",
        env = "BTP_HTTP_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub http_allowed_hosts: Vec<String>,
    /// Seal endpoint secrets in the store with the key in this file (64 hex digits; created,
    /// mode 0600, when missing). Keep it: stored tasks cannot be run without it.
    #[arg(long, env = "BTP_SECRET_KEY_FILE")]
    pub secret_key_file: Option<PathBuf>,
    /// Replicas of the JetStream streams and consumers: 3 on a 3-node NATS cluster (at most
    /// its number of nodes, 5 at most). Existing streams and consumers are changed to it at
    /// start.
    #[arg(long, env = "BTP_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    #[command(flatten)]
    pub queue: QueueOpts,
}

/// Settings of the jobs consumer (shared by server and clients).
#[derive(Args, Clone)]
pub struct QueueOpts {
    /// A job not acked within this time goes to another worker (running jobs send progress acks).
    #[arg(long, env = "BTP_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries of a job before JetStream gives up on it; the server then fails its files
    /// ("worker crashed N times on this job"). Workers report transient errors as failures at
    /// this delivery. Keep it above the largest --max-attempts (50). Applies to job consumers
    /// created from now on.
    #[arg(long, env = "BTP_MAX_DELIVER", default_value_t = 64, value_parser = clap::value_parser!(i64).range(2..))]
    pub max_deliver: i64,
}

#[derive(Subcommand)]
pub enum ClientCommand {
    /// Run a client against a nats-server.
    Run(ClientRunArgs),
    /// List the clients known to the server.
    List(OutputOpts),
    /// Show one client.
    Get(ClientIdArgs),
    /// Ask a client to take no new jobs (in-flight jobs finish).
    Drain(ClientIdArgs),
}

#[derive(Args, Clone)]
pub struct ClientIdArgs {
    /// Client id.
    pub id: String,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args, Clone)]
pub struct ClientRunArgs {
    /// Client id (default: host name and a random suffix).
    #[arg(long, env = "BTP_CLIENT_ID")]
    pub id: Option<String>,
    /// The tenant whose jobs this client runs; repeat it for a client shared by several
    /// tenants (their queues are pulled in turn).
    #[arg(long = "tenant", env = "BTP_TENANT", value_delimiter = ',', default_value = btp_common::DEFAULT_TENANT)]
    pub tenants: Vec<String>,
    /// Touch file systems only inside this directory (repeatable): jobs with an fs source or
    /// destination outside every root are refused before any file-system access. Without it a
    /// client of one tenant may touch every path, a client shared by several tenants none.
    #[arg(long = "fs-root", env = "BTP_FS_ROOT", value_delimiter = ',')]
    pub fs_roots: Vec<std::path::PathBuf>,
    /// Serve Prometheus metrics on this address (e.g. 127.0.0.1:9465).
    #[arg(long, env = "BTP_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub client: ClientOpts,
}

#[derive(Args, Clone)]
pub struct ClientOpts {
    /// Jobs run concurrently.
    #[arg(long, env = "BTP_WORKERS", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub workers: u32,
    /// First retry delay of a job that failed transiently (doubles per attempt).
    #[arg(long, env = "BTP_RETRY_BACKOFF", default_value = "1s", value_parser = parse_duration)]
    pub retry_backoff: Duration,
    /// Client-wide speed limit shared by all workers, e.g. 100MiB/s.
    #[arg(long, env = "BTP_MAX_SPEED", value_parser = parse_rate)]
    pub max_speed: Option<u64>,
    #[command(flatten)]
    pub queue: QueueOpts,
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// Create a task (and start it with --start).
    Create(Box<task::CreateArgs>),
    /// Start a created task.
    Start(IdArgs),
    /// Show a task.
    Get(IdArgs),
    /// List tasks, newest first.
    List(ListArgs),
    /// Print a task's report (--failed: only the failed files, with reasons).
    Report(ReportArgs),
    /// List every file a task copied or found up to date (`--output csv`: path,size; `json`:
    /// one object per line). Failed files are in `report --failed`.
    Files(IdArgs),
    /// Stop publishing a running task's jobs; in-flight jobs finish.
    Pause(IdArgs),
    /// Resume a paused task where it stopped.
    Resume(IdArgs),
    /// Cancel a task: queued jobs are dropped, in-flight copies aborted.
    Cancel(IdArgs),
    /// Run only the failed files of a finished task again; for a check task, create (and
    /// start) a copy task of exactly its differing and missing paths.
    Retry(IdArgs),
    /// Check a finished task's source against its destination with that task's filters: a
    /// new check task (see `btp check`), started at once.
    Verify(VerifyArgs),
    /// Change a task's settings while it runs (the speed limit applies within seconds).
    Set(SetArgs),
    /// Delete a task that is not running (with its report).
    Delete(IdArgs),
    /// Follow a task with a progress bar until it finishes.
    Watch(IdArgs),
}

#[derive(Args, Clone)]
pub struct IdArgs {
    /// Task id.
    pub id: String,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args, Clone)]
pub struct VerifyArgs {
    /// Task id.
    pub id: String,
    /// Compare contents too (MD5; plain ETags where both sides have them, else read and hashed).
    #[arg(long)]
    pub checksum: bool,
    /// Only check that the source's files are at the destination (no `extra` verdicts).
    #[arg(long)]
    pub one_way: bool,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args, Clone)]
pub struct SetArgs {
    /// Task id.
    pub id: String,
    /// New speed limit for the whole task, e.g. 50MiB/s, a timetable such as
    /// '08:00,20MiB/s 18:00,off' (UTC; replaces the one in force), or `none`.
    #[arg(long, value_parser = parse_limit)]
    pub speed_limit: Limit,
    #[command(flatten)]
    pub output: OutputOpts,
}

/// A speed limit argument: a rate, a timetable, or `none`.
#[derive(Clone)]
pub struct Limit(pub Option<btp_common::api::SpeedLimit>);

fn parse_limit(s: &str) -> Result<Limit, String> {
    if s.eq_ignore_ascii_case("none") {
        Ok(Limit(None))
    } else {
        btp_common::api::SpeedLimit::parse(s).map(|r| Limit(Some(r)))
    }
}

#[derive(Args, Clone)]
pub struct ListArgs {
    /// Only tasks in this state.
    #[arg(long, value_parser = ["created", "running", "paused", "completed", "failed", "cancelled"])]
    pub state: Option<String>,
    /// Most tasks to show.
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Tasks to skip (paging).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args, Clone)]
pub struct ReportArgs {
    /// Task id.
    pub id: String,
    /// Print only the failed files with their reasons and attempts.
    #[arg(long)]
    pub failed: bool,
    /// Check tasks: print every path that is not the same (verdict, what differs, size), all
    /// pages.
    #[arg(long, conflicts_with = "failed")]
    pub differences: bool,
    /// Most failed files to include.
    #[arg(long, default_value_t = 1000)]
    pub limit: u32,
    /// Failed files to skip (paging; `--after` pages faster).
    #[arg(long, default_value_t = 0)]
    pub offset: u64,
    /// Start after the page whose `next` this is (the cursor of `--output json`).
    #[arg(long, conflicts_with = "offset")]
    pub after: Option<String>,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args, Clone, Copy)]
pub struct OutputOpts {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
    Csv,
}

#[derive(Args, Clone)]
pub struct CopyArgs {
    /// Source (fs:///path or a path).
    pub src: String,
    /// Destination (fs:///path or a path).
    pub dst: String,
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(flatten)]
    pub endpoints: task::EndpointOpts,
    #[command(flatten)]
    pub plan: task::PlanOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

#[derive(Args, Clone)]
pub struct CheckArgs {
    /// Source (fs:///path, a path, or any endpoint URL).
    pub src: String,
    /// Destination (fs:///path, a path, or any endpoint URL).
    pub dst: String,
    /// Compare contents too (MD5): ETags where both sides have a plain MD5 one, otherwise the
    /// files are read and hashed by the workers. Without it, size and modification time.
    #[arg(long)]
    pub checksum: bool,
    /// Only check that the source's files are at the destination (no `extra` verdicts).
    #[arg(long)]
    pub one_way: bool,
    /// Check only files matching this glob; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub include: Vec<String>,
    /// Leave out files matching this glob; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Leave out files smaller than this, e.g. 1KiB.
    #[arg(long)]
    pub min_size: Option<String>,
    /// Leave out files larger than this, e.g. 10GiB.
    #[arg(long)]
    pub max_size: Option<String>,
    /// Symbolic links of a file-system source: `copy` compares them as links, `follow`
    /// compares what they point to, `skip` leaves them out.
    #[arg(long, default_value = "copy", value_parser = ["copy", "follow", "skip"])]
    pub links: String,
    /// Speed limit for the reads of the hashing, over all clients, e.g. 50MiB/s.
    #[arg(long, value_parser = btp_common::api::SpeedLimit::parse)]
    pub speed_limit: Option<btp_common::api::SpeedLimit>,
    /// Most files in one Hash job.
    #[arg(long, default_value_t = btp_common::api::TaskOptions::default().batch_files)]
    pub batch_files: u32,
    /// Most entries in one listing page.
    #[arg(long, default_value_t = btp_common::api::TaskOptions::default().list_page_entries)]
    pub list_page_entries: u32,
    #[command(flatten)]
    pub client: ClientOpts,
    #[command(flatten)]
    pub endpoints: task::EndpointOpts,
    #[command(flatten)]
    pub output: OutputOpts,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    btp_common::units::parse_rate(s)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration '{s}': {e}"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_level = match cli.command {
        Command::Standalone(_)
        | Command::Server {
            command: ServerCommand::Run(_),
        }
        | Command::Client {
            command: ClientCommand::Run(_),
        } => "info",
        _ => "warn",
    };
    let filter = cli
        .log
        .clone()
        .unwrap_or_else(|| format!("{default_level},async_nats=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error chain on one line: `outer: inner: innermost`, without repeats.
fn one_line(e: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in e.chain() {
        let s = cause.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
    }
    parts.join(": ").replace('\n', " ")
}

async fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    let url = cli.nats_url;
    if let Some(t) = cli.token {
        btp_nats::api_client::set_token(t);
    }
    if let Some(path) = &cli.nats_creds {
        btp_nats::set_credentials(btp_nats::auth::Credentials::read(path)?);
    }
    match cli.command {
        Command::Standalone(a) => run::standalone(a).await,
        Command::Server {
            command: ServerCommand::Run(a),
        } => run::server(&url, *a).await,
        Command::Client {
            command: ClientCommand::Run(a),
        } => run::client(&url, a).await,
        Command::Client { command } => task::client(&url, command).await,
        Command::Server {
            command: ServerCommand::Health(o),
        } => task::health(&url, o).await,
        Command::Task { command } => task::dispatch(&url, command).await,
        Command::Copy(a) => run::copy(*a).await,
        Command::Check(a) => run::check(*a).await,
        Command::Tenant { command } => tenant::tenant(&url, command).await,
        Command::Token { command } => tenant::token(&url, command).await,
        Command::Endpoint { command } => endpoint::endpoint(&url, command).await,
        Command::Schedule { command } => schedule::schedule(&url, command).await,
        Command::Nats {
            command: NatsCommand::Config(a),
        } => {
            let spec = btp_nats::auth::ConfigSpec {
                dir: &a.dir,
                listen: &a.listen,
                store_dir: &a.store_dir,
                tenants: &a.tenants,
            };
            match a.cluster {
                None => {
                    let path = btp_nats::auth::write_config(&spec)?;
                    println!("wrote {}", path.display());
                }
                Some(n) => {
                    let n = n as usize;
                    let hosts: Vec<String> = if a.node_hosts.is_empty() {
                        (1..=n).map(|i| format!("nats-{i}")).collect()
                    } else {
                        a.node_hosts.clone()
                    };
                    anyhow::ensure!(
                        hosts.len() == n,
                        "--node-host: {} hosts for --cluster {n}; give one per node",
                        hosts.len()
                    );
                    let cluster = btp_nats::auth::ClusterSpec {
                        hosts: &hosts,
                        route_port: a.route_port,
                    };
                    for (path, host) in btp_nats::auth::write_cluster_config(&spec, &cluster)?
                        .iter()
                        .zip(&hosts)
                    {
                        println!("wrote {} (node on {host})", path.display());
                    }
                    let port = a.listen.rsplit(':').next().unwrap_or("4222");
                    let urls: Vec<String> =
                        hosts.iter().map(|h| format!("nats://{h}:{port}")).collect();
                    println!("--nats-url {}", urls.join(","));
                }
            }
            println!(
                "server: --nats-creds {}",
                a.dir.join("server.creds").display()
            );
            for t in &a.tenants {
                let user = btp_nats::auth::tenant_user(t);
                println!(
                    "tenant {t}: --tenant {t} --nats-creds {}",
                    a.dir.join(format!("{user}.creds")).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
