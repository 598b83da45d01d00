//! The second remote backend, WebDAV, end to end against a real WebDAV server (wsgidav, started
//! here on a free port over a temporary directory): fs -> WebDAV, WebDAV -> fs and WebDAV ->
//! WebDAV of a tree with a large file whose parts run on both clients, checksum verified; a
//! re-run copies nothing, a touched file is copied again, sync deletes, a file corrupted behind
//! the tool's back is caught.

mod support;

use std::time::Duration;

use support::*;

/// Starts wsgidav over `root` on a free port, or None (skip) when it is not installed outside CI.
fn start_wsgidav(dir: &std::path::Path, root: &std::path::Path) -> Option<(Service, u16)> {
    std::fs::create_dir_all(root).unwrap();
    let root = format!("--root={}", root.display());
    let args = [
        "-H",
        "127.0.0.1",
        "-p",
        "{port}",
        "--auth=anonymous",
        "-q",
        &root,
    ];
    start_service("wsgidav", &args, dir, "pip install wsgidav cheroot")
}

#[test]
fn files_move_between_a_file_system_and_webdav_byte_for_byte() {
    let tmp = test_dir();
    let served = tmp.path().join("served");
    let Some((_dav, port)) = start_wsgidav(tmp.path(), &served) else {
        return;
    };
    let big_mib: u64 = std::env::var("BTP_DAV_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(384);
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 200, big_mib << 20);
    std::fs::remove_dir(src.join("empty-dir")).unwrap();

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let run = |src: &str, dst: &str, extra: &[&str]| -> serde_json::Value {
        let mut args = vec!["task", "create", "--src", src, "--dst", dst, "--start"];
        args.extend_from_slice(extra);
        let t = btp_json(&c.url, &args);
        let id = t["id"].as_str().unwrap().to_string();
        let started = std::time::Instant::now();
        wait_task(&c.url, &id, Duration::from_secs(600));
        eprintln!("{src} -> {dst}: {:.1} s", started.elapsed().as_secs_f64());
        c.report(&id)
    };
    let url = format!("webdav://127.0.0.1:{port}/mirror/data");
    let on_server = served.join("mirror/data");
    let s = src.to_str().unwrap();
    // Twelve parts: enough that both clients take some whatever the order of their pulls.
    let checksum = ["--verify", "checksum", "--part-size", "32MiB"];

    // fs -> WebDAV: what the server stores is the tree, byte for byte.
    let up = run(s, &url, &checksum);
    assert_eq!(up["task"]["state"], "completed", "{up}");
    assert_eq!(up["task"]["files_copied"], tree.files);
    assert_eq!(up["task"]["bytes_copied"], tree.bytes);
    assert_eq!(up["task"]["dst"], url.as_str());
    assert_same_tree(&src, &on_server);
    let clients = clients_that_copied_parts(tmp.path(), "big file.bin");
    assert_eq!(
        clients.len(),
        2,
        "parts of the large file ran on {clients:?}"
    );

    // WebDAV -> fs
    let back = tmp.path().join("back");
    let down = run(&url, back.to_str().unwrap(), &checksum);
    assert_eq!(down["task"]["state"], "completed", "{down}");
    assert_same_tree(&src, &back);

    // WebDAV -> WebDAV, into another directory of the server.
    let other = format!("webdav://127.0.0.1:{port}/copy");
    let across = run(&url, &other, &checksum);
    assert_eq!(across["task"]["state"], "completed", "{across}");
    assert_eq!(across["task"]["files_copied"], tree.files);
    assert_same_tree(&src, &served.join("copy"));

    // Unchanged: nothing is sent again; a touched file, and only it, is.
    let again = run(s, &url, &[]);
    assert_eq!(again["task"]["bytes_copied"], 0, "{again}");
    assert_eq!(again["task"]["files_skipped"], tree.files);
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::File::options()
        .write(true)
        .open(src.join("with space.txt"))
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let again = run(s, &url, &[]);
    assert_eq!(again["task"]["files_copied"], 1, "{again}");
    assert_eq!(again["task"]["files_skipped"], tree.files - 1);

    // Sync deletes what the source no longer has.
    std::fs::remove_file(src.join("hash#1.txt")).unwrap();
    let synced = run(s, &url, &["--mode", "sync"]);
    assert_eq!(synced["task"]["files_deleted"], 1, "{synced}");
    assert!(!on_server.join("hash#1.txt").exists());
    assert_same_tree(&src, &on_server);

    // A file corrupted on the server (same size, other bytes) is caught by its checksum.
    let victim = on_server.join("percent%20.txt");
    let original = std::fs::read(&victim).unwrap();
    let corrupt: Vec<u8> = original.iter().map(|b| b ^ 0x5a).collect();
    std::fs::write(&victim, &corrupt).unwrap();
    let healed = run(s, &url, &["--compare", "checksum", "--verify", "checksum"]);
    assert_eq!(healed["task"]["state"], "completed", "{healed}");
    assert_eq!(healed["task"]["files_copied"], 1, "{healed}");
    assert_eq!(std::fs::read(&victim).unwrap(), original);
    assert_same_tree(&src, &on_server);
}

#[test]
fn a_webdav_password_from_a_file_logs_in_and_shows_nowhere() {
    let tmp = test_dir();
    let served = tmp.path().join("served");
    std::fs::create_dir_all(&served).unwrap();
    let secret = "dav-pa55-Zq8-never-printed";
    // wsgidav with one user, Basic authentication only.
    let conf = tmp.path().join("wsgidav.json");
    let config = serde_json::json!({
        "http_authenticator": {
            "accept_basic": true,
            "accept_digest": false,
            "default_to_digest": false,
            "trusted_auth_header": null,
        },
        "simple_dc": {"user_mapping": {"*": {"alice": {"password": secret}}}},
    });
    std::fs::write(&conf, config.to_string()).unwrap();
    let root = format!("--root={}", served.display());
    let conf_arg = format!("--config={}", conf.display());
    let args = ["-H", "127.0.0.1", "-p", "{port}", &conf_arg, "-q", &root];
    let Some((_dav, port)) =
        start_service("wsgidav", &args, tmp.path(), "pip install wsgidav cheroot")
    else {
        return;
    };
    // The server wants the password.
    let anonymous = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut a = String::new();
        s.read_to_string(&mut a).unwrap();
        a
    };
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");

    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 30, 0);
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    let file = tmp.path().join("dav.password");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let password = format!("password=@{}", file.display());
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2"]);
    let url = format!("webdav://127.0.0.1:{port}/in");
    let args = [
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        &url,
        "--dst-opt",
        "username=alice",
        "--dst-opt",
        &password,
        "--start",
        "--output",
        "json",
    ];
    let out = btp(&c.url, &args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = String::from_utf8_lossy(&out.stdout).to_string();
    let id = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let ps = std::process::Command::new("ps")
        .args(["-eo", "args"])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout).to_string();
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["state"], "completed", "{t}");
    assert_eq!(t["files_copied"], tree.files, "{t}");
    let files = tree_files(&src);
    assert_eq!(tree_files(&served.join("in")), files);
    let report = c.report(&id).to_string();
    let info =
        String::from_utf8_lossy(&btp(&c.url, &["task", "get", &id, "--output", "json"]).stdout)
            .to_string();
    for (what, text) in [
        ("ps -eo args", &ps),
        ("the create answer", &answer),
        ("the report", &report),
        ("task get", &info),
    ] {
        assert!(!text.contains(secret), "{what} shows the password");
    }
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") && !p.ends_with("wsgidav.log") {
            assert!(
                !std::fs::read_to_string(&p).unwrap().contains(secret),
                "{} shows the password",
                p.display()
            );
        }
    }
}
