//! A rolling upgrade: a cluster of the previous version (`BTP_PREVIOUS_BIN`, built by
//! `deploy/test.sh` from the commit named in `deploy/previous-version`) is replaced process by
//! process with this build while a task runs: one client, then the server (on the same store,
//! whose migrations run under a running task), then the other client. Old and new processes
//! work side by side at every step; the task completes, every file counted once, the destination
//! identical; the previous version's CLI still reads the task from the new server.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::*;

/// Slow clients: the task lasts long enough for three replacements.
const CLIENT: &[&str] = &[
    "--workers",
    "4",
    "--max-speed",
    "1MiB/s",
    "--ack-wait",
    "4s",
];

fn previous() -> Option<PathBuf> {
    match std::env::var_os("BTP_PREVIOUS_BIN") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            assert!(
                std::env::var_os("CI").is_none(),
                "BTP_PREVIOUS_BIN is required under CI (deploy/test.sh builds it)"
            );
            eprintln!("BTP_PREVIOUS_BIN not set: skipping the upgrade test");
            None
        }
    }
}

/// Runs a `btp` binary to completion.
fn run(bin: &Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(bin)
        .args(args)
        .env("BTP_NATS_URL", url)
        .env_remove("BTP_LOG")
        .output()
        .expect("run btp")
}

fn version(bin: &Path) -> String {
    String::from_utf8_lossy(&run(bin, "", &["--version"]).stdout)
        .trim()
        .to_string()
}

fn wait_health(url: &str) {
    wait_for("the server", Duration::from_secs(120), || {
        btp(url, &["server", "health"])
            .status
            .success()
            .then_some(())
    });
}

fn wait_online(url: &str, id: &str) {
    wait_for(&format!("{id} online"), Duration::from_secs(60), || {
        let out = btp(url, &["client", "list", "--output", "json"]);
        let l: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        l["clients"]
            .as_array()?
            .iter()
            .any(|c| c["id"] == id && c["online"] == true)
            .then_some(())
    });
}

/// Waits until `fraction` of the files are copied; the task must still be running.
fn wait_files(url: &str, id: &str, tree: &TreeStats, fraction: f64) {
    let t = wait_for("task progress", Duration::from_secs(300), || {
        let out = btp(url, &["task", "get", id, "--output", "json"]);
        let t: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let copied = t["files_copied"].as_u64()? as f64;
        (t["state"] != "running" || copied >= fraction * tree.files as f64).then_some(t)
    });
    assert_eq!(
        t["state"], "running",
        "the task ended before the upgrade step"
    );
}

#[test]
fn a_rolling_upgrade_from_the_previous_version_loses_nothing() {
    let Some(old) = previous() else {
        return;
    };
    let new = PathBuf::from(btp_bin());
    eprintln!(
        "upgrading {} ({}) -> {} ({})",
        version(&old),
        old.display(),
        version(&new),
        new.display()
    );
    let tmp = test_dir();
    let dir = tmp.path();
    let (src, dst) = (dir.join("src"), dir.join("dst"));
    let tree = gen_tree(&src, 3000, 16 << 20);
    let nats = NatsServer::start(&dir.join("nats"), None).unwrap();
    let url = nats.url();
    let data = dir.join("server");
    let server_args = [
        "server",
        "run",
        "--data-dir",
        data.to_str().unwrap(),
        "--ack-wait",
        "4s",
    ];
    let client_args = |id: &'static str| {
        let mut a = vec!["client", "run", "--id", id];
        a.extend_from_slice(CLIENT);
        a
    };

    // All of the previous version; the task created by its CLI.
    let server = Proc::spawn_bin(&old, "server-old", &url, &server_args, dir, &[]);
    wait_health(&url);
    let c1 = Proc::spawn_bin(
        &old,
        "client-1-old",
        &url,
        &client_args("client-1"),
        dir,
        &[],
    );
    let c2 = Proc::spawn_bin(
        &old,
        "client-2-old",
        &url,
        &client_args("client-2"),
        dir,
        &[],
    );
    wait_online(&url, "client-1");
    wait_online(&url, "client-2");
    let out = run(
        &old,
        &url,
        &[
            "task",
            "create",
            "--src",
            src.to_str().unwrap(),
            "--dst",
            dst.to_str().unwrap(),
            "--start",
            "--batch-files",
            "50",
            // The large file in parts, copied by old and new clients.
            "--multipart-threshold",
            "8MiB",
            "--part-size",
            "5MiB",
            "--output",
            "json",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = t["id"].as_str().unwrap().to_string();

    // One client upgraded: an old and a new client share the task under the old server.
    wait_files(&url, &id, &tree, 0.2);
    assert!(c1.terminate().success());
    let _c1 = Proc::spawn("client-1-new", &url, &client_args("client-1"), dir);
    wait_online(&url, "client-1");

    // The server upgraded on the same store, the task running: an old and a new client under
    // the new server.
    wait_files(&url, &id, &tree, 0.4);
    assert!(server.terminate().success());
    let _server = Proc::spawn("server-new", &url, &server_args, dir);
    wait_health(&url);

    // The last client upgraded.
    wait_files(&url, &id, &tree, 0.6);
    assert!(c2.terminate().success());
    let _c2 = Proc::spawn("client-2-new", &url, &client_args("client-2"), dir);

    wait_task(&url, &id, Duration::from_secs(600));
    let report = btp_json(&url, &["task", "report", &id]);
    assert_complete(&report, &tree, &src, &dst);
    assert_eq!(task_files(&url, &id), tree_files(&src));
    // The previous version's CLI reads the finished task from the new server.
    let out = run(&old, &url, &["task", "get", &id, "--output", "json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(t["state"], "completed", "{t}");
    assert_eq!(t["files_found"], tree.files, "{t}");
}
