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
