//! Schedules with real processes: an interval schedule fires incremental runs, a server killed
//! across a firing fires it once when it is back, a run still going makes the next one a
//! recorded skip, failing runs pause their schedule, bad input creates nothing, and a tenant
//! sees only its own schedules.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use support::*;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// `btp ... --output json` with an optional token; panics with stderr on failure.
fn json(url: &str, token: Option<&str>, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.extend(["--output", "json"]);
    let out = run(url, token, &all);
    assert!(
        out.status.success(),
        "btp {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json output")
}

fn run(url: &str, token: Option<&str>, args: &[&str]) -> Output {
    match token {
        Some(t) => btp_as(url, t, args),
        None => btp(url, args),
    }
}

/// The one error line of a refused command.
fn refused(url: &str, token: Option<&str>, args: &[&str]) -> String {
    let out = run(url, token, args);
    assert!(!out.status.success(), "btp {args:?} should be refused");
    error_line(&out)
}

/// A schedule's runs, oldest first.
fn runs(url: &str, token: Option<&str>, name: &str) -> Vec<serde_json::Value> {
    let l = json(url, token, &["schedule", "runs", name]);
    let mut runs = l["runs"].as_array().unwrap().clone();
    runs.reverse();
    runs
}

/// Waits until run `n` of the schedule has its final outcome; returns it.
fn wait_run(url: &str, token: Option<&str>, name: &str, n: usize) -> serde_json::Value {
    wait_for(
        &format!("run {n} of schedule {name}"),
        Duration::from_secs(120),
        || {
            let r = runs(url, token, name).get(n - 1)?.clone();
            let o = r["outcome"].as_str().unwrap();
            (!matches!(o, "pending" | "started")).then_some(r)
        },
    )
}

fn create_schedule(
    url: &str,
    token: Option<&str>,
    name: &str,
    src: &Path,
    dst: &Path,
    extra: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "schedule",
        "create",
        name,
        "--src",
        src.to_str().unwrap(),
        "--dst",
        dst.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    json(url, token, &args)
}

#[test]
fn an_interval_schedule_fires_runs_that_copy_only_what_changed() {
    let tmp = test_dir();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let url = c.url.clone();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 30, 0);
    let s = create_schedule(&url, None, "sync-10s", &src, &dst, &["--every", "10s"]);
    assert_eq!(s["state"], "active", "{s}");
    assert_eq!(s["every_secs"], 10);
    assert_eq!(s["timezone"], "UTC");
    assert_eq!(
        s["next_fire_ms"].as_i64().unwrap() - s["created_ms"].as_i64().unwrap(),
        10_000
    );

    // Run 1 copies everything.
    let r1 = wait_run(&url, None, "sync-10s", 1);
    assert_eq!(r1["outcome"], "completed", "{r1}");
    assert_eq!(r1["files_copied"], tree.files, "{r1}");
    assert_eq!(r1["bytes_copied"], tree.bytes, "{r1}");
    assert_same_tree(&src, &dst);

    // A file added and one changed: run 2 copies those two only.
    std::fs::write(src.join("added.txt"), b"new file").unwrap();
    let changed = src.join("group-00").join("sub-000");
    let changed = std::fs::read_dir(&changed)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_file())
        .unwrap();
    std::fs::write(&changed, b"changed content").unwrap();
    let r2 = wait_run(&url, None, "sync-10s", 2);
    assert_eq!(r2["outcome"], "completed", "{r2}");
    assert_eq!(r2["files_copied"], 2, "{r2}");
    assert_eq!(r2["bytes_copied"], 8 + 15, "{r2}");
    assert_eq!(r2["files_skipped"], tree.files - 1, "{r2}");
    assert_ne!(r2["task"], r1["task"]);
    assert_eq!(
        r2["fire_ms"].as_i64().unwrap() - r1["fire_ms"].as_i64().unwrap(),
        10_000,
        "one firing per interval"
    );
    // Its report accounts for every entry found.
    let t2 = json(&url, None, &["task", "get", r2["task"].as_str().unwrap()]);
    assert_eq!(t2["files_found"], tree.files + 1, "{t2}");

    // Run 3: one more change.
    std::fs::write(src.join("added.txt"), b"new file, longer").unwrap();
    let r3 = wait_run(&url, None, "sync-10s", 3);
    assert_eq!(r3["outcome"], "completed", "{r3}");
    assert_eq!(r3["files_copied"], 1, "{r3}");
    assert_eq!(r3["bytes_copied"], 16, "{r3}");
    assert_eq!(r3["files_skipped"], tree.files, "{r3}");
    assert_same_tree(&src, &dst);
    let table =
        String::from_utf8_lossy(&btp(&url, &["schedule", "runs", "sync-10s"]).stdout).to_string();
    for r in [&r1, &r2, &r3] {
        assert!(table.contains(r["task"].as_str().unwrap()), "{table}");
    }

    // Paused, it does not fire; resumed, it fires again from its next time on.
    let p = json(&url, None, &["schedule", "pause", "sync-10s"]);
    assert_eq!(p["state"], "paused", "{p}");
    assert!(p.get("paused_reason").is_none(), "{p}");
    let due = p["next_fire_ms"].as_i64().unwrap();
    wait_for(
        "the paused firing time to pass",
        Duration::from_secs(30),
        || (now_ms() > due + 3_000).then_some(()),
    );
    assert_eq!(runs(&url, None, "sync-10s").len(), 3);
    let before = now_ms();
    let r = json(&url, None, &["schedule", "resume", "sync-10s"]);
    assert_eq!(r["state"], "active", "{r}");
    assert!(r["next_fire_ms"].as_i64().unwrap() > before, "{r}");
    let r4 = wait_run(&url, None, "sync-10s", 4);
    assert_eq!(r4["outcome"], "completed", "{r4}");
    assert_eq!(r4["files_copied"], 0, "{r4}");
    assert!(r4["fire_ms"].as_i64().unwrap() > before, "{r4}");
}

#[test]
fn a_server_killed_across_a_firing_fires_it_once_when_back() {
    let tmp = test_dir();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let url = c.url.clone();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 20, 0);
    create_schedule(&url, None, "every-15s", &src, &dst, &["--every", "15s"]);
    let r1 = wait_run(&url, None, "every-15s", 1);
    assert_eq!(r1["outcome"], "completed", "{r1}");
    let s = json(&url, None, &["schedule", "get", "every-15s"]);
    let due = s["next_fire_ms"].as_i64().unwrap();
    assert_eq!(due - r1["fire_ms"].as_i64().unwrap(), 15_000);
    assert!(
        now_ms() < due,
        "run 1 ended after the next firing time: the test needs a longer interval"
    );

    // SIGKILL before the firing time; started again after it.
    let mut server = c.server.take().unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    wait_for("the firing time to pass", Duration::from_secs(30), || {
        (now_ms() > due + 3_000).then_some(())
    });
    c.start_server();

    // The missed firing runs once, late; the next one keeps the schedule's phase.
    let r2 = wait_run(&url, None, "every-15s", 2);
    assert_eq!(r2["outcome"], "completed", "{r2}");
    assert_eq!(r2["fire_ms"].as_i64().unwrap(), due, "{r2}");
    assert!(
        r2["at_ms"].as_i64().unwrap() > due + 3_000,
        "fired late: {r2}"
    );
    assert_eq!(r2["files_copied"], 0, "{r2}");
    assert_eq!(r2["files_skipped"], tree.files, "{r2}");
    let s = json(&url, None, &["schedule", "get", "every-15s"]);
    assert_eq!(s["next_fire_ms"].as_i64().unwrap(), due + 15_000, "{s}");
    assert_eq!(s["runs"], 2, "{s}");
    let all = runs(&url, None, "every-15s");
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(
        all.iter()
            .filter(|r| r["fire_ms"].as_i64() == Some(due))
            .count(),
        1
    );
}

#[test]
fn a_run_still_going_makes_the_next_firing_a_recorded_skip() {
    let tmp = test_dir();
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&[]);
    let url = c.url.clone();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("slow.bin"), vec![7u8; 400 << 10]).unwrap();
    // 400 KiB at 40 KiB/s: about 10 s per run, fired every second.
    create_schedule(
        &url,
        None,
        "busy",
        &src,
        &dst,
        &["--every", "1s", "--speed-limit", "40KiB/s"],
    );
    let skipped = wait_for("a skipped run", Duration::from_secs(60), || {
        runs(&url, None, "busy")
            .into_iter()
            .find(|r| r["outcome"] == "skipped")
    });
    let first = &runs(&url, None, "busy")[0];
    let task = first["task"].as_str().unwrap().to_string();
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .contains(&format!("the previous run (task {task}) is still going")),
        "{skipped}"
    );
    assert!(skipped.get("task").is_none(), "{skipped}");
    // Only one run at a time ever had a task.
    json(&url, None, &["schedule", "pause", "busy"]);
    let with_task: Vec<_> = runs(&url, None, "busy")
        .into_iter()
        .filter(|r| r.get("task").is_some())
        .collect();
    assert_eq!(with_task.len(), 1, "{with_task:?}");
    json(&url, None, &["task", "cancel", &task]);
    json(&url, None, &["schedule", "delete", "busy"]);
    let e = refused(&url, None, &["schedule", "get", "busy"]);
    assert!(e.contains("unknown schedule 'busy'"), "{e}");
}

#[test]
fn runs_failing_in_a_row_pause_their_schedule_with_the_reason() {
    let tmp = test_dir();
    let c = Cluster::start(tmp.path(), &[]);
    let url = c.url.clone();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    create_schedule(
        &url,
        None,
        "fragile",
        &src,
        &dst,
        &["--every", "1s", "--max-failures", "2"],
    );
    // The source goes away: each firing's task cannot be created.
    std::fs::remove_dir_all(&src).unwrap();
    let s = wait_for("the schedule to pause", Duration::from_secs(60), || {
        let s = json(&url, None, &["schedule", "get", "fragile"]);
        (s["state"] == "paused").then_some(s)
    });
    let reason = s["paused_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("paused after 2 failed runs in a row; the last: run 2 could not start:"),
        "{s}"
    );
    assert!(reason.contains("source"), "{reason}");
    let all = runs(&url, None, "fragile");
    assert_eq!(all.len(), 2, "{all:?}");
    assert!(all.iter().all(|r| r["outcome"] == "error"), "{all:?}");
    let table =
        String::from_utf8_lossy(&btp(&url, &["schedule", "get", "fragile"]).stdout).to_string();
    assert!(table.contains("Paused because"), "{table}");
    // Nothing was created by the failed runs.
    let tasks = json(&url, None, &["task", "list"]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");
}

#[test]
fn bad_input_creates_nothing_and_tenants_see_only_their_schedules() {
    let tmp = test_dir();
    let admin_file = tmp.path().join("admin.token");
    let c = Cluster::start(
        tmp.path(),
        &["--admin-token-file", admin_file.to_str().unwrap()],
    );
    let url = c.url.clone();
    let admin = std::fs::read_to_string(&admin_file)
        .unwrap()
        .trim()
        .to_string();
    let mut tokens = Vec::new();
    for name in ["acme", "globex"] {
        json(&url, Some(&admin), &["tenant", "create", name]);
        let t = json(&url, Some(&admin), &["token", "create", "--tenant", name]);
        tokens.push(t["token"].as_str().unwrap().to_string());
    }
    let (acme, globex) = (Some(tokens[0].as_str()), Some(tokens[1].as_str()));
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    let (s, d) = (src.to_str().unwrap(), dst.to_str().unwrap());

    let create = |extra: &[&str]| {
        let mut args = vec!["schedule", "create"];
        args.extend_from_slice(extra);
        args.extend(["--src", s, "--dst", d]);
        refused(&url, acme, &args)
    };
    let e = create(&["nightly", "--cron", "0 2 * *"]);
    assert!(e.contains("invalid cron pattern '0 2 * *'"), "{e}");
    let e = create(&["nightly", "--cron", "0 25 * * *"]);
    assert!(e.contains("invalid cron pattern '0 25 * * *'"), "{e}");
    let e = create(&[
        "nightly",
        "--cron",
        "0 2 * * *",
        "--timezone",
        "Mars/Olympus",
    ]);
    assert!(e.contains("unknown time zone 'Mars/Olympus'"), "{e}");
    let e = create(&["Nightly", "--cron", "0 2 * * *"]);
    assert!(e.contains("invalid schedule name 'Nightly'"), "{e}");
    let e = create(&["nightly", "--every", "0s"]);
    assert!(e.contains("--every"), "{e}");
    let e = create(&["nightly", "--every", "1h", "--max-failures", "0"]);
    assert!(e.contains("max_failures must be between 1 and"), "{e}");
    let out = run(
        &url,
        acme,
        &[
            "schedule",
            "create",
            "nightly",
            "--cron",
            "0 2 * * *",
            "--src",
            "/no/such/dir",
            "--dst",
            d,
        ],
    );
    assert!(!out.status.success());
    assert!(error_line(&out).contains("/no/such/dir"));
    let l = json(&url, acme, &["schedule", "list"]);
    assert_eq!(l["schedules"].as_array().unwrap().len(), 0, "{l}");

    // acme's schedule, in a time zone.
    let mut args = vec!["schedule", "create", "nightly", "--cron", "0 2 * * *"];
    args.extend(["--timezone", "Europe/Paris", "--src", s, "--dst", d]);
    let n = json(&url, acme, &args);
    assert_eq!(n["tenant"], "acme");
    assert_eq!(n["timezone"], "Europe/Paris");
    assert_eq!(n["cron"], "0 2 * * *");
    let e = refused(&url, acme, &args);
    assert!(e.contains("schedule 'nightly' already exists"), "{e}");

    // globex neither sees nor changes it.
    for verb in ["get", "pause", "resume", "delete", "runs"] {
        let e = refused(&url, globex, &["schedule", verb, "nightly"]);
        assert!(e.contains("unknown schedule 'nightly'"), "{verb}: {e}");
    }
    let l = json(&url, globex, &["schedule", "list"]);
    assert_eq!(l["schedules"].as_array().unwrap().len(), 0, "{l}");
    let l = json(&url, acme, &["schedule", "list"]);
    assert_eq!(l["schedules"].as_array().unwrap().len(), 1, "{l}");
    assert_eq!(l["schedules"][0]["state"], "active");
    // The same name is free for globex.
    let mut args = vec!["schedule", "create", "nightly", "--every", "6h"];
    args.extend(["--src", s, "--dst", d]);
    assert_eq!(json(&url, globex, &args)["tenant"], "globex");
    json(&url, acme, &["schedule", "delete", "nightly"]);
    let l = json(&url, acme, &["schedule", "list"]);
    assert_eq!(l["schedules"].as_array().unwrap().len(), 0, "{l}");
    let l = json(&url, globex, &["schedule", "list"]);
    assert_eq!(l["schedules"].as_array().unwrap().len(), 1, "{l}");
}
