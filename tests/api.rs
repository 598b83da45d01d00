//! The request API over a real nats-server, through the CLI (which uses nothing else): listing
//! with filters and paging, delete, client get and drain, health, events, CSV reports, and a
//! report that survives a server restart unchanged.

mod support;

use std::time::Duration;

use futures::StreamExt;
use support::*;

#[test]
fn tasks_are_listed_filtered_paged_and_deleted_and_events_announce_each_state() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    gen_tree(&src, 50, 0);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2"]);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let nats = rt.block_on(async_nats::connect(&c.url)).unwrap();
    let mut events = rt
        .block_on(nats.subscribe("btp.events.default.task"))
        .unwrap();
    rt.block_on(nats.flush()).unwrap();

    let d = |i: usize| tmp.path().join(format!("dst{i}"));
    let created = btp_json(
        &c.url,
        &[
            "task",
            "create",
            "--src",
            src.to_str().unwrap(),
            "--dst",
            d(0).to_str().unwrap(),
        ],
    );
    let id0 = created["id"].as_str().unwrap().to_string();
    let id1 = c.start_task(&src, &d(1), &[]);
    let id2 = c.start_task(&src, &d(2), &[]);
    wait_task(&c.url, &id1, Duration::from_secs(60));
    wait_task(&c.url, &id2, Duration::from_secs(60));

    let all = btp_json(&c.url, &["task", "list"]);
    assert_eq!(all["tasks"].as_array().unwrap().len(), 3);
    let done = btp_json(&c.url, &["task", "list", "--state", "completed"]);
    let ids: Vec<&str> = done["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(ids.contains(&id1.as_str()) && ids.contains(&id2.as_str()));
    let created_only = btp_json(&c.url, &["task", "list", "--state", "created"]);
    assert_eq!(created_only["tasks"][0]["id"], id0.as_str());
    let page1 = btp_json(&c.url, &["task", "list", "--limit", "2"]);
    let page2 = btp_json(&c.url, &["task", "list", "--limit", "2", "--offset", "2"]);
    assert_eq!(page1["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(page2["tasks"].as_array().unwrap().len(), 1);
    let csv = String::from_utf8(btp(&c.url, &["task", "list", "--output", "csv"]).stdout).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    assert!(csv.starts_with("id,state,"));

    let out = btp(&c.url, &["task", "list", "--limit", "0"]);
    assert!(error_line(&out).contains("limit must be between 1 and"));

    assert_eq!(
        btp_json(&c.url, &["task", "delete", &id1])["id"],
        id1.as_str()
    );
    let out = btp(&c.url, &["task", "get", &id1]);
    assert!(error_line(&out).contains(&format!("unknown task id '{id1}'")));
    assert_eq!(
        btp_json(&c.url, &["task", "list"])["tasks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );

    // created, running, completed for each started task; created for the other.
    let mut seen: Vec<(String, String)> = Vec::new();
    rt.block_on(async {
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_millis(500), events.next()).await
        {
            let e: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
            seen.push((
                e["task"].as_str().unwrap().into(),
                e["state"].as_str().unwrap().into(),
            ));
        }
    });
    for id in [&id1, &id2] {
        let states: Vec<&str> = seen
            .iter()
            .filter(|(t, _)| t == id)
            .map(|(_, s)| s.as_str())
            .collect();
        assert_eq!(
            states,
            ["created", "running", "completed"],
            "events of {id}: {seen:?}"
        );
    }
    assert!(seen.contains(&(id0.clone(), "created".into())));
}

#[test]
fn clients_are_shown_drained_and_the_health_check_answers() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 200, 0);
    let mut c = Cluster::start(tmp.path(), &[]);
    let a = c.add_client(&["--workers", "2"]);
    let b = c.add_client(&["--workers", "3"]);

    let h = btp_json(&c.url, &["server", "health"]);
    assert_eq!(h["api"], "v1");
    assert_eq!(h["database"], "sqlite");
    assert_eq!(h["clients_online"], 2);
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));

    let info = btp_json(&c.url, &["client", "get", &b]);
    assert_eq!(
        (
            info["id"].as_str(),
            info["workers"].as_u64(),
            info["online"].as_bool()
        ),
        (Some(b.as_str()), Some(3), Some(true))
    );
    let out = btp(&c.url, &["client", "get", "nobody"]);
    assert!(error_line(&out).contains("unknown client id 'nobody'"));

    // A drained client takes no new jobs: the whole task runs on the other one.
    let drained = btp_json(&c.url, &["client", "drain", &a]);
    assert_eq!(drained["draining"], true);
    wait_for(
        "drain reported by heartbeat",
        Duration::from_secs(20),
        || {
            let info = btp_json(&c.url, &["client", "get", &a]);
            (info["draining"] == true && info["online"] == true).then_some(())
        },
    );
    let dst = tmp.path().join("dst");
    let id = c.start_task(&src, &dst, &["--batch-files", "10"]);
    wait_task(&c.url, &id, Duration::from_secs(60));
    let report = c.report(&id);
    assert_complete(&report, &tree, &src, &dst);
    let clients: Vec<&str> = report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["client"].as_str().unwrap())
        .collect();
    assert_eq!(
        clients,
        [b.as_str()],
        "only the client that was not drained ran jobs"
    );
    let text = String::from_utf8(btp(&c.url, &["client", "list"]).stdout).unwrap();
    assert!(text.contains("draining"), "{text}");
}

#[test]
fn a_report_is_identical_before_and_after_a_server_restart_and_exports_as_csv() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 300, 2 << 20);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2"]);
    let dst = tmp.path().join("dst");
    let id = c.start_task(&src, &dst, &[]);
    wait_task(&c.url, &id, Duration::from_secs(60));
    let before = c.report(&id);
    assert_complete(&before, &tree, &src, &dst);
    assert!(before["task"]["peak_bytes_per_sec"].as_u64().unwrap() > 0);

    assert!(c.server.take().unwrap().terminate().success());
    c.start_server();
    let after = c.report(&id);
    assert_eq!(before, after);

    let csv =
        String::from_utf8(btp(&c.url, &["task", "report", &id, "--output", "csv"]).stdout).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 2, "{csv}");
    let header: Vec<&str> = lines[0].split(',').collect();
    let row: Vec<&str> = lines[1].split(',').collect();
    let field = |name: &str| row[header.iter().position(|h| *h == name).unwrap()];
    assert_eq!(field("task"), id);
    assert_eq!(field("state"), "completed");
    assert_eq!(field("files_copied"), tree.files.to_string());
    assert_eq!(field("bytes_copied"), tree.bytes.to_string());
}

#[test]
fn the_server_runs_on_postgresql_with_the_same_migrations() {
    let admin = std::env::var("BTP_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_string());
    let psql = |sql: &str| {
        std::process::Command::new("psql")
            .arg(&admin)
            .args(["-qtAc", sql])
            .output()
            .ok()
            .filter(|o| o.status.success())
    };
    if psql("SELECT 1").is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "PostgreSQL is required under CI ({admin})"
        );
        eprintln!("PostgreSQL not reachable: skipping");
        return;
    }
    let db = format!("btp_e2e_{}", std::process::id());
    psql(&format!("DROP DATABASE IF EXISTS {db}"));
    psql(&format!("CREATE DATABASE {db}")).expect("create database");
    let url = format!("{}/{db}", admin.rsplit_once('/').unwrap().0);

    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 200, 1 << 20);
    let mut c = Cluster::start(tmp.path(), &["--database-url", &url]);
    c.add_client(&["--workers", "2"]);
    assert_eq!(
        btp_json(&c.url, &["server", "health"])["database"],
        "postgresql"
    );
    let id = c.start_task(&src, &dst, &[]);
    wait_task(&c.url, &id, Duration::from_secs(60));
    let before = c.report(&id);
    assert_complete(&before, &tree, &src, &dst);
    assert!(c.server.take().unwrap().terminate().success());
    c.start_server();
    assert_eq!(
        before,
        c.report(&id),
        "the report survives a restart on PostgreSQL too"
    );
    drop(c);
    psql(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"));
}

/// One API request over NATS: the raw answer's size and its `ok` value.
fn api_call(
    rt: &tokio::runtime::Runtime,
    nats: &async_nats::Client,
    verb: &str,
    req: serde_json::Value,
) -> (usize, serde_json::Value) {
    let msg = rt
        .block_on(nats.request(format!("btp.api.v1.{verb}"), req.to_string().into()))
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert!(v.get("ok").is_some(), "{verb}: {v}");
    (msg.payload.len(), v["ok"].clone())
}

#[test]
fn report_pages_follow_cursors_stay_under_a_mebibyte_and_earlier_offsets_still_work() {
    let tmp = test_dir();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    // Long names: a page of 10,000 of them would be about 2.4 MB, over NATS' 1 MiB.
    let mut names = std::collections::BTreeSet::new();
    for i in 0..2400 {
        let locked = if i % 200 == 7 { "locked-" } else { "" };
        let name = format!("{locked}{i:0>200}.bin");
        std::fs::write(src.join(&name), b"").unwrap();
        names.insert(name);
    }
    let failed: std::collections::BTreeSet<String> = names
        .iter()
        .filter(|n| n.starts_with("locked-"))
        .cloned()
        .collect();
    assert_eq!(failed.len(), 12);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client_env(&["--workers", "4"], &[("BTP_FAULT_UNREADABLE", "locked-")]);
    let id = c.start_task(&src, &tmp.path().join("dst"), &["--max-attempts", "1"]);
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["files_failed"], 12, "{t}");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let nats = rt.block_on(async_nats::connect(&c.url)).unwrap();

    // task.files with opaque cursors: every page under the bound, every file once.
    let walk = |first: serde_json::Value| {
        let mut seen = Vec::new();
        let mut pages = 0;
        let mut after = first;
        loop {
            let mut req = serde_json::json!({"id": id, "limit": 10000});
            if !after.is_null() {
                req["after"] = after.clone();
            }
            let (size, page) = api_call(&rt, &nats, "task.files", req);
            assert!(size < 1 << 20, "an answer of {size} bytes");
            pages += 1;
            for f in page["files"].as_array().unwrap() {
                let outcome = if failed.contains(f["path"].as_str().unwrap()) {
                    "failed"
                } else {
                    "copied"
                };
                assert_eq!(f["outcome"], outcome, "{f}");
                seen.push(f["path"].as_str().unwrap().to_string());
            }
            match page.get("next") {
                Some(n) => after = n.clone(),
                None => break,
            }
        }
        (seen, pages)
    };
    let (seen, pages) = walk(serde_json::json!(""));
    assert!(pages >= 2, "{pages} pages");
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "a file given twice");
    assert_eq!(sorted, names.iter().cloned().collect::<Vec<_>>());
    // Without a cursor (earlier CLIs), the numeric cursors of earlier versions: the same files.
    let (legacy, _) = walk(serde_json::Value::Null);
    assert_eq!(legacy, seen);
    // The CLI follows the cursors too.
    let out = btp(&c.url, &["task", "files", &id, "--output", "json"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8(out.stdout).unwrap().lines().count(), 2400);

    // task.report: failures page by cursor, in path order, each once; offsets as before.
    let mut by_cursor = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut req = serde_json::json!({"id": id, "failures_limit": 5});
        if let Some(a) = &after {
            req["after"] = serde_json::json!(a);
        }
        let (_, r) = api_call(&rt, &nats, "task.report", req);
        // The per-client summary is on the first page only.
        assert_eq!(r["clients"].as_array().unwrap().is_empty(), after.is_some());
        by_cursor.extend(
            r["failures"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["path"].as_str().unwrap().to_string()),
        );
        match r["next"].as_str() {
            Some(n) => after = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(by_cursor, failed.iter().cloned().collect::<Vec<_>>());
    let mut by_offset = Vec::new();
    for offset in (0..15).step_by(5) {
        let req = serde_json::json!({"id": id, "failures_limit": 5, "failures_offset": offset});
        let (_, r) = api_call(&rt, &nats, "task.report", req);
        by_offset.extend(
            r["failures"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["path"].as_str().unwrap().to_string()),
        );
    }
    assert_eq!(by_offset, by_cursor);
    // A cursor this server did not make is refused.
    let msg = rt
        .block_on(
            nats.request(
                "btp.api.v1.task.files",
                serde_json::json!({"id": id, "after": "zz"})
                    .to_string()
                    .into(),
            ),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(v["error"]["code"], "invalid_argument", "{v}");
}
