//! Faults with real processes: a client killed with SIGKILL or stopped with SIGTERM, the server
//! killed and restarted, nats-server restarted, all in the middle of a task. Nothing is lost,
//! nothing counted twice, the destination is byte-identical.

mod support;

use std::time::Duration;

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
const SERVER: &[&str] = &["--ack-wait", "4s"];

/// Migrates 3,000 small files and two files of 64 MiB with two clients, runs `fault` once a
/// quarter of the files is copied, and checks that the task still completes exactly.
fn survives(fault: impl FnOnce(&mut Cluster)) {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    gen_tree(&src, 3000, 64 << 20);
    std::fs::write(src.join("second big.bin"), vec![7u8; 64 << 20]).unwrap();
    let tree = stats(&src);
    let mut c = Cluster::start(tmp.path(), SERVER);
    c.add_client(CLIENT);
    c.add_client(CLIENT);
    // Parts between two file systems too (there the default splits only files of 1 GiB), so
    // that faults land in the middle of parts.
    let parts = ["--batch-files", "50", "--multipart-threshold", "32MiB"];
    let id = c.start_task(&src, &dst, &parts);
    c.wait_progress(&id, &tree, 0.25);
    fault(&mut c);
    wait_task(&c.url, &id, Duration::from_secs(300));
    assert_complete(&c.report(&id), &tree, &src, &dst);
    // Redelivered jobs count once in the per-file report too.
    assert_eq!(task_files(&c.url, &id), tree_files(&src));
}

fn sigkill(p: Proc) {
    unsafe { libc::kill(p.pid() as i32, libc::SIGKILL) };
    drop(p);
}

#[test]
fn a_client_killed_mid_task_loses_nothing() {
    survives(|c| sigkill(c.clients.remove(0)));
}

#[test]
fn the_server_killed_mid_task_and_restarted_loses_nothing() {
    survives(|c| {
        sigkill(c.server.take().unwrap());
        std::thread::sleep(Duration::from_secs(1));
        c.start_server();
    });
}

#[test]
fn nats_server_restarted_mid_task_loses_nothing() {
    survives(|c| c.nats.restart().unwrap());
}

#[test]
fn a_client_stopped_with_sigterm_mid_task_exits_cleanly_and_loses_nothing() {
    survives(|c| {
        assert!(
            c.clients.remove(0).terminate().success(),
            "SIGTERM drains and exits 0"
        )
    });
}
