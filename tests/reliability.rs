//! Jobs that cannot finish the normal way still end: a job too large to publish fails alone, a
//! job that crashes its worker every time fails once JetStream gives up redelivering it, a file
//! that changed after the listing is copied as it is now, and a multipart upload that vanished
//! before completion is never reported copied.

mod support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::*;

/// A directory `depth` levels of 250-character names below `base`: long roots make every job
/// of a task (which carries both roots) much larger than the listing pages (which do not).
fn long_dir(base: &Path, depth: usize) -> PathBuf {
    let mut p = base.to_path_buf();
    for i in 0..depth {
        p = p.join(format!("{i:02}{}", "r".repeat(248)));
    }
    p
}

/// nats-server takes messages of at most 16 KiB. Task B's one Copy job (50 files of 200-byte
/// names, about 13 KB, plus both 2.8 KB roots) is over it, its listing page is not: the job
/// fails alone with the reason, and task A, started after B's job was planned, completes.
#[test]
fn a_job_too_large_to_publish_fails_alone_and_other_tasks_complete() {
    let tmp = test_dir();
    let max_payload = 16 << 10;
    let nats = btp_nats::launcher::Options {
        max_payload: Some(max_payload),
        ..Default::default()
    };
    let mut c = Cluster::start_with_nats(tmp.path(), &[], nats);
    c.add_client(&["--workers", "2"]);

    let (bad_src, bad_dst) = (
        long_dir(&tmp.path().join("bad-src"), 11),
        long_dir(&tmp.path().join("bad-dst"), 11),
    );
    std::fs::create_dir_all(&bad_src).unwrap();
    let names: Vec<String> = (0..50)
        .map(|i| format!("f{i:03}-{}", "n".repeat(195)))
        .collect();
    for n in &names {
        std::fs::write(bad_src.join(n), b"some bytes").unwrap();
    }
    let paths = names.iter().map(|n| n.len() + 60).sum::<usize>();
    let roots = bad_src.as_os_str().len() + bad_dst.as_os_str().len();
    assert!(
        paths + 300 < max_payload && paths + roots > max_payload + 1000,
        "page {paths} B, job {} B: the sizes do not frame max_payload {max_payload}",
        paths + roots
    );
    let bad = c.start_task(&bad_src, &bad_dst, &[]);
    // B's Copy job is planned (its listing is done) before A exists.
    wait_for("B's listing", Duration::from_secs(60), || {
        let t = btp_json(&c.url, &["task", "get", &bad]);
        (t["listing_done"] == true).then_some(())
    });

    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let tree = gen_tree(&src, 100, 0);
    let good = c.start_task(&src, &dst, &[]);
    wait_task(&c.url, &good, Duration::from_secs(60));
    assert_complete(&c.report(&good), &tree, &src, &dst);

    let t = wait_task(&c.url, &bad, Duration::from_secs(60));
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["files_found"], 50, "{t}");
    assert_eq!(t["files_failed"], 50, "{t}");
    assert_eq!(t["files_copied"], 0, "{t}");
    assert_eq!(t["jobs_done"], t["jobs_total"], "{t}");
    // A few failures per call: a report naming all 50 long paths is over max_payload too.
    let failed = btp_json(
        &c.url,
        &["task", "report", &bad, "--failed", "--limit", "5"],
    );
    let failed = failed.as_array().unwrap();
    assert_eq!(failed.len(), 5, "{failed:?}");
    for f in failed {
        let reason = f["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("job could not be published: max payload size exceeded"),
            "{reason}"
        );
    }
    assert!(!bad_dst.exists() || std::fs::read_dir(&bad_dst).unwrap().count() == 0);
}

/// Messages left in the jobs stream (a dead one would stay there).
fn jobs_in_stream(url: &str) -> u64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
            let mut s = js.get_stream("BTP_JOBS").await.unwrap();
            s.info().await.unwrap().state.messages
        })
}

/// A client that aborts whenever it starts copying `doomed/crash-here.bin` is restarted until
/// the task ends: JetStream delivers that job 3 times (`--max-deliver 3`), then the server
/// fails the job's files with the reason and the task ends failed; everything else is copied.
#[test]
fn a_job_that_crashes_its_worker_every_time_fails_after_max_deliver() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    gen_tree(&src, 200, 1 << 20);
    let doomed = src.join("doomed");
    std::fs::create_dir_all(&doomed).unwrap();
    let doomed_files = ["crash-here.bin", "sibling-1.txt", "sibling-2.txt"];
    for (i, name) in doomed_files.iter().enumerate() {
        std::fs::write(doomed.join(name), vec![i as u8; 1000 * (i + 1)]).unwrap();
    }
    let c = Cluster::start(tmp.path(), &["--ack-wait", "2s", "--max-deliver", "3"]);
    // One worker: when the client dies, only the doomed job dies with it.
    let args = ["client", "run", "--workers", "1", "--ack-wait", "2s"];
    let env = [("BTP_FAULT_CRASH", "crash-here")];
    let id = c.start_task(&src, &dst, &[]);
    let mut runs = 0;
    let mut client: Option<Proc> = None;
    let deadline = Instant::now() + Duration::from_secs(120);
    let t = loop {
        let t = btp_json(&c.url, &["task", "get", &id]);
        if t["state"] != "running" {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "the task never ended after {runs} client runs: {t}"
        );
        let dead = match client.as_mut() {
            None => true,
            Some(p) => p.child.try_wait().unwrap().is_some(),
        };
        if dead {
            runs += 1;
            let name = format!("client-run-{runs}");
            client = Some(Proc::spawn_env(&name, &c.url, &args, tmp.path(), &env));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    drop(client);
    assert!(runs >= 3, "the client crashed {} times", runs - 1);
    assert_eq!(t["state"], "failed", "{t}");
    assert_eq!(t["files_failed"], doomed_files.len() as u64, "{t}");
    assert_eq!(t["jobs_done"], t["jobs_total"], "{t}");
    let failed = btp_json(&c.url, &["task", "report", &id, "--failed"]);
    let mut paths: Vec<&str> = Vec::new();
    for f in failed.as_array().unwrap() {
        paths.push(f["path"].as_str().unwrap());
        assert_eq!(f["reason"], "worker crashed 3 times on this job", "{f}");
        assert_eq!(f["attempts"], 3, "{f}");
    }
    paths.sort();
    let want: Vec<String> = doomed_files.iter().map(|n| format!("doomed/{n}")).collect();
    assert_eq!(paths, want);
    // Every other file arrived whole.
    let all = tree_files(&src);
    let copied = tree_files(&dst);
    for (path, size) in &all {
        if path.starts_with("doomed/") {
            continue;
        }
        assert_eq!(copied.get(path), Some(size), "{path}");
        assert_eq!(
            std::fs::read(src.join(path)).unwrap(),
            std::fs::read(dst.join(path)).unwrap(),
            "{path}"
        );
    }
    assert_eq!(
        t["files_copied"].as_u64().unwrap() + t["files_failed"].as_u64().unwrap(),
        all.len() as u64,
        "{t}"
    );
    // The dead message is gone from the work queue.
    assert_eq!(jobs_in_stream(&c.url), 0);
}

/// Three files grow between their listing and their copy (`BTP_FAULT_GROW`): a small one (the
/// local small-file path), a larger one (streamed) and one in parts (Upload, Part, Complete
/// jobs). Each first attempt fails ("source changed"); the retry stats the file again and
/// copies it as it is now, and the counters follow: every byte found is copied.
#[test]
fn a_file_that_changed_after_the_listing_is_copied_as_it_is_now() {
    let tmp = test_dir();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    gen_tree(&src, 100, 0);
    let listed = [
        ("grows-small.txt", 1000),
        ("grows-large.bin", 1 << 20),
        ("grows-in-parts.bin", 12 << 20),
    ];
    for (i, (name, size)) in listed.iter().enumerate() {
        std::fs::write(src.join(name), vec![i as u8 + 1; *size]).unwrap();
    }
    let listed_bytes = stats(&src).bytes;
    // The per-file report reads the kept job payloads, sealed with the server's key.
    let key = tmp.path().join("secret.key");
    let mut c = Cluster::start(tmp.path(), &["--secret-key-file", key.to_str().unwrap()]);
    c.add_client_env(
        &["--workers", "4", "--retry-backoff", "100ms"],
        &[("BTP_FAULT_GROW", "grows-")],
    );
    let id = c.start_task(
        &src,
        &dst,
        &[
            "--max-attempts",
            "3",
            "--multipart-threshold",
            "8MiB",
            "--part-size",
            "5MiB",
        ],
    );
    wait_task(&c.url, &id, Duration::from_secs(120));
    let tree = stats(&src);
    assert!(tree.bytes > listed_bytes, "the files grew");
    let report = c.report(&id);
    let t = &report["task"];
    assert_complete(&report, &tree, &src, &dst);
    let n = |k: &str| t[k].as_u64().unwrap();
    assert_eq!(
        n("bytes_found"),
        n("bytes_copied") + n("bytes_skipped") + n("bytes_failed"),
        "{t}"
    );
    assert_eq!(n("bytes_found"), tree.bytes, "{t}");
    assert!(n("files_retried") >= 3, "{t}");
    // The per-file report has the sizes copied.
    assert_eq!(task_files(&c.url, &id), tree_files(&src));
}

/// The S3 secret of the vanished-upload test: never stored in the clear.
const SECRET: &str = "vanish-s3cr3t-never-stored";

/// Where the vanished-upload test copies to, and how it reads what is there.
enum Dest {
    Fs(PathBuf),
    /// A bucket on a moto server.
    S3 {
        port: u16,
        bucket: String,
    },
}

impl Dest {
    fn url(&self) -> String {
        match self {
            Dest::Fs(p) => p.to_str().unwrap().to_string(),
            Dest::S3 { bucket, .. } => format!("s3://{bucket}/in"),
        }
    }

    /// The endpoint's options (moto takes any keys).
    fn options(&self) -> Vec<(String, String)> {
        match self {
            Dest::Fs(_) => Vec::new(),
            Dest::S3 { port, .. } => [
                ("endpoint", format!("http://127.0.0.1:{port}")),
                ("region", "us-east-1".into()),
                ("access_key_id", "test".into()),
                ("secret_access_key", SECRET.into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
        }
    }

    /// `--dst-opt` arguments of `task create`.
    fn args(&self) -> Vec<String> {
        self.options()
            .into_iter()
            .flat_map(|(k, v)| ["--dst-opt".to_string(), format!("{k}={v}")])
            .collect()
    }

    fn endpoint(&self) -> btp_common::Endpoint {
        btp_common::Endpoint::parse_with(&self.url(), &self.options().into_iter().collect())
            .unwrap()
    }

    fn write(&self, path: &str, data: Vec<u8>) {
        if let Dest::Fs(p) = self {
            std::fs::create_dir_all(p).unwrap();
        }
        block_on(self.endpoint().operator().unwrap().write(path, data)).unwrap();
    }

    fn read(&self, path: &str) -> Vec<u8> {
        let op = self.endpoint().operator().unwrap();
        block_on(op.read(path)).unwrap().to_vec()
    }

    /// Uploads left open on the store (temporary files, multipart uploads).
    fn open_uploads(&self) -> usize {
        match self {
            Dest::Fs(p) => walk(p)
                .keys()
                .filter(|k| k.to_string_lossy().contains(".btp-"))
                .count(),
            Dest::S3 { .. } => {
                let mp = btp_common::s3mp::S3Multipart::new(&self.endpoint()).unwrap();
                block_on(mp.list_uploads()).unwrap().len()
            }
        }
    }
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// A large file's upload is aborted behind the tool's back between its last part and its
/// completion (`BTP_FAULT_ABORT_BEFORE_COMPLETE`, as a lifecycle rule would), while the
/// destination holds an older object of the same size. With one attempt allowed the file fails
/// with the reason; with more it is uploaded again from the start. It is never reported copied
/// with the old bytes left in place.
fn a_vanished_upload_is_never_reported_copied(tmp: &Path, dest: Dest) {
    let src = tmp.join("src");
    std::fs::create_dir_all(&src).unwrap();
    let size = 12 << 20;
    // Job payloads (kept for the per-file report too) are sealed with the server's key.
    let key = tmp.join("secret.key");
    let mut c = Cluster::start(tmp, &["--secret-key-file", key.to_str().unwrap()]);
    c.add_client_env(
        &["--workers", "4", "--retry-backoff", "100ms"],
        &[("BTP_FAULT_ABORT_BEFORE_COMPLETE", "vanish-")],
    );
    for (name, attempts) in [("vanish-once.bin", "1"), ("vanish-retried.bin", "3")] {
        let new: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let old = vec![0xeeu8; size];
        std::fs::write(src.join(name), &new).unwrap();
        dest.write(name, old.clone());
        let mut args: Vec<String> = [
            "task",
            "create",
            "--src",
            src.to_str().unwrap(),
            "--dst",
            &dest.url(),
            "--start",
            "--compare",
            "none",
            "--include",
            name,
            "--max-attempts",
            attempts,
            "--multipart-threshold",
            "8MiB",
            "--part-size",
            "5MiB",
        ]
        .map(String::from)
        .to_vec();
        args.extend(dest.args());
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
        let t = wait_task(&c.url, &id, Duration::from_secs(120));
        let n = |k: &str| t[k].as_u64().unwrap();
        if attempts == "1" {
            assert_eq!(t["state"], "failed", "{t}");
            assert_eq!((n("files_copied"), n("files_failed")), (0, 1), "{t}");
            let failed = btp_json(&c.url, &["task", "report", &id, "--failed"]);
            let reason = failed[0]["reason"].as_str().unwrap();
            assert!(
                reason.starts_with("upload vanished before completion"),
                "{reason}"
            );
            assert!(
                dest.read(name) == old,
                "the old object stays, reported failed"
            );
            assert!(task_files(&c.url, &id).is_empty());
        } else {
            assert_eq!(t["state"], "completed", "{t}");
            assert_eq!((n("files_copied"), n("files_failed")), (1, 0), "{t}");
            assert!(n("files_retried") >= 1, "{t}");
            assert!(dest.read(name) == new, "{name} holds the old bytes");
            assert_eq!(
                task_files(&c.url, &id),
                [(name.to_string(), size as u64)].into()
            );
        }
        // The other file is left out by the filter: found and excluded.
        assert_eq!(n("bytes_found") - n("bytes_excluded"), size as u64, "{t}");
        assert_eq!(
            n("bytes_found"),
            n("bytes_copied") + n("bytes_skipped") + n("bytes_failed") + n("bytes_excluded"),
            "{t}"
        );
        wait_for("no open upload", Duration::from_secs(30), || {
            (dest.open_uploads() == 0).then_some(())
        });
    }
    for entry in std::fs::read_dir(tmp.join("server")).unwrap() {
        let p = entry.unwrap().path();
        let bytes = std::fs::read(&p).unwrap();
        assert!(
            !bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes()),
            "{} holds the secret in the clear",
            p.display()
        );
    }
}

#[test]
fn a_vanished_upload_to_a_file_system_is_never_reported_copied() {
    let tmp = test_dir();
    let dst = tmp.path().join("dst");
    a_vanished_upload_is_never_reported_copied(tmp.path(), Dest::Fs(dst));
}

#[test]
fn a_vanished_upload_to_s3_is_never_reported_copied() {
    let tmp = test_dir();
    let args = ["-H", "127.0.0.1", "-p", "{port}"];
    let install = "pip install 'moto[server]'";
    let Some((_moto, port)) = start_service("moto_server", &args, tmp.path(), install) else {
        return;
    };
    // moto takes an unsigned PUT of a new bucket.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /vanish HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let dest = Dest::S3 {
        port,
        bucket: "vanish".into(),
    };
    a_vanished_upload_is_never_reported_copied(tmp.path(), dest);
}
