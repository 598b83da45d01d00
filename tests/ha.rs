//! No single point of failure: a JetStream cluster of three nats-servers with replicated
//! streams, killed one node at a time, and two servers on one PostgreSQL store, the leader
//! killed. All real processes on loopback; nothing lost, nothing counted twice, the destination
//! byte-identical.

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use btp_common::subjects;
use futures::TryStreamExt as _;
use support::*;

/// Clients are slowed down so that the fault lands in the middle of the task.
const CLIENT: &[&str] = &[
    "--workers",
    "4",
    "--max-speed",
    "20MiB/s",
    "--ack-wait",
    "4s",
];

/// Task options: the large file in parts (between file systems the default splits only files
/// of 1 GiB), so that faults land in the middle of parts.
const PARTS: &[&str] = &["--batch-files", "50", "--multipart-threshold", "32MiB"];

fn sigkill(p: Proc) {
    unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) };
    drop(p);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// What JetStream reports of BeyondTP's streams and their consumers: the peers keeping each
/// (`STREAM` and `STREAM/consumer`), and the node leading the jobs stream.
fn topology(url: &str) -> (BTreeMap<String, usize>, String) {
    runtime().block_on(async {
        let js = async_nats::jetstream::new(btp_nats::connect(url, "test").await.unwrap());
        let mut peers = BTreeMap::new();
        let mut leader = String::new();
        for name in [
            subjects::JOBS_STREAM,
            subjects::RESULTS_STREAM,
            subjects::DEAD_JOBS_STREAM,
        ] {
            let mut s = js.get_stream(name).await.unwrap();
            let info = s.info().await.unwrap().clone();
            let cluster = info.cluster.unwrap_or_default();
            if name == subjects::JOBS_STREAM {
                leader = cluster.leader.clone().unwrap_or_default();
            }
            peers.insert(name.to_string(), count(&cluster));
            let consumers: Vec<_> = s.consumers().try_collect().await.unwrap();
            for c in consumers {
                let n = count(&c.cluster.unwrap_or_default());
                peers.insert(format!("{name}/{}", c.name), n);
            }
        }
        (peers, leader)
    })
}

/// The distinct nodes of a RAFT group: its leader and its replicas (while a group grows, the
/// leader may be listed among them too).
fn count(c: &async_nats::jetstream::stream::ClusterInfo) -> usize {
    let mut names: std::collections::BTreeSet<&str> =
        c.replicas.iter().map(|p| p.name.as_str()).collect();
    names.extend(c.leader.as_deref());
    names.len().max(1)
}

/// Waits until every stream and consumer is kept by `n` peers.
fn wait_replicas(url: &str, n: usize) -> BTreeMap<String, usize> {
    wait_for(&format!("{n} replicas"), Duration::from_secs(60), || {
        let (peers, _) = topology(url);
        if !peers.values().all(|&p| p == n) {
            eprintln!("waiting for {n} replicas: {peers:?}");
            return None;
        }
        Some(peers)
    })
}

#[test]
fn streams_and_consumers_follow_the_replicas_setting() {
    let tmp = test_dir();
    let mut c = Cluster::start_with_nats_cluster(tmp.path(), &[], 3);
    let peers = wait_replicas(&c.url, 1);
    for key in ["BTP_JOBS/workers-default", "BTP_RESULTS/btp-server"] {
        assert!(peers.contains_key(key), "{key} in {peers:?}");
    }
    // The same cluster, the server restarted with --replicas 3: streams and consumers move.
    assert!(c.server.take().unwrap().terminate().success());
    c.server_args = vec!["--replicas".into(), "3".into()];
    c.start_server();
    let peers = wait_replicas(&c.url, 3);
    eprintln!("with --replicas 3: {peers:?}");
    // More replicas than nodes: refused, with one line, and nothing changes.
    let other = tmp.path().join("other");
    let out = btp(
        &c.url,
        &[
            "--log",
            "warn",
            "server",
            "run",
            "--data-dir",
            other.to_str().unwrap(),
            "--replicas",
            "5",
        ],
    );
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(line.contains("cannot hold 5 replicas"), "{line}");
    assert_eq!(wait_replicas(&c.url, 3), peers);
    // Back to one.
    assert!(c.server.take().unwrap().terminate().success());
    c.server_args = vec!["--replicas".into(), "1".into()];
    c.start_server();
    wait_replicas(&c.url, 1);
}

#[test]
fn replicas_on_a_single_nats_server_are_refused() {
    let tmp = test_dir();
    let nats = NatsServer::start(&tmp.path().join("nats"), None).unwrap();
    let data = tmp.path().join("server");
    let out = btp(
        &nats.url(),
        &[
            "server",
            "run",
            "--data-dir",
            data.to_str().unwrap(),
            "--replicas",
            "3",
        ],
    );
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(line.contains("cannot hold 3 replicas"), "{line}");
    assert!(line.contains("not part of a cluster"), "{line}");
}

#[test]
fn a_nats_node_killed_mid_task_loses_nothing() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 5000, 256 << 20);
    let mut c =
        Cluster::start_with_nats_cluster(tmp.path(), &["--replicas", "3", "--ack-wait", "4s"], 3);
    wait_replicas(&c.url, 3);
    c.add_client(CLIENT);
    c.add_client(CLIENT);
    let id = c.start_task(&src, &dst, PARTS);
    c.wait_progress(&id, &tree, 0.25);
    // The node leading the jobs stream: the worst one to lose.
    let (_, leader) = topology(&c.url);
    eprintln!("killing {leader}, the leader of the jobs stream");
    let i: usize = leader.trim_start_matches("node-").parse().unwrap();
    let node = if i == 0 {
        &mut c.nats
    } else {
        &mut c.peers[i - 1]
    };
    node.kill();
    progress_or_end(&c, &id, &tree, 0.6);
    eprintln!("restarting {leader}");
    let node = if i == 0 {
        &mut c.nats
    } else {
        &mut c.peers[i - 1]
    };
    node.restart().unwrap();
    wait_task(&c.url, &id, Duration::from_secs(600));
    assert_complete(&c.report(&id), &tree, &src, &dst);
    assert_eq!(task_files(&c.url, &id), tree_files(&src));
}

/// Waits until `fraction` of the files are copied or the task ended (the moment to bring a
/// killed node back; the task may well finish without it).
fn progress_or_end(c: &Cluster, id: &str, tree: &TreeStats, fraction: f64) {
    wait_for("task progress", Duration::from_secs(300), || {
        let out = btp(&c.url, &["task", "get", id, "--output", "json"]);
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let copied = t["files_copied"].as_u64()? as f64;
        (t["state"] != "running" || copied >= fraction * tree.files as f64).then_some(())
    });
}

/// `psql` on the machine's PostgreSQL; None when it is not reachable.
fn psql(admin: &str, sql: &str) -> Option<std::process::Output> {
    std::process::Command::new("psql")
        .arg(admin)
        .args(["-qtAc", sql])
        .output()
        .ok()
        .filter(|o| o.status.success())
}

/// A fresh PostgreSQL database (dropped on drop).
struct Database {
    admin: String,
    name: String,
    url: String,
}

impl Database {
    fn create(tag: &str) -> Option<Database> {
        let admin = std::env::var("BTP_TEST_POSTGRES_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
        if psql(&admin, "SELECT 1").is_none() {
            assert!(
                std::env::var_os("CI").is_none(),
                "PostgreSQL is required under CI ({admin})"
            );
            eprintln!("PostgreSQL not reachable: skipping");
            return None;
        }
        let name = format!("btp_{tag}_{}", std::process::id());
        psql(
            &admin,
            &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
        );
        psql(&admin, &format!("CREATE DATABASE {name}")).expect("create database");
        let url = format!("{}/{name}", admin.rsplit_once('/').unwrap().0);
        Some(Database { admin, name, url })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// The server that answers `btp server health` (its `host/pid`).
fn leader(url: &str) -> String {
    btp_json(url, &["server", "health"])["leader"]
        .as_str()
        .unwrap()
        .to_string()
}

fn log_of(c: &Cluster, p: &Proc) -> String {
    std::fs::read_to_string(c.dir.join(format!("{}.log", p.name))).unwrap_or_default()
}

/// Two servers on a fresh PostgreSQL database (on `nats_nodes` nats-servers, 1: a single one),
/// a task of 5,000 files and a 256 MiB file: once a quarter is copied, the leader is killed
/// with SIGKILL (and with `kill_nats_too` the node leading the jobs stream at the same
/// moment, restarted later); the standby leads within the 10 s and the task completes.
fn leader_killed_mid_task(nats_nodes: usize, kill_nats_too: bool) {
    let Some(db) = Database::create("ha") else {
        return;
    };
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 5000, 256 << 20);
    let replicas = nats_nodes.to_string();
    let args = [
        "--database-url",
        &db.url,
        "--ack-wait",
        "4s",
        "--replicas",
        &replicas,
    ];
    let mut c = if nats_nodes == 1 {
        Cluster::start(tmp.path(), &args)
    } else {
        Cluster::start_with_nats_cluster(tmp.path(), &args, nats_nodes)
    };
    let first = c.server.as_ref().unwrap().pid();
    assert!(leader(&c.url).ends_with(&format!("/{first}")));
    let standby = c.spawn_server();
    wait_for("the standby", Duration::from_secs(30), || {
        log_of(&c, &standby).contains("standing by").then_some(())
    });
    // Only the leader answers.
    for _ in 0..5 {
        assert!(leader(&c.url).ends_with(&format!("/{first}")));
    }
    c.add_client(CLIENT);
    c.add_client(CLIENT);
    let id = c.start_task(&src, &dst, PARTS);
    c.wait_progress(&id, &tree, 0.25);
    let node = kill_nats_too.then(|| {
        let (_, name) = topology(&c.url);
        name.trim_start_matches("node-").parse::<usize>().unwrap()
    });
    let killed = Instant::now();
    sigkill(c.server.take().unwrap());
    if let Some(i) = node {
        eprintln!("killing node-{i}, the leader of the jobs stream, with the leading server");
        if i == 0 {
            c.nats.kill()
        } else {
            c.peers[i - 1].kill()
        }
    }
    // The CLI waits across the gap (each call resends for up to 15 s): this returns once the
    // standby answers. With a NATS node lost as well, the standby also waits for JetStream to
    // elect new stream leaders before it serves, which on a loaded machine can outlast one call:
    // then the call is made again.
    let now = wait_for("the standby to lead", Duration::from_secs(120), || {
        let out = btp(&c.url, &["server", "health", "--output", "json"]);
        let health: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        health["leader"].as_str().map(String::from)
    });
    let takeover = killed.elapsed();
    eprintln!("the standby took over in {:.2} s", takeover.as_secs_f64());
    assert!(now.ends_with(&format!("/{}", standby.pid())), "{now} leads");
    if !kill_nats_too {
        assert!(
            takeover < Duration::from_secs(10),
            "the standby leads within 10 s of the leader's death"
        );
    }
    c.server = Some(standby);
    if let Some(i) = node {
        progress_or_end(&c, &id, &tree, 0.6);
        eprintln!("restarting node-{i}");
        if i == 0 {
            c.nats.restart()
        } else {
            c.peers[i - 1].restart()
        }
        .unwrap();
    }
    wait_task(&c.url, &id, Duration::from_secs(600));
    assert_complete(&c.report(&id), &tree, &src, &dst);
    assert_eq!(task_files(&c.url, &id), tree_files(&src));
}

#[test]
fn the_leading_server_killed_mid_task_hands_over_to_its_standby() {
    leader_killed_mid_task(1, false);
}

#[test]
fn a_nats_node_and_the_leading_server_killed_together_lose_nothing() {
    leader_killed_mid_task(3, true);
}

#[test]
fn a_second_server_on_one_sqlite_file_is_refused() {
    let tmp = test_dir();
    let c = Cluster::start(tmp.path(), &[]);
    let data = tmp.path().join("server");
    let out = btp(
        &c.url,
        &["server", "run", "--data-dir", data.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(line.contains("in use by another btp server"), "{line}");
    assert!(line.contains("PostgreSQL"), "{line}");
    // The first one still serves.
    assert_eq!(
        btp_json(&c.url, &["server", "health"])["database"],
        "sqlite"
    );
}
