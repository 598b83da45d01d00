//! One end-to-end body for every storage backend, as OpenDAL's behaviour tests are: a test starts
//! a real server (moto, SeaweedFS, Azurite, ...), describes it with an [`Backend`], and calls
//! [`backend_suite`]. What the suite sees of the store it reads with a client that is not ours.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::*;

/// A storage service under test, started by the test itself; stopped when dropped.
pub trait Backend {
    /// Short name for messages ("moto", "seaweedfs", "azurite", ...).
    fn name(&self) -> &str;
    /// The endpoint URL of `prefix` (no slashes at either end, may be empty) in container `c`
    /// (bucket, container or directory), e.g. "s3://c/prefix".
    fn url(&self, c: &str, prefix: &str) -> String;
    /// What the endpoint needs, as CLI arguments: `["--src-opt", "k=v", ...]` (side "src" or "dst").
    fn opts(&self, side: &str) -> Vec<String>;
    /// Creates container `c` with a client that is not ours.
    fn create_container(&self, c: &str);
    /// Every object (file) in container `c`: key relative to the container -> size, read with a
    /// client that is not ours.
    fn objects(&self, c: &str) -> BTreeMap<String, u64>;
    /// What staged uploads left in container `c` (open multipart uploads, uncommitted blocks,
    /// staging objects or directories): their count, read with a client that is not ours. 0 when
    /// clean.
    fn staged(&self, c: &str) -> usize;
    /// Whether large files go to this store in parts spread over workers (false for stores that
    /// take a file only whole).
    fn parts(&self) -> bool {
        true
    }
}

/// The size of the suite's large file: `BTP_SUITE_BIG_MIB` MiB (24 by default), in parts of 5 MiB.
fn big_size() -> u64 {
    std::env::var("BTP_SUITE_BIG_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24)
        << 20
}

const BIG: &str = "big file.bin";

/// `files` with every key under `prefix/`.
fn under(prefix: &str, files: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    files
        .iter()
        .map(|(k, v)| (format!("{prefix}/{k}"), *v))
        .collect()
}

/// The objects of container `c` under `prefix/`.
fn objects_under(b: &dyn Backend, c: &str, prefix: &str) -> BTreeMap<String, u64> {
    b.objects(c)
        .into_iter()
        .filter(|(k, _)| k.starts_with(&format!("{prefix}/")))
        .collect()
}

/// fs -> X, X -> X, X -> fs with `--verify checksum` (a large file in parts spread over two
/// clients), byte-identical; a re-run copies 0 bytes; sync deletes what the source lost and
/// nothing beside its prefix; cancel leaves nothing staged.
pub fn backend_suite(b: &dyn Backend, dir: &Path) {
    let name = b.name().to_string();
    for c in ["btp-a", "btp-b", "btp-c"] {
        b.create_container(c);
    }
    let src = dir.join("src");
    let tree = gen_tree(&src, 150, big_size());
    // Object stores hold no empty directories: the tree has none, so every backend holds it whole.
    std::fs::remove_dir(src.join("empty-dir")).unwrap();
    let tree = TreeStats {
        dirs: tree.dirs - 1,
        ..tree
    };

    let mut c = Cluster::start(dir, &[]);
    c.add_client(&["--workers", "4"]);
    c.add_client(&["--workers", "4"]);
    let run = |src: &str, dst: &str, extra: &[&str]| -> serde_json::Value {
        let mut args: Vec<String> = ["task", "create", "--src", src, "--dst", dst, "--start"]
            .map(String::from)
            .to_vec();
        if src.contains("://") {
            args.extend(b.opts("src"));
        }
        if dst.contains("://") {
            args.extend(b.opts("dst"));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
        let started = std::time::Instant::now();
        wait_task(&c.url, &id, Duration::from_secs(600));
        eprintln!(
            "{name}: {src} -> {dst}: {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let report = c.report(&id);
        // The accounting rule holds for every run, whatever the backend.
        let entries = report_entries(&c.url, &id);
        let t = &report["task"];
        assert_eq!(
            t["files_found"].as_u64().unwrap(),
            entries.len() as u64,
            "{name}: every entry found is in the per-file report once: {report}"
        );
        report
    };
    let copied_all = |what: &str, r: &serde_json::Value| {
        let t = &r["task"];
        assert_eq!(t["state"], "completed", "{name}: {what}: {r}");
        assert_eq!(t["files_copied"], tree.files, "{name}: {what}: {r}");
        assert_eq!(t["bytes_copied"], tree.bytes, "{name}: {what}: {r}");
        assert_eq!(t["files_failed"], 0, "{name}: {what}: {r}");
    };
    let checked = [
        "--verify",
        "checksum",
        "--multipart-threshold",
        "8MiB",
        "--part-size",
        "5MiB",
    ];
    let files = tree_files(&src);
    let src_url = src.to_str().unwrap().to_string();

    // fs -> X: every file there with its size, the large one in parts over both clients.
    let up = run(&src_url, &b.url("btp-a", "data"), &checked);
    copied_all("fs -> store", &up);
    assert_eq!(
        objects_under(b, "btp-a", "data"),
        under("data", &files),
        "{name}: the store holds the tree"
    );
    if b.parts() {
        let clients = clients_that_copied_parts(dir, BIG);
        assert_eq!(
            clients.len(),
            2,
            "{name}: parts of {BIG} ran on {clients:?}"
        );
    }
    assert_eq!(b.staged("btp-a"), 0, "{name}: an upload left staged parts");

    // A re-run copies nothing.
    let again = run(&src_url, &b.url("btp-a", "data"), &[]);
    assert_eq!(again["task"]["state"], "completed", "{name}: {again}");
    assert_eq!(again["task"]["bytes_copied"], 0, "{name}: {again}");
    assert_eq!(
        again["task"]["files_skipped"], tree.files,
        "{name}: {again}"
    );

    // X -> X, to another container.
    let across = run(&b.url("btp-a", "data"), &b.url("btp-b", "copy"), &checked);
    copied_all("store -> store", &across);
    assert_eq!(
        objects_under(b, "btp-b", "copy"),
        under("copy", &files),
        "{name}: the second container holds the tree"
    );
    assert_eq!(b.staged("btp-b"), 0, "{name}: a copy left staged parts");

    // X -> fs: byte for byte the tree we started with.
    let back = dir.join("back");
    let down = run(&b.url("btp-b", "copy"), back.to_str().unwrap(), &checked);
    copied_all("store -> fs", &down);
    assert_same_tree(&src, &back);

    // Sync: what the source lost goes, what it gained comes; a sibling prefix that begins with
    // the same characters ("data-old" beside "data") is outside the sync and stays.
    let sibling = dir.join("sibling");
    std::fs::create_dir_all(&sibling).unwrap();
    std::fs::write(sibling.join("keep.txt"), b"outside the sync").unwrap();
    let kept = run(sibling.to_str().unwrap(), &b.url("btp-a", "data-old"), &[]);
    assert_eq!(kept["task"]["state"], "completed", "{name}: {kept}");
    let gone = "hash#1.txt";
    std::fs::remove_file(src.join(gone)).unwrap();
    std::fs::write(src.join("new file.txt"), b"added after the first copy").unwrap();
    let synced = run(&src_url, &b.url("btp-a", "data"), &["--mode", "sync"]);
    let t = &synced["task"];
    assert_eq!(t["state"], "completed", "{name}: {synced}");
    assert_eq!(t["files_deleted"], 1, "{name}: {synced}");
    assert_eq!(t["files_copied"], 1, "{name}: {synced}");
    assert_eq!(
        objects_under(b, "btp-a", "data"),
        under("data", &tree_files(&src)),
        "{name}: after sync the store holds the source as it is now"
    );
    assert_eq!(
        objects_under(b, "btp-a", "data-old"),
        BTreeMap::from([("data-old/keep.txt".to_string(), 16)]),
        "{name}: sync deleted outside its prefix"
    );

    // Cancel mid-copy: nothing staged is left, and no object stands under the final name.
    let slow = dir.join("slow");
    std::fs::create_dir_all(&slow).unwrap();
    let f = std::fs::File::create(slow.join("huge.bin")).unwrap();
    f.set_len(96 << 20).unwrap();
    drop(f);
    let mut args: Vec<String> = [
        "task",
        "create",
        "--src",
        slow.to_str().unwrap(),
        "--dst",
        &b.url("btp-c", "in"),
        "--start",
        "--multipart-threshold",
        "8MiB",
        "--part-size",
        "5MiB",
        "--speed-limit",
        "8MiB/s",
    ]
    .map(String::from)
    .to_vec();
    args.extend(b.opts("dst"));
    let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let id = btp_json(&c.url, &args)["id"].as_str().unwrap().to_string();
    if b.parts() {
        wait_for("bytes copied", Duration::from_secs(120), || {
            let t = btp_json(&c.url, &["task", "get", &id]);
            (t["bytes_copied"].as_u64().unwrap() >= 10 << 20 || t["state"] != "running")
                .then_some(())
        });
        // The check below can fail: mid-copy, the upload is staged on the store.
        assert!(b.staged("btp-c") > 0, "{name}: nothing staged mid-copy");
    } else {
        // A file that goes whole counts its bytes at its end: cancel while it is on its way.
        std::thread::sleep(Duration::from_secs(3));
    }
    let t = btp_json(&c.url, &["task", "cancel", &id]);
    assert_eq!(t["state"], "cancelled", "{name}: {t}");
    wait_for(
        &format!("{name}: nothing staged after the cancel"),
        Duration::from_secs(60),
        || (b.staged("btp-c") == 0).then_some(()),
    );
    // And it stays so: no job of the cancelled task stages anything again.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.staged("btp-c"), 0, "{name}: staged after the cancel");
    assert!(
        !b.objects("btp-c").contains_key("in/huge.bin"),
        "{name}: a cancelled file stands under its final name"
    );
    for container in ["btp-a", "btp-b"] {
        assert_eq!(
            b.staged(container),
            0,
            "{name}: {container} holds staged parts"
        );
    }
}

// ---- S3 servers (moto, SeaweedFS), seen through boto3 ----

/// An S3-compatible server started by the test, seen through boto3 (AWS's own SDK).
pub struct S3Server {
    pub name: String,
    pub port: u16,
    pub _service: Service,
}

impl S3Server {
    /// moto's S3 server, or None (skip) when it is not installed outside CI.
    pub fn moto(dir: &Path) -> Option<S3Server> {
        let (service, port) = start_moto(dir)?;
        Some(S3Server {
            name: "moto".into(),
            port,
            _service: service,
        })
    }

    /// SeaweedFS's S3 gateway, or None (skip) when it is not installed outside CI.
    pub fn seaweedfs(dir: &Path) -> Option<S3Server> {
        let (service, port) = start_seaweedfs(dir)?;
        Some(S3Server {
            name: "seaweedfs".into(),
            port,
            _service: service,
        })
    }

    /// Runs a boto3 script with `s3` bound to a client of this server; its standard output.
    pub fn boto3(&self, script: &str, args: &[&str]) -> String {
        let prelude = format!(
            "import sys, json, boto3\n\
             from botocore.config import Config\n\
             s3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1',\n\
                 aws_access_key_id='test', aws_secret_access_key='test',\n\
                 config=Config(s3={{'addressing_style': 'path'}}, retries={{'max_attempts': 10}}))\n",
            self.port
        );
        let out = Command::new("python3")
            .arg("-c")
            .arg(format!("{prelude}{script}"))
            .args(args)
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("python3 runs");
        assert!(
            out.status.success(),
            "boto3 against {}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Backend for S3Server {
    fn name(&self) -> &str {
        &self.name
    }

    fn url(&self, c: &str, prefix: &str) -> String {
        format!("s3://{c}/{prefix}")
    }

    fn opts(&self, side: &str) -> Vec<String> {
        s3_opts(self.port, side)
    }

    fn create_container(&self, c: &str) {
        // A new server may refuse for a while (SeaweedFS, until its volumes are up).
        let script = "import time\n\
            for i in range(60):\n\
            \x20   try:\n\
            \x20       s3.create_bucket(Bucket=sys.argv[1]); break\n\
            \x20   except s3.exceptions.BucketAlreadyOwnedByYou: break\n\
            \x20   except Exception as e:\n\
            \x20       if i == 59: raise\n\
            \x20       time.sleep(0.5)\n";
        self.boto3(script, &[c]);
    }

    fn objects(&self, c: &str) -> BTreeMap<String, u64> {
        let script = "out = {}\n\
            for page in s3.get_paginator('list_objects_v2').paginate(Bucket=sys.argv[1]):\n\
            \x20   for o in page.get('Contents', []): out[o['Key']] = o['Size']\n\
            print(json.dumps(out))\n";
        serde_json::from_str(&self.boto3(script, &[c])).unwrap()
    }

    fn staged(&self, c: &str) -> usize {
        let script = "n = 0\n\
            for page in s3.get_paginator('list_multipart_uploads').paginate(Bucket=sys.argv[1]):\n\
            \x20   n += len(page.get('Uploads', []))\n\
            print(n)\n";
        self.boto3(script, &[c]).trim().parse().unwrap()
    }
}
