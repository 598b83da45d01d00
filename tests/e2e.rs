//! End-to-end migrations with real processes: a nats-server spawned on a free port, `btp server
//! run`, two `btp client run` processes, and trees compared byte for byte.

mod support;

use std::time::Duration;

use support::*;

const BIG: u64 = 80 << 20;

#[test]
fn two_clients_migrate_a_deep_tree_byte_identical_and_the_report_counts_it() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 2100, BIG);
    assert!(tree.files >= 2000);

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let url = c.url.clone();

    let t = btp_json(
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
            "20",
            // In parts (between file systems the default splits only files of 1 GiB).
            "--multipart-threshold",
            "32MiB",
        ],
    );
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(t["state"], "running");
    let done = wait_task(&url, &id, Duration::from_secs(600));
    assert_eq!(done["state"], "completed", "task: {done}");

    // Peak memory of each client while it copied (the 80 MiB file streamed through one of them).
    let (rss1, rss2) = (c.clients[0].peak_rss(), c.clients[1].peak_rss());
    eprintln!(
        "peak RSS: client-1 {} MiB, client-2 {} MiB (largest file {} MiB)",
        rss1 >> 20,
        rss2 >> 20,
        BIG >> 20
    );
    // 4 workers, each with a 4 MiB read chunk and a write in flight, plus the runtime: well
    // below the 80 MiB file, which a client holding a whole file could not stay under.
    assert!(
        rss1.max(rss2) < 56 << 20,
        "a client's peak RSS {} is not far below the file size",
        rss1.max(rss2)
    );

    assert_same_tree(&src, &dst);
    // Every file once in the per-file report, the multipart one included.
    assert_eq!(task_files(&url, &id), tree_files(&src));
    let report = btp_json(&url, &["task", "report", &id]);
    let task = &report["task"];
    assert_eq!(task["files_found"], tree.files);
    assert_eq!(task["files_copied"], tree.files);
    assert_eq!(task["bytes_copied"], tree.bytes);
    assert_eq!(task["files_failed"], 0);
    assert_eq!(task["listing_done"], true);
    let clients = report["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2, "both clients ran jobs: {clients:?}");
    let files_by_clients: u64 = clients.iter().map(|c| c["files"].as_u64().unwrap()).sum();
    let bytes_by_clients: u64 = clients.iter().map(|c| c["bytes"].as_u64().unwrap()).sum();
    assert_eq!(files_by_clients, tree.files);
    assert_eq!(bytes_by_clients, tree.bytes);
    for c in clients {
        assert!(c["jobs"].as_u64().unwrap() > 0);
    }

    // The human report names the task, its state and both clients.
    let out = btp(&url, &["task", "report", &id]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(
        text.contains(&id)
            && text.contains("completed")
            && text.contains("client-1")
            && text.contains("client-2"),
        "{text}"
    );

    // Clients stop cleanly on SIGTERM and are then shown offline.
    for client in c.clients.drain(..) {
        assert!(client.terminate().success());
    }
    wait_for("clients offline", Duration::from_secs(30), || {
        let l = btp_json(&url, &["client", "list"]);
        l["clients"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["online"] == false)
            .then_some(())
    });
    assert!(c.server.take().unwrap().terminate().success());
    c.nats.stop();
}

#[test]
fn one_shot_copy_migrates_the_tree_and_fails_clearly_on_a_missing_source() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 2000, 64 << 20);

    let out = std::process::Command::new(btp_bin())
        .args([
            "copy",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--workers",
            "4",
            "--output",
            "json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "btp copy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["task"]["state"], "completed");
    assert_eq!(report["task"]["files_copied"], tree.files);
    assert_eq!(report["task"]["bytes_copied"], tree.bytes);
    assert_same_tree(&src, &dst);

    // Re-running the unchanged migration copies 0 bytes and skips every file; a changed file is
    // the only one copied; `--compare none` copies everything again.
    let again = |extra: &[&str]| -> serde_json::Value {
        let mut args = vec![
            "copy",
            src.to_str().unwrap(),
            dst.to_str().unwrap(),
            "--output",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = std::process::Command::new(btp_bin())
            .args(&args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let r = again(&[]);
    assert_eq!(r["task"]["files_copied"], 0);
    assert_eq!(r["task"]["bytes_copied"], 0);
    assert_eq!(r["task"]["files_skipped"], tree.files);
    assert_eq!(r["task"]["bytes_skipped"], tree.bytes);
    let changed = walk(&src)
        .into_iter()
        .find(|(p, size)| size.is_some() && p.to_string_lossy().contains("file-"))
        .map(|(p, _)| src.join(p))
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&changed, b"changed content").unwrap();
    let r = again(&[]);
    assert_eq!(r["task"]["files_copied"], 1);
    assert_eq!(r["task"]["bytes_copied"], 15);
    assert_eq!(r["task"]["files_skipped"], tree.files - 1);
    assert_same_tree(&src, &dst);
    let r = again(&["--compare", "none"]);
    assert_eq!(r["task"]["files_copied"], tree.files);

    let missing = tmp.path().join("does-not-exist");
    let out = std::process::Command::new(btp_bin())
        .args([
            "copy",
            missing.to_str().unwrap(),
            tmp.path().join("dst2").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("does not exist") && line.contains("does-not-exist"),
        "{line}"
    );
    assert!(!missing.exists(), "a missing source must not be created");
    assert!(
        !tmp.path().join("dst2").exists(),
        "nothing is created for a refused copy"
    );
}
