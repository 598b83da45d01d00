//! Faults with real processes: a client killed with SIGKILL, the server killed and restarted,
//! nats-server restarted, all in the middle of a task. Nothing is lost, nothing counted twice,
//! the destination is byte-identical.

mod support;

use std::time::Duration;

use support::*;

/// 3,000 small files plus two files of 64 MiB.
fn tree(dir: &std::path::Path) -> TreeStats {
    let src = dir.join("src");
    gen_tree(&src, 3000, 64 << 20);
    std::fs::write(src.join("second big.bin"), vec![7u8; 64 << 20]).unwrap();
    stats(&src)
}

/// Clients are slowed down so that the fault lands in the middle of the task.
const CLIENT: &[&str] = &[
    "--workers",
    "4",
    "--max-speed",
    "20MiB/s",
    "--ack-wait",
    "4s",
];
const SERVER: &[&str] = &["--ack-wait", "4s"];

#[test]
fn a_client_killed_mid_task_loses_nothing() {
    let tmp = test_dir();
    let tree = tree(tmp.path());
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let mut c = Cluster::start(tmp.path(), SERVER);
    c.add_client(CLIENT);
    c.add_client(CLIENT);
    let id = c.start_task(&src, &dst, &["--batch-files", "50"]);
    c.wait_progress(&id, &tree, 0.25);
    let victim = c.clients.remove(0);
    unsafe { libc::kill(victim.pid() as i32, libc::SIGKILL) };
    drop(victim);
    wait_task(&c.url, &id, Duration::from_secs(300));
    assert_complete(&c.report(&id), &tree, &src, &dst);
}

#[test]
fn the_server_killed_mid_task_and_restarted_loses_nothing() {
    let tmp = test_dir();
    let tree = tree(tmp.path());
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let mut c = Cluster::start(tmp.path(), SERVER);
    c.add_client(CLIENT);
    c.add_client(CLIENT);
    let id = c.start_task(&src, &dst, &["--batch-files", "50"]);
    c.wait_progress(&id, &tree, 0.25);
    let server = c.server.take().unwrap();
    unsafe { libc::kill(server.pid() as i32, libc::SIGKILL) };
    drop(server);
    std::thread::sleep(Duration::from_secs(1));
    c.start_server();
    wait_task(&c.url, &id, Duration::from_secs(300));
    assert_complete(&c.report(&id), &tree, &src, &dst);
}

#[test]
fn nats_server_restarted_mid_task_loses_nothing() {
    let tmp = test_dir();
    let tree = tree(tmp.path());
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let mut c = Cluster::start(tmp.path(), SERVER);
    c.add_client(CLIENT);
    c.add_client(CLIENT);
    let id = c.start_task(&src, &dst, &["--batch-files", "50"]);
    c.wait_progress(&id, &tree, 0.25);
    c.nats.restart().unwrap();
    wait_task(&c.url, &id, Duration::from_secs(300));
    assert_complete(&c.report(&id), &tree, &src, &dst);
}

#[test]
fn a_client_stopped_with_sigterm_mid_task_exits_cleanly_and_loses_nothing() {
    let tmp = test_dir();
    let tree = tree(tmp.path());
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let mut c = Cluster::start(tmp.path(), SERVER);
    c.add_client(CLIENT);
    c.add_client(CLIENT);
    let id = c.start_task(&src, &dst, &["--batch-files", "50"]);
    c.wait_progress(&id, &tree, 0.25);
    let stopping = c.clients.remove(0);
    assert!(stopping.terminate().success(), "SIGTERM drains and exits 0");
    wait_task(&c.url, &id, Duration::from_secs(300));
    assert_complete(&c.report(&id), &tree, &src, &dst);
}
