//! Speed limit across two clients, a limit changed mid-run, and the metrics both processes serve
//! (checked with Prometheus' own `promtool`).

mod support;

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

/// Bytes under `dir` now (files being written count with their current size).
fn bytes_in(c: &Cluster, dir: &Path) -> u64 {
    let held = c.bytes_being_written(dir);
    if !dir.exists() {
        return held;
    }
    walk(dir).values().flatten().sum::<u64>() + held
}

/// The rate at which `dir` grows between two instants `secs` apart.
fn rate(c: &Cluster, dir: &Path, secs: f64) -> f64 {
    let (b0, t0) = (bytes_in(c, dir), Instant::now());
    std::thread::sleep(Duration::from_secs_f64(secs));
    (bytes_in(c, dir) - b0) as f64 / t0.elapsed().as_secs_f64()
}

const MIB: f64 = 1024.0 * 1024.0;

#[test]
fn a_task_speed_limit_holds_across_two_clients_and_can_be_raised_while_it_runs() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..28u8 {
        std::fs::write(src.join(format!("part-{i:02}.bin")), vec![i; 20 << 20]).unwrap();
    }
    let tree = stats(&src);
    assert!(tree.bytes >= 400 << 20);
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let id = c.start_task(
        &src,
        &dst,
        &["--speed-limit", "20MiB/s", "--batch-files", "1"],
    );

    // Steady middle at 20 MiB/s: skip the first seconds, then measure over 6 s.
    std::thread::sleep(Duration::from_secs(3));
    let at20 = rate(&c, &dst, 6.0) / MIB;
    eprintln!("measured {at20:.1} MiB/s at a limit of 20 MiB/s");
    assert!(
        (15.0..=25.0).contains(&at20),
        "rate {at20:.1} MiB/s is not within 25% of 20 MiB/s"
    );

    let t = btp_json(&c.url, &["task", "set", &id, "--speed-limit", "40MiB/s"]);
    assert_eq!(t["options"]["speed_limit"], 40u64 << 20);
    std::thread::sleep(Duration::from_secs(5));
    let at40 = rate(&c, &dst, 4.0) / MIB;
    eprintln!("measured {at40:.1} MiB/s 5 s after raising the limit to 40 MiB/s");
    assert!(
        (30.0..=50.0).contains(&at40),
        "rate {at40:.1} MiB/s is not within 25% of 40 MiB/s"
    );

    wait_task(&c.url, &id, Duration::from_secs(120));
    assert_complete(&c.report(&id), &tree, &src, &dst);
    let shares = c.report(&id)["clients"].as_array().unwrap().len();
    assert_eq!(shares, 2, "both clients shared the work");
}

/// Milliseconds since the Unix epoch now.
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The UTC time of day of `ms` as a timetable writes it: `HH:MM:SS`.
fn time_of_day(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

/// Sleeps until `ms` since the Unix epoch.
fn sleep_until(ms: i64) {
    let left = ms - now_ms();
    if left > 0 {
        std::thread::sleep(Duration::from_millis(left as u64));
    }
}

/// The task's speed-limit gauge on the server's `/metrics`.
fn limit_gauge(addr: &str, id: &str) -> Option<f64> {
    http_get(addr, "/metrics")
        .lines()
        .find(|l| {
            l.starts_with("btp_server_task_speed_limit_bytes_per_second{")
                && l.contains(&format!("task=\"{id}\""))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[test]
fn a_timetable_switches_the_task_speed_limit_during_a_run_and_can_be_replaced() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    std::fs::create_dir_all(&src).unwrap();
    for i in 0..28u8 {
        std::fs::write(src.join(format!("part-{i:02}.bin")), vec![i; 20 << 20]).unwrap();
    }
    let tree = stats(&src);
    let port = btp_nats::launcher::free_port().unwrap();
    let metrics = format!("127.0.0.1:{port}");
    let mut c = Cluster::start(tmp.path(), &["--metrics-addr", &metrics]);
    // Few workers: each holds a chunk's bytes of debt in its client's bucket, so fewer of them
    // let the rate settle sooner after the start and after the switch.
    c.add_client(&["--workers", "2"]);
    c.add_client(&["--workers", "2"]);

    // 5 MiB/s from a second ago, 20 MiB/s from 30 s on (daily entries: this works across
    // midnight too).
    let begin = now_ms() / 1000 * 1000 - 1000;
    let switch = begin + 31_000;
    let timetable = format!(
        "{},20MiB/s {},5MiB/s",
        time_of_day(switch),
        time_of_day(begin)
    );
    let id = c.start_task(
        &src,
        &dst,
        &["--speed-limit", &timetable, "--batch-files", "1"],
    );
    let t = btp_json(&c.url, &["task", "get", &id]);
    assert!(
        t["options"]["speed_limit"]
            .as_str()
            .unwrap()
            .contains(&format!("{},5MiB/s", time_of_day(begin))),
        "{t}"
    );
    assert_eq!(t["speed_limit_now"]["bytes_per_sec"], 5u64 << 20, "{t}");
    assert_eq!(t["speed_limit_now"]["next_change"]["at_ms"], switch, "{t}");
    assert_eq!(
        t["speed_limit_now"]["next_change"]["bytes_per_sec"],
        20u64 << 20
    );
    let text = btp(&c.url, &["task", "get", &id]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("Limit now"), "{text}");
    assert!(text.contains("5.0 MiB/s; 20.0 MiB/s from"), "{text}");

    // The first window: skip the first seconds (the jobs' first shares are the whole limit until
    // the allocator's arrive), measure until 3 s before the switch.
    sleep_until(begin + 10_000);
    let at5 = rate(
        &c,
        &dst,
        ((switch - 3_000 - now_ms()) as f64 / 1000.0).max(4.0),
    ) / MIB;
    eprintln!("measured {at5:.1} MiB/s while the timetable says 5 MiB/s");
    assert!(
        (4.0..=6.0).contains(&at5),
        "rate {at5:.1} MiB/s is not within 20% of 5 MiB/s"
    );
    assert_eq!(limit_gauge(&metrics, &id), Some((5u64 << 20) as f64));

    // The second window, from 5 s after the switch.
    sleep_until(switch + 5_000);
    let at20 = rate(&c, &dst, 8.0) / MIB;
    eprintln!("measured {at20:.1} MiB/s after the switch to 20 MiB/s");
    assert!(
        (16.0..=24.0).contains(&at20),
        "rate {at20:.1} MiB/s is not within 20% of 20 MiB/s"
    );
    let t = btp_json(&c.url, &["task", "get", &id]);
    assert_eq!(t["state"], "running", "the task finished too early: {t}");
    assert_eq!(t["speed_limit_now"]["bytes_per_sec"], 20u64 << 20, "{t}");
    // Next change: the 5 MiB/s entry, tomorrow.
    assert_eq!(
        t["speed_limit_now"]["next_change"]["at_ms"],
        begin + 86_400_000
    );
    assert_eq!(limit_gauge(&metrics, &id), Some((20u64 << 20) as f64));

    // A new timetable replaces the one in force: off from now on, the rest copies unlimited.
    let off = format!(
        "{},off {},1MiB/s",
        time_of_day(now_ms() - 1000),
        time_of_day(now_ms() + 3_600_000)
    );
    let t = btp_json(&c.url, &["task", "set", &id, "--speed-limit", &off]);
    assert!(t["options"]["speed_limit"]
        .as_str()
        .unwrap()
        .contains(",off"));
    assert_eq!(
        t["speed_limit_now"]["bytes_per_sec"],
        serde_json::Value::Null
    );
    assert_eq!(
        t["speed_limit_now"]["next_change"]["bytes_per_sec"],
        1u64 << 20
    );
    let done = wait_task(&c.url, &id, Duration::from_secs(60));
    assert_eq!(done["state"], "completed");
    assert_complete(&c.report(&id), &tree, &src, &dst);
}

#[test]
fn a_bad_timetable_is_refused_with_the_entry_named() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    gen_tree(&src, 3, 1 << 10);
    let c = Cluster::start(tmp.path(), &[]);
    let out = btp(
        &c.url,
        &[
            "task",
            "create",
            "--src",
            src.to_str().unwrap(),
            "--dst",
            dst.to_str().unwrap(),
            "--speed-limit",
            "08:00,20MiB/s 25:00,off",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().next().unwrap_or_default();
    assert!(
        line.starts_with("error: ") && line.contains("invalid timetable entry '25:00,off'"),
        "{err}"
    );
    let l = btp_json(&c.url, &["task", "list"]);
    assert_eq!(l["tasks"].as_array().unwrap().len(), 0, "nothing created");

    let id = c.start_task(&src, &dst, &["--speed-limit", "10MiB/s"]);
    let out = btp(
        &c.url,
        &["task", "set", &id, "--speed-limit", "Mo-08:00,1MiB/s"],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .next()
            .unwrap_or_default()
            .contains("unknown day 'Mo'"),
        "{err}"
    );
}

/// GET `path` from `addr` with plain HTTP/1.0.
fn promtool() -> Option<&'static str> {
    let found = std::process::Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok();
    if !found && std::env::var_os("CI").is_some() {
        panic!("promtool is required under CI (apt-get install prometheus)");
    }
    found.then_some("promtool")
}

#[test]
fn server_and_client_metrics_pass_promtool_and_count_the_copy() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 300, 1 << 20);
    let (sp, cp) = (
        btp_nats::launcher::free_port().unwrap(),
        btp_nats::launcher::free_port().unwrap(),
    );
    let (saddr, caddr) = (format!("127.0.0.1:{sp}"), format!("127.0.0.1:{cp}"));
    let mut c = Cluster::start(tmp.path(), &["--metrics-addr", &saddr]);
    c.add_client(&["--workers", "2", "--metrics-addr", &caddr]);
    let id = c.start_task(&src, &dst, &[]);
    wait_task(&c.url, &id, Duration::from_secs(60));
    assert_complete(&c.report(&id), &tree, &src, &dst);
    std::thread::sleep(Duration::from_secs(3));

    let server = http_get(&saddr, "/metrics");
    let client = http_get(&caddr, "/metrics");
    let value = |text: &str, series: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(
        value(&server, "btp_server_files_copied_total "),
        tree.files as f64
    );
    assert_eq!(
        value(&server, "btp_server_bytes_copied_total "),
        tree.bytes as f64
    );
    assert_eq!(
        value(&server, "btp_server_tasks{state=\"completed\"} "),
        1.0
    );
    assert_eq!(value(&server, "btp_server_clients_online "), 1.0);
    assert_eq!(
        value(&client, "btp_client_files_copied_total "),
        tree.files as f64
    );
    assert_eq!(
        value(&client, "btp_client_bytes_copied_total "),
        tree.bytes as f64
    );
    assert_eq!(value(&client, "btp_client_workers "), 2.0);
    assert!(client.contains("btp_client_job_duration_seconds_bucket{kind=\"copy\""));

    let Some(promtool) = promtool() else {
        eprintln!("promtool not installed: skipping the lint");
        return;
    };
    for (name, text) in [("server", &server), ("client", &client)] {
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics failed for the {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
