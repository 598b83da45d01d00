//! S3-compatible object storage, end to end against two real S3 servers started here on free
//! ports, moto (a Python emulator) and SeaweedFS (a production server written in Go), every test
//! body run against both: fs -> S3, S3 -> S3 across buckets, S3 -> fs, byte-identical and
//! checksum verified, the large file in parts on both clients and uploaded once; re-runs copy
//! nothing, a touched file is copied again, sync deletes (and its dry run only reports), a
//! corrupted object is caught; a whole file whose checksum mismatches is uploaded once more,
//! then failed; cancelling a multipart copy leaves no upload behind; upload listings are paged;
//! a missing bucket is refused; secrets never show.

mod support;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use support::*;

const SECRET: &str = "s3cr3t-never-printed";

/// The S3 servers every test body runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Server {
    Moto,
    Seaweedfs,
}

impl Server {
    /// Starts the server on free ports; None (skip) when it is not installed outside CI.
    fn start(self, dir: &Path) -> Option<(Service, u16)> {
        match self {
            Server::Moto => start_moto(dir),
            Server::Seaweedfs => start_seaweedfs(dir),
        }
    }

    /// The server's own log (it may show what we sent it, keys included).
    fn log(self) -> &'static str {
        match self {
            Server::Moto => "moto_server.log",
            Server::Seaweedfs => "weed.log",
        }
    }
}

/// A plain PUT (both servers take unsigned requests for new buckets and objects when, as here,
/// they have no identities configured; AWS would refuse them).
fn put(port: u16, path: &str, body: &[u8]) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    // moto refuses an unsigned object PUT without a content type.
    write!(s, "PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "PUT {path}: {answer}");
}

fn create_bucket(port: u16, name: &str) {
    put(port, &format!("/{name}"), b"");
}

/// The S3 endpoint of a bucket on the server, as tasks see it.
fn endpoint(port: u16, url: &str) -> btp_common::Endpoint {
    let opts = [
        ("endpoint", format!("http://127.0.0.1:{port}")),
        ("region", "us-east-1".into()),
        ("access_key_id", "test".into()),
        ("secret_access_key", SECRET.into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    btp_common::Endpoint::parse_with(url, &opts).unwrap()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// `--src-opt`/`--dst-opt` arguments for the server.
fn opts(port: u16, side: &str) -> Vec<String> {
    [
        format!("endpoint=http://127.0.0.1:{port}"),
        "region=us-east-1".into(),
        "access_key_id=test".into(),
        format!("secret_access_key={SECRET}"),
    ]
    .into_iter()
    .flat_map(|o| [format!("--{side}-opt"), o])
    .collect()
}

#[test]
fn files_move_between_a_file_system_and_s3_buckets_byte_for_byte_on_moto() {
    files_move_byte_for_byte(Server::Moto);
}

/// The acceptance run on a production S3 server: fs -> SeaweedFS -> SeaweedFS -> fs with a
/// 1 GiB file (`BTP_S3_BIG_MIB` overrides the size), checksum verified, byte-identical, the
/// large file uploaded once.
#[test]
fn files_move_between_a_file_system_and_s3_buckets_byte_for_byte_on_seaweedfs() {
    files_move_byte_for_byte(Server::Seaweedfs);
}

fn files_move_byte_for_byte(server: Server) {
    let tmp = test_dir();
    let Some((_server, port)) = server.start(tmp.path()) else {
        return;
    };
    create_bucket(port, "bucket-a");
    create_bucket(port, "bucket-b");
    // 1 GiB on SeaweedFS (the acceptance run); moto, which keeps objects in a Python process
    // and copies a whole object for every ranged read, gets a quarter of that.
    let big_mib: u64 = std::env::var("BTP_S3_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(match server {
            Server::Seaweedfs => 1024,
            Server::Moto => 256,
        });
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 300, big_mib << 20);
    // Object stores hold no empty directories.
    std::fs::remove_dir(src.join("empty-dir")).unwrap();

    let key = tmp.path().join("secret.key");
    let metrics: Vec<String> = (0..3)
        .map(|_| format!("127.0.0.1:{}", btp_nats::launcher::free_port().unwrap()))
        .collect();
    let mut c = Cluster::start(
        tmp.path(),
        &[
            "--secret-key-file",
            key.to_str().unwrap(),
            "--metrics-addr",
            &metrics[0],
        ],
    );
    c.add_client(&["--workers", "4", "--metrics-addr", &metrics[1]]);
    c.add_client(&["--workers", "4", "--metrics-addr", &metrics[2]]);
    let run = |src: &str, dst: &str, extra: Vec<String>| -> serde_json::Value {
        let mut args: Vec<String> = ["task", "create", "--src", src, "--dst", dst, "--start"]
            .map(String::from)
            .to_vec();
        args.extend(extra);
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let t = btp_json(&c.url, &args);
        let id = t["id"].as_str().unwrap().to_string();
        let started = std::time::Instant::now();
        wait_task(&c.url, &id, Duration::from_secs(600));
        eprintln!("{src} -> {dst}: {:.1} s", started.elapsed().as_secs_f64());
        c.report(&id)
    };
    let with = |mut a: Vec<String>, extra: &[&str]| {
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let checksum = ["--verify", "checksum"];
    let big = "big file.bin";
    let mut part_logs = Vec::new();

    // fs -> S3
    let up = run(
        src.to_str().unwrap(),
        "s3://bucket-a/data",
        with(opts(port, "dst"), &checksum),
    );
    assert_eq!(up["task"]["state"], "completed", "{up}");
    assert_eq!(up["task"]["files_copied"], tree.files);
    assert_eq!(up["task"]["bytes_copied"], tree.bytes);
    assert_eq!(up["task"]["dst"], "s3://bucket-a/data");
    uploaded_once(&up, tree.bytes);
    part_logs.push(clients_that_copied_parts(tmp.path(), big));

    // S3 -> S3, another bucket. moto copies a whole object for every ranged read, so reading
    // from it uses fewer, larger parts.
    let big_parts = ["--verify", "checksum", "--part-size", "256MiB"];
    let mut both = opts(port, "src");
    both.extend(opts(port, "dst"));
    let across = run(
        "s3://bucket-a/data",
        "s3://bucket-b/copy",
        with(both, &big_parts),
    );
    assert_eq!(across["task"]["state"], "completed", "{across}");
    assert_eq!(across["task"]["files_copied"], tree.files);
    uploaded_once(&across, tree.bytes);

    // S3 -> fs, then compare with the original tree
    let back = tmp.path().join("back");
    let down = run(
        "s3://bucket-b/copy",
        back.to_str().unwrap(),
        with(opts(port, "src"), &big_parts),
    );
    assert_eq!(down["task"]["state"], "completed", "{down}");
    uploaded_once(&down, tree.bytes);
    assert_same_tree(&src, &back);
    // Every run split the large file into parts, and both clients copied some of them.
    assert!(
        part_logs[0].len() == 2,
        "parts of {big} ran on {:?}",
        part_logs[0]
    );
    let all = clients_that_copied_parts(tmp.path(), big);
    assert_eq!(all.len(), 2, "{all:?}");

    // Unchanged: nothing is uploaded again.
    let again = run(
        src.to_str().unwrap(),
        "s3://bucket-a/data",
        opts(port, "dst"),
    );
    assert_eq!(again["task"]["bytes_copied"], 0);
    assert_eq!(again["task"]["files_skipped"], tree.files);

    // A touched file, and only it, is copied again.
    let touched = src.join("with space.txt");
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::File::options()
        .write(true)
        .open(&touched)
        .unwrap()
        .set_modified(std::time::SystemTime::now())
        .unwrap();
    let again = run(
        src.to_str().unwrap(),
        "s3://bucket-a/data",
        opts(port, "dst"),
    );
    assert_eq!(again["task"]["files_copied"], 1, "{again}");
    assert_eq!(again["task"]["files_skipped"], tree.files - 1);

    // Sync: a file deleted from the source goes from the destination too; a dry run only
    // says so.
    let gone = "hash#1.txt";
    std::fs::remove_file(src.join(gone)).unwrap();
    let bucket = endpoint(port, "s3://bucket-a/data").operator().unwrap();
    let sync = ["--mode", "sync"];
    let dry = run(
        src.to_str().unwrap(),
        "s3://bucket-a/data",
        with(opts(port, "dst"), &["--mode", "sync", "--dry-run"]),
    );
    assert_eq!(dry["task"]["files_deleted"], 1, "{dry}");
    assert_eq!(dry["changes"][0]["action"], "delete", "{dry}");
    assert_eq!(dry["changes"][0]["path"], gone, "{dry}");
    assert!(block_on(bucket.exists(gone)).unwrap(), "a dry run deleted");
    let synced = run(
        src.to_str().unwrap(),
        "s3://bucket-a/data",
        with(opts(port, "dst"), &sync),
    );
    assert_eq!(synced["task"]["state"], "completed", "{synced}");
    assert_eq!(synced["task"]["files_deleted"], 1, "{synced}");
    assert_eq!(synced["task"]["bytes_copied"], 0);
    assert!(!block_on(bucket.exists(gone)).unwrap(), "sync left {gone}");

    // An object corrupted behind the tool's back (same size, other bytes) is found by its
    // checksum and copied again.
    let victim = "percent%20.txt";
    let original = std::fs::read(src.join(victim)).unwrap();
    let corrupt: Vec<u8> = original.iter().map(|b| b ^ 0xff).collect();
    block_on(bucket.write(victim, corrupt.clone())).unwrap();
    assert_eq!(block_on(bucket.read(victim)).unwrap().to_vec(), corrupt);
    let healed = run(
        src.to_str().unwrap(),
        "s3://bucket-a/data",
        with(
            opts(port, "dst"),
            &["--compare", "checksum", "--verify", "checksum"],
        ),
    );
    assert_eq!(healed["task"]["state"], "completed", "{healed}");
    assert_eq!(healed["task"]["files_copied"], 1, "{healed}");
    assert_eq!(healed["task"]["files_skipped"], tree.files - 2);
    assert_eq!(block_on(bucket.read(victim)).unwrap().to_vec(), original);

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
    let extra = opts(port, "dst");
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

    // The secret never shows: not in the API answers, not in the logs, not in the store (sealed
    // with the server's key).
    let mut stored = 0;
    for entry in std::fs::read_dir(tmp.path().join("server")).unwrap() {
        let p = entry.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        stored += bytes.len();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret in the clear",
            p.display()
        );
    }
    assert!(stored > 0, "the store was found");
    for report in [&up, &across, &down] {
        assert!(
            !report.to_string().contains(SECRET),
            "a report shows the secret"
        );
    }
    for addr in &metrics {
        let m = http_get(addr, "/metrics");
        assert!(m.contains("btp_"), "metrics of {addr}");
        assert!(!m.contains(SECRET), "the metrics of {addr} show the secret");
    }
    let listed =
        String::from_utf8(btp(&c.url, &["task", "list", "--output", "json"]).stdout).unwrap();
    assert!(!listed.contains(SECRET));
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") && !p.ends_with(server.log()) {
            assert!(
                !std::fs::read_to_string(&p).unwrap().contains(SECRET),
                "{} shows the secret",
                p.display()
            );
        }
    }
}

#[test]
fn cancelling_a_multipart_copy_leaves_no_upload_on_the_store_on_moto() {
    cancelling_leaves_no_upload(Server::Moto);
}

#[test]
fn cancelling_a_multipart_copy_leaves_no_upload_on_the_store_on_seaweedfs() {
    cancelling_leaves_no_upload(Server::Seaweedfs);
}

fn cancelling_leaves_no_upload(server: Server) {
    let tmp = test_dir();
    let Some((_server, port)) = server.start(tmp.path()) else {
        return;
    };
    create_bucket(port, "bucket-c");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let big = src.join("huge.bin");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(256 << 20).unwrap();
    drop(f);

    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "4"]);
    let mut args: Vec<String> = [
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        "s3://bucket-c/in",
        "--start",
        "--part-size",
        "8MiB",
        "--speed-limit",
        "16MiB/s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(opts(port, "dst"));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
    let mp = btp_common::s3mp::S3Multipart::new(&endpoint(port, "s3://bucket-c/in")).unwrap();
    // Mid-copy: some parts are in, the upload is open on the store.
    wait_for("parts copied", Duration::from_secs(60), || {
        let t = btp_json(&c.url, &["task", "get", &id]);
        (t["bytes_copied"].as_u64().unwrap() >= 16 << 20).then_some(())
    });
    let open = s3_uploads(port, "bucket-c");
    assert_eq!(open.len(), 1, "{open:?}");
    assert_eq!(open[0].0, "in/huge.bin");
    assert_eq!(block_on(mp.list_uploads()).unwrap(), open);
    let t = btp_json(&c.url, &["task", "cancel", &id]);
    assert_eq!(t["state"], "cancelled");
    wait_for("the upload aborted", Duration::from_secs(30), || {
        s3_uploads(port, "bucket-c").is_empty().then_some(())
    });
    let bucket = endpoint(port, "s3://bucket-c/in").operator().unwrap();
    assert!(!block_on(bucket.exists("huge.bin")).unwrap());
    // And it stays so: no part job of the cancelled task opens anything again.
    std::thread::sleep(Duration::from_secs(2));
    assert!(s3_uploads(port, "bucket-c").is_empty());
}

#[test]
fn secrets_read_from_a_file_or_the_environment_never_show_in_ps_logs_or_answers_on_moto() {
    secrets_never_show(Server::Moto);
}

#[test]
fn secrets_read_from_a_file_or_the_environment_never_show_in_ps_logs_or_answers_on_seaweedfs() {
    secrets_never_show(Server::Seaweedfs);
}

fn secrets_never_show(server: Server) {
    let tmp = test_dir();
    let Some((_server, port)) = server.start(tmp.path()) else {
        return;
    };
    create_bucket(port, "bucket-f");
    let src = tmp.path().join("src");
    let tree = gen_tree(&src, 40, 0);
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    let secret = "file-s3cr3t-Zq8-never-printed";
    let file = tmp.path().join("s3.secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let from_file = format!("secret_access_key=@{}", file.display());
    let endpoint = format!("endpoint=http://127.0.0.1:{port}");
    let s3_args = |side: &str, key: &str| -> Vec<String> {
        [
            endpoint.as_str(),
            "region=us-east-1",
            "access_key_id=test",
            key,
        ]
        .iter()
        .flat_map(|o| [format!("--{side}-opt"), o.to_string()])
        .collect()
    };
    let mut seen_ps = String::new();
    let mut sample_ps = || {
        let ps = std::process::Command::new("ps")
            .args(["-eo", "args"])
            .output()
            .unwrap();
        seen_ps.push_str(&String::from_utf8_lossy(&ps.stdout));
    };

    // A task through a server and a client, the secret from a file.
    let mut c = Cluster::start(tmp.path(), &[]);
    c.add_client(&["--workers", "2"]);
    let mut args: Vec<String> = [
        "task",
        "create",
        "--src",
        src.to_str().unwrap(),
        "--dst",
        "s3://bucket-f/up",
        "--start",
        "--output",
        "json",
    ]
    .map(String::from)
    .to_vec();
    args.extend(s3_args("dst", &from_file));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
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
    sample_ps();
    let t = wait_task(&c.url, &id, Duration::from_secs(120));
    assert_eq!(t["state"], "completed", "{t}");
    assert_eq!(t["files_copied"], tree.files, "{t}");
    let report = c.report(&id).to_string();

    // Back down with `btp copy`, the secret from the environment; ps looked at while it runs.
    let dst = tmp.path().join("down");
    let mut copy = std::process::Command::new(btp_bin());
    copy.args([
        "copy",
        "s3://bucket-f/up",
        dst.to_str().unwrap(),
        "--output",
        "json",
    ])
    .args(s3_args("src", "secret_access_key=env:BTP_TEST_S3_SECRET"))
    .env("BTP_TEST_S3_SECRET", secret)
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = copy.spawn().unwrap();
    sample_ps();
    let out = child.wait_with_output().unwrap();
    let copy_out = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{copy_out}");
    // Object stores keep no empty directories: the files, byte for byte.
    let files = tree_files(&src);
    assert_eq!(files.len() as u64, tree.files);
    assert_eq!(tree_files(&dst), files);
    for f in files.keys() {
        assert_eq!(
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(dst.join(f)).unwrap()
        );
    }
    sample_ps();

    assert!(
        seen_ps.contains("secret_access_key=env:BTP_TEST_S3_SECRET"),
        "ps saw btp copy running"
    );
    for (what, text) in [
        ("ps -eo args", &seen_ps),
        ("the create answer", &answer),
        ("the report", &report),
        ("btp copy's output", &copy_out),
    ] {
        assert!(!text.contains(secret), "{what} shows the secret");
    }
    for entry in std::fs::read_dir(tmp.path()).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "log") && !p.ends_with(server.log()) {
            assert!(
                !std::fs::read_to_string(&p).unwrap().contains(secret),
                "{} shows the secret",
                p.display()
            );
        }
    }
}

/// Every byte of the task went through the clients once: what the clients sent (the parts of
/// an upload given up included) is the tree's bytes, and no file was copied again.
fn uploaded_once(report: &serde_json::Value, bytes: u64) {
    let sent: u64 = report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sent, bytes, "bytes sent by the clients: {report}");
    assert_eq!(report["task"]["files_retried"], 0, "{report}");
}

/// The open multipart uploads of a bucket, (key, upload id), read with an unsigned
/// ListMultipartUploads parsed as XML (paged by its markers).
fn s3_uploads(port: u16, bucket: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut marker: Option<(Option<String>, String)> = None;
    loop {
        let mut path = format!("/{bucket}?uploads");
        if let Some((k, id)) = &marker {
            if let Some(k) = k {
                path.push_str(&format!("&key-marker={}", urlencode(k)));
            }
            path.push_str(&format!("&upload-id-marker={}", urlencode(id)));
        }
        let answer = s3_http(port, "GET", &path, b"");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = http_body(&answer);
        let mut reader = quick_xml::Reader::from_str(&body);
        let mut stack: Vec<String> = Vec::new();
        let (mut key, mut id, mut next_key, mut next_id) =
            (String::new(), String::new(), None, None);
        let mut truncated = false;
        loop {
            use quick_xml::events::Event;
            let text = match reader.read_event().unwrap() {
                Event::Start(e) => {
                    stack.push(e.local_name().as_ref().to_string());
                    continue;
                }
                Event::End(_) => {
                    if stack.pop().as_deref() == Some("Upload") {
                        out.push((std::mem::take(&mut key), std::mem::take(&mut id)));
                    }
                    continue;
                }
                Event::Text(t) => t.xml10_content().into_owned(),
                Event::GeneralRef(r) => match r.resolve_char_ref().unwrap() {
                    Some(c) => c.to_string(),
                    None => quick_xml::escape::resolve_predefined_entity(&r)
                        .unwrap()
                        .to_string(),
                },
                Event::Eof => break,
                _ => continue,
            };
            let path: Vec<&str> = stack.iter().map(|s| s.as_str()).collect();
            match path.as_slice() {
                [_, "Upload", "Key"] => key.push_str(&text),
                [_, "Upload", "UploadId"] => id.push_str(&text),
                [_, "NextKeyMarker"] => next_key.get_or_insert_with(String::new).push_str(&text),
                [_, "NextUploadIdMarker"] => {
                    next_id.get_or_insert_with(String::new).push_str(&text)
                }
                [_, "IsTruncated"] => truncated = text.trim() == "true",
                _ => {}
            }
        }
        if !truncated {
            return out;
        }
        marker = Some((
            next_key.filter(|k| !k.is_empty()),
            next_id.unwrap_or_default(),
        ));
    }
}

/// The body of a raw HTTP/1.1 answer, de-chunked.
fn http_body(answer: &str) -> String {
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, tail)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&tail[..n]);
        rest = &tail[n + 2..];
    }
    out
}

#[test]
fn upload_listings_are_paged_and_agree_with_the_store_on_moto() {
    upload_listings_are_paged(Server::Moto);
}

#[test]
fn upload_listings_are_paged_and_agree_with_the_store_on_seaweedfs() {
    upload_listings_are_paged(Server::Seaweedfs);
}

/// Our ListMultipartUploads, a page of one upload at a time, sees what the store holds: keys
/// that need escaping in XML (quotes, ampersands, angle brackets) included.
///
/// The servers differ here: S3 (and moto) name the next page by `NextKeyMarker` and
/// `NextUploadIdMarker` together, which is S3's behaviour; SeaweedFS answers only
/// `NextUploadIdMarker`, pages by it alone, and ends the listing early when given a key marker
/// too. The listing follows whichever markers the answer names.
fn upload_listings_are_paged(server: Server) {
    let tmp = test_dir();
    let Some((_server, port)) = server.start(tmp.path()) else {
        return;
    };
    create_bucket(port, "bucket-u");
    let mp = btp_common::s3mp::S3Multipart::new(&endpoint(port, "s3://bucket-u/p")).unwrap();
    let names = ["a.bin", "\"quoted\" & <angled>.bin", "z/deep.bin"];
    let mut made = Vec::new();
    for n in names {
        // Two uploads of the same key: the pages go by key and by upload id.
        for _ in 0..2 {
            let id = block_on(mp.create(n, None)).unwrap();
            made.push((format!("p/{n}"), id));
        }
    }
    made.sort();
    let mut independent = s3_uploads(port, "bucket-u");
    independent.sort();
    assert_eq!(independent, made);
    for page in [1, 2, 1000] {
        let mut ours = block_on(mp.list_uploads_by(page)).unwrap();
        ours.sort();
        assert_eq!(ours, made, "pages of {page}");
    }
    for (key, id) in &made {
        block_on(mp.abort(key.strip_prefix("p/").unwrap(), id)).unwrap();
    }
    assert!(s3_uploads(port, "bucket-u").is_empty());
    assert!(block_on(mp.list_uploads()).unwrap().is_empty());
}

#[test]
fn a_whole_file_whose_checksum_mismatches_is_uploaded_twice_then_failed_on_moto() {
    checksum_mismatch_costs_one_more_upload(Server::Moto);
}

#[test]
fn a_whole_file_whose_checksum_mismatches_is_uploaded_twice_then_failed_on_seaweedfs() {
    checksum_mismatch_costs_one_more_upload(Server::Seaweedfs);
}

/// Every completion answer for one large file arrives garbled (`BTP_FAULT_GARBLE_COMPLETION`),
/// so its stored ETag never matches its parts' MD5s: the file is uploaded once more, then
/// reported failed with the reason, after two uploads and not one per attempt; nothing of it
/// is left on the store, and every other file is copied.
fn checksum_mismatch_costs_one_more_upload(server: Server) {
    let tmp = test_dir();
    let Some((_server, port)) = server.start(tmp.path()) else {
        return;
    };
    create_bucket(port, "bucket-m");
    let src = tmp.path().join("src");
    std::fs::create_dir_all(&src).unwrap();
    let size: u64 = 24 << 20;
    let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(src.join("garbled.bin"), &data).unwrap();
    std::fs::write(src.join("small.txt"), b"a small file").unwrap();
    let mut c = Cluster::start(tmp.path(), &[]);
    let fault = [("BTP_FAULT_GARBLE_COMPLETION", "garbled")];
    c.add_client_env(&["--workers", "4", "--retry-backoff", "100ms"], &fault);
    let mut args: Vec<String> = [
        "--verify",
        "checksum",
        "--multipart-threshold",
        "8MiB",
        "--part-size",
        "8MiB",
    ]
    .map(String::from)
    .to_vec();
    args.extend(opts(port, "dst"));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let id = c.start_task_at(src.to_str().unwrap(), "s3://bucket-m/in", &args);
    let t = wait_task(&c.url, &id, Duration::from_secs(300));
    let report = c.report(&id);
    assert_eq!(t["state"], "failed", "{report}");
    assert_eq!(t["files_copied"], 1, "{report}");
    assert_eq!(t["files_failed"], 1, "{report}");
    assert_eq!(t["files_retried"], 1, "one more upload: {report}");
    // What the clients sent: the small file once, the large one twice (3 parts each time).
    let sent: u64 = report["clients"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(sent, 2 * size + 12, "{report}");
    let parts = std::fs::read_to_string(tmp.path().join("client-1.log"))
        .unwrap()
        .lines()
        .filter(|l| l.contains("part copied") && l.contains("garbled.bin"))
        .count();
    assert_eq!(parts, 2 * 3, "parts uploaded");
    let entries = report_entries(&c.url, &id);
    let failed = &entries["garbled.bin"];
    assert_eq!(failed.outcome, "failed", "{entries:?}");
    assert!(
        failed
            .reason
            .starts_with("checksum mismatch: garbled.bin was stored with ETag"),
        "{failed:?}"
    );
    assert_eq!(entries["small.txt"].outcome, "copied");
    // The bad copies were deleted and their uploads completed: nothing of the file is left.
    let keys = s3_keys(port, "bucket-m");
    assert_eq!(
        keys.into_iter().collect::<Vec<_>>(),
        vec!["in/small.txt".to_string()]
    );
    assert!(s3_uploads(port, "bucket-m").is_empty());
}
