//! NATS users for a multi-tenant cluster: a generated `nats-server` configuration with one user
//! for the server (everything) and one per tenant, allowed only that tenant's subjects: pulling
//! and acking its jobs consumer, publishing its results and heartbeats, its control and event
//! subjects, the request API, and replies to its own inbox prefix. Credentials files hold a user
//! name and a password, one per line.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use btp_common::subjects;

/// The NATS user of the server.
pub const SERVER_USER: &str = "btp-server";

/// A NATS user name and password.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Credentials {{ user: {:?}, password: \"***\" }}",
            self.user
        )
    }
}

impl Credentials {
    /// Reads a credentials file: the user on the first line, the password on the second.
    pub fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("read NATS credentials {}", path.display()))?;
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        match (lines.next(), lines.next()) {
            (Some(user), Some(password)) => Ok(Credentials {
                user: user.to_string(),
                password: password.to_string(),
            }),
            _ => bail!(
                "NATS credentials {}: expected a user and a password on two lines",
                path.display()
            ),
        }
    }

    /// The inbox prefix of this user's connections.
    pub fn inbox_prefix(&self) -> String {
        inbox_prefix(&self.user)
    }
}

/// The inbox prefix of `user`: replies to its requests (API answers, pulled jobs, publish acks)
/// go to subjects only that user may subscribe to.
pub fn inbox_prefix(user: &str) -> String {
    format!("_INBOX.{user}")
}

/// The NATS user of a tenant's clients.
pub fn tenant_user(tenant: &str) -> String {
    format!("tenant-{tenant}")
}

/// What a tenant's user may publish and subscribe to.
pub fn tenant_permissions(tenant: &str) -> (Vec<String>, Vec<String>) {
    let consumer = subjects::workers_consumer(tenant);
    let jobs = subjects::JOBS_STREAM;
    let publish = vec![
        format!("$JS.API.CONSUMER.MSG.NEXT.{jobs}.{consumer}"),
        format!("$JS.API.CONSUMER.INFO.{jobs}.{consumer}"),
        format!("$JS.ACK.{jobs}.{consumer}.>"),
        format!("$JS.API.STREAM.INFO.{jobs}"),
        format!("$JS.API.STREAM.INFO.{}", subjects::RESULTS_STREAM),
        format!("btp.results.{tenant}.>"),
        subjects::heartbeat(tenant),
        "btp.api.v1.>".to_string(),
    ];
    let subscribe = vec![
        format!("{}.>", inbox_prefix(&tenant_user(tenant))),
        subjects::control(tenant),
        subjects::task_events(tenant),
    ];
    (publish, subscribe)
}

/// A new random password (244 random bits, hex).
fn new_password() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Writes `text` to `path`, readable by the owner only.
fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}

/// The credentials in `path`, or new ones for `user` written there.
fn credentials(path: &Path, user: &str) -> anyhow::Result<Credentials> {
    if path.exists() {
        let c = Credentials::read(path)?;
        if c.user != user {
            bail!(
                "{} holds user '{}', expected '{user}'",
                path.display(),
                c.user
            );
        }
        return Ok(c);
    }
    let c = Credentials {
        user: user.to_string(),
        password: new_password(),
    };
    write_private(path, &format!("{}\n{}\n", c.user, c.password))?;
    Ok(c)
}

/// A quoted string of the nats-server configuration language.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| quoted(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Settings of a generated configuration.
pub struct ConfigSpec<'a> {
    pub dir: &'a Path,
    pub listen: &'a str,
    pub store_dir: &'a Path,
    pub tenants: &'a [String],
}

/// The nodes of a JetStream cluster: the host each node is reached at by the others (one per
/// node), and the port they route on.
pub struct ClusterSpec<'a> {
    pub hosts: &'a [String],
    pub route_port: u16,
}

/// The NATS user the cluster's nodes connect their routes with.
pub const ROUTE_USER: &str = "btp-route";

/// The name of generated clusters.
pub const CLUSTER_NAME: &str = "btp";

/// The `authorization` block of the users: the server, and each tenant.
fn users_block(spec: &ConfigSpec<'_>) -> anyhow::Result<String> {
    for t in spec.tenants {
        btp_common::api::check_tenant_name(t)?;
    }
    std::fs::create_dir_all(spec.dir).with_context(|| format!("create {}", spec.dir.display()))?;
    let server = credentials(&spec.dir.join("server.creds"), SERVER_USER)?;
    let mut users = vec![format!(
        "    {{ user: {}, password: {}, permissions: {{ publish: \">\", subscribe: \">\" }} }}",
        quoted(&server.user),
        quoted(&server.password)
    )];
    for t in spec.tenants {
        let user = tenant_user(t);
        let c = credentials(&spec.dir.join(format!("{user}.creds")), &user)?;
        let (publish, subscribe) = tenant_permissions(t);
        users.push(format!(
            "    {{ user: {}, password: {}, permissions: {{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n    }} }}",
            quoted(&c.user),
            quoted(&c.password),
            list(&publish),
            list(&subscribe)
        ));
    }
    Ok(format!(
        "authorization {{\n  users = [\n{}\n  ]\n}}\n",
        users.join("\n")
    ))
}

fn header(spec: &ConfigSpec<'_>) -> String {
    format!(
        "# nats-server configuration of a multi-tenant BeyondTP cluster, written by `btp nats config`.\n\
         # Holds passwords: keep it readable by nats-server only.\n\
         listen: {}\n\
         jetstream {{\n    store_dir: {}\n}}\n",
        quoted(spec.listen),
        quoted(&spec.store_dir.to_string_lossy()),
    )
}

/// Writes `nats-server.conf`, `server.creds` and `tenant-<name>.creds` into `spec.dir` (mode
/// 0600). Existing credentials files are kept, so running it again with one more tenant keeps
/// every other password (then reload nats-server: `nats-server --signal reload`). Returns the
/// configuration file's path.
pub fn write_config(spec: &ConfigSpec<'_>) -> anyhow::Result<PathBuf> {
    let users = users_block(spec)?;
    let text = format!("{}{users}", header(spec));
    let path = spec.dir.join("nats-server.conf");
    write_private(&path, &text)?;
    Ok(path)
}

/// Like [`write_config`] for each node of a JetStream cluster: `node-<i>/nats-server.conf`
/// (i from 1) with the node's `server_name` (`nats-<i>`), the cluster block (routes to every
/// node, authenticated by the route user of `cluster-route.creds`) and the same users and
/// credentials files as a single server. Returns the paths.
pub fn write_cluster_config(
    spec: &ConfigSpec<'_>,
    cluster: &ClusterSpec<'_>,
) -> anyhow::Result<Vec<PathBuf>> {
    let n = cluster.hosts.len();
    if n < 3 {
        bail!("--cluster {n}: a JetStream cluster needs at least 3 nodes to keep working when one is lost");
    }
    for h in cluster.hosts {
        if h.is_empty() || h.contains([':', '/', '@', ' ', ',']) {
            bail!("--node-host '{h}': expected a host name or IPv4 address (no port)");
        }
    }
    let users = users_block(spec)?;
    let route = credentials(&spec.dir.join("cluster-route.creds"), ROUTE_USER)?;
    let routes = cluster
        .hosts
        .iter()
        .map(|h| {
            quoted(&format!(
                "nats-route://{}:{}@{h}:{}",
                route.user, route.password, cluster.route_port
            ))
        })
        .collect::<Vec<_>>()
        .join(",\n    ");
    let mut paths = Vec::new();
    for i in 1..=n {
        let text = format!(
            "{}server_name: {}\n\
             cluster {{\n  name: {}\n  listen: {}\n  authorization {{ user: {}, password: {} }}\n  routes: [\n    {routes}\n  ]\n}}\n{users}",
            header(spec),
            quoted(&format!("nats-{i}")),
            quoted(CLUSTER_NAME),
            quoted(&format!("0.0.0.0:{}", cluster.route_port)),
            quoted(&route.user),
            quoted(&route.password),
        );
        let dir = spec.dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join("nats-server.conf");
        write_private(&path, &text)?;
        paths.push(path);
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_keeps_passwords_and_limits_each_tenant_to_its_subjects() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("js");
        let tenants = vec!["acme".to_string()];
        let spec = ConfigSpec {
            dir: dir.path(),
            listen: "127.0.0.1:4222",
            store_dir: &store,
            tenants: &tenants,
        };
        let path = write_config(&spec).unwrap();
        let first = std::fs::read_to_string(&path).unwrap();
        let acme = Credentials::read(&dir.path().join("tenant-acme.creds")).unwrap();
        assert_eq!(acme.user, "tenant-acme");
        assert!(first.contains(&acme.password));
        assert!(first.contains("\"btp.results.acme.>\""));
        assert!(first.contains("\"_INBOX.tenant-acme.>\""));
        assert!(
            !first.contains("btp.jobs.acme"),
            "no direct job subscriptions"
        );
        assert!(!format!("{acme:?}").contains(&acme.password));
        // One more tenant: the others keep their passwords.
        let tenants = vec!["acme".to_string(), "globex".to_string()];
        let path = write_config(&ConfigSpec {
            tenants: &tenants,
            ..spec
        })
        .unwrap();
        let second = std::fs::read_to_string(path).unwrap();
        assert!(second.contains(&acme.password));
        assert!(second.contains("\"btp.results.globex.>\""));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("nats-server.conf"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let bad = vec!["Bad".to_string()];
        assert!(write_config(&ConfigSpec {
            tenants: &bad,
            dir: dir.path(),
            listen: "127.0.0.1:4222",
            store_dir: &store,
        })
        .is_err());
    }

    #[test]
    fn cluster_config_routes_every_node_with_the_same_users() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("js");
        let tenants = vec!["acme".to_string()];
        let spec = ConfigSpec {
            dir: dir.path(),
            listen: "0.0.0.0:4222",
            store_dir: &store,
            tenants: &tenants,
        };
        let hosts: Vec<String> = ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
            .map(String::from)
            .to_vec();
        let paths = write_cluster_config(
            &spec,
            &ClusterSpec {
                hosts: &hosts,
                route_port: 6222,
            },
        )
        .unwrap();
        assert_eq!(paths.len(), 3);
        let acme = Credentials::read(&dir.path().join("tenant-acme.creds")).unwrap();
        let route = Credentials::read(&dir.path().join("cluster-route.creds")).unwrap();
        for (i, p) in paths.iter().enumerate() {
            let text = std::fs::read_to_string(p).unwrap();
            assert!(text.contains(&format!("server_name: \"nats-{}\"", i + 1)));
            for h in &hosts {
                assert!(text.contains(&format!("@{h}:6222")), "{text}");
            }
            assert!(text.contains(&acme.password));
            assert!(text.contains(&route.password));
            if let Ok(bin) = crate::launcher::find_binary() {
                // nats-server itself accepts it.
                let out = std::process::Command::new(bin)
                    .arg("-t")
                    .arg("-c")
                    .arg(p)
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let two = &hosts[..2];
        let e = write_cluster_config(
            &spec,
            &ClusterSpec {
                hosts: two,
                route_port: 6222,
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least 3 nodes"), "{e}");
    }
}
