//! The HTTP side plays the attacker: a web page of another origin (CSRF with a `text/plain`
//! POST, a forged `Origin`, `Sec-Fetch-Site: cross-site`) and a DNS-rebinding page (a foreign
//! `Host`), with and without the console token, against a real server and a real
//! `btp standalone`. Each request is refused (403, or 415 for a body that is not JSON) and
//! changes nothing; the same request from the console's own origin works.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

/// A raw HTTP/1.1 POST with exactly these headers (and a Content-Length); status and body.
fn raw_post(addr: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut req = format!("POST {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    s.write_all(req.as_bytes()).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// Headers of a request.
type Headers<'a> = Vec<(&'a str, &'a str)>;

/// The attacks, each with the status it must get: (what, headers, status).
fn attacks<'a>(
    addr: &'a str,
    auth: &'a [(&'a str, &'a str)],
) -> Vec<(&'static str, Headers<'a>, u16)> {
    let json = ("Content-Type", "application/json");
    let own = ("Host", addr);
    let with = |extra: &[(&'a str, &'a str)]| {
        let mut h: Vec<(&str, &str)> = extra.to_vec();
        h.extend_from_slice(auth);
        h
    };
    vec![
        (
            "a text/plain POST (a form or a no-cors fetch)",
            with(&[own, ("Content-Type", "text/plain")]),
            415,
        ),
        ("a POST without a content type", with(&[own]), 415),
        (
            "a POST from http://evil.example",
            with(&[own, json, ("Origin", "http://evil.example")]),
            403,
        ),
        (
            "a POST from another port of localhost",
            with(&[own, json, ("Origin", "http://127.0.0.1:1")]),
            403,
        ),
        (
            "a POST with Origin: null",
            with(&[own, json, ("Origin", "null")]),
            403,
        ),
        (
            "a cross-site fetch",
            with(&[own, json, ("Sec-Fetch-Site", "cross-site")]),
            403,
        ),
        (
            "a DNS-rebinding page (foreign Host, its own Origin)",
            with(&[
                ("Host", "evil.example:80"),
                json,
                ("Origin", "http://evil.example:80"),
            ]),
            403,
        ),
        (
            "a foreign Host",
            with(&[("Host", "evil.example"), json]),
            403,
        ),
        ("no Host", with(&[json]), 403),
    ]
}

fn task_create_body(tmp: &std::path::Path) -> String {
    let src = tmp.join("home");
    gen_tree(&src, 3, 0);
    serde_json::json!({
        "src": path(&src),
        "dst": path(&tmp.join("exfiltrated")),
        "start": true,
    })
    .to_string()
}

fn path(p: &std::path::Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn cross_origin_rebinding_and_non_json_requests_are_refused_and_change_nothing() {
    let tmp = test_dir();
    let addr = format!("127.0.0.1:{}", btp_nats::launcher::free_port().unwrap());
    let c = Cluster::start(
        tmp.path(),
        &[
            "--http-addr",
            &addr,
            "--http-allowed-host",
            "btp.example",
            "--http-allowed-host",
            "other.example:8443",
        ],
    );
    let body = task_create_body(tmp.path());
    for (what, headers, status) in attacks(&addr, &[]) {
        let (got, answer) = raw_post(&addr, "/api/v1/task.create", &headers, &body);
        assert_eq!(got, status, "{what}: {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).expect("a JSON answer");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("refused: "),
            "{v}"
        );
    }
    // A DNS-rebinding page cannot read the console either.
    let (got, _) = raw_post(&addr, "/", &[("Host", "evil.example")], "");
    assert_eq!(got, 403);
    let tasks = btp_json(&c.url, &["task", "list"]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");
    assert!(!tmp.path().join("exfiltrated").exists());

    // The console's own origin, under each of its names, and a client without Origin.
    let own = format!("http://{addr}");
    let localhost = addr.replace("127.0.0.1", "localhost");
    let local_origin = format!("http://{localhost}");
    let json = ("Content-Type", "application/json; charset=utf-8");
    for headers in [
        vec![("Host", addr.as_str()), json, ("Origin", own.as_str())],
        vec![
            ("Host", addr.as_str()),
            json,
            ("Origin", own.as_str()),
            ("Sec-Fetch-Site", "same-origin"),
        ],
        vec![
            ("Host", localhost.as_str()),
            json,
            ("Origin", local_origin.as_str()),
        ],
        vec![
            ("Host", "btp.example"),
            json,
            ("Origin", "https://btp.example"),
        ],
        vec![("Host", "BTP.example:8470"), json],
        vec![("Host", "other.example:8443"), json],
        vec![("Host", addr.as_str()), json],
    ] {
        let (got, answer) = raw_post(&addr, "/api/v1/task.list", &headers, "{}");
        assert_eq!(got, 200, "{headers:?}: {answer}");
    }
    let (got, _) = raw_post(
        &addr,
        "/api/v1/task.list",
        &[("Host", "other.example:1"), json],
        "{}",
    );
    assert_eq!(
        got, 403,
        "a configured name with a port takes only that port"
    );
    let (got, answer) = raw_post(
        &addr,
        "/api/v1/task.create",
        &[("Host", addr.as_str()), json, ("Origin", own.as_str())],
        &body,
    );
    assert_eq!(got, 200, "{answer}");
    let tasks = btp_json(&c.url, &["task", "list"]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 1, "{tasks}");
}

/// `btp standalone` on a free port; its stdout's lines until the console's, and the process.
fn standalone(dir: &std::path::Path, extra: &[&str]) -> (std::process::Child, String, String) {
    let addr = format!("127.0.0.1:{}", btp_nats::launcher::free_port().unwrap());
    let mut child = Command::new(btp_bin())
        .args([
            "standalone",
            "--data-dir",
            path(&dir.join("data")),
            "--http-addr",
            &addr,
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("standalone.log")).unwrap())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut console = String::new();
    let mut nats = String::new();
    for _ in 0..20 {
        let mut line = String::new();
        if out.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(u) = line.strip_prefix("NATS URL: ") {
            nats = u.trim().to_string();
        }
        if let Some(c) = line.strip_prefix("Console: ") {
            console = c.trim().to_string();
            break;
        }
    }
    assert!(
        !console.is_empty() && !nats.is_empty(),
        "standalone printed no console URL"
    );
    // Keep reading its output so it never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
    (child, nats, console)
}

/// Stops standalone with SIGTERM when dropped, so it stops its nats-server too.
struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        let _ = self.0.wait();
    }
}

#[test]
fn standalone_prints_a_console_token_and_refuses_attacks_with_and_without_it() {
    let tmp = test_dir();
    let (child, nats, console) = standalone(tmp.path(), &[]);
    let _stop = Kill(child);
    let (base, token) = console
        .split_once("/?token=")
        .unwrap_or_else(|| panic!("no token in the console URL: {console}"));
    assert!(token.starts_with("btp_") && token.len() > 40, "{console}");
    let addr = base.strip_prefix("http://").unwrap().to_string();
    wait_for("the console", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).ok()
    });
    let bearer = format!("Bearer {token}");
    let body = task_create_body(tmp.path());
    let json = ("Content-Type", "application/json");
    let own = ("Host", addr.as_str());
    let origin = ("Origin", base);

    // Without the token, or with a wrong one, even from the console's own origin: 401.
    for auth in [None, Some("Bearer btp_wrong"), Some("Bearer ")] {
        let mut h = vec![own, json, origin];
        h.extend(auth.map(|a| ("Authorization", a)));
        let (got, answer) = raw_post(&addr, "/api/v1/task.create", &h, &body);
        assert_eq!(got, 401, "{auth:?}: {answer}");
        assert!(answer.contains("unauthenticated"), "{answer}");
    }
    // With the token, every attack is still refused.
    let auth = [("Authorization", bearer.as_str())];
    for (what, headers, status) in attacks(&addr, &auth) {
        let (got, answer) = raw_post(&addr, "/api/v1/task.create", &headers, &body);
        assert_eq!(got, status, "{what}: {answer}");
    }
    let tasks = btp_json(&nats, &["task", "list"]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");
    assert!(!tmp.path().join("exfiltrated").exists());
    // The console page itself holds no data and is served without the token.
    assert!(http_get(&addr, "/").contains("/console.js"));

    // The console's own origin with the token: the task is created and runs.
    let (got, answer) = raw_post(
        &addr,
        "/api/v1/task.create",
        &[own, json, origin, ("Authorization", bearer.as_str())],
        &body,
    );
    assert_eq!(got, 200, "{answer}");
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let id = v["ok"]["id"].as_str().unwrap();
    let t = wait_task(&nats, id, Duration::from_secs(60));
    assert_eq!(t["state"], "completed", "{t}");
    // The token is in no command line.
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&ps.stdout).contains(token));
}

#[test]
fn standalone_with_http_no_token_still_refuses_other_origins() {
    let tmp = test_dir();
    let (child, nats, console) = standalone(tmp.path(), &["--http-no-token"]);
    let _stop = Kill(child);
    assert!(!console.contains("token="), "{console}");
    let addr = console
        .strip_prefix("http://")
        .and_then(|c| c.split('/').next())
        .unwrap()
        .to_string();
    wait_for("the console", Duration::from_secs(30), || {
        std::net::TcpStream::connect(&addr).ok()
    });
    let body = task_create_body(tmp.path());
    for (what, headers, status) in attacks(&addr, &[]) {
        let (got, answer) = raw_post(&addr, "/api/v1/task.create", &headers, &body);
        assert_eq!(got, status, "{what}: {answer}");
    }
    let tasks = btp_json(&nats, &["task", "list"]);
    assert_eq!(tasks["tasks"].as_array().unwrap().len(), 0, "{tasks}");
    let (got, answer) = raw_post(
        &addr,
        "/api/v1/task.list",
        &[
            ("Host", addr.as_str()),
            ("Content-Type", "application/json"),
        ],
        "{}",
    );
    assert_eq!(got, 200, "{answer}");
}
