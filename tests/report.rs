//! Reports delivered when a task ends, with real processes: the summary and the per-file JSON
//! Lines written to a directory and to S3 (moto), every source entry exactly once with its
//! outcome and reason, in parts of bounded size, `--report-level errors` holding only the
//! entries not copied; a notification posted to a real HTTP receiver that answers 500 first,
//! retried; an export that fails is tried again and finished by the restarted server.

mod support;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use support::*;

/// Lines per part of the exported report, for the servers these tests start (the server reads
/// `BTP_REPORT_PART_LINES`, a setting for tests).
const PART_LINES: usize = 3;

fn set_part_lines() {
    // Inherited by the servers the test spawns; every test of this file sets the same value.
    std::env::set_var("BTP_REPORT_PART_LINES", PART_LINES.to_string());
}

/// Task options that make every outcome: `--links follow` fails the dangling link.
const TASK_ARGS: [&str; 4] = ["--links", "follow", "--exclude", "*.skip"];

/// A source with entries of every outcome: five files copied, a name that is not UTF-8 and a
/// dangling symbolic link (failed), a file the filters leave out (excluded).
fn make_source(root: &Path) {
    std::fs::create_dir_all(root.join("sub")).unwrap();
    for (name, body) in [
        ("a.txt", "alpha"),
        ("b.txt", "bravo!"),
        ("e.txt", "echo"),
        ("sub/c.txt", "charlie"),
        ("sub/d.txt", "delta delta"),
        ("notes.skip", "left out"),
    ] {
        std::fs::write(root.join(name), body).unwrap();
    }
    std::fs::write(
        root.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt")),
        b"latin-1",
    )
    .unwrap();
    std::os::unix::fs::symlink("nowhere", root.join("gone")).unwrap();
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The export of task `id` under `ep`, read back through OpenDAL: its summary (raw text and
/// parsed) and its parts in order, every line parsed as JSON.
fn read_export(ep: &btp_common::Endpoint, id: &str) -> (String, Value, Vec<Vec<Value>>) {
    let op = ep.operator().unwrap();
    block_on(async {
        let mut names: Vec<String> = op
            .list(&format!("{id}/"))
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.name().to_string())
            .filter(|n| !n.is_empty() && !n.ends_with('/'))
            .collect();
        names.sort();
        let summary = String::from_utf8(
            op.read(&format!("{id}/summary.json"))
                .await
                .unwrap()
                .to_vec(),
        )
        .unwrap();
        let mut parts = Vec::new();
        for n in 1.. {
            let name = format!("files-{n:05}.jsonl");
            if !names.contains(&name) {
                break;
            }
            let text = String::from_utf8(op.read(&format!("{id}/{name}")).await.unwrap().to_vec())
                .unwrap();
            assert!(text.ends_with('\n'), "{name} ends with a newline");
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{name}: {e}: {l}")))
                .collect();
            parts.push(lines);
        }
        let mut expected: Vec<String> = (1..=parts.len())
            .map(|n| format!("files-{n:05}.jsonl"))
            .collect();
        expected.push("summary.json".into());
        expected.sort();
        assert_eq!(
            names, expected,
            "the export holds the summary and its parts only"
        );
        let parsed = serde_json::from_str(&summary).unwrap();
        (summary, parsed, parts)
    })
}

const COUNTERS: [&str; 14] = [
    "files_found",
    "bytes_found",
    "files_copied",
    "bytes_copied",
    "files_skipped",
    "bytes_skipped",
    "files_failed",
    "bytes_failed",
    "files_excluded",
    "bytes_excluded",
    "files_deleted",
    "deletes_failed",
    "files_retried",
    "bytes_through_clients",
];

/// Checks the export of a finished task against `task get` and `task files`: parts full but
/// the last, every entry (all, or only those neither copied nor skipped) exactly once with the
/// outcome, size and reason of the per-file report, the summary's counters those of the task.
/// Returns the summary and the exported lines by path.
fn check_export(
    c: &Cluster,
    id: &str,
    ep: &btp_common::Endpoint,
    errors_only: bool,
) -> (String, Value, BTreeMap<String, Value>) {
    let task = btp_json(&c.url, &["task", "get", id]);
    let (text, summary, parts) = read_export(ep, id);
    for (i, p) in parts.iter().enumerate() {
        assert!(
            !p.is_empty() && p.len() <= PART_LINES,
            "part {}: {p:?}",
            i + 1
        );
        if i + 1 < parts.len() {
            assert_eq!(p.len(), PART_LINES, "part {} is not full", i + 1);
        }
    }
    let mut lines = BTreeMap::new();
    for line in parts.into_iter().flatten() {
        let path = line["path"].as_str().unwrap().to_string();
        if let Some(before) = lines.insert(path.clone(), line.clone()) {
            panic!("{path} is exported twice: {before} and {line}");
        }
    }
    let expected: BTreeMap<String, ReportEntry> = report_entries(&c.url, id)
        .into_iter()
        .filter(|(_, e)| !errors_only || (e.outcome != "copied" && e.outcome != "skipped"))
        .collect();
    assert_eq!(
        lines.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "the exported entries are those of task files"
    );
    for (path, e) in &expected {
        let l = &lines[path];
        assert_eq!(l["outcome"], e.outcome.as_str(), "{path}: {l}");
        assert_eq!(l["size"], e.size, "{path}: {l}");
        match e.reason.as_str() {
            "" => assert!(l["reason"].is_null(), "{path}: {l}"),
            r => assert_eq!(l["reason"], r, "{path}: {l}"),
        }
        assert!(l["attempts"].is_u64(), "{path}: {l}");
        if e.outcome == "copied" {
            assert_eq!(l["verified"], "size", "{path}: {l}");
        } else {
            assert!(l.get("verified").is_none(), "{path}: {l}");
        }
    }
    assert_eq!(summary["version"], 1);
    assert_eq!(summary["task"], id);
    for k in ["state", "src", "dst", "started_ms", "finished_ms", "tenant"] {
        assert_eq!(summary[k], task[k], "{k}: {summary}");
    }
    for k in COUNTERS {
        assert_eq!(summary["counters"][k], task[k], "counter {k}: {summary}");
    }
    let (s, f) = (
        task["started_ms"].as_i64().unwrap(),
        task["finished_ms"].as_i64().unwrap(),
    );
    assert_eq!(summary["duration_ms"], f - s);
    assert!(
        summary["start"].as_str().unwrap().ends_with('Z'),
        "{summary}"
    );
    assert!(summary["end"].as_str().unwrap().ends_with('Z'), "{summary}");
    assert_eq!(summary["options"], task["options"]);
    (text, summary, lines)
}

/// Waits until the task's report export and notification (those it has) are done.
fn wait_delivered(c: &Cluster, id: &str) -> Value {
    wait_for("the deliveries", Duration::from_secs(30), || {
        let t = btp_json(&c.url, &["task", "get", id]);
        let settled = |k: &str| t.get(k).is_none_or(|d| d["state"] != "pending");
        if settled("report_export") && settled("notification") {
            return Some(t);
        }
        None
    })
}

/// A request the receiver got: the status it answered, the content type, the body.
struct Received {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

/// A real HTTP server (hyper) on a free port, answering requests with `statuses` in turn
/// (the last one from then on) and keeping what it got.
struct Receiver {
    port: u16,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    fn start(statuses: &[u16]) -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let (kept, statuses) = (got.clone(), statuses.to_vec());
        std::thread::spawn(move || {
            block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let (stream, _) = listener.accept().await.unwrap();
                    let (kept, statuses) = (kept.clone(), statuses.clone());
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(
                            move |req: hyper::Request<hyper::body::Incoming>| {
                                let (kept, statuses) = (kept.clone(), statuses.clone());
                                async move {
                                    use http_body_util::BodyExt as _;
                                    let content_type = req
                                        .headers()
                                        .get("content-type")
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_string();
                                    let body = req.into_body().collect().await?.to_bytes().to_vec();
                                    let mut kept = kept.lock().unwrap();
                                    let status = statuses[kept.len().min(statuses.len() - 1)];
                                    kept.push(Received {
                                        status,
                                        content_type,
                                        body,
                                    });
                                    Ok::<_, hyper::Error>(
                                        hyper::Response::builder()
                                            .status(status)
                                            .body(http_body_util::Full::new(
                                                hyper::body::Bytes::from_static(b"noted"),
                                            ))
                                            .unwrap(),
                                    )
                                }
                            },
                        );
                        let io = hyper_util::rt::TokioIo::new(stream);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(io, service)
                            .await;
                    });
                }
            })
        });
        Receiver { port, got }
    }
}

#[test]
fn a_report_exported_to_a_directory_holds_every_entry_once_and_the_notification_is_retried() {
    set_part_lines();
    let tmp = test_dir();
    let (src, dst, reports) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("reports"),
    );
    make_source(&src);
    let receiver = Receiver::start(&[500, 200]);
    let hook = format!("http://127.0.0.1:{}/hook?token=t0ken", receiver.port);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let mut args = TASK_ARGS.to_vec();
    args.extend(["--report-to", reports.to_str().unwrap(), "--notify", &hook]);
    let id = c.start_task(&src, &dst, &args);
    let task = wait_task(&c.url, &id, Duration::from_secs(60));
    assert_eq!(task["state"], "failed", "two entries fail: {task}");
    let t = wait_delivered(&c, &id);
    assert_eq!(
        t["state"], "failed",
        "a delivery leaves the task's state alone"
    );
    let export = &t["report_export"];
    assert_eq!(export["state"], "done", "{t}");
    let shown = format!("fs://{}", reports.display());
    assert_eq!(export["to"], shown.as_str());
    assert_eq!(export["level"], "all");

    let ep = btp_common::Endpoint::parse(reports.to_str().unwrap()).unwrap();
    let (_, summary, lines) = check_export(&c, &id, &ep, false);
    assert_eq!(lines.len(), 8, "every entry of the source: {lines:#?}");
    assert_eq!(task["files_found"], 8);
    for (path, outcome, why) in [
        ("a.txt", "copied", ""),
        ("sub/d.txt", "copied", ""),
        ("notes.skip", "excluded", ""),
        ("caf\\xe9.txt", "failed", "not valid UTF-8"),
        ("gone", "failed", "dangling symbolic link"),
    ] {
        let l = &lines[path];
        assert_eq!(l["outcome"], outcome, "{path}: {l}");
        assert!(
            l["reason"].as_str().unwrap_or_default().contains(why),
            "{path}: {l}"
        );
    }
    assert_eq!(lines["sub/d.txt"]["size"], 11);
    assert_eq!(summary["report_to"], shown.as_str());
    assert_eq!(summary["report_level"], "all");

    // The notification: refused with 500 once, then taken; both times the summary as JSON.
    let n = &t["notification"];
    assert_eq!(n["state"], "done", "{t}");
    assert_eq!(n["attempts"], 2, "{t}");
    assert_eq!(
        n["to"],
        format!("http://127.0.0.1:{}/hook?***", receiver.port),
        "the URL's query (a token) is not shown"
    );
    assert!(!t.to_string().contains("t0ken"), "{t}");
    let got = receiver.got.lock().unwrap();
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 200],
        "tried again after the 500, then no more"
    );
    for r in got.iter() {
        assert_eq!(r.content_type, "application/json");
        let posted: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(posted, summary, "the notification is the exported summary");
    }
}

#[test]
fn an_errors_only_report_goes_to_s3_without_its_credentials() {
    set_part_lines();
    let tmp = test_dir();
    let Some((_moto, port)) = start_moto(tmp.path()) else {
        return;
    };
    let answer = s3_http(port, "PUT", "/audit", b"");
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "create bucket: {answer}"
    );
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    make_source(&src);
    let secret = "r3port-s3cr3t-key";
    let opts = [
        format!("endpoint=http://127.0.0.1:{port}"),
        "region=us-east-1".into(),
        "access_key_id=test".into(),
        format!("secret_access_key={secret}"),
    ];
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let mut args = TASK_ARGS.to_vec();
    args.extend(["--report-to", "s3://audit/btp", "--report-level", "errors"]);
    for o in &opts {
        args.extend(["--report-to-opt", o]);
    }
    let id = c.start_task(&src, &dst, &args);
    wait_task(&c.url, &id, Duration::from_secs(60));
    let t = wait_delivered(&c, &id);
    assert_eq!(t["report_export"]["state"], "done", "{t}");
    assert_eq!(t["report_export"]["level"], "errors", "{t}");
    assert!(!t.to_string().contains(secret), "{t}");

    let ep = btp_common::Endpoint::parse_with(
        "s3://audit/btp",
        &opts
            .iter()
            .map(|o| {
                let (k, v) = o.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect(),
    )
    .unwrap();
    let (text, summary, lines) = check_export(&c, &id, &ep, true);
    assert_eq!(
        lines.keys().map(String::as_str).collect::<Vec<_>>(),
        ["caf\\xe9.txt", "gone", "notes.skip"],
        "only the entries not copied"
    );
    assert_eq!(summary["report_level"], "errors");
    assert!(!text.contains(secret), "{text}");
    assert!(!text.contains("secret_access_key"), "{text}");
}

#[test]
fn a_failing_export_is_retried_and_finished_by_the_restarted_server() {
    set_part_lines();
    let tmp = test_dir();
    let (src, dst, reports) = (
        tmp.path().join("src"),
        tmp.path().join("dst"),
        tmp.path().join("reports"),
    );
    make_source(&src);
    std::fs::create_dir_all(&reports).unwrap();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let mut args = vec!["task", "create", "--src", src.to_str().unwrap()];
    args.extend(["--dst", dst.to_str().unwrap()]);
    args.extend(TASK_ARGS);
    args.extend(["--report-to", reports.to_str().unwrap()]);
    let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
    assert_eq!(
        btp_json(&c.url, &["task", "get", &id])["report_export"]["state"],
        "pending"
    );
    // The report's directory becomes a file: every attempt fails until it is a directory again.
    std::fs::remove_dir(&reports).unwrap();
    std::fs::write(&reports, b"in the way").unwrap();
    btp_json(&c.url, &["task", "start", &id]);
    wait_task(&c.url, &id, Duration::from_secs(60));
    let t = wait_for("a failed attempt", Duration::from_secs(20), || {
        let t = btp_json(&c.url, &["task", "get", &id]);
        (t["report_export"]["attempts"].as_u64() >= Some(1)).then_some(t)
    });
    let export = &t["report_export"];
    assert_eq!(export["state"], "pending", "{t}");
    assert!(!export["reason"].as_str().unwrap().is_empty(), "{t}");
    assert!(export["next_attempt_ms"].is_i64(), "{t}");
    assert_eq!(t["state"], "failed", "the task's state stays");

    // The server is killed; the export is still owed once a server runs again.
    drop(c.server.take());
    std::fs::remove_file(&reports).unwrap();
    std::fs::create_dir(&reports).unwrap();
    c.start_server();
    let t = wait_delivered(&c, &id);
    assert_eq!(t["report_export"]["state"], "done", "{t}");
    assert!(t["report_export"]["attempts"].as_u64().unwrap() >= 2, "{t}");
    assert!(t["report_export"].get("reason").is_none(), "{t}");
    let ep = btp_common::Endpoint::parse(reports.to_str().unwrap()).unwrap();
    let (_, _, lines) = check_export(&c, &id, &ep, false);
    assert_eq!(lines.len(), 8);
}

#[test]
fn bad_report_and_notify_arguments_are_refused_with_one_line_and_nothing_created() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    make_source(&src);
    let c = Cluster::start(tmp.path(), &[]);
    let file = tmp.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let base = ["task", "create", "--src", src.to_str().unwrap(), "--dst"];
    let dst = tmp.path().join("dst");
    for (extra, expected) in [
        (
            vec!["--notify", "ftp://example.com/x"],
            "notify URL: the scheme must be http or https",
        ),
        (
            vec!["--notify", "http://me:hunter2@127.0.0.1/x"],
            "notify URL: credentials in a notify URL",
        ),
        (
            vec!["--report-level", "errors"],
            "report_level given without report_to",
        ),
        (
            vec!["--report-to", file.join("r").to_str().unwrap()],
            "report_to: destination",
        ),
        (vec!["--report-to", "nosuch://x/y"], "report_to: "),
    ] {
        let mut args = base.to_vec();
        args.push(dst.to_str().unwrap());
        args.extend(extra.iter().copied());
        let out = btp(&c.url, &args);
        assert!(!out.status.success(), "{extra:?}");
        let line = error_line(&out);
        assert!(line.contains(expected), "{extra:?}: {line}");
        assert!(!line.contains("hunter2"), "{line}");
    }
    let l = btp_json(&c.url, &["task", "list"]);
    assert_eq!(
        l["tasks"].as_array().unwrap().len(),
        0,
        "nothing created: {l}"
    );
}

#[test]
fn btp_copy_waits_for_its_report_and_a_schedule_exports_each_run() {
    set_part_lines();
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    make_source(&src);

    // `btp copy` runs its own server, which writes the report before the command exits.
    let once = tmp.path().join("once");
    let out = std::process::Command::new(btp_bin())
        .args(["copy", src.to_str().unwrap(), dst.to_str().unwrap()])
        .args(TASK_ARGS)
        .args(["--report-to", once.to_str().unwrap(), "--output", "json"])
        .env_remove("BTP_LOG")
        .output()
        .unwrap();
    assert!(!out.status.success(), "two entries fail");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = report["task"]["id"].as_str().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("report delivered to fs://{}", once.display())),
        "{stderr}"
    );
    let ep = btp_common::Endpoint::parse(once.to_str().unwrap()).unwrap();
    let (_, summary, parts) = read_export(&ep, id);
    assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3, 2]);
    for k in COUNTERS {
        assert_eq!(summary["counters"][k], report["task"][k], "counter {k}");
    }

    // Each run of a schedule exports its report (here only the entries not copied).
    let reports = tmp.path().join("reports");
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let mut args = vec!["schedule", "create", "audited", "--every", "1s"];
    args.extend([
        "--src",
        src.to_str().unwrap(),
        "--dst",
        dst.to_str().unwrap(),
    ]);
    args.extend(TASK_ARGS);
    args.extend([
        "--report-to",
        reports.to_str().unwrap(),
        "--report-level",
        "errors",
    ]);
    let s = btp_json(&c.url, &args);
    assert_eq!(s["report_to"], format!("fs://{}", reports.display()));
    assert_eq!(s["report_level"], "errors");
    let task = wait_for("a run's task", Duration::from_secs(20), || {
        let runs = btp_json(&c.url, &["schedule", "runs", "audited"]);
        runs["runs"]
            .as_array()
            .unwrap()
            .iter()
            .rev()
            .find_map(|r| r["task"].as_str().map(String::from))
    });
    btp_json(&c.url, &["schedule", "pause", "audited"]);
    wait_task(&c.url, &task, Duration::from_secs(60));
    let t = wait_delivered(&c, &task);
    assert_eq!(t["report_export"]["state"], "done", "{t}");
    let ep = btp_common::Endpoint::parse(reports.to_str().unwrap()).unwrap();
    let (_, summary, lines) = check_export(&c, &task, &ep, true);
    assert_eq!(summary["schedule"], "audited");
    assert_eq!(
        lines.keys().map(String::as_str).collect::<Vec<_>>(),
        ["caf\\xe9.txt", "gone", "notes.skip"]
    );
}
