//! Retries, failures, retry of failed files, pause, resume and cancel, with real processes.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

fn small_tree(src: &Path) -> TreeStats {
    std::fs::create_dir_all(src.join("nested/deeper")).unwrap();
    for i in 0..300 {
        let dir = if i % 3 == 0 {
            src.join("nested/deeper")
        } else {
            src.to_path_buf()
        };
        std::fs::write(
            dir.join(format!("f{i:03}.txt")),
            vec![b'a' + (i % 26) as u8; i * 37],
        )
        .unwrap();
    }
    std::fs::write(src.join("nested/secret file.txt"), b"top secret").unwrap();
    stats(src)
}

#[test]
fn transient_write_errors_are_retried_and_the_report_shows_the_retries() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = small_tree(&src);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client_env(
        &["--workers", "4", "--retry-backoff", "100ms"],
        &[("BTP_FAULT_WRITE_ERRORS", "30")],
    );
    let id = c.start_task(&src, &dst, &["--batch-files", "20"]);
    wait_task(&c.url, &id, Duration::from_secs(120));
    let report = c.report(&id);
    assert_complete(&report, &tree, &src, &dst);
    assert_eq!(
        report["task"]["files_retried"], 30,
        "every injected write fault was retried once"
    );
    // The per-file report lists each file once, retried ones included.
    assert_eq!(task_files(&c.url, &id), tree_files(&src));
}

#[test]
fn an_unreadable_file_fails_at_once_the_rest_completes_and_retry_copies_it_later() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = small_tree(&src);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client_env(&["--workers", "4"], &[("BTP_FAULT_UNREADABLE", "secret")]);
    let id = c.start_task(&src, &dst, &["--batch-files", "20"]);
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["state"], "failed");
    assert_eq!(t["files_copied"], tree.files - 1);
    assert_eq!(t["files_failed"], 1);
    assert_eq!(t["files_retried"], 0, "a permanent error is not retried");
    let failed = btp_json(&c.url, &["task", "report", &id, "--failed"]);
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["path"], "nested/secret file.txt");
    assert_eq!(failed[0]["attempts"], 1);
    assert!(
        failed[0]["reason"]
            .as_str()
            .unwrap()
            .contains("permission denied"),
        "{failed:?}"
    );
    assert!(!dst.join("nested/secret file.txt").exists());
    let mut done = tree_files(&src);
    done.remove("nested/secret file.txt");
    assert_eq!(
        task_files(&c.url, &id),
        done,
        "the failed file is not listed as done"
    );
    let text = String::from_utf8_lossy(&btp(&c.url, &["task", "report", &id, "--failed"]).stdout)
        .to_string();
    assert!(
        text.contains("nested/secret file.txt") && text.contains("permission denied"),
        "{text}"
    );

    // The fault is gone (a client without it); retry runs only the failed file.
    c.clients.clear();
    c.add_client(&["--workers", "4"]);
    let before = c.report(&id);
    let t = btp_json(&c.url, &["task", "retry", &id]);
    assert_eq!(t["state"], "running");
    wait_task(&c.url, &id, Duration::from_secs(120));
    let report = c.report(&id);
    assert_complete(&report, &tree, &src, &dst);
    assert_eq!(
        report["task"]["jobs_total"].as_u64().unwrap(),
        before["task"]["jobs_total"].as_u64().unwrap() + 1
    );
    assert_eq!(task_files(&c.url, &id), tree_files(&src));
    let out = btp(&c.url, &["task", "retry", &id]);
    assert!(!out.status.success());
    assert!(error_line(&out).contains("has no failed files to retry"));
}

#[test]
fn btp_copy_exits_non_zero_when_a_file_fails() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = small_tree(&src);
    let out = std::process::Command::new(btp_bin())
        .args([
            "copy",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--output",
            "json",
        ])
        .env("BTP_FAULT_UNREADABLE", "secret")
        .output()
        .unwrap();
    assert!(!out.status.success(), "a failed file must fail the copy");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["task"]["files_copied"], tree.files - 1);
    assert_eq!(report["failures"][0]["path"], "nested/secret file.txt");
}

/// Bytes under a directory right now, with the new files the clients are still writing there.
fn bytes_in(c: &Cluster, dir: &Path) -> u64 {
    let held = c.bytes_being_written(dir);
    if !dir.exists() {
        return held;
    }
    walk(dir).values().flatten().sum::<u64>() + held
}

/// Waits until `f` stays the same for `quiet`, within `timeout`; returns the value.
fn settle(timeout: Duration, quiet: Duration, f: impl Fn() -> u64) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut last = f();
    let mut since = Instant::now();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = f();
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return now;
        }
        assert!(Instant::now() < deadline, "value kept changing: {last}");
    }
}

#[test]
fn pause_stops_new_jobs_resume_finishes_and_cancel_aborts_in_flight_copies() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    small_tree(&src);
    for i in 0..4 {
        std::fs::write(
            src.join(format!("big-{i}.bin")),
            vec![i as u8 + 1; 24 << 20],
        )
        .unwrap();
    }
    let tree = stats(&src);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2", "--max-speed", "12MiB/s"]);

    // Pause: within 5 s the task is paused and, once in-flight jobs finish, nothing more is copied.
    let id = c.start_task(&src, &dst, &["--batch-files", "10"]);
    c.wait_progress(&id, &tree, 0.1);
    let paused_at = Instant::now();
    let t = btp_json(&c.url, &["task", "pause", &id]);
    assert_eq!(t["state"], "paused");
    assert!(paused_at.elapsed() < Duration::from_secs(5));
    let frozen = settle(Duration::from_secs(20), Duration::from_secs(2), || {
        bytes_in(&c, &dst)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(bytes_in(&c, &dst), frozen, "no new job runs while paused");
    assert!(frozen < tree.bytes, "pause came before the end");
    let out = btp(&c.url, &["task", "pause", &id]);
    assert!(error_line(&out).contains("cannot be paused: it is paused"));

    // Resume goes on where it stopped and completes the tree.
    assert_eq!(
        btp_json(&c.url, &["task", "resume", &id])["state"],
        "running"
    );
    wait_task(&c.url, &id, Duration::from_secs(120));
    assert_complete(&c.report(&id), &tree, &src, &dst);

    // Cancel: in-flight copies stop within 5 s and no partial file is left under a final name.
    let dst2 = tmp.path().join("dst2");
    let id2 = c.start_task(&src, &dst2, &["--batch-files", "10"]);
    c.wait_progress(&id2, &tree, 0.1);
    let t = btp_json(&c.url, &["task", "cancel", &id2]);
    assert_eq!(t["state"], "cancelled");
    let stopped = settle(Duration::from_secs(5), Duration::from_secs(1), || {
        bytes_in(&c, &dst2)
    });
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        bytes_in(&c, &dst2),
        stopped,
        "nothing is written after cancel"
    );
    for (rel, size) in walk(&dst2) {
        if let Some(size) = size {
            assert_eq!(
                Some(size),
                std::fs::metadata(src.join(&rel)).ok().map(|m| m.len()),
                "{} is partial",
                rel.display()
            );
        }
    }
    assert_eq!(
        btp_json(&c.url, &["task", "get", &id2])["state"],
        "cancelled"
    );
    let out = btp(&c.url, &["task", "resume", &id2]);
    assert!(error_line(&out).contains("cannot be resumed: it is cancelled"));
}
