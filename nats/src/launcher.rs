//! Spawns a private `nats-server` with JetStream on a free port: standalone mode and tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A running `nats-server` child process. Killed when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store_dir: PathBuf,
    binary: PathBuf,
    options: Options,
}

/// Settings of the launched server beyond the defaults (for tests).
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// Largest message a client may publish (nats-server's default: 1 MiB).
    pub max_payload: Option<usize>,
    /// This server is a node of a cluster.
    pub cluster: Option<ClusterNode>,
}

/// A node of a JetStream cluster of launched servers: its name and its route port, and the
/// route ports of every node (its own included, which nats-server skips).
#[derive(Clone, Debug)]
pub struct ClusterNode {
    pub server_name: String,
    pub route_port: u16,
    pub routes: Vec<u16>,
}

/// The name of the clusters [`start_cluster`] starts.
pub const CLUSTER_NAME: &str = "btp";

/// Starts a JetStream cluster of `nodes` servers on free ports, node `i` with its store in
/// `dir/node-<i>`. JetStream elects its leaders a few seconds after the nodes are up; the
/// server waits for that when it sets up its streams ([`crate::replicas::apply`]).
pub fn start_cluster(dir: &Path, nodes: usize) -> anyhow::Result<Vec<NatsServer>> {
    let routes = (0..nodes)
        .map(|_| free_port())
        .collect::<anyhow::Result<Vec<u16>>>()?;
    (0..nodes)
        .map(|i| {
            let options = Options {
                cluster: Some(ClusterNode {
                    server_name: format!("node-{i}"),
                    route_port: routes[i],
                    routes: routes.clone(),
                }),
                ..Default::default()
            };
            NatsServer::start_with(&dir.join(format!("node-{i}")), None, options)
        })
        .collect()
}

/// The URL list (`nats://a,nats://b,...`) of servers.
pub fn url_list(servers: &[NatsServer]) -> String {
    servers
        .iter()
        .map(NatsServer::url)
        .collect::<Vec<_>>()
        .join(",")
}

/// Finds the `nats-server` binary: `$BTP_NATS_SERVER`, then `PATH`, then `/usr/sbin`.
pub fn find_binary() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("BTP_NATS_SERVER") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
    {
        let candidate = dir.join("nats-server");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!("nats-server not found (install it with `apt-get install nats-server` or set BTP_NATS_SERVER)")
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
    Ok(l.local_addr()?.port())
}

impl NatsServer {
    /// Starts `nats-server -js` on `port` (a free one when `None`) with its store in `store_dir`,
    /// and waits until it accepts connections.
    pub fn start(store_dir: &Path, port: Option<u16>) -> anyhow::Result<Self> {
        Self::start_with(store_dir, port, Options::default())
    }

    /// Like [`NatsServer::start`], with `options`.
    pub fn start_with(
        store_dir: &Path,
        port: Option<u16>,
        options: Options,
    ) -> anyhow::Result<Self> {
        let binary = find_binary()?;
        let port = match port {
            Some(p) => p,
            None => free_port()?,
        };
        std::fs::create_dir_all(store_dir)
            .with_context(|| format!("create NATS store dir {}", store_dir.display()))?;
        let mut server = NatsServer {
            child: None,
            port,
            store_dir: store_dir.to_path_buf(),
            binary,
            options,
        };
        server.spawn()?;
        Ok(server)
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = self.store_dir.join("nats-server.log");
        let mut cmd = Command::new(&self.binary);
        // Only a configuration file sets these.
        let mut conf = String::new();
        if let Some(n) = self.options.max_payload {
            conf.push_str(&format!("max_payload: {n}\n"));
        }
        if let Some(c) = &self.options.cluster {
            let routes = c
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect::<Vec<_>>()
                .join(", ");
            conf.push_str(&format!(
                "server_name: \"{}\"\ncluster {{\n  name: \"{CLUSTER_NAME}\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{routes}]\n}}\n",
                c.server_name, c.route_port
            ));
        }
        if !conf.is_empty() {
            let path = self.store_dir.join("nats-server.conf");
            std::fs::write(&path, conf).with_context(|| format!("write {}", path.display()))?;
            cmd.arg("-c").arg(&path);
        }
        let child = cmd
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.store_dir)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let last = tail.lines().last().unwrap_or("no log").to_string();
                bail!(
                    "nats-server exited ({status}) on port {}: {last}",
                    self.port
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not accept connections on port {} within 15s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Stops the server: SIGTERM and a wait (store flushed), SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server with SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and store (after `stop` or `kill`).
    pub fn restart(&mut self) -> anyhow::Result<()> {
        self.stop();
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
