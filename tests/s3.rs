//! S3-compatible object storage, end to end against a real S3 server (moto, started here on a
//! free port): fs -> S3, S3 -> S3 across buckets, S3 -> fs, byte-identical; a re-run copies
//! nothing; a missing bucket is refused; secrets never show.

mod support;

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::*;

const SECRET: &str = "s3cr3t-never-printed";

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts moto's S3 server on a free port, or None (skip) when it is not installed outside CI.
fn start_moto(dir: &std::path::Path) -> Option<(Moto, u16)> {
    if Command::new("moto_server")
        .arg("--help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        if std::env::var_os("CI").is_some() {
            panic!("moto_server is required under CI (pip install 'moto[server]')");
        }
        eprintln!("moto_server not installed: skipping");
        return None;
    }
    let port = btp_nats::launcher::free_port().unwrap();
    let log = std::fs::File::create(dir.join("moto.log")).unwrap();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let moto = Moto(child);
    wait_for("moto to listen", Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    Some((moto, port))
}

fn create_bucket(port: u16, name: &str) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "create bucket {name}: {answer}"
    );
}

#[test]
fn files_move_between_a_file_system_and_s3_buckets_byte_for_byte() {
    let tmp = test_dir();
    let Some((_moto, port)) = start_moto(tmp.path()) else {
        return;
    };
    create_bucket(port, "bucket-a");
    create_bucket(port, "bucket-b");
    let big_mib: u64 = std::env::var("BTP_S3_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96);
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 300, big_mib << 20);
    // Object stores hold no empty directories.
    std::fs::remove_dir(src.join("empty-dir")).unwrap();

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    let endpoint = format!("endpoint=http://127.0.0.1:{port}");
    let secret = format!("secret_access_key={SECRET}");
    let opts = |side: &str| -> Vec<String> {
        [
            "endpoint",
            "region=us-east-1",
            "access_key_id=test",
            "secret",
        ]
        .iter()
        .flat_map(|o| {
            let value = match *o {
                "endpoint" => endpoint.clone(),
                "secret" => secret.clone(),
                other => other.to_string(),
            };
            [format!("--{side}-opt"), value]
        })
        .collect()
    };
    let run = |src: &str, dst: &str, extra: Vec<String>| -> serde_json::Value {
        let mut args: Vec<String> = ["task", "create", "--src", src, "--dst", dst, "--start"]
            .map(String::from)
            .to_vec();
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let t = btp_json(&c.url, &args);
        let id = t["id"].as_str().unwrap().to_string();
        wait_task(&c.url, &id, Duration::from_secs(180));
        c.report(&id)
    };

    // fs -> S3
    let up = run(src.to_str().unwrap(), "s3://bucket-a/data", opts("dst"));
    assert_eq!(up["task"]["state"], "completed", "{up}");
    assert_eq!(up["task"]["files_copied"], tree.files);
    assert_eq!(up["task"]["bytes_copied"], tree.bytes);
    assert_eq!(up["task"]["dst"], "s3://bucket-a/data");

    // S3 -> S3, another bucket
    let mut both = opts("src");
    both.extend(opts("dst"));
    let across = run("s3://bucket-a/data", "s3://bucket-b/copy", both);
    assert_eq!(across["task"]["state"], "completed", "{across}");
    assert_eq!(across["task"]["files_copied"], tree.files);

    // S3 -> fs, then compare with the original tree
    let back = tmp.path().join("back");
    let down = run("s3://bucket-b/copy", back.to_str().unwrap(), opts("src"));
    assert_eq!(down["task"]["state"], "completed", "{down}");
    assert_same_tree(&src, &back);

    // Unchanged: nothing is uploaded again.
    let again = run(src.to_str().unwrap(), "s3://bucket-a/data", opts("dst"));
    assert_eq!(again["task"]["bytes_copied"], 0);
    assert_eq!(again["task"]["files_skipped"], tree.files);

    // A missing bucket is refused at create time, and nothing is stored.
    let before = btp_json(&c.url, &["task", "list"])["tasks"]
        .as_array()
        .unwrap()
        .len();
    let mut args = vec![
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        "s3://no-such-bucket/x",
    ];
    let extra = opts("dst");
    args.extend(extra.iter().map(|s| s.as_str()));
    let out = btp(&c.url, &args);
    assert!(!out.status.success());
    let line = error_line(&out);
    assert!(
        line.contains("s3://no-such-bucket/x does not exist"),
        "{line}"
    );
    assert_eq!(
        btp_json(&c.url, &["task", "list"])["tasks"]
            .as_array()
            .unwrap()
            .len(),
        before
    );

    // The secret never shows: not in the API answers, not in the logs.
    let listed =
        String::from_utf8(btp(&c.url, &["task", "list", "--output", "json"]).stdout).unwrap();
    assert!(!listed.contains(SECRET));
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") && !p.ends_with("moto.log") {
            assert!(
                !std::fs::read_to_string(&p).unwrap().contains(SECRET),
                "{} shows the secret",
                p.display()
            );
        }
    }
}
