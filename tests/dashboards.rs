//! Every PromQL expression of every dashboard under `grafana/dashboards` is evaluated against a
//! real Prometheus that scrapes a running cluster (server and client, `--metrics-addr`) while a
//! task copies, and must return data. A dashboard can never drift from the metrics.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

fn http_get(addr: &str, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string())
}

/// Every query of a dashboard: panel targets, and the metric behind each `label_values(...)`.
fn queries(dashboard: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            out.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for v in dashboard["templating"]["list"].as_array().unwrap() {
        let q = v["definition"].as_str().unwrap();
        let inner = q
            .strip_prefix("label_values(")
            .and_then(|r| r.split(',').next())
            .unwrap();
        out.push(inner.trim().to_string());
    }
    out
}

#[test]
fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    let prometheus = if Command::new("prometheus").arg("--version").output().is_ok() {
        "prometheus"
    } else if std::env::var_os("CI").is_some() {
        panic!("prometheus is required under CI (apt-get install prometheus)");
    } else {
        eprintln!("prometheus not installed: skipping");
        return;
    };
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    gen_tree(&src, 600, 0);
    for i in 0..6u8 {
        std::fs::write(src.join(format!("big-{i}.bin")), vec![i; 8 << 20]).unwrap();
    }
    let port = || btp_nats::launcher::free_port().unwrap();
    let (saddr, caddr, paddr) = (
        format!("127.0.0.1:{}", port()),
        format!("127.0.0.1:{}", port()),
        format!("127.0.0.1:{}", port()),
    );
    let mut c = Cluster::start(tmp.path(), &["--metrics-addr", &saddr]);
    c.add_client(&["--workers", "2", "--metrics-addr", &caddr]);

    let config = tmp.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: btp-server\n    static_configs:\n      - targets: [\"{saddr}\"]\n  - job_name: btp-client\n    static_configs:\n      - targets: [\"{caddr}\"]\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let mut prom = Command::new(prometheus)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            tmp.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={paddr}"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let _kill = KillOnDrop(&mut prom);

    // A task slow enough to be copying while Prometheus scrapes.
    let id = c.start_task(
        &src,
        &dst,
        &["--speed-limit", "4MiB/s", "--batch-files", "20"],
    );
    let dashboards: Vec<_> =
        std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("grafana/dashboards"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
    assert!(dashboards.len() >= 2, "cluster overview and task detail");
    let mut checked = 0;
    for path in &dashboards {
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for q in queries(&dashboard) {
            let q = q.replace("$task", &id).replace("$__rate_interval", "1m");
            let url = format!("/api/v1/query?query={}", urlencode(&q));
            wait_for(
                &format!("data for {q} ({})", path.display()),
                Duration::from_secs(60),
                || {
                    let body = http_get(&paddr, &url)?;
                    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
                    assert_ne!(v["status"], "error", "{q}: {body}");
                    (!v["data"]["result"].as_array()?.is_empty()).then_some(())
                },
            );
            checked += 1;
        }
    }
    eprintln!("{checked} dashboard queries returned data");
    let t = btp_json(&c.url, &["task", "get", &id]);
    assert_eq!(
        t["state"], "running",
        "the task was still copying while the queries ran"
    );
}

struct KillOnDrop<'a>(&'a mut std::process::Child);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
